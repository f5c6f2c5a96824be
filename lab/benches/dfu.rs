//! DFU throughput against the lab device (no USB bus here: this measures the driver's and the
//! lab's own overhead plus the 1 ms minimum poll sleep per busy GETSTATUS, not a wire rate).
//!
//! `cargo bench -p fieldpatch-lab --bench dfu`

use fieldpatch_drivers::dfu::{DfuDevice, DfuOptions, DfuseElement, DfuseOptions, DfuseTarget};
use fieldpatch_drivers::progress::NoProgress;
use fieldpatch_lab::dfu::{LabDfu, LabDfuConfig};
use std::time::Instant;

fn main() {
    let image: Vec<u8> =
        (0..512 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();

    let mut cfg = LabDfuConfig::plain_dfu();
    cfg.start_in_runtime = false;
    cfg.capacity = image.len();
    cfg.poll_timeout_ms = 0;
    let lab = LabDfu::new(cfg);
    let mut dev = DfuDevice::open(&lab.bus(), &lab.location(), DfuOptions::default()).unwrap();
    let t = Instant::now();
    let report = dev.download(&image, &NoProgress).unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "FIGURE {}",
        serde_json::json!({
            "group": "USB DFU through the lab device (no simulated flash delay)",
            "name": "plain DFU 1.1: time per MiB (download, manifest, readback)",
            "value": secs / (image.len() as f64 / 1048576.0), "unit": "s/MiB", "runs": 1,
            "better": "lower",
        })
    );
    println!(
        "plain DFU 1.1: {} KiB in {:.3} s = {:.0} KiB/s (1024-byte blocks, download + manifest + readback, verified_by {:?})",
        image.len() / 1024,
        secs,
        image.len() as f64 / 1024.0 / secs,
        report.verified_by
    );

    let mut cfg = LabDfuConfig::stm32_dfuse();
    cfg.poll_timeout_ms = 0;
    let lab = LabDfu::new(cfg);
    let mut dev = DfuDevice::open(&lab.bus(), &lab.location(), DfuOptions::default()).unwrap();
    let targets = vec![DfuseTarget {
        alt_setting: 0,
        elements: vec![DfuseElement { address: 0x0800_0000, data: image.clone() }],
    }];
    let t = Instant::now();
    dev.dfuse_download(&targets, DfuseOptions::default(), &NoProgress).unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "FIGURE {}",
        serde_json::json!({
            "group": "USB DFU through the lab device (no simulated flash delay)",
            "name": "DfuSe: time per MiB (page erase, download, readback)",
            "value": secs / (image.len() as f64 / 1048576.0), "unit": "s/MiB", "runs": 1,
            "better": "lower",
        })
    );
    println!(
        "DfuSe: {} KiB in {:.3} s = {:.0} KiB/s (2048-byte blocks, page erase + download + readback)",
        image.len() / 1024,
        secs,
        image.len() as f64 / 1024.0 / secs
    );
}
