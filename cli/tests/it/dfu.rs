//! `fieldpatch dfu list|flash` through the real binary, without a USB device.

use std::process::Command;

/// Run `fieldpatch` with a data directory of its own (the visit log it writes stays there).
fn fieldpatch(args: &[&str]) -> std::process::Output {
    let data = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_fieldpatch"))
        .env("FIELDPATCH_DATA_DIR", data.path())
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn dfu_list_json_is_a_clean_list() {
    let out = fieldpatch(&["dfu", "list", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = v.as_array().unwrap();
    if !std::path::Path::new("/dev/bus/usb").exists() && cfg!(target_os = "linux") {
        assert!(list.is_empty(), "{v}");
    }
}

#[test]
fn dfu_flash_refuses_a_damaged_file_before_touching_usb() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("fw.dfu");
    std::fs::write(&p, [0u8; 64]).unwrap();
    let out =
        fieldpatch(&["dfu", "flash", "--allow-unverified", "--device", "1-1", p.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no DFU suffix signature"), "{err}");
}

#[test]
fn dfu_flash_refuses_an_unverified_file_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("fw.dfu");
    std::fs::write(&p, [1u8; 64]).unwrap();
    let st = Command::new("dfu-suffix").arg("-a").arg(&p).output().unwrap();
    assert!(st.status.success(), "dfu-suffix (Debian package dfu-util) is required");
    let out = fieldpatch(&["--json", "dfu", "flash", "--device", "1-1", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "unverified_image", "{v}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-unverified"), "{err}");
}

#[test]
fn dfu_flash_to_a_missing_device_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("fw.dfu");
    std::fs::write(&p, [1u8; 64]).unwrap();
    let st = Command::new("dfu-suffix").arg("-a").arg(&p).output().unwrap();
    assert!(st.status.success(), "dfu-suffix (Debian package dfu-util) is required");
    let out = fieldpatch(&[
        "dfu",
        "flash",
        "--allow-unverified",
        "--device",
        "9-9.9",
        p.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no USB device at 9-9.9"), "{err}");
}

#[test]
fn dfu_flash_by_usb_address_says_which_device_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("fw.dfu");
    std::fs::write(&p, [1u8; 64]).unwrap();
    let st = Command::new("dfu-suffix").arg("-a").arg(&p).output().unwrap();
    assert!(st.status.success(), "dfu-suffix (Debian package dfu-util) is required");
    let f = p.to_str().unwrap();
    let flash = |device: &str| {
        fieldpatch(&["--json", "dfu", "flash", "--allow-unverified", "--device", device, f])
    };
    let error = |out: &std::process::Output| {
        assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["error"].clone()
    };
    // An address (VID:PID and serial number, as `dfu list` prints it) is looked up among the
    // attached devices: none here.
    let e = error(&flash("usb:1209:0002:LAB0001"));
    assert_eq!(e["code"], "device_unreachable", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("no USB DFU device usb:1209:0002:LAB0001"),
        "{e}"
    );
    // Text that is neither a location nor an address says how to write one.
    let e = error(&flash("usb:1209"));
    assert_eq!(e["code"], "invalid_input", "{e}");
    assert!(e["message"].as_str().unwrap().contains("usb:VVVV:PPPP[:SERIAL]"), "{e}");
    let e = error(&flash("udp:127.0.0.1:1337"));
    assert_eq!(e["code"], "wrong_address", "{e}");
}
