//! The SMP client against the lab device in MCUboot serial recovery (real pty): identification
//! tells it from an application, unsupported optional commands do not fail it, the buffer
//! defaults are the bootloader's, and an upload lands in the primary slot without `match`.

use fieldpatch_drivers::progress::NoProgress;
use fieldpatch_drivers::smp::{AfterUpload, SmpClient, SmpError, SmpMode, UploadOptions};
use fieldpatch_drivers::transport::SerialLink;
use fieldpatch_lab::smp::mcuboot::{Version, build_image, parse, test_payload};
use fieldpatch_lab::smp::recovery::SerialRecovery;
use fieldpatch_lab::smp::{DeviceConfig, SmpDevice, serial::serve_pty};
use std::time::Duration;

fn device(recovery: Option<SerialRecovery>) -> SmpDevice {
    SmpDevice::new(DeviceConfig {
        flash_bytes_per_sec: 50e6,
        erase_time: Duration::from_millis(20),
        reboot_time: Duration::from_millis(100),
        serial_recovery: recovery,
        ..DeviceConfig::default()
    })
}

#[cfg(unix)]
#[tokio::test]
async fn identify_tells_serial_recovery_from_an_application() {
    let app = device(None);
    let server = serve_pty(app.clone(), 115_200).unwrap();
    let mut client =
        SmpClient::new(SerialLink::open(server.path().to_str().unwrap(), 115_200).unwrap());
    let id = client.identify().await.unwrap();
    assert_eq!(id.mode, SmpMode::Application);
    assert!(id.info.as_deref().unwrap().contains("1.0.0"));
    assert!(id.bootloader.is_none());

    let rec = device(Some(SerialRecovery::default()));
    let server = serve_pty(rec.clone(), 115_200).unwrap();
    let mut client =
        SmpClient::new(SerialLink::open(server.path().to_str().unwrap(), 115_200).unwrap());
    let id = client.identify().await.unwrap();
    assert_eq!(id.mode, SmpMode::SerialRecovery);
    assert!(id.info.is_none());
    assert_eq!(id.images.len(), 1);
    assert_eq!((id.images[0].slot, id.images[0].active), (0, false));
    let params = client.params().await.unwrap();
    assert_eq!((params.buf_size, params.buf_count), (1024, 1));
    // Commands the bootloader lacks are errors with rc 8 when asked for directly.
    assert!(
        matches!(client.app_info().await, Err(SmpError::Device(e)) if e.rc == 8),
        "OS info must be unsupported in recovery"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn recovery_upload_lands_in_the_primary_slot_and_is_hash_checked() {
    let dev = device(Some(SerialRecovery::default()));
    let server = serve_pty(dev.clone(), 1_000_000).unwrap();
    let mut client =
        SmpClient::new(SerialLink::open(server.path().to_str().unwrap(), 1_000_000).unwrap());
    let img = build_image(
        Version { major: 3, minor: 0, revision: 0, build: 0 },
        &test_payload(30_000, 2),
    );
    let hash = parse(&img).unwrap().hash;

    // No test boot in recovery: refused before any byte is sent.
    let refused = client
        .upload_image(&img, Some(&hash), AfterUpload::Test, UploadOptions::default(), &NoProgress)
        .await;
    assert!(matches!(refused, Err(SmpError::Upload(ref m)) if m.contains("no test boot")));
    assert!(!dev.log().iter().any(|l| l.contains("upload")), "{:?}", dev.log());

    let (report, states) = client
        .upload_image(
            &img,
            Some(&hash),
            AfterUpload::Nothing,
            UploadOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(report.bytes, img.len() as u64);
    assert_eq!(report.window, 1);
    assert!(states.iter().any(|s| s.slot == 0 && s.hash == hash));
    assert_eq!(dev.slot_bytes(0).as_deref(), Some(&img[..]));

    // The device lists another image than the verified one: caught.
    let other =
        build_image(Version { major: 3, minor: 0, revision: 1, build: 0 }, &test_payload(900, 4));
    dev.faults().recovery_lists_other = Some(other);
    let caught = client
        .upload_image(
            &img,
            Some(&hash),
            AfterUpload::Nothing,
            UploadOptions::default(),
            &NoProgress,
        )
        .await;
    assert!(
        matches!(caught, Err(SmpError::Upload(ref m)) if m.contains("was verified")),
        "{caught:?}"
    );
}
