//! DfuSe block addressing: after one set-address the device writes block n at the pointer plus
//! (n - 2) x wTransferSize (ST UM0424, AN3156). Every byte is checked in the lab device's memory
//! itself, not through the driver's readback, so a block the driver numbered wrong shows up as a
//! wrong byte even where readback would read it back the same wrong way.

use fieldpatch_drivers::dfu::{DfuDevice, DfuOptions, DfuseElement, DfuseOptions, DfuseTarget};
use fieldpatch_drivers::dfu::{Manifestation, VerifiedBy};
use fieldpatch_drivers::progress::NoProgress;
use fieldpatch_lab::dfu::{LabDfu, LabDfuConfig};
use std::time::Duration;

const FLASH: u32 = 0x0800_0000;

fn opts() -> DfuOptions {
    DfuOptions {
        control_timeout: Duration::from_millis(500),
        busy_timeout: Duration::from_secs(2),
        manifest_timeout: Duration::from_millis(300),
        reenumerate_timeout: Duration::from_secs(2),
        max_poll: Duration::from_millis(200),
    }
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

fn one_target(elements: Vec<DfuseElement>) -> Vec<DfuseTarget> {
    vec![DfuseTarget { alt_setting: 0, elements }]
}

/// What flash from `FLASH` should hold: `base` with `elements` written over it.
fn expected(base: &[u8], elements: &[&DfuseElement]) -> Vec<u8> {
    let mut want = base.to_vec();
    for e in elements {
        let at = (e.address - FLASH) as usize;
        want[at..at + e.data.len()].copy_from_slice(&e.data);
    }
    want
}

#[test]
fn dfuse_elements_with_a_gap_land_byte_for_byte_at_their_addresses() {
    // 16 KiB sectors 0..3 at 0x08000000, a 64 KiB sector at 0x08010000, 128 KiB sectors from
    // 0x08020000; wTransferSize 2048.
    let lab = LabDfu::new(LabDfuConfig::stm32_dfuse());
    let mut dev = DfuDevice::open(&lab.bus(), &lab.location(), opts()).unwrap();
    let span = 0x0802_8000 - FLASH;

    // Sector 3 (0x0800C000) holds data of its own, which the image's gap must leave alone;
    // sectors 0 and 5 hold old bytes outside the new elements, which their page erase wipes.
    let kept = DfuseElement { address: 0x0800_C000, data: pattern(16 * 1024, 7) };
    let old = [
        DfuseElement { address: FLASH, data: vec![0; 16] },
        DfuseElement { address: 0x0802_4000, data: vec![0x5A; 16] },
    ];
    let mut first = vec![old[0].clone(), kept.clone(), old[1].clone()];
    first.sort_by_key(|e| e.address);
    dev.dfuse_download(&one_target(first), DfuseOptions::default(), &NoProgress).unwrap();
    let before = lab.memory(0, FLASH, span as usize);
    assert_eq!(before, expected(&vec![0xFF; span as usize], &[&old[0], &kept, &old[1]]));

    // Element a starts off any block or page boundary and covers sectors 0, 1 and 2 with a
    // short last block; a gap (the rest of sector 2, sector 3, most of sector 4); element b
    // crosses from the 64 KiB sector into the first 128 KiB one.
    let a = DfuseElement { address: 0x0800_0100, data: pattern(40_077, 1) };
    let b = DfuseElement { address: 0x0801_F003, data: pattern(10_000, 2) };
    let requests = lab.dnload_requests();
    let report = dev
        .dfuse_download(
            &one_target(vec![a.clone(), b.clone()]),
            DfuseOptions::default(),
            &NoProgress,
        )
        .unwrap();
    assert_eq!(report.verified_by, VerifiedBy::Readback);
    assert_eq!(report.manifestation, Manifestation::StayedInDfu);
    assert_eq!(report.bytes, (a.data.len() + b.data.len()) as u64);

    // Every byte from the start of flash to past element b: the elements, the kept sector, and
    // erased flash everywhere else (the erased parts of sectors 0, 2, 4 and 5 included).
    let mut erased = before.clone();
    for (from, len) in [(0, 0xC000), (0x1_0000, 0x1_0000), (0x2_0000, 0x8000)] {
        erased[from..from + len].fill(0xFF);
    }
    let got = lab.memory(0, FLASH, span as usize);
    let want = expected(&erased, &[&a, &b]);
    if let Some(i) = (0..want.len()).find(|&i| got[i] != want[i]) {
        panic!("byte {:#010x}: {:#04x}, expected {:#04x}", FLASH as usize + i, got[i], want[i]);
    }
    assert_eq!(lab.memory(0, 0x0800_C000, kept.data.len()), kept.data);

    // Requests: 5 page erases (sectors 0, 1, 2, 4 and 5), one set-address per element to write
    // and one per element to read back, and the data blocks (20 for a, 5 for b).
    let blocks = a.data.len().div_ceil(2048) + b.data.len().div_ceil(2048);
    assert_eq!(lab.dnload_requests() - requests, 5 + 2 + 2 + blocks);
}

#[test]
fn dfuse_elements_past_the_last_block_number_set_the_address_again() {
    // With 8-byte blocks an element of 530,000 bytes needs 66,250 blocks: more than the block
    // numbers 2..=65534 one set-address reaches, so the driver must set the address again at
    // 0x08000000 + 65,533 x 8 and count from 2 anew, on the way down and on the way back.
    let mut cfg = LabDfuConfig::stm32_dfuse();
    cfg.transfer_size = 8;
    cfg.poll_timeout_ms = 0;
    let lab = LabDfu::new(cfg);
    let mut dev = DfuDevice::open(&lab.bus(), &lab.location(), opts()).unwrap();
    let e = DfuseElement { address: FLASH, data: pattern(530_000, 3) };
    let report =
        dev.dfuse_download(&one_target(vec![e.clone()]), DfuseOptions::default(), &NoProgress);
    assert_eq!(report.unwrap().verified_by, VerifiedBy::Readback);
    let got = lab.memory(0, FLASH, e.data.len() + 16);
    if let Some(i) = (0..e.data.len()).find(|&i| got[i] != e.data[i]) {
        panic!("byte {:#010x}: {:#04x}, expected {:#04x}", FLASH as usize + i, got[i], e.data[i]);
    }
    assert_eq!(got[e.data.len()..], [0xFF; 16]);
}
