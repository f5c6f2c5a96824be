//! `fieldpatch device` against the simulated SMP device (real pty, real UDP socket).

use fieldpatch_lab::smp::mcuboot::{Version, build_image, parse, test_payload};
use fieldpatch_lab::smp::udp::{NetConditions, serve_udp};
use fieldpatch_lab::smp::{DeviceConfig, SmpDevice, serial::serve_pty};
use std::process::{Command, Output};
use std::time::Duration;

/// Each test process gets its own local store (the visit log records uploads).
fn data_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

fn fieldpatch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fieldpatch"))
        .args(args)
        .env("FIELDPATCH_DATA_DIR", data_dir())
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn device() -> SmpDevice {
    SmpDevice::new(DeviceConfig {
        flash_bytes_per_sec: 20e6,
        erase_time: Duration::from_millis(20),
        reboot_time: Duration::from_millis(100),
        ..DeviceConfig::default()
    })
}

#[test]
fn upload_test_reset_confirm_over_udp() {
    let dev = device();
    let server =
        serve_udp(dev.clone(), "127.0.0.1:0".parse().unwrap(), NetConditions::default()).unwrap();
    let addr = server.local_addr().to_string();
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(
        Version { major: 3, minor: 1, revision: 0, build: 0 },
        &test_payload(20_000, 4),
    );
    let file = dir.path().join("fw.bin");
    std::fs::write(&file, &img).unwrap();
    let f = file.to_str().unwrap();

    assert_eq!(ok(&fieldpatch(&["device", "--udp", &addr, "echo", "hello"])).trim(), "hello");

    // A bare file is refused without --allow-unverified, before any byte reaches the device.
    let out = fieldpatch(&["device", "--udp", &addr, "image", "upload", f, "--test"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-unverified") && err.contains("could not verify"), "{err}");
    assert!(dev.slot_bytes(1).is_none());

    let out = ok(&fieldpatch(&[
        "--json",
        "device",
        "--udp",
        &addr,
        "image",
        "upload",
        f,
        "--test",
        "--allow-unverified",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["bytes"], img.len());
    let hash: String = parse(&img).unwrap().hash.iter().map(|b| format!("{b:02x}")).collect();
    let slot1 = v["images"].as_array().unwrap().iter().find(|i| i["slot"] == 1).unwrap();
    assert_eq!(slot1["hash"], hash);
    assert_eq!(slot1["pending"], true);
    assert_eq!(dev.slot_bytes(1).unwrap(), img);
    // The visit log says an unverified image was sent, and which.
    let events = ok(&fieldpatch(&["--json", "log", "show"]));
    assert!(events.contains("unverified_image_allowed"), "{events}");
    assert!(events.contains("sent with --allow-unverified"), "{events}");

    ok(&fieldpatch(&["device", "--udp", &addr, "reset"]));
    std::thread::sleep(Duration::from_millis(300));
    let list = ok(&fieldpatch(&["device", "--udp", &addr, "image", "list"]));
    assert!(list.contains("version 3.1.0") && list.contains(&hash), "{list}");
    assert!(!dev.active_confirmed());
    ok(&fieldpatch(&["device", "--udp", &addr, "image", "confirm"]));
    assert!(dev.active_confirmed());
    assert_eq!(dev.active_image().unwrap().1, "3.1.0");

    let out = fieldpatch(&["device", "--udp", &addr, "image", "test", "abcd"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("32 bytes"));

    // Every command that changed the device is bracketed in the visit log: before it was sent and
    // with the device's answer after.
    let events: Vec<serde_json::Value> =
        serde_json::from_str(&ok(&fieldpatch(&["--json", "log", "show"]))).unwrap();
    let kinds: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            let what = e["command"].as_str().unwrap_or_default().to_string();
            (e["kind"].as_str().unwrap().to_string(), what)
        })
        .collect();
    let pos = |kind: &str, what: &str| {
        kinds
            .iter()
            .position(|(k, w)| k == kind && w == what)
            .unwrap_or_else(|| panic!("no {kind} {what} in {kinds:?}"))
    };
    assert!(pos("flash_started", "") < pos("image_uploaded", ""));
    assert!(pos("image_uploaded", "") < pos("device_command", "image_test"));
    for command in ["image_test", "reset", "image_confirm"] {
        assert_eq!(
            pos("device_command", command) + 1,
            pos("device_command_result", command),
            "{command}: {kinds:?}"
        );
    }
    let confirmed = events
        .iter()
        .find(|e| e["kind"] == "device_command_result" && e["command"] == "image_confirm")
        .unwrap();
    assert_eq!(confirmed["ok"], true, "{confirmed}");
    assert_eq!(confirmed["device"], format!("udp:{addr}"), "{confirmed}");
    let verify = ok(&fieldpatch(&["log", "verify"]));
    assert!(!verify.is_empty());
}

#[cfg(unix)]
#[test]
fn info_over_a_serial_pty() {
    let dev = device();
    let server = serve_pty(dev, 115_200).unwrap();
    let port = server.path().to_str().unwrap();
    let out = ok(&fieldpatch(&["--json", "device", "--serial", port, "info"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["params"]["buf_size"], 2048);
    assert!(v["info"].as_str().unwrap().contains("1.0.0"));
}

#[test]
fn a_missing_serial_port_is_a_clear_error() {
    let out = fieldpatch(&["device", "--serial", "/dev/does-not-exist", "echo", "x"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot open serial port /dev/does-not-exist"), "{err}");
    // With --json the error is one JSON document with a stable code.
    let out = fieldpatch(&["--json", "device", "--serial", "/dev/does-not-exist", "echo", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "serial_open", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("/dev/does-not-exist"), "{v}");
}

#[cfg(unix)]
#[test]
fn endless_inputs_are_refused_without_reading_them_whole() {
    let dev = device();
    let server =
        serve_udp(dev.clone(), "127.0.0.1:0".parse().unwrap(), NetConditions::default()).unwrap();
    let addr = server.local_addr().to_string();
    let out = fieldpatch(&[
        "--json",
        "device",
        "--udp",
        &addr,
        "image",
        "upload",
        "/dev/zero",
        "--allow-unverified",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "file_too_large", "{v}");
    assert!(dev.slot_bytes(1).is_none(), "bytes reached the device");

    let out = fieldpatch(&[
        "plan",
        "--devices",
        "/dev/zero",
        "--catalog",
        "/nonexistent",
        "--trust",
        "/nonexistent",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/dev/zero") && err.contains("larger than"), "{err}");
}
