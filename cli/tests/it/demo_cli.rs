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
    assert_eq!(devices.len(), 5, "the serial and UDP demo devices");
    for d in devices {
        assert_eq!(d["disposition"]["disposition"], "patch", "{d:#}");
        assert_eq!(
            d["device"]["identity"]["firmware_version"]["minor"], 4,
            "identified live: {d:#}"
        );
    }
    // The pump controller (critical, CVSS 9.1) goes first.
    assert_eq!(devices[0]["device"]["id"], "pump-ctl-01");
}
