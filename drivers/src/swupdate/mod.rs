//! SWUpdate over HTTP: the client side of SWUpdate's built-in (mongoose) web server, as embedded
//! Linux gateways run it.
//!
//! - `POST /upload`: a `multipart/form-data` upload of a `.swu`, streamed from the file (no copy of
//!   the image in memory: 1 MiB chunks read and hashed on a blocking thread, a bounded few of them
//!   ahead of the connection) with an exact `Content-Length`, progress reported as chunks are
//!   handed to the connection.
//! - HTTP digest authentication ([`digest`]) when the daemon has an auth domain: the credentials
//!   are handed in by the caller for one job, checked with a cheap authenticated `GET /` before a
//!   byte of the image is sent, and never logged or put into an error.
//! - The result comes from the daemon's WebSocket ([`ws`]): `status` messages (`START`, `RUN`,
//!   `SUCCESS`, `FAILURE`, `DONE`), `step` messages (install progress) and `message` messages (its
//!   log, level 3 = error) whose text becomes the refusal reason.
//! - `POST /restart` asks the device to reboot where it offers it.
//!
//! Plain `http://` only: the status channel is a plain WebSocket.

pub mod digest;
pub mod ws;

use crate::progress::{Progress, TransferProgress};
use bytes::Bytes;
use futures_util::StreamExt as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

pub use digest::{Challenge, ChallengeError};

/// The credentials for one job: a user name and the password from the keyring.
pub struct DigestCredentials {
    user: String,
    password: Zeroizing<String>,
}

impl DigestCredentials {
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> DigestCredentials {
        DigestCredentials { user: user.into(), password: Zeroizing::new(password.into()) }
    }
    pub fn user(&self) -> &str {
        &self.user
    }
}

impl fmt::Debug for DigestCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestCredentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Errors talking to an SWUpdate daemon. None of them carries a credential.
#[derive(Debug, thiserror::Error)]
pub enum SwupdateError {
    #[error("`{0}` is not a usable SWUpdate address: give http://HOST:PORT")]
    BadUrl(String),
    #[error("the SWUpdate daemon at {url} cannot be reached: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "the SWUpdate daemon at {url} asks for a password (realm `{realm}`); add the device's credential to the keyring"
    )]
    CredentialsRequired { url: String, realm: String },
    #[error(
        "the SWUpdate daemon at {url} refused the credentials of user `{user}` (HTTP 401, realm `{realm}`); check the credential in the keyring"
    )]
    Unauthorized { url: String, user: String, realm: String },
    #[error("the SWUpdate daemon at {url} is busy with another update; try again when it is done")]
    Busy { url: String },
    #[error("the SWUpdate daemon refused the image: {message}")]
    Refused { message: String },
    #[error("the SWUpdate daemon at {url} did not answer within {secs} s while {during}")]
    Timeout { url: String, secs: u64, during: &'static str },
    #[error("the SWUpdate daemon at {url} answered unexpectedly: {detail}")]
    Protocol { url: String, detail: String },
    #[error("cannot read the image {path}: {reason}")]
    Image { path: String, reason: String },
    #[error(
        "the device's health check {url} did not pass ({detail}): the device may still be restarting, or the new software does not run"
    )]
    Unhealthy { url: String, detail: String },
}

impl SwupdateError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            SwupdateError::BadUrl(_) => "swupdate_bad_url",
            SwupdateError::Unreachable { .. } => "swupdate_unreachable",
            SwupdateError::CredentialsRequired { .. } => "swupdate_credentials_required",
            SwupdateError::Unauthorized { .. } => "swupdate_unauthorized",
            SwupdateError::Busy { .. } => "swupdate_busy",
            SwupdateError::Refused { .. } => "swupdate_refused",
            SwupdateError::Timeout { .. } => "swupdate_timeout",
            SwupdateError::Protocol { .. } => "swupdate_protocol",
            SwupdateError::Image { .. } => "swupdate_image_unreadable",
            SwupdateError::Unhealthy { .. } => "swupdate_unhealthy",
        }
    }

    /// Whether trying again later may succeed (a dropped link, a busy daemon), as opposed to a
    /// refusal that will repeat.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SwupdateError::Unreachable { .. }
                | SwupdateError::Busy { .. }
                | SwupdateError::Timeout { .. }
        )
    }
}

/// What the daemon reported for a successful install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallReport {
    /// Bytes of the `.swu` sent.
    pub bytes_sent: u64,
    /// SHA-256 of the `.swu` bytes as they were sent (hashed while streaming), for the caller to
    /// compare with what it verified.
    pub sha256: [u8; 32],
    /// The daemon's informational messages during the install, in order.
    pub messages: Vec<String>,
}

/// Timeouts for one daemon.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Connecting and each plain request.
    pub request: Duration,
    /// From the end of the upload to the daemon's final status.
    pub install: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { request: Duration::from_secs(10), install: Duration::from_secs(300) }
    }
}

/// A client for one SWUpdate daemon.
#[derive(Debug)]
pub struct SwupdateClient {
    base: String,
    host_port: String,
    http: reqwest::Client,
    timeouts: Timeouts,
}

/// One status-channel message (all fields are strings in SWUpdate's JSON), as [`ws`] hands its
/// text over: `status` (`status`), `step` (`name`, `percent`) or `message` (`level`, `text`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct WsMessage {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: Option<String>,
    /// `3` for an error.
    pub level: Option<String>,
    pub text: Option<String>,
    pub name: Option<String>,
    pub percent: Option<String>,
}

impl WsMessage {
    /// Parses one message from the daemon. Anything that is not such a JSON object is an error
    /// (the verdict skips it: the daemon may send kinds this client does not know).
    pub fn parse(raw: &str) -> Result<WsMessage, serde_json::Error> {
        serde_json::from_str(raw)
    }
}

const BOUNDARY: &str = "----fieldpatch-swupdate-7c1e4b2d9a0f";
/// One piece of the image handed to the connection: large, so that reading, hashing and
/// sending cost few system calls and thread hand-offs per MiB (the daemon on a small gateway
/// needs the CPU more than the client does).
const CHUNK: usize = 1024 * 1024;
/// Chunks read ahead of the connection, at most: the memory an upload holds is bounded by
/// `(READ_AHEAD + 2) * CHUNK` whatever the image's size.
pub const READ_AHEAD: usize = 2;

/// The image's bytes for one upload, produced on a blocking thread (reading the file and
/// hashing it there, off the connection's thread) and handed over through a bounded channel.
struct Feed {
    chunks: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    /// SHA-256 of every chunk handed over, updated before the chunk is.
    hasher: Arc<std::sync::Mutex<Sha256>>,
    /// Why producing failed, if it did (the connection only sees an aborted body).
    failed: Arc<std::sync::Mutex<Option<String>>>,
}

impl Feed {
    /// Starts producing: `next` gives the next chunk, `None` at the end. The thread stops at the
    /// end, at the first error (handed over as the stream's last item), or when the upload is
    /// dropped.
    fn start(mut next: impl FnMut() -> std::io::Result<Option<Bytes>> + Send + 'static) -> Feed {
        let (tx, chunks) = tokio::sync::mpsc::channel(READ_AHEAD);
        let hasher = Arc::new(std::sync::Mutex::new(Sha256::new()));
        let failed = Arc::new(std::sync::Mutex::new(None));
        let (h, f) = (hasher.clone(), failed.clone());
        tokio::task::spawn_blocking(move || {
            loop {
                let item = match next() {
                    Ok(None) => return,
                    Ok(Some(chunk)) => {
                        if let Ok(mut h) = h.lock() {
                            h.update(&chunk);
                        }
                        Ok(chunk)
                    }
                    Err(e) => {
                        if let Ok(mut f) = f.lock() {
                            *f = Some(e.to_string());
                        }
                        Err(e)
                    }
                };
                let failed = item.is_err();
                if tx.blocking_send(item).is_err() || failed {
                    return;
                }
            }
        });
        Feed { chunks, hasher, failed }
    }

    fn into_stream(self) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
        futures_util::stream::unfold(self.chunks, |mut rx| async move {
            rx.recv().await.map(|c| (c, rx))
        })
    }
}

/// Exactly `len` bytes of `file` from where it stands, in chunks of [`CHUNK`]; a file that
/// ends early is an error, bytes past `len` are not read.
fn file_chunks(
    mut file: std::fs::File,
    len: u64,
) -> impl FnMut() -> std::io::Result<Option<Bytes>> + Send + 'static {
    let mut left = len;
    move || {
        if left == 0 {
            return Ok(None);
        }
        let want = left.min(CHUNK as u64);
        // Read into fresh capacity (not zeroed first): a chunk leaves with its buffer.
        let mut buf = Vec::with_capacity(want as usize);
        std::io::Read::read_to_end(&mut std::io::Read::take(&mut file, want), &mut buf)?;
        if (buf.len() as u64) < want {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "the file ended {} bytes short of the {len} it had when the upload started",
                    left - buf.len() as u64
                ),
            ));
        }
        left -= want;
        Ok(Some(Bytes::from(buf)))
    }
}

impl SwupdateClient {
    /// A client for the daemon at `url` (`http://HOST:PORT`, no path).
    pub fn new(url: &str, timeouts: Timeouts) -> Result<SwupdateClient, SwupdateError> {
        let bad = || SwupdateError::BadUrl(url.chars().take(200).collect());
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let host_port = rest.trim_end_matches('/');
        if host_port.is_empty()
            || host_port.contains(['/', '@', '?', '#'])
            || host_port.chars().any(char::is_whitespace)
        {
            return Err(bad());
        }
        let host_port =
            if host_port.contains(':') { host_port.to_string() } else { format!("{host_port}:80") };
        let http = reqwest::Client::builder()
            .connect_timeout(timeouts.request)
            .http1_only()
            // mongoose closes after every answer (401s included): never reuse a connection.
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| SwupdateError::Protocol { url: url.into(), detail: e.to_string() })?;
        Ok(SwupdateClient { base: format!("http://{host_port}"), host_port, http, timeouts })
    }

    /// The daemon's address, `http://HOST:PORT`.
    pub fn url(&self) -> &str {
        &self.base
    }

    fn unreachable(&self, e: impl fmt::Display) -> SwupdateError {
        SwupdateError::Unreachable { url: self.base.clone(), reason: e.to_string() }
    }

    fn protocol(&self, detail: impl Into<String>) -> SwupdateError {
        SwupdateError::Protocol { url: self.base.clone(), detail: detail.into() }
    }

    fn timeout(&self, during: &'static str) -> SwupdateError {
        let secs =
            if during == "installing" { self.timeouts.install } else { self.timeouts.request };
        SwupdateError::Timeout { url: self.base.clone(), secs: secs.as_secs(), during }
    }

    fn map_reqwest(&self, e: reqwest::Error, during: &'static str) -> SwupdateError {
        if e.is_timeout() {
            self.timeout(during)
        } else if e.is_connect() {
            self.unreachable(std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string()))
        } else {
            self.protocol(format!("{during}: {e}"))
        }
    }

    /// The digest challenge, if the daemon asks for authentication (an unauthenticated `GET /`).
    pub async fn challenge(&self) -> Result<Option<Challenge>, SwupdateError> {
        let resp = self
            .http
            .get(format!("{}/", self.base))
            .timeout(self.timeouts.request)
            .send()
            .await
            .map_err(|e| self.map_reqwest(e, "connecting"))?;
        if resp.status().as_u16() != 401 {
            return Ok(None);
        }
        let header = resp
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|h| h.to_str().ok())
            .ok_or_else(|| self.protocol("HTTP 401 without a WWW-Authenticate header"))?;
        Challenge::parse(header).map(Some).map_err(|e| self.protocol(e.to_string()))
    }

    /// Checks that the daemon accepts `credentials` (or needs none) without sending an image;
    /// returns the challenge to answer later requests with.
    pub async fn authenticate(
        &self,
        credentials: Option<&DigestCredentials>,
    ) -> Result<Option<Challenge>, SwupdateError> {
        let Some(challenge) = self.challenge().await? else {
            return Ok(None);
        };
        let Some(creds) = credentials else {
            return Err(SwupdateError::CredentialsRequired {
                url: self.base.clone(),
                realm: challenge.realm.clone(),
            });
        };
        let auth = challenge.authorization(&creds.user, &creds.password, "GET", "/");
        let resp = self
            .http
            .get(format!("{}/", self.base))
            .header(reqwest::header::AUTHORIZATION, auth)
            .timeout(self.timeouts.request)
            .send()
            .await
            .map_err(|e| self.map_reqwest(e, "authenticating"))?;
        if resp.status().as_u16() == 401 {
            return Err(self.unauthorized(creds, &challenge));
        }
        Ok(Some(challenge))
    }

    fn unauthorized(&self, creds: &DigestCredentials, c: &Challenge) -> SwupdateError {
        SwupdateError::Unauthorized {
            url: self.base.clone(),
            user: creds.user.clone(),
            realm: c.realm.clone(),
        }
    }

    async fn open_status(
        &self,
        auth: Option<(&Challenge, &DigestCredentials)>,
    ) -> Result<ws::WebSocket, SwupdateError> {
        let header = auth.map(|(c, cr)| c.authorization(&cr.user, &cr.password, "GET", "/ws"));
        let connect = async {
            let stream =
                TcpStream::connect(&self.host_port).await.map_err(|e| self.unreachable(e))?;
            ws::WebSocket::upgrade(stream, &self.host_port, "/ws", header.as_deref())
                .await
                .map_err(|e| self.protocol(format!("opening the status channel: {e}")))
        };
        match tokio::time::timeout(self.timeouts.request, connect).await {
            Err(_) => Err(self.timeout("opening the status channel")),
            Ok(Err(e)) => Err(e),
            Ok(Ok(ws::Upgrade::Open(ws))) => Ok(ws),
            Ok(Ok(ws::Upgrade::Status(401))) => match auth {
                Some((c, cr)) => Err(self.unauthorized(cr, c)),
                None => Err(self.protocol("the status channel asks for credentials")),
            },
            Ok(Ok(ws::Upgrade::Status(s))) => {
                Err(self.protocol(format!("the status channel answered HTTP {s}")))
            }
        }
    }

    /// Uploads the `.swu` at `path` and waits for the daemon's verdict. Credentials are checked
    /// before the upload starts; the file is read (and hashed) on a blocking thread in 1 MiB
    /// chunks, at most [`READ_AHEAD`] of them ahead of the connection, never the whole file.
    pub async fn install(
        &self,
        path: &Path,
        credentials: Option<&DigestCredentials>,
        progress: &dyn Progress,
    ) -> Result<InstallReport, SwupdateError> {
        let image_err = |e: std::io::Error| SwupdateError::Image {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let file = tokio::fs::File::open(path).await.map_err(image_err)?;
        let len = file.metadata().await.map_err(image_err)?.len();
        let file = file.into_std().await;
        let filename = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "update.swu".into());
        let source = Feed::start(file_chunks(file, len));
        let result = self.install_stream(&filename, len, source, credentials, progress).await;
        // A file that failed while it was read is the reason the upload broke off.
        result.map_err(|e| match e {
            SwupdateError::Image { reason, .. } => {
                SwupdateError::Image { path: path.display().to_string(), reason }
            }
            e => e,
        })
    }

    /// [`SwupdateClient::install`] of a `.swu` held in memory (named `name` in the upload): the
    /// bytes go out in 1 MiB slices of `image`, without a further copy.
    pub async fn install_bytes(
        &self,
        name: &str,
        image: Vec<u8>,
        credentials: Option<&DigestCredentials>,
        progress: &dyn Progress,
    ) -> Result<InstallReport, SwupdateError> {
        let image = Bytes::from(image);
        let len = image.len();
        let mut at = 0;
        let source = Feed::start(move || {
            let end = (at + CHUNK).min(len);
            let chunk = (at < end).then(|| image.slice(at..end));
            at = end;
            Ok(chunk)
        });
        self.install_stream(name, len as u64, source, credentials, progress).await
    }

    async fn install_stream(
        &self,
        filename: &str,
        len: u64,
        source: Feed,
        credentials: Option<&DigestCredentials>,
        progress: &dyn Progress,
    ) -> Result<InstallReport, SwupdateError> {
        let filename: String =
            filename.chars().filter(|c| !c.is_control() && *c != '"' && *c != '\\').collect();

        progress.phase("authenticate");
        let challenge = self.authenticate(credentials).await?;
        let auth = challenge.as_ref().zip(credentials);
        let mut status = self.open_status(auth).await?;

        progress.phase("upload");
        let prefix = format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        );
        let suffix = format!("\r\n--{BOUNDARY}--\r\n");
        let content_length = prefix.len() as u64 + len + suffix.len() as u64;
        let sent = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let hasher = source.hasher.clone();
        let feed_failed = source.failed.clone();
        let file_stream = {
            let sent = sent.clone();
            source.into_stream().map(move |chunk| {
                if let Ok(c) = &chunk {
                    sent.fetch_add(c.len() as u64, Ordering::Relaxed);
                }
                chunk
            })
        };
        // The body must be 'static, so it only counts bytes; the request loop below reports them.
        let body = futures_util::stream::iter([Ok::<Bytes, std::io::Error>(Bytes::from(prefix))])
            .chain(file_stream)
            .chain(futures_util::stream::iter([Ok(Bytes::from(suffix))]));
        let mut req = self
            .http
            .post(format!("{}/upload", self.base))
            .header(
                reqwest::header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .header(reqwest::header::CONTENT_LENGTH, content_length)
            .body(reqwest::Body::wrap_stream(body));
        if let Some((c, cr)) = auth {
            req = req.header(
                reqwest::header::AUTHORIZATION,
                c.authorization(&cr.user, &cr.password, "POST", "/upload"),
            );
        }
        let upload = req.send();
        tokio::pin!(upload);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut last_io = (0u64, Instant::now());
        let resp = loop {
            tokio::select! {
                r = &mut upload => match r {
                    Ok(resp) => break resp,
                    // The daemon stops reading when it refuses an image early (a bad signature):
                    // its verdict is on the status channel.
                    // The image could not be read to its end: that, not the link, broke it off.
                    Err(_) if let Some(reason) = feed_failed.lock().ok().and_then(|f| f.clone()) => {
                        return Err(SwupdateError::Image { path: filename, reason });
                    }
                    Err(e) if !e.is_connect() => {
                        // Without a verdict of its own, a connection the daemon closed during the
                        // upload is a dropped link (it may also have answered "busy" and hung
                        // up before the body was sent): worth trying again.
                        let err = if e.is_timeout() {
                            self.map_reqwest(e, "uploading")
                        } else {
                            self.unreachable(format!(
                                "the connection closed during the upload ({e}); the daemon may be busy with another update: try again"
                            ))
                        };
                        // The daemon may also hang up right after it has taken the whole
                        // image (closing with the multipart trailer unread resets the
                        // connection, and the reset can overtake its HTTP answer): then its own
                        // verdict on the status channel says whether the install happened.
                        let whole = sent.load(Ordering::Relaxed) == len;
                        let wait = if whole {
                            progress.phase("install");
                            self.timeouts.install
                        } else {
                            self.timeouts.request
                        };
                        let verdict =
                            tokio::time::timeout(wait, self.verdict(&mut status, progress)).await;
                        return match verdict {
                            Ok(Ok(Err(errors))) => Err(refused(errors)),
                            Ok(Ok(Ok(messages))) if whole => {
                                status.close().await;
                                progress.transfer(TransferProgress {
                                    done: len,
                                    total: len,
                                    elapsed: started.elapsed(),
                                });
                                let sha256 = hasher
                                    .lock()
                                    .map(|h| h.clone().finalize().into())
                                    .unwrap_or([0; 32]);
                                Ok(InstallReport { bytes_sent: len, sha256, messages })
                            }
                            _ => Err(err),
                        };
                    }
                    Err(e) => return Err(self.map_reqwest(e, "uploading")),
                },
                _ = tick.tick() => {
                    let done = sent.load(Ordering::Relaxed);
                    progress.transfer(TransferProgress { done, total: len, elapsed: started.elapsed() });
                    if done != last_io.0 {
                        last_io = (done, Instant::now());
                    } else if last_io.1.elapsed() > self.timeouts.request.max(Duration::from_secs(30)) {
                        return Err(self.timeout("uploading"));
                    }
                }
            }
        };
        let code = resp.status().as_u16();
        let text = tokio::time::timeout(self.timeouts.request, resp.text())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        match code {
            200 => {}
            401 => {
                return Err(match auth {
                    Some((c, cr)) => self.unauthorized(cr, c),
                    None => self.protocol("the upload asks for credentials"),
                });
            }
            500 if text.contains("Failed to queue") => {
                return Err(SwupdateError::Busy { url: self.base.clone() });
            }
            _ => {
                let t: String = text.chars().take(200).collect();
                return Err(self.protocol(format!("the upload answered HTTP {code}: {}", t.trim())));
            }
        }
        progress.transfer(TransferProgress { done: len, total: len, elapsed: started.elapsed() });

        progress.phase("install");
        let verdict =
            tokio::time::timeout(self.timeouts.install, self.verdict(&mut status, progress))
                .await
                .map_err(|_| self.timeout("installing"))??;
        status.close().await;
        match verdict {
            Ok(messages) => {
                let sha256 = hasher.lock().map(|h| h.clone().finalize().into()).unwrap_or([0; 32]);
                Ok(InstallReport { bytes_sent: sent.load(Ordering::Relaxed), sha256, messages })
            }
            Err(errors) => Err(refused(errors)),
        }
    }

    /// Reads the status channel until the daemon's verdict: its informational messages on
    /// success, its error messages on failure.
    async fn verdict(
        &self,
        status: &mut ws::WebSocket,
        progress: &dyn Progress,
    ) -> Result<Result<Vec<String>, Vec<String>>, SwupdateError> {
        let mut messages = Vec::new();
        let mut errors: Vec<String> = Vec::new();
        let mut last_step = None;
        loop {
            let Some(raw) = status.next_text().await.map_err(|e| {
                self.protocol(format!("the status channel failed before a verdict: {e}"))
            })?
            else {
                return Err(self.protocol("the status channel closed before a verdict"));
            };
            let Ok(m) = WsMessage::parse(&raw) else { continue };
            match (m.kind.as_str(), m.status.as_deref()) {
                ("message", _) => {
                    let text = m.text.unwrap_or_default();
                    if m.level.as_deref() == Some("3") {
                        errors.push(text);
                    } else {
                        messages.push(text);
                    }
                }
                ("step", _) => {
                    let step = (m.name.unwrap_or_default(), m.percent.unwrap_or_default());
                    if last_step.as_ref() != Some(&step) {
                        progress.note(&format!("installing {}: {}%", step.0, step.1));
                        last_step = Some(step);
                    }
                }
                ("status", Some("SUCCESS")) => return Ok(Ok(messages)),
                ("status", Some("FAILURE")) => {
                    // The error text may trail the status: read briefly for it.
                    let _ = tokio::time::timeout(Duration::from_millis(500), async {
                        while let Ok(Some(raw)) = status.next_text().await {
                            if let Ok(m) = WsMessage::parse(&raw)
                                && m.kind == "message"
                                && m.level.as_deref() == Some("3")
                            {
                                errors.push(m.text.unwrap_or_default());
                            }
                        }
                    })
                    .await;
                    return Ok(Err(errors));
                }
                _ => {}
            }
        }
    }

    /// Asks a health endpoint of the device's own (`url`, `http://` or `https://`) once: `Ok` on
    /// HTTP 2xx. It is not the daemon, so no credentials are sent to it.
    pub async fn check_health(&self, url: &str) -> Result<(), SwupdateError> {
        let unhealthy = |detail: String| SwupdateError::Unhealthy { url: url.to_string(), detail };
        let parsed = reqwest::Url::parse(url).map_err(|e| unhealthy(format!("not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(unhealthy("only http:// and https:// health checks exist".into()));
        }
        let resp = self
            .http
            .get(parsed)
            .timeout(self.timeouts.request)
            .send()
            .await
            .map_err(|e| unhealthy(e.to_string()))?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            s => Err(unhealthy(format!("it answered HTTP {s}"))),
        }
    }

    /// Ask `url` again every `every` until it answers 2xx, or until `deadline`, when the last
    /// answer is the error (a device that restarts into new software takes a while to serve).
    pub async fn await_healthy(
        &self,
        url: &str,
        deadline: tokio::time::Instant,
        every: Duration,
    ) -> Result<(), SwupdateError> {
        loop {
            match self.check_health(url).await {
                Ok(()) => return Ok(()),
                Err(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(every).await,
                Err(e) => return Err(e),
            }
        }
    }

    /// Asks the device to reboot into the new software (`POST /restart`).
    pub async fn restart(
        &self,
        credentials: Option<&DigestCredentials>,
    ) -> Result<(), SwupdateError> {
        let challenge = self.authenticate(credentials).await?;
        // An empty body with its length: the daemon's web server waits for a body it is told
        // the length of.
        let mut req = self
            .http
            .post(format!("{}/restart", self.base))
            .header(reqwest::header::CONTENT_LENGTH, "0")
            .body(Vec::new())
            .timeout(self.timeouts.request);
        if let Some((c, cr)) = challenge.as_ref().zip(credentials) {
            req = req.header(
                reqwest::header::AUTHORIZATION,
                c.authorization(&cr.user, &cr.password, "POST", "/restart"),
            );
        }
        let resp = req.send().await.map_err(|e| self.map_reqwest(e, "restarting"))?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            s => Err(self.protocol(format!("the restart request answered HTTP {s}"))),
        }
    }
}

/// The refusal with the daemon's own error messages.
fn refused(errors: Vec<String>) -> SwupdateError {
    let errors: Vec<String> =
        errors.into_iter().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect();
    let message = if errors.is_empty() {
        "the install failed (the daemon gave no reason)".to_string()
    } else {
        errors.join("; ")
    };
    SwupdateError::Refused { message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len as u64).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect()
    }

    #[test]
    fn file_chunks_read_exactly_the_length_in_order() {
        let len = 2 * CHUNK + CHUNK / 2 + 3;
        let mut f = tempfile::tempfile().unwrap();
        let data = pattern(len + 100);
        std::io::Write::write_all(&mut f, &data).unwrap();
        std::io::Seek::rewind(&mut f).unwrap();
        let mut next = file_chunks(f, len as u64);
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        while let Some(c) = next().unwrap() {
            sizes.push(c.len());
            got.extend_from_slice(&c);
        }
        assert_eq!(sizes, [CHUNK, CHUNK, CHUNK / 2 + 3]);
        assert_eq!(got, data[..len]);
        assert!(next().unwrap().is_none());
    }

    #[test]
    fn a_file_shorter_than_it_was_is_an_error() {
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, &pattern(CHUNK + 10)).unwrap();
        std::io::Seek::rewind(&mut f).unwrap();
        let mut next = file_chunks(f, (2 * CHUNK) as u64);
        assert_eq!(next().unwrap().map(|c| c.len()), Some(CHUNK));
        let e = next().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        assert!(e.to_string().contains(&format!("{} bytes short", CHUNK - 10)), "{e}");
    }

    #[tokio::test]
    async fn the_feed_hands_chunks_over_in_order_hashed_and_ends_at_an_error() {
        let data = Bytes::from(pattern(3 * CHUNK));
        let mut at = 0;
        let src = data.clone();
        let feed = Feed::start(move || {
            if at == src.len() {
                return Err(std::io::Error::other("disk read error"));
            }
            at += CHUNK;
            Ok(Some(src.slice(at - CHUNK..at)))
        });
        let (hasher, failed) = (feed.hasher.clone(), feed.failed.clone());
        let items: Vec<_> = feed.into_stream().collect().await;
        assert_eq!(items.len(), 4);
        let sent: Vec<u8> = items[..3].iter().flat_map(|c| c.as_ref().unwrap().to_vec()).collect();
        assert_eq!(sent, data);
        assert!(items[3].is_err());
        assert_eq!(failed.lock().unwrap().as_deref(), Some("disk read error"));
        let hash: [u8; 32] = hasher.lock().unwrap().clone().finalize().into();
        assert_eq!(hash, <[u8; 32]>::from(Sha256::digest(&data)));
    }

    #[test]
    fn urls_and_codes() {
        for bad in ["https://x:1", "x:1", "http://", "http://a/b", "http://u@h:1", "http://a b"] {
            let e = SwupdateClient::new(bad, Timeouts::default()).unwrap_err();
            assert_eq!(e.code(), "swupdate_bad_url", "{bad}");
        }
        let c = SwupdateClient::new("http://127.0.0.1:8080/", Timeouts::default()).unwrap();
        assert_eq!(c.url(), "http://127.0.0.1:8080");
        let c = SwupdateClient::new("http://gw.local", Timeouts::default()).unwrap();
        assert_eq!(c.url(), "http://gw.local:80");
    }

    #[test]
    fn status_messages_parse_as_the_daemon_sends_them() {
        // SWUpdate's mongoose interface writes every field as a string, with CRLF and tabs.
        let m = WsMessage::parse(
            "{\r\n\t\"type\": \"message\",\r\n\t\"level\": \"3\",\r\n\t\
             \"text\": \"[install] \\\"x\\\" failed\"\r\n}\r\n",
        )
        .unwrap();
        assert_eq!((m.kind.as_str(), m.level.as_deref()), ("message", Some("3")));
        assert_eq!(m.text.as_deref(), Some("[install] \"x\" failed"));
        let step =
            r#"{"type":"step","step":"1","name":"rootfs.img","percent":"40","source":"\"x\""}"#;
        let m = WsMessage::parse(step).unwrap();
        assert_eq!((m.name.as_deref(), m.percent.as_deref()), (Some("rootfs.img"), Some("40")));
        let m = WsMessage::parse(r#"{"type":"status","status":"SUCCESS"}"#).unwrap();
        assert_eq!(m.status.as_deref(), Some("SUCCESS"));
        for junk in [
            "",
            "null",
            "[]",
            r#"{"status":"SUCCESS"}"#,
            r#"{"type":3}"#,
            "{\"type\":\"status\"",
            r#"{"type":"message","level":3}"#,
        ] {
            assert!(WsMessage::parse(junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn credentials_never_print() {
        let c = DigestCredentials::new("admin", "hunter2-secret");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn unreachable_is_a_clear_transient_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let c =
            SwupdateClient::new(&format!("http://127.0.0.1:{port}"), Timeouts::default()).unwrap();
        let e = c.authenticate(None).await.unwrap_err();
        assert_eq!(e.code(), "swupdate_unreachable", "{e}");
        assert!(e.is_transient());
    }
}
