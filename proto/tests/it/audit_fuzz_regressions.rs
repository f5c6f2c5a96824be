//! Inputs the `audit_archive` fuzz target found, kept as regression tests.

use fieldpatch_proto::audit::{self, AuditError};

/// A ustar archive whose one header claims `claimed` bytes for `name` but carries only `carried`.
fn lying_archive(name: &str, claimed: u64, carried: usize) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name).unwrap();
    h.set_size(claimed);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut archive = h.as_bytes().to_vec();
    archive.extend(std::iter::repeat_n(b'x', carried));
    archive
}

#[test]
fn a_header_claiming_more_than_the_archive_holds_is_refused_before_reading() {
    // A 1 KiB file claiming 200 MiB made the reader reserve 200 MiB (libFuzzer's allocation
    // limit caught it); now the claim is checked against the bytes that follow the header.
    let archive = lying_archive("events.jsonl", 200 << 20, 512);
    let err = audit::unpack(&archive).unwrap_err();
    let AuditError::Archive(msg) = &err else { panic!("unexpected error {err:?}") };
    assert!(msg.contains("events.jsonl claims 209715200 bytes but only 512 follow"), "{msg}");
    assert!(matches!(audit::verify(&archive, None), Err(AuditError::Archive(_))));
    // A claim the archive does hold is read.
    let whole = lying_archive("events.jsonl", 512, 512);
    assert!(matches!(audit::unpack(&whole), Err(AuditError::MissingFile(_))));
}
