//! Faithfulness: the real `esptool` (PyPI) drives the simulated ESP32 ROM loader over a real pty
//! with `--before no-reset --after no-reset --no-stub`: chip id and MAC, an image written at an
//! offset and verified (esptool checks SPI_FLASH_MD5 itself after writing), also after
//! CHANGE_BAUDRATE to 921600; the SPI user commands (RDID, the status registers, SFDP with its
//! address and dummy phases) as esptool runs them, and esptool's ROM flash read (READ_FLASH_SLOW)
//! against the flash the Fieldpatch driver reads through the SPI registers.

use fieldpatch_lab::esp::serial::serve_pty;
use fieldpatch_lab::esp::{EspConfig, EspDevice};
use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) fn esptool() -> PathBuf {
    let venv = std::env::var_os("FIELDPATCH_TOOLS_VENV").map(PathBuf::from).or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/fieldpatch/venv"))
    });
    let candidates = venv.map(|v| v.join("bin/esptool")).into_iter().chain(
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join("esptool")).collect::<Vec<_>>())
            .unwrap_or_default(),
    );
    for c in candidates {
        if c.is_file() {
            return c;
        }
    }
    panic!(
        "esptool is not installed: run scripts/setup (it installs scripts/python-requirements.txt \
         into $HOME/.cache/fieldpatch/venv), or `pip install esptool==5.6.0` into that venv"
    );
}

pub(crate) fn run_esptool(port: &Path, baud: u32, args: &[&str]) -> (bool, String) {
    let out = Command::new(esptool())
        .args(["--chip", "esp32", "--port"])
        .arg(port)
        .args(["--baud", &baud.to_string()])
        .args(["--before", "no-reset", "--after", "no-reset", "--no-stub"])
        .args(args)
        .env("NO_COLOR", "1")
        .env("COLUMNS", "200")
        .output()
        .expect("esptool runs");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn ok(port: &Path, baud: u32, args: &[&str]) -> String {
    let (success, text) = run_esptool(port, baud, args);
    assert!(success, "esptool {args:?} failed:\n{text}");
    text
}

/// Bytes that are not an ESP app image (so esptool writes them as they are).
fn payload(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 7) as u8
        })
        .map(|b| if b == 0xE9 { 0x00 } else { b })
        .collect()
}

#[test]
fn esptool_reads_the_chip_writes_and_verifies() {
    let device = EspDevice::new(EspConfig::default()).unwrap();
    let server = serve_pty(device.clone()).unwrap();
    let port = server.path();

    let info = ok(port, 115_200, &["read-mac"]);
    assert!(info.contains("ESP32-D0WD"), "chip description missing:\n{info}");
    assert!(info.contains("24:0a:c4:12:34:56"), "MAC missing:\n{info}");
    assert!(info.contains("Crystal frequency:  40MHz") || info.contains("40MHz"), "{info}");

    let id = ok(port, 115_200, &["chip-id"]);
    assert!(id.contains("24:0a:c4:12:34:56"), "{id}");

    // The flash's JEDEC id, read through the SPI controller's user-command registers.
    let flash = ok(port, 115_200, &["flash-id"]);
    assert!(flash.contains("Detected flash size: 4MB"), "{flash}");
    assert!(flash.to_lowercase().contains("manufacturer: ef"), "{flash}");

    let dir = tempfile::tempdir().unwrap();
    let image = payload(70_001, 17);
    let file = dir.path().join("app.bin");
    std::fs::write(&file, &image).unwrap();
    let f = file.to_str().unwrap();

    let before = device.flash_data_frames();
    let out = ok(port, 115_200, &["write-flash", "0x10000", f]);
    assert!(out.contains("Hash of data verified"), "esptool did not verify:\n{out}");
    assert_eq!(device.flash(0x10000, image.len()), image, "the lab's flash holds the image");
    // Written in 1 KiB blocks, the last padded with 0xFF (to a 4-byte multiple as esptool pads).
    assert_eq!(device.flash_data_frames() - before, image.len().div_ceil(0x400) as u64);
    assert_eq!(device.flash(0x10000 + image.len() as u32, 3), vec![0xFF; 3]);
    assert!(device.in_loader(), "--after no-reset keeps the ROM loader");

    let out = ok(port, 115_200, &["verify-flash", "0x10000", f]);
    assert!(out.contains("Verification successful (digest matched)"), "{out}");

    // A different image does not verify: the lab's MD5 is real.
    let other = dir.path().join("other.bin");
    std::fs::write(&other, payload(70_001, 18)).unwrap();
    let (success, out) =
        run_esptool(port, 115_200, &["verify-flash", "0x10000", other.to_str().unwrap()]);
    assert!(!success, "a wrong image verified:\n{out}");
    assert!(out.contains("Verification failed (digest mismatch)"), "{out}");

    // After CHANGE_BAUDRATE (esptool applies the ESP32's 8 MHz clock workaround first).
    let second = payload(9_000, 99);
    let file2 = dir.path().join("second.bin");
    std::fs::write(&file2, &second).unwrap();
    let out = ok(port, 921_600, &["write-flash", "0x200000", file2.to_str().unwrap()]);
    assert!(out.contains("Changing baud rate to 921600"), "{out}");
    assert_eq!(device.flash(0x200000, second.len()), second);
    assert_eq!(device.baud(), 921_600);
}

#[test]
fn esptool_refuses_a_write_past_the_flash() {
    let device =
        EspDevice::new(EspConfig { flash_size: 1024 * 1024, ..Default::default() }).unwrap();
    let server = serve_pty(device.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.bin");
    std::fs::write(&file, payload(8192, 3)).unwrap();
    let (success, out) =
        run_esptool(server.path(), 115_200, &["write-flash", "0xFF000", file.to_str().unwrap()]);
    assert!(!success, "{out}");
    assert!(out.contains("1048576 bytes of flash"), "esptool sized the flash from RDID:\n{out}");
    assert_eq!(device.flash_data_frames(), 0);
}

#[test]
fn esptool_runs_spi_user_commands_and_reads_the_flash_the_driver_reads() {
    let device = EspDevice::new(EspConfig::default()).unwrap();
    let stored = payload(0x400, 23);
    device.preload(0xD000, &stored);
    let server = serve_pty(device.clone()).unwrap();
    let port = server.path();

    // RDSR/RDSR2 through the user-command registers.
    let status = ok(port, 115_200, &["read-flash-status", "--bytes", "2"]);
    assert!(status.contains("Flash memory status: 0x0000"), "{status}");
    // SFDP: 24-bit address in SPI_ADDR's top bits, 8 dummy cycles.
    let sfdp = ok(port, 115_200, &["read-flash-sfdp", "0", "4"]);
    assert!(sfdp.contains("0x53 0x46 0x44 0x50"), "the SFDP signature:\n{sfdp}");

    // esptool --no-stub reads flash with the ESP32 ROM's READ_FLASH_SLOW; the driver reads the
    // same bytes with the flash's READ command through the SPI registers.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("read.bin");
    ok(port, 115_200, &["read-flash", "0xd000", "0x400", out.to_str().unwrap()]);
    let by_esptool = std::fs::read(&out).unwrap();
    assert_eq!(by_esptool, stored);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let by_driver = rt.block_on(async {
        use fieldpatch_drivers::esp::{ConnectOptions, EspLoader, EspSerial, ROM_BAUD, ResetMode};
        let serial = EspSerial::open(port.to_str().unwrap(), ROM_BAUD).unwrap();
        let opts = ConnectOptions { reset: ResetMode::NoReset, ..ConnectOptions::default() };
        let mut loader = EspLoader::connect(serial, opts).await.unwrap();
        loader.detect_chip().await.unwrap();
        loader.spi_attach().await.unwrap();
        loader.read_flash(0xD000, 0x400).await.unwrap()
    });
    assert_eq!(by_driver, by_esptool);
    // And esptool still sees the flash as before.
    let flash = ok(port, 115_200, &["flash-id"]);
    assert!(flash.contains("Detected flash size: 4MB"), "{flash}");
}
