//! DFU files (suffix and CRC, plain DFU 1.1 or a DfuSe container) on arbitrary bytes: errors
//! only, never a panic. A plain file's suffix re-encodes to the exact bytes parsed, and a DfuSe
//! container rebuilt from its parsed targets parses to the same targets.
//!
//! Each input is also tried with a valid suffix appended (the CRC made right, as DfuSe or plain
//! DFU by the first byte), so the fuzzer spends its time on the payload and DfuSe headers.
#![no_main]

use fieldpatch_core::image::dfu_file::{
    BCD_DFUSE, DfuFile, DfuPayload, DfuSuffix, SUFFIX_LEN, WILDCARD, build_dfuse,
};
use libfuzzer_sys::fuzz_target;

fn check(file: &[u8]) {
    let Ok(parsed) = DfuFile::parse(file) else { return };
    let s = parsed.suffix;
    assert!(usize::from(s.length) >= SUFFIX_LEN && usize::from(s.length) <= file.len());
    let body = &file[..file.len() - usize::from(s.length)];
    assert!(parsed.image_len() <= body.len() as u64);
    let _ = parsed.check_device(0x0483, 0xdf11);
    assert!(parsed.check_device(s.id_vendor, s.id_product).is_ok());
    match &parsed.payload {
        DfuPayload::Raw(raw) => {
            assert_eq!(raw.as_slice(), body);
            assert!(parsed.dfuse_targets().is_empty());
            if usize::from(s.length) == SUFFIX_LEN {
                assert_eq!(s.append_to(body), file, "a standard suffix re-encodes exactly");
            }
        }
        DfuPayload::Dfuse(targets) => {
            assert_eq!(parsed.dfuse_targets().len(), targets.len());
            let names_fit = targets
                .iter()
                .all(|t| t.name.as_ref().is_none_or(|n| n.len() <= 254 && !n.contains('\0')));
            if names_fit {
                let rebuilt = build_dfuse(targets, s.id_vendor, s.id_product);
                let again = DfuFile::parse(&rebuilt).expect("a rebuilt DfuSe file parses");
                assert_eq!(&again.payload, &parsed.payload);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let _ = DfuSuffix::parse(data);
    let dfuse = data.first().is_some_and(|b| b & 1 == 1);
    let suffix = DfuSuffix {
        bcd_device: WILDCARD,
        id_product: 0xdf11,
        id_vendor: 0x0483,
        bcd_dfu: if dfuse { BCD_DFUSE } else { 0x0100 },
        length: SUFFIX_LEN as u8,
        crc: 0,
    };
    let body = data.get(1..).unwrap_or_default();
    let mut body = body.to_vec();
    // DfuSe: the prefix's image size counts the whole file.
    if dfuse && body.len() >= 11 && body.starts_with(b"DfuSe") {
        let total = (body.len() + SUFFIX_LEN) as u32;
        body[6..10].copy_from_slice(&total.to_le_bytes());
    }
    check(&suffix.append_to(&body));
});
