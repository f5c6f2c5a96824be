//! Faithfulness: `smpmgr` (PyPI, an independent SMP client) drives the simulated device over a real
//! pty and over UDP: upload, image list, test, reset, confirm.

use fieldpatch_lab::smp::mcuboot::{Version, build_image, test_payload};
use fieldpatch_lab::smp::udp::{NetConditions, serve_udp};
use fieldpatch_lab::smp::{DeviceConfig, SmpDevice, serial::serve_pty};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

pub(crate) fn smpmgr() -> PathBuf {
    let venv = std::env::var_os("FIELDPATCH_TOOLS_VENV").map(PathBuf::from).or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/fieldpatch/venv"))
    });
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("smpmgr")).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(venv.map(|v| v.join("bin/smpmgr")));
    for c in candidates {
        if c.is_file() {
            return c;
        }
    }
    panic!(
        "smpmgr is not installed: run scripts/setup (it installs scripts/python-requirements.txt \
         into $HOME/.cache/fieldpatch/venv), or `pip install smpmgr==0.19.1` into that venv"
    );
}

fn run(target: &[String], args: &[&str]) -> String {
    let out = Command::new(smpmgr())
        .args(target)
        .args(["--timeout", "5"])
        .args(args)
        .env("COLUMNS", "200")
        .env("NO_COLOR", "1")
        .output()
        .expect("smpmgr runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "smpmgr {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn scenario(dev: &SmpDevice, target: Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(
        Version { major: 1, minor: 4, revision: 2, build: 0 },
        &test_payload(12_000, 9),
    );
    let file = dir.path().join("app.signed.bin");
    std::fs::write(&file, &img).unwrap();
    let new_hash = fieldpatch_lab::smp::mcuboot::parse(&img).unwrap().hash;
    let hex: String = new_hash.iter().map(|b| format!("{b:02x}")).collect();
    let old = dev.active_image().unwrap();

    let echo = run(&target, &["os", "echo", "faithful"]);
    assert!(echo.contains("faithful"), "{echo}");

    run(&target, &["image", "upload", "--slot", "1", file.to_str().unwrap()]);
    assert_eq!(dev.slot_bytes(1).as_deref(), Some(&img[..]), "{:?}", dev.log());

    let list = run(&target, &["image", "state-read"]);
    assert!(list.contains("1.4.2"), "image list lacks the new version:\n{list}");
    assert!(list.to_lowercase().contains(&hex[..16]), "image list lacks the new hash:\n{list}");

    run(&target, &["image", "state-write", &hex]);
    run(&target, &["os", "reset"]);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(dev.active_image().unwrap().0, new_hash, "{:?}", dev.log());
    assert!(!dev.active_confirmed());

    run(&target, &["image", "state-write", "--confirm"]);
    assert!(dev.active_confirmed());
    run(&target, &["os", "reset"]);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(dev.active_image().unwrap().0, new_hash, "{:?}", dev.log());
    assert_ne!(dev.active_image().unwrap().0, old.0);
    let list = run(&target, &["image", "state-read"]);
    assert!(list.contains("1.4.2"), "{list}");
}

#[cfg(unix)]
#[test]
fn smpmgr_drives_the_lab_device_over_a_pty() {
    let dev = SmpDevice::new(DeviceConfig::default());
    let server = serve_pty(dev.clone(), 115_200).unwrap();
    let port = server.path().to_str().unwrap().to_string();
    scenario(&dev, vec!["--port".into(), port, "--baudrate".into(), "115200".into()]);
}

#[test]
fn smpmgr_drives_the_lab_device_over_udp() {
    let dev = SmpDevice::new(DeviceConfig::default());
    // smpmgr's UDP transport always talks to port 1337; bind the loopback one if it is free,
    // otherwise another loopback address.
    let server = ["127.0.0.1:1337", "127.0.0.2:1337", "127.0.0.3:1337"]
        .iter()
        .find_map(|a| serve_udp(dev.clone(), a.parse().unwrap(), NetConditions::default()).ok())
        .expect("no free loopback address for UDP port 1337");
    let ip = server.local_addr().ip().to_string();
    scenario(&dev, vec!["--ip".into(), ip]);
}
