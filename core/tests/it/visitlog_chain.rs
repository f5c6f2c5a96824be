//! Chaining a technician's logs: every log begins with `log_started`, which names the head the
//! opener gave (from the keyring record of the last push) or nothing; the record lives in the
//! real Secret Service, one per data directory, and survives the data directory.

use ed25519_dalek::SigningKey;
use fieldpatch_core::credentials::{BackendChoice, Credentials, Secret};
use fieldpatch_core::store::Store;
use fieldpatch_core::sync::Checkpoint;
use fieldpatch_core::visitlog::continuity::{self, LogStart, PushedHead};
use fieldpatch_core::visitlog::event::LogHeadRef;
use fieldpatch_core::visitlog::{EventKind, VisitLog};
use uuid::Uuid;

fn key() -> SigningKey {
    SigningKey::generate(&mut rand::rng())
}

fn started(kind: &EventKind) -> (Option<LogHeadRef>, String) {
    match kind {
        EventKind::LogStarted { previous, why } => (previous.clone(), why.clone()),
        other => panic!("the first event is {}, not log_started", other.tag()),
    }
}

#[tokio::test]
async fn the_first_append_writes_log_started_once_in_the_same_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).await.unwrap();
    let k = key();
    let log = VisitLog::open(&store, k.clone()).await.unwrap();
    assert!(!log.is_started().await.unwrap());
    let note = log.note("first words").await.unwrap();
    assert_eq!(note.body.seq, 2);
    assert!(log.is_started().await.unwrap());
    let events = store.log_events(log.log_id(), 0, 10).await.unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(started(&events[0].body.kind), (None, continuity::WHY_NOTHING_KNOWN.to_string()));
    assert_eq!(events[1].body.prev_hash, events[0].hash());
    // Reopened with a claim, a started log keeps the one it made: log_started is written once.
    let claim = LogHeadRef { log_id: Uuid::now_v7(), seq: 3, hash: "ab".repeat(32) };
    let again = VisitLog::open(&store, k)
        .await
        .unwrap()
        .starting_from(LogStart { previous: Some(claim), why: continuity::WHY_KEYRING.into() });
    assert_eq!(again.log_id(), log.log_id());
    again.note("second").await.unwrap();
    let events = store.log_events(log.log_id(), 0, 10).await.unwrap();
    let kinds: Vec<_> = events.iter().map(|e| e.body.kind.tag()).collect();
    assert_eq!(kinds, ["log_started", "note", "note"]);
    assert_eq!(started(&events[0].body.kind).0, None);
    assert!(store.verify_log(log.log_id()).await.unwrap().is_ok());
}

#[tokio::test]
async fn a_log_told_where_it_starts_names_that_head_in_its_first_event() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).await.unwrap();
    let head = LogHeadRef { log_id: Uuid::now_v7(), seq: 12, hash: "ab".repeat(32) };
    let start = LogStart { previous: Some(head.clone()), why: continuity::WHY_KEYRING.into() };
    let log = VisitLog::open(&store, key()).await.unwrap().starting_from(start);
    let (visit, opened) = log.open_visit("site-1", None).await.unwrap();
    assert_eq!((opened.body.seq, opened.body.visit_id), (2, Some(visit)));
    let first = &store.log_events(log.log_id(), 0, 1).await.unwrap()[0];
    assert_eq!(started(&first.body.kind), (Some(head), "keyring".to_string()));
    assert_eq!(first.body.visit_id, None, "log_started belongs to no visit");
    assert!(store.visit_events(visit).await.unwrap().iter().all(|e| e.body.seq != 1));
}

async fn keyring(dir: &std::path::Path) -> (Store, Credentials) {
    assert!(
        std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some(),
        "this test needs the real Secret Service: run it through scripts/test"
    );
    let store = Store::open_in(dir).await.unwrap();
    let service = format!("fieldpatch-test-{}", Uuid::new_v4().simple());
    let creds = Credentials::open_with(&store, BackendChoice::SecretService, &service)
        .await
        .unwrap_or_else(|e| panic!("the Secret Service must be usable here: {e}"));
    (store, creds)
}

#[tokio::test]
async fn the_pushed_head_record_outlives_the_data_directory_and_is_per_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let demo = data.join("demo");
    std::fs::create_dir_all(&demo).unwrap();
    let (store, creds) = keyring(&data).await;
    let k = key();
    let signer = hex::encode(k.verifying_key().as_bytes());
    let log = VisitLog::open(&store, k.clone()).await.unwrap();
    let last = log.note("pushed").await.unwrap();

    // Nothing pushed yet: a new log would name nothing.
    assert_eq!(
        continuity::start_for(&creds, &data, &signer).await.unwrap(),
        LogStart::nothing_known()
    );
    let cp = Checkpoint { log_id: log.log_id(), last_seq: last.body.seq, last_hash: last.hash() };
    assert!(continuity::remember_pushed_head(&store, &creds, &data, &cp).await.unwrap());
    let expected = LogHeadRef { log_id: log.log_id(), seq: 2, hash: last.hash() };
    let start = continuity::start_for(&creds, &data, &signer).await.unwrap();
    assert_eq!(start, LogStart { previous: Some(expected.clone()), why: "keyring".into() });
    // Another data directory (the demo's) has its own record.
    assert_eq!(
        continuity::start_for(&creds, &demo, &signer).await.unwrap(),
        LogStart::nothing_known()
    );
    // Another technician key does not continue this key's log.
    let stranger = hex::encode(key().verifying_key().as_bytes());
    assert_eq!(
        continuity::start_for(&creds, &data, &stranger).await.unwrap(),
        LogStart::nothing_known()
    );
    // A log this store does not hold is not remembered.
    let foreign = Checkpoint { log_id: Uuid::now_v7(), last_seq: 3, last_hash: "cd".repeat(32) };
    assert!(!continuity::remember_pushed_head(&store, &creds, &data, &foreign).await.unwrap());

    // The data directory is wiped; the keyring stays. The new store's log names the pushed head.
    store.close().await;
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    let store = Store::open_in(&data).await.unwrap();
    let creds = Credentials::open_with(&store, BackendChoice::SecretService, creds.service())
        .await
        .unwrap();
    let start = continuity::start_for(&creds, &data, &signer).await.unwrap();
    let log = VisitLog::open(&store, k).await.unwrap().starting_from(start);
    log.note("after the wipe").await.unwrap();
    let first = &store.log_events(log.log_id(), 0, 1).await.unwrap()[0];
    assert_eq!(started(&first.body.kind), (Some(expected), "keyring".to_string()));

    // A record that cannot be read names nothing, and says so.
    let name = continuity::record_name(&data);
    creds.set(&name, &Secret::new("not a record")).await.unwrap();
    let start = continuity::start_for(&creds, &data, &signer).await.unwrap();
    assert_eq!((start.previous, start.why.as_str()), (None, continuity::WHY_RECORD_UNREADABLE));
    let record: PushedHead = serde_json::from_str(
        &serde_json::json!({"signer": signer, "log_id": Uuid::nil(), "seq": 1, "hash": "00"})
            .to_string(),
    )
    .unwrap();
    assert_eq!(record.head.seq, 1);
    creds.delete(&name).await.unwrap();
}
