//! Bundle header, manifest, signature block and canonical-JSON parsers on arbitrary bytes: they
//! must return an error, never panic, hang or allocate without bound.
#![no_main]

use fieldpatch_core::bundle::{Manifest, canonical, container};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = container::parse_header_bytes(data) {
        // Whatever parses must re-serialize to the exact bytes that were signed.
        assert_eq!(header.manifest.canonical_bytes().unwrap(), header.manifest_bytes);
    }
    let _ = Manifest::from_canonical_bytes(data);
    let _ = container::parse_signatures(data);
    let _ = canonical::find_duplicate_key(data);
});
