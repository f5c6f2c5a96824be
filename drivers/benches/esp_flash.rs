//! ESP ROM loader flash throughput against the simulated ESP32 on a pty paced like a real UART
//! (prints figures; run with `cargo bench -p fieldpatch-drivers --bench esp_flash`).
//!
//! A 1 MiB image (`ESP_BENCH_BYTES` to change it) is written and MD5-checked at 115200 baud and,
//! after CHANGE_BAUDRATE, at 921600 baud, by this driver and by `esptool --no-stub write-flash`
//! (which also connects, reads the chip and verifies with SPI_FLASH_MD5), each against a fresh
//! lab device in the same run. The line limit is baud / 10 bytes per second (8N1); the ratio is
//! the image's bytes per second over that limit.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap fails the run

use fieldpatch_drivers::esp::{
    ConnectOptions, EspLoader, EspSerial, ROM_BAUD, ResetMode, Timeouts,
};
use fieldpatch_drivers::progress::NoProgress;
use fieldpatch_lab::esp::serial::serve_pty;
use fieldpatch_lab::esp::{EspConfig, EspDevice};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const OFFSET: u32 = 0x10000;

fn payload(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9E37_79B9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as u8
        })
        .collect()
}

fn paced_device() -> EspDevice {
    EspDevice::new(EspConfig { paced: true, ..EspConfig::default() }).expect("lab device")
}

fn esptool() -> Option<PathBuf> {
    let venv = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/fieldpatch/venv"));
    venv.map(|v| v.join("bin/esptool"))
        .into_iter()
        .chain(
            std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).map(|d| d.join("esptool")).collect::<Vec<_>>())
                .unwrap_or_default(),
        )
        .find(|c| c.is_file())
}

async fn ours(img: &[u8], baud: u32) -> Duration {
    let device = paced_device();
    let server = serve_pty(device.clone()).expect("pty");
    let started = Instant::now();
    let port = EspSerial::open(server.path().to_str().unwrap(), ROM_BAUD).expect("open");
    let opts =
        ConnectOptions { reset: ResetMode::NoReset, attempts: 3, timeouts: Timeouts::default() };
    let mut loader = EspLoader::connect(port, opts).await.expect("sync");
    loader.detect_chip().await.expect("chip");
    loader.spi_attach().await.expect("attach");
    loader.spi_set_params(4 * 1024 * 1024).await.expect("params");
    if baud != ROM_BAUD {
        loader.change_baud(baud).await.expect("baud");
    }
    loader.write_verified(OFFSET, img, &NoProgress).await.expect("write");
    let took = started.elapsed();
    assert_eq!(device.flash(OFFSET, img.len()), img);
    took
}

fn theirs(tool: &PathBuf, img: &[u8], baud: u32) -> Duration {
    let device = paced_device();
    let server = serve_pty(device.clone()).expect("pty");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("image.bin");
    std::fs::write(&file, img).expect("write image");
    let started = Instant::now();
    let out = std::process::Command::new(tool)
        .args(["--chip", "esp32", "--port"])
        .arg(server.path())
        .args(["--baud", &baud.to_string()])
        .args(["--before", "no-reset", "--after", "no-reset", "--no-stub", "write-flash"])
        .arg(format!("0x{OFFSET:x}"))
        .arg(&file)
        .output()
        .expect("esptool runs");
    let took = started.elapsed();
    assert!(out.status.success(), "esptool failed: {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(device.flash(OFFSET, img.len()), img);
    took
}

fn line(who: &str, baud: u32, bytes: usize, took: Duration) {
    let rate = bytes as f64 / took.as_secs_f64();
    let limit = f64::from(baud) / 10.0;
    println!(
        "{who:<28} {baud:>7} baud  {:>7.2} s  {:>8.0} B/s  {:>5.1}% of the line limit ({limit:.0} B/s)",
        took.as_secs_f64(),
        rate,
        100.0 * rate / limit
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let bytes: usize =
        std::env::var("ESP_BENCH_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(1 << 20);
    let img = payload(bytes);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let tool = esptool();
    println!("ESP ROM loader: {bytes} bytes written and MD5-checked on a paced pty");
    for baud in [115_200, 921_600] {
        let ours = rt.block_on(ours(&img, baud));
        line("fieldpatch (driver)", baud, bytes, ours);
        match &tool {
            Some(tool) => {
                let theirs = theirs(tool, &img, baud);
                line("esptool --no-stub", baud, bytes, theirs);
                println!(
                    "{:<28} {baud:>7} baud  esptool / fieldpatch time: {:.2}",
                    "",
                    theirs.as_secs_f64() / ours.as_secs_f64()
                );
                let rate = |t: Duration| bytes as f64 / t.as_secs_f64() / 1024.0;
                println!(
                    "FIGURE {}",
                    serde_json::json!({
                        "group": "ESP ROM loader (lab ESP32 on a pty paced like a UART)",
                        "name": format!("write and MD5-check {} KiB at {baud} baud", bytes / 1024),
                        "value": rate(ours), "unit": "KiB/s", "runs": 1,
                        "peer": "esptool --no-stub", "peer_value": rate(theirs),
                        "limit": f64::from(baud) / 10.0 / 1024.0, "better": "higher",
                        "goal": "line limit baud/10 (8N1)",
                    })
                );
            }
            None => println!("esptool not installed (scripts/setup): no comparison at {baud}"),
        }
    }
}
