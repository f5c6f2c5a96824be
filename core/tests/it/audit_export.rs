//! Exporting visits from the local store: the chain's anchor for a visit that does not start the
//! log, the stored server checkpoint when it covers the visit (checked against the pinned key),
//! none when it does not, and refusals that name what to do.

use ed25519_dalek::SigningKey;
use fieldpatch_core::export::{self, ExportError, Sources};
use fieldpatch_core::store::Store;
use fieldpatch_core::sync::wire::Checkpoint;
use fieldpatch_core::visitlog::{EventKind, NewEvent, VisitLog};

struct Setup {
    dir: tempfile::TempDir,
    store: Store,
    key: SigningKey,
    log: VisitLog,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).await.unwrap();
    let key = SigningKey::from_bytes(&[5; 32]);
    let log = VisitLog::open(&store, key.clone()).await.unwrap();
    Setup { dir, store, key, log }
}

/// A visit with one patched device; returns its id.
async fn visit(log: &VisitLog, site: &str) -> uuid::Uuid {
    let (v, _) = log.open_visit(site, None).await.unwrap();
    let confirmed =
        EventKind::Confirmed { version: Some("2.0.0".into()), image_sha256: "ab".repeat(32) };
    log.append(NewEvent::new(confirmed).visit(v).device("d1")).await.unwrap();
    log.close_visit(v, 1, 0).await.unwrap();
    v
}

#[tokio::test]
async fn a_later_visit_is_anchored_and_carries_the_checkpoint_that_covers_it() {
    let s = setup().await;
    let first = visit(&s.log, "site-1").await;
    let second = visit(&s.log, "site-2").await;
    s.log.note("after both visits").await.unwrap();
    let server = SigningKey::from_bytes(&[6; 32]);
    let pinned = hex::encode(server.verifying_key().as_bytes());
    let info = s.store.visit_log(s.log.log_id()).await.unwrap();

    // Synced up to the head (one event after the second visit).
    let cp =
        Checkpoint { log_id: s.log.log_id(), last_seq: info.head_seq, last_hash: info.head_hash }
            .sign(&server);
    s.store
        .set_log_server_checkpoint(s.log.log_id(), &serde_json::to_string(&cp).unwrap())
        .await
        .unwrap();
    let out = s.dir.path().join("second.tar");
    let done =
        export::export_visit(&s.store, &s.key, Some(&pinned), second, &Sources::default(), &out)
            .await
            .unwrap();
    assert_eq!(done.verified.checkpoint_server_key.as_deref(), Some(pinned.as_str()));
    assert_eq!(done.verified.events, 4, "visit_opened, confirmed, visit_closed, the note");
    let again = export::verify_file(&out, Some(&pinned)).unwrap();
    assert_eq!(again.visit_id, second);

    // A checkpoint signed by another server than the pinned one is not exported.
    let other = hex::encode(SigningKey::from_bytes(&[8; 32]).verifying_key().as_bytes());
    let err =
        export::export_visit(&s.store, &s.key, Some(&other), second, &Sources::default(), &out)
            .await
            .unwrap_err();
    assert_eq!(err.code(), "log_damaged", "{err}");

    // A checkpoint that stops before the visit does not cover it: exported without one.
    let first_info = s.store.visit_events(first).await.unwrap();
    let last_of_first = first_info.last().unwrap();
    let early = Checkpoint {
        log_id: s.log.log_id(),
        last_seq: last_of_first.body.seq,
        last_hash: last_of_first.hash(),
    }
    .sign(&server);
    s.store
        .set_log_server_checkpoint(s.log.log_id(), &serde_json::to_string(&early).unwrap())
        .await
        .unwrap();
    let done =
        export::export_visit(&s.store, &s.key, Some(&pinned), second, &Sources::default(), &out)
            .await
            .unwrap();
    assert_eq!(done.verified.checkpoint_server_key, None);
    assert_eq!(done.verified.events, 3);
    // And the first visit, which that checkpoint covers exactly, is anchored on log_started.
    let out_first = s.dir.path().join("first.tar");
    let done = export::export_visit(&s.store, &s.key, None, first, &Sources::default(), &out_first)
        .await
        .unwrap();
    assert_eq!(done.verified.checkpoint_server_key.as_deref(), Some(pinned.as_str()));
    assert_eq!(
        done.verified.events, 3,
        "visit_opened, confirmed, visit_closed (after log_started)"
    );
}

#[tokio::test]
async fn exports_are_refused_for_unknown_visits_and_other_keys_and_bad_files() {
    let s = setup().await;
    let v = visit(&s.log, "site-1").await;
    let out = s.dir.path().join("x.tar");
    let err =
        export::export_visit(&s.store, &s.key, None, uuid::Uuid::nil(), &Sources::default(), &out)
            .await
            .unwrap_err();
    assert!(matches!(err, ExportError::NoSuchVisit(_)), "{err}");
    let stranger = SigningKey::from_bytes(&[9; 32]);
    let err = export::export_visit(&s.store, &stranger, None, v, &Sources::default(), &out)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "export_key_mismatch", "{err}");
    assert!(!out.exists(), "nothing is written when the export fails");

    let junk = s.dir.path().join("junk.tar");
    std::fs::write(&junk, b"not an archive").unwrap();
    assert_eq!(export::verify_file(&junk, None).unwrap_err().code(), "audit_archive");
    let err = export::verify_file(&s.dir.path().join("absent.tar"), None).unwrap_err();
    assert_eq!(err.code(), "export_io", "{err}");
}
