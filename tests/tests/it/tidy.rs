//! Tidy checks: the crate graph is the one ARCHITECTURE.md draws, and every module says what it is.
//!
//! The dependency arrows are read from `cargo metadata`, so a `Cargo.toml` edit that contradicts
//! the architecture fails here with the arrow that is not allowed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Normal (non-dev, non-build) dependencies between workspace crates, by package name.
fn internal_deps() -> BTreeMap<String, BTreeSet<String>> {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(workspace_root())
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let names: BTreeSet<String> =
        packages.iter().map(|p| p["name"].as_str().unwrap().to_string()).collect();
    let mut graph = BTreeMap::new();
    for p in packages {
        let deps = p["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"].is_null())
            .map(|d| d["name"].as_str().unwrap().to_string())
            .filter(|n| names.contains(n))
            .collect();
        graph.insert(p["name"].as_str().unwrap().to_string(), deps);
    }
    graph
}

/// The arrows ARCHITECTURE.md allows (normal dependencies; tests may use more).
fn allowed() -> BTreeMap<&'static str, &'static [&'static str]> {
    BTreeMap::from([
        ("fieldpatch-proto", &[][..]),
        ("fieldpatch-drivers", &[][..]),
        ("fieldpatch-core", &["fieldpatch-proto", "fieldpatch-drivers"][..]),
        ("fieldpatch-lab", &["fieldpatch-drivers"][..]),
        ("fieldpatch-demo", &["fieldpatch-core", "fieldpatch-lab", "fieldpatch-testkit"][..]),
        ("fieldpatch-server", &["fieldpatch-proto"][..]),
        ("fieldpatch-cli", &["fieldpatch-core", "fieldpatch-demo"][..]),
        ("fieldpatch-app", &["fieldpatch-core", "fieldpatch-demo", "fieldpatch-server"][..]),
        // `core` and `lab` only behind the features of the same names.
        ("fieldpatch-testkit", &["fieldpatch-proto", "fieldpatch-core", "fieldpatch-lab"][..]),
        (
            "fieldpatch-e2e",
            &[
                "fieldpatch-proto",
                "fieldpatch-core",
                "fieldpatch-drivers",
                "fieldpatch-lab",
                "fieldpatch-demo",
                "fieldpatch-server",
                "fieldpatch-testkit",
            ][..],
        ),
    ])
}

#[test]
fn the_crate_graph_matches_the_architecture() {
    let graph = internal_deps();
    let allowed = allowed();
    let mut wrong = Vec::new();
    for (krate, deps) in &graph {
        let Some(ok) = allowed.get(krate.as_str()) else {
            wrong.push(format!("{krate} is not in the architecture's crate list"));
            continue;
        };
        for d in deps {
            if !ok.contains(&d.as_str()) {
                wrong.push(format!("{krate} -> {d}"));
            }
        }
    }
    assert!(wrong.is_empty(), "dependency arrows ARCHITECTURE.md does not allow: {wrong:?}");
    // The rules the invariants spell out, checked by name so the table above cannot drift.
    assert!(!graph["fieldpatch-server"].contains("fieldpatch-core"), "server depends on core");
    assert!(!graph["fieldpatch-core"].contains("fieldpatch-lab"), "core depends on simulators");
    assert!(!graph["fieldpatch-cli"].contains("fieldpatch-drivers"), "cli talks to drivers");
    assert!(!graph["fieldpatch-drivers"].iter().any(|d| d != "fieldpatch-drivers"));
}

/// The server's tests use the test kit's proto-only part: no feature that brings in
/// fieldpatch-core (`core`, `lab`), neither asked for by the server nor on by default.
#[test]
fn the_server_tests_use_the_proto_only_test_kit() {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(workspace_root())
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let package = |name: &str| {
        meta["packages"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap().clone()
    };
    let kit = package("fieldpatch-testkit");
    let defaults = kit["features"]["default"].as_array().unwrap();
    assert!(defaults.is_empty(), "the test kit's default features: {defaults:?}");
    let server = package("fieldpatch-server");
    let uses: Vec<&serde_json::Value> = server["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["name"] == "fieldpatch-testkit")
        .collect();
    assert!(!uses.is_empty(), "fieldpatch-server's tests no longer use the test kit");
    for d in uses {
        assert_eq!(d["kind"], "dev", "fieldpatch-server depends on the test kit: {d}");
        assert_eq!(d["features"], serde_json::json!([]), "server's test kit features: {d}");
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_opens_with_a_doc_comment() {
    let root = workspace_root();
    let mut files = Vec::new();
    for krate in
        ["proto", "core", "drivers", "lab", "demo", "server", "cli", "src-tauri", "testkit"]
    {
        rust_files(&root.join(krate).join("src"), &mut files);
    }
    assert!(files.len() > 50, "found only {} modules", files.len());
    let undocumented: Vec<String> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            !first.starts_with("//!")
        })
        .map(|f| f.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert!(undocumented.is_empty(), "modules without a leading //! doc: {undocumented:?}");
}
