//! The SMP driver against the simulated device in `lab`, over a real pty and real UDP sockets.

use fieldpatch_drivers::progress::{Progress, TransferProgress};
use fieldpatch_drivers::smp::{AfterUpload, SmpClient, SmpError, Timeouts, UploadOptions};
use fieldpatch_drivers::transport::{SerialLink, UdpLink};
use fieldpatch_lab::smp::mcuboot::{Version, build_image, test_payload};
use fieldpatch_lab::smp::udp::{NetConditions, serve_udp};
use fieldpatch_lab::smp::{DeviceConfig, SmpDevice, serial::serve_pty};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
struct Recorder {
    transfers: Mutex<Vec<TransferProgress>>,
    notes: Mutex<Vec<String>>,
}

impl Progress for Recorder {
    fn transfer(&self, p: TransferProgress) {
        self.transfers.lock().unwrap().push(p);
    }
    fn note(&self, m: &str) {
        self.notes.lock().unwrap().push(m.to_string());
    }
}

fn image(v: &str, len: usize, seed: u8) -> Vec<u8> {
    build_image(v.parse::<Version>().unwrap(), &test_payload(len, seed))
}

fn hash_of(img: &[u8]) -> [u8; 32] {
    fieldpatch_lab::smp::mcuboot::parse(img).unwrap().hash
}

fn fast_device() -> SmpDevice {
    SmpDevice::new(DeviceConfig {
        flash_bytes_per_sec: 50e6,
        erase_time: Duration::from_millis(20),
        reboot_time: Duration::from_millis(100),
        ..DeviceConfig::default()
    })
}

async fn udp_client(dev: &SmpDevice, net: NetConditions) -> (SmpClient<UdpLink>, impl Drop) {
    let server = serve_udp(dev.clone(), "127.0.0.1:0".parse().unwrap(), net).unwrap();
    let mut client = SmpClient::new(UdpLink::connect(server.local_addr()).await.unwrap());
    client.timeouts = Timeouts {
        request: Duration::from_millis(500),
        first_chunk: Duration::from_secs(3),
        retries: 6,
        backoff: Duration::from_millis(20),
    };
    (client, server)
}

#[cfg(unix)]
#[tokio::test]
async fn serial_upload_test_reset_confirm_over_a_real_pty() {
    let dev = fast_device();
    let server = serve_pty(dev.clone(), 1_000_000).unwrap();
    let link = SerialLink::open(server.path().to_str().unwrap(), 1_000_000).unwrap();
    let mut c = SmpClient::new(link);
    assert_eq!(c.echo("hello lab").await.unwrap(), "hello lab");
    let p = c.params().await.unwrap();
    assert_eq!((p.buf_size, p.buf_count), (2048, 4));
    assert!(c.app_info().await.unwrap().contains("1.0.0"));

    let img = image("1.1.0", 30_000, 1);
    let rec = Recorder::default();
    let (report, states) = c
        .upload_image(&img, Some(&hash_of(&img)), AfterUpload::Test, UploadOptions::default(), &rec)
        .await
        .unwrap();
    assert_eq!(report.bytes, img.len() as u64);
    assert_eq!(report.window, 4);
    // Every packet fitted the device's buffers (an oversized one would be dropped and resent).
    assert_eq!(report.retries, 0, "{report:?}");
    assert_eq!(dev.slot_bytes(1).unwrap(), img, "device slot differs from the image sent");
    assert!(states.iter().any(|s| s.slot == 1 && s.pending && !s.permanent));
    let t = rec.transfers.lock().unwrap().clone();
    assert_eq!(t.last().unwrap().done, img.len() as u64);
    assert!(t.windows(2).all(|w| w[0].done <= w[1].done));

    c.reset().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let states = c.image_list().await.unwrap();
    let active = states.iter().find(|s| s.active).unwrap();
    assert_eq!(active.version, "1.1.0");
    assert!(!active.confirmed, "a test boot must not be confirmed yet");
    c.image_confirm(None).await.unwrap();
    c.reset().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let states = c.image_list().await.unwrap();
    let active = states.iter().find(|s| s.active).unwrap();
    assert_eq!(active.version, "1.1.0");
    assert!(active.confirmed);
}

#[tokio::test]
async fn unconfirmed_test_image_reverts_on_the_next_reset() {
    let dev = fast_device();
    let (mut c, _s) = udp_client(&dev, NetConditions::default()).await;
    let old = dev.active_image().unwrap().0;
    let img = image("2.0.0", 10_000, 2);
    c.upload_image(&img, None, AfterUpload::Test, UploadOptions::default(), &Recorder::default())
        .await
        .unwrap();
    c.reset().await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(dev.active_image().unwrap().1, "2.0.0");
    c.reset().await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(dev.active_image().unwrap().0, old, "{:?}", dev.log());
    assert!(dev.active_confirmed());
}

#[tokio::test]
async fn failed_health_check_and_power_loss_leave_the_old_image_running() {
    for fault in ["health", "power"] {
        let dev = fast_device();
        if fault == "health" {
            dev.faults().fail_health_check = true;
        } else {
            dev.faults().power_loss_on_test_boot = true;
        }
        let (mut c, _s) = udp_client(&dev, NetConditions::default()).await;
        let old = dev.active_image().unwrap().0;
        let img = image("2.0.0", 5_000, 3);
        c.upload_image(
            &img,
            None,
            AfterUpload::Test,
            UploadOptions::default(),
            &Recorder::default(),
        )
        .await
        .unwrap();
        c.reset().await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let states = c.image_list().await.unwrap();
        let active = states.iter().find(|s| s.active).unwrap();
        assert_eq!(active.hash, old.to_vec(), "{fault}: {:?}", dev.log());
        assert!(states.iter().any(|s| s.slot == 1 && s.version == "2.0.0"));
    }
}

#[tokio::test]
async fn udp_upload_survives_loss_corruption_stall_and_a_reboot() {
    let dev = fast_device();
    {
        let mut f = dev.faults();
        f.drop_rx_every = Some(7);
        f.corrupt_tx_every = Some(11);
        f.stall_at = Some((20_000, Duration::from_millis(800)));
        f.reboot_at = Some(40_000);
    }
    let (mut c, _s) =
        udp_client(&dev, NetConditions { loss: 0.05, seed: 3, ..Default::default() }).await;
    let img = image("1.5.0", 60_000, 4);
    let rec = Recorder::default();
    let report = c.upload(&img, UploadOptions::default(), &rec).await.unwrap();
    assert!(report.retries > 0);
    assert_eq!(dev.slot_bytes(1).unwrap(), img, "{:?}", dev.log());
    assert!(dev.log().iter().any(|l| l.contains("reboot mid-upload")));
    assert!(dev.log().iter().any(|l| l.contains("upload resumed")), "{:?}", dev.log());
}

/// Answers sent twice and answers out of order (a stale answer arriving while the client waits
/// for the next): the client takes each answer for its own request only, and the image arrives
/// whole, then lists, tests and resets as asked.
#[tokio::test]
async fn udp_upload_survives_duplicated_and_reordered_answers() {
    for (duplicate, reorder) in [(Some(3), None), (None, Some(4)), (Some(5), Some(7))] {
        let dev = fast_device();
        {
            let mut f = dev.faults();
            f.duplicate_tx_every = duplicate;
            f.reorder_tx_every = reorder;
        }
        let (mut c, _s) = udp_client(&dev, NetConditions::default()).await;
        let img = image("1.5.0", 60_000, 4);
        let rec = Recorder::default();
        let report = c.upload(&img, UploadOptions::default(), &rec).await.unwrap();
        assert_eq!(dev.slot_bytes(1).unwrap(), img, "{duplicate:?} {reorder:?}: {:?}", dev.log());
        assert_eq!(report.bytes, img.len() as u64);
        let states = c.image_list().await.unwrap();
        assert!(states.iter().any(|s| s.slot == 1 && s.version == "1.5.0"), "{states:?}");
    }
}

/// A device that reboots while it takes the first chunk answers nothing for it: the client asks
/// whether the device is alive once the ordinary request time has passed, and sends the first
/// chunk again then, instead of waiting out the whole erase allowance.
#[tokio::test]
async fn a_first_chunk_lost_to_a_reboot_goes_again_without_waiting_out_the_erase() {
    let dev = fast_device();
    dev.faults().reboot_at = Some(10);
    let (mut c, _s) = udp_client(&dev, NetConditions::default()).await;
    c.timeouts.first_chunk = Duration::from_secs(20);
    let img = image("1.6.1", 20_000, 6);
    let rec = Recorder::default();
    let report = c.upload(&img, UploadOptions::default(), &rec).await.unwrap();
    assert_eq!(dev.slot_bytes(1).unwrap(), img, "{:?}", dev.log());
    assert!(dev.log().iter().any(|l| l.contains("reboot mid-upload")), "{:?}", dev.log());
    let notes = rec.notes.lock().unwrap().clone();
    assert!(notes.iter().any(|n| n.contains("not the first chunk")), "{notes:?}");
    assert!(report.elapsed < c.timeouts.first_chunk, "waited out the erase allowance: {report:?}");
}

#[tokio::test]
async fn an_interrupted_upload_resumes_from_the_device_offset() {
    let dev = fast_device();
    dev.faults().reboot_at = Some(30_000);
    let (mut c, _s) = udp_client(&dev, NetConditions::default()).await;
    c.timeouts.retries = 0;
    let img = image("1.6.0", 50_000, 5);
    // With no retries allowed the reboot makes this attempt fail...
    let err = c.upload(&img, UploadOptions::default(), &Recorder::default()).await.unwrap_err();
    assert!(err.to_string().contains("resumes"), "{err}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...and the next one starts where the device got to, not at 0.
    c.timeouts.retries = 3;
    let report = c.upload(&img, UploadOptions::default(), &Recorder::default()).await.unwrap();
    assert!(report.resumed_from >= 30_000, "{report:?}");
    assert_eq!(dev.slot_bytes(1).unwrap(), img);
}

#[tokio::test]
async fn device_errors_are_reported_not_retried_forever() {
    let dev = fast_device();
    let (mut c, _s) = udp_client(&dev, NetConditions::default()).await;
    let e = c.image_test(&[0u8; 32]).await.unwrap_err();
    assert!(matches!(e, SmpError::Device(_)), "{e}");
    assert!(e.to_string().contains("no image with that hash"), "{e}");
    // Not an MCUboot image: refused at the first chunk.
    let e = c.upload(&[0x55u8; 5000], UploadOptions::default(), &Recorder::default()).await;
    assert!(e.unwrap_err().to_string().contains("bad header"));
    // upgrade-only refuses an older version.
    let img = image("0.9.0", 3000, 6);
    let opts = UploadOptions { upgrade: true, ..Default::default() };
    let e = c.upload(&img, opts, &Recorder::default()).await.unwrap_err();
    assert!(e.to_string().contains("newer"), "{e}");
}

#[tokio::test]
async fn a_silent_device_times_out_with_advice() {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut c = SmpClient::new(UdpLink::connect(sock.local_addr().unwrap()).await.unwrap());
    c.timeouts =
        Timeouts { request: Duration::from_millis(100), retries: 1, ..Timeouts::default() };
    let e = c.echo("anyone?").await.unwrap_err();
    assert!(matches!(e, SmpError::Timeout { attempts: 2, .. }), "{e}");
    assert!(e.to_string().contains("check the cable/address"), "{e}");
}

#[tokio::test]
async fn windowed_upload_sends_no_more_than_the_device_buffers() {
    // With buf_count 4 and no faults, no packet may be dropped for lack of a buffer: a dropped
    // packet would show up as a retry.
    let dev = fast_device();
    let (mut c, _s) = udp_client(
        &dev,
        NetConditions { added_rtt: Duration::from_millis(10), ..Default::default() },
    )
    .await;
    let img = image("1.7.0", 80_000, 7);
    let report = c.upload(&img, UploadOptions::default(), &Recorder::default()).await.unwrap();
    assert_eq!(report.retries, 0, "{report:?}");
    assert_eq!(report.window, 4);
    assert_eq!(dev.slot_bytes(1).unwrap(), img);
}

#[tokio::test]
async fn an_image_is_not_marked_when_the_device_reports_another_hash() {
    let dev = fast_device();
    let (mut c, _s) = udp_client(&dev, NetConditions::default()).await;
    let img = image("1.8.0", 4_000, 8);
    let e = c
        .upload_image(
            &img,
            Some(&[0x11; 32]),
            AfterUpload::Test,
            UploadOptions::default(),
            &Recorder::default(),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("was not marked"), "{e}");
    let states = c.image_list().await.unwrap();
    assert!(states.iter().all(|s| !s.pending), "{states:?}");
}

#[cfg(unix)]
#[tokio::test]
async fn serial_upload_through_console_noise_drops_and_corruption() {
    let dev = SmpDevice::new(DeviceConfig {
        flash_bytes_per_sec: 50e6,
        erase_time: Duration::from_millis(20),
        console_log_every: Some(Duration::from_millis(15)),
        ..DeviceConfig::default()
    });
    {
        let mut f = dev.faults();
        f.drop_rx_every = Some(5);
        f.corrupt_tx_every = Some(6);
    }
    let server = serve_pty(dev.clone(), 2_000_000).unwrap();
    let mut c =
        SmpClient::new(SerialLink::open(server.path().to_str().unwrap(), 2_000_000).unwrap());
    c.timeouts = Timeouts {
        request: Duration::from_millis(500),
        first_chunk: Duration::from_secs(3),
        retries: 8,
        backoff: Duration::from_millis(20),
    };
    let img = image("1.9.0", 40_000, 9);
    let rec = Recorder::default();
    let report = c.upload(&img, UploadOptions::default(), &rec).await.unwrap();
    assert!(report.retries > 0, "{report:?}");
    assert_eq!(dev.slot_bytes(1).unwrap(), img, "{:?}", dev.log());
    assert!(!rec.notes.lock().unwrap().is_empty());
}

#[cfg(unix)]
#[tokio::test]
async fn slow_serial_links_stretch_the_timeouts_instead_of_failing() {
    // At 9600 baud a 512-byte packet spends over half a second on the wire: far longer than the
    // 300 ms answer timeout, which must be counted from when the bytes can have arrived.
    let dev = SmpDevice::new(DeviceConfig {
        buf_size: 512,
        buf_count: 2,
        flash_bytes_per_sec: 50e6,
        erase_time: Duration::from_millis(20),
        ..DeviceConfig::default()
    });
    let server = serve_pty(dev.clone(), 9600).unwrap();
    let mut c = SmpClient::new(SerialLink::open(server.path().to_str().unwrap(), 9600).unwrap());
    c.timeouts = Timeouts {
        request: Duration::from_millis(300),
        first_chunk: Duration::from_millis(300),
        retries: 0,
        backoff: Duration::from_millis(20),
    };
    let img = image("1.0.1", 1_500, 10);
    let report = c.upload(&img, UploadOptions::default(), &Recorder::default()).await.unwrap();
    assert_eq!(report.retries, 0);
    assert_eq!(dev.slot_bytes(1).unwrap(), img);
}

#[tokio::test]
async fn lost_answers_do_not_stall_the_window() {
    // Every 5th answer the device sends arrives damaged, which the client must treat like a lost
    // answer: the chunk was written, and the answer to a later chunk acknowledges it. Only a
    // damaged answer to the very last chunk can cost one resend round.
    let dev = fast_device();
    let (mut c, _s) = udp_client(&dev, NetConditions::default()).await;
    c.params().await.unwrap();
    dev.faults().corrupt_tx_every = Some(5);
    let img = image("1.2.0", 60_000, 11);
    let report = c.upload(&img, UploadOptions::default(), &Recorder::default()).await.unwrap();
    assert_eq!(dev.slot_bytes(1).unwrap(), img);
    assert!(report.retries <= 1, "{report:?}");
}

#[tokio::test]
async fn packets_larger_than_the_device_buffer_are_lost_like_on_a_real_device() {
    let dev = fast_device();
    let (mut c, _s) = udp_client(&dev, NetConditions::default()).await;
    c.timeouts.retries = 1;
    c.timeouts.first_chunk = Duration::from_millis(300);
    let img = image("1.0.2", 10_000, 12);
    let opts = UploadOptions { max_packet: Some(3000), ..Default::default() };
    // Depending on which chunks were small enough to get through, the client hears nothing or
    // hears the device ask for the start again; either way it gives up with nothing written.
    let e = c.upload(&img, opts, &Recorder::default()).await.unwrap_err().to_string();
    assert!(e.contains("no answer") || e.contains("without making progress"), "{e}");
    assert!(dev.slot_bytes(1).is_none());
}
