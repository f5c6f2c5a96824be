//! DFU files flashed to the lab DFU device: a file for another device is refused before any
//! DNLOAD; matching plain and DfuSe files (made by dfu-suffix / dfuse-pack) are flashed and read
//! back.

use fieldpatch_core::image::dfu_file::{self, DfuFile, DfuFileError, DfuFlashError, DfuSuffix};
use fieldpatch_drivers::dfu::{DfuDevice, DfuOptions, DfuseOptions, VerifiedBy};
use fieldpatch_drivers::progress::NoProgress;
use fieldpatch_lab::dfu::{LabDfu, LabDfuConfig};
use std::process::Command;

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn suffixed(payload: &[u8], vid: u16, pid: u16) -> Vec<u8> {
    DfuSuffix {
        bcd_device: 0xFFFF,
        id_product: pid,
        id_vendor: vid,
        bcd_dfu: 0x0110,
        length: 16,
        crc: 0,
    }
    .append_to(payload)
}

fn plain_lab() -> LabDfu {
    let mut cfg = LabDfuConfig::plain_dfu();
    cfg.start_in_runtime = false;
    LabDfu::new(cfg)
}

#[test]
fn a_file_for_another_device_is_refused_before_any_dnload() {
    let lab = plain_lab();
    let mut dev = DfuDevice::open(&lab.bus(), &lab.location(), DfuOptions::default()).unwrap();
    let file = DfuFile::parse(&suffixed(&pattern(4096), 0x0483, 0xdf11)).unwrap();
    let err =
        dfu_file::download(&mut dev, &file, DfuseOptions::default(), &NoProgress).unwrap_err();
    assert_eq!(
        err,
        DfuFlashError::File(DfuFileError::DeviceMismatch {
            file_vid: 0x0483,
            file_pid: 0xdf11,
            dev_vid: 0x1209,
            dev_pid: 0x0002
        })
    );
    assert!(err.to_string().contains("refusing"), "{err}");
    assert_eq!(lab.dnload_requests(), 0);
    assert!(lab.firmware().is_empty());
}

#[test]
fn a_matching_plain_file_is_flashed_and_read_back() {
    let lab = plain_lab();
    let mut dev = DfuDevice::open(&lab.bus(), &lab.location(), DfuOptions::default()).unwrap();
    let image = pattern(9000);
    let file = DfuFile::parse(&suffixed(&image, 0x1209, 0x0002)).unwrap();
    let report = dfu_file::download(&mut dev, &file, DfuseOptions::default(), &NoProgress).unwrap();
    assert_eq!(report.verified_by, VerifiedBy::Readback);
    assert_eq!(report.ids.vendor_id, 0x1209);
    assert_eq!(lab.firmware(), image);
}

#[test]
fn a_dfuse_pack_file_is_flashed_element_by_element() {
    let dir = tempfile::tempdir().unwrap();
    let a = pattern(40_000);
    let b: Vec<u8> = pattern(3000).into_iter().rev().collect();
    std::fs::write(dir.path().join("a.bin"), &a).unwrap();
    std::fs::write(dir.path().join("b.bin"), &b).unwrap();
    let out = dir.path().join("fw.dfu");
    let p = |n: &str| dir.path().join(n).display().to_string();
    let st = Command::new("dfuse-pack")
        .args([
            "-b",
            &format!("0x08004000:{}", p("a.bin")),
            "-b",
            &format!("0x08060000:{}", p("b.bin")),
        ])
        .args(["-D", "0x0483:0xdf11", out.to_str().unwrap()])
        .output()
        .expect("dfuse-pack (Debian package dfu-util) is required");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let file = DfuFile::parse(&std::fs::read(&out).unwrap()).unwrap();

    let lab = LabDfu::new(LabDfuConfig::stm32_dfuse());
    let mut dev = DfuDevice::open(&lab.bus(), &lab.location(), DfuOptions::default()).unwrap();
    let report = dfu_file::download(
        &mut dev,
        &file,
        DfuseOptions { mass_erase: false, leave: true },
        &NoProgress,
    )
    .unwrap();
    assert_eq!(report.verified_by, VerifiedBy::Readback);
    assert_eq!(report.bytes, (a.len() + b.len()) as u64);
    assert_eq!(lab.memory(0, 0x0800_4000, a.len()), a);
    assert_eq!(lab.memory(0, 0x0806_0000, b.len()), b);
}
