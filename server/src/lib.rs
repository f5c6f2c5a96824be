//! # fieldpatch-server
//!
//! The central inventory and the sync API that field laptops push visit logs to and pull work
//! orders, the patch catalog and the trust store from. Versioned under `/v1` (see [`api`]).
//!
//! Design decisions:
//!
//! * **Storage behind a trait** ([`store::Store`]): SQLite needs no set-up (a file in the data
//!   directory) and is the default; PostgreSQL is for real deployments. One set of queries serves
//!   both, and the same tests run against both.
//! * **The visit-log envelope is the contract.** The server verifies pushed events with
//!   `fieldpatch_proto::event` (signatures, hash chain) and countersigns what it accepted with its
//!   own ed25519 key (kept in the data directory), so the laptop can prove what the inventory took.
//! * **Device credentials** are kept encrypted under a data key (`credential-key` in the data
//!   directory) and leave the server only sealed to the requesting technician's key, for the
//!   devices of their assigned sites (`fieldpatch_proto::sealed`).
//! * **Exactly once.** Push is idempotent: events at or below a log's head must match what is
//!   stored, new events must continue the chain, and events, inventory changes and the new
//!   checkpoint commit in one transaction ([`push`]).
//! * **The trust root is checked before it is published** ([`publish`]): a trust store only as a
//!   valid store or rotation of the published one, a catalog listing only when signed by the
//!   store's catalog keys and naming published bundles, with the laptop's own rules
//!   (`fieldpatch_proto::trust`, `fieldpatch_proto::listing`).
//! * **Stateless instances.** Any number of servers may share one PostgreSQL database: pushes of
//!   a log take turns on a database lock ([`store::Store::lock_logs`]), not on process memory.
//!   On SIGTERM or Ctrl-C a server stops accepting, answers new requests with a retryable 503
//!   and lets requests in flight finish ([`Bound::serve_until`]); `/v1/ready` includes a
//!   database round trip. Settings may come from a TOML file ([`config`]).
//! * **TLS or loopback.** With `--tls-cert/--tls-key` the server speaks HTTPS (rustls). Without
//!   TLS it refuses to listen anywhere but loopback unless explicitly told otherwise, because
//!   tokens would cross the network in the clear.

pub mod api;
pub mod config;
pub mod continuity;
pub mod export;
pub mod import;
pub mod publish;
pub mod push;
pub mod store;

use ed25519_dalek::SigningKey;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use api::{App, router};
pub use store::{PgStore, SqliteStore, Store, StoreError};

/// Server version, as built.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "cannot listen on {addr}: {source} (is another server using the port? pick another with --listen)"
    )]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(
        "refusing to listen on {0} without TLS: API tokens would cross the network in the clear. Configure --tls-cert and --tls-key, listen on a loopback address (127.0.0.1 or ::1), or pass --allow-insecure-non-loopback if a TLS-terminating proxy guards this port"
    )]
    InsecureNonLoopback(SocketAddr),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("key file {path}: {detail}")]
    Key { path: PathBuf, detail: String },
    #[error("server stopped with an I/O error: {0}")]
    Serve(std::io::Error),
    #[error("inventory database: {0}")]
    Store(#[from] StoreError),
    #[error("cannot create the server's data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
}

/// An inventory server running inside another program (the desktop app's demo inventory).
pub struct Embedded {
    /// Where it listens (loopback, plain HTTP).
    pub addr: SocketAddr,
    /// The server task; dropping the handle does not stop it, aborting does.
    pub task: tokio::task::JoinHandle<Result<(), ServerError>>,
    app: Arc<App<SqliteStore>>,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded").field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// What to put into an embedded inventory: one technician, one site with its devices, the
/// catalog (bundle files) and the trust store.
#[derive(Debug)]
pub struct Seed {
    pub technician: api::NewTechnician,
    pub site: fieldpatch_proto::wire::Site,
    pub devices: Vec<fieldpatch_proto::wire::Device>,
    /// `(bundle id, version, manifest JSON, bundle file bytes)`.
    pub bundles: Vec<(String, String, serde_json::Value, Vec<u8>)>,
    pub trust_store: serde_json::Value,
    /// The signed catalog listing, when the trust store names catalog keys.
    pub catalog_listing: Option<serde_json::Value>,
}

impl Embedded {
    /// Load `seed` (idempotent: existing rows are updated) and issue a new API token for the
    /// technician, returned once.
    pub async fn seed(&self, seed: Seed) -> Result<String, ServerError> {
        use sha2::Digest;
        let store = &self.app.store;
        let id = seed.technician.id.clone();
        if store.technician(&id).await?.is_none() {
            api::create_technician(store, seed.technician).await?;
        }
        store.upsert_site(&seed.site).await?;
        for d in &seed.devices {
            store.upsert_device(d).await?;
        }
        store.assign(&id, &seed.site.id).await?;
        for (bundle_id, version, manifest, bytes) in seed.bundles {
            let entry = fieldpatch_proto::wire::CatalogEntry {
                bundle_id,
                version,
                manifest,
                sha256: hex::encode(sha2::Sha256::digest(&bytes)),
                size: bytes.len() as u64,
                published_at: chrono::Utc::now(),
            };
            store.publish_bundle(&entry, &bytes).await?;
        }
        store.set_trust_store(&seed.trust_store).await?;
        if let Some(listing) = &seed.catalog_listing {
            // The embedded demo inventory takes its own seed as it is (its keys are made afresh
            // at each start); `admin publish-listing` checks a listing before storing it.
            let current = store.catalog_listing().await?;
            store.replace_catalog_listing(current.as_ref(), listing).await?;
        }
        Ok(api::issue_token(store, Some(&id), "embedded").await?)
    }
}

/// Start an inventory server on a free loopback port, with its SQLite database and keys in
/// `dir` (created if missing). Must be called inside a tokio runtime.
pub async fn start_embedded(dir: &Path) -> Result<Embedded, ServerError> {
    std::fs::create_dir_all(dir)
        .map_err(|source| ServerError::DataDir { path: dir.to_path_buf(), source })?;
    let store = SqliteStore::open(&dir.join("inventory.db")).await?;
    store.migrate().await?;
    let key = load_or_create_key(dir)?;
    let credential_key = load_or_create_credential_key(dir)?;
    let app = Arc::new(App::new(store, key).with_credential_key(credential_key));
    let bound = Bound::bind(SocketAddr::from(([127, 0, 0, 1], 0)), None, false).await?;
    let addr = bound.local_addr();
    let task = tokio::spawn(bound.serve(app.clone()));
    Ok(Embedded { addr, task, app })
}

/// Certificate chain and private key files (PEM) for HTTPS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Build a rustls server configuration from PEM files.
pub fn tls_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            ServerError::Tls(format!("cannot read certificates from {}: {e}", files.cert.display()))
        })?;
    if certs.is_empty() {
        return Err(ServerError::Tls(format!("{} holds no PEM certificate", files.cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        ServerError::Tls(format!("cannot read a private key from {}: {e}", files.key.display()))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServerError::Tls(format!("certificate and key do not fit together: {e}")))?;
    Ok(Arc::new(config))
}

/// Load the server's checkpoint key from `dir/server-key`, creating it (mode 0600) on first start.
pub fn load_or_create_key(dir: &Path) -> Result<SigningKey, ServerError> {
    load_or_create_secret(dir, "server-key").map(|b| SigningKey::from_bytes(&b))
}

/// Load the data key that encrypts device credentials at rest from `dir/credential-key`, creating
/// it (mode 0600) on first start. Back it up with the database: without it the stored credentials
/// cannot be decrypted.
pub fn load_or_create_credential_key(dir: &Path) -> Result<[u8; 32], ServerError> {
    load_or_create_secret(dir, "credential-key")
}

fn load_or_create_secret(dir: &Path, name: &str) -> Result<[u8; 32], ServerError> {
    let path = dir.join(name);
    let err = |detail: String| ServerError::Key { path: path.clone(), detail };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let bytes = hex::decode(text.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| err("not 64 hex digits; restore it from backup".into()))?;
            Ok(bytes)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            let key: [u8; 32] = rand::random();
            // Written whole under a private name, then linked into place: instances starting
            // together on one data directory never read a half-written key, and only one key wins.
            let tmp = dir.join(format!(
                ".{name}.{}.{}",
                std::process::id(),
                hex::encode(rand::random::<[u8; 8]>())
            ));
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            use std::io::Write;
            let written = opts.open(&tmp).and_then(|mut f| {
                f.write_all(hex::encode(key).as_bytes())?;
                f.sync_all()
            });
            let linked = written.and_then(|()| std::fs::hard_link(&tmp, &path));
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => Ok(key),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    load_or_create_secret(dir, name)
                }
                Err(e) => Err(err(e.to_string())),
            }
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// A bound listener, ready to serve.
#[derive(Debug)]
pub struct Bound {
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Bound {
    /// Bind the listener (port 0 picks a free port). Without TLS, only loopback addresses are
    /// allowed unless `allow_insecure_non_loopback`.
    pub async fn bind(
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        allow_insecure_non_loopback: bool,
    ) -> Result<Self, ServerError> {
        if tls.is_none() && !addr.ip().is_loopback() && !allow_insecure_non_loopback {
            return Err(ServerError::InsecureNonLoopback(addr));
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let local_addr =
            listener.local_addr().map_err(|source| ServerError::Bind { addr, source })?;
        Ok(Self { listener, local_addr, tls })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serve `app` until the task is dropped.
    pub async fn serve<S: Store>(self, app: Arc<App<S>>) -> Result<(), ServerError> {
        self.serve_until(app, std::future::pending::<()>(), Duration::MAX).await
    }

    /// Serve `app` until `shutdown` completes, then shut down gracefully: the API starts
    /// answering new requests with a retryable 503 (and `/v1/ready` with 503), no new connection
    /// is accepted, requests in flight (a push being stored) finish and their connections close.
    /// After `grace`, connections still open are cut.
    pub async fn serve_until<S: Store>(
        self,
        app: Arc<App<S>>,
        shutdown: impl std::future::Future<Output = ()>,
        grace: Duration,
    ) -> Result<(), ServerError> {
        let router = router(app.clone());
        let acceptor = self.tls.map(tokio_rustls::TlsAcceptor::from);
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                () = &mut shutdown => break,
            };
            let (tcp, peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let router = router.clone();
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                match acceptor {
                    None => serve_connection(tcp, router, peer, watcher).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => serve_connection(stream, router, peer, watcher).await,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
            });
        }
        app.drain();
        drop(self.listener);
        let open = graceful.count();
        tracing::info!(connections = open, "shutting down: finishing requests in flight");
        match tokio::time::timeout(grace, graceful.shutdown()).await {
            Ok(()) => tracing::info!("all connections closed"),
            Err(_) => tracing::warn!(
                grace_secs = grace.as_secs(),
                "connections still open after the shutdown grace period; closing them"
            ),
        }
        Ok(())
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C), whichever comes first.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

/// A TLS handshake must finish within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Request headers must arrive within this time (no connection is held open by a silent peer).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

async fn serve_connection<I>(
    io: I,
    router: axum::Router,
    peer: SocketAddr,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(router);
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    let conn = builder
        .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), service)
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_embedded_server_answers_on_loopback_and_keeps_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let server = start_embedded(dir.path()).await.unwrap();
        assert!(server.addr.ip().is_loopback());
        let body: serde_json::Value = reqwest::get(format!("http://{}/v1/health", server.addr))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["status"], "ok", "{body}");
        server.task.abort();
        let key = std::fs::read(dir.path().join("server-key")).unwrap();
        let again = start_embedded(dir.path()).await.unwrap();
        assert_eq!(std::fs::read(dir.path().join("server-key")).unwrap(), key, "the key is kept");

        // Seeding gives the technician a token that pulls exactly the seeded site.
        let tech = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let device = |id: &str| fieldpatch_proto::wire::Device {
            id: id.into(),
            site_id: "demo".into(),
            vendor: Some("Demo".into()),
            model: Some("sensor".into()),
            hardware_revision: None,
            serial_number: None,
            approved_version: Some("1.5.0".into()),
            current_firmware: None,
            last_visit: None,
            failures: 0,
            last_failure: None,
            not_patched_reason: None,
        };
        let seed = || Seed {
            technician: api::NewTechnician {
                id: "tech".into(),
                name: "Demo technician".into(),
                public_key: hex::encode(tech.verifying_key().as_bytes()),
            },
            site: fieldpatch_proto::wire::Site {
                id: "demo".into(),
                name: "Demo site".into(),
                address: None,
            },
            devices: vec![device("d1"), device("d2")],
            bundles: vec![],
            trust_store: serde_json::json!({"demo": true}),
            catalog_listing: None,
        };
        let token = again.seed(seed()).await.unwrap();
        let token2 = again.seed(seed()).await.unwrap();
        assert_ne!(token, token2, "each seed issues a fresh token");
        let pull: serde_json::Value = reqwest::Client::new()
            .get(format!("http://{}/v1/pull", again.addr))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(pull["devices"].as_array().map(Vec::len), Some(2), "{pull}");
        again.task.abort();
    }
}
