//! `fieldpatch info`: the version and the data directory, and a refused relative override.

use std::process::Command;

#[test]
fn info_json_reports_version_and_overridden_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fieldpatch"))
        .args(["info", "--json"])
        .env("FIELDPATCH_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["data_dir"], dir.path().to_str().unwrap());
    assert_eq!(v["data_dir_source"], "environment");
}

#[test]
fn relative_data_dir_override_is_refused_with_advice() {
    let out = Command::new(env!("CARGO_BIN_EXE_fieldpatch"))
        .arg("info")
        .env("FIELDPATCH_DATA_DIR", "relative/dir")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("absolute path"), "{err}");
}
