//! Bulk inventory writes (imports), on SQLite and PostgreSQL: one transaction, many rows per
//! statement, the last entry of a repeated id winning, all or nothing, and what visit logs taught
//! the inventory kept.

use crate::both_backends;
use crate::common::{AnyStore, Backend, TestServer, device};
use fieldpatch_proto::wire::{Device, Site};
use fieldpatch_server::{Store, StoreError};

async fn upsert(
    server: &TestServer,
    sites: &[Site],
    devices: &[Device],
) -> Result<u64, StoreError> {
    match &server.app {
        AnyStore::Sqlite(a) => {
            a.store.upsert_sites(sites).await?;
            a.store.upsert_devices(devices).await
        }
        AnyStore::Postgres(a) => {
            a.store.upsert_sites(sites).await?;
            a.store.upsert_devices(devices).await
        }
    }
}

async fn all(server: &TestServer) -> Vec<Device> {
    match &server.app {
        AnyStore::Sqlite(a) => a.store.devices(None).await.unwrap(),
        AnyStore::Postgres(a) => a.store.devices(None).await.unwrap(),
    }
}

both_backends!(a_bulk_import_is_one_transaction_and_the_last_entry_wins);
async fn a_bulk_import_is_one_transaction_and_the_last_entry_wins(backend: Backend) {
    let server = TestServer::start(backend).await;
    let sites: Vec<Site> = (0..3)
        .map(|i| Site { id: format!("s{i}"), name: format!("Site {i}"), address: None })
        .collect();
    // More devices than one statement carries, and d7 twice.
    let mut devices: Vec<Device> =
        (0..1200).map(|i| device(&format!("d{i}"), &format!("s{}", i % 3))).collect();
    let mut again = device("d7", "s2");
    again.model = Some("gw-3".into());
    devices.push(again);
    assert_eq!(upsert(&server, &sites, &devices).await.unwrap(), 1200);
    let stored = all(&server).await;
    assert_eq!(stored.len(), 1200);
    let d7 = stored.iter().find(|d| d.id == "d7").unwrap();
    assert_eq!((d7.site_id.as_str(), d7.model.as_deref()), ("s2", Some("gw-3")));

    // A device naming a missing site: refused, naming it, and nothing of the batch is written.
    let mut bad: Vec<Device> = (0..10).map(|i| device(&format!("new{i}"), "s0")).collect();
    bad.push(device("lost", "s404"));
    let e = upsert(&server, &[], &bad).await.unwrap_err().to_string();
    assert!(e.contains("\"lost\"") && e.contains("\"s404\""), "{e}");
    assert_eq!(all(&server).await.len(), 1200, "a refused import wrote rows");

    // Re-importing updates descriptions but keeps the firmware the inventory recorded.
    let mut changed = device("d1", "s1");
    changed.current_firmware = Some("0.1.0".into());
    changed.approved_version = Some("2.0.0".into());
    upsert(&server, &[], &[changed]).await.unwrap();
    let d1 = all(&server).await.into_iter().find(|d| d.id == "d1").unwrap();
    assert_eq!(d1.current_firmware.as_deref(), Some("1.3.0"));
    assert_eq!(d1.approved_version.as_deref(), Some("2.0.0"));
}
