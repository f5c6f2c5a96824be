//! ESP32 devices with OTA slots, through the flash pipeline on the simulated ROM loader (real pty,
//! with DTR/RTS wired to EN and GPIO0 like a dev board's auto-reset circuit): the device's
//! partition table and OTA data are read through the SPI registers, the application goes into
//! the slot the device does not run, new OTA data selects it, and the reset into the application
//! is checked against the boot log the simulated ESP-IDF bootloader prints. The running slot is
//! never written (byte-compared); a crash at boot fails the health check, and where the device's
//! own bootloader falls back, that is recorded as the device's rollback. A device without OTA
//! slots is written in place, as before.

use fieldpatch_core::flash::esp::{EspPlacement, EspTarget, EspTargetOptions, PlacedPayload};
use fieldpatch_core::flash::{
    EventSink, FlashOptions, FlashOutcome, FlashStage, SinkError, VerifiedImage, flash,
};
use fieldpatch_core::image::esp::{layout_of, ota_seq_crc};
use fieldpatch_core::progress::NoProgress;
use fieldpatch_core::visitlog::event::EventKind;
use fieldpatch_drivers::esp::{Chip, ConnectOptions, ResetMode, Timeouts};
use fieldpatch_lab::esp::serial::{EspServer, WiredPort, serve_pty};
use fieldpatch_lab::esp::{EspConfig, EspDevice, EspFaults};
use md5::Md5;
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Sink(Mutex<Vec<EventKind>>);

#[async_trait::async_trait]
impl EventSink for Sink {
    async fn record(&self, _device: &str, kind: EventKind) -> Result<(), SinkError> {
        self.0.lock().unwrap().push(kind);
        Ok(())
    }
}

impl Sink {
    fn tags(&self) -> Vec<&'static str> {
        self.0.lock().unwrap().iter().map(EventKind::tag).collect()
    }
    fn notes(&self) -> String {
        let events = self.0.lock().unwrap();
        let notes: Vec<String> = events
            .iter()
            .filter_map(|k| match k {
                EventKind::Note { text } => Some(text.clone()),
                _ => None,
            })
            .collect();
        notes.join("\n")
    }
    fn health(&self) -> Vec<(bool, String)> {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .filter_map(|k| match k {
                EventKind::HealthCheck { passed, detail } => Some((*passed, detail.clone())),
                _ => None,
            })
            .collect()
    }
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

/// An ESP32 image with one segment of `data` at `load`, the checksum and the SHA-256.
fn image(load: u32, data: &[u8]) -> Vec<u8> {
    let mut img = vec![0xE9, 1, 2, 0x20];
    img.extend_from_slice(&0x4008_0000u32.to_le_bytes());
    img.extend_from_slice(&[0xEE, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0, 0, 0, 1]);
    let mut data = data.to_vec();
    data.resize(data.len().div_ceil(4) * 4, 0);
    img.extend_from_slice(&load.to_le_bytes());
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

/// An ESP-IDF application: its `esp_app_desc_t` (version `version`) at the start of its first
/// (flash-mapped) segment.
fn app(version: &str, seed: u32) -> Vec<u8> {
    let mut desc = vec![0u8; 256];
    desc[..4].copy_from_slice(&0xABCD_5432u32.to_le_bytes());
    desc[16..16 + version.len()].copy_from_slice(version.as_bytes());
    desc[48..53].copy_from_slice(b"meter");
    desc[112..118].copy_from_slice(b"v5.1.2");
    desc.extend(bytes(20_000, seed));
    image(0x3F40_0020, &desc)
}

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

fn ota_table() -> Vec<u8> {
    table_of(&[
        (1, 2, 0x9000, 0x4000, "nvs"),
        (1, 0, 0xD000, 0x2000, "otadata"),
        (1, 1, 0xF000, 0x1000, "phy_init"),
        (0, 0x10, 0x10000, 0x100000, "ota_0"),
        (0, 0x11, 0x110000, 0x100000, "ota_1"),
    ])
}

fn factory_table() -> Vec<u8> {
    table_of(&[
        (1, 2, 0x9000, 0x6000, "nvs"),
        (1, 1, 0xF000, 0x1000, "phy_init"),
        (0, 0, 0x10000, 0x100000, "factory"),
    ])
}

/// One OTA data entry: sequence, state, CRC.
fn entry(seq: u32, state: u32) -> Vec<u8> {
    let mut e = seq.to_le_bytes().to_vec();
    e.extend_from_slice(&[0xFF; 20]);
    e.extend_from_slice(&state.to_le_bytes());
    e.extend_from_slice(&ota_seq_crc(seq).to_le_bytes());
    e
}

fn read_entry(dev: &EspDevice, at: u32) -> (u32, u32, u32) {
    let e = dev.flash(at, 32);
    let w = |i: usize| u32::from_le_bytes([e[i], e[i + 1], e[i + 2], e[i + 3]]);
    (w(0), w(24), w(28))
}

/// A module that left the factory with a bootloader, `table`, and `apps` at their offsets.
fn module(rollback: bool, table: &[u8], apps: &[(u32, &[u8])]) -> (EspDevice, EspServer) {
    let device = EspDevice::new(EspConfig { rollback, ..EspConfig::default() }).unwrap();
    device.preload(0x1000, &image(0x3FFF_0000, &bytes(3_000, 77)));
    device.preload(0x8000, table);
    for (at, bytes) in apps {
        device.preload(*at, bytes);
    }
    let server = serve_pty(device.clone()).unwrap();
    (device, server)
}

async fn wired(server: &EspServer) -> EspTarget<WiredPort> {
    let opts = EspTargetOptions {
        connect: ConnectOptions {
            reset: ResetMode::Classic,
            attempts: 2,
            timeouts: Timeouts { command: Duration::from_millis(700), ..Timeouts::default() },
        },
        expected_chip: Some(Chip::Esp32),
        upload_baud: Some(460_800),
        boot_quiet: Duration::from_millis(400),
        ..EspTargetOptions::default()
    };
    EspTarget::connect(server.open_wired().unwrap(), "lab ESP32", opts).await.unwrap()
}

/// A bundle's verified application at `offset` with `others` (name, bytes, offset).
fn bundle(app: &[u8], offset: u32, others: &[(&str, &[u8], u32)]) -> VerifiedImage {
    let mut all: Vec<(&str, &[u8], Option<u32>)> =
        others.iter().map(|(n, b, o)| (*n, *b, Some(*o))).collect();
    all.push(("app.bin", app, Some(offset)));
    let layout = layout_of(all).unwrap();
    let others = others
        .iter()
        .map(|(name, b, o)| PlacedPayload {
            name: name.to_string(),
            offset: *o,
            bytes: Arc::from(*b),
            sha256: Sha256::digest(b).into(),
        })
        .collect();
    let sha: [u8; 32] = Sha256::digest(app).into();
    VerifiedImage {
        bundle_id: Some("meter-1.3.0".into()),
        from: Some("1.2.0".parse().unwrap()),
        to: "1.3.0".parse().unwrap(),
        bytes: Arc::from(app),
        sha256: sha,
        device_hash: sha.to_vec(),
        esp: Some(Arc::new(EspPlacement { layout, offset, others })),
    }
}

fn options() -> FlashOptions {
    FlashOptions { reconnect_timeout: Duration::from_secs(5), ..FlashOptions::default() }
}

#[tokio::test]
async fn running_ota_0_gets_the_application_in_ota_1_and_ota_data_selecting_it() {
    let table = ota_table();
    let old = app("1.2.0", 1);
    let (device, server) = module(false, &table, &[(0x10000, &old), (0xD000, &entry(1, 2))]);
    let before_ota_0 = device.flash(0x10000, 0x100000);
    let mut target = wired(&server).await;
    let new = app("1.3.0", 2);
    // The manifest names ota_0; the device runs it, so the application goes to ota_1.
    let image = bundle(&new, 0x10000, &[("partitions.bin", &table, 0x8000)]);
    let sink = Sink::default();
    let out = flash("m", &mut target, &image, &sink, &NoProgress, &options()).await.unwrap();
    assert_eq!(out, FlashOutcome::Confirmed { version: "1.3.0".parse().unwrap() }, "{:?}", sink.0);

    assert_eq!(device.flash(0x110000, new.len()), new, "the new application is in ota_1");
    assert_eq!(device.flash(0x10000, 0x100000), before_ota_0, "ota_0 untouched, byte for byte");
    assert_eq!(read_entry(&device, 0xD000), (1, 2, ota_seq_crc(1)), "the old entry stays");
    assert_eq!(read_entry(&device, 0xE000), (2, 0, ota_seq_crc(2)), "seq 2, NEW, its CRC");
    assert_eq!(device.running(), Some(0x110000), "the bootloader started ota_1");
    let health = sink.health();
    assert_eq!(health.len(), 1);
    assert!(health[0].0, "{health:?}");
    assert!(
        health[0].1.contains("ota_1 at 0x110000") && health[0].1.contains("1.3.0"),
        "{health:?}"
    );
    let notes = sink.notes();
    assert!(
        notes.contains("the device runs ota_0") && notes.contains("Rollback is the device's own"),
        "{notes}"
    );
    assert!(sink.tags().contains(&"confirmed"));
}

#[tokio::test]
async fn running_ota_1_gets_ota_0_and_the_bundles_initial_ota_data_is_not_written() {
    let table = ota_table();
    let old = app("1.2.0", 3);
    let (device, server) = module(true, &table, &[(0x110000, &old), (0xD000, &entry(2, 2))]);
    let before_ota_1 = device.flash(0x110000, 0x100000);
    let mut target = wired(&server).await;
    let new = app("1.3.0", 4);
    let initial = vec![0xFFu8; 0x2000];
    let image = bundle(
        &new,
        0x110000,
        &[("partitions.bin", &table, 0x8000), ("ota_data_initial.bin", &initial, 0xD000)],
    );
    let sink = Sink::default();
    let out = flash("m", &mut target, &image, &sink, &NoProgress, &options()).await.unwrap();
    assert_eq!(out, FlashOutcome::Confirmed { version: "1.3.0".parse().unwrap() }, "{:?}", sink.0);
    assert_eq!(device.flash(0x10000, new.len()), new, "the new application is in ota_0");
    assert_eq!(device.flash(0x110000, 0x100000), before_ota_1, "ota_1 untouched, byte for byte");
    assert_eq!(read_entry(&device, 0xD000), (2, 2, ota_seq_crc(2)));
    // Seq 3 selects ota_0; the rollback-enabled bootloader set it PENDING_VERIFY as it booted.
    assert_eq!(read_entry(&device, 0xE000), (3, 1, ota_seq_crc(3)));
    assert_eq!(device.running(), Some(0x10000));
    let notes = sink.notes();
    assert!(notes.contains("ota_data_initial.bin is not written"), "{notes}");
}

#[tokio::test]
async fn a_crash_at_boot_fails_the_health_check_and_the_devices_own_rollback_is_recorded() {
    let table = ota_table();
    let old = app("1.2.0", 5);
    let (device, server) = module(true, &table, &[(0x10000, &old), (0xD000, &entry(1, 2))]);
    device.set_faults(EspFaults { crash_version: Some("1.3.0".into()), ..EspFaults::default() });
    let mut target = wired(&server).await;
    let new = app("1.3.0", 6);
    let image = bundle(&new, 0x10000, &[("partitions.bin", &table, 0x8000)]);
    let sink = Sink::default();
    let out = flash("m", &mut target, &image, &sink, &NoProgress, &options()).await.unwrap();
    let FlashOutcome::RolledBack { reason } = out else { panic!("{out:?} {:?}", sink.0) };
    assert!(
        reason.contains("crashed at boot")
            && reason.contains("Guru Meditation Error")
            && reason.contains("went back to ota_0 at 0x10000")
            && reason.contains("1.2.0")
            && reason.contains("not by Fieldpatch"),
        "{reason}"
    );
    assert_eq!(device.running(), Some(0x10000), "the old application runs again");
    assert_eq!(read_entry(&device, 0xE000), (2, 4, ota_seq_crc(2)), "the new entry ABORTED");
    let health = sink.health();
    assert!(health.len() == 1 && !health[0].0, "{health:?}");
    let tags = sink.tags();
    assert!(tags.contains(&"rolled_back") && !tags.contains(&"confirmed"), "{tags:?}");

    // Without rollback in the bootloader the device keeps restarting: a failure, no rollback.
    let (device, server) = module(false, &table, &[(0x10000, &old), (0xD000, &entry(1, 2))]);
    device.set_faults(EspFaults { crash_version: Some("1.3.0".into()), ..EspFaults::default() });
    let mut target = wired(&server).await;
    let sink = Sink::default();
    let out = flash("m", &mut target, &image, &sink, &NoProgress, &options()).await.unwrap();
    let FlashOutcome::Failed { stage: FlashStage::HealthCheck, reason } = out else {
        panic!("{out:?}")
    };
    assert!(reason.contains("keeps restarting") && reason.contains("Rebooting..."), "{reason}");
    assert!(!sink.tags().contains(&"rolled_back"));
    assert_eq!(device.running(), None);
}

#[tokio::test]
async fn a_device_without_ota_slots_is_written_in_place_and_claims_no_rollback() {
    let table = factory_table();
    let old = app("1.2.0", 7);
    let (device, server) = module(false, &table, &[(0x10000, &old)]);
    let mut target = wired(&server).await;
    let new = app("1.3.0", 8);
    let image = bundle(&new, 0x10000, &[("partitions.bin", &table, 0x8000)]);
    let sink = Sink::default();
    let out = flash("m", &mut target, &image, &sink, &NoProgress, &options()).await.unwrap();
    assert_eq!(out, FlashOutcome::Confirmed { version: "1.3.0".parse().unwrap() }, "{:?}", sink.0);
    assert_eq!(device.flash(0x10000, new.len()), new);
    assert_eq!(device.running(), Some(0x10000));
    let notes = sink.notes();
    assert!(
        notes.contains("no trial boot and no revert") && notes.contains("recoverable"),
        "{notes}"
    );
    assert!(!notes.contains("Rollback is the device's own"), "{notes}");
}
