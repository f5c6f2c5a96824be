//! DFU files made by the reference tools (`dfu-suffix`, `dfuse-pack` from dfu-util) are read
//! exactly; damaged ones are refused with a clear error.

use fieldpatch_core::image::dfu_file::{
    BCD_DFUSE, DfuFile, DfuFileError, DfuPayload, DfuSuffix, DfuseFileElement, DfuseFileTarget,
    build_dfuse,
};
use std::path::Path;
use std::process::Command;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| {
        panic!("{cmd} is required (Debian package dfu-util, see scripts/setup): {e}")
    });
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn with_suffix(dir: &Path, payload: &[u8], args: &[&str]) -> Vec<u8> {
    let p = dir.join("fw.dfu");
    std::fs::write(&p, payload).unwrap();
    let mut a: Vec<&str> = args.to_vec();
    let path = p.to_str().unwrap().to_string();
    a.extend(["-a", &path]);
    run("dfu-suffix", &a);
    std::fs::read(&p).unwrap()
}

#[test]
fn reads_a_file_made_by_dfu_suffix() {
    let dir = tempfile::tempdir().unwrap();
    let payload = pattern(1000, 7);
    let file = with_suffix(dir.path(), &payload, &["-v", "0x0483", "-p", "0xdf11", "-d", "0x2200"]);
    let f = DfuFile::parse(&file).unwrap();
    assert_eq!(f.suffix.id_vendor, 0x0483);
    assert_eq!(f.suffix.id_product, 0xdf11);
    assert_eq!(f.suffix.bcd_device, 0x2200);
    assert_eq!(f.suffix.length, 16);
    assert_eq!(f.payload, DfuPayload::Raw(payload.clone()));
    f.check_device(0x0483, 0xdf11).unwrap();
    assert_eq!(
        f.check_device(0x0483, 0x5740),
        Err(DfuFileError::DeviceMismatch {
            file_vid: 0x0483,
            file_pid: 0xdf11,
            dev_vid: 0x0483,
            dev_pid: 0x5740
        })
    );
    // Our writer produces the same bytes as dfu-suffix.
    assert_eq!(f.suffix.append_to(&payload), file);
}

#[test]
fn a_suffix_without_ids_is_a_wildcard() {
    let dir = tempfile::tempdir().unwrap();
    let file = with_suffix(dir.path(), &pattern(64, 1), &[]);
    let f = DfuFile::parse(&file).unwrap();
    assert_eq!((f.suffix.id_vendor, f.suffix.id_product), (0xFFFF, 0xFFFF));
    f.check_device(0x1234, 0x5678).unwrap();
}

#[test]
fn dfu_suffix_accepts_files_we_write() {
    let dir = tempfile::tempdir().unwrap();
    let payload = pattern(300, 2);
    let suffix = DfuSuffix {
        bcd_device: 0x0100,
        id_product: 0x0002,
        id_vendor: 0x1209,
        bcd_dfu: 0x0110,
        length: 16,
        crc: 0,
    };
    let p = dir.path().join("ours.dfu");
    std::fs::write(&p, suffix.append_to(&payload)).unwrap();
    let out = Command::new("dfu-suffix").args(["-c", p.to_str().unwrap()]).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("contains a DFU suffix"), "{text}");
    assert!(text.contains("0x1209") && text.contains("0x0002"), "{text}");
    let written = std::fs::read(&p).unwrap();
    let crc_bytes: [u8; 4] = written[written.len() - 4..].try_into().unwrap();
    let crc = format!("{:#010X}", u32::from_le_bytes(crc_bytes));
    assert!(text.contains(&crc[2..]), "dfu-suffix shows a different CRC than {crc}: {text}");
}

#[test]
fn damaged_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = with_suffix(dir.path(), &pattern(500, 3), &["-v", "0x0483", "-p", "0xdf11"]);
    let mut flipped = file.clone();
    flipped[100] ^= 0x01;
    let err = DfuFile::parse(&flipped).unwrap_err();
    assert!(matches!(err, DfuFileError::BadCrc { .. }), "{err:?}");
    assert!(err.to_string().contains("damaged"), "{err}");
    assert_eq!(DfuFile::parse(&pattern(500, 3)).unwrap_err(), DfuFileError::NoSignature);
    assert_eq!(DfuFile::parse(&file[..10]).unwrap_err(), DfuFileError::TooShort { len: 10 });
    let mut short_len = file.clone();
    let n = short_len.len();
    short_len[n - 5] = 8;
    assert!(matches!(
        DfuFile::parse(&short_len).unwrap_err(),
        DfuFileError::BadSuffixLength { length: 8, .. }
    ));
    // A DfuSe suffix on a file without the DfuSe prefix.
    let s = DfuSuffix {
        bcd_device: 0xFFFF,
        id_product: 0xdf11,
        id_vendor: 0x0483,
        bcd_dfu: BCD_DFUSE,
        length: 16,
        crc: 0,
    };
    assert_eq!(
        DfuFile::parse(&s.append_to(&[0; 32])).unwrap_err(),
        DfuFileError::MissingDfusePrefix
    );
}

#[test]
fn reads_a_multi_element_multi_target_file_made_by_dfuse_pack() {
    let dir = tempfile::tempdir().unwrap();
    let a = pattern(20_000, 1);
    let b = pattern(777, 2);
    let opt = pattern(16, 3);
    for (name, data) in [("a.bin", &a), ("b.bin", &b), ("opt.bin", &opt)] {
        std::fs::write(dir.path().join(name), data).unwrap();
    }
    let out = dir.path().join("out.dfu");
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    run(
        "dfuse-pack",
        &[
            "-b",
            &format!("0x08000000:{}", d("a.bin")),
            "-b",
            &format!("0x08020000:{}", d("b.bin")),
            "-b",
            &format!("0x1FFFC000@1:{}", d("opt.bin")),
            "-D",
            "0x0483:0xdf11",
            out.to_str().unwrap(),
        ],
    );
    let bytes = std::fs::read(&out).unwrap();
    let f = DfuFile::parse(&bytes).unwrap();
    assert_eq!(f.suffix.bcd_dfu, BCD_DFUSE);
    assert_eq!((f.suffix.id_vendor, f.suffix.id_product), (0x0483, 0xdf11));
    let DfuPayload::Dfuse(targets) = &f.payload else { panic!("{:?}", f.payload) };
    assert_eq!(targets.len(), 2);
    let t0 = targets.iter().find(|t| t.alt_setting == 0).unwrap();
    let t1 = targets.iter().find(|t| t.alt_setting == 1).unwrap();
    assert_eq!(
        t0.elements,
        vec![
            DfuseFileElement { address: 0x0800_0000, data: a.clone() },
            DfuseFileElement { address: 0x0802_0000, data: b.clone() },
        ]
    );
    assert_eq!(t1.elements, vec![DfuseFileElement { address: 0x1FFF_C000, data: opt.clone() }]);
    assert_eq!(f.image_len(), (a.len() + b.len() + opt.len()) as u64);

    // dfuse-pack reads back what we build.
    let ours = build_dfuse(
        &[DfuseFileTarget {
            alt_setting: 0,
            name: Some("Flash".into()),
            elements: t0.elements.clone(),
        }],
        0x0483,
        0xdf11,
    );
    let p = dir.path().join("ours.dfu");
    std::fs::write(&p, &ours).unwrap();
    let dump = Command::new("dfuse-pack").args(["-d", p.to_str().unwrap()]).output().unwrap();
    let text =
        String::from_utf8_lossy(&dump.stdout).to_string() + &String::from_utf8_lossy(&dump.stderr);
    assert!(dump.status.success(), "{text}");
    assert!(text.contains("0x08020000") || text.contains("08020000"), "{text}");
    assert!(!text.to_lowercase().contains("invalid"), "{text}");
}

#[test]
fn damaged_dfuse_containers_are_refused() {
    let t = DfuseFileTarget {
        alt_setting: 0,
        name: None,
        elements: vec![DfuseFileElement { address: 0x0800_0000, data: pattern(64, 4) }],
    };
    let good = build_dfuse(std::slice::from_ref(&t), 0x0483, 0xdf11);
    assert!(DfuFile::parse(&good).is_ok());
    let resuffix = |mut body: Vec<u8>| {
        let s = DfuSuffix::parse(&good).unwrap();
        body.truncate(body.len());
        s.append_to(&body)
    };
    let body = good[..good.len() - 16].to_vec();
    // An element size that runs past its target.
    let mut big = body.clone();
    let at = 11 + 274 + 4;
    big[at..at + 4].copy_from_slice(&1_000_000u32.to_le_bytes());
    let err = DfuFile::parse(&resuffix(big)).unwrap_err();
    assert!(matches!(err, DfuFileError::BadDfuse { .. }), "{err:?}");
    // A wrong target signature.
    let mut sig = body.clone();
    sig[11] = b'X';
    assert!(matches!(DfuFile::parse(&resuffix(sig)).unwrap_err(), DfuFileError::BadDfuse { .. }));
    // An image size that disagrees with the file.
    let mut size = body.clone();
    size[6] ^= 1;
    assert!(matches!(DfuFile::parse(&resuffix(size)).unwrap_err(), DfuFileError::BadDfuse { .. }));
}
