//! Offline grace comes from the trust store's signed policy and the last sync recorded in the
//! store, never from arguments: an expired bundle is usable only when the root keys allow a grace
//! period and the laptop last synced before the bundle expired.

use chrono::{Duration, Utc};
use fieldpatch_core::Fieldpatch;
use fieldpatch_core::bundle::PayloadFormat;
use fieldpatch_core::flash::connect::{DriverConnector, SystemUsb};
use fieldpatch_core::model::Version;
use fieldpatch_testkit::catalog::{BundleSpec, CatalogBuilder};
use std::sync::Arc;

async fn usable(
    grace_days: Option<u32>,
    last_online_days_ago: Option<i64>,
) -> (usize, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let mut builder =
        CatalogBuilder::new().valid(now - Duration::days(40), now - Duration::days(5));
    if let Some(days) = grace_days {
        builder = builder.offline_grace_days(days);
    }
    let catalog = builder.write(&dir.path().join("release")).unwrap();
    let payload = [7u8; 512];
    catalog
        .bundle(&BundleSpec {
            id: "sensor-2.0.0",
            model: "sensor",
            applies: (Version::new(1, 0, 0, 0), Version::new(1, 9, 0, 0)),
            installs: Version::new(2, 0, 0, 0),
            cvss: "7.0",
            format: PayloadFormat::Raw,
            payload: &payload,
        })
        .unwrap();
    let fp = Fieldpatch::open_in(
        &dir.path().join("laptop"),
        Arc::new(DriverConnector { usb: SystemUsb }),
    )
    .await
    .unwrap();
    if let Some(days) = last_online_days_ago {
        fieldpatch_core::clock::note_online(fp.store(), now - Duration::days(days)).await.unwrap();
    }
    let loaded = fp.load_catalog(&catalog.catalog_dir, &catalog.trust_path).await.unwrap();
    let refusals = loaded.refused.iter().map(|r| r.reason.clone()).collect();
    (loaded.entries().len(), refusals)
}

#[tokio::test]
async fn an_expired_bundle_is_usable_only_under_the_signed_grace_after_a_sync_before_expiry() {
    // Grace signed by the root, last online 10 days ago (before the expiry 5 days ago).
    let (n, why) = usable(Some(30), Some(10)).await;
    assert_eq!(n, 1, "{why:?}");
    // No grace in the trust store: expired, whatever the last sync.
    let (n, why) = usable(None, Some(10)).await;
    assert_eq!(n, 0);
    assert!(why.iter().any(|w| w.contains("expired")), "{why:?}");
    // Grace, but the laptop never synced: nothing to count from.
    let (n, _) = usable(Some(30), None).await;
    assert_eq!(n, 0);
    // Grace, but the last sync was after the expiry: it was already expired then.
    let (n, why) = usable(Some(30), Some(1)).await;
    assert_eq!(n, 0);
    assert!(why.iter().any(|w| w.contains("already expired")), "{why:?}");
    // A grace period that has run out (3 days after an expiry 5 days ago).
    let (n, why) = usable(Some(3), Some(10)).await;
    assert_eq!(n, 0);
    assert!(why.iter().any(|w| w.contains("grace period ended")), "{why:?}");
}
