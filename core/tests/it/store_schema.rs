//! The local store on a real SQLite file: migrations, pragmas, and the typed tables.

use fieldpatch_core::model::DeviceIdentity;
use fieldpatch_core::store::{
    BundleRecord, BundleVerdict, InventoryDevice, STORE_FILE, SiteRecord, Store, StoreError,
    WorkOrderRecord,
};
use serde_json::json;
use sqlx::Connection;

#[tokio::test]
async fn opening_creates_the_file_in_wal_mode_and_reopening_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b");
    let store = Store::open_in(&nested).await.unwrap();
    assert_eq!(store.path(), nested.join(STORE_FILE));
    store.set_meta("k", "v1").await.unwrap();
    store.close().await;
    let store = Store::open_in(&nested).await.unwrap();
    assert_eq!(store.meta("k").await.unwrap().as_deref(), Some("v1"));
    store.set_meta("k", "v2").await.unwrap();
    assert_eq!(store.meta("k").await.unwrap().as_deref(), Some("v2"));

    let mut raw = sqlx::SqliteConnection::connect_with(
        &sqlx::sqlite::SqliteConnectOptions::new().filename(store.path()),
    )
    .await
    .unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut raw).await.unwrap();
    assert_eq!(mode, "wal");
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut raw)
        .await
        .unwrap();
    assert!(applied >= 1);
}

#[tokio::test]
async fn a_file_that_is_not_a_store_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STORE_FILE);
    std::fs::write(&path, b"this is not sqlite, it is a text file that is long enough to matter")
        .unwrap();
    let err = Store::open(&path).await.unwrap_err();
    assert!(matches!(err, StoreError::Open { .. } | StoreError::Migrate { .. }), "{err}");
    assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
}

#[tokio::test]
async fn sites_devices_and_identities_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).await.unwrap();
    let site = SiteRecord { id: "s1".into(), name: "Plant 1".into(), address: None };
    store.upsert_site(&site).await.unwrap();
    store.upsert_site(&SiteRecord { name: "Plant One".into(), ..site.clone() }).await.unwrap();
    assert_eq!(store.sites().await.unwrap()[0].name, "Plant One");
    let dev = InventoryDevice {
        id: "d1".into(),
        site_id: Some("s1".into()),
        vendor: Some("Acme".into()),
        model: Some("gw-100".into()),
        hardware_revision: Some("B".into()),
        serial_number: Some("SN1".into()),
        firmware_version: Some("1.2.0".into()),
    };
    store.upsert_device(&dev).await.unwrap();
    store
        .upsert_device(&InventoryDevice { id: "d2".into(), site_id: None, ..dev.clone() })
        .await
        .unwrap();
    assert_eq!(store.devices(Some("s1")).await.unwrap(), vec![dev.clone()]);
    assert_eq!(store.devices(None).await.unwrap().len(), 2);

    let identity = DeviceIdentity {
        vendor: Some("Acme".into()),
        firmware_version: Some("1.2.3".parse().unwrap()),
        image_hash: Some("ab".repeat(32)),
        ..Default::default()
    };
    store.record_identity(Some("d1"), "serial", "/dev/pts/3", &identity).await.unwrap();
    assert_eq!(store.latest_identity("d1").await.unwrap(), Some(identity));
    assert_eq!(store.latest_identity("d2").await.unwrap(), None);
}

#[tokio::test]
async fn foreign_keys_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).await.unwrap();
    let wo = WorkOrderRecord {
        id: "wo1".into(),
        site_id: "no-such-site".into(),
        title: "t".into(),
        status: "open".into(),
        device_ids: vec![],
        detail: json!({}),
    };
    let err = store.put_work_order(&wo).await.unwrap_err();
    assert!(err.to_string().to_lowercase().contains("foreign key"), "{err}");
    assert!(store.work_orders().await.unwrap().is_empty(), "the transaction rolled back");
}

#[tokio::test]
async fn work_orders_catalog_and_session_state_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).await.unwrap();
    store
        .upsert_site(&SiteRecord { id: "s1".into(), name: "n".into(), address: None })
        .await
        .unwrap();
    for id in ["d1", "d2"] {
        store
            .upsert_device(&InventoryDevice {
                id: id.into(),
                site_id: Some("s1".into()),
                vendor: None,
                model: None,
                hardware_revision: None,
                serial_number: None,
                firmware_version: None,
            })
            .await
            .unwrap();
    }
    let mut wo = WorkOrderRecord {
        id: "wo1".into(),
        site_id: "s1".into(),
        title: "Patch the gateways".into(),
        status: "open".into(),
        device_ids: vec!["d1".into(), "d2".into()],
        detail: json!({"priority": "high"}),
    };
    store.put_work_order(&wo).await.unwrap();
    assert_eq!(store.work_orders().await.unwrap(), vec![wo.clone()]);
    wo.device_ids = vec!["d2".into()];
    store.put_work_order(&wo).await.unwrap();
    assert_eq!(store.work_orders().await.unwrap(), vec![wo]);

    let b = BundleRecord {
        bundle_id: "acme-gw".into(),
        version: "1.3.0".into(),
        manifest: json!({"target": {"model": "gw-100"}}),
        sha256: "cd".repeat(32),
        verdict: BundleVerdict::Verified,
        verdict_detail: "2 of 3 release approvers".into(),
    };
    store.put_bundle(&b).await.unwrap();
    let refused = BundleRecord {
        version: "1.4.0".into(),
        verdict: BundleVerdict::Refused,
        verdict_detail: "expired".into(),
        ..b.clone()
    };
    store.put_bundle(&refused).await.unwrap();
    assert_eq!(store.bundles().await.unwrap(), vec![b, refused]);

    store.put_session_state("sess-1", "batch", &json!({"wave": 1})).await.unwrap();
    store.put_session_state("sess-1", "batch", &json!({"wave": 2})).await.unwrap();
    store.put_session_state("sess-2", "other", &json!([])).await.unwrap();
    assert_eq!(store.session_state("sess-1").await.unwrap().unwrap().state, json!({"wave": 2}));
    assert_eq!(store.session_states(Some("batch")).await.unwrap().len(), 1);
    assert_eq!(store.session_states(None).await.unwrap().len(), 2);
    assert!(store.delete_session_state("sess-1").await.unwrap());
    assert!(!store.delete_session_state("sess-1").await.unwrap());
    assert!(store.session_state("sess-1").await.unwrap().is_none());
}
