//! The real `fieldpatch-server` process killed with SIGKILL at random moments while batches are
//! pushed, and restarted on the same database: after re-pushing until acknowledged, every event
//! is stored exactly once and the database is intact (SQLite and PostgreSQL).

use crate::common::PgDatabase;
use fieldpatch_proto::event::Event;
use fieldpatch_proto::wire::{PushAck, PushRequest};
use fieldpatch_server::{PgStore, SqliteStore, Store};
use fieldpatch_testkit::chain::{chain, note};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_fieldpatch-server");

fn cmd(data: &Path, database: &str) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--data-dir").arg(data).arg("--database").arg(database);
    c
}

fn spawn(data: &Path, database: &str) -> (Child, String) {
    let mut child = cmd(data, database)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !line.starts_with("listening on ") {
        assert!(Instant::now() < deadline, "server did not start");
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "server exited before listening");
    }
    (child, line.trim().trim_start_matches("listening on ").to_string())
}

async fn killed_and_restarted(data: PathBuf, database: String) {
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rng());
    let out = cmd(&data, &database)
        .args(["admin", "create-technician", "--id", "alice", "--name", "Alice", "--public-key"])
        .arg(hex::encode(key.verifying_key().as_bytes()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.lines().find_map(|l| l.strip_prefix("token: ")).unwrap().to_string();

    let logs: Vec<Vec<Event>> =
        (0..3).map(|_| chain(&key, (0..300).map(|i| note(&format!("n{i}"))))).collect();
    let (child, url) = spawn(&data, &database);
    let url = Arc::new(Mutex::new(url));
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicUsize::new(0));
    let chaos = {
        let (data, database, url, stop, kills) =
            (data.clone(), database.clone(), url.clone(), stop.clone(), kills.clone());
        std::thread::spawn(move || {
            let mut child = child;
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(rand::random_range(10..120)));
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills.fetch_add(1, Ordering::SeqCst);
                let (c, u) = spawn(&data, &database);
                *url.lock().unwrap() = u;
                child = c;
            }
            child
        })
    };

    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut failures = 0;
    let mut rounds = 0;
    // Push everything (each batch until acknowledged); rounds after the first are replays. Go on
    // until the server was killed at least 10 times while pushing.
    while rounds == 0 || kills.load(Ordering::SeqCst) < 10 || failures < 3 {
        rounds += 1;
        for log in &logs {
            for batch in log.chunks(30) {
                loop {
                    assert!(Instant::now() < deadline, "pushes did not get through");
                    let target = format!("{}/v1/push", url.lock().unwrap());
                    let sent = client
                        .post(target)
                        .bearer_auth(&token)
                        .json(&PushRequest { events: batch.to_vec() })
                        .send()
                        .await;
                    let ack = match sent {
                        Ok(r) if r.status().is_success() => r.json::<PushAck>().await.ok(),
                        _ => None,
                    };
                    match ack {
                        Some(ack) => {
                            assert!(ack.rejected.is_empty() && ack.retryable.is_empty(), "{ack:?}");
                            assert_eq!(ack.stored.len(), batch.len());
                            break;
                        }
                        None => {
                            failures += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    let mut last = chaos.join().unwrap();
    last.kill().unwrap();
    last.wait().unwrap();
    eprintln!(
        "push rounds: {rounds}, server kills: {}, interrupted pushes: {failures}",
        kills.load(Ordering::SeqCst)
    );

    async fn check<S: Store>(s: S, logs: &[Vec<Event>]) {
        assert_eq!(s.counts().await.unwrap().events, 900);
        for log in logs {
            let held = s.stored_events(&log[0].body.log_id.to_string(), 0, 1000).await.unwrap();
            let got: Vec<_> = held.into_iter().map(|h| (h.seq, h.id, h.hash)).collect();
            let want: Vec<_> =
                log.iter().map(|e| (e.body.seq, e.body.id.to_string(), e.hash())).collect();
            assert_eq!(got, want);
            let head = s.log_head(&log[0].body.log_id.to_string()).await.unwrap().unwrap();
            assert_eq!(head.last_seq, 300);
        }
    }
    if let Some(path) = database.strip_prefix("sqlite://") {
        let s = SqliteStore::open(Path::new(path)).await.unwrap();
        let ok: (String,) =
            sqlx::query_as("PRAGMA integrity_check").fetch_one(s.pool()).await.unwrap();
        assert_eq!(ok.0, "ok");
        check(s, &logs).await;
    } else {
        check(PgStore::connect(&database).await.unwrap(), &logs).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_server_process_killed_mid_push() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("inventory.db").display());
    killed_and_restarted(dir.path().join("data"), db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_server_process_killed_mid_push() {
    let dir = tempfile::tempdir().unwrap();
    let pg = PgDatabase::create().await;
    killed_and_restarted(dir.path().join("data"), pg.url.clone()).await;
}
