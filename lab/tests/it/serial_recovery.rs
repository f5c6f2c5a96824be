//! MCUboot serial recovery in the lab device, checked against `smpmgr` (an independent SMP
//! client) on a real pty: what the bootloader answers and refuses, primary-slot uploads without
//! `match`, direct-upload image numbers, the reset into the application.

use super::smpmgr::smpmgr;
use fieldpatch_lab::smp::mcuboot::{Version, build_image, parse, test_payload};
use fieldpatch_lab::smp::recovery::SerialRecovery;
use fieldpatch_lab::smp::{DeviceConfig, SmpDevice, serial::serve_pty};
use std::process::{Command, Output};
use std::time::Duration;

fn recovery_device(rec: SerialRecovery) -> SmpDevice {
    SmpDevice::new(DeviceConfig {
        flash_bytes_per_sec: 20e6,
        erase_time: Duration::from_millis(20),
        reboot_time: Duration::from_millis(100),
        serial_recovery: Some(rec),
        ..DeviceConfig::default()
    })
}

fn run(port: &str, args: &[&str]) -> Output {
    Command::new(smpmgr())
        .args(["--port", port, "--baudrate", "115200", "--timeout", "5"])
        .args(args)
        .env("COLUMNS", "200")
        .env("NO_COLOR", "1")
        .output()
        .expect("smpmgr runs")
}

fn text(out: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn ok(port: &str, args: &[&str]) -> String {
    let out = run(port, args);
    assert!(out.status.success(), "smpmgr {args:?} failed ({}):\n{}", out.status, text(&out));
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(unix)]
#[test]
fn smpmgr_drives_the_lab_device_in_serial_recovery() {
    let dev = recovery_device(SerialRecovery::default());
    let server = serve_pty(dev.clone(), 115_200).unwrap();
    let port = server.path().to_str().unwrap().to_string();
    let old = dev.active_image().unwrap();

    let list = ok(&port, &["image", "state-read"]);
    assert!(list.contains("1.0.0") && list.to_lowercase().contains(&hex(&old.0)[..16]), "{list}");
    // Without the image-state option the bootloader says nothing of active or confirmed images.
    assert!(list.contains("active=None") && list.contains("confirmed=None"), "{list}");
    assert!(!list.contains("slot=1"), "{list}");

    // Echo and the parameters command are not built in by default: rc 8 (ENOTSUP), v1 style.
    let echo = text(&run(&port, &["os", "echo", "hello"]));
    assert!(echo.contains("ENOTSUP: 8") && !echo.contains("r='hello'"), "{echo}");
    assert!(echo.contains("Error reading MCUMgr parameters"), "{echo}");
    // No image-state write either.
    let write = text(&run(&port, &["image", "state-write", "--confirm"]));
    assert!(write.contains("ENOTSUP: 8"), "{write}");

    let dir = tempfile::tempdir().unwrap();
    let img = build_image(
        Version { major: 2, minor: 3, revision: 1, build: 0 },
        &test_payload(20_000, 5),
    );
    let file = dir.path().join("app.signed.bin");
    std::fs::write(&file, &img).unwrap();
    // One image without direct upload: image 1 has no flash area.
    let refused = text(&run(&port, &["image", "upload", "--slot", "1", file.to_str().unwrap()]));
    assert!(refused.contains("EINVAL: 3") || refused.contains("rc=3"), "{refused}");
    assert_eq!(dev.slot_bytes(0).as_deref().map(parse), Some(parse(&dev.config().initial_image)));
    ok(&port, &["image", "upload", "--slot", "0", file.to_str().unwrap()]);
    assert_eq!(dev.slot_bytes(0).as_deref(), Some(&img[..]), "{:?}", dev.log());
    assert!(dev.slot_bytes(1).is_none());

    let list = ok(&port, &["image", "state-read"]);
    let new_hash = parse(&img).unwrap().hash;
    assert!(list.contains("2.3.1"), "{list}");
    assert!(list.to_lowercase().contains(&hex(&new_hash)[..16]), "{list}");

    ok(&port, &["os", "reset"]);
    std::thread::sleep(Duration::from_millis(600));
    assert!(!dev.in_serial_recovery(), "{:?}", dev.log());
    assert_eq!(dev.active_image().unwrap().0, new_hash);
}

#[cfg(unix)]
#[test]
fn smpmgr_direct_image_upload_and_echo_in_serial_recovery() {
    let rec = SerialRecovery {
        echo: true,
        mcumgr_params: true,
        direct_image_upload: true,
        ..SerialRecovery::default()
    };
    let dev = recovery_device(rec);
    let server = serve_pty(dev.clone(), 115_200).unwrap();
    let port = server.path().to_str().unwrap().to_string();

    let echo = ok(&port, &["os", "echo", "hello"]);
    assert!(echo.contains("hello"), "{echo}");
    let params = text(&run(&port, &["os", "echo", "x"]));
    assert!(!params.contains("Error reading MCUMgr parameters"), "{params}");

    let dir = tempfile::tempdir().unwrap();
    let img =
        build_image(Version { major: 1, minor: 9, revision: 0, build: 0 }, &test_payload(9_000, 7));
    let file = dir.path().join("app.signed.bin");
    std::fs::write(&file, &img).unwrap();
    // Direct upload: image 2 is the secondary slot of image 0, listed as slot 1.
    ok(&port, &["image", "upload", "--slot", "2", file.to_str().unwrap()]);
    assert_eq!(dev.slot_bytes(1).as_deref(), Some(&img[..]), "{:?}", dev.log());
    let list = ok(&port, &["image", "state-read"]);
    assert!(list.contains("slot=1") && list.contains("1.9.0"), "{list}");
    // Image 1 is the primary slot.
    ok(&port, &["image", "upload", "--slot", "1", file.to_str().unwrap()]);
    assert_eq!(dev.slot_bytes(0).as_deref(), Some(&img[..]), "{:?}", dev.log());
}

#[test]
fn recovery_console_drops_long_lines_and_frames_not_at_line_start() {
    use fieldpatch_lab::smp::serial::{Decoder, encode};
    let packet = [2u8, 0, 0, 0, 0, 1, 0, 1];
    let framed = encode(&packet);
    let mut app = Decoder::default();
    let mut rec = Decoder::default();
    rec.recovery_line_limit = Some(128);
    assert_eq!(rec.push(&framed), vec![packet.to_vec()]);
    // Noise before the marker: the application's decoder finds the frame, the bootloader not.
    let mut noisy = b"log line ".to_vec();
    noisy.extend_from_slice(&framed);
    assert_eq!(app.push(&noisy), vec![packet.to_vec()]);
    assert!(rec.push(&noisy).is_empty());
    // A line longer than the bootloader's line buffer is dropped.
    let mut long = vec![6u8, 9];
    long.extend(std::iter::repeat_n(b' ', 130));
    long.extend_from_slice(&framed[2..]);
    assert_eq!(app.push(&long), vec![packet.to_vec()]);
    assert!(rec.push(&long).is_empty());
}
