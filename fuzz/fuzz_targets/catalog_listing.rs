//! Signed catalog listings (from the sync API or a file) on arbitrary bytes: an error, never a
//! panic. Whatever parses re-serializes to a listing that parses to the same value, and its
//! signature check against a provisioned trust store and its successor checks decide cleanly.
#![no_main]

use chrono::{TimeZone, Utc};
use ed25519_dalek::SigningKey;
use fieldpatch_proto::listing::SignedCatalogListing;
use fieldpatch_proto::trust::{Role, TrustStore, TrustStoreBody, TrustedKey};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// A trust store whose catalog key is `[2; 32]`, signed by root `[1; 32]`.
fn trust() -> &'static TrustStore {
    static TRUST: OnceLock<TrustStore> = OnceLock::new();
    TRUST.get_or_init(|| {
        let root = SigningKey::from_bytes(&[1; 32]);
        let catalog = SigningKey::from_bytes(&[2; 32]);
        let body = TrustStoreBody {
            version: 1,
            keys: vec![
                TrustedKey::new(&root.verifying_key(), vec![Role::Root], "root"),
                TrustedKey::new(&catalog.verifying_key(), vec![Role::Catalog], "catalog"),
            ],
            thresholds: BTreeMap::new(),
            offline_grace_days: None,
            expires: None,
            vendor_certificates: Vec::new(),
        };
        TrustStore::provision(body.sign(&[&root])).expect("the fuzz trust store provisions")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = SignedCatalogListing::from_json(data) else { return };
    let again = serde_json::to_vec(&doc).expect("a parsed listing serializes");
    let reparsed = SignedCatalogListing::from_json(&again).expect("its own output parses");
    assert_eq!(reparsed, doc);
    let value: serde_json::Value = serde_json::from_slice(data).expect("it parsed as JSON");
    assert_eq!(SignedCatalogListing::from_value(&value).ok().as_ref(), Some(&doc));
    for b in &doc.listing.bundles {
        assert!(doc.listing.bundle(&b.sha256).is_some());
    }
    let _ = doc.verify(trust());
    let now = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
    let _ = doc.check_current(now);
    assert!(doc.check_successor(Some(&doc)).is_ok());
    assert!(doc.check_successor(None).is_ok());
    // Signed afresh by the trusted catalog key for the store in force, the listing verifies.
    let mut signed = doc.clone();
    signed.listing.trust_store_version = 1;
    signed.signatures.clear();
    signed.cosign(&SigningKey::from_bytes(&[2; 32]));
    assert!(signed.verify(trust()).is_ok(), "a listing signed by the catalog key must verify");
});
