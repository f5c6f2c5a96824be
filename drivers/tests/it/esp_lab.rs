//! The ESP ROM loader driver against the simulated ESP32 on a real pty: sync through boot noise,
//! chip detection, write + MD5 check, baud change, running the application, and every injected
//! fault ending in its clear error (never a panic, never a wait past the timeout).

use fieldpatch_drivers::esp::{
    Chip, ConnectOptions, EspError, EspLoader, EspSerial, ROM_BAUD, ResetMode, Timeouts,
};
use fieldpatch_drivers::progress::{Progress, TransferProgress};
use fieldpatch_lab::esp::serial::{EspServer, serve_pty};
use fieldpatch_lab::esp::{EspConfig, EspDevice, EspFaults};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
struct Record {
    phases: Mutex<Vec<String>>,
    last: Mutex<Option<TransferProgress>>,
    notes: Mutex<Vec<String>>,
}

impl Progress for Record {
    fn phase(&self, name: &str) {
        self.phases.lock().unwrap().push(name.to_string());
    }
    fn transfer(&self, p: TransferProgress) {
        *self.last.lock().unwrap() = Some(p);
    }
    fn note(&self, m: &str) {
        self.notes.lock().unwrap().push(m.to_string());
    }
}

fn payload(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 9) as u8
        })
        .collect()
}

fn options() -> ConnectOptions {
    ConnectOptions {
        reset: ResetMode::NoReset,
        attempts: 2,
        timeouts: Timeouts { command: Duration::from_millis(700), ..Timeouts::default() },
    }
}

fn lab() -> (EspDevice, EspServer) {
    let device = EspDevice::new(EspConfig::default()).unwrap();
    let server = serve_pty(device.clone()).unwrap();
    (device, server)
}

async fn connect(device: &EspDevice, server: &EspServer) -> EspLoader<EspSerial> {
    let port = EspSerial::open(server.path().to_str().unwrap(), ROM_BAUD).unwrap();
    // The ROM's boot banner arrives before the first SYNC, as after a real reset.
    server.enter_download_mode(device);
    let mut loader = EspLoader::connect(port, options()).await.expect("sync");
    let info = loader.detect_chip().await.unwrap();
    assert_eq!(info.chip, Chip::Esp32);
    assert_eq!(info.mac, Some([0x24, 0x0A, 0xC4, 0x12, 0x34, 0x56]));
    loader.spi_attach().await.unwrap();
    loader.spi_set_params(4 * 1024 * 1024).await.unwrap();
    loader
}

fn md5(bytes: &[u8]) -> [u8; 16] {
    use md5::{Digest, Md5};
    Md5::digest(bytes).into()
}

#[tokio::test]
async fn driver_syncs_detects_writes_checks_md5_changes_baud_and_runs_the_app() {
    let (device, server) = lab();
    let mut loader = connect(&device, &server).await;
    assert!(!loader.is_stub());

    let id = loader.flash_id().await.unwrap();
    assert_eq!((id.manufacturer, id.size), (0xEF, Some(4 * 1024 * 1024)));

    let image = payload(50_001, 5);
    let rec = Record::default();
    let digest = loader.write_verified(0x10000, &image, &rec).await.unwrap();
    assert_eq!(device.flash(0x10000, image.len()), image);
    // The device hashed the bytes sent, padded with 0xFF to a multiple of four.
    let mut padded = image.clone();
    padded.extend_from_slice(&[0xFF; 3]);
    assert_eq!(digest, md5(&padded));
    assert_eq!(*rec.phases.lock().unwrap(), ["erase", "upload", "verify"]);
    let last = rec.last.lock().unwrap().unwrap();
    assert_eq!((last.done, last.total), (image.len() as u64, image.len() as u64));
    assert_eq!(device.flash_data_frames(), image.len().div_ceil(0x400) as u64);
    assert_eq!(loader.flash_md5(0x10000, 4096).await.unwrap(), md5(&image[..4096]));

    loader.change_baud(921_600).await.unwrap();
    assert_eq!(device.baud(), 921_600);
    let second = payload(3000, 6);
    loader.write_verified(0x300000, &second, &rec).await.unwrap();
    assert_eq!(device.flash(0x300000, second.len()), second);

    loader.run_app().await.unwrap();
    assert!(!device.in_loader());
    assert_eq!(device.boots(), 1);
}

#[tokio::test]
async fn lost_and_corrupted_blocks_are_sent_again() {
    let (device, server) = lab();
    let mut loader = connect(&device, &server).await;
    device.set_faults(EspFaults {
        drop_frames: 1,
        drop_at_seq: Some(3),
        bad_checksum_blocks: 2,
        bad_checksum_at_seq: 7,
        ..EspFaults::default()
    });
    let image = payload(12 * 1024, 9);
    let rec = Record::default();
    loader.write_verified(0x20000, &image, &rec).await.unwrap();
    assert_eq!(device.flash(0x20000, image.len()), image);
    assert_eq!(device.dropped_frames(), 1);
    let notes = rec.notes.lock().unwrap().clone();
    assert_eq!(notes.len(), 3, "{notes:?}");
    assert!(notes[0].contains("block 3") && notes[0].contains("did not answer"), "{notes:?}");
    assert!(notes[1].contains("block 7") && notes[1].contains("checksum"), "{notes:?}");
}

#[tokio::test]
async fn a_block_corrupted_every_time_is_a_clear_checksum_error() {
    let (device, server) = lab();
    let mut loader = connect(&device, &server).await;
    device.set_faults(EspFaults {
        bad_checksum_blocks: 10,
        bad_checksum_at_seq: 1,
        ..EspFaults::default()
    });
    let err = loader.write_flash(0, &payload(4096, 1), &Record::default()).await.unwrap_err();
    assert!(matches!(err, EspError::Rom { code: 0x07, .. }), "{err:?}");
    assert_eq!(err.code(), "esp_rom_error");
    assert!(err.to_string().contains("check the cable or lower the baud rate"), "{err}");
}

#[tokio::test]
async fn a_flash_write_failure_names_the_address_and_the_way_out() {
    let (device, server) = lab();
    let mut loader = connect(&device, &server).await;
    device.set_faults(EspFaults { flash_write_fail_at_seq: Some(2), ..EspFaults::default() });
    let err = loader.write_flash(0x8000, &payload(8192, 2), &Record::default()).await.unwrap_err();
    assert!(matches!(err, EspError::FlashWrite { address: 0x8800 }), "{err:?}");
    assert!(!err.is_transient());
    assert!(err.to_string().contains("stays in its ROM loader"), "{err}");
    assert!(device.in_loader());
}

#[tokio::test]
async fn flash_that_silently_differs_fails_the_md5_check() {
    let (device, server) = lab();
    let mut loader = connect(&device, &server).await;
    device.set_faults(EspFaults { corrupt_at_seq: Some(4), ..EspFaults::default() });
    let err = loader.write_verified(0x40000, &payload(6000, 3), &Record::default()).await;
    let err = err.unwrap_err();
    assert!(matches!(err, EspError::Md5Mismatch { offset: 0x40000, len: 6000, .. }), "{err:?}");
    assert!(err.to_string().contains("do not boot it"), "{err}");
}

#[tokio::test]
async fn a_stalled_loader_is_a_timeout_not_a_hang() {
    let (device, server) = lab();
    let mut loader = connect(&device, &server).await;
    device.set_faults(EspFaults { stall_after: Some(3), ..EspFaults::default() });
    let err = loader.write_flash(0x10000, &payload(20_000, 4), &Record::default()).await;
    let err = err.unwrap_err();
    assert!(matches!(err, EspError::Timeout { command: "FLASH_DATA", .. }), "{err:?}");
    assert_eq!(err.code(), "esp_timeout");
    let err = loader.flash_md5(0, 4096).await.unwrap_err();
    assert!(matches!(err, EspError::Timeout { command: "SPI_FLASH_MD5", .. }), "{err:?}");
}

#[tokio::test]
async fn bad_requests_are_refused_before_any_byte_is_written() {
    let (device, server) = lab();
    let mut loader = connect(&device, &server).await;
    let err = loader.write_flash(0x10400, &[1, 2, 3], &Record::default()).await.unwrap_err();
    assert!(matches!(err, EspError::Unaligned { offset: 0x10400 }), "{err:?}");
    let err = loader.write_flash(0x3F_F000, &[0; 8192], &Record::default()).await.unwrap_err();
    assert!(matches!(err, EspError::TooLarge { .. }), "{err:?}");
    let err = loader.change_baud(12).await.unwrap_err();
    assert!(matches!(err, EspError::BadBaud(12)), "{err:?}");
    assert_eq!(device.flash_data_frames(), 0);
    assert!(!device.commands().iter().any(|c| c.name() == "FLASH_BEGIN"));
}

#[tokio::test]
async fn no_download_mode_is_a_clear_no_sync_error() {
    let (device, server) = lab();
    let mut loader = connect(&device, &server).await;
    loader.run_app().await.unwrap();
    let port = loader.into_port();
    let err = EspLoader::connect(port, options()).await.unwrap_err();
    assert!(matches!(err, EspError::NoSync { attempts: 2, reset: "no-reset" }), "{err:?}");
    assert!(err.to_string().contains("hold BOOT/GPIO0 low"), "{err}");
}

#[tokio::test]
async fn a_port_without_modem_lines_refuses_the_auto_reset_clearly() {
    let (_device, server) = lab();
    let port = EspSerial::open(server.path().to_str().unwrap(), ROM_BAUD).unwrap();
    let opts = ConnectOptions { reset: ResetMode::Classic, ..options() };
    let err = EspLoader::connect(port, opts).await.unwrap_err();
    assert!(matches!(err, EspError::LinesUnsupported { mode: "classic", .. }), "{err:?}");
    assert!(err.to_string().contains("no-reset"), "{err}");
}

#[tokio::test]
async fn a_port_that_talks_garbage_is_no_sync_not_a_panic() {
    let garbage = fieldpatch_lab::noise::serve_garbage(115_200, 7).unwrap();
    let port = EspSerial::open(garbage.path().to_str().unwrap(), ROM_BAUD).unwrap();
    let err = EspLoader::connect(port, options()).await.unwrap_err();
    assert!(matches!(err, EspError::NoSync { .. }), "{err:?}");
    assert_eq!(err.code(), "esp_no_sync");
}

/// Dropping the port closes it at once (its reader thread is stopped and joined): the port is
/// opened again, exclusively, right away, as the next job on the same adapter does.
#[tokio::test]
async fn a_dropped_port_can_be_opened_again_at_once() {
    let (device, server) = lab();
    let path = server.path().to_str().unwrap().to_string();
    for _ in 0..20 {
        let port = EspSerial::open(&path, ROM_BAUD).expect("the port is free again");
        drop(port);
    }
    // And it still works after all that.
    let mut loader = connect(&device, &server).await;
    loader.spi_attach().await.unwrap();
}

#[tokio::test]
async fn flash_reads_through_the_spi_registers_return_the_flash_and_refuse_out_of_range() {
    let (device, server) = lab();
    let stored = payload(0x3000, 41);
    device.preload(0x8000, &stored);
    let mut loader = connect(&device, &server).await;
    // Unaligned, across several 64-byte pieces, ending mid-word.
    let read = loader.read_flash(0x8003, 301).await.unwrap();
    assert_eq!(read, device.flash(0x8003, 301));
    assert_eq!(loader.read_flash(0x8000, 1).await.unwrap(), vec![stored[0]]);
    assert_eq!(loader.read_flash(0x8000, 0).await.unwrap(), Vec::<u8>::new());
    // The last bytes of the flash, then past its end (never sent: the SPI registers untouched).
    assert_eq!(loader.read_flash(0x3F_FFC0, 64).await.unwrap(), vec![0xFF; 64]);
    let before = device.commands().len();
    let err = loader.read_flash(0x3F_FFC0, 65).await.unwrap_err();
    assert!(matches!(err, EspError::FlashRead { .. }), "{err}");
    assert!(err.to_string().contains("past the device's 4194304-byte flash"), "{err}");
    let err = loader.read_flash(0, 2 * 1024 * 1024).await.unwrap_err();
    assert!(err.to_string().contains("at most"), "{err}");
    assert_eq!(device.commands().len(), before, "nothing sent for a refused read");
    // The controller was put back: the flash id still reads, and writes still verify.
    let id = loader.flash_id().await.unwrap();
    assert_eq!(id.size, Some(4 * 1024 * 1024));
    loader.write_verified(0x20000, &payload(5000, 42), &Record::default()).await.unwrap();
}
