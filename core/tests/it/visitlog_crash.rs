//! Crash safety: a process appending to the visit log is SIGKILLed at random moments, many times.
//! After every kill the log verifies, has no half-written event and no duplicate seq, and the next
//! appender continues the chain.
//!
//! The appending child is this test binary itself, re-run with `--exact <this
//! module>::crash_child_appender --ignored` and told what to do through environment variables.

use ed25519_dalek::SigningKey;
use fieldpatch_core::store::Store;
use fieldpatch_core::visitlog::{EventKind, NewEvent, VisitLog};
use rand::RngExt;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const CHILD_DB: &str = "FIELDPATCH_CRASH_CHILD_DB";
const CHILD_KEY: &str = "FIELDPATCH_CRASH_CHILD_KEY";
const ITERATIONS: usize = 30;

/// The child's test name as the harness knows it: its module path without the crate name
/// (`visitlog_crash::crash_child_appender` in the merged test binary).
fn child_test_name() -> String {
    match module_path!().split_once("::") {
        Some((_crate, module)) => format!("{module}::crash_child_appender"),
        None => "crash_child_appender".to_string(),
    }
}

/// The child: append events as fast as possible until killed.
#[tokio::test]
#[ignore = "run by crash_at_random_moments_never_leaves_a_half_written_event"]
async fn crash_child_appender() {
    let db =
        std::env::var(CHILD_DB).expect("started by the crash test with FIELDPATCH_CRASH_CHILD_DB");
    let seed: [u8; 32] =
        hex::decode(std::env::var(CHILD_KEY).unwrap()).unwrap().try_into().unwrap();
    let store = Store::open(std::path::Path::new(&db)).await.unwrap();
    let log = VisitLog::open(&store, SigningKey::from_bytes(&seed)).await.unwrap();
    println!("appending");
    let mut i = 0u64;
    loop {
        // A mix of sizes so kills land inside larger page writes too.
        let text = "x".repeat((i as usize * 37) % 3000);
        log.append(
            NewEvent::new(EventKind::ProgressCheckpoint { bytes_done: i, bytes_total: 1 << 20 })
                .device(format!("dev-{}", i % 5)),
        )
        .await
        .unwrap();
        log.note(text).await.unwrap();
        i += 1;
    }
}

#[tokio::test]
async fn crash_at_random_moments_never_leaves_a_half_written_event() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fieldpatch.db");
    let key = SigningKey::generate(&mut rand::rng());
    let mut rng = rand::rng();
    let mut last_count = 0u64;
    let mut grew = 0;
    for iteration in 0..ITERATIONS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &child_test_name(), "--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_DB, &db)
            .env(CHILD_KEY, hex::encode(key.to_bytes()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait until the child is appending (bounded), then kill it at a random moment.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("appending") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("iteration {iteration}: child never started appending"));
        std::thread::sleep(Duration::from_micros(rng.random_range(0..60_000)));
        // SIGKILL on Unix, TerminateProcess on Windows: the child gets no chance to clean up.
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "iteration {iteration}: child exited by itself: {status}");

        let store = Store::open(&db).await.unwrap();
        let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&raw_pool(&db).await)
            .await
            .unwrap();
        assert_eq!(integrity, "ok", "iteration {iteration}");
        let logs = store.visit_logs().await.unwrap();
        assert_eq!(logs.len(), 1, "iteration {iteration}: one key, one log");
        let v = store.verify_log(logs[0].log_id).await.unwrap();
        assert!(v.is_ok(), "iteration {iteration}: {v:?}");
        assert_eq!(v.verified, logs[0].head_seq, "iteration {iteration}");
        let (rows, distinct, max): (i64, i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), COUNT(DISTINCT seq), COALESCE(MAX(seq), 0) FROM events",
        )
        .fetch_one(&raw_pool(&db).await)
        .await
        .unwrap();
        assert_eq!((rows, distinct, max as u64), (max, max, v.verified), "iteration {iteration}");
        assert!(v.verified >= last_count, "iteration {iteration}: events were lost");
        if v.verified > last_count {
            grew += 1;
        }
        last_count = v.verified;
        store.close().await;
    }
    assert!(grew >= ITERATIONS / 2, "the children appended in only {grew} of {ITERATIONS} runs");

    // The chain continues cleanly after all those crashes.
    let store = Store::open(&db).await.unwrap();
    let log = VisitLog::open(&store, key).await.unwrap();
    let e = log.note("after the crashes").await.unwrap();
    assert_eq!(e.body.seq, last_count + 1);
    assert!(store.verify_log(log.log_id()).await.unwrap().is_ok());
}

async fn raw_pool(db: &std::path::Path) -> sqlx::SqlitePool {
    sqlx::SqlitePool::connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(db))
        .await
        .unwrap()
}
