//! DFU throughput against the lab device (no USB bus here: this measures the driver's and the
//! lab's own overhead, not a wire rate). Each mode runs twice: with a zero `bwPollTimeout` (the
//! driver's and the lab's overhead: a block is done as soon as the device answers, nothing is
//! waited) and with the device claiming `PROGRAM_MS` per block, its simulated flash speed, which
//! the driver must wait out. Against that speed the limit is one poll timeout per downloaded
//! block; page erases and DfuSe's set-address commands (one per element to write and one to read
//! back, not one per block) wait a poll timeout each as well, so the ratio to the limit includes
//! them.
//!
//! `cargo bench -p fieldpatch-lab --bench dfu`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use fieldpatch_drivers::dfu::{DfuDevice, DfuOptions, DfuseElement, DfuseOptions, DfuseTarget};
use fieldpatch_drivers::progress::NoProgress;
use fieldpatch_lab::dfu::{LabDfu, LabDfuConfig};
use std::time::Instant;

/// The simulated program time of one block (a NOR page program plus the bootloader's work).
const PROGRAM_MS: u32 = 4;
const MIB: f64 = 1048576.0;

fn figure(name: &str, secs_per_mib: f64, limit: Option<f64>, group: &str) {
    let mut f = serde_json::json!({
        "group": group, "name": name, "value": secs_per_mib, "unit": "s/MiB", "runs": 1,
        "better": "lower",
    });
    if let Some(l) = limit {
        f["limit"] = l.into();
        f["goal"] = "within 20 % of the simulated flash speed".into();
    }
    println!("FIGURE {f}");
}

/// Plain DFU 1.1: seconds for `image`, and the blocks it took.
fn plain(image: &[u8], poll_ms: u32) -> (f64, usize) {
    let mut cfg = LabDfuConfig::plain_dfu();
    cfg.start_in_runtime = false;
    cfg.capacity = image.len();
    cfg.poll_timeout_ms = poll_ms;
    let blocks = image.len().div_ceil(cfg.transfer_size as usize);
    let lab = LabDfu::new(cfg);
    let mut dev = DfuDevice::open(&lab.bus(), &lab.location(), DfuOptions::default()).unwrap();
    let t = Instant::now();
    let report = dev.download(image, &NoProgress).unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "plain DFU 1.1, poll {poll_ms} ms: {} KiB in {secs:.3} s = {:.0} KiB/s ({blocks} blocks, download + manifest + readback, verified_by {:?})",
        image.len() / 1024,
        image.len() as f64 / 1024.0 / secs,
        report.verified_by
    );
    (secs, blocks)
}

/// DfuSe: seconds for `image` at the start of flash, and the blocks it took.
fn dfuse(image: &[u8], poll_ms: u32) -> (f64, usize) {
    let mut cfg = LabDfuConfig::stm32_dfuse();
    cfg.poll_timeout_ms = poll_ms;
    let blocks = image.len().div_ceil(cfg.transfer_size as usize);
    let lab = LabDfu::new(cfg);
    let mut dev = DfuDevice::open(&lab.bus(), &lab.location(), DfuOptions::default()).unwrap();
    let targets = vec![DfuseTarget {
        alt_setting: 0,
        elements: vec![DfuseElement { address: 0x0800_0000, data: image.to_vec() }],
    }];
    let t = Instant::now();
    dev.dfuse_download(&targets, DfuseOptions::default(), &NoProgress).unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "DfuSe, poll {poll_ms} ms: {} KiB in {secs:.3} s = {:.0} KiB/s ({blocks} blocks, page erase + download + readback)",
        image.len() / 1024,
        image.len() as f64 / 1024.0 / secs
    );
    (secs, blocks)
}

fn main() {
    let image: Vec<u8> =
        (0..512 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let mib = image.len() as f64 / MIB;
    let overhead = "USB DFU through the lab device (no simulated flash delay)";
    let speed = format!(
        "USB DFU through the lab device, simulated flash speed ({PROGRAM_MS} ms per block)"
    );

    let (secs, _) = plain(&image, 0);
    figure(
        "plain DFU 1.1: time per MiB (download, manifest, readback)",
        secs / mib,
        None,
        overhead,
    );
    let (secs, _) = dfuse(&image, 0);
    figure("DfuSe: time per MiB (page erase, download, readback)", secs / mib, None, overhead);

    let (secs, blocks) = plain(&image, PROGRAM_MS);
    let limit = blocks as f64 * f64::from(PROGRAM_MS) / 1000.0 / mib;
    figure(
        "plain DFU 1.1: time per MiB against the device's program time",
        secs / mib,
        Some(limit),
        &speed,
    );
    let (secs, blocks) = dfuse(&image, PROGRAM_MS);
    let limit = blocks as f64 * f64::from(PROGRAM_MS) / 1000.0 / mib;
    figure(
        "DfuSe: time per MiB against the device's program time",
        secs / mib,
        Some(limit),
        &speed,
    );
}
