//! SWUpdate `.swu` archives (cpio newc/crc with `sw-description` in libconfig or JSON) on
//! arbitrary bytes: the archive walk, the description parsers and the whole check return an
//! error, never panic or read past the input.
//!
//! An input starting with `C` is split at `0xFF` bytes into `sw-description`, its signature and
//! files `f1`, `f2`, ... and packed as a cpio archive, so the fuzzer reaches the description and
//! the per-artifact checks without having to learn cpio headers.
#![no_main]

use fieldpatch_core::image::swu::{
    MAX_MEMBERS, SwuTarget, members, parse_description, parse_libconfig, verify_bytes,
};
use libfuzzer_sys::fuzz_target;
use std::io::Cursor;

fn cpio_member(out: &mut Vec<u8>, name: &str, data: &[u8]) {
    let namesize = name.len() + 1;
    let fields = [0, 0o100644, 0, 0, 1, 0, data.len(), 0, 0, 0, 0, namesize, 0];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out.extend_from_slice(data);
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

fn check(data: &[u8]) {
    if let Ok(list) = members(&mut Cursor::new(data), data.len() as u64) {
        assert!(list.len() <= MAX_MEMBERS + 1);
        for m in &list {
            assert!(m.offset + m.size <= data.len() as u64, "member {} past the end", m.name);
        }
    }
    if let Ok(v) = verify_bytes(data, None, None) {
        assert_eq!(v.file_len, data.len() as u64);
        assert!(!v.description.hardware_compatibility.is_empty());
        assert!(!v.description.artifacts.is_empty());
        let target = SwuTarget {
            board: None,
            hardware_revision: v.description.hardware_compatibility[0].clone(),
        };
        assert!(verify_bytes(data, None, Some(&target)).is_ok());
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let _ = parse_libconfig(data);
    if let Ok(d) = parse_description(data, None) {
        assert!(!d.artifacts.is_empty());
    }
    let _ = parse_description(data, Some("board"));
    if let Some(rest) = data.strip_prefix(b"C") {
        let mut archive = Vec::new();
        let mut parts = rest.split(|&b| b == 0xFF);
        cpio_member(&mut archive, "sw-description", parts.next().unwrap_or_default());
        cpio_member(&mut archive, "sw-description.sig", parts.next().unwrap_or(b"sig"));
        for (i, part) in parts.take(8).enumerate() {
            cpio_member(&mut archive, &format!("f{}", i + 1), part);
        }
        cpio_member(&mut archive, "TRAILER!!!", b"");
        check(&archive);
    }
});
