//! A fleet-sized inventory on PostgreSQL: import sites and devices from CSV (parse and write
//! timed), then the latency of the reports over HTTP (loopback): "not at approved version" and
//! "planned but not patched" for the admin (every site) and for technicians (their sites), and
//! device history. Prints p50/p95 per report.
//!
//! Run: `cargo bench -p fieldpatch-server --bench inventory` (needs PostgreSQL on
//! 127.0.0.1:5432; override with FIELDPATCH_TEST_POSTGRES). Sizes: FIELDPATCH_BENCH_DEVICES
//! (default 1000000), FIELDPATCH_BENCH_SITES (default 10000), FIELDPATCH_BENCH_TECHNICIANS
//! (default 100), FIELDPATCH_BENCH_RUNS (requests per report, default 20).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap fails the run

use ed25519_dalek::SigningKey;
use fieldpatch_proto::event::{Event, EventKind};
use fieldpatch_proto::wire::{PushAck, PushRequest, WorkOrder};
use fieldpatch_server::api::{self, NewTechnician};
use fieldpatch_server::{App, Bound, PgStore, Store};
use fieldpatch_testkit::chain::Chain;
use sqlx::Connection;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// GET `url` `runs` times; print p50/p95 and the size of the last answer.
async fn measure(client: &reqwest::Client, what: &str, runs: usize, url: &str, token: &str) {
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let body = client
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .expect("report")
            .error_for_status()
            .expect("report status")
            .bytes()
            .await
            .expect("report body");
        times.push(t.elapsed());
        size = body.len();
    }
    times.sort();
    println!(
        "FIGURE {}",
        serde_json::json!({
            "group": "Inventory reports over HTTP (PostgreSQL)",
            "name": format!("{what} (p95)"), "value": percentile(&times, 0.95).as_secs_f64() * 1e3,
            "unit": "ms", "runs": runs, "limit": 500.0, "better": "lower", "goal": "under 500 ms at p95",
        })
    );
    println!(
        "{what}: p50 {:.1?} p95 {:.1?} ({runs} requests, {} KiB answer)",
        percentile(&times, 0.5),
        percentile(&times, 0.95),
        size / 1024
    );
}

#[tokio::main]
async fn main() {
    let devices = env_usize("FIELDPATCH_BENCH_DEVICES", 1_000_000);
    let sites = env_usize("FIELDPATCH_BENCH_SITES", 10_000).max(1);
    let techs = env_usize("FIELDPATCH_BENCH_TECHNICIANS", 100).max(1);
    let runs = env_usize("FIELDPATCH_BENCH_RUNS", 20).max(1);
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
        let store = PgStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let dir = tempfile::tempdir().unwrap();

        // The CSV files a spreadsheet export would give (not measured).
        let sites_csv = dir.path().join("sites.csv");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&sites_csv).unwrap());
        writeln!(f, "id,name,address").unwrap();
        for s in 0..sites {
            writeln!(f, "site{s},\"Plant {s}, hall A\",\"Street {s}\n{s} Town\"").unwrap();
        }
        f.flush().unwrap();
        drop(f);
        let devices_csv = dir.path().join("devices.csv");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&devices_csv).unwrap());
        writeln!(f, "id,site_id,vendor,model,serial_number,approved_version,current_firmware")
            .unwrap();
        for d in 0..devices {
            // One device in ten runs an old version.
            let current = if d % 10 == 0 { "1.3.0" } else { "1.4.0" };
            writeln!(f, "dev{d},site{},Acme,gw-2,SN{d},1.4.0,{current}", d % sites).unwrap();
        }
        f.flush().unwrap();
        drop(f);

        let t = Instant::now();
        let site_rows = fieldpatch_server::import::read_sites(&sites_csv).unwrap();
        let device_rows = fieldpatch_server::import::read_devices(&devices_csv).unwrap();
        let parsed = t.elapsed();
        let t = Instant::now();
        store.upsert_sites(&site_rows).await.unwrap();
        store.upsert_devices(&device_rows).await.unwrap();
        let written = t.elapsed();
        println!(
            "FIGURE {}",
            serde_json::json!({
                "group": "Inventory reports over HTTP (PostgreSQL)",
                "name": format!("CSV import of {sites} sites and {devices} devices (parse + write)"),
                "value": (parsed + written).as_secs_f64(), "unit": "s", "runs": 1, "better": "lower",
            })
        );
        println!(
            "import: {sites} sites and {devices} devices from CSV: parsed in {parsed:.2?}, written in {written:.2?} ({:.0} devices/s)",
            devices as f64 / written.as_secs_f64()
        );
        drop(device_rows);

        // Technicians with their share of the sites, one work order per site of 20 devices
        // (for the first 500 sites), and events about devices for their history.
        let mut tokens = Vec::new();
        let mut keys = Vec::new();
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
            for s in (i..sites).step_by(techs) {
                store.assign(&id, &format!("site{s}")).await.unwrap();
            }
            tokens.push(api::issue_token(&store, Some(&id), "bench").await.unwrap());
            keys.push(key);
        }
        for s in 0..sites.min(500) {
            let site_devices: Vec<String> =
                (s..devices).step_by(sites).take(20).map(|d| format!("dev{d}")).collect();
            store
                .upsert_work_order(&WorkOrder {
                    id: format!("wo{s}"),
                    site_id: format!("site{s}"),
                    title: format!("Patch round {s}"),
                    planned_for: None,
                    devices: site_devices,
                })
                .await
                .unwrap();
        }
        let admin_token = api::issue_token(&store, None, "bench").await.unwrap();
        let app = Arc::new(App::new(store.clone(), SigningKey::generate(&mut rand::rng())));
        let bound = Bound::bind("127.0.0.1:0".parse().unwrap(), None, false).await.unwrap();
        let base = format!("http://{}", bound.local_addr());
        tokio::spawn(bound.serve(app));
        let client = reqwest::Client::new();
        // Technician 0 pushes 5,000 events about devices of their first site.
        let mut log = Chain::new(&keys[0]);
        let events: Vec<Event> = (0..5000)
            .map(|k| {
                log.event(
                    Some(&format!("dev{}", (k % 50) * sites)),
                    EventKind::Note { text: format!("visit note {k}") },
                )
            })
            .collect();
        for batch in events.chunks(1000) {
            let ack: PushAck = client
                .post(format!("{base}/v1/push"))
                .bearer_auth(&tokens[0])
                .json(&PushRequest { events: batch.to_vec() })
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert!(ack.rejected.is_empty() && ack.retryable.is_empty());
        }

        let r = |p: &str| format!("{base}{p}");
        measure(
            &client,
            "not-at-approved-version, technician (their sites)",
            runs,
            &r("/v1/reports/not-at-approved-version"),
            &tokens[0],
        )
        .await;
        measure(
            &client,
            "planned-not-patched, technician",
            runs,
            &r("/v1/reports/planned-not-patched"),
            &tokens[0],
        )
        .await;
        measure(
            &client,
            "device history (100 events)",
            runs,
            &r("/v1/devices/dev0/history"),
            &tokens[0],
        )
        .await;
        measure(
            &client,
            "not-at-approved-version, admin (every site)",
            runs.min(5),
            &r("/v1/reports/not-at-approved-version"),
            &admin_token,
        )
        .await;
        measure(
            &client,
            "planned-not-patched, admin",
            runs.min(5),
            &r("/v1/reports/planned-not-patched"),
            &admin_token,
        )
        .await;
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
