//! `fieldpatch device` against a lab device in MCUboot serial recovery on a real pty: info
//! reports the mode, `image list` says "no images" on an empty device, an upload goes to the
//! primary slot and is hash-checked, a bare image without `--allow-unverified` is refused before
//! any byte is sent, a device listing another image is caught.

use fieldpatch_lab::smp::mcuboot::{Version, build_image, parse, test_payload};
use fieldpatch_lab::smp::recovery::SerialRecovery;
use fieldpatch_lab::smp::{DeviceConfig, SmpDevice, serial::serve_pty};
use std::process::{Command, Output};
use std::time::Duration;

fn fieldpatch(data: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fieldpatch"))
        .args(args)
        .env("FIELDPATCH_DATA_DIR", data)
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

fn recovery_device(initial_image: Vec<u8>) -> SmpDevice {
    SmpDevice::new(DeviceConfig {
        flash_bytes_per_sec: 20e6,
        erase_time: Duration::from_millis(20),
        reboot_time: Duration::from_millis(100),
        initial_image,
        serial_recovery: Some(SerialRecovery::default()),
        ..DeviceConfig::default()
    })
}

fn image(dir: &std::path::Path, minor: u8) -> (std::path::PathBuf, Vec<u8>) {
    let img = build_image(
        Version { major: 2, minor, revision: 0, build: 0 },
        &test_payload(6_000, minor),
    );
    let file = dir.join(format!("fw-{minor}.bin"));
    std::fs::write(&file, &img).unwrap();
    (file, img)
}

#[cfg(unix)]
#[test]
fn recovery_device_info_list_and_upload_over_a_pty() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // An empty primary slot: the application is gone, only the bootloader answers.
    let dev = recovery_device(Vec::new());
    let server = serve_pty(dev.clone(), 115_200).unwrap();
    let port = server.path().to_str().unwrap();

    let info = ok(&fieldpatch(data.path(), &["device", "--serial", port, "info"]));
    assert!(info.contains("mode: serial recovery"), "{info}");
    assert!(info.contains("no rollback"), "{info}");
    assert!(info.contains("SMP buffers: 1 x 1024 bytes"), "{info}");
    let json = ok(&fieldpatch(data.path(), &["--json", "device", "--serial", port, "info"]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["mode"], "serial_recovery", "{json}");
    assert!(v["info"].is_null(), "{json}");

    let list = ok(&fieldpatch(data.path(), &["device", "--serial", port, "image", "list"]));
    assert_eq!(list.trim(), "no images");

    let (file, img) = image(dir.path(), 5);
    let f = file.to_str().unwrap();
    // No test boot in serial recovery: refused before anything is sent.
    let out = fieldpatch(
        data.path(),
        &["device", "--serial", port, "image", "upload", f, "--test", "--allow-unverified"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no test boot"), "{out:?}");
    assert!(dev.slot_bytes(0).is_none(), "{:?}", dev.log());

    let out = ok(&fieldpatch(
        data.path(),
        &["device", "--serial", port, "image", "upload", f, "--allow-unverified"],
    ));
    let hash: String = parse(&img).unwrap().hash.iter().map(|b| format!("{b:02x}")).collect();
    assert!(out.contains("image 0 slot 0: version 2.5.0") && out.contains(&hash), "{out}");
    assert_eq!(dev.slot_bytes(0).as_deref(), Some(&img[..]));
    assert!(dev.in_serial_recovery());

    let log = ok(&fieldpatch(data.path(), &["log", "show"]));
    assert!(log.contains("no rollback"), "{log}");

    ok(&fieldpatch(data.path(), &["device", "--serial", port, "reset"]));
    std::thread::sleep(Duration::from_millis(600));
    assert!(!dev.in_serial_recovery(), "{:?}", dev.log());
    let info = ok(&fieldpatch(data.path(), &["device", "--serial", port, "info"]));
    assert!(info.contains("mode: application") && info.contains("2.5.0"), "{info}");
}

#[cfg(unix)]
#[test]
fn recovery_upload_refuses_unverified_images_and_catches_another_listed_image() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_, old) = image(dir.path(), 1);
    let dev = recovery_device(old.clone());
    let server = serve_pty(dev.clone(), 115_200).unwrap();
    let port = server.path().to_str().unwrap();

    // A bare image is refused without --allow-unverified, before any byte reaches the device
    // (tampered bytes are refused by the pipeline: core's recovery_flash tests).
    let (file, _img) = image(dir.path(), 2);
    let out = fieldpatch(
        data.path(),
        &["device", "--serial", port, "image", "upload", file.to_str().unwrap()],
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-unverified"), "{out:?}");
    assert!(!dev.log().iter().any(|l| l.contains("upload")), "{:?}", dev.log());
    assert_eq!(dev.slot_bytes(0).as_deref(), Some(&old[..]));

    // The device ends up listing another image than the one sent: the hash check says so.
    let (_, other) = image(dir.path(), 3);
    dev.faults().recovery_lists_other = Some(other);
    let out = fieldpatch(
        data.path(),
        &[
            "device",
            "--serial",
            port,
            "image",
            "upload",
            file.to_str().unwrap(),
            "--allow-unverified",
        ],
    );
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("reports hash") && err.contains("was verified"), "{err}");
    assert!(dev.log().iter().any(|l| l.contains("serial recovery: upload complete")));
}
