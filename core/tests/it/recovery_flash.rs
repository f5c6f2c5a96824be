//! The flash pipeline on a lab device in MCUboot serial recovery (real pty): the primary slot is
//! written, the listed hash checked, the device reset into the application and health-checked;
//! no test boot, no rollback claimed, and the visit log says rollback is impossible. A tampered
//! image is refused before any byte is sent; a device listing another image is caught.

use fieldpatch_core::flash::smp::SmpTarget;
use fieldpatch_core::flash::{
    EventSink, FlashOptions, FlashOutcome, FlashStage, SinkError, VerifiedImage, flash,
};
use fieldpatch_core::progress::NoProgress;
use fieldpatch_core::visitlog::event::EventKind;
use fieldpatch_drivers::transport::SerialLink;
use fieldpatch_lab::smp::mcuboot::{Version, build_image, parse, test_payload};
use fieldpatch_lab::smp::recovery::SerialRecovery;
use fieldpatch_lab::smp::{DeviceConfig, SmpDevice, serial::serve_pty};
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
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|k| match k {
                EventKind::Note { text } => Some(text.clone()),
                _ => None,
            })
            .collect()
    }
}

fn recovery_device() -> SmpDevice {
    SmpDevice::new(DeviceConfig {
        flash_bytes_per_sec: 20e6,
        erase_time: Duration::from_millis(20),
        reboot_time: Duration::from_millis(100),
        serial_recovery: Some(SerialRecovery::default()),
        ..DeviceConfig::default()
    })
}

fn verified(img: &[u8]) -> VerifiedImage {
    VerifiedImage {
        bundle_id: None,
        from: None,
        to: "2.1.0".parse().unwrap(),
        bytes: Arc::from(img),
        sha256: Sha256::digest(img).into(),
        device_hash: parse(img).unwrap().hash.to_vec(),
        esp: None,
    }
}

fn new_image() -> Vec<u8> {
    build_image(Version { major: 2, minor: 1, revision: 0, build: 0 }, &test_payload(8_000, 3))
}

fn options() -> FlashOptions {
    FlashOptions { reconnect_timeout: Duration::from_secs(10), ..FlashOptions::default() }
}

fn target(server: &fieldpatch_lab::smp::serial::SerialServer) -> SmpTarget<SerialLink> {
    let link = SerialLink::open(server.path().to_str().unwrap(), 115_200).unwrap();
    SmpTarget::new(link, "lab recovery device")
}

#[tokio::test(flavor = "multi_thread")]
async fn recovery_flash_writes_checks_resets_and_claims_no_rollback() {
    let dev = recovery_device();
    let server = serve_pty(dev.clone(), 115_200).unwrap();
    let mut target = target(&server);
    let img = new_image();
    let sink = Sink::default();
    let outcome =
        flash("d1", &mut target, &verified(&img), &sink, &NoProgress, &options()).await.unwrap();
    assert!(matches!(outcome, FlashOutcome::Confirmed { .. }), "{outcome:?} {:?}", dev.log());
    let tags = sink.tags();
    assert!(!tags.contains(&"test_boot_requested"), "{tags:?}");
    assert!(!tags.iter().any(|t| t.contains("roll")), "{tags:?}");
    assert!(sink.notes().iter().any(|n| n.contains("no rollback")), "{:?}", sink.notes());
    assert!(!dev.in_serial_recovery(), "{:?}", dev.log());
    assert_eq!(dev.active_image().unwrap().0, parse(&img).unwrap().hash);
    assert_eq!(dev.slot_bytes(0).as_deref(), Some(&img[..]));
}

#[tokio::test(flavor = "multi_thread")]
async fn recovery_flash_refuses_tampered_bytes_before_sending() {
    let dev = recovery_device();
    let server = serve_pty(dev.clone(), 115_200).unwrap();
    let mut target = target(&server);
    let img = new_image();
    let mut image = verified(&img);
    let mut bytes = img.clone();
    bytes[200] ^= 1;
    image.bytes = Arc::from(bytes);
    let sink = Sink::default();
    let outcome = flash("d1", &mut target, &image, &sink, &NoProgress, &options()).await.unwrap();
    assert!(
        matches!(outcome, FlashOutcome::Failed { stage: FlashStage::Verify, .. }),
        "{outcome:?}"
    );
    assert!(!dev.log().iter().any(|l| l.contains("upload")), "{:?}", dev.log());
    assert_eq!(dev.slot_bytes(0), Some(dev.config().initial_image.clone()));
}

#[tokio::test(flavor = "multi_thread")]
async fn recovery_flash_catches_a_device_listing_another_image() {
    let dev = recovery_device();
    let server = serve_pty(dev.clone(), 115_200).unwrap();
    let other =
        build_image(Version { major: 9, minor: 0, revision: 0, build: 0 }, &test_payload(500, 8));
    dev.faults().recovery_lists_other = Some(other);
    let mut target = target(&server);
    let sink = Sink::default();
    let outcome = flash("d1", &mut target, &verified(&new_image()), &sink, &NoProgress, &options())
        .await
        .unwrap();
    assert!(
        matches!(outcome, FlashOutcome::Failed { stage: FlashStage::HashCheck, .. }),
        "{outcome:?}"
    );
    // Not reset into an image that was not verified: the bootloader still answers.
    assert!(dev.in_serial_recovery(), "{:?}", dev.log());
    assert!(!sink.tags().contains(&"confirmed"), "{:?}", sink.tags());
}

/// The application the bootloader boots does not speak SMP: the write and its hash were checked
/// in recovery, the device was reset into it, and nothing more can be known. The flash ends
/// unverified with a note saying so, not as a reconnect failure and never as confirmed.
#[tokio::test(flavor = "multi_thread")]
async fn recovery_flash_into_an_application_without_smp_is_booted_not_checkable() {
    let dev = recovery_device();
    dev.faults().application_without_smp = true;
    let server = serve_pty(dev.clone(), 115_200).unwrap();
    let mut target = target(&server);
    let img = new_image();
    let sink = Sink::default();
    let opts = FlashOptions { reconnect_timeout: Duration::from_secs(2), ..options() };
    let outcome =
        flash("d1", &mut target, &verified(&img), &sink, &NoProgress, &opts).await.unwrap();
    assert!(
        matches!(outcome, FlashOutcome::Unverified { ref version } if version.to_string() == "2.1.0"),
        "{outcome:?} {:?}",
        dev.log()
    );
    let tags = sink.tags();
    for never in ["confirmed", "failed", "health_check", "test_boot_requested"] {
        assert!(!tags.contains(&never), "{never}: {tags:?}");
    }
    assert!(tags.contains(&"image_uploaded"), "{tags:?}");
    let notes = sink.notes();
    assert!(notes.iter().any(|n| n.contains("booted, not checkable")), "{notes:?}");
    // The device did leave recovery into the image that was written and checked.
    assert!(!dev.in_serial_recovery(), "{:?}", dev.log());
    assert_eq!(dev.active_image().unwrap().0, parse(&img).unwrap().hash);
}
