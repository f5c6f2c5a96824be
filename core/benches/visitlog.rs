//! Visit-log figures on a real SQLite file: append latency (each append is one durable
//! transaction: `synchronous = FULL` in WAL), verification and sync-read throughput.
//! Run: `cargo bench -p fieldpatch-core --bench visitlog`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap fails the run

use ed25519_dalek::SigningKey;
use fieldpatch_core::store::Store;
use fieldpatch_core::visitlog::{EventKind, NewEvent, VisitLog};
use std::time::{Duration, Instant};

const APPENDS: usize = 2_000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open_in(dir.path()).await.expect("store");
    let log = VisitLog::open(&store, SigningKey::generate(&mut rand::rng())).await.unwrap();

    let mut lat = Vec::with_capacity(APPENDS);
    let t0 = Instant::now();
    for i in 0..APPENDS as u64 {
        let t = Instant::now();
        log.append(
            NewEvent::new(EventKind::ProgressCheckpoint {
                bytes_done: i * 4096,
                bytes_total: 1 << 24,
            })
            .device("dev-1"),
        )
        .await
        .unwrap();
        lat.push(t.elapsed());
    }
    let total = t0.elapsed();
    lat.sort();
    println!(
        "append: {APPENDS} events in {:.2?} = {:.0} events/s; latency p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        total,
        APPENDS as f64 / total.as_secs_f64(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat[lat.len() - 1]
    );

    let t = Instant::now();
    let v = store.verify_log(log.log_id()).await.unwrap();
    assert!(v.is_ok());
    let d = t.elapsed();
    println!(
        "FIGURE {}",
        serde_json::json!({
            "group": "Visit log (real SQLite file, synchronous = FULL)",
            "name": "append (durable transaction per event)",
            "value": APPENDS as f64 / total.as_secs_f64(), "unit": "events/s", "runs": 1,
            "better": "higher", "p99_ms": percentile(&lat, 0.99).as_secs_f64() * 1e3,
        })
    );
    println!(
        "verify: {} events in {:.2?} = {:.0} events/s",
        v.verified,
        d,
        v.verified as f64 / d.as_secs_f64()
    );

    let t = Instant::now();
    let (_, batch) = store.log_events_to_push(log.log_id(), 1000).await.unwrap();
    let d = t.elapsed();
    println!("sync read: {} unpushed events in {:.2?}", batch.len(), d);

    let size: u64 =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    println!("store size with {APPENDS} events (db + wal): {} KiB", size / 1024);
}
