//! The flash pipeline on the simulated ESP32 ROM loader (real pty): the verified bytes are written,
//! checked with the device's MD5 of the region, and the device is reset into its application;
//! the log says no rollback is possible and the write recoverable, and claims no health it could
//! not check. An image for another chip is refused before any byte is sent; a flash write
//! failure and a flash that silently differs end the flash with the device still in its loader.

use fieldpatch_core::flash::esp::{EspTarget, EspTargetOptions};
use fieldpatch_core::flash::{
    EventSink, FlashOptions, FlashOutcome, FlashStage, SinkError, VerifiedImage, flash,
};
use fieldpatch_core::image::esp::EspImage;
use fieldpatch_core::progress::NoProgress;
use fieldpatch_core::visitlog::event::EventKind;
use fieldpatch_drivers::esp::{Chip, ConnectOptions, EspSerial, ROM_BAUD, ResetMode, Timeouts};
use fieldpatch_lab::esp::serial::{EspServer, serve_pty};
use fieldpatch_lab::esp::{EspConfig, EspDevice, EspFaults};
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
    fn notes(&self) -> Vec<String> {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .filter_map(|k| match k {
                EventKind::Note { text } => Some(text.clone()),
                _ => None,
            })
            .collect()
    }
}

fn verified(img: &[u8]) -> VerifiedImage {
    let sha: [u8; 32] = Sha256::digest(img).into();
    VerifiedImage {
        bundle_id: None,
        from: None,
        to: "1.2.0".parse().unwrap(),
        bytes: Arc::from(img),
        sha256: sha,
        device_hash: sha.to_vec(),
        esp: None,
    }
}

/// A minimal ESP application image: header, extended header naming `chip_id`, one segment,
/// the XOR checksum and the appended SHA-256.
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

fn payload(len: usize, seed: u32) -> Vec<u8> {
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

fn lab() -> (EspDevice, EspServer) {
    let device = EspDevice::new(EspConfig::default()).unwrap();
    let server = serve_pty(device.clone()).unwrap();
    (device, server)
}

async fn target(server: &EspServer) -> EspTarget<EspSerial> {
    let port = EspSerial::open(server.path().to_str().unwrap(), ROM_BAUD).unwrap();
    let opts = EspTargetOptions {
        connect: ConnectOptions {
            reset: ResetMode::NoReset,
            attempts: 2,
            timeouts: Timeouts { command: Duration::from_millis(700), ..Timeouts::default() },
        },
        offset: 0x10000,
        flash_size: Some(4 * 1024 * 1024),
        expected_chip: Some(Chip::Esp32),
        upload_baud: Some(460_800),
        ..EspTargetOptions::default()
    };
    EspTarget::connect(port, "lab ESP32", opts).await.unwrap()
}

fn options() -> FlashOptions {
    FlashOptions { reconnect_timeout: Duration::from_secs(2), ..FlashOptions::default() }
}

#[tokio::test]
async fn esp_image_is_written_md5_checked_and_booted_without_claiming_health() {
    let (device, server) = lab();
    let mut target = target(&server).await;
    let img = esp_image(0, &payload(40_000, 1));
    assert_eq!(EspImage::parse(&img).unwrap().chip_id, 0, "the test image parses");
    let sink = Sink::default();
    let outcome =
        flash("esp-1", &mut target, &verified(&img), &sink, &NoProgress, &options()).await.unwrap();
    assert_eq!(outcome, FlashOutcome::Unverified { version: "1.2.0".parse().unwrap() });
    assert_eq!(device.flash(0x10000, img.len()), img);
    assert_eq!(device.baud(), 460_800);
    assert!(!device.in_loader(), "reset into the application");
    assert_eq!(device.boots(), 1);
    let tags = sink.tags();
    assert!(tags.contains(&"flash_started") && tags.contains(&"image_uploaded"), "{tags:?}");
    assert!(!tags.contains(&"confirmed"), "{tags:?}");
    let uploaded = sink.0.lock().unwrap().iter().find_map(|k| match k {
        EventKind::ImageUploaded { device_reported_hash, .. } => device_reported_hash.clone(),
        _ => None,
    });
    assert_eq!(uploaded, Some(hex::encode(Sha256::digest(&img))));
    let notes = sink.notes().join("\n");
    assert!(notes.contains("no trial boot and no revert"), "{notes}");
    assert!(notes.contains("recoverable"), "{notes}");
    assert!(notes.contains("cannot be checked"), "{notes}");
    // Reset mode none drives no EN line: the health is not claimed, a power-cycle is asked for.
    assert!(notes.contains("health not checked") && notes.contains("power-cycle"), "{notes}");
}

#[tokio::test]
async fn an_image_for_another_chip_is_refused_before_any_byte_is_sent() {
    let (device, server) = lab();
    let mut target = target(&server).await;
    let img = esp_image(5, &payload(10_000, 2)); // ESP32-C3
    assert_eq!(EspImage::parse(&img).unwrap().chip_id, 5);
    let sink = Sink::default();
    let outcome =
        flash("esp-2", &mut target, &verified(&img), &sink, &NoProgress, &options()).await.unwrap();
    let FlashOutcome::Failed { stage: FlashStage::Upload, reason } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("chip id 5") && reason.contains("nothing was sent"), "{reason}");
    assert_eq!(device.flash_data_frames(), 0);
    assert!(!device.commands().iter().any(|c| c.name() == "FLASH_BEGIN"));
    assert!(device.in_loader());
}

#[tokio::test]
async fn the_flash_size_comes_from_the_flash_and_bounds_what_is_sent() {
    let device =
        EspDevice::new(EspConfig { flash_size: 1024 * 1024, ..Default::default() }).unwrap();
    let server = serve_pty(device.clone()).unwrap();
    let port = EspSerial::open(server.path().to_str().unwrap(), ROM_BAUD).unwrap();
    let opts = EspTargetOptions {
        connect: ConnectOptions { reset: ResetMode::NoReset, attempts: 2, ..Default::default() },
        offset: 0xF0000,
        ..EspTargetOptions::default()
    };
    let mut target = EspTarget::connect(port, "lab ESP32", opts).await.unwrap();
    assert_eq!(target.flash_size(), Some(1024 * 1024), "read from the flash's JEDEC id");
    let sink = Sink::default();
    // An image whose header declares 4 MB of flash does not fit a 1 MB device.
    let img = esp_image(0, &payload(1000, 5));
    let outcome =
        flash("esp-5", &mut target, &verified(&img), &sink, &NoProgress, &options()).await.unwrap();
    let FlashOutcome::Failed { stage: FlashStage::Upload, reason } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("4194304") && reason.contains("nothing was sent"), "{reason}");
    // Raw bytes past the end of the flash.
    let outcome = flash(
        "esp-5",
        &mut target,
        &verified(&payload(0x20000, 6)),
        &sink,
        &NoProgress,
        &options(),
    )
    .await
    .unwrap();
    let FlashOutcome::Failed { stage: FlashStage::Upload, reason } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("do not fit"), "{reason}");
    assert_eq!(device.flash_data_frames(), 0);
    assert!(!device.commands().iter().any(|c| c.name() == "FLASH_BEGIN"));
}

#[tokio::test]
async fn a_flash_write_failure_leaves_the_device_in_its_loader() {
    let (device, server) = lab();
    let mut target = target(&server).await;
    device.set_faults(EspFaults { flash_write_fail_at_seq: Some(3), ..EspFaults::default() });
    let sink = Sink::default();
    let img = payload(8_000, 3);
    let outcome =
        flash("esp-3", &mut target, &verified(&img), &sink, &NoProgress, &options()).await.unwrap();
    let FlashOutcome::Failed { stage: FlashStage::Upload, reason } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("0x10C00") && reason.contains("stays in its ROM loader"), "{reason}");
    assert!(device.in_loader());
    assert_eq!(device.boots(), 0);
}

#[tokio::test]
async fn flash_that_silently_differs_is_never_booted() {
    let (device, server) = lab();
    let mut target = target(&server).await;
    device.set_faults(EspFaults { corrupt_at_seq: Some(2), ..EspFaults::default() });
    let sink = Sink::default();
    let img = payload(5_000, 4);
    let outcome =
        flash("esp-4", &mut target, &verified(&img), &sink, &NoProgress, &options()).await.unwrap();
    let FlashOutcome::Failed { stage: FlashStage::Upload, reason } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("do not boot it"), "{reason}");
    // The MD5 mismatch is worth another write; each one was caught.
    let retries = sink.notes().iter().filter(|n| n.contains("upload interrupted")).count();
    assert_eq!(retries, 3, "{:?}", sink.notes());
    assert!(device.in_loader(), "never reset into a corrupted image");
}
