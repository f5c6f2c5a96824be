//! The catalog a laptop uses, when its trust store names catalog keys, is what the signed catalog
//! listing in the folder names: other bundle files are refused, and an expired listing (or an
//! expired trust store) stops the catalog unless the signed offline grace, counted from the last
//! sync, still holds.

use chrono::{DateTime, Duration, Utc};
use fieldpatch_core::Fieldpatch;
use fieldpatch_core::bundle::PayloadFormat;
use fieldpatch_core::catalog::Catalog;
use fieldpatch_core::flash::connect::{DriverConnector, SystemUsb};
use fieldpatch_core::model::Version;
use fieldpatch_testkit::catalog::{BundleSpec, CatalogBuilder, SignedCatalog, random_key};
use std::sync::Arc;

const A: &[u8] = &[7u8; 512];
const B: &[u8] = &[8u8; 512];

fn spec<'a>(id: &'a str, payload: &'a [u8]) -> BundleSpec<'a> {
    BundleSpec {
        id,
        model: "sensor",
        applies: (Version::new(1, 0, 0, 0), Version::new(1, 9, 0, 0)),
        installs: Version::new(2, 0, 0, 0),
        cvss: "7.0",
        format: PayloadFormat::Raw,
        payload,
    }
}

/// Load the catalog folder through the facade (its clock and the last sync from the store).
async fn load(
    dir: &std::path::Path,
    catalog: &SignedCatalog,
    last_online: Option<DateTime<Utc>>,
) -> Catalog {
    let fp = Fieldpatch::open_in(&dir.join("laptop"), Arc::new(DriverConnector { usb: SystemUsb }))
        .await
        .unwrap();
    if let Some(t) = last_online {
        fieldpatch_core::clock::note_online(fp.store(), t).await.unwrap();
    }
    fp.load_catalog(&catalog.catalog_dir, &catalog.trust_path).await.unwrap()
}

fn reasons(c: &Catalog) -> Vec<String> {
    c.refused.iter().map(|r| r.reason.clone()).collect()
}

#[tokio::test]
async fn only_bundles_the_signed_listing_names_are_used() {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let catalog = CatalogBuilder::new()
        .catalog_key(random_key(), "catalog")
        .write(&dir.path().join("release"))
        .unwrap();
    catalog.bundle(&spec("sensor-a", A)).unwrap();

    // No listing at all: nothing is used.
    let c = load(dir.path(), &catalog, None).await;
    assert!(c.bundles.is_empty());
    assert!(reasons(&c)[0].contains("need a signed catalog listing"), "{:?}", reasons(&c));

    // A listing of sensor-a; sensor-b arrives in the folder afterwards and is refused.
    let listing_expires = now + Duration::days(3);
    catalog.write_listing(1, listing_expires).unwrap();
    catalog.bundle(&spec("sensor-b", B)).unwrap();
    let c = load(dir.path(), &catalog, None).await;
    let used: Vec<_> = c.entries().into_iter().map(|e| e.bundle_id).collect();
    assert_eq!(used, ["sensor-a"]);
    let why = reasons(&c);
    assert_eq!(c.refused[0].bundle_id.as_deref(), Some("sensor-b"));
    assert!(why[0].contains("is not in the signed catalog listing"), "{why:?}");
    // The listing expires before the bundle: the bundle is usable while both are.
    assert_eq!(c.bundles[0].usable_until, listing_expires);

    // The same file under another listed name, or a listing signed by a key the trust store
    // does not name: refused.
    let mut doc = catalog.listing(2, listing_expires).unwrap();
    doc.listing.bundles[0].bundle_id = "sensor-z".into();
    let forged = doc.listing.clone().sign(&[&random_key()]);
    std::fs::write(
        catalog.catalog_dir.join("listing.json"),
        serde_json::to_vec(&doc.listing.sign(&catalog.catalog_keys())).unwrap(),
    )
    .unwrap();
    let c = load(dir.path(), &catalog, None).await;
    let used: Vec<_> = c.entries().into_iter().map(|e| e.bundle_id).collect();
    assert_eq!(used, ["sensor-b"], "{:?}", reasons(&c));
    assert!(reasons(&c)[0].contains("listed as sensor-z version 1"), "{:?}", reasons(&c));
    std::fs::write(catalog.catalog_dir.join("listing.json"), serde_json::to_vec(&forged).unwrap())
        .unwrap();
    let c = load(dir.path(), &catalog, None).await;
    assert_eq!(c.bundles.len(), 0);
    assert!(reasons(&c).iter().all(|r| r.contains("not in the trust store")), "{:?}", reasons(&c));
}

#[tokio::test]
async fn an_expired_listing_stops_the_catalog_unless_the_signed_grace_holds() {
    let now = Utc::now();
    let expired = now - Duration::days(5);
    let case = |grace: Option<u32>, last_online: Option<i64>| async move {
        let dir = tempfile::tempdir().unwrap();
        let mut builder = CatalogBuilder::new().catalog_key(random_key(), "catalog");
        if let Some(days) = grace {
            builder = builder.offline_grace_days(days);
        }
        let catalog = builder.write(&dir.path().join("release")).unwrap();
        catalog.bundle(&spec("sensor-a", A)).unwrap();
        catalog.write_listing(1, expired).unwrap();
        let last = last_online.map(|d| now - Duration::days(d));
        let c = load(dir.path(), &catalog, last).await;
        (c.bundles.first().map(|b| b.usable_until), reasons(&c))
    };
    let (used, why) = case(None, Some(10)).await;
    assert_eq!(used, None);
    assert!(why[0].starts_with("the catalog listing expired on "), "{why:?}");
    assert!(why[0].contains("; sync"), "{why:?}");
    // Signed grace of 30 days, last synced before the listing expired: usable, until the grace
    // ends.
    let (used, why) = case(Some(30), Some(10)).await;
    assert_eq!(used, Some(expired + Duration::days(30)), "{why:?}");
    // The last sync came after the expiry: no grace.
    let (used, why) = case(Some(30), Some(1)).await;
    assert_eq!(used, None);
    assert!(why[0].contains("already expired when last verified online"), "{why:?}");
}

#[tokio::test]
async fn an_expired_trust_store_stops_every_bundle_unless_the_signed_grace_holds() {
    let now = Utc::now();
    let expired = now - Duration::days(5);
    let case = |grace: Option<u32>, last_online: Option<i64>| async move {
        let dir = tempfile::tempdir().unwrap();
        let mut builder = CatalogBuilder::new().trust_expires(expired);
        if let Some(days) = grace {
            builder = builder.offline_grace_days(days);
        }
        let catalog = builder.write(&dir.path().join("release")).unwrap();
        catalog.bundle(&spec("sensor-a", A)).unwrap();
        let last = last_online.map(|d| now - Duration::days(d));
        let c = load(dir.path(), &catalog, last).await;
        (c.bundles.first().map(|b| b.usable_until), reasons(&c))
    };
    let (used, why) = case(None, Some(10)).await;
    assert_eq!(used, None);
    assert!(
        why[0].starts_with("the trust store expired on ")
            && why[0].contains("; sync to get its rotation"),
        "{why:?}"
    );
    let (used, why) = case(Some(30), Some(10)).await;
    assert_eq!(used, Some(expired + Duration::days(30)), "{why:?}");
    let (used, _) = case(Some(30), None).await;
    assert_eq!(used, None, "never synced: no grace to count from");
}
