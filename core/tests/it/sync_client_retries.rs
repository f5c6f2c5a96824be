//! The sync client's transport behaviour against a scripted HTTP peer on loopback: transient
//! failures (503, a body cut short, a dropped connection) are retried up to the policy's attempts;
//! request errors are not; a bundle that does not match its published SHA-256 is not stored.

use fieldpatch_core::sync::wire::{CatalogEntry, PullResponse};
use fieldpatch_core::sync::{
    LogCursor, RetryPolicy, SealedCredential, SignedCheckpoint, SyncConfig, SyncError, SyncLocal,
};
use fieldpatch_core::visitlog::Event;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// What the peer does with the n-th request to a path.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Ok,
    Status(u16),
    CutBody,
    Drop,
}

#[derive(Debug, Default)]
struct Peer {
    hits: Mutex<Vec<String>>,
}

fn pull_body(catalog_sha: &str) -> String {
    let pull = PullResponse {
        server_time: chrono::Utc::now(),
        server_key: "00".repeat(32),
        technician_id: "alice".into(),
        sites: vec![],
        devices: vec![],
        work_orders: vec![],
        catalog: vec![CatalogEntry {
            bundle_id: "fw".into(),
            version: "1.0.0".into(),
            manifest: serde_json::json!({}),
            sha256: catalog_sha.into(),
            size: 5,
            published_at: chrono::Utc::now(),
        }],
        trust_store: None,
        catalog_listing: None,
        credentials: vec![],
    };
    serde_json::to_string(&pull).unwrap()
}

/// Serve until dropped: `script(path, nth)` picks the answer.
async fn start(
    peer: Arc<Peer>,
    script: impl Fn(&str, usize) -> Answer + Send + Sync + 'static,
    catalog_sha: String,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let script = Arc::new(script);
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { continue };
            let (peer, script, sha) = (peer.clone(), script.clone(), catalog_sha.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let head = String::from_utf8_lossy(&got).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let nth = {
                    let mut hits = peer.hits.lock().unwrap();
                    hits.push(path.clone());
                    hits.iter().filter(|p| **p == path).count() - 1
                };
                let body = match path.as_str() {
                    "/v1/server-key" => format!("{{\"public_key\":\"{}\"}}", "00".repeat(32)),
                    "/v1/pull" => pull_body(&sha),
                    p if p.starts_with("/v1/catalog/") => "hello".to_string(),
                    _ => "{}".to_string(),
                };
                let response = match script(&path, nth) {
                    Answer::Ok => format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    Answer::Status(code) => {
                        let b = format!("{{\"code\":\"scripted\",\"message\":\"status {code}\"}}");
                        format!(
                            "HTTP/1.1 {code} Scripted\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}",
                            b.len()
                        )
                    }
                    Answer::CutBody => format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                        body.len() + 100,
                        &body[..body.len() / 2]
                    ),
                    Answer::Drop => return,
                };
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    url
}

/// A laptop with nothing to push that records what the pull delivered.
#[derive(Debug, Default)]
struct Empty {
    pulls: AtomicUsize,
    bundles: Mutex<Vec<Vec<u8>>>,
    /// The store's turn to sync, when it has one.
    turn: Option<Arc<tokio::sync::Mutex<()>>>,
}

#[derive(Debug)]
struct Never;
impl std::fmt::Display for Never {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("never")
    }
}
impl std::error::Error for Never {}

impl SyncLocal for Empty {
    type Error = Never;
    async fn sync_turn(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match &self.turn {
            Some(t) => Some(t.clone().lock_owned().await),
            None => None,
        }
    }
    async fn cursors(&self) -> Result<Vec<LogCursor>, Never> {
        Ok(vec![])
    }
    async fn events_after(&self, _: Uuid, _: u64, _: usize) -> Result<Vec<Event>, Never> {
        Ok(vec![])
    }
    async fn record_checkpoint(&self, _: &SignedCheckpoint) -> Result<(), Never> {
        Ok(())
    }
    async fn has_bundle(&self, _: &str) -> Result<bool, Never> {
        Ok(false)
    }
    async fn apply_credentials(&self, _: &str, _: Vec<SealedCredential>) -> Result<(), Never> {
        Ok(())
    }
    async fn apply_pull(
        &self,
        _: &PullResponse,
        bundles: Vec<(CatalogEntry, Vec<u8>)>,
    ) -> Result<(), Never> {
        self.pulls.fetch_add(1, Ordering::SeqCst);
        self.bundles.lock().unwrap().extend(bundles.into_iter().map(|(_, b)| b));
        Ok(())
    }
}

fn config(url: &str, attempts: u32) -> SyncConfig {
    let mut cfg = SyncConfig::new(url, "fpt_test");
    cfg.retry = RetryPolicy {
        attempts,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
    };
    cfg.timeout = Duration::from_secs(5);
    cfg
}

fn hello_sha() -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b"hello"))
}

fn count(peer: &Peer, path: &str) -> usize {
    peer.hits.lock().unwrap().iter().filter(|p| p.as_str() == path).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_waits_for_the_other_sync_of_its_store_to_end() {
    let peer = Arc::new(Peer::default());
    let url = start(peer.clone(), |_, _| Answer::Ok, hello_sha()).await;
    let turn = Arc::new(tokio::sync::Mutex::new(()));
    let local = Arc::new(Empty { turn: Some(turn.clone()), ..Default::default() });
    // Another sync of the same store holds the turn (automatic sync, while "sync now" is asked).
    let other = turn.clone().lock_owned().await;
    let second = {
        let (url, local) = (url.clone(), local.clone());
        tokio::spawn(async move {
            fieldpatch_core::sync::sync(&config(&url, 1), local.as_ref(), &|_| {}).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hits_while_held = peer.hits.lock().unwrap().len();
    let finished_while_held = second.is_finished();
    drop(other);
    let report = second.await.unwrap();
    assert_eq!(hits_while_held, 0, "the second sync talked to the server during the first");
    assert!(!finished_while_held);
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(local.pulls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_until_they_pass() {
    let peer = Arc::new(Peer::default());
    let url = start(
        peer.clone(),
        |path, nth| match (path, nth) {
            ("/v1/server-key", 0) => Answer::Status(503),
            ("/v1/server-key", 1) => Answer::Drop,
            ("/v1/pull", 0) => Answer::CutBody,
            (p, 0) if p.starts_with("/v1/catalog/") => Answer::Status(502),
            _ => Answer::Ok,
        },
        hello_sha(),
    )
    .await;
    let local = Empty::default();
    let report = fieldpatch_core::sync::sync(&config(&url, 4), &local, &|_| {}).await.unwrap();
    assert_eq!(count(&peer, "/v1/server-key"), 3);
    assert_eq!(count(&peer, "/v1/pull"), 2);
    assert_eq!(count(&peer, &format!("/v1/catalog/{}", hello_sha())), 2);
    assert_eq!(report.bundles_downloaded, 1);
    assert_eq!(local.pulls.load(Ordering::SeqCst), 1);
    assert_eq!(local.bundles.lock().unwrap().as_slice(), [b"hello".to_vec()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_after_the_policy_and_request_errors_are_not_retried() {
    let peer = Arc::new(Peer::default());
    let url = start(peer.clone(), |_, _| Answer::Status(503), hello_sha()).await;
    let e = fieldpatch_core::sync::sync(&config(&url, 3), &Empty::default(), &|_| {})
        .await
        .unwrap_err();
    assert!(matches!(e, SyncError::Unreachable { attempts: 3, .. }), "{e}");
    assert!(e.to_string().contains("nothing is lost"), "{e}");
    assert_eq!(count(&peer, "/v1/server-key"), 3);

    let peer = Arc::new(Peer::default());
    let url = start(peer.clone(), |_, _| Answer::Status(400), hello_sha()).await;
    let e = fieldpatch_core::sync::sync(&config(&url, 5), &Empty::default(), &|_| {})
        .await
        .unwrap_err();
    assert!(matches!(&e, SyncError::Server { status: 400, code, .. } if code == "scripted"), "{e}");
    assert_eq!(count(&peer, "/v1/server-key"), 1);

    let peer = Arc::new(Peer::default());
    let url = start(peer.clone(), |_, _| Answer::Status(401), hello_sha()).await;
    let e = fieldpatch_core::sync::sync(&config(&url, 5), &Empty::default(), &|_| {})
        .await
        .unwrap_err();
    assert!(matches!(e, SyncError::Unauthorized), "{e}");
    assert!(!e.to_string().contains("fpt_test"));
    assert_eq!(count(&peer, "/v1/server-key"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_that_does_not_match_its_hash_is_not_stored() {
    let peer = Arc::new(Peer::default());
    let url = start(peer.clone(), |_, _| Answer::Ok, "ab".repeat(32)).await;
    let local = Empty::default();
    let e = fieldpatch_core::sync::sync(&config(&url, 2), &local, &|_| {}).await.unwrap_err();
    assert!(matches!(e, SyncError::BundleHash { .. }), "{e}");
    assert_eq!(local.pulls.load(Ordering::SeqCst), 0);
    assert!(local.bundles.lock().unwrap().is_empty());
}
