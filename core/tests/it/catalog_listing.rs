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

#[tokio::test]
async fn a_bundle_listed_for_some_sites_is_planned_and_flashed_only_at_them() {
    use fieldpatch_core::plan::{DeviceAddress, Disposition, Step};
    use fieldpatch_core::session::ImageSource;
    let dir = tempfile::tempdir().unwrap();
    let catalog = CatalogBuilder::new()
        .catalog_key(random_key(), "catalog")
        .write(&dir.path().join("release"))
        .unwrap();
    catalog.bundle(&spec("sensor-a", A)).unwrap();
    let mut north_only = spec("sensor-b", B);
    north_only.installs = Version::new(3, 0, 0, 0);
    catalog.bundle(&north_only).unwrap();
    let mut doc = catalog.listing(1, Utc::now() + Duration::days(3)).unwrap().listing;
    for b in doc.bundles.iter_mut().filter(|b| b.bundle_id == "sensor-b") {
        b.sites = vec!["north".into()];
    }
    std::fs::write(
        catalog.catalog_dir.join("listing.json"),
        serde_json::to_vec(&doc.sign(&catalog.catalog_keys())).unwrap(),
    )
    .unwrap();

    let fp = Fieldpatch::open_in(
        &dir.path().join("laptop"),
        Arc::new(DriverConnector { usb: SystemUsb }),
    )
    .await
    .unwrap();
    let c = fp.load_catalog(&catalog.catalog_dir, &catalog.trust_path).await.unwrap();
    assert!(c.refused.is_empty(), "{:?}", reasons(&c));
    assert!(c.has_site_restrictions());
    let sites = |c: &Catalog| -> Vec<(String, Vec<String>)> {
        c.bundles.iter().map(|b| (b.bundle.manifest().bundle_id.clone(), b.sites.clone())).collect()
    };
    let want = vec![
        ("sensor-a".to_string(), Vec::<String>::new()),
        ("sensor-b".to_string(), vec!["north".to_string()]),
    ];
    assert_eq!(sites(&c), want);

    // The planner sees sensor-b only for a visit at the north plant.
    let mut device = fieldpatch_testkit::site::record(
        "d1",
        "Lab",
        "sensor",
        DeviceAddress::Udp { addr: "127.0.0.1:9".into() },
    );
    device.identity.firmware_version = Some(Version::new(1, 0, 0, 0));
    let target = |site: Option<&'static str>| {
        let (fp, c, device) = (&fp, &c, device.clone());
        async move {
            let plan = fp.plan_at_site(vec![device], c, site).await;
            match &plan.devices[0].disposition {
                Disposition::Patch { steps, .. } => steps.last().map(|s| s.bundle_id.clone()),
                other => panic!("not planned: {other:?}"),
            }
        }
    };
    assert_eq!(target(Some("north")).await.as_deref(), Some("sensor-b"));
    assert_eq!(target(Some("south")).await.as_deref(), Some("sensor-a"));
    assert_eq!(target(None).await.as_deref(), Some("sensor-a"));
    assert_eq!(
        fp.plan(vec![device.clone()], &c).await.devices[0]
            .steps_now()
            .last()
            .map(|s| &s.bundle_id[..]),
        Some("sensor-a"),
        "a plan without a site is a plan for a visit that names none"
    );

    // A plan made elsewhere that names sensor-b cannot take its image at another site: the
    // session's catalog refuses it with the reason.
    let step = Step {
        bundle_id: "sensor-b".into(),
        from: Version::new(1, 0, 0, 0),
        to: Version::new(3, 0, 0, 0),
        cvss: 7.0,
        rollback: false,
    };
    assert!(c.for_site(Some("north")).image(&device, &step).is_ok());
    for site in [Some("south"), None] {
        let at = c.for_site(site);
        let refused: Vec<_> = at.refused.iter().filter_map(|r| r.bundle_id.as_deref()).collect();
        assert_eq!(refused, ["sensor-b"]);
        let err = at.image(&device, &step).unwrap_err();
        assert!(err.contains("published to sites north only"), "{err}");
        assert!(at.image(&device, &Step { bundle_id: "sensor-a".into(), ..step.clone() }).is_ok());
    }
}
