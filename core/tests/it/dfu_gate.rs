//! USB DFU through the facade against lab boards on one lab bus: a USB address with a serial
//! number selects exactly that board among identical ones (same VID:PID), an address that matches
//! several is refused, and a signed bundle reaches a board only through the planner with the
//! board's inventory record (model, downgrade rule), like a session's.

use fieldpatch_core::Fieldpatch;
use fieldpatch_core::bundle::PayloadFormat;
use fieldpatch_core::flash::connect::DriverConnector;
use fieldpatch_core::flash::{FlashOptions, FlashOutcome};
use fieldpatch_core::image::dfu_file::DfuSuffix;
use fieldpatch_core::model::Version;
use fieldpatch_core::plan::{Criticality, DeviceAddress, DeviceRecord};
use fieldpatch_core::progress::NoProgress;
use fieldpatch_lab::dfu::{LabDfu, LabDfuConfig, LabUsbBus};
use fieldpatch_testkit::catalog::{BundleSpec, CatalogBuilder};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const VID: u16 = 0x1209;
const PID: u16 = 0x0002;

/// A plain DFU board in DFU mode at `location` reporting `serial`.
fn board(location: &str, serial: &str) -> LabDfu {
    let mut cfg = LabDfuConfig::plain_dfu();
    cfg.start_in_runtime = false;
    cfg.location = location.into();
    cfg.serial = Some(serial.into());
    LabDfu::new(cfg)
}

/// Two identical boards (same VID:PID), serial numbers A and B, and Fieldpatch reaching them.
async fn two_boards(dir: &Path) -> (LabDfu, LabDfu, Fieldpatch) {
    let (a, b) = (board("3-2", "A"), board("3-3", "B"));
    let usb = LabUsbBus::new([a.clone(), b.clone()]);
    let fp =
        Fieldpatch::open_in(&dir.join("laptop"), Arc::new(DriverConnector { usb })).await.unwrap();
    (a, b, fp)
}

fn payload() -> Vec<u8> {
    (0..6000u32).map(|i| (i * 13 % 251) as u8).collect()
}

fn dfu_file(payload: &[u8]) -> Vec<u8> {
    DfuSuffix {
        bcd_device: 0xFFFF,
        id_product: PID,
        id_vendor: VID,
        bcd_dfu: 0x0110,
        length: 16,
        crc: 0,
    }
    .append_to(payload)
}

/// The tags of every event in the technician's log, with the device each is about.
async fn events(fp: &Fieldpatch) -> Vec<(String, Option<String>)> {
    let log = fp.log().await.unwrap();
    let events = fp.store().log_events(log.log_id(), 0, 10_000).await.unwrap();
    events.into_iter().map(|e| (e.body.kind.tag().to_string(), e.body.device)).collect()
}

fn usb(serial: Option<&str>) -> DeviceAddress {
    DeviceAddress::Usb { vid: VID, pid: PID, serial: serial.map(str::to_string) }
}

fn record(id: &str, model: &str, runs: &str, address: DeviceAddress) -> DeviceRecord {
    let mut r = fieldpatch_testkit::site::record(id, "Lab", model, address);
    r.identity.firmware_version = Some(runs.parse().unwrap());
    r.criticality = Criticality::Normal;
    r
}

/// A release for the lab board: 1.1.0 for boards running 1.0.x, as a DFU file in a bundle.
fn board_bundle(dir: &Path) -> (PathBuf, PathBuf) {
    let catalog = CatalogBuilder::new().write(&dir.join("release")).unwrap();
    let file = dfu_file(&payload());
    let bundle = catalog
        .bundle(&BundleSpec {
            id: "lab-board-1.1.0",
            model: "board",
            applies: (Version::new(1, 0, 0, 0), Version::new(1, 0, 9, 0)),
            installs: Version::new(1, 1, 0, 0),
            cvss: "5.0",
            format: PayloadFormat::Dfu,
            payload: &file,
        })
        .unwrap();
    (bundle, catalog.trust_path.clone())
}

fn fast() -> FlashOptions {
    FlashOptions { reconnect_timeout: Duration::from_secs(5), ..Default::default() }
}

#[tokio::test]
async fn dfu_flash_by_serial_number_reaches_exactly_that_board() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, fp) = two_boards(dir.path()).await;
    let listed = fp.dfu_devices().unwrap();
    let serials: Vec<Option<&str>> = listed.iter().map(|d| d.serial.as_deref()).collect();
    assert_eq!(serials, [Some("A"), Some("B")], "{listed:?}");

    let file = dir.path().join("fw.dfu");
    std::fs::write(&file, dfu_file(&payload())).unwrap();
    let report = fp
        .dfu_flash("usb:1209:0002:B", &file, None, true, Default::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(report.bytes, payload().len() as u64);
    assert_eq!(b.firmware(), payload());
    assert_eq!(a.dnload_requests(), 0, "a byte reached the other board");
    assert!(a.firmware().is_empty());
    // The visit log names the exact device.
    let log = events(&fp).await;
    let started = log.iter().find(|(t, _)| t == "flash_started").unwrap();
    assert_eq!(started.1.as_deref(), Some("usb:1209:0002:B"), "{log:?}");
}

#[tokio::test]
async fn an_address_that_matches_two_boards_is_refused_and_names_their_serials() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, fp) = two_boards(dir.path()).await;
    let file = dir.path().join("fw.dfu");
    std::fs::write(&file, dfu_file(&payload())).unwrap();
    let flash = |device: &'static str| {
        let (fp, file) = (&fp, file.clone());
        async move {
            fp.dfu_flash(device, &file, None, true, Default::default(), &NoProgress)
                .await
                .unwrap_err()
        }
    };

    let err = flash("usb:1209:0002").await;
    assert_eq!(err.code(), "usb_ambiguous", "{err}");
    let msg = err.to_string();
    for part in ["serial A at 3-2", "serial B at 3-3", "usb:1209:0002:A"] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    // No match: a clear error naming what is attached.
    let err = flash("usb:1209:0002:C").await;
    assert_eq!(err.code(), "device_unreachable", "{err}");
    assert!(err.to_string().contains("no USB DFU device usb:1209:0002:C"), "{err}");
    assert!(err.to_string().contains("serial A at 3-2"), "{err}");
    let err = flash("usb:1209:zz").await;
    assert_eq!(err.code(), "invalid_input", "{err}");

    assert_eq!(a.dnload_requests() + b.dnload_requests(), 0, "a byte reached a board");
    let log = events(&fp).await;
    assert!(!log.iter().any(|(t, _)| t == "flash_started"), "{log:?}");
}

#[tokio::test]
async fn a_dfu_bundle_passes_the_planner_with_the_inventory_record_before_any_byte_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, fp) = two_boards(dir.path()).await;
    let (bundle, trust) = board_bundle(dir.path());
    let install = |r: DeviceRecord| {
        let (fp, bundle, trust) = (&fp, bundle.clone(), trust.clone());
        async move { fp.dfu_install(r, &bundle, &trust, &NoProgress, &fast()).await }
    };

    // The inventory says the board at B is a pump controller: the board bundle does not target it.
    let err = install(record("pump-b", "pump-controller", "1.0.0", usb(Some("B")))).await;
    let err = err.unwrap_err();
    assert_eq!(err.code(), "not_applicable", "{err}");
    assert!(err.to_string().contains("no approved bundle targets Lab pump-controller"), "{err}");
    // A board that runs 2.0.0 (the inventory says so: a DFU board cannot): 1.1.0 is a downgrade.
    let err = install(record("board-b", "board", "2.0.0", usb(Some("B")))).await.unwrap_err();
    assert_eq!(err.code(), "not_applicable", "{err}");
    assert!(err.to_string().contains("downgrade needs a signed rollback approval"), "{err}");
    // A bundle is not a bare DFU file: `dfu_flash` refuses it, whatever --allow-unverified says.
    let err = fp
        .dfu_flash("usb:1209:0002:B", &bundle, Some(&trust), true, Default::default(), &NoProgress)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_input", "{err}");
    assert!(err.to_string().contains("--id"), "{err}");
    assert_eq!(a.dnload_requests() + b.dnload_requests(), 0, "a byte reached a board");

    // The board it targets, named without its serial number among two identical boards: the
    // planner passes it, then the address is refused as ambiguous, still before any byte.
    let err = install(record("board-b", "board", "1.0.0", usb(None))).await.unwrap_err();
    assert_eq!(err.code(), "usb_ambiguous", "{err}");
    assert_eq!(a.dnload_requests() + b.dnload_requests(), 0, "a byte reached a board");

    // With its serial number: exactly board B, through the pipeline, read back and checked.
    let outcome = install(record("board-b", "board", "1.0.0", usb(Some("B")))).await.unwrap();
    assert_eq!(outcome, FlashOutcome::Confirmed { version: Version::new(1, 1, 0, 0) });
    assert_eq!(b.firmware(), payload());
    assert_eq!(a.dnload_requests(), 0, "a byte reached the other board");

    let log = events(&fp).await;
    let refused: Vec<&str> = log
        .iter()
        .filter(|(t, _)| t == "bundle_refused")
        .filter_map(|(_, d)| d.as_deref())
        .collect();
    assert_eq!(refused, ["pump-b", "board-b"], "{log:?}");
    let tail: Vec<&str> = log
        .iter()
        .skip_while(|(t, _)| t != "flash_started")
        .filter(|(t, _)| t != "progress_checkpoint")
        .map(|(t, _)| t.as_str())
        .collect();
    assert_eq!(tail, ["flash_started", "image_uploaded", "health_check", "confirmed"], "{log:?}");
    // The ambiguous address was recorded as a failure to open, after the bundle was verified.
    let kinds: Vec<&str> = log.iter().map(|(t, _)| t.as_str()).collect();
    assert!(kinds.windows(2).any(|w| w == ["bundle_verified", "failed"]), "{kinds:?}");

    // Again, with the inventory updated to 1.1.0: nothing to send.
    let outcome = install(record("board-b", "board", "1.1.0", usb(Some("B")))).await.unwrap();
    assert_eq!(outcome, FlashOutcome::AlreadyDone { version: Version::new(1, 1, 0, 0) });
}

/// Discovery lists DFU boards with what their descriptors say (identity strings, DfuSe memory
/// map) and their serial numbers, without changing their state, and records them in the log.
#[tokio::test]
async fn discovery_lists_dfu_boards_with_their_strings_and_memory_map() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = LabDfuConfig::stm32_dfuse();
    cfg.start_in_runtime = false;
    cfg.location = "3-4".into();
    cfg.serial = Some("ST-1".into());
    let st = LabDfu::new(cfg);
    let plain = board("3-2", "A");
    let bus = LabUsbBus::new([st.clone(), plain.clone()]);
    let fp =
        Fieldpatch::open_in(&tmp.path().join("laptop"), Arc::new(DriverConnector { usb: bus }))
            .await
            .unwrap();
    let options = fieldpatch_core::discovery::DiscoverOptions { usb: true, ..Default::default() };
    let mut updates = 0;
    let report = fp.discover(options, &mut |_| updates += 1).await.unwrap();
    assert_eq!(report.devices.len(), 2, "{report:#?}");
    assert_eq!(updates, 2);
    let st_dev = report
        .devices
        .iter()
        .find(|d| d.identity.serial_number.as_deref() == Some("ST-1"))
        .expect("the DfuSe board is listed with its serial number");
    assert_eq!(st_dev.bootloader.as_deref(), Some("DfuSe"));
    assert!(st_dev.details.iter().any(|l| l.starts_with("manufacturer: ")), "{:?}", st_dev.details);
    assert!(
        st_dev.details.iter().any(|l| l.contains("memory map") && l.contains("0x08000000")),
        "{:?}",
        st_dev.details
    );
    let plain_dev = report
        .devices
        .iter()
        .find(|d| d.identity.serial_number.as_deref() == Some("A"))
        .expect("the plain board is listed");
    assert_eq!(plain_dev.bootloader.as_deref(), Some("DFU"));
    assert!(plain_dev.addresses.contains(&usb(Some("A"))));
    // Reading descriptors sends no DFU request: nothing was downloaded or erased.
    assert_eq!(plain.dnload_requests(), 0);
    let tags: Vec<String> = events(&fp).await.into_iter().map(|(t, _)| t).collect();
    assert_eq!(tags.iter().filter(|t| *t == "device_discovered").count(), 2, "{tags:?}");
}
