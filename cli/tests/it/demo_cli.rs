//! `fieldpatch demo` runs the demo site headless; the CLI plans against it like the app does.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn the_demo_site_runs_headless_and_the_cli_plans_against_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut demo = Command::new(env!("CARGO_BIN_EXE_fieldpatch"))
        .args(["--json", "demo", "--dir"])
        .arg(tmp.path().join("demo"))
        .env("FIELDPATCH_DATA_DIR", &data)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(demo.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let paths: serde_json::Value = serde_json::from_str(&line).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fieldpatch"))
        .args(["--json", "plan", "--identify-timeout", "10"])
        .args(["--devices", paths["devices"].as_str().unwrap()])
        .args(["--catalog", paths["catalog"].as_str().unwrap()])
        .args(["--trust", paths["trust"].as_str().unwrap()])
        .env("FIELDPATCH_DATA_DIR", &data)
        .output()
        .unwrap();
    demo.kill().unwrap();
    demo.wait().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let devices = plan["devices"].as_array().unwrap();
    // The serial and UDP demo devices, and the SWUpdate gateway (the real daemon; its password
    // was put in the data directory's keyring by `fieldpatch demo`).
    assert_eq!(devices.len(), 6, "{:#}", paths["gateway"]);
    for d in devices {
        assert_eq!(d["disposition"]["disposition"], "patch", "{d:#}");
        let minor = &d["device"]["identity"]["firmware_version"]["minor"];
        match d["device"]["id"].as_str() {
            // SWUpdate does not say what runs: the inventory's record does.
            Some(fieldpatch_demo::GATEWAY_ID) => assert_eq!(minor, 0, "{d:#}"),
            _ => assert_eq!(minor, 4, "identified live: {d:#}"),
        }
    }
    assert!(
        paths["gateway"]
            .as_str()
            .is_some_and(|g| g.contains("password is in this laptop's keyring")),
        "{paths:#}"
    );
    // The password itself is in the keyring only: nowhere in the data directory.
    let name = fieldpatch_demo::GATEWAY_CREDENTIAL;
    let shown = Command::new(env!("CARGO_BIN_EXE_fieldpatch"))
        .args(["credentials", "get", name, "--reveal"])
        .env("FIELDPATCH_DATA_DIR", &data)
        .output()
        .unwrap();
    assert!(shown.status.success(), "{}", String::from_utf8_lossy(&shown.stderr));
    let password = String::from_utf8(shown.stdout).unwrap().trim().to_string();
    assert!(password.len() >= 16, "{password:?}");
    for file in walk(&data) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(password.len()).any(|w| w == password.as_bytes()),
            "the gateway's password is in {}",
            file.display()
        );
    }
    // The pump controller (critical, CVSS 9.1) goes first.
    assert_eq!(devices[0]["device"]["id"], "pump-ctl-01");
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            match e.path() {
                p if p.is_dir() => todo.push(p),
                p => files.push(p),
            }
        }
    }
    files
}
