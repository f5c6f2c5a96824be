//! Site-visit audit archives (a tar handed to an auditor) on arbitrary bytes: the reader and the
//! offline verifier return an error, never panic or allocate beyond the input's bounds.
//!
//! An input starting with `P` is split at `0xFF` bytes into the archive's files and packed, so
//! the fuzzer spends its time on the manifest, events and checks rather than on tar headers.
//! An input starting with `B` is read as lines of unsigned events: they are chained, signed and
//! built into an export, which must verify; the export with one byte changed must not panic.
#![no_main]

use ed25519_dalek::SigningKey;
use fieldpatch_proto::audit;
use fieldpatch_proto::event::{GENESIS_HASH, UnsignedEvent};
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

const NAMES: [&str; 9] = [
    "manifest.json",
    "technician.pub",
    "events.jsonl",
    "devices.csv",
    "manifest.sig",
    "checkpoint.json",
    "trust_store.json",
    "report.html",
    "report.pdf",
];

fn check(archive: &[u8]) {
    if let Ok(files) = audit::unpack(archive) {
        let total: usize = files.iter().map(|(_, b)| b.len()).sum();
        assert!(total <= archive.len(), "unpacked more bytes than the archive holds");
        let repacked = audit::pack(&files).expect("unpacked files pack again");
        assert_eq!(audit::unpack(&repacked).expect("a packed archive unpacks"), files);
    }
    if let Ok(v) = audit::verify(archive, None) {
        assert!(v.events > 0);
        // A server key the auditor pins that the archive does not name is refused.
        if v.checkpoint_server_key.is_some() || v.manifest_server_key.is_some() {
            assert!(audit::verify(archive, Some(&"00".repeat(32))).is_err());
        }
    }
}

/// Chain and sign the events of `lines`, build the export, verify it, then verify it with the
/// byte at `flip` changed.
fn build_and_verify(lines: &[u8], flip: usize, mask: u8) {
    let key = SigningKey::from_bytes(&[9; 32]);
    let signer: String =
        key.verifying_key().as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let log_id = Uuid::from_u128(0x0189_0a5d_ac96_774b_bcce_b302_099a_8057);
    let visit = Uuid::from_u128(0x0189_0a5d_ac96_774b_bcce_b302_099a_8000);
    let mut prev = GENESIS_HASH.to_string();
    let mut events = Vec::new();
    for line in lines.split(|&b| b == b'\n').take(32) {
        let Ok(mut body) = serde_json::from_slice::<UnsignedEvent>(line) else { continue };
        body.signer = signer.clone();
        body.log_id = log_id;
        body.seq = events.len() as u64 + 1;
        body.prev_hash = prev;
        body.visit_id = Some(visit);
        let event = body.sign(&key);
        prev = event.hash();
        events.push(event);
    }
    if events.is_empty() {
        return;
    }
    let Ok(archive) = audit::build(visit, &events, None, &audit::Extras::default(), &key) else {
        return;
    };
    let v = audit::verify(&archive, None).expect("an export as built verifies");
    assert_eq!(v.events, events.len());
    assert_eq!(v.fingerprint, prev);
    let mut changed = archive;
    let at = flip % changed.len();
    changed[at] ^= mask.max(1);
    let _ = audit::verify(&changed, None);
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some(rest) = data.strip_prefix(b"B") {
        let (flip, rest) = rest.split_at(rest.len().min(3));
        let at = flip.iter().fold(0usize, |a, b| a << 8 | usize::from(*b));
        build_and_verify(rest, at, flip.first().copied().unwrap_or(1));
    }
    if let Some(rest) = data.strip_prefix(b"P") {
        let files: Vec<(String, Vec<u8>)> = rest
            .split(|&b| b == 0xFF)
            .zip(NAMES)
            .map(|(bytes, name)| (name.to_string(), bytes.to_vec()))
            .collect();
        if let Ok(archive) = audit::pack(&files) {
            check(&archive);
        }
    }
});
