//! Trust-store documents (from the sync API, a file, an audit archive) on arbitrary bytes: an
//! error, never a panic. Whatever parses re-serializes to a document that parses to the same
//! value, and provisioning (root signatures, thresholds, structure) decides without panicking.
#![no_main]

use chrono::{TimeZone, Utc};
use fieldpatch_proto::trust::{Role, SignedTrustStore, TrustStore};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(doc) = SignedTrustStore::from_json(data) {
        let again = serde_json::to_vec(&doc).expect("a parsed trust store serializes");
        let reparsed = SignedTrustStore::from_json(&again).expect("its own output parses");
        assert_eq!(reparsed, doc);
        let body = doc.store.canonical_bytes();
        assert!(!body.is_empty());
        let value: serde_json::Value = serde_json::from_slice(data).expect("it parsed as JSON");
        assert_eq!(SignedTrustStore::from_value(&value).ok().as_ref(), Some(&doc));
        if let Ok(store) = TrustStore::provision(doc.clone()) {
            let now = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
            let _ = store.check_current(now);
            let _ = store.offline_grace();
            let _ = store.expires();
            let _ = store.requires_listing();
            for role in Role::ALL {
                assert!(store.threshold(role) >= 1);
                let _ = store.keys_with_role(role);
            }
            for key in &doc.store.keys {
                let _ = store.lookup(&key.id);
            }
            let _ = store.vendor_certificates();
            // A store is its own successor only if rotation rules allow it; either way, no panic.
            let _ = store.rotate(doc);
        }
    }
    let _ = TrustStore::from_json(data);
});
