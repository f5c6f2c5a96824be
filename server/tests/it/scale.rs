//! Several server instances on one PostgreSQL database: three real `fieldpatch-server` processes
//! sharing a data directory's keys and a database, technicians pushing concurrently, and every
//! batch pushed to two instances at once. Per-log ordering is enforced in the database, so the
//! second instance waits for the first and answers the batch as already held (never "pushed
//! concurrently, retry"), every event is stored once, every fold applied once, and every
//! instance gives every client the same signed head and the same inventory.

use crate::common::{PgDatabase, ServerProcess, server_admin, server_cmd, token_in};
use fieldpatch_proto::event::{Event, EventKind};
use fieldpatch_proto::wire::{PullResponse, PushAck, PushRequest};
use fieldpatch_server::{PgStore, Store};
use fieldpatch_testkit::chain::Chain;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const TECHNICIANS: usize = 6;
const EVENTS: usize = 120;
const BATCH: usize = 15;

/// What the pushes met on the way, for the assertions and the printed figures.
#[derive(Debug, Default)]
struct Seen {
    pushes: AtomicUsize,
    concurrent_push: AtomicUsize,
    other_503: AtomicUsize,
}

/// Push `batch` to `base` until every event in it is acknowledged as held; returns the last ack.
async fn push_until_held(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    batch: &[Event],
    seen: &Seen,
) -> PushAck {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "batch not acknowledged by {base}");
        seen.pushes.fetch_add(1, Ordering::SeqCst);
        let r = client
            .post(format!("{base}/v1/push"))
            .bearer_auth(token)
            .json(&PushRequest { events: batch.to_vec() })
            .send()
            .await
            .unwrap();
        if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            assert!(r.headers().contains_key("retry-after"), "a 503 without Retry-After");
            let body: serde_json::Value = r.json().await.unwrap();
            if body["code"] == "concurrent_push" {
                seen.concurrent_push.fetch_add(1, Ordering::SeqCst);
            } else {
                seen.other_503.fetch_add(1, Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        assert!(r.status().is_success(), "{base}: {}", r.status());
        let ack: PushAck = r.json().await.unwrap();
        assert!(ack.rejected.is_empty(), "{:?}", ack.rejected);
        if ack.retryable.is_empty() {
            assert_eq!(ack.stored.len(), batch.len());
            return ack;
        }
        // A gap: an earlier batch of this log has not landed yet (it is on its way to the
        // other instance); push again.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_on_one_postgres_store_and_fold_every_event_once() {
    let db = PgDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // One data directory: the instances share the checkpoint and credential keys.
    let admin = token_in(&server_admin(&data, &db.url, &["create-token", "--admin"]));
    let mut techs = Vec::new();
    for i in 0..TECHNICIANS {
        let key = fieldpatch_testkit::chain::random_key();
        let id = format!("tech{i}");
        let out = server_admin(
            &data,
            &db.url,
            &[
                "create-technician",
                "--id",
                &id,
                "--name",
                &id,
                "--public-key",
                &hex::encode(key.verifying_key().as_bytes()),
            ],
        );
        techs.push((id, key, token_in(&out)));
    }
    let servers: Vec<ServerProcess> = (0..3)
        .map(|i| {
            ServerProcess::start(
                server_cmd(&data, &db.url),
                &["--listen", "127.0.0.1:0"],
                dir.path().join(format!("server{i}.log")),
            )
        })
        .collect();
    let bases: Arc<Vec<String>> = Arc::new(servers.iter().map(|s| s.base.clone()).collect());
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();

    // One site and device per technician, assigned (the inventory folds their events).
    let admin_post = |path: &str, body: serde_json::Value| {
        let req = client.post(format!("{}{path}", bases[0])).bearer_auth(&admin).json(&body);
        async move { assert!(req.send().await.unwrap().status().is_success()) }
    };
    let sites: Vec<_> = (0..TECHNICIANS)
        .map(|i| serde_json::json!({"id": format!("site{i}"), "name": format!("Site {i}")}))
        .collect();
    admin_post("/v1/admin/sites", serde_json::json!(sites)).await;
    let devices: Vec<_> = (0..TECHNICIANS)
        .map(|i| crate::common::device(&format!("dev{i}"), &format!("site{i}")))
        .collect();
    admin_post("/v1/admin/devices", serde_json::to_value(&devices).unwrap()).await;
    for (i, (id, _, _)) in techs.iter().enumerate() {
        let r = client
            .put(format!("{}/v1/admin/assignments/{id}/site{i}", bases[1]))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    // Each technician's log: every third event a failure on their device (folded into the
    // device's failure count, so a fold applied twice shows).
    let logs: Vec<Vec<Event>> = techs
        .iter()
        .enumerate()
        .map(|(i, (_, key, _))| {
            let device = format!("dev{i}");
            let mut c = Chain::new(key);
            (1..=EVENTS)
                .map(|k| {
                    if k % 3 == 0 {
                        c.event(
                            Some(&device),
                            EventKind::Failed { stage: "upload".into(), reason: format!("r{k}") },
                        )
                    } else {
                        c.event(None, EventKind::Note { text: format!("n{k}") })
                    }
                })
                .collect()
        })
        .collect();

    let seen = Arc::new(Seen::default());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, (_, _, token)) in techs.iter().enumerate() {
        let (client, bases, seen, token, log) =
            (client.clone(), bases.clone(), seen.clone(), token.clone(), logs[i].clone());
        tasks.push(tokio::spawn(async move {
            let mut last = None;
            for (b, batch) in log.chunks(BATCH).enumerate() {
                // The same batch to two instances at once.
                let (x, y) = (bases[(i + b) % 3].clone(), bases[(i + b + 1) % 3].clone());
                let (a1, a2) = tokio::join!(
                    push_until_held(&client, &x, &token, batch, &seen),
                    push_until_held(&client, &y, &token, batch, &seen),
                );
                assert_eq!(a1.checkpoints, a2.checkpoints, "two instances disagree on the head");
                last = Some(a1);
            }
            last.unwrap()
        }));
    }
    let mut acks = Vec::new();
    for t in tasks {
        acks.push(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    let total = TECHNICIANS * EVENTS;
    println!(
        "{total} events from {TECHNICIANS} technicians, every batch to two of 3 instances: {} pushes in {:.2}s ({:.0} events/s stored), {} busy answers",
        seen.pushes.load(Ordering::SeqCst),
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        seen.other_503.load(Ordering::SeqCst),
    );
    assert_eq!(
        seen.concurrent_push.load(Ordering::SeqCst),
        0,
        "an instance answered 'pushed concurrently': ordering was not enforced by the database"
    );

    // Every event stored once.
    let store = PgStore::connect(&db.url).await.unwrap();
    assert_eq!(store.counts().await.unwrap().events, total as u64);
    assert_eq!(store.counts().await.unwrap().checkpoints, TECHNICIANS as u64);
    let server_key: serde_json::Value = client
        .get(format!("{}/v1/server-key", bases[2]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let server_key = server_key["public_key"].as_str().unwrap().to_string();
    for (i, (id, _, token)) in techs.iter().enumerate() {
        let last = logs[i].last().unwrap();
        // The head the client was given is the end of its log, signed by the shared key.
        let cp = &acks[i].checkpoints[0];
        assert_eq!(
            (cp.checkpoint.last_seq, &cp.checkpoint.last_hash),
            (EVENTS as u64, &last.hash())
        );
        cp.verify(&server_key).unwrap();
        // Every fold applied once, and every instance tells the client the same.
        for base in bases.iter() {
            let pull: PullResponse = client
                .get(format!("{base}/v1/pull"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(pull.technician_id, *id);
            assert_eq!(pull.server_key, server_key);
            let d = pull.devices.iter().find(|d| d.id == format!("dev{i}")).unwrap();
            assert_eq!(
                d.failures,
                (EVENTS / 3) as u64,
                "{id} at {base}: folds applied {} times",
                d.failures
            );
            assert_eq!(d.last_failure.as_deref(), Some(format!("r{EVENTS}").as_str()));
        }
        let head = store.log_head(&last.body.log_id.to_string()).await.unwrap().unwrap();
        assert_eq!((head.last_seq, head.last_hash), (EVENTS as u64, last.hash()));
    }
    drop(servers);
}
