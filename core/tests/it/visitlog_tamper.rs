//! The stored visit log: appends, the sync view, and verification against direct edits of the
//! SQLite file (edited, removed, reordered and inserted events are each named).

use ed25519_dalek::SigningKey;
use fieldpatch_core::store::Store;
use fieldpatch_core::visitlog::{ChainError, EventKind, LogError, LogProblem, NewEvent, VisitLog};
use fieldpatch_testkit::chain::Chain;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};
use uuid::Uuid;

fn key() -> SigningKey {
    SigningKey::generate(&mut rand::rng())
}

/// A store with one log of `n` events: `log_started` (seq 1), then notes 2 to `n` ("note i" at
/// seq i). Returns the temp dir too so it outlives the test.
async fn log_with(n: u64) -> (tempfile::TempDir, Store, VisitLog, SigningKey) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).await.unwrap();
    let k = key();
    let log = VisitLog::open(&store, k.clone()).await.unwrap();
    for i in 2..=n {
        log.append(NewEvent::new(EventKind::Note { text: format!("note {i}") }).device("dev-7"))
            .await
            .unwrap();
    }
    (dir, store, log, k)
}

/// A separate raw connection to the same file: what an attacker with file access would use.
async fn raw(store: &Store) -> SqliteConnection {
    SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(store.path()))
        .await
        .unwrap()
}

async fn problem(store: &Store, log: &VisitLog) -> LogProblem {
    let v = store.verify_log(log.log_id()).await.unwrap();
    v.problem.clone().unwrap_or_else(|| panic!("tampering went unnoticed: {v:?}"))
}

#[tokio::test]
async fn an_untouched_log_verifies_and_reads_back_in_order() {
    let (_d, store, log, _) = log_with(5).await;
    let v = store.verify_log(log.log_id()).await.unwrap();
    assert!(v.is_ok(), "{v:?}");
    assert_eq!(v.verified, 5);
    let events = store.log_events(log.log_id(), 0, 100).await.unwrap();
    assert_eq!(events.iter().map(|e| e.body.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    assert_eq!(events[0].body.prev_hash, fieldpatch_core::visitlog::GENESIS_HASH);
    assert_eq!(events[0].body.kind.tag(), "log_started");
    assert_eq!(events[3].body.prev_hash, events[2].hash());
    fieldpatch_core::visitlog::verify_chain(&events, None).unwrap();
    assert!(events.iter().all(|e| e.body.id.get_version_num() == 7));
    let info = store.visit_log(log.log_id()).await.unwrap();
    assert_eq!((info.head_seq, info.head_hash.as_str()), (5, events[4].hash().as_str()));
    assert_eq!(info.signer, log.signer());
}

#[tokio::test]
async fn reopening_with_the_same_key_continues_the_same_log() {
    let (_d, store, log, k) = log_with(2).await;
    let again = VisitLog::open(&store, k).await.unwrap();
    assert_eq!(again.log_id(), log.log_id());
    assert_eq!(again.note("third").await.unwrap().body.seq, 3);
    let other = VisitLog::open(&store, key()).await.unwrap();
    assert_ne!(other.log_id(), log.log_id(), "a different technician key gets its own log");
    // Its first note follows its own log_started.
    assert_eq!(other.note("first").await.unwrap().body.seq, 2);
    assert_eq!(store.visit_logs().await.unwrap().len(), 2);
    for v in store.verify_all_logs().await.unwrap() {
        assert!(v.is_ok(), "{v:?}");
    }
}

#[tokio::test]
async fn visits_open_and_close_with_their_events() {
    let (_d, store, log, _) = log_with(0).await;
    let (visit, opened) = log.open_visit("site-9", Some("wo-1")).await.unwrap();
    assert_eq!(opened.body.visit_id, Some(visit));
    log.append(
        NewEvent::new(EventKind::HealthCheck { passed: true, detail: "ok".into() })
            .visit(visit)
            .device("dev-1"),
    )
    .await
    .unwrap();
    let closed = log.close_visit(visit, 1, 0).await.unwrap();
    assert_eq!((opened.body.seq, closed.body.seq), (2, 4), "after the log's log_started");
    let err = log.close_visit(visit, 1, 0).await.unwrap_err();
    assert!(matches!(err, LogError::NoOpenVisit(v) if v == visit), "{err}");
    let kinds: Vec<_> =
        store.visit_events(visit).await.unwrap().iter().map(|e| e.body.kind.tag()).collect();
    assert_eq!(kinds, ["visit_opened", "health_check", "visit_closed"]);
    assert!(store.verify_log(log.log_id()).await.unwrap().is_ok());
}

#[tokio::test]
async fn concurrent_appenders_never_share_a_seq() {
    let (_d, store, log, k) = log_with(0).await;
    let second = Store::open(store.path()).await.unwrap();
    let log2 = VisitLog::open(&second, k).await.unwrap();
    let a = async {
        for i in 0..40 {
            log.note(format!("a{i}")).await.unwrap();
        }
    };
    let b = async {
        for i in 0..40 {
            log2.note(format!("b{i}")).await.unwrap();
        }
    };
    tokio::join!(a, b);
    let v = store.verify_log(log.log_id()).await.unwrap();
    assert!(v.is_ok(), "{v:?}");
    assert_eq!(v.verified, 1 + 80, "log_started and the notes");
}

#[tokio::test]
async fn sync_view_returns_unpushed_events_and_remembers_progress() {
    let (_d, store, log, _) = log_with(5).await;
    let id = log.log_id();
    let (prev, events) = store.log_events_to_push(id, 3).await.unwrap();
    assert_eq!(prev, None);
    assert_eq!(events.iter().map(|e| e.body.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    let state = store.mark_log_pushed(id, 3).await.unwrap();
    assert_eq!(state.last_pushed_seq, 3);
    let (prev, rest) = store.log_events_to_push(id, 100).await.unwrap();
    assert_eq!(prev, Some((3, events[2].hash())));
    assert_eq!(rest.iter().map(|e| e.body.seq).collect::<Vec<_>>(), vec![4, 5]);
    fieldpatch_core::visitlog::verify_chain(&rest, prev).unwrap();
    // Never backwards, never beyond the head.
    assert_eq!(store.mark_log_pushed(id, 1).await.unwrap().last_pushed_seq, 3);
    let err = store.mark_log_pushed(id, 6).await.unwrap_err();
    assert!(matches!(err, LogError::PushBeyondHead { requested: 6, head: 5, .. }), "{err}");
    store.set_log_server_checkpoint(id, "ckpt-42").await.unwrap();
    let s = store.log_sync_state(id).await.unwrap();
    assert_eq!((s.last_pushed_seq, s.server_checkpoint.as_deref()), (3, Some("ckpt-42")));
    // Survives reopening the store.
    let again = Store::open(store.path()).await.unwrap();
    assert_eq!(again.log_sync_state(id).await.unwrap(), s);
}

#[tokio::test]
async fn an_edited_event_body_is_named() {
    let (_d, store, log, _) = log_with(5).await;
    let mut db = raw(&store).await;
    sqlx::query("UPDATE events SET body = replace(body, 'note 3', 'note X') WHERE seq = 3")
        .execute(&mut db)
        .await
        .unwrap();
    let p = problem(&store, &log).await;
    assert!(matches!(p, LogProblem::Chain(ChainError::BadSignature { seq: 3, .. })), "{p}");
    assert_eq!(p.seq(), Some(3));
    assert!(p.to_string().contains("seq 3"), "{p}");
    assert_eq!(store.verify_log(log.log_id()).await.unwrap().verified, 2);
}

#[tokio::test]
async fn an_edited_index_column_is_named() {
    let (_d, store, log, _) = log_with(5).await;
    let mut db = raw(&store).await;
    sqlx::query("UPDATE events SET device = 'dev-other' WHERE seq = 4")
        .execute(&mut db)
        .await
        .unwrap();
    let p = problem(&store, &log).await;
    assert!(matches!(p, LogProblem::ColumnMismatch { seq: 4, field: "device", .. }), "{p}");
}

#[tokio::test]
async fn a_reformatted_body_is_named_even_when_its_content_is_unchanged() {
    let (_d, store, log, _) = log_with(3).await;
    let mut db = raw(&store).await;
    sqlx::query(
        "UPDATE events SET body = replace(body, '\"seq\":2,', '\"seq\": 2,') WHERE seq = 2",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let p = problem(&store, &log).await;
    assert!(matches!(p, LogProblem::ColumnMismatch { seq: 2, .. }), "{p}");
}

#[tokio::test]
async fn garbage_in_a_body_is_named_not_a_panic() {
    let (_d, store, log, _) = log_with(3).await;
    let mut db = raw(&store).await;
    sqlx::query("UPDATE events SET body = '{not json' WHERE seq = 2")
        .execute(&mut db)
        .await
        .unwrap();
    let p = problem(&store, &log).await;
    assert!(matches!(p, LogProblem::Unreadable { seq: 2, .. }), "{p}");
}

#[tokio::test]
async fn a_removed_event_is_named() {
    let (_d, store, log, _) = log_with(5).await;
    let mut db = raw(&store).await;
    sqlx::query("DELETE FROM events WHERE seq = 2").execute(&mut db).await.unwrap();
    let p = problem(&store, &log).await;
    assert!(
        matches!(p, LogProblem::Chain(ChainError::Sequence { seq: 3, expected: 2, .. })),
        "{p}"
    );
}

#[tokio::test]
async fn removing_the_first_event_is_named() {
    let (_d, store, log, _) = log_with(3).await;
    let mut db = raw(&store).await;
    sqlx::query("DELETE FROM events WHERE seq = 1").execute(&mut db).await.unwrap();
    let p = problem(&store, &log).await;
    assert_eq!(p.seq(), Some(2), "{p}");
}

#[tokio::test]
async fn removing_pushed_events_from_the_end_is_named() {
    let (_d, store, log, _) = log_with(5).await;
    store.mark_log_pushed(log.log_id(), 5).await.unwrap();
    let mut db = raw(&store).await;
    sqlx::query("DELETE FROM events WHERE seq >= 4").execute(&mut db).await.unwrap();
    let p = problem(&store, &log).await;
    assert!(matches!(p, LogProblem::Truncated { head_seq: 3, pushed_seq: 5 }), "{p}");
}

#[tokio::test]
async fn reordered_events_are_named() {
    let (_d, store, log, _) = log_with(5).await;
    let mut db = raw(&store).await;
    // Swap the rows at seq 2 and 3 (through a free seq, as UNIQUE (log_id, seq) demands).
    for q in [
        "UPDATE events SET seq = 1000 WHERE seq = 2",
        "UPDATE events SET seq = 2 WHERE seq = 3",
        "UPDATE events SET seq = 3 WHERE seq = 1000",
    ] {
        sqlx::query(q).execute(&mut db).await.unwrap();
    }
    let p = problem(&store, &log).await;
    assert!(
        matches!(p, LogProblem::Chain(ChainError::Sequence { seq: 3, expected: 2, .. })),
        "{p}"
    );
}

#[tokio::test]
async fn reordering_whole_rows_including_their_seq_is_named() {
    let (_d, store, log, _) = log_with(5).await;
    let mut db = raw(&store).await;
    // Move event 2's content to the end as if it happened last: rewrite its seq everywhere.
    sqlx::query(
        "UPDATE events SET seq = 6, body = replace(body, '\"seq\":2,', '\"seq\":6,') WHERE seq = 2",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let p = problem(&store, &log).await;
    assert!(
        matches!(p, LogProblem::Chain(ChainError::Sequence { seq: 3, expected: 2, .. })),
        "{p}"
    );
}

/// Insert a forged event (correct seq and link, signed by `by`) at `at`, renumbering later rows.
async fn insert_forged(store: &Store, log: &VisitLog, at: u64, by: &SigningKey) -> Uuid {
    let events = store.log_events(log.log_id(), 0, 1000).await.unwrap();
    let prev = &events[(at - 2) as usize];
    let forged = Chain::new(by)
        .log_id(log.log_id())
        .seq(at)
        .prev_hash(prev.hash())
        .at(prev.body.time, chrono::Duration::zero())
        .time_source(prev.body.time_source)
        .event(
            Some("dev-7"),
            EventKind::Confirmed { version: Some("9.9.9".into()), image_sha256: "00".repeat(32) },
        );
    let mut db = raw(store).await;
    sqlx::query("UPDATE events SET seq = seq + 1000 WHERE seq >= ?")
        .bind(at as i64)
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("UPDATE events SET seq = seq - 999 WHERE seq > 1000")
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO events (id, log_id, seq, hash, prev_hash, kind, visit_id, device, time, body,
           signature) VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?)",
    )
    .bind(forged.body.id.to_string())
    .bind(log.log_id().to_string())
    .bind(at as i64)
    .bind(forged.hash())
    .bind(&forged.body.prev_hash)
    .bind(forged.body.kind.tag())
    .bind(&forged.body.device)
    .bind(forged.body.time.to_rfc3339())
    .bind(String::from_utf8(forged.body.canonical_bytes()).unwrap())
    .bind(&forged.signature)
    .execute(&mut db)
    .await
    .unwrap();
    forged.body.id
}

#[tokio::test]
async fn an_event_inserted_with_a_foreign_key_is_named() {
    let (_d, store, log, _) = log_with(5).await;
    let forged = insert_forged(&store, &log, 3, &key()).await;
    let p = problem(&store, &log).await;
    assert!(matches!(&p, LogProblem::ForeignSigner { seq: 3, id, .. } if *id == forged), "{p}");
}

#[tokio::test]
async fn an_event_inserted_with_the_technician_key_is_named_at_the_next_event() {
    // Even a forger holding the key cannot splice into the middle: the next event's link breaks.
    let (_d, store, log, k) = log_with(5).await;
    insert_forged(&store, &log, 3, &k).await;
    let p = problem(&store, &log).await;
    assert!(
        matches!(p, LogProblem::Chain(ChainError::Sequence { seq: 3, expected: 4, .. })),
        "{p}"
    );
}

#[tokio::test]
async fn appending_after_reopening_the_file_continues_the_chain() {
    let (d, store, log, k) = log_with(3).await;
    let id = log.log_id();
    drop(log);
    store.close().await;
    let store = Store::open_in(d.path()).await.unwrap();
    let log = VisitLog::open(&store, k).await.unwrap();
    assert_eq!(log.log_id(), id);
    assert_eq!(log.note("after reopen").await.unwrap().body.seq, 4);
    assert!(store.verify_log(id).await.unwrap().is_ok());
}
