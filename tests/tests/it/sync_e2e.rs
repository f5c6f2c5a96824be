//! Sync client against a real inventory server on loopback (SQLite and PostgreSQL): interrupted
//! many times at random points (server killed and restarted, connections cut at random bytes,
//! the client itself aborted), every event ends up stored exactly once; rejected and pending
//! events are reported with reasons; `watch` syncs by itself once the server is reachable.
//!
//! The laptop side is a small [`SyncLocal`] over JSON files in a temp dir (written atomically),
//! standing in for the local store.

use chrono::Utc;
use ed25519_dalek::SigningKey;
use fieldpatch_core::sync::sealed::{SealedCredential, encrypt_at_rest};
use fieldpatch_core::sync::wire::{CatalogEntry, Device, Site, WorkOrder};
use fieldpatch_core::sync::{
    LogCursor, PullResponse, RetryPolicy, SignedCheckpoint, SyncConfig, SyncLocal, WatchEvent,
    WatchOptions,
};
use fieldpatch_core::visitlog::{Event, EventKind};
use fieldpatch_server::api::{self, NewTechnician};
use fieldpatch_server::store::StoredCredential;
use fieldpatch_server::{App, Bound, PgStore, SqliteStore, Store};
use fieldpatch_testkit::chain::Chain;
use fieldpatch_testkit::tls::self_signed;

/// The server's credential data key in these tests.
const DATA_KEY: [u8; 32] = [7; 32];
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// The laptop: a SyncLocal over JSON files.

#[derive(Debug)]
struct LocalError(String);
impl std::fmt::Display for LocalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for LocalError {}

/// The laptop's store over JSON files. Device credentials are opened with the technician's key
/// and kept only in `keyring` (memory), standing in for the OS keyring: never in a file.
#[derive(Debug)]
struct JsonLocal {
    dir: PathBuf,
    lock: Mutex<()>,
    technician: Option<(String, SigningKey)>,
    keyring: Mutex<BTreeMap<(String, String), Vec<u8>>>,
}

fn io<E: std::fmt::Display>(e: E) -> LocalError {
    LocalError(e.to_string())
}

impl JsonLocal {
    fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        std::fs::create_dir_all(dir.join("bundles")).unwrap();
        Self {
            dir: dir.to_path_buf(),
            lock: Mutex::new(()),
            technician: None,
            keyring: Mutex::default(),
        }
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), LocalError> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    fn read<T: serde::de::DeserializeOwned + Default>(&self, path: &Path) -> Result<T, LocalError> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(io),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
            Err(e) => Err(io(e)),
        }
    }

    fn log_path(&self, log_id: Uuid) -> PathBuf {
        self.dir.join("logs").join(format!("{log_id}.json"))
    }

    fn log(&self, log_id: Uuid) -> Vec<Event> {
        self.read(&self.log_path(log_id)).unwrap()
    }

    fn append(&self, events: &[Event]) {
        let _g = self.lock.lock().unwrap();
        let log_id = events[0].body.log_id;
        let mut log = self.log(log_id);
        log.extend_from_slice(events);
        self.write_atomic(&self.log_path(log_id), &serde_json::to_vec(&log).unwrap()).unwrap();
    }

    fn checkpoints(&self) -> BTreeMap<Uuid, SignedCheckpoint> {
        self.read(&self.dir.join("checkpoints.json")).unwrap()
    }

    fn pulled(&self) -> Option<PullResponse> {
        self.read::<Option<PullResponse>>(&self.dir.join("pull.json")).unwrap()
    }
}

impl SyncLocal for JsonLocal {
    type Error = LocalError;

    async fn cursors(&self) -> Result<Vec<LogCursor>, LocalError> {
        let cps = self.checkpoints();
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.dir.join("logs")).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let log: Vec<Event> = self.read(&path)?;
            let Some(last) = log.last() else { continue };
            let log_id = last.body.log_id;
            out.push(LogCursor {
                log_id,
                pushed_seq: cps.get(&log_id).map(|c| c.checkpoint.last_seq).unwrap_or(0),
                last_seq: last.body.seq,
            });
        }
        out.sort_by_key(|c| c.log_id);
        Ok(out)
    }

    async fn events_after(
        &self,
        log_id: Uuid,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, LocalError> {
        let log: Vec<Event> = self.read(&self.log_path(log_id))?;
        Ok(log.into_iter().filter(|e| e.body.seq > after_seq).take(limit).collect())
    }

    async fn record_checkpoint(&self, cp: &SignedCheckpoint) -> Result<(), LocalError> {
        let _g = self.lock.lock().unwrap();
        let mut cps = self.checkpoints();
        cps.insert(cp.checkpoint.log_id, cp.clone());
        self.write_atomic(
            &self.dir.join("checkpoints.json"),
            &serde_json::to_vec(&cps).map_err(io)?,
        )
    }

    async fn apply_credentials(
        &self,
        technician_id: &str,
        sealed: Vec<SealedCredential>,
    ) -> Result<(), LocalError> {
        let (id, key) =
            self.technician.as_ref().ok_or_else(|| LocalError("no technician key".into()))?;
        assert_eq!(technician_id, id);
        let mut opened = BTreeMap::new();
        for c in &sealed {
            let secret = c.open(key, id).map_err(io)?;
            opened.insert((c.device_id.clone(), c.kind.clone()), secret.to_vec());
        }
        // Exactly the delivered set: credentials of revoked sites go.
        *self.keyring.lock().unwrap() = opened;
        Ok(())
    }

    async fn has_bundle(&self, sha256: &str) -> Result<bool, LocalError> {
        Ok(self.dir.join("bundles").join(sha256).exists())
    }

    async fn apply_pull(
        &self,
        pull: &PullResponse,
        bundles: Vec<(CatalogEntry, Vec<u8>)>,
    ) -> Result<(), LocalError> {
        for (entry, bytes) in bundles {
            self.write_atomic(&self.dir.join("bundles").join(&entry.sha256), &bytes)?;
        }
        self.write_atomic(&self.dir.join("pull.json"), &serde_json::to_vec(pull).map_err(io)?)
    }
}

// ---------------------------------------------------------------------------------------------
// The server: its own runtime on its own thread, so killing it ends every connection at once.

#[derive(Debug, Clone)]
enum Db {
    Sqlite(PathBuf),
    Postgres(String),
}

struct PgDatabase {
    name: String,
}

impl PgDatabase {
    async fn create() -> (Self, String) {
        use sqlx::Connection;
        let name = format!("fieldpatch_test_{}", Uuid::new_v4().simple());
        let mut c = sqlx::PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres")
            .await
            .expect("PostgreSQL must be running on 127.0.0.1:5432 (scripts/setup starts it)");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut c)
            .await
            .unwrap();
        (Self { name: name.clone() }, format!("postgres://postgres@127.0.0.1:5432/{name}"))
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut c) =
                    sqlx::PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres").await
                {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut c)
                    .await;
                }
            })
        })
        .join();
    }
}

struct ServerThread {
    port: u16,
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl ServerThread {
    /// Start a server on `db` (port 0 = any free port).
    fn start(db: Db, key: SigningKey, port: u16) -> Self {
        Self::start_with(db, key, port, None)
    }

    fn start_with(
        db: Db,
        key: SigningKey,
        port: u16,
        tls: Option<fieldpatch_server::TlsFiles>,
    ) -> Self {
        Self::start_on(db, key, std::net::SocketAddr::from(([127, 0, 0, 1], port)), tls)
    }

    /// Start a server on `db` listening at `addr`; its thread is started from the calling
    /// thread, so it serves in that thread's network namespace.
    fn start_on(
        db: Db,
        key: SigningKey,
        addr: std::net::SocketAddr,
        tls: Option<fieldpatch_server::TlsFiles>,
    ) -> Self {
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let tls = tls.map(|f| fieldpatch_server::tls_config(&f).unwrap());
                let bound = Bound::bind(addr, tls, false).await.unwrap();
                port_tx.send(bound.local_addr().port()).unwrap();
                match db {
                    Db::Sqlite(p) => {
                        let s = SqliteStore::open(&p).await.unwrap();
                        s.migrate().await.unwrap();
                        tokio::spawn(
                            bound.serve(Arc::new(App::new(s, key).with_credential_key(DATA_KEY))),
                        );
                    }
                    Db::Postgres(u) => {
                        let s = PgStore::connect(&u).await.unwrap();
                        s.migrate().await.unwrap();
                        tokio::spawn(
                            bound.serve(Arc::new(App::new(s, key).with_credential_key(DATA_KEY))),
                        );
                    }
                }
            });
            let _ = stop_rx.recv();
            // Kill: every task, connection and transaction in flight is dropped.
            rt.shutdown_background();
        });
        let port = port_rx.recv_timeout(Duration::from_secs(30)).expect("server started");
        Self { port, stop, thread }
    }

    fn kill(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// Create the technician (and sites/devices/work order/bundle) directly in the database.
async fn provision(db: &Db, tech_key: &SigningKey, tech: &str) -> String {
    async fn go<S: Store>(s: S, tech_key: &SigningKey, tech: &str) -> String {
        s.migrate().await.unwrap();
        api::create_technician(
            &s,
            NewTechnician {
                id: tech.into(),
                name: tech.into(),
                public_key: hex::encode(tech_key.verifying_key().as_bytes()),
            },
        )
        .await
        .unwrap();
        for site in ["s1", "s2"] {
            s.upsert_site(&Site { id: site.into(), name: format!("Site {site}"), address: None })
                .await
                .unwrap();
            s.upsert_device(&Device {
                id: format!("{site}-dev"),
                site_id: site.into(),
                vendor: None,
                model: None,
                hardware_revision: None,
                serial_number: None,
                approved_version: Some("2.0.0".into()),
                current_firmware: Some("1.0.0".into()),
                last_visit: None,
                failures: 0,
                last_failure: None,
                not_patched_reason: None,
            })
            .await
            .unwrap();
        }
        s.upsert_work_order(&WorkOrder {
            id: "w1".into(),
            site_id: "s1".into(),
            title: "Round 1".into(),
            planned_for: None,
            devices: vec!["s1-dev".into()],
        })
        .await
        .unwrap();
        s.assign(tech, "s1").await.unwrap();
        s.assign(tech, "s2").await.unwrap();
        for site in ["s1", "s2"] {
            let device = format!("{site}-dev");
            let secret = format!("password-of-{device}");
            let (nonce, ciphertext) =
                encrypt_at_rest(&DATA_KEY, &device, "password", secret.as_bytes()).unwrap();
            s.set_credential(&StoredCredential {
                device_id: device,
                kind: "password".into(),
                nonce,
                ciphertext,
            })
            .await
            .unwrap();
        }
        let bytes = b"bundle-file-bytes".to_vec();
        use sha2::Digest;
        s.publish_bundle(
            &CatalogEntry {
                bundle_id: "fw".into(),
                version: "2.0.0".into(),
                manifest: serde_json::json!({"installs": "2.0.0"}),
                sha256: hex::encode(sha2::Sha256::digest(&bytes)),
                size: bytes.len() as u64,
                published_at: Utc::now(),
            },
            &bytes,
        )
        .await
        .unwrap();
        api::issue_token(&s, Some(tech), "test").await.unwrap()
    }
    match db {
        Db::Sqlite(p) => go(SqliteStore::open(p).await.unwrap(), tech_key, tech).await,
        Db::Postgres(u) => go(PgStore::connect(u).await.unwrap(), tech_key, tech).await,
    }
}

/// `(seq, id, hash)` of every stored event of a log, and the total row count.
async fn stored(db: &Db, log_id: Uuid) -> (Vec<(u64, String, String)>, u64) {
    async fn go<S: Store>(s: S, log_id: Uuid) -> (Vec<(u64, String, String)>, u64) {
        let rows = s.stored_events(&log_id.to_string(), 0, u64::MAX >> 2).await.unwrap();
        let n = s.counts().await.unwrap().events;
        (rows.into_iter().map(|r| (r.seq, r.id, r.hash)).collect(), n)
    }
    match db {
        Db::Sqlite(p) => go(SqliteStore::open(p).await.unwrap(), log_id).await,
        Db::Postgres(u) => go(PgStore::connect(u).await.unwrap(), log_id).await,
    }
}

// ---------------------------------------------------------------------------------------------
// A loopback proxy that cuts connections after a random number of bytes.

async fn pipe(
    mut client: tokio::net::TcpStream,
    mut server: tokio::net::TcpStream,
    budget: usize,
) -> bool {
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let (mut a, mut b) = ([0u8; 4096], [0u8; 4096]);
    let mut moved = 0usize;
    loop {
        let (n, up) = tokio::select! {
            r = cr.read(&mut a) => (r, true),
            r = sr.read(&mut b) => (r, false),
        };
        let n = match n {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        let allowed = n.min(budget - moved);
        let w =
            if up { sw.write_all(&a[..allowed]).await } else { cw.write_all(&b[..allowed]).await };
        if w.is_err() {
            return false;
        }
        moved += allowed;
        if moved >= budget {
            return true; // cut: both sockets are dropped here
        }
    }
}

async fn proxy(
    listener: tokio::net::TcpListener,
    upstream: Arc<AtomicU16>,
    chaos: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        let port = upstream.load(Ordering::SeqCst);
        let chaos = chaos.load(Ordering::SeqCst);
        let cuts = cuts.clone();
        tokio::spawn(async move {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                return;
            };
            let budget = if chaos && rand::random_bool(0.5) {
                rand::random_range(1..30_000)
            } else {
                usize::MAX
            };
            if pipe(client, server, budget).await {
                cuts.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------

fn make_log(key: &SigningKey, n: u64) -> Vec<Event> {
    let mut log = Chain::new(key);
    (1..=n)
        .map(|seq| {
            let kind = if seq == n {
                EventKind::Confirmed {
                    version: Some("2.0.0".into()),
                    image_sha256: "cd".repeat(32),
                }
            } else {
                EventKind::ProgressCheckpoint { bytes_done: seq * 1000, bytes_total: n * 1000 }
            };
            log.event(Some("s1-dev"), kind)
        })
        .collect()
}

fn fast_retry(cfg: &mut SyncConfig) {
    cfg.retry = RetryPolicy {
        attempts: 3,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
    };
    cfg.timeout = Duration::from_secs(5);
}

async fn interrupted_sync_stores_every_event_exactly_once(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let tech_key = SigningKey::generate(&mut rand::rng());
    let server_key = SigningKey::generate(&mut rand::rng());
    let token = provision(&db, &tech_key, "alice").await;

    let (local, mut logs) =
        laptop_with_logs(&dir.path().join("laptop"), &tech_key, &[300, 250, 200]);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", listener.local_addr().unwrap());
    let first = ServerThread::start(db.clone(), server_key.clone(), 0);
    let upstream = Arc::new(AtomicU16::new(first.port));
    let chaos = Arc::new(AtomicBool::new(true));
    let cuts = Arc::new(AtomicUsize::new(0));
    tokio::spawn(proxy(listener, upstream.clone(), chaos.clone(), cuts.clone()));

    // Chaos: kill the server at random moments and restart it (on a new port) after a pause.
    let kills = Arc::new(AtomicUsize::new(0));
    let stop_chaos = Arc::new(AtomicBool::new(false));
    let chaos_task = {
        let (db, key, upstream, kills, stop) =
            (db.clone(), server_key.clone(), upstream.clone(), kills.clone(), stop_chaos.clone());
        tokio::task::spawn_blocking(move || {
            let mut server = Some(first);
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(rand::random_range(30..250)));
                if let Some(s) = server.take() {
                    s.kill();
                    kills.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(rand::random_range(0..100)));
                let s = ServerThread::start(db.clone(), key.clone(), 0);
                upstream.store(s.port, Ordering::SeqCst);
                server = Some(s);
            }
            server
        })
    };

    let mut cfg = SyncConfig::new(&proxy_url, &token);
    cfg.server_key = Some(hex::encode(server_key.verifying_key().as_bytes()));
    cfg.batch_size = 40;
    fast_retry(&mut cfg);
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut client_aborts, mut errors, mut rounds) = (0, 0, 0);
    loop {
        assert!(Instant::now() < deadline, "sync did not converge under chaos");
        rounds += 1;
        // The laptop keeps working while sync is being interrupted: new events keep arriving.
        if rounds <= 20 {
            record_more(&local, &tech_key, &mut logs, rounds, 15);
        }
        // The laptop itself is interrupted too: the sync future is dropped mid-flight.
        let limit = Duration::from_millis(rand::random_range(20..1500));
        match tokio::time::timeout(limit, fieldpatch_core::sync::sync(&cfg, &local, &|_| {})).await
        {
            Err(_) => client_aborts += 1,
            Ok(Err(e)) => {
                errors += 1;
                let msg = e.to_string();
                assert!(msg.contains("cannot reach") || msg.contains("answered 503"), "{msg}");
            }
            Ok(Ok(r)) => {
                assert!(r.rejected.is_empty(), "{:?}", r.rejected);
                let chaos_so_far = cuts.load(Ordering::SeqCst) + client_aborts;
                if r.pending_total() == 0
                    && rounds > 20
                    && kills.load(Ordering::SeqCst) >= 10
                    && chaos_so_far >= 10
                {
                    break;
                }
            }
        }
    }
    stop_chaos.store(true, Ordering::SeqCst);
    chaos.store(false, Ordering::SeqCst);
    let last = chaos_task.await.unwrap().unwrap();
    upstream.store(last.port, Ordering::SeqCst);

    // A calm final sync has nothing left to push.
    let report = fieldpatch_core::sync::sync(&cfg, &local, &|_| {}).await.unwrap();
    assert_eq!(report.pushed, 0);
    assert_eq!(report.pending_total(), 0);
    assert!(report.retryable.is_empty() && report.rejected.is_empty());
    assert_eq!(local.pulled().unwrap().sites.len(), 2);
    last.kill();

    let kills = kills.load(Ordering::SeqCst);
    let cuts = cuts.load(Ordering::SeqCst);
    eprintln!(
        "rounds {rounds}, server kills {kills}, connection cuts {cuts}, client aborts {client_aborts}, failed syncs {errors}"
    );
    assert!(kills >= 10 && cuts + client_aborts >= 10, "too little chaos to prove anything");

    stored_exactly_once(&db, &logs, &local, &server_key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_interrupted_sync_stores_every_event_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    interrupted_sync_stores_every_event_exactly_once(Db::Sqlite(dir.path().join("inventory.db")))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_interrupted_sync_stores_every_event_exactly_once() {
    let (_pg, url) = PgDatabase::create().await;
    interrupted_sync_stores_every_event_exactly_once(Db::Postgres(url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_and_pending_events_are_reported_and_pull_follows_assignments() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::Sqlite(dir.path().join("inventory.db"));
    let tech_key = SigningKey::generate(&mut rand::rng());
    let server_key = SigningKey::generate(&mut rand::rng());
    let token = provision(&db, &tech_key, "alice").await;
    let server = ServerThread::start(db.clone(), server_key.clone(), 0);

    let mut local = JsonLocal::new(&dir.path().join("laptop"));
    local.technician = Some(("alice".into(), tech_key.clone()));
    let good = make_log(&tech_key, 10);
    let mut bad = make_log(&tech_key, 6);
    bad[2].body.kind = EventKind::Note { text: "edited after signing".into() };
    // Signed by a key the server does not know for this technician.
    let stranger = SigningKey::generate(&mut rand::rng());
    let foreign = make_log(&stranger, 3);
    local.append(&good);
    local.append(&bad);
    local.append(&foreign);

    let mut cfg = SyncConfig::new(format!("http://127.0.0.1:{}", server.port), &token);
    cfg.batch_size = 4;
    fast_retry(&mut cfg);
    let report = fieldpatch_core::sync::sync(&cfg, &local, &|_| {}).await.unwrap();
    // Key pinned on first use.
    assert_eq!(report.server_key, hex::encode(server_key.verifying_key().as_bytes()));
    assert_eq!(report.pushed, 10 + 2);
    assert_eq!(report.pending.get(&bad[0].body.log_id), Some(&4));
    assert_eq!(report.pending.get(&foreign[0].body.log_id), Some(&3));
    assert_eq!(report.pending.get(&good[0].body.log_id), None);
    let codes: Vec<(u64, &str)> =
        report.rejected.iter().map(|p| (p.seq, p.code.as_str())).collect();
    assert!(codes.contains(&(3, "bad_signature")), "{codes:?}");
    assert!(codes.contains(&(4, "after_rejected")), "{codes:?}");
    assert!(codes.contains(&(1, "foreign_signer")), "{codes:?}");
    assert!(report.rejected.iter().all(|p| !p.reason.is_empty()));

    // The pull arrived: sites, work order, catalog with the bundle file checked and stored.
    let pull = local.pulled().unwrap();
    assert_eq!(pull.sites.len(), 2);
    assert_eq!(pull.work_orders[0].devices, ["s1-dev"]);
    assert_eq!(report.bundles_downloaded, 1);
    let sha = &pull.catalog[0].sha256;
    assert_eq!(std::fs::read(local.dir.join("bundles").join(sha)).unwrap(), b"bundle-file-bytes");
    // The confirmed event reached the inventory.
    let dev = pull.devices.iter().find(|d| d.id == "s1-dev").unwrap();
    assert_eq!(dev.current_firmware.as_deref(), Some("2.0.0"));
    // Device credentials: opened into the (stand-in) keyring, never written to the laptop's files.
    assert_eq!(report.credentials, 2);
    assert!(pull.credentials.is_empty(), "credentials must not reach the local store's files");
    assert_eq!(
        local.keyring.lock().unwrap().get(&("s2-dev".to_string(), "password".to_string())),
        Some(&b"password-of-s2-dev".to_vec())
    );
    for entry in walk(&local.dir) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(!bytes.windows(11).any(|w| w == b"password-of"), "secret in {}", entry.display());
    }

    // A second sync downloads nothing new; a revoked assignment disappears from the laptop.
    async fn unassign<S: Store>(s: S) {
        assert!(s.unassign("alice", "s2").await.unwrap());
    }
    if let Db::Sqlite(p) = &db {
        unassign(SqliteStore::open(p).await.unwrap()).await;
    }
    let report = fieldpatch_core::sync::sync(&cfg, &local, &|_| {}).await.unwrap();
    assert_eq!(report.bundles_downloaded, 0);
    assert_eq!(report.pushed, 0);
    assert_eq!(
        local.pulled().unwrap().sites.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["s1"]
    );

    // A wrong token is not retried and says what to do.
    let mut wrong = cfg.clone();
    wrong.token = "fpt_wrong".into();
    let e = fieldpatch_core::sync::sync(&wrong, &local, &|_| {}).await.unwrap_err().to_string();
    assert!(e.contains("new token"), "{e}");
    assert!(!e.contains("fpt_wrong"), "the token must not appear in errors: {e}");
    // A server with a different key than the pinned one is refused.
    let mut pinned = cfg.clone();
    pinned.server_key = Some(hex::encode(stranger.verifying_key().as_bytes()));
    local.append(&next_events(&tech_key, &good, 1));
    let e = fieldpatch_core::sync::sync(&pinned, &local, &|_| {}).await.unwrap_err().to_string();
    assert!(e.contains("unexpected server key"), "{e}");
    server.kill();
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `n` more events continuing `log`.
fn next_events(key: &SigningKey, log: &[Event], n: u64) -> Vec<Event> {
    let mut more = Chain::after(key, log.last().unwrap());
    (0..n).map(|_| more.event(None, EventKind::Note { text: "later".into() })).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_syncs_by_itself_once_the_server_is_reachable_and_can_be_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::Sqlite(dir.path().join("inventory.db"));
    let tech_key = SigningKey::generate(&mut rand::rng());
    let server_key = SigningKey::generate(&mut rand::rng());
    let token = provision(&db, &tech_key, "alice").await;
    let mut local = JsonLocal::new(&dir.path().join("laptop"));
    local.technician = Some(("alice".into(), tech_key.clone()));
    let local = Arc::new(local);
    let log = make_log(&tech_key, 20);
    local.append(&log);

    // Reserve a port, then keep the server down for a while.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cfg = SyncConfig::new(format!("http://127.0.0.1:{port}"), &token);
    fast_retry(&mut cfg);
    let options = WatchOptions {
        interval: Duration::from_secs(60),
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let watcher = {
        let (local, seen) = (local.clone(), seen.clone());
        tokio::spawn(async move {
            let on_event = move |e: WatchEvent| {
                let s = match e {
                    WatchEvent::Offline { .. } => "offline".to_string(),
                    WatchEvent::NetworkChanged => "network changed".to_string(),
                    WatchEvent::Reachable => "reachable".to_string(),
                    WatchEvent::Synced(r) => format!("synced {}", r.pushed),
                    WatchEvent::Failed(e) => format!("failed {e}"),
                    WatchEvent::Stopped => "stopped".to_string(),
                };
                seen.lock().unwrap().push(s);
            };
            fieldpatch_core::sync::watch(&cfg, &*local, options, stop_rx, None, &on_event).await
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(local.checkpoints().is_empty());
    let offline = seen.lock().unwrap().iter().filter(|s| *s == "offline").count();
    assert!(offline >= 3, "{:?}", seen.lock().unwrap());

    let server = ServerThread::start(db.clone(), server_key, port);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.lock().unwrap().iter().any(|s| s == "synced 20") {
        assert!(Instant::now() < deadline, "watch did not sync: {:?}", seen.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(local.checkpoints()[&log[0].body.log_id].checkpoint.last_seq, 20);

    // Turning it off stops it promptly even in the middle of a long interval.
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), watcher).await.unwrap().unwrap().unwrap();
    assert_eq!(seen.lock().unwrap().last().map(String::as_str), Some("stopped"));
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_and_the_online_check_over_https_trust_only_the_configured_root() {
    let dir = tempfile::tempdir().unwrap();
    let tls = self_signed(dir.path());
    let db = Db::Sqlite(dir.path().join("inventory.db"));
    let tech_key = SigningKey::generate(&mut rand::rng());
    let token = provision(&db, &tech_key, "alice").await;
    let files = fieldpatch_server::TlsFiles { cert: tls.cert.clone(), key: tls.key.clone() };
    let server =
        ServerThread::start_with(db, SigningKey::generate(&mut rand::rng()), 0, Some(files));
    let mut local = JsonLocal::new(&dir.path().join("laptop"));
    local.technician = Some(("alice".into(), tech_key.clone()));
    local.append(&make_log(&tech_key, 5));

    let mut cfg = SyncConfig::new(format!("https://127.0.0.1:{}", server.port), &token);
    fast_retry(&mut cfg);
    let e = fieldpatch_core::sync::sync(&cfg, &local, &|_| {}).await.unwrap_err().to_string();
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    assert!(local.checkpoints().is_empty());

    // The online check (the app's Home) trusts the same roots as sync.
    let url = format!("https://127.0.0.1:{}", server.port);
    let reachable = fieldpatch_core::overview::reachable;
    assert!(!reachable(&url, Duration::from_secs(3), None).await);
    assert!(reachable(&url, Duration::from_secs(3), Some(&tls.cert_pem())).await);

    cfg.root_certificate_pem = Some(tls.cert_pem());
    let report = fieldpatch_core::sync::sync(&cfg, &local, &|_| {}).await.unwrap();
    assert_eq!(report.pushed, 5);
    assert_eq!(report.credentials, 2);
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_change_nudge_makes_watch_probe_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::Sqlite(dir.path().join("inventory.db"));
    let tech_key = SigningKey::generate(&mut rand::rng());
    let token = provision(&db, &tech_key, "alice").await;
    let mut local = JsonLocal::new(&dir.path().join("laptop"));
    local.technician = Some(("alice".into(), tech_key.clone()));
    local.append(&make_log(&tech_key, 3));
    let local = Arc::new(local);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cfg = SyncConfig::new(format!("http://127.0.0.1:{port}"), &token);
    fast_retry(&mut cfg);
    // After the first failed probe the next one would be a minute away.
    let options = WatchOptions {
        interval: Duration::from_secs(60),
        initial_backoff: Duration::from_secs(60),
        max_backoff: Duration::from_secs(60),
    };
    let nudge = Arc::new(tokio::sync::Notify::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let events = Arc::new(AtomicUsize::new(0));
    let synced = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (local, nudge, events, synced) =
            (local.clone(), nudge.clone(), events.clone(), synced.clone());
        tokio::spawn(async move {
            let on_event = move |e: WatchEvent| {
                events.fetch_add(1, Ordering::SeqCst);
                if matches!(e, WatchEvent::Synced(ref r) if r.pushed == 3) {
                    synced.store(true, Ordering::SeqCst);
                }
            };
            fieldpatch_core::sync::watch(&cfg, &*local, options, stop_rx, Some(&nudge), &on_event)
                .await
        })
    };
    while events.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let server = ServerThread::start(db, SigningKey::generate(&mut rand::rng()), port);
    nudge.notify_one();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !synced.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the nudge did not trigger a sync");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), watcher).await.unwrap().unwrap().unwrap();
    server.kill();
}

// ---------------------------------------------------------------------------------------------
// Sync under a restarting database and a partitioned network.

use std::process::Command;

/// A PostgreSQL cluster of the test's own, so it can be stopped and started without touching the
/// shared one: `initdb` as the `postgres` user (PostgreSQL refuses to run as root) in a temporary
/// folder, listening on a free loopback port; stopped and removed on drop.
struct PrivatePg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl PrivatePg {
    fn start() -> PrivatePg {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's server programs are in /usr/lib/postgresql (scripts/setup)")
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("pg_ctl").exists())
            .max()
            .expect("pg_ctl in /usr/lib/postgresql/*/bin");
        let dir = tempfile::tempdir().unwrap();
        let owner = Command::new("id").args(["-u", "postgres"]).output().unwrap();
        let uid: u32 = String::from_utf8_lossy(&owner.stdout).trim().parse().unwrap();
        std::os::unix::fs::chown(dir.path(), Some(uid), None).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let pg = PrivatePg { dir, bin, port };
        pg.as_postgres("initdb", &["-A", "trust", "-U", "postgres", "--no-sync", "-D"], true);
        pg.ctl(&["start"]);
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Run one of PostgreSQL's programs as the `postgres` user; `data` appends the data folder.
    fn as_postgres(&self, program: &str, args: &[&str], data: bool) {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(self.bin.join(program)).args(args);
        if data {
            c.arg(self.data());
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `pg_ctl ACTION` on this cluster, waiting for it to finish.
    fn ctl(&self, action: &[&str]) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log");
        let mut args = vec!["-w", "-D"];
        let data = self.data();
        let data = data.to_str().unwrap().to_string();
        args.push(&data);
        args.extend(["-o", &options, "-l", log.to_str().unwrap()]);
        args.extend(action);
        self.as_postgres("pg_ctl", &args, false);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-w", "-m", "immediate", "stop", "-D"])
            .arg(self.data())
            .output();
    }
}

/// Every event of `logs` is stored once, identical to the laptop's, and the laptop holds a
/// checkpoint for each log's last event signed by the server.
async fn stored_exactly_once(
    db: &Db,
    logs: &[Vec<Event>],
    local: &JsonLocal,
    server_key: &SigningKey,
) {
    let mut rows = 0;
    for log in logs {
        let (held, n) = stored(db, log[0].body.log_id).await;
        rows = n;
        let expected: Vec<(u64, String, String)> =
            log.iter().map(|e| (e.body.seq, e.body.id.to_string(), e.hash())).collect();
        assert_eq!(held, expected);
        let cp = &local.checkpoints()[&log[0].body.log_id];
        assert_eq!(cp.checkpoint.last_seq, log.len() as u64);
        assert_eq!(cp.checkpoint.last_hash, log.last().unwrap().hash());
        cp.verify(&hex::encode(server_key.verifying_key().as_bytes())).unwrap();
    }
    assert_eq!(rows as usize, logs.iter().map(Vec::len).sum::<usize>());
}

/// The laptop of `alice` (key `key`) in `dir`, holding one log per entry of `lengths`.
fn laptop_with_logs(dir: &Path, key: &SigningKey, lengths: &[u64]) -> (JsonLocal, Vec<Vec<Event>>) {
    let mut local = JsonLocal::new(dir);
    local.technician = Some(("alice".into(), key.clone()));
    let logs: Vec<Vec<Event>> = lengths.iter().map(|n| make_log(key, *n)).collect();
    for log in &logs {
        local.append(log);
    }
    (local, logs)
}

/// The laptop keeps working while sync is disturbed: `n` new events on one of its logs (which
/// one turns with `round`).
fn record_more(local: &JsonLocal, key: &SigningKey, logs: &mut [Vec<Event>], round: usize, n: u64) {
    let i = round % logs.len();
    let more = next_events(key, &logs[i], n);
    local.append(&more);
    logs[i].extend(more);
}

/// The inventory's database is restarted again and again while laptops push: stopped cleanly
/// and crashed (`pg_ctl stop -m immediate`, what a power cut does to it), then started. The
/// server keeps running; while the database is away it answers with a retryable error, the
/// client retries, and in the end every event is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarts_during_pushes_lose_and_duplicate_nothing() {
    let pg = tokio::task::spawn_blocking(PrivatePg::start).await.unwrap();
    let db = Db::Postgres(pg.url());
    let dir = tempfile::tempdir().unwrap();
    let tech_key = SigningKey::generate(&mut rand::rng());
    let server_key = SigningKey::generate(&mut rand::rng());
    let token = provision(&db, &tech_key, "alice").await;
    let (local, mut logs) = laptop_with_logs(&dir.path().join("laptop"), &tech_key, &[400, 300]);
    let server = ServerThread::start(db.clone(), server_key.clone(), 0);
    let pg = Arc::new(pg);
    let stop = Arc::new(AtomicBool::new(false));
    let restarts = Arc::new(AtomicUsize::new(0));
    let base = format!("http://127.0.0.1:{}", server.port);
    let chaos = {
        let (pg, stop, restarts, base, token) =
            (pg.clone(), stop.clone(), restarts.clone(), base.clone(), token.clone());
        tokio::task::spawn_blocking(move || {
            // What the server answers a pull while its database is down.
            let mut answers = Vec::new();
            let http = reqwest::blocking::Client::new();
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(rand::random_range(50..400)));
                let n = restarts.load(Ordering::SeqCst);
                let mode = if n % 2 == 0 { "immediate" } else { "fast" };
                pg.ctl(&["-m", mode, "stop"]);
                // Asked on two outages only: the server waits for its pool's acquire timeout
                // (10 s) before it answers.
                if n < 2 {
                    let answer = http.get(format!("{base}/v1/pull")).bearer_auth(&token).send();
                    answers.push(answer.map(|r| r.status().as_u16()).map_err(|e| e.to_string()));
                }
                std::thread::sleep(Duration::from_millis(rand::random_range(0..300)));
                pg.ctl(&["start"]);
                restarts.fetch_add(1, Ordering::SeqCst);
            }
            answers
        })
    };
    let mut cfg = SyncConfig::new(&base, &token);
    cfg.server_key = Some(hex::encode(server_key.verifying_key().as_bytes()));
    cfg.batch_size = 25;
    fast_retry(&mut cfg);
    let deadline = Instant::now() + Duration::from_secs(180);
    let (mut rounds, mut failed) = (0, Vec::new());
    loop {
        assert!(Instant::now() < deadline, "sync did not converge while the database restarted");
        rounds += 1;
        if rounds <= 15 {
            record_more(&local, &tech_key, &mut logs, rounds, 20);
        }
        match fieldpatch_core::sync::sync(&cfg, &local, &|_| {}).await {
            Err(e) => failed.push(e.to_string()),
            Ok(r) => {
                assert!(r.rejected.is_empty(), "{:?}", r.rejected);
                if r.pending_total() == 0 && rounds > 15 && restarts.load(Ordering::SeqCst) >= 6 {
                    break;
                }
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    let answers = chaos.await.unwrap();
    let report = fieldpatch_core::sync::sync(&cfg, &local, &|_| {}).await.unwrap();
    assert_eq!((report.pushed, report.pending_total()), (0, 0));
    server.kill();
    eprintln!(
        "rounds {rounds}, database restarts {}, failed syncs {}",
        restarts.load(Ordering::SeqCst),
        failed.len()
    );
    // While the database was away the server said so with a retryable answer, never a 500.
    assert_eq!(answers, [Ok(503), Ok(503)]);
    for e in &failed {
        assert!(e.contains("answered 503") || e.contains("cannot reach"), "{e}");
    }
    stored_exactly_once(&db, &logs, &local, &server_key).await;
}

/// The laptop and the inventory on two network namespaces joined by a veth pair, and the
/// network partitioned in the middle of pushes: the laptop's route to the server removed (its
/// connections fail at once) or the server's link taken down (packets vanish; the laptop's
/// requests time out), then restored. The client converges by itself, and every event is stored
/// exactly once.
#[test]
fn network_partitions_during_pushes_lose_and_duplicate_nothing() {
    use fieldpatch_lab::netns::VethPair;
    let pair = Arc::new(VethPair::create().expect("network namespaces (run the tests as root)"));
    let dir = tempfile::tempdir().unwrap();
    let db = Db::Sqlite(dir.path().join("inventory.db"));
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let tech_key = SigningKey::generate(&mut rand::rng());
    let server_key = SigningKey::generate(&mut rand::rng());
    let token = rt.block_on(provision(&db, &tech_key, "alice"));
    let (local, mut logs) = laptop_with_logs(&dir.path().join("laptop"), &tech_key, &[400, 300]);
    // The server serves in namespace `a`, at its veth address, over TLS as it must off loopback.
    let tls = fieldpatch_testkit::tls::self_signed_for(dir.path(), &format!("IP:{}", pair.addr_a));
    let files = fieldpatch_server::TlsFiles { cert: tls.cert.clone(), key: tls.key.clone() };
    let at = std::net::SocketAddr::from((pair.addr_a, 0));
    let (sdb, skey) = (db.clone(), server_key.clone());
    let server = pair.a.run(move || ServerThread::start_on(sdb, skey, at, Some(files))).unwrap();
    let url = format!("https://{}:{}", pair.addr_a, server.port);
    let root = tls.cert_pem();

    let stop = Arc::new(AtomicBool::new(false));
    let partitions = Arc::new(AtomicUsize::new(0));
    let chaos = {
        let (pair, stop, partitions) = (pair.clone(), stop.clone(), partitions.clone());
        std::thread::spawn(move || {
            let route = format!("{}/24", std::net::Ipv4Addr::new(192, 0, 2, 0));
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(rand::random_range(100..500)));
                let n = partitions.load(Ordering::SeqCst);
                let cut = Duration::from_millis(rand::random_range(200..1500));
                if n % 2 == 0 {
                    pair.b.ip(&["route", "del", &route, "dev", &pair.if_b]).unwrap();
                    std::thread::sleep(cut);
                    pair.b.ip(&["route", "add", &route, "dev", &pair.if_b]).unwrap();
                } else {
                    pair.a.ip(&["link", "set", &pair.if_a, "down"]).unwrap();
                    std::thread::sleep(cut);
                    pair.a.ip(&["link", "set", &pair.if_a, "up"]).unwrap();
                    // The server's address comes back with its link; wait until it answers ARP.
                    let until = Instant::now() + Duration::from_secs(5);
                    while Instant::now() < until
                        && !pair
                            .a
                            .ip(&["-o", "link", "show", &pair.if_a])
                            .is_ok_and(|s| s.contains("state UP"))
                    {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                partitions.fetch_add(1, Ordering::SeqCst);
            }
        })
    };

    // The laptop syncs from namespace `b`.
    let (ckey, ctoken, stop_client, parts, tkey) =
        (server_key.clone(), token.clone(), stop.clone(), partitions.clone(), tech_key.clone());
    let client = pair.b.run(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut cfg = SyncConfig::new(&url, &ctoken);
            cfg.server_key = Some(hex::encode(ckey.verifying_key().as_bytes()));
            cfg.root_certificate_pem = Some(root);
            cfg.batch_size = 25;
            fast_retry(&mut cfg);
            cfg.timeout = Duration::from_secs(2);
            let deadline = Instant::now() + Duration::from_secs(240);
            let (mut rounds, mut failed) = (0usize, Vec::new());
            loop {
                assert!(Instant::now() < deadline, "sync did not converge across partitions");
                rounds += 1;
                // The laptop keeps recording while the network comes and goes.
                if parts.load(Ordering::SeqCst) < 6 {
                    record_more(&local, &tkey, &mut logs, rounds, 20);
                }
                match fieldpatch_core::sync::sync(&cfg, &local, &|_| {}).await {
                    Err(e) => failed.push(e.to_string()),
                    Ok(r) => {
                        assert!(r.rejected.is_empty(), "{:?}", r.rejected);
                        if r.pending_total() == 0 && parts.load(Ordering::SeqCst) >= 6 {
                            break;
                        }
                    }
                }
            }
            stop_client.store(true, Ordering::SeqCst);
            (local, logs, rounds, failed)
        })
    });
    stop.store(true, Ordering::SeqCst);
    chaos.join().unwrap();
    let (local, logs, rounds, failed) = client.unwrap();
    eprintln!(
        "rounds {rounds}, partitions {}, failed syncs {}",
        partitions.load(Ordering::SeqCst),
        failed.len()
    );
    for e in &failed {
        assert!(e.contains("cannot reach") || e.contains("answered 503"), "{e}");
    }
    rt.block_on(stored_exactly_once(&db, &logs, &local, &server_key));
    server.kill();
}
