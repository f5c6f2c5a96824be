//! The sync client: push-then-pull over HTTPS (reqwest + rustls), retries, and `--watch`.

use super::sealed::SealedCredential;
use super::wire::{
    ApiErrorBody, CatalogEntry, CheckpointError, EventProblem, PullResponse, PushAck, PushRequest,
    SignedCheckpoint,
};
use crate::visitlog::Event;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;
use uuid::Uuid;

/// One local visit log, as sync sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogCursor {
    pub log_id: Uuid,
    /// Last seq the server has countersigned (0 when nothing was pushed yet).
    pub pushed_seq: u64,
    /// Last seq appended locally.
    pub last_seq: u64,
}

/// What sync needs from the laptop's local store. The store implements it; this module never
/// touches SQL. Every method must be atomic: a call either fully happens or not at all, so sync
/// can be interrupted anywhere.
pub trait SyncLocal: Send + Sync {
    /// The store's error; shown to the technician as is.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Every local visit log with its pushed and appended heads.
    fn cursors(&self) -> impl Future<Output = Result<Vec<LogCursor>, Self::Error>> + Send;

    /// Up to `limit` events of `log_id` with `seq > after_seq`, in seq order.
    fn events_after(
        &self,
        log_id: Uuid,
        after_seq: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Event>, Self::Error>> + Send;

    /// Held for the whole of one sync, so that two syncs of this store from one process
    /// (automatic sync and "sync now") run one after the other instead of overlapping. By default
    /// nothing is held.
    fn sync_turn(&self) -> impl Future<Output = Option<tokio::sync::OwnedMutexGuard<()>>> + Send {
        async { None }
    }

    /// Persist a checkpoint the server countersigned (already verified). Afterwards
    /// [`SyncLocal::cursors`] reports `pushed_seq = checkpoint.last_seq` for that log.
    fn record_checkpoint(
        &self,
        checkpoint: &SignedCheckpoint,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// A push of this sync moved the head of `checkpoint`'s log (the checkpoint is verified and
    /// already recorded): remember it where a log started after this store is lost can find it
    /// (the laptop's store keeps it in the OS keyring, see `visitlog::continuity`). Called once
    /// per log and sync. By default nothing is remembered.
    fn record_pushed_head(
        &self,
        checkpoint: &SignedCheckpoint,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = checkpoint;
        std::future::ready(Ok(()))
    }

    /// Whether the bundle file with this SHA-256 (hex) is already stored locally.
    fn has_bundle(&self, sha256: &str) -> impl Future<Output = Result<bool, Self::Error>> + Send;

    /// Make the OS keyring hold exactly these device credentials among those sync provisioned:
    /// open each with the technician's signing key and `technician_id` (as the server names the
    /// technician; [`SealedCredential::open`]), write it to the keyring, and delete
    /// sync-provisioned credentials that are no longer listed (a revoked assignment). Never write
    /// them to the database or a file.
    fn apply_credentials(
        &self,
        technician_id: &str,
        sealed: Vec<SealedCredential>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Replace the local copy of sites, devices, work orders, catalog and trust store with `pull`,
    /// storing the new bundle files given (each already checked against its SHA-256), in one
    /// transaction.
    fn apply_pull(
        &self,
        pull: &PullResponse,
        bundles: Vec<(CatalogEntry, Vec<u8>)>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// Retries of transport failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request, including the first.
    pub attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 6,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    fn delay(&self, attempt: u32) -> Duration {
        let base = self.initial_backoff.saturating_mul(1u32 << attempt.min(16));
        let capped = base.min(self.max_backoff);
        // Up to 25% jitter so many laptops do not retry in lockstep.
        let jitter = rand::random::<f64>() * 0.25;
        capped.mul_f64(1.0 + jitter).min(self.max_backoff)
    }
}

/// Where and how to sync.
#[derive(Clone)]
pub struct SyncConfig {
    /// Base URL, e.g. `https://inventory.example:8470`.
    pub server: String,
    /// The technician's API token (from the OS keyring; never logged).
    pub token: String,
    /// Hex ed25519 key the server countersigns checkpoints with. `None` pins the key the server
    /// announces on the first sync (the caller should then store [`SyncReport::server_key`]).
    pub server_key: Option<String>,
    /// Events per push.
    pub batch_size: usize,
    pub retry: RetryPolicy,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Extra trusted root certificate (PEM), e.g. a private inventory CA.
    pub root_certificate_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for SyncConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncConfig")
            .field("server", &self.server)
            .field("token", &"<redacted>")
            .field("server_key", &self.server_key)
            .field("batch_size", &self.batch_size)
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl SyncConfig {
    /// Defaults: 500 events per push, [`RetryPolicy::default`], 30 s per request.
    pub fn new(server: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            server: server.into().trim_end_matches('/').to_string(),
            token: token.into(),
            server_key: None,
            batch_size: 500,
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(30),
            root_certificate_pem: None,
        }
    }
}

/// Why sync stopped.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(
        "cannot reach the inventory server at {server} after {attempts} attempts: {detail}; nothing is lost, sync again when online"
    )]
    Unreachable { server: String, attempts: u32, detail: String },
    #[error(
        "the inventory server refused the token (HTTP 401): ask the inventory team for a new token"
    )]
    Unauthorized,
    #[error("the inventory server answered {status} to {what}: {code}: {message}")]
    Server { what: String, status: u16, code: String, message: String },
    #[error("the inventory server sent an answer to {what} that cannot be read: {detail}")]
    BadResponse { what: String, detail: String },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(
        "the server acknowledged log {log_id} up to seq {seq} with hash {server_hash}, but the local event has hash {local_hash}: the local log and the server disagree; do not delete the local log and contact the inventory team"
    )]
    CheckpointMismatch { log_id: Uuid, seq: u64, server_hash: String, local_hash: String },
    #[error(
        "log {log_id} on this laptop no longer matches the inventory server's copy: the server holds seq 1 to {server_seq} of it, and this laptop's copy is not the same from seq {seq} on (the data directory was restored from an older copy, or the log was changed). Syncing again cannot fix this, so none of this log's new events are sent: keep this data directory as it is (every event stays in the local store) and contact the inventory team, whose log-continuity report lists this log as cut"
    )]
    LogDiverged { log_id: Uuid, seq: u64, server_seq: u64 },
    #[error(
        "bundle {bundle_id} {version} from the catalog does not match its published SHA-256; it was not stored"
    )]
    BundleHash { bundle_id: String, version: String },
    #[error("invalid TLS root certificate: {0}")]
    Certificate(String),
    #[error("local store: {0}")]
    Local(Box<dyn std::error::Error + Send + Sync>),
    #[error("refusing to sync with {server}: {why}")]
    InsecureServer { server: String, why: String },
}

impl SyncError {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            SyncError::Unreachable { .. } => "offline",
            SyncError::Unauthorized => "unauthorized",
            SyncError::Server { .. } => "server",
            SyncError::BadResponse { .. } => "bad_response",
            SyncError::Checkpoint(_) | SyncError::CheckpointMismatch { .. } => "checkpoint",
            SyncError::LogDiverged { .. } => "log_diverged",
            SyncError::BundleHash { .. } => "bundle_hash",
            SyncError::Certificate(_) => "certificate",
            SyncError::Local(e) => e
                .downcast_ref::<super::LocalSyncError>()
                .map_or("local_store", super::LocalSyncError::code),
            SyncError::InsecureServer { .. } => "insecure_server",
        }
    }
}

/// What one sync did and what is left.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SyncReport {
    /// Events the server newly countersigned in this sync.
    pub pushed: u64,
    /// Events still not countersigned, per log.
    pub pending: BTreeMap<Uuid, u64>,
    /// Events the server will take later (e.g. earlier events missing), with reasons.
    pub retryable: Vec<EventProblem>,
    /// Events the server will never take as they are, with reasons.
    pub rejected: Vec<EventProblem>,
    /// Events the server keeps but did not apply to the inventory, with reasons (for example
    /// about a device at a site not assigned to the technician).
    pub not_applied: Vec<EventProblem>,
    /// The server key the checkpoints were verified against.
    pub server_key: String,
    pub sites: usize,
    pub devices: usize,
    pub work_orders: usize,
    pub catalog: usize,
    /// Bundle files downloaded in this sync.
    pub bundles_downloaded: usize,
    /// Device credentials delivered for the assigned sites.
    pub credentials: usize,
}

impl SyncReport {
    /// Events not yet on the server.
    pub fn pending_total(&self) -> u64 {
        self.pending.values().sum()
    }
}

/// Progress of the push phase, for the CLI and the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushProgress {
    pub log_id: Uuid,
    pub pushed_seq: u64,
    pub last_seq: u64,
}

/// The bearer token only ever travels over TLS, or to this machine itself: refuse a plain
/// `http://` server anywhere else before any request is made.
pub fn check_transport(server: &str) -> Result<(), SyncError> {
    let insecure =
        |why: &str| SyncError::InsecureServer { server: server.to_string(), why: why.into() };
    let url = reqwest::Url::parse(server).map_err(|e| insecure(&format!("not a URL: {e}")))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" => {
            let host = url.host_str().unwrap_or_default();
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err(insecure("plain http:// would send the sync token unencrypted; use https://"))
            }
        }
        other => Err(insecure(&format!("unsupported scheme {other}:// (use https://)"))),
    }
}

struct Http {
    client: reqwest::Client,
    cfg: SyncConfig,
}

enum Attempt<T> {
    Done(T),
    Retry(String),
    Fail(SyncError),
}

impl Http {
    fn new(cfg: &SyncConfig) -> Result<Self, SyncError> {
        check_transport(&cfg.server)?;
        // rustls, verifying against the OS trust store (rustls-platform-verifier) plus the
        // configured root, if any.
        let mut builder = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .tls_backend_rustls();
        if let Some(pem) = &cfg.root_certificate_pem {
            let cert = reqwest::Certificate::from_pem(pem)
                .map_err(|e| SyncError::Certificate(e.to_string()))?;
            builder = builder.tls_certs_merge([cert]);
        }
        let client = builder.build().map_err(|e| SyncError::Certificate(e.to_string()))?;
        Ok(Self { client, cfg: cfg.clone() })
    }

    async fn classify(what: &str, resp: reqwest::Response) -> Attempt<reqwest::Response> {
        let status = resp.status();
        if status.is_success() {
            return Attempt::Done(resp);
        }
        if status.as_u16() == 401 {
            return Attempt::Fail(SyncError::Unauthorized);
        }
        let body = resp.text().await.unwrap_or_default();
        let (code, message) = match serde_json::from_str::<ApiErrorBody>(&body) {
            Ok(b) => (b.code, b.message),
            Err(_) => ("http".to_string(), body.chars().take(200).collect()),
        };
        if status.is_server_error() || status.as_u16() == 429 {
            return Attempt::Retry(format!("HTTP {status}: {code}: {message}"));
        }
        Attempt::Fail(SyncError::Server {
            what: what.to_string(),
            status: status.as_u16(),
            code,
            message,
        })
    }

    /// Send a request built by `build` until the whole answer body arrives, retrying transport
    /// failures (refused, cut, timed out, 5xx) with backoff.
    async fn send(
        &self,
        what: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<Vec<u8>, SyncError> {
        let policy = self.cfg.retry;
        let attempts = policy.attempts.max(1);
        let mut last = String::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(policy.delay(attempt - 1)).await;
            }
            let req = build(&self.client).bearer_auth(&self.cfg.token);
            let outcome = match req.send().await {
                Err(e) => Attempt::Retry(describe(&e)),
                Ok(resp) => match Self::classify(what, resp).await {
                    Attempt::Done(resp) => match resp.bytes().await {
                        Ok(b) => Attempt::Done(b.to_vec()),
                        Err(e) => Attempt::Retry(describe(&e)),
                    },
                    Attempt::Retry(r) => Attempt::Retry(r),
                    Attempt::Fail(f) => Attempt::Fail(f),
                },
            };
            match outcome {
                Attempt::Done(b) => return Ok(b),
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry(r) => {
                    tracing::debug!(what, attempt, reason = %r, "retrying");
                    last = r;
                }
            }
        }
        Err(SyncError::Unreachable { server: self.cfg.server.clone(), attempts, detail: last })
    }

    async fn send_json<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<T, SyncError> {
        let body = self.send(what, build).await?;
        serde_json::from_slice(&body)
            .map_err(|e| SyncError::BadResponse { what: what.to_string(), detail: e.to_string() })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.cfg.server)
    }
}

/// A transport error without the URL's query (never carries the token: it travels in a header).
fn describe(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

fn local<E: std::error::Error + Send + Sync + 'static>(e: E) -> SyncError {
    SyncError::Local(Box::new(e))
}

/// Whether the server's copy of log `log_id` is the laptop's, after a push of `sent`: it is not
/// when the server refused an event because it holds another one at that seq (`conflict`) or
/// one that does not link to its head (`broken_chain` right above it), or when its countersigned head (at or above `pushed`, what this
/// laptop had pushed before) is an event the laptop does not hold (`local_last`: its last seq as
/// sync started). That happens to a data directory restored from an older copy: the laptop
/// appends again at seqs the server has, and no retry can change the answer, so sync stops with
/// [`SyncError::LogDiverged`]. A head below `pushed` (the server lost events) is left to the
/// caller's gap handling.
async fn check_same_log<L: SyncLocal>(
    store: &L,
    log_id: Uuid,
    pushed: u64,
    local_last: u64,
    sent: &[Event],
    ack: &PushAck,
) -> Result<(), SyncError> {
    let Some(head) = ack.checkpoints.iter().map(|c| &c.checkpoint).find(|c| c.log_id == log_id)
    else {
        return Ok(());
    };
    let server_seq = head.last_seq;
    let refused = ack
        .rejected
        .iter()
        .filter(|p| p.log_id == log_id)
        .filter(|p| p.code == "conflict" || (p.code == "broken_chain" && p.seq == server_seq + 1))
        .map(|p| p.seq)
        .min();
    if let Some(seq) = refused {
        return Err(SyncError::LogDiverged { log_id, seq, server_seq });
    }
    if server_seq < pushed.max(1) {
        return Ok(());
    }
    let local_event = match sent.iter().find(|e| e.body.seq == server_seq) {
        Some(e) => Some(e.clone()),
        None => store.events_after(log_id, server_seq - 1, 1).await.map_err(local)?.pop(),
    };
    match local_event {
        Some(e) if e.body.seq == server_seq && e.hash() == head.last_hash => Ok(()),
        Some(e) if e.body.seq == server_seq => {
            Err(SyncError::LogDiverged { log_id, seq: server_seq, server_seq })
        }
        // The laptop's log ends below the server's head: it lost events the server holds.
        _ => {
            let local_head = sent.iter().map(|e| e.body.seq).max().unwrap_or(0).max(local_last);
            Err(SyncError::LogDiverged { log_id, seq: local_head + 1, server_seq })
        }
    }
}

/// Push every pending event, then pull the next trip's data. Resumable: it starts from the
/// checkpoints recorded by earlier (possibly interrupted) syncs.
pub async fn sync<L: SyncLocal>(
    cfg: &SyncConfig,
    store: &L,
    progress: &(dyn Fn(PushProgress) + Send + Sync),
) -> Result<SyncReport, SyncError> {
    let _turn = store.sync_turn().await;
    let http = Http::new(cfg)?;
    let mut report = SyncReport::default();
    let server_key = match &cfg.server_key {
        Some(k) => k.to_ascii_lowercase(),
        None => {
            #[derive(serde::Deserialize)]
            struct KeyBody {
                public_key: String,
            }
            let k: KeyBody =
                http.send_json("GET /v1/server-key", |c| c.get(http.url("/v1/server-key"))).await?;
            k.public_key.to_ascii_lowercase()
        }
    };
    report.server_key = server_key.clone();

    // Push, log by log, batch by batch.
    for cursor in store.cursors().await.map_err(local)? {
        let mut pushed = cursor.pushed_seq;
        let mut rewound = false;
        let mut advanced: Option<SignedCheckpoint> = None;
        while pushed < cursor.last_seq {
            let batch = store
                .events_after(cursor.log_id, pushed, cfg.batch_size.max(1))
                .await
                .map_err(local)?;
            if batch.is_empty() {
                break;
            }
            let request = PushRequest { events: batch };
            let ack: PushAck = http
                .send_json("POST /v1/push", |c| c.post(http.url("/v1/push")).json(&request))
                .await?;
            let before = pushed;
            for cp in &ack.checkpoints {
                cp.verify(&server_key)?;
            }
            check_same_log(store, cursor.log_id, before, cursor.last_seq, &request.events, &ack)
                .await?;
            for cp in &ack.checkpoints {
                if cp.checkpoint.log_id != cursor.log_id {
                    continue;
                }
                if cp.checkpoint.last_seq > pushed {
                    store.record_checkpoint(cp).await.map_err(local)?;
                    report.pushed += cp.checkpoint.last_seq - pushed;
                    pushed = cp.checkpoint.last_seq;
                    advanced = Some(cp.clone());
                }
            }
            progress(PushProgress {
                log_id: cursor.log_id,
                pushed_seq: pushed,
                last_seq: cursor.last_seq,
            });
            // The server lost events it had countersigned (a power cut, a restore from backup):
            // it answers a gap and its signed head, and the events go again from there, once.
            let gap = ack.retryable.iter().any(|p| p.log_id == cursor.log_id && p.code == "gap");
            let server_head = ack
                .checkpoints
                .iter()
                .find(|c| c.checkpoint.log_id == cursor.log_id)
                .map(|c| (c.checkpoint.last_seq, c.checkpoint.last_hash.clone()));
            let head_seq = server_head.as_ref().map_or(0, |(seq, _)| *seq);
            if gap && !rewound && head_seq < before {
                if let Some((seq, hash)) = &server_head
                    && *seq > 0
                {
                    let at = store.events_after(cursor.log_id, seq - 1, 1).await.map_err(local)?;
                    let local_hash = at.first().map(|e| e.hash()).unwrap_or_default();
                    if &local_hash != hash {
                        return Err(SyncError::CheckpointMismatch {
                            log_id: cursor.log_id,
                            seq: *seq,
                            server_hash: hash.clone(),
                            local_hash,
                        });
                    }
                }
                rewound = true;
                pushed = head_seq;
                continue;
            }
            report.retryable.extend(ack.retryable);
            report.rejected.extend(ack.rejected);
            report.not_applied.extend(ack.not_applied);
            if pushed == before {
                // The server took nothing new from this log: the reasons are in the report.
                break;
            }
        }
        if cursor.last_seq > pushed {
            report.pending.insert(cursor.log_id, cursor.last_seq - pushed);
        }
        if let Some(cp) = advanced.filter(|_| pushed > cursor.pushed_seq) {
            store.record_pushed_head(&cp).await.map_err(local)?;
        }
    }

    // Pull.
    let mut pull: PullResponse =
        http.send_json("GET /v1/pull", |c| c.get(http.url("/v1/pull"))).await?;
    let mut bundles = Vec::new();
    for entry in &pull.catalog {
        if store.has_bundle(&entry.sha256).await.map_err(local)? {
            continue;
        }
        let path = format!("/v1/catalog/{}", entry.sha256);
        let bytes = http.send("GET /v1/catalog/{sha256}", |c| c.get(http.url(&path))).await?;
        if hex::encode(Sha256::digest(&bytes)) != entry.sha256.to_ascii_lowercase()
            || bytes.len() as u64 != entry.size
        {
            return Err(SyncError::BundleHash {
                bundle_id: entry.bundle_id.clone(),
                version: entry.version.clone(),
            });
        }
        bundles.push((entry.clone(), bytes));
    }
    report.sites = pull.sites.len();
    report.devices = pull.devices.len();
    report.work_orders = pull.work_orders.len();
    report.catalog = pull.catalog.len();
    report.bundles_downloaded = bundles.len();
    let credentials = std::mem::take(&mut pull.credentials);
    report.credentials = credentials.len();
    store.apply_credentials(&pull.technician_id, credentials).await.map_err(local)?;
    store.apply_pull(&pull, bundles).await.map_err(local)?;
    Ok(report)
}

/// How `watch` probes the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchOptions {
    /// Time between syncs while the server is reachable.
    pub interval: Duration,
    /// First probe delay after the server became unreachable; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(300),
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(120),
        }
    }
}

/// What `watch` reports as it goes, for the technician to see.
#[derive(Debug)]
pub enum WatchEvent {
    /// The server did not answer the probe; the next probe is in `retry_in`.
    Offline {
        retry_in: Duration,
        detail: String,
    },
    /// The network changed (or the app asked): probing now.
    NetworkChanged,
    /// The server answered; a sync starts.
    Reachable,
    Synced(SyncReport),
    Failed(SyncError),
    Stopped,
}

impl WatchEvent {
    /// A stable kind for the app and `--json`: `offline`, `probing`, `reachable`, `synced`,
    /// `failed` or `stopped`.
    pub fn kind(&self) -> &'static str {
        match self {
            WatchEvent::Offline { .. } => "offline",
            WatchEvent::NetworkChanged => "probing",
            WatchEvent::Reachable => "reachable",
            WatchEvent::Synced(_) => "synced",
            WatchEvent::Failed(_) => "failed",
            WatchEvent::Stopped => "stopped",
        }
    }
}

/// One line for the technician, the same in the CLI and the app.
impl std::fmt::Display for WatchEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WatchEvent::Offline { retry_in, detail } => write!(
                f,
                "server unreachable ({detail}); next try in {}s",
                retry_in.as_secs_f32().ceil()
            ),
            WatchEvent::NetworkChanged => f.write_str("network changed: probing the server now"),
            WatchEvent::Reachable => f.write_str("server reachable: syncing"),
            WatchEvent::Synced(r) => write!(
                f,
                "synced: pushed {}, pending {}, rejected {}; pulled {} device(s), {} bundle(s)",
                r.pushed,
                r.pending_total(),
                r.rejected.len(),
                r.devices,
                r.catalog
            ),
            WatchEvent::Failed(e) => write!(f, "sync failed: {e}"),
            WatchEvent::Stopped => f.write_str("automatic sync is off"),
        }
    }
}

/// Probe the server and sync whenever it is reachable, until `stop` turns true. Unreachable
/// servers are probed with exponential backoff; a reachable server is synced every
/// `options.interval` (and immediately when it comes back). A notification on `nudge` (a network
/// change reported by the OS, see [`super::netwatch`], or the app) probes at once and resets the
/// backoff. The server key announced by the first sync is pinned for the following ones.
pub async fn watch<L: SyncLocal>(
    cfg: &SyncConfig,
    store: &L,
    options: WatchOptions,
    mut stop: tokio::sync::watch::Receiver<bool>,
    nudge: Option<&tokio::sync::Notify>,
    on_event: &(dyn Fn(WatchEvent) + Send + Sync),
) -> Result<(), SyncError> {
    let idle = tokio::sync::Notify::new();
    let nudge = nudge.unwrap_or(&idle);
    let mut pinned = cfg.server_key.clone();
    let probe = Http::new(&SyncConfig {
        retry: RetryPolicy { attempts: 1, ..cfg.retry },
        timeout: cfg.timeout.min(Duration::from_secs(10)),
        ..cfg.clone()
    })?;
    let mut backoff = options.initial_backoff;
    loop {
        if *stop.borrow() {
            break;
        }
        let wait = match probe.send("GET /v1/health", |c| c.get(probe.url("/v1/health"))).await {
            Ok(_) => {
                on_event(WatchEvent::Reachable);
                backoff = options.initial_backoff;
                let once = SyncConfig { server_key: pinned.clone(), ..cfg.clone() };
                match sync(&once, store, &|_| {}).await {
                    Ok(r) => {
                        pinned = Some(r.server_key.clone());
                        on_event(WatchEvent::Synced(r))
                    }
                    Err(e) => on_event(WatchEvent::Failed(e)),
                }
                options.interval
            }
            Err(e) => {
                let wait = backoff;
                backoff = (backoff * 2).min(options.max_backoff);
                on_event(WatchEvent::Offline { retry_in: wait, detail: e.to_string() });
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = nudge.notified() => {
                backoff = options.initial_backoff;
                on_event(WatchEvent::NetworkChanged);
            }
            changed = stop.changed() => {
                if changed.is_err() { break; }
            }
        }
    }
    on_event(WatchEvent::Stopped);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_travels_over_tls_or_to_this_machine_only() {
        for ok in [
            "https://inventory.example",
            "https://10.0.0.7:8470",
            "http://127.0.0.1:8470",
            "http://127.9.9.9",
            "http://localhost:1234",
            "http://[::1]:8470",
        ] {
            assert!(check_transport(ok).is_ok(), "{ok}");
        }
        for bad in ["http://inventory.example", "http://10.0.0.7:8470", "ftp://x", "not a url"] {
            let e = check_transport(bad).unwrap_err();
            assert_eq!(e.code(), "insecure_server", "{bad}");
            assert!(e.to_string().contains(bad.split('/').next().unwrap()), "{e}");
        }
    }

    #[tokio::test]
    async fn sync_refuses_plain_http_to_another_host_before_any_request() {
        // Nothing listens on 203.0.113.1 (TEST-NET-3): a request would time out, not fail at once.
        let cfg = SyncConfig::new("http://203.0.113.1:9", "secret-token");
        let err = Http::new(&cfg).err().expect("refused");
        assert!(matches!(err, SyncError::InsecureServer { .. }), "{err}");
        assert!(!err.to_string().contains("secret-token"), "{err}");
    }
}
