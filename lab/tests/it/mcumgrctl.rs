//! Faithfulness: `mcumgrctl` (crates.io, the MCUmgr client of the `mcumgr-toolkit` project, an SMP
//! implementation independent of Fieldpatch's and of `smpmgr`) drives the simulated device over a
//! real pty and over UDP: the image state it lists against what the device holds, uploads checked
//! byte for byte in the secondary slot, test, reset, confirm and revert as MCUboot does them, and
//! the refusals it must report as errors. Its `--json` output is read, not its prose.

use fieldpatch_lab::smp::mcuboot::{Version, build_image, parse, test_payload};
use fieldpatch_lab::smp::udp::{NetConditions, serve_udp};
use fieldpatch_lab::smp::{DeviceConfig, SmpDevice, serial::serve_pty};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The `mcumgrctl` binary: on PATH, else where `cargo install` puts it.
pub(crate) fn mcumgrctl() -> PathBuf {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|d| d.join("bin/mcumgrctl"));
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("mcumgrctl")).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(cargo_bin);
    for c in candidates {
        if c.is_file() {
            return c;
        }
    }
    panic!(
        "mcumgrctl is not installed: run scripts/setup (it runs `cargo install mcumgrctl \
         --version 0.20.0 --locked --no-default-features`)"
    );
}

fn run(target: &[String], args: &[&str]) -> Output {
    Command::new(mcumgrctl())
        .args(target)
        .args(["--json", "--quiet"])
        .args(args)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "warn")
        .output()
        .expect("mcumgrctl runs")
}

fn text(out: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Run a command that must succeed; its standard output.
fn ok(target: &[String], args: &[&str]) -> String {
    let out = run(target, args);
    assert!(out.status.success(), "mcumgrctl {args:?} failed ({}):\n{}", out.status, text(&out));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Run a command the device must refuse; what mcumgrctl said.
fn refused(target: &[String], args: &[&str]) -> String {
    let out = run(target, args);
    assert!(!out.status.success(), "mcumgrctl {args:?} succeeded:\n{}", text(&out));
    text(&out)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// One slot as `image get-state --json` reports it.
#[derive(Debug, PartialEq, Eq)]
struct SlotState {
    slot: u64,
    version: String,
    hash: String,
    bootable: bool,
    active: bool,
    confirmed: bool,
    pending: bool,
    permanent: bool,
}

fn parse_state(json: &str) -> Vec<SlotState> {
    let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let list = v.as_array().unwrap_or_else(|| panic!("not a list of images: {json}"));
    list.iter()
        .map(|i| {
            assert_eq!(i["image"], 0, "{json}");
            let flag = |k: &str| i[k].as_bool().unwrap_or_else(|| panic!("{k} missing: {json}"));
            SlotState {
                slot: i["slot"].as_u64().unwrap(),
                version: i["version"].as_str().unwrap().to_string(),
                hash: i["hash"].as_str().unwrap().to_string(),
                bootable: flag("bootable"),
                active: flag("active"),
                confirmed: flag("confirmed"),
                pending: flag("pending"),
                permanent: flag("permanent"),
            }
        })
        .collect()
}

/// What the lab device holds in `slot`, with the flags the test expects for it.
fn held(
    dev: &SmpDevice,
    slot: usize,
    [active, confirmed, pending, permanent]: [bool; 4],
) -> SlotState {
    let bytes = dev.slot_bytes(slot).unwrap_or_else(|| panic!("slot {slot} is empty"));
    let info = parse(&bytes).unwrap();
    SlotState {
        slot: slot as u64,
        version: info.version.to_string(),
        hash: hex(&info.hash),
        bootable: info.valid,
        active,
        confirmed,
        pending,
        permanent,
    }
}

fn state(target: &[String]) -> Vec<SlotState> {
    parse_state(&ok(target, &["image", "get-state"]))
}

/// `os system-reset`, then wait until the device has booted again (the reset is answered first).
fn reset(dev: &SmpDevice, target: &[String]) {
    let boots = dev.boots();
    ok(target, &["os", "system-reset"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while dev.boots() == boots {
        assert!(Instant::now() < deadline, "no reboot after the reset command: {:?}", dev.log());
        std::thread::sleep(Duration::from_millis(10));
    }
}

const STABLE: [bool; 4] = [true, true, false, false];
const NONE: [bool; 4] = [false; 4];

fn image_file(dir: &Path, name: &str, version: Version, seed: u8) -> (PathBuf, Vec<u8>, String) {
    let img = build_image(version, &test_payload(12_000, seed));
    let file = dir.join(name);
    std::fs::write(&file, &img).unwrap();
    let hash = hex(&parse(&img).unwrap().hash);
    (file, img, hash)
}

/// List, upload, test, reset, confirm, reset: the new image runs for good.
fn scenario(dev: &SmpDevice, target: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let v = Version { major: 1, minor: 4, revision: 2, build: 0 };
    let (file, img, new_hash) = image_file(dir.path(), "app.signed.bin", v, 9);

    // mcumgrctl sends echo as a read request (Zephyr answers it as a read and as a write); its
    // bare connection check is an echo of random text.
    assert_eq!(ok(target, &["os", "echo", "faithful"]).trim(), "faithful");
    ok(target, &[]);
    assert_eq!(state(target), vec![held(dev, 0, STABLE)], "{:?}", dev.log());

    ok(target, &["image", "upload", file.to_str().unwrap()]);
    assert_eq!(dev.slot_bytes(1).as_deref(), Some(&img[..]), "{:?}", dev.log());
    let listed = state(target);
    assert_eq!(listed, vec![held(dev, 0, STABLE), held(dev, 1, NONE)]);
    assert_eq!((listed[1].version.as_str(), listed[1].hash.as_str()), ("1.4.2", &new_hash[..]));

    // Test: the answer is the new state, the secondary pending for one boot.
    let answer = parse_state(&ok(target, &["image", "set-state", "--hash", &new_hash]));
    assert_eq!(answer, vec![held(dev, 0, STABLE), held(dev, 1, [false, false, true, false])]);
    assert_eq!(state(target), answer);

    // The reset swaps it in for a test boot: active, not confirmed; the old image is the fallback.
    reset(dev, target);
    assert_eq!(hex(&dev.active_image().unwrap().0), new_hash, "{:?}", dev.log());
    assert!(!dev.active_confirmed());
    let listed = state(target);
    assert_eq!(
        listed,
        vec![held(dev, 0, [true, false, false, false]), held(dev, 1, [false, true, false, false])]
    );
    assert_eq!(listed[0].hash, new_hash);

    // Confirm the running image: it stays after the next reset.
    let answer = parse_state(&ok(target, &["image", "set-state", "--confirm"]));
    assert!(dev.active_confirmed(), "{:?}", dev.log());
    assert_eq!(answer, vec![held(dev, 0, STABLE), held(dev, 1, NONE)]);
    reset(dev, target);
    assert_eq!(hex(&dev.active_image().unwrap().0), new_hash, "{:?}", dev.log());
    let listed = state(target);
    assert_eq!(listed, vec![held(dev, 0, STABLE), held(dev, 1, NONE)]);
    assert_eq!((listed[0].version.as_str(), listed[0].hash.as_str()), ("1.4.2", &new_hash[..]));
}

fn udp_target(dev: &SmpDevice) -> (fieldpatch_lab::smp::udp::UdpServer, Vec<String>) {
    let server =
        serve_udp(dev.clone(), "127.0.0.1:0".parse().unwrap(), NetConditions::default()).unwrap();
    let target = vec!["--udp".to_string(), server.local_addr().to_string()];
    (server, target)
}

#[cfg(unix)]
#[test]
fn mcumgrctl_drives_the_lab_device_over_a_pty() {
    let dev = SmpDevice::new(DeviceConfig::default());
    let server = serve_pty(dev.clone(), 115_200).unwrap();
    let port = server.path().to_str().unwrap().to_string();
    scenario(&dev, &["--serial".into(), port, "--baud".into(), "115200".into()]);
}

#[test]
fn mcumgrctl_drives_the_lab_device_over_udp() {
    let dev = SmpDevice::new(DeviceConfig::default());
    let (_server, target) = udp_target(&dev);
    scenario(&dev, &target);
}

/// A test boot that is not confirmed is reverted by the next reset, as MCUboot does; mcumgrctl's
/// own update sequence (upload, test, reset) reaches the same test boot.
#[test]
fn mcumgrctl_sees_an_unconfirmed_test_image_reverted() {
    let dev = SmpDevice::new(DeviceConfig::default());
    let (_server, target) = udp_target(&dev);
    let dir = tempfile::tempdir().unwrap();
    let old = hex(&dev.active_image().unwrap().0);
    let v = Version { major: 1, minor: 5, revision: 0, build: 7 };
    let (file, img, new_hash) = image_file(dir.path(), "app.signed.bin", v, 3);

    let boots = dev.boots();
    ok(&target, &["firmware", "update", "--bootloader", "mcuboot", file.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while dev.boots() == boots {
        assert!(Instant::now() < deadline, "no reboot after the update: {:?}", dev.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(hex(&dev.active_image().unwrap().0), new_hash, "{:?}", dev.log());
    assert_eq!(dev.slot_bytes(0).as_deref(), Some(&img[..]));
    let listed = state(&target);
    assert_eq!(
        listed,
        vec![
            held(&dev, 0, [true, false, false, false]),
            held(&dev, 1, [false, true, false, false])
        ]
    );
    assert_eq!(listed[0].version, "1.5.0.7");

    reset(&dev, &target);
    assert_eq!(hex(&dev.active_image().unwrap().0), old, "{:?}", dev.log());
    assert!(dev.active_confirmed());
    let listed = state(&target);
    assert_eq!(listed, vec![held(&dev, 0, STABLE), held(&dev, 1, NONE)]);
    assert_eq!((listed[0].hash.as_str(), listed[1].hash.as_str()), (&old[..], &new_hash[..]));
}

/// What the device refuses, mcumgrctl reports as an error naming Zephyr's code, and the slots
/// are left as they were.
#[test]
fn mcumgrctl_reports_what_the_lab_device_refuses() {
    let dev = SmpDevice::new(DeviceConfig::default());
    let (_server, target) = udp_target(&dev);
    let dir = tempfile::tempdir().unwrap();

    // Not an MCUboot image: the header magic is checked on the first chunk.
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, test_payload(4096, 1)).unwrap();
    let said = refused(&target, &["image", "upload", junk.to_str().unwrap()]);
    assert!(said.contains("IMG_MGMT_ERR_INVALID_IMAGE_HEADER_MAGIC"), "{said}");
    assert_eq!(dev.slot_bytes(1), None, "{:?}", dev.log());

    // Upgrade only, with an image older than the running one.
    let older = Version { major: 0, minor: 9, revision: 0, build: 0 };
    let (old_file, _, old_hash) = image_file(dir.path(), "older.bin", older, 2);
    let said = refused(&target, &["image", "upload", "--upgrade-only", old_file.to_str().unwrap()]);
    assert!(said.contains("IMG_MGMT_ERR_CURRENT_VERSION_IS_NEWER"), "{said}");
    assert_eq!(dev.slot_bytes(1), None, "{:?}", dev.log());

    // A hash no slot holds, and one of the wrong length.
    let said = refused(&target, &["image", "set-state", "--hash", &old_hash]);
    assert!(said.contains("IMG_MGMT_ERR_HASH_NOT_FOUND"), "{said}");
    let said = refused(&target, &["image", "set-state", "--hash", &old_hash[..8]]);
    assert!(said.contains("IMG_MGMT_ERR_INVALID_HASH"), "{said}");

    // The running image cannot be marked for a test boot.
    let running = hex(&dev.active_image().unwrap().0);
    let said = refused(&target, &["image", "set-state", "--hash", &running]);
    assert!(said.contains("IMG_MGMT_ERR_IMAGE_SETTING_TEST_TO_ACTIVE_DENIED"), "{said}");

    // While an image is pending, the secondary slot is in use: no upload over it.
    let newer = Version { major: 2, minor: 0, revision: 0, build: 0 };
    let (new_file, img, new_hash) = image_file(dir.path(), "newer.bin", newer, 4);
    ok(&target, &["image", "upload", new_file.to_str().unwrap()]);
    ok(&target, &["image", "set-state", "--hash", &new_hash]);
    let said = refused(&target, &["image", "upload", old_file.to_str().unwrap()]);
    assert!(said.contains("IMG_MGMT_ERR_NO_FREE_SLOT"), "{said}");
    assert_eq!(dev.slot_bytes(1).as_deref(), Some(&img[..]), "{:?}", dev.log());
    let said = refused(&target, &["image", "erase"]);
    assert!(said.contains("IMG_MGMT_ERR_NO_FREE_SLOT"), "{said}");
    // Confirming the running image would cancel the pending test: refused too.
    let said = refused(&target, &["image", "set-state", "--confirm"]);
    assert!(said.contains("IMG_MGMT_ERR_IMAGE_ALREADY_PENDING"), "{said}");
    let listed = state(&target);
    assert_eq!(listed, vec![held(&dev, 0, STABLE), held(&dev, 1, [false, false, true, false])]);

    // During the test boot the secondary holds the image MCUboot reverts to: it is not
    // overwritten or erased, and it cannot be put on test.
    let fallback = dev.slot_bytes(0).unwrap();
    let fallback_hash = hex(&dev.active_image().unwrap().0);
    reset(&dev, &target);
    assert_eq!(hex(&dev.active_image().unwrap().0), new_hash, "{:?}", dev.log());
    let said = refused(&target, &["image", "upload", old_file.to_str().unwrap()]);
    assert!(said.contains("IMG_MGMT_ERR_NO_FREE_SLOT"), "{said}");
    let said = refused(&target, &["image", "erase"]);
    assert!(said.contains("IMG_MGMT_ERR_NO_FREE_SLOT"), "{said}");
    let said = refused(&target, &["image", "set-state", "--hash", &fallback_hash]);
    assert!(said.contains("IMG_MGMT_ERR_IMAGE_ALREADY_PENDING"), "{said}");
    assert_eq!(dev.slot_bytes(1).as_deref(), Some(&fallback[..]), "{:?}", dev.log());
    let listed = state(&target);
    assert_eq!(
        listed,
        vec![
            held(&dev, 0, [true, false, false, false]),
            held(&dev, 1, [false, true, false, false])
        ]
    );

    // Once the running image is confirmed, the secondary is free again.
    ok(&target, &["image", "set-state", "--confirm"]);
    ok(&target, &["image", "erase"]);
    assert_eq!(dev.slot_bytes(1), None, "{:?}", dev.log());
    assert_eq!(state(&target), vec![held(&dev, 0, STABLE)]);
}
