//! Visits in the store and where event times come from.

use ed25519_dalek::SigningKey;
use fieldpatch_core::store::Store;
use fieldpatch_core::visitlog::{EventKind, NewEvent, TimeSource, VisitLog};

async fn setup() -> (tempfile::TempDir, Store, VisitLog) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).await.unwrap();
    let log = VisitLog::open(&store, SigningKey::generate(&mut rand::rng())).await.unwrap();
    (dir, store, log)
}

#[tokio::test]
async fn visits_are_listed_open_and_closed() {
    let (_d, store, log) = setup().await;
    let (v1, _) = log.open_visit("site-1", Some("wo-1")).await.unwrap();
    let (v2, _) = log.open_visit("site-2", None).await.unwrap();
    log.close_visit(v1, 3, 1).await.unwrap();
    let all = store.visits(false).await.unwrap();
    assert_eq!(all.iter().map(|v| v.visit_id).collect::<Vec<_>>(), vec![v2, v1]);
    assert_eq!(all[1].work_order.as_deref(), Some("wo-1"));
    assert!(all[1].closed_at.is_some());
    let open = store.visits(true).await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!((open[0].visit_id, open[0].site.as_str()), (v2, "site-2"));
    assert_eq!(open[0].log_id, log.log_id());
}

#[tokio::test]
async fn event_times_say_whether_the_clock_was_checked_against_the_server() {
    let (_d, store, log) = setup().await;
    assert_eq!(log.note("before sync").await.unwrap().body.time_source, TimeSource::SystemClock);
    store.record_clock_check(chrono::TimeDelta::seconds(3)).await.unwrap();
    assert_eq!(log.note("after sync").await.unwrap().body.time_source, TimeSource::ServerChecked);
    let device_timed = log
        .append(
            NewEvent::new(EventKind::HealthCheck { passed: true, detail: "uptime 3s".into() })
                .time_source(TimeSource::Device),
        )
        .await
        .unwrap();
    assert_eq!(device_timed.body.time_source, TimeSource::Device);
    // A sync that finds the clock far off withdraws the claim.
    store.record_clock_check(chrono::TimeDelta::hours(-3)).await.unwrap();
    assert_eq!(log.note("clock drifted").await.unwrap().body.time_source, TimeSource::SystemClock);
    assert!(store.verify_log(log.log_id()).await.unwrap().is_ok());
}
