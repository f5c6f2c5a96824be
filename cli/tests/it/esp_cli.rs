//! `fieldpatch device --esp` against the lab ESP32 ROM loader on a real pty: `info` reads the
//! chip, MAC and flash size and says what the mode allows; a bare image is refused without
//! `--allow-unverified` before any byte is sent and written (MD5-checked, recorded) with it; a
//! signed bundle goes through the gate with the inventory record: every payload at its manifest
//! offset, an unverified outcome; a bundle for another model is refused with nothing sent.

use fieldpatch_core::bundle::PayloadFormat;
use fieldpatch_core::bundle::container::assemble_raw;
use fieldpatch_core::model::Version;
use fieldpatch_lab::esp::serial::{EspServer, serve_pty};
use fieldpatch_lab::esp::{EspConfig, EspDevice};
use fieldpatch_testkit::catalog::{BundleSpec, CatalogBuilder, payload_entry, sign_manifest};
use std::path::Path;
use std::process::{Command, Output};

fn fieldpatch(data: &Path, args: &[&str]) -> Output {
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

/// An ESP32 image (chip id 0) without an appended SHA-256: header, one segment, checksum.
fn esp_image(seed: u8, len: usize) -> Vec<u8> {
    let mut img = vec![0xE9, 1, 2, 0x20];
    img.extend_from_slice(&0x4008_0000u32.to_le_bytes());
    img.extend_from_slice(&[0xEE, 0, 0, 0]);
    img.extend_from_slice(&0u16.to_le_bytes());
    img.extend_from_slice(&[0, 0, 0, 0xFF, 0xFF, 0, 0, 0, 0, 0]);
    let data: Vec<u8> =
        (0..len.div_ceil(4) * 4).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    img.extend_from_slice(&0x3FFB_0000u32.to_le_bytes());
    img.extend_from_slice(&(data.len() as u32).to_le_bytes());
    img.extend_from_slice(&data);
    while (img.len() + 1) % 16 != 0 {
        img.push(0);
    }
    img.push(data.iter().fold(0xEF, |a, b| a ^ b));
    img
}

fn lab() -> (EspDevice, EspServer, String) {
    let device = EspDevice::new(EspConfig::default()).unwrap();
    let server = serve_pty(device.clone()).unwrap();
    let port = server.path().display().to_string();
    (device, server, port)
}

#[cfg(unix)]
#[test]
fn esp_info_reads_chip_mac_and_flash_and_says_what_the_mode_allows() {
    let data = tempfile::tempdir().unwrap();
    let (device, _server, port) = lab();
    let esp = format!("{port}?reset=none");
    let out = ok(&fieldpatch(data.path(), &["--json", "device", "--esp", &esp, "info"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["chip"], "ESP32", "{v}");
    assert_eq!(v["mac"], "24:0a:c4:12:34:56", "{v}");
    assert_eq!(v["flash_size"], 4 * 1024 * 1024, "{v}");
    assert_eq!(v["reset"], "none", "{v}");
    assert_eq!(v["returned_to_app"], false, "{v}");
    let allows = v["allows"].to_string();
    assert!(allows.contains("MD5") && allows.contains("no trial boot"), "{allows}");
    let text = ok(&fieldpatch(data.path(), &["device", "--esp", &esp, "info"]));
    assert!(text.contains("chip: ESP32") && text.contains("flash: 4 MiB"), "{text}");
    assert_eq!(device.flash_data_frames(), 0);
    assert!(device.in_loader());

    // SMP commands make no sense here.
    let out = fieldpatch(data.path(), &["device", "--esp", &esp, "image", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`info` and `image upload FILE`"));
}

#[cfg(unix)]
#[test]
fn a_bare_esp_image_needs_allow_unverified_and_is_written_md5_checked_and_recorded() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (device, _server, port) = lab();
    let esp = format!("{port}@460800?reset=none");
    let img = esp_image(7, 30_000);
    let file = dir.path().join("app.bin");
    std::fs::write(&file, &img).unwrap();
    let f = file.to_str().unwrap();

    let out = fieldpatch(data.path(), &["--json", "device", "--esp", &esp, "image", "upload", f]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("--allow-unverified"), "{v}");
    assert_eq!(device.flash_data_frames(), 0, "refused before any byte was sent");

    let out = ok(&fieldpatch(
        data.path(),
        &[
            "--json",
            "device",
            "--esp",
            &esp,
            "image",
            "upload",
            f,
            "--allow-unverified",
            "--offset",
            "0x20000",
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["offset"], 0x20000, "{v}");
    assert_eq!(v["bytes"], img.len(), "{v}");
    assert_eq!(v["chip"], "ESP32", "{v}");
    assert_eq!(device.flash(0x20000, img.len()), img);
    assert_eq!(device.baud(), 460_800);
    assert!(!device.in_loader(), "reset into its application");

    let log = ok(&fieldpatch(data.path(), &["log", "show", "--json"]));
    for tag in ["unverified_image_allowed", "flash_started", "image_uploaded"] {
        assert!(log.contains(tag), "{tag} missing:\n{log}");
    }
    assert!(log.contains("ESP ROM loader cannot see the application"), "{log}");
    ok(&fieldpatch(data.path(), &["log", "verify"]));
}

#[cfg(unix)]
#[test]
fn an_esp_bundle_goes_through_the_gate_with_the_inventory_record() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (device, _server, port) = lab();
    let address = format!("esp:{port}@460800?reset=none");

    let signed = CatalogBuilder::new().write(&dir.path().join("release")).unwrap();
    let bootloader = esp_image(1, 5_000);
    let app = esp_image(2, 40_000);
    let v = |s: &str| s.parse::<Version>().unwrap();
    let spec = BundleSpec {
        id: "meter-1.3.0",
        model: "meter",
        applies: (v("1.0.0"), v("1.9.9")),
        installs: v("1.3.0"),
        cvss: "8.1",
        format: PayloadFormat::Esp,
        payload: &app,
    };
    let mut m = signed.manifest(&spec);
    m.payloads = [("bootloader.bin", &bootloader, 0x1000u32), ("app.bin", &app, 0x10000)]
        .iter()
        .map(|(name, b, offset)| {
            let mut e = payload_entry(name, PayloadFormat::Esp, b);
            e.flash_offset = Some(*offset);
            e
        })
        .collect();
    let mb = m.canonical_bytes().unwrap();
    let sigs = sign_manifest(&mb, &signed.release_keys());
    let bundle = dir.path().join("meter.fpb");
    std::fs::write(&bundle, assemble_raw(&mb, &sigs, &[&bootloader, &app])).unwrap();

    let devices = dir.path().join("devices.json");
    let record = |id: &str, model: &str| {
        serde_json::json!({
            "id": id,
            "address": address.parse::<fieldpatch_core::plan::DeviceAddress>().unwrap(),
            "identity": {"vendor": "Lab", "model": model, "firmware_version": v("1.2.0")},
        })
    };
    std::fs::write(
        &devices,
        serde_json::to_vec(&[record("meter-1", "meter"), record("pump-1", "pump")]).unwrap(),
    )
    .unwrap();
    let run = |id: &str| {
        fieldpatch(
            data.path(),
            &[
                "--json",
                "device",
                "--esp",
                &address,
                "image",
                "upload",
                bundle.to_str().unwrap(),
                "--trust",
                signed.trust_path.to_str().unwrap(),
                "--device",
                id,
                "--devices",
                devices.to_str().unwrap(),
            ],
        )
    };

    // Another model: refused by the planner, the device never opened.
    let out = run("pump-1");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(e["error"]["message"].as_str().unwrap().contains("pump"), "{e}");
    assert_eq!(device.flash_data_frames(), 0);
    assert!(device.commands().is_empty(), "the device was not even opened");

    let out = ok(&run("meter-1"));
    let o: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(o["outcome"], "unverified", "{o}");
    assert_eq!(o["version"], serde_json::to_value(v("1.3.0")).unwrap(), "{o}");
    assert_eq!(device.flash(0x1000, bootloader.len()), bootloader);
    assert_eq!(device.flash(0x10000, app.len()), app);
    assert!(!device.in_loader());

    let log = ok(&fieldpatch(data.path(), &["log", "show", "--json"]));
    for must in ["bundle_verified", "flash_started", "image_uploaded", "bootloader.bin at 0x1000"] {
        assert!(log.contains(must), "{must} missing:\n{log}");
    }
    assert!(!log.contains("\"confirmed\""), "{log}");
}

/// Discovery finds the lab ESP32's ROM loader only when the technician allows the ESP probe:
/// by its MAC as the serial number, at an `esp:` address with the reset mode chosen and the chip
/// it reported; without `--esp-reset` the port is left as not recognized, and nothing was
/// written either way.
#[cfg(unix)]
#[test]
fn discovery_finds_an_esp_rom_loader_only_when_allowed() {
    let data = tempfile::tempdir().unwrap();
    let (device, _server, port) = lab();
    let base = ["--json", "discover", "--port", port.as_str(), "--deadline", "5"];
    let out = ok(&fieldpatch(data.path(), &[&base[..], &["--esp-reset", "none"]].concat()));
    let found: serde_json::Value = serde_json::from_str(&out).unwrap();
    let out = ok(&fieldpatch(data.path(), &base));
    let without: serde_json::Value = serde_json::from_str(&out).unwrap();
    let out = fieldpatch(data.path(), &[&base[..], &["--esp-reset", "sideways"]].concat());

    let devices = found["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "{found}");
    let d = &devices[0];
    assert_eq!(d["identity"]["serial_number"], "24:0a:c4:12:34:56", "{d}");
    assert_eq!(d["bootloader"], "ESP ROM loader", "{d}");
    let address = &d["addresses"][0];
    assert_eq!(address["transport"], "esp", "{d}");
    assert_eq!(address["port"], port.as_str(), "{d}");
    assert_eq!(address["reset"], "none", "{d}");
    assert_eq!(address["chip"], "esp32", "{d}");
    let details = d["details"].to_string();
    assert!(details.contains("flash_size: 4194304"), "{details}");
    assert!(without["devices"].as_array().unwrap().is_empty(), "{without}");
    assert_eq!(without["skipped"][0]["candidate"], port.as_str(), "{without}");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sideways"), "{out:?}");
    assert_eq!(device.flash_data_frames(), 0);
    assert!(device.in_loader(), "a loader that was not reset stays in the loader");
}
