//! A batch session through the facade that mixes an SMP sensor (lab, UDP), a USB DFU board (lab
//! bus) and an SWUpdate gateway (the real daemon, its password from the keyring) with an ESP32 in
//! its ROM serial bootloader (the lab loader on a real pty, at an `esp:` address): the ESP bundle
//! carries a bootloader, a partition table and an application, each at its signed flash offset;
//! the ESP device is planned from the inventory's record (its ROM cannot say what it runs), every
//! payload lands at its offset, checked with the device's MD5, and the log says flash_started,
//! image_uploaded and an unverified outcome with the ESP ROM loader's reason, never confirmed.
//! A tampered ESP bundle is refused at catalog load, and a bundle for another chip by the target,
//! both before the lab device sees a single FLASH_DATA. Faults: a dropped frame is recovered, a
//! flash write failure is reported with the device left in its ROM loader. With an OTA partition
//! table the application goes to the slot the device does not run (read through the ROM
//! loader), and OTA data selecting it is written after it.

use fieldpatch_core::Fieldpatch;
use fieldpatch_core::bundle::PayloadFormat;
use fieldpatch_core::bundle::container::assemble_raw;
use fieldpatch_core::bundle::verify::VerifyPolicy;
use fieldpatch_core::credentials::{CredentialName, Secret};
use fieldpatch_core::model::Version;
use fieldpatch_core::plan::{Criticality, DeviceAddress, Disposition, EspReset};
use fieldpatch_core::session::batch::{load_catalog, make_plan};
use fieldpatch_core::session::{DeviceStatus, SessionOptions, SessionState, Threshold};
use fieldpatch_core::visitlog::EventKind;
use fieldpatch_lab::esp::serial::{EspServer, serve_pty};
use fieldpatch_lab::esp::{EspConfig, EspDevice};
use fieldpatch_lab::smp::mcuboot::{self, build_image, test_payload};
use fieldpatch_testkit::catalog::{BundleSpec, CatalogBuilder, SignedCatalog, sign_manifest};
use fieldpatch_testkit::site::SiteBuilder;
use fieldpatch_testkit::swupdate::{Daemon, DaemonAuth, Swu, Vendor};
use md5::Md5;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

const GATEWAY_PASSWORD: &str = "gw-esp-session-pass-5521";

fn v(a: u8, b: u8, c: u16) -> Version {
    Version::new(a, b, c, 0)
}

/// A minimal ESP image (header naming `chip_id`, one segment, checksum, appended SHA-256).
fn esp_image(chip_id: u16, payload: &[u8]) -> Vec<u8> {
    let mut img = vec![0xE9, 1, 2, 0x20];
    img.extend_from_slice(&0x4008_0000u32.to_le_bytes());
    img.extend_from_slice(&[0xEE, 0, 0, 0]);
    img.extend_from_slice(&chip_id.to_le_bytes());
    img.extend_from_slice(&[0, 0, 0, 0xFF, 0xFF, 0, 0, 0, 0, 1]);
    let mut data = payload.to_vec();
    data.resize(payload.len().div_ceil(4) * 4, 0);
    img.extend_from_slice(&0x3FFB_0000u32.to_le_bytes());
    img.extend_from_slice(&(data.len() as u32).to_le_bytes());
    img.extend_from_slice(&data);
    while (img.len() + 1) % 16 != 0 {
        img.push(0);
    }
    img.push(data.iter().fold(0xEF, |a, b| a ^ b));
    let sha = Sha256::digest(&img);
    img.extend_from_slice(&sha);
    img
}

fn bytes(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 11) as u8
        })
        .collect()
}

/// An ESP-IDF partition table of `(type, subtype, offset, size, name)` entries, with its MD5.
fn table_of(entries: &[(u8, u8, u32, u32, &str)]) -> Vec<u8> {
    let mut t = Vec::new();
    for (ty, sub, offset, size, name) in entries {
        t.extend_from_slice(&[0xAA, 0x50, *ty, *sub]);
        t.extend_from_slice(&offset.to_le_bytes());
        t.extend_from_slice(&size.to_le_bytes());
        let mut n = name.as_bytes().to_vec();
        n.resize(16, 0);
        t.extend_from_slice(&n);
        t.extend_from_slice(&0u32.to_le_bytes());
    }
    let md5: [u8; 16] = Md5::digest(&t).into();
    t.extend_from_slice(&[0xEB, 0xEB]);
    t.extend_from_slice(&[0xFF; 14]);
    t.extend_from_slice(&md5);
    t.resize(0xC00, 0xFF);
    t
}

/// The "single factory app" table: nvs, phy_init, factory at 0x10000.
fn partition_table() -> Vec<u8> {
    table_of(&[
        (1, 2, 0x9000, 0x6000, "nvs"),
        (1, 1, 0xF000, 0x1000, "phy_init"),
        (0, 0, 0x10000, 0x100000, "factory"),
    ])
}

/// The "two OTA slots" table: nvs, otadata at 0xd000, phy_init, ota_0 and ota_1.
fn ota_table() -> Vec<u8> {
    table_of(&[
        (1, 2, 0x9000, 0x4000, "nvs"),
        (1, 0, 0xD000, 0x2000, "otadata"),
        (1, 1, 0xF000, 0x1000, "phy_init"),
        (0, 0x10, 0x10000, 0x100000, "ota_0"),
        (0, 0x11, 0x110000, 0x100000, "ota_1"),
    ])
}

/// Sign a bundle of ESP payloads `(name, bytes, offset)` for model `meter`; with `tamper` one
/// byte of the last payload changes after signing.
fn esp_bundle(
    signed: &SignedCatalog,
    id: &str,
    payloads: &[(&str, &[u8], u32)],
    tamper: bool,
) -> std::path::PathBuf {
    let spec = BundleSpec {
        id,
        model: "meter",
        applies: (v(1, 0, 0), v(1, 9, 9)),
        installs: v(1, 3, 0),
        cvss: "8.1",
        format: PayloadFormat::Esp,
        payload: payloads[0].1,
    };
    let mut m = signed.manifest(&spec);
    m.payloads = payloads
        .iter()
        .map(|(name, b, offset)| {
            let mut e = fieldpatch_testkit::catalog::payload_entry(name, PayloadFormat::Esp, b);
            e.flash_offset = Some(*offset);
            e
        })
        .collect();
    let mb = m.canonical_bytes().unwrap();
    let sigs = sign_manifest(&mb, &signed.release_keys());
    let mut held: Vec<Vec<u8>> = payloads.iter().map(|(_, b, _)| b.to_vec()).collect();
    if tamper {
        let last = held.last_mut().unwrap();
        let at = last.len() / 2;
        last[at] ^= 0x01;
    }
    let refs: Vec<&[u8]> = held.iter().map(Vec::as_slice).collect();
    let path = signed.catalog_dir.join(format!("{id}.fpb"));
    std::fs::write(&path, assemble_raw(&mb, &sigs, &refs)).unwrap();
    path
}

fn lab_esp() -> (EspDevice, EspServer, DeviceAddress) {
    let device = EspDevice::new(EspConfig::default()).unwrap();
    let server = serve_pty(device.clone()).unwrap();
    let address = DeviceAddress::Esp {
        port: server.path().display().to_string(),
        baud: Some(460_800),
        reset: EspReset::None,
        chip: Some("esp32".into()),
    };
    (device, server, address)
}

fn options() -> SessionOptions {
    SessionOptions {
        canary: false,
        soak: Duration::from_millis(10),
        wave_size: 2,
        concurrency: 2,
        failure_threshold: Threshold::Count(2),
        retries: 0,
        dry_run: false,
        reconnect_timeout: Duration::from_secs(5),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_flashes_an_esp32_beside_smp_dfu_and_swupdate_devices_and_records_it_unverified() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let site = SiteBuilder::new()
        .first_seed(11)
        .flash_speed(1024.0 * 1024.0)
        .udp_sensors(1, "sensor", Criticality::Normal, |_| "sensor-lan".into())
        .dfu_board("board-usb", "board", "1.0.0".parse().unwrap(), Criticality::Normal)
        .start()
        .unwrap();
    let (esp, _server, address) = lab_esp();
    // An SWUpdate gateway: the real daemon behind digest authentication.
    let vendor = Vendor::new(&root.join("vendor"), "Gateway Vendor");
    let auth = DaemonAuth {
        user: "admin".into(),
        realm: "gw-esp-site".into(),
        password: GATEWAY_PASSWORD.into(),
    };
    let daemon = Daemon::start(&root.join("daemon"), "gw100:1.0", &vendor.cert, Some(&auth));
    let rootfs = bytes(120_000, 9);
    let swu = Swu {
        version: "2.1.0".into(),
        hardware: vec!["1.0".into()],
        image_name: "rootfs.img".into(),
        image: rootfs.clone(),
        device_path: daemon.flash.clone(),
        signer: Some(vendor.clone()),
        tamper: false,
    };
    let swu_bytes = std::fs::read(swu.write(root, "gw.swu")).unwrap();

    let signed = CatalogBuilder::new()
        .vendor_certificate(&vendor.cert_pem(), "gateway vendor")
        .write(&root.join("release"))
        .unwrap();
    let sensor_image = build_image(
        mcuboot::Version { major: 2, minor: 0, revision: 0, build: 0 },
        &test_payload(8 * 1024, 5),
    );
    signed
        .bundle(&BundleSpec {
            id: "lab-sensor-2.0.0",
            model: "sensor",
            applies: (v(1, 0, 0), v(1, 9, 9)),
            installs: v(2, 0, 0),
            cvss: "7.0",
            format: PayloadFormat::Mcuboot,
            payload: &sensor_image,
        })
        .unwrap();
    let dfu_payload = bytes(9_000, 8);
    let dfu_file = fieldpatch_core::image::dfu_file::DfuSuffix {
        bcd_device: 0xFFFF,
        id_product: 0x0002,
        id_vendor: 0x1209,
        bcd_dfu: 0x0110,
        length: 16,
        crc: 0,
    }
    .append_to(&dfu_payload);
    let others: [(&str, &str, PayloadFormat, &[u8]); 2] = [
        ("lab-board-1.1.0", "board", PayloadFormat::Dfu, &dfu_file),
        ("lab-gateway-2.1.0", "gateway", PayloadFormat::Swupdate, &swu_bytes),
    ];
    for (id, model, format, payload) in others {
        let (applies, installs) = ((v(1, 0, 0), v(1, 9, 9)), v(2, 1, 0));
        let spec = BundleSpec { id, model, applies, installs, cvss: "7.0", format, payload };
        signed.bundle(&spec).unwrap();
    }
    let bootloader = esp_image(0, &bytes(6_000, 3));
    let table = partition_table();
    let app = esp_image(0, &bytes(50_000, 4));
    esp_bundle(
        &signed,
        "lab-meter-1.3.0",
        &[
            ("bootloader.bin", &bootloader, 0x1000),
            ("partitions.bin", &table, 0x8000),
            ("app.bin", &app, 0x10000),
        ],
        false,
    );
    let catalog =
        load_catalog(&signed.catalog_dir, &signed.trust_path, &VerifyPolicy::now()).unwrap();
    assert!(catalog.refused.is_empty(), "{:?}", catalog.refused);
    let catalog = Arc::new(catalog);

    // The inventory says what the ESP runs: its ROM loader cannot.
    let mut meter = fieldpatch_testkit::site::record("meter-1", "Lab", "meter", address.clone());
    meter.identity.firmware_version = Some(v(1, 2, 0));
    let mut gateway = fieldpatch_testkit::site::record(
        "gw-esp-1",
        "Lab",
        "gateway",
        DeviceAddress::Swupdate { url: daemon.url(), user: None },
    );
    gateway.identity.firmware_version = Some(v(1, 0, 0));
    gateway.identity.hardware_revision = Some("1.0".into());
    let mut records = site.records.clone();
    records.push(meter);
    records.push(gateway);

    let fp = Fieldpatch::open_in(&root.join("laptop"), Arc::new(site.connector())).await.unwrap();
    let keyring = fp.credentials().await.unwrap().clone();
    let name: CredentialName = "device/gw-esp-1/password".parse().unwrap();
    keyring.set(&name, &Secret::new(GATEWAY_PASSWORD)).await.unwrap();
    let identified = fp.identify(records, Duration::from_secs(10)).await;
    for (d, err) in &identified {
        assert!(err.is_none(), "{}: {err:?}", d.id);
    }
    let m = identified.iter().find(|(d, _)| d.id == "meter-1").unwrap();
    assert_eq!(m.0.identity.firmware_version, Some(v(1, 2, 0)), "the inventory's version stays");
    assert_eq!(esp.flash_data_frames(), 0, "identifying writes nothing");
    let plan =
        make_plan(identified.into_iter().map(|(d, _)| d).collect(), &catalog, Some(&keyring)).await;
    let pm = plan.devices.iter().find(|d| d.device.id == "meter-1").unwrap();
    assert!(
        matches!(&pm.disposition, Disposition::Patch { steps, .. } if steps.len() == 1 && steps[0].to == v(1, 3, 0)),
        "{:?}",
        pm.disposition
    );
    assert_eq!(plan.patchable().count(), 4, "{plan:#?}");

    let (summary, state) = fp
        .run_session(
            SessionState::new(plan, options()),
            catalog,
            Arc::new(|_, _| {}),
            Arc::new(AtomicBool::new(false)),
        )
        .await
        .unwrap();
    assert_eq!((summary.patched, summary.failed, summary.unverified), (3, 0, 1), "{state:#?}");
    assert_eq!(
        state.devices.get("meter-1"),
        Some(&DeviceStatus::Unverified { version: "1.3.0".into() })
    );
    assert_eq!(site.sensors[0].active_image().unwrap().1, "2.0.0");
    assert_eq!(site.board.as_ref().unwrap().firmware(), dfu_payload);
    assert_eq!(daemon.flash_bytes(), rootfs, "daemon log:\n{}", daemon.log_text());

    // Every payload at its offset; the device was reset into its application.
    assert_eq!(esp.flash(0x1000, bootloader.len()), bootloader);
    assert_eq!(esp.flash(0x8000, table.len()), table);
    assert_eq!(esp.flash(0x10000, app.len()), app);
    assert!(!esp.in_loader(), "reset into the application");
    assert_eq!(esp.baud(), 460_800, "CHANGE_BAUDRATE to the address's rate");

    let log = fp.log().await.unwrap();
    let events = fp.store().log_events(log.log_id(), 0, 10_000).await.unwrap();
    let kinds: Vec<&EventKind> = events
        .iter()
        .filter(|e| e.body.device.as_deref() == Some("meter-1"))
        .map(|e| &e.body.kind)
        .collect();
    let tags: Vec<&str> = kinds.iter().map(|k| k.tag()).collect();
    for must in ["flash_started", "image_uploaded"] {
        assert!(tags.contains(&must), "{tags:?}");
    }
    for never in ["confirmed", "test_boot_requested", "rolled_back", "failed"] {
        assert!(!tags.contains(&never), "{tags:?}");
    }
    let app_sha = hex::encode(Sha256::digest(&app));
    assert!(
        kinds.iter().any(|k| matches!(k, EventKind::ImageUploaded { image_sha256, device_reported_hash }
            if *image_sha256 == app_sha && device_reported_hash.as_deref() == Some(app_sha.as_str()))),
        "{kinds:#?}"
    );
    let notes: Vec<&str> = kinds
        .iter()
        .filter_map(|k| match k {
            EventKind::Note { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    let all = notes.join("\n");
    assert!(all.contains("no trial boot and no revert") && all.contains("recoverable"), "{all}");
    assert!(
        all.contains("bootloader.bin at 0x1000")
            && all.contains("partitions.bin at 0x8000")
            && all.contains("the application at 0x10000")
            && all.contains("device's MD5")
            && all.contains("health not checked")
            && all.contains("power-cycle")
            && all.contains("unverified, not confirmed"),
        "{all}"
    );
    assert!(!all.contains("SMP"), "the ESP's reason, not MCUboot's: {all}");
    let checks = fp.store().verify_all_logs().await.unwrap();
    assert!(checks.iter().all(|c| c.is_ok()), "{checks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_or_wrong_chip_esp_bundles_never_reach_the_device() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let site = SiteBuilder::new()
        .first_seed(21)
        .dfu_board("board-usb", "board", "1.0.0".parse().unwrap(), Criticality::Normal)
        .start()
        .unwrap();
    let (esp, _server, address) = lab_esp();
    let signed = CatalogBuilder::new().write(&root.join("release")).unwrap();
    let table = partition_table();
    let app = esp_image(0, &bytes(20_000, 8));
    esp_bundle(
        &signed,
        "lab-meter-tampered",
        &[("partitions.bin", &table, 0x8000), ("app.bin", &app, 0x10000)],
        true,
    );
    let catalog =
        load_catalog(&signed.catalog_dir, &signed.trust_path, &VerifyPolicy::now()).unwrap();
    assert!(catalog.bundles.is_empty());
    let refusal = &catalog.refused[0];
    assert_eq!(refusal.bundle_id.as_deref(), Some("lab-meter-tampered"));
    assert!(refusal.reason.contains("app.bin"), "{}", refusal.reason);

    let mut meter = fieldpatch_testkit::site::record("meter-2", "Lab", "meter", address.clone());
    meter.identity.firmware_version = Some(v(1, 2, 0));
    let fp = Fieldpatch::open_in(&root.join("laptop"), Arc::new(site.connector())).await.unwrap();
    let plan = make_plan(vec![meter.clone()], &catalog, None).await;
    assert!(
        matches!(plan.devices[0].disposition, Disposition::Unpatchable { .. }),
        "{:?}",
        plan.devices[0].disposition
    );

    // A correctly signed bundle built for the ESP32-S3 (chip id 9): planned by model, refused by
    // the target against the chip the ROM reports.
    std::fs::remove_dir_all(&signed.catalog_dir).unwrap();
    std::fs::create_dir_all(&signed.catalog_dir).unwrap();
    let s3 = esp_image(9, &bytes(20_000, 9));
    esp_bundle(&signed, "lab-meter-s3", &[("app.bin", &s3, 0x10000)], false);
    let catalog =
        load_catalog(&signed.catalog_dir, &signed.trust_path, &VerifyPolicy::now()).unwrap();
    assert!(catalog.refused.is_empty(), "{:?}", catalog.refused);
    let plan = make_plan(vec![meter], &catalog, None).await;
    assert_eq!(plan.patchable().count(), 1);
    let (summary, state) = fp
        .run_session(
            SessionState::new(plan, options()),
            Arc::new(catalog),
            Arc::new(|_, _| {}),
            Arc::new(AtomicBool::new(false)),
        )
        .await
        .unwrap();
    assert_eq!(summary.failed, 1, "{state:#?}");
    let Some(DeviceStatus::Failed { reason }) = state.devices.get("meter-2") else {
        panic!("{state:#?}")
    };
    assert!(reason.contains("ESP32-S3") && reason.contains("nothing was sent"), "{reason}");
    assert_eq!(esp.flash_data_frames(), 0, "not one FLASH_DATA");
    assert!(!esp.commands().iter().any(|c| c.name() == "FLASH_BEGIN"));
    assert!(esp.in_loader(), "left in its ROM loader");
}

/// One ESP bundle (bootloader and application) flashed by a session onto a lab device with
/// `faults`; returns the device's status and the lab device.
async fn session_with_faults(
    root: &std::path::Path,
    faults: fieldpatch_lab::esp::EspFaults,
) -> (DeviceStatus, EspDevice, Vec<u8>) {
    let site = SiteBuilder::new()
        .first_seed(31)
        .dfu_board("board-usb", "board", "1.0.0".parse().unwrap(), Criticality::Normal)
        .start()
        .unwrap();
    let (esp, _server, address) = lab_esp();
    esp.set_faults(faults);
    let signed = CatalogBuilder::new().write(&root.join("release")).unwrap();
    let bootloader = esp_image(0, &bytes(4_000, 12));
    let app = esp_image(0, &bytes(30_000, 13));
    esp_bundle(
        &signed,
        "lab-meter-1.3.0",
        &[("bootloader.bin", &bootloader, 0x1000), ("app.bin", &app, 0x10000)],
        false,
    );
    let catalog =
        load_catalog(&signed.catalog_dir, &signed.trust_path, &VerifyPolicy::now()).unwrap();
    let mut meter = fieldpatch_testkit::site::record("meter-3", "Lab", "meter", address);
    meter.identity.firmware_version = Some(v(1, 2, 0));
    let fp = Fieldpatch::open_in(&root.join("laptop"), Arc::new(site.connector())).await.unwrap();
    let plan = make_plan(vec![meter], &catalog, None).await;
    let (_, state) = fp
        .run_session(
            SessionState::new(plan, options()),
            Arc::new(catalog),
            Arc::new(|_, _| {}),
            Arc::new(AtomicBool::new(false)),
        )
        .await
        .unwrap();
    (state.devices.get("meter-3").cloned().unwrap(), esp, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_frame_is_recovered_and_a_flash_write_failure_is_reported_in_a_session() {
    let tmp = tempfile::tempdir().unwrap();
    let dropped = fieldpatch_lab::esp::EspFaults {
        drop_frames: 1,
        drop_at_seq: Some(2),
        ..Default::default()
    };
    let (status, esp, app) = session_with_faults(&tmp.path().join("a"), dropped).await;
    assert_eq!(status, DeviceStatus::Unverified { version: "1.3.0".into() });
    assert_eq!(esp.dropped_frames(), 1, "the fault happened");
    assert_eq!(esp.flash(0x10000, app.len()), app);

    let failing =
        fieldpatch_lab::esp::EspFaults { flash_write_fail_at_seq: Some(1), ..Default::default() };
    let (status, esp, _) = session_with_faults(&tmp.path().join("b"), failing).await;
    let DeviceStatus::Failed { reason } = status else { panic!("{status:?}") };
    assert!(reason.starts_with("upload:") && reason.contains("ROM loader"), "{reason}");
    assert!(esp.in_loader(), "a failed write leaves the device in its ROM loader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ota_table_application_goes_to_the_slot_the_device_does_not_run() {
    use fieldpatch_core::flash::connect::open_esp;
    use fieldpatch_core::flash::{FlashOptions, FlashOutcome, flash};
    use fieldpatch_core::plan::Step;
    use fieldpatch_core::progress::NoProgress;
    use fieldpatch_core::session::ImageSource;

    struct Sink;
    #[async_trait::async_trait]
    impl fieldpatch_core::flash::EventSink for Sink {
        async fn record(
            &self,
            _: &str,
            _: EventKind,
        ) -> Result<(), fieldpatch_core::flash::SinkError> {
            Ok(())
        }
    }

    let tmp = tempfile::tempdir().unwrap();
    let signed = CatalogBuilder::new().write(&tmp.path().join("release")).unwrap();
    let table = ota_table();
    let app = esp_image(0, &bytes(20_000, 14));
    esp_bundle(
        &signed,
        "meter-ota0",
        &[("partitions.bin", &table, 0x8000), ("app.bin", &app, 0x10000)],
        false,
    );
    esp_bundle(
        &signed,
        "meter-ota1",
        &[("partitions.bin", &table, 0x8000), ("app.bin", &app, 0x110000)],
        false,
    );
    let catalog =
        load_catalog(&signed.catalog_dir, &signed.trust_path, &VerifyPolicy::now()).unwrap();
    assert!(catalog.refused.is_empty(), "{:?}", catalog.refused);
    let step = |bundle_id: &str| Step {
        bundle_id: bundle_id.into(),
        from: v(1, 2, 0),
        to: v(1, 3, 0),
        cvss: 8.1,
        rollback: false,
    };
    let opts = FlashOptions { reconnect_timeout: Duration::from_secs(2), ..Default::default() };
    // `running`: the device already holds this table, OTA data selecting ota_1 (sequence 2)
    // and an application there.
    let old = esp_image(0, &bytes(20_000, 15));
    let run = |bundle_id: &'static str, running: bool| {
        let catalog = &catalog;
        let opts = &opts;
        let (table, old) = (table.clone(), old.clone());
        async move {
            let (esp, _server, address) = lab_esp();
            if running {
                esp.preload(0x8000, &table);
                esp.preload(0x110000, &old);
                let mut entry = 2u32.to_le_bytes().to_vec();
                entry.extend_from_slice(&[0xFF; 20]);
                entry.extend_from_slice(&2u32.to_le_bytes());
                entry.extend_from_slice(&fieldpatch_core::image::esp::ota_seq_crc(2).to_le_bytes());
                esp.preload(0xD000, &entry);
            }
            let record = fieldpatch_testkit::site::record("m", "Lab", "meter", address.clone());
            let image = catalog.image(&record, &step(bundle_id)).unwrap();
            let mut target = open_esp(&address).await.unwrap();
            let out = flash("m", &mut target, &image, &Sink, &NoProgress, opts).await.unwrap();
            (out, esp)
        }
    };
    let entry = |esp: &EspDevice, at: u32| {
        let e = esp.flash(at, 32);
        let w = |i: usize| u32::from_le_bytes([e[i], e[i + 1], e[i + 2], e[i + 3]]);
        (w(0), w(24), w(28))
    };
    let crc = fieldpatch_core::image::esp::ota_seq_crc;

    // Nothing runs yet: the application goes to the slot the manifest names, and OTA data
    // selecting it is written (ota_0: sequence 1).
    let (out, esp) = run("meter-ota0", false).await;
    assert_eq!(out, FlashOutcome::Unverified { version: v(1, 3, 0) });
    assert_eq!(esp.flash(0x10000, app.len()), app);
    assert_eq!(entry(&esp, 0xD000), (1, u32::MAX, crc(1)));
    assert_eq!(esp.flash(0xE000, 32), vec![0xFF; 32]);

    // The device runs ota_1: the application goes to ota_0 (which the manifest names too),
    // ota_1 is left as it was, and sequence 3 in the second entry selects ota_0.
    let (out, esp) = run("meter-ota0", true).await;
    assert_eq!(out, FlashOutcome::Unverified { version: v(1, 3, 0) });
    assert_eq!(esp.flash(0x10000, app.len()), app);
    assert_eq!(esp.flash(0x110000, old.len()), old, "the running slot is untouched");
    assert_eq!(entry(&esp, 0xD000), (2, 2, crc(2)));
    assert_eq!(entry(&esp, 0xE000), (3, 0, crc(3)));

    // The same device and a bundle naming ota_1, the running slot: the application still goes
    // to ota_0.
    let (out, esp) = run("meter-ota1", true).await;
    assert_eq!(out, FlashOutcome::Unverified { version: v(1, 3, 0) });
    assert_eq!(esp.flash(0x10000, app.len()), app);
    assert_eq!(esp.flash(0x110000, old.len()), old);

    // Nothing runs yet and the bundle names ota_1: OTA data selecting it is written.
    let (out, esp) = run("meter-ota1", false).await;
    assert_eq!(out, FlashOutcome::Unverified { version: v(1, 3, 0) });
    assert_eq!(esp.flash(0x110000, app.len()), app);
    assert_eq!(entry(&esp, 0xD000), (2, u32::MAX, crc(2)));
}
