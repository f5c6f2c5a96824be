//! The facade's reads for a home screen: on a first run nothing is pending, nothing was synced
//! and the trust store is missing; a trust store that expires soon is valid with the time left;
//! an expired one is in its offline grace (the signed policy, counted from the last sync) until
//! the grace runs out, and then not usable; the catalog listing beside the bundles is judged the
//! same way; without a visit, the visit log says what to do.

use chrono::{Duration, Utc};
use fieldpatch_core::Fieldpatch;
use fieldpatch_core::flash::connect::{DriverConnector, SystemUsb};
use fieldpatch_core::overview::{Validity, ValidityState};
use fieldpatch_testkit::catalog::{CatalogBuilder, random_key};
use std::path::Path;
use std::sync::Arc;

async fn open(dir: &Path) -> Fieldpatch {
    Fieldpatch::open_in(&dir.join("laptop"), Arc::new(DriverConnector { usb: SystemUsb }))
        .await
        .unwrap()
}

fn find<'a>(v: &'a [Validity], what: &str) -> &'a Validity {
    v.iter().find(|x| x.what == what).unwrap_or_else(|| panic!("no {what} in {v:?}"))
}

#[tokio::test]
async fn a_first_run_has_nothing_pending_and_no_trust_store() {
    let dir = tempfile::tempdir().unwrap();
    let fp = open(dir.path()).await;
    let o = fp.overview(&dir.path().join("trust.json"), &dir.path().join("catalog"), None).await;
    let o = o.unwrap();
    assert_eq!(o.pending_events, 0);
    assert_eq!(o.last_sync, None);
    assert!(o.visits.is_empty() && o.work_orders.is_empty());
    assert_eq!(o.validity.len(), 1, "{:?}", o.validity);
    assert_eq!(o.validity[0].what, "trust_store");
    assert_eq!(o.validity[0].state, ValidityState::Missing);
    let none = fp.visit_timeline(None).await.unwrap_err();
    assert_eq!(none.code(), "invalid_input");
    assert!(none.to_string().contains("no visit yet"), "{none}");
}

#[tokio::test]
async fn expiry_and_grace_of_the_trust_store_and_the_listing() {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    // Expires in three days; the listing (signed by the catalog key) in forty.
    let soon = CatalogBuilder::new()
        .catalog_key(random_key(), "catalog")
        .trust_expires(now + Duration::days(3))
        .write(&dir.path().join("soon"))
        .unwrap();
    soon.write_listing(1, now + Duration::days(40)).unwrap();
    let fp = open(dir.path()).await;
    let o = fp.overview(&soon.trust_path, &soon.catalog_dir, None).await.unwrap();
    let trust = find(&o.validity, "trust_store");
    assert_eq!(trust.state, ValidityState::Valid, "{trust:?}");
    let left = trust.remaining_secs.unwrap();
    assert!(left > 2 * 86400 && left <= 3 * 86400, "{trust:?}");
    let listing = find(&o.validity, "catalog_listing");
    assert_eq!(listing.state, ValidityState::Valid, "{listing:?}");
    assert!(listing.remaining_secs.unwrap() > 39 * 86400, "{listing:?}");

    // Expired yesterday, verified online the day before, five days of signed grace: in grace
    // for about four more days. With no listing although the store names catalog keys: missing.
    let grace = CatalogBuilder::new()
        .catalog_key(random_key(), "catalog")
        .offline_grace_days(5)
        .trust_expires(now - Duration::days(1))
        .write(&dir.path().join("grace"))
        .unwrap();
    fieldpatch_core::clock::note_online(fp.store(), now - Duration::days(2)).await.unwrap();
    let o = fp.overview(&grace.trust_path, &grace.catalog_dir, None).await.unwrap();
    assert!(o.last_sync.is_some());
    let trust = find(&o.validity, "trust_store");
    assert_eq!(trust.state, ValidityState::Grace, "{trust:?}");
    let left = trust.remaining_secs.unwrap();
    assert!(left > 3 * 86400 && left <= 4 * 86400, "{trust:?}");
    assert_eq!(find(&o.validity, "catalog_listing").state, ValidityState::Missing);

    // Expired ten days ago: past the grace, not usable, and the reason says so.
    let gone = CatalogBuilder::new()
        .offline_grace_days(5)
        .trust_expires(now - Duration::days(10))
        .write(&dir.path().join("gone"))
        .unwrap();
    let o = fp.overview(&gone.trust_path, &gone.catalog_dir, None).await.unwrap();
    let trust = find(&o.validity, "trust_store");
    assert_eq!(trust.state, ValidityState::Expired, "{trust:?}");
    assert!(trust.detail.contains("expired"), "{trust:?}");
}
