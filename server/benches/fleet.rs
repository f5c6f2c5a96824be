//! Fleet push: many technicians pushing concurrently to three server instances on one
//! PostgreSQL database (each batch to a random instance). Prints events/s, push latency
//! percentiles, and checks every event was stored once.
//!
//! Run: `cargo bench -p fieldpatch-server --bench fleet` (needs PostgreSQL on 127.0.0.1:5432;
//! override with FIELDPATCH_TEST_POSTGRES). Sizes: FIELDPATCH_BENCH_TECHNICIANS (default 50),
//! FIELDPATCH_BENCH_EVENTS_EACH (default 2000), FIELDPATCH_BENCH_BATCH (default 200),
//! FIELDPATCH_BENCH_INSTANCES (default 3).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap fails the run

use ed25519_dalek::SigningKey;
use fieldpatch_proto::event::{Event, EventKind};
use fieldpatch_proto::wire::{PushAck, PushRequest};
use fieldpatch_server::api::{self, NewTechnician};
use fieldpatch_server::{App, Bound, PgStore, Store};
use fieldpatch_testkit::chain::Chain;
use sqlx::Connection;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Push one technician's batches in order, each to a random instance; retry 503s. Returns the
/// latency of every accepted push.
async fn technician(
    client: reqwest::Client,
    urls: Arc<Vec<String>>,
    token: String,
    batches: Vec<Vec<Event>>,
) -> (Vec<Duration>, usize) {
    let mut latencies = Vec::new();
    let mut retries = 0;
    for batch in batches {
        loop {
            let url = &urls[rand::random_range(0..urls.len())];
            let t = Instant::now();
            let r = client
                .post(url)
                .bearer_auth(&token)
                .json(&PushRequest { events: batch.clone() })
                .send()
                .await
                .expect("push");
            if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                retries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let ack: PushAck =
                r.error_for_status().expect("push status").json().await.expect("ack");
            latencies.push(t.elapsed());
            assert!(ack.rejected.is_empty(), "{:?}", ack.rejected.first());
            if ack.retryable.is_empty() {
                break;
            }
            retries += 1;
        }
    }
    (latencies, retries)
}

#[tokio::main]
async fn main() {
    let techs = env_usize("FIELDPATCH_BENCH_TECHNICIANS", 50);
    let each = env_usize("FIELDPATCH_BENCH_EVENTS_EACH", 2000);
    let batch = env_usize("FIELDPATCH_BENCH_BATCH", 200).max(1);
    let instances = env_usize("FIELDPATCH_BENCH_INSTANCES", 3).max(1);
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

    let url = format!("{base}/{name}");
    let result = async move {
        let server_key = SigningKey::generate(&mut rand::rng());
        let mut urls = Vec::new();
        let mut first: Option<PgStore> = None;
        for _ in 0..instances {
            let store = PgStore::connect(&url).await.unwrap();
            store.migrate().await.unwrap();
            let app = Arc::new(App::new(store.clone(), server_key.clone()));
            let bound = Bound::bind("127.0.0.1:0".parse().unwrap(), None, false).await.unwrap();
            urls.push(format!("http://{}/v1/push", bound.local_addr()));
            tokio::spawn(bound.serve(app));
            first.get_or_insert(store);
        }
        let store = first.unwrap();
        let t = Instant::now();
        let mut work = Vec::new();
        for i in 0..techs {
            let key = SigningKey::generate(&mut rand::rng());
            let id = format!("tech{i}");
            api::create_technician(
                &store,
                NewTechnician {
                    id: id.clone(),
                    name: id.clone(),
                    public_key: hex::encode(key.verifying_key().as_bytes()),
                },
            )
            .await
            .unwrap();
            let token = api::issue_token(&store, Some(&id), "bench").await.unwrap();
            let mut log = Chain::new(&key);
            let events: Vec<Event> = (1..=each as u64)
                .map(|seq| {
                    log.event(
                        Some(&format!("dev-{i}-{}", seq % 20)),
                        EventKind::ProgressCheckpoint { bytes_done: seq, bytes_total: 1 << 20 },
                    )
                })
                .collect();
            work.push((token, events.chunks(batch).map(<[Event]>::to_vec).collect::<Vec<_>>()));
        }
        println!(
            "set up {techs} technicians with {each} signed events each in {:.2?} (not measured)",
            t.elapsed()
        );
        let urls = Arc::new(urls);
        let client = reqwest::Client::new();
        let t = Instant::now();
        let tasks: Vec<_> = work
            .into_iter()
            .map(|(token, batches)| {
                tokio::spawn(technician(client.clone(), urls.clone(), token, batches))
            })
            .collect();
        let mut latencies = Vec::new();
        let mut retries = 0;
        for task in tasks {
            let (l, r) = task.await.expect("technician task");
            latencies.extend(l);
            retries += r;
        }
        let elapsed = t.elapsed();
        latencies.sort();
        let total = techs * each;
        println!(
            "fleet push: {total} events from {techs} technicians to {instances} instances in {elapsed:.2?}: {:.0} events/s",
            total as f64 / elapsed.as_secs_f64()
        );
        println!(
            "push latency ({} pushes of up to {batch} events, {retries} retried): p50 {:.1?} p95 {:.1?} max {:.1?}",
            latencies.len(),
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.95),
            latencies.last().copied().unwrap_or_default()
        );
        println!(
            "FIGURE {}",
            serde_json::json!({
                "group": format!("Fleet push ({techs} technicians x {each} events, {instances} instances, one PostgreSQL)"),
                "name": "events stored per second", "value": total as f64 / elapsed.as_secs_f64(),
                "unit": "events/s", "runs": 1, "better": "higher",
            })
        );
        println!(
            "FIGURE {}",
            serde_json::json!({
                "group": format!("Fleet push ({techs} technicians x {each} events, {instances} instances, one PostgreSQL)"),
                "name": format!("push latency p95 (batches of {batch})"),
                "value": percentile(&latencies, 0.95).as_secs_f64(), "unit": "s", "runs": 1,
                "better": "lower",
            })
        );
        let counts = store.counts().await.unwrap();
        println!("rows: events={} checkpoints={}", counts.events, counts.checkpoints);
        assert_eq!(counts.events as usize, total, "every event stored once");
        assert_eq!(counts.checkpoints as usize, techs);
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
