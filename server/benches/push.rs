//! Push 100,000 visit-log events end to end (HTTP on loopback, signature and chain verification)
//! into PostgreSQL, then into a SQLite file, and print events/second; then replay every batch and
//! print the row counts, which must not change.
//!
//! Run: `cargo bench -p fieldpatch-server --bench push` (needs PostgreSQL on 127.0.0.1:5432;
//! override with FIELDPATCH_TEST_POSTGRES). Sizes: FIELDPATCH_BENCH_EVENTS (default 100000),
//! FIELDPATCH_BENCH_BATCH (default 1000), FIELDPATCH_BENCH_CLIENTS (concurrent laptops, default 1,
//! at most 10: the events are spread over 10 logs).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap fails the run

use ed25519_dalek::SigningKey;
use fieldpatch_proto::event::{Event, EventKind};
use fieldpatch_proto::wire::{PushAck, PushRequest};
use fieldpatch_server::api::{self, NewTechnician};
use fieldpatch_server::{App, Bound, PgStore, SqliteStore, Store};
use fieldpatch_testkit::chain::Chain;
use sqlx::Connection;
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn make_events(key: &SigningKey, logs: usize, per_log: usize) -> Vec<Vec<Event>> {
    (0..logs)
        .map(|l| {
            let mut log = Chain::new(key);
            (1..=per_log as u64)
                .map(|seq| {
                    log.event(
                        Some(&format!("dev-{l}-{}", seq % 50)),
                        EventKind::ProgressCheckpoint {
                            bytes_done: seq * 4096,
                            bytes_total: 1 << 20,
                        },
                    )
                })
                .collect()
        })
        .collect()
}

/// Push with `clients` concurrent connections; each log stays with one client, in order.
async fn push_parallel(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    batches: &[Vec<Event>],
    logs: usize,
    clients: usize,
) -> usize {
    let mut tasks = Vec::new();
    for k in 0..clients {
        let mine: Vec<Vec<Event>> = batches
            .iter()
            .enumerate()
            .filter(|(i, _)| (i % logs) % clients == k)
            .map(|(_, b)| b.clone())
            .collect();
        let (client, url, token) = (client.clone(), url.to_string(), token.to_string());
        tasks.push(tokio::spawn(async move { push_all(&client, &url, &token, &mine).await }));
    }
    let mut stored = 0;
    for t in tasks {
        stored += t.await.expect("push task");
    }
    stored
}

async fn push_all(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    batches: &[Vec<Event>],
) -> usize {
    let mut stored = 0;
    for batch in batches {
        let ack: PushAck = client
            .post(url)
            .bearer_auth(token)
            .json(&PushRequest { events: batch.clone() })
            .send()
            .await
            .expect("push")
            .error_for_status()
            .expect("push status")
            .json()
            .await
            .expect("ack");
        assert!(ack.rejected.is_empty() && ack.retryable.is_empty(), "{:?}", ack.rejected.first());
        stored += ack.stored.len();
    }
    stored
}

/// Push every event into `store` through the API, then replay every batch; print the figures.
async fn run<S: Store + Send + Sync + 'static>(
    store: S,
    backend: &str,
    logs: usize,
    per_log: usize,
    batch: usize,
    clients: usize,
) {
    store.migrate().await.unwrap();
    let key = SigningKey::generate(&mut rand::rng());
    api::create_technician(
        &store,
        NewTechnician {
            id: "bench".into(),
            name: "Bench".into(),
            public_key: hex::encode(key.verifying_key().as_bytes()),
        },
    )
    .await
    .unwrap();
    let token = api::issue_token(&store, Some("bench"), "bench").await.unwrap();
    let app = Arc::new(App::new(store, SigningKey::generate(&mut rand::rng())));
    let bound = Bound::bind("127.0.0.1:0".parse().unwrap(), None, false).await.unwrap();
    let url = format!("http://{}/v1/push", bound.local_addr());
    tokio::spawn(bound.serve(app.clone()));

    let t = Instant::now();
    let events = make_events(&key, logs, per_log);
    println!(
        "generated and signed {} events in {:.2?} (not measured)",
        logs * per_log,
        t.elapsed()
    );
    // Interleave logs batch by batch, as many laptops would.
    let mut batches: Vec<Vec<Event>> = Vec::new();
    for chunk in 0..per_log.div_ceil(batch) {
        for log in &events {
            let s = chunk * batch;
            if s < log.len() {
                batches.push(log[s..(s + batch).min(log.len())].to_vec());
            }
        }
    }
    let client = reqwest::Client::new();

    let t = Instant::now();
    let stored = push_parallel(&client, &url, &token, &batches, logs, clients).await;
    let first = t.elapsed();
    let after_first = app.store.counts().await.unwrap();
    println!(
        "push: {stored} events in {} batches of {batch} from {clients} client(s) in {:.2?}: {:.0} events/s",
        batches.len(),
        first,
        stored as f64 / first.as_secs_f64()
    );
    println!(
        "rows after push:   events={} checkpoints={}",
        after_first.events, after_first.checkpoints
    );

    let t = Instant::now();
    let acked = push_parallel(&client, &url, &token, &batches, logs, clients).await;
    let replay = t.elapsed();
    let after_replay = app.store.counts().await.unwrap();
    println!(
        "replay: {acked} events acknowledged in {:.2?}: {:.0} events/s",
        replay,
        acked as f64 / replay.as_secs_f64()
    );
    for (name, value) in [
        ("push: events stored per second", stored as f64 / first.as_secs_f64()),
        (
            "replay of the same batches: events acknowledged per second",
            acked as f64 / replay.as_secs_f64(),
        ),
    ] {
        println!(
            "FIGURE {}",
            serde_json::json!({
                "group": format!("Sync push into {backend} ({} events)", logs * per_log),
                "name": name, "value": value, "unit": "events/s", "runs": 1, "better": "higher",
                "rows_added_by_replay": after_replay.events - after_first.events,
            })
        );
    }
    println!(
        "rows after replay: events={} checkpoints={}",
        after_replay.events, after_replay.checkpoints
    );
    println!(
        "replay added {} event rows and {} checkpoint rows",
        after_replay.events - after_first.events,
        after_replay.checkpoints - after_first.checkpoints
    );
    assert_eq!(after_first.events as usize, logs * per_log);
    assert_eq!(after_replay, after_first);
}

#[tokio::main]
async fn main() {
    let total = env_usize("FIELDPATCH_BENCH_EVENTS", 100_000);
    let batch = env_usize("FIELDPATCH_BENCH_BATCH", 1000);
    let clients = env_usize("FIELDPATCH_BENCH_CLIENTS", 1).clamp(1, 10);
    let logs = 10;
    let per_log = total / logs;
    let base = std::env::var("FIELDPATCH_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string());
    let name = format!("fieldpatch_bench_{}", Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres"))
        .await
        .expect("PostgreSQL must be running on 127.0.0.1:5432");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();

    let (name2, base2) = (name.clone(), base.clone());
    let result = async move {
        let (name, base) = (name2, base2);
        let store = PgStore::connect(&format!("{base}/{name}")).await.unwrap();
        run(store, "PostgreSQL", logs, per_log, batch, clients).await;
        // The same push into the single-instance default, a SQLite file.
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("inventory.db")).await.unwrap();
        run(store, "SQLite", logs, per_log, batch, clients).await;
    };
    let outcome = tokio::spawn(result).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
        .execute(&mut admin)
        .await
        .unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
