//! The `/v1` HTTP API. Documented in `openapi.json` (served at `/v1/openapi.json`).
//!
//! Authentication is a bearer token. Tokens are random (32 bytes, hex, prefixed `fpt_`) and only
//! their SHA-256 is stored. Technician tokens see only their assigned sites; admin tokens are for
//! inventory management and reports across all sites.

use crate::push;
use crate::store::{Principal, Store, StoreError, StoredCredential, Technician};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use ed25519_dalek::SigningKey;
use fieldpatch_proto::event::Event;
use fieldpatch_proto::model::Version;
use fieldpatch_proto::sealed::{self, SealedCredential};
use fieldpatch_proto::wire::{
    ApiErrorBody, Device, MAX_PUSH_EVENTS, PlannedNotPatched, PullResponse, PushAck, PushRequest,
    Site, WorkOrder,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use zeroize::Zeroizing;

/// The OpenAPI document, kept next to the handlers it describes.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Kinds of device credential (the laptop's keyring names them `device/<id>/<kind>`).
pub const CREDENTIAL_KINDS: &[&str] = &["password", "psk", "token"];

/// Shared state of the API.
pub struct App<S> {
    pub store: S,
    pub key: SigningKey,
    /// Data key for device credentials at rest; without it no credentials are served.
    credential_key: Option<Zeroizing<[u8; 32]>>,
    /// One lock per visit log being pushed: pushes of different logs run in parallel, two pushes
    /// of the same log take turns.
    log_locks: std::sync::Mutex<std::collections::HashMap<uuid::Uuid, Arc<tokio::sync::Mutex<()>>>>,
    /// Pushes verified and stored at the same time; more wait for a retryable 503.
    pushes: Arc<tokio::sync::Semaphore>,
    /// Shutting down: new requests get a retryable 503, `/v1/ready` says not ready.
    draining: Arc<std::sync::atomic::AtomicBool>,
}

/// Pushes one server instance works on at once (each checks signatures on a blocking thread).
pub const MAX_CONCURRENT_PUSHES: usize = 16;

/// The largest push body: a full batch of events of ordinary size, with room to spare.
pub const MAX_PUSH_BODY: usize = 16 * 1024 * 1024;

impl<S> std::fmt::Debug for App<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("server_key", &hex::encode(self.key.verifying_key().as_bytes()))
            .field("credentials", &self.credential_key.is_some())
            .finish_non_exhaustive()
    }
}

impl<S: Store> App<S> {
    pub fn new(store: S, key: SigningKey) -> Self {
        Self {
            store,
            key,
            credential_key: None,
            log_locks: Default::default(),
            pushes: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_PUSHES)),
            draining: Default::default(),
        }
    }

    /// Start shutting down: requests from now on are answered with a retryable 503 (requests
    /// already running finish), and readiness turns false so load balancers route elsewhere.
    pub fn drain(&self) {
        self.draining.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether [`App::drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Serve device credentials, kept encrypted at rest under `data_key`.
    pub fn with_credential_key(mut self, data_key: [u8; 32]) -> Self {
        self.credential_key = Some(Zeroizing::new(data_key));
        self
    }

    /// Encrypt and store a device credential.
    pub async fn set_credential(
        &self,
        device_id: &str,
        kind: &str,
        secret: &[u8],
    ) -> Result<(), StoreError> {
        let key = self.credential_key.as_ref().ok_or_else(|| {
            StoreError::Invalid("this server has no credential data key configured".into())
        })?;
        if !CREDENTIAL_KINDS.contains(&kind) {
            return Err(StoreError::Invalid(format!(
                "credential kind {kind:?} is not one of {}",
                CREDENTIAL_KINDS.join(", ")
            )));
        }
        let (nonce, ciphertext) = sealed::encrypt_at_rest(key, device_id, kind, secret)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.store
            .set_credential(&StoredCredential {
                device_id: device_id.into(),
                kind: kind.into(),
                nonce,
                ciphertext,
            })
            .await
    }

    /// The technician's device credentials, decrypted and sealed to their key.
    async fn sealed_credentials(&self, t: &Technician) -> Result<Vec<SealedCredential>, ApiError> {
        let Some(key) = &self.credential_key else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for c in self.store.credentials_for(&t.id).await? {
            let secret = sealed::decrypt_at_rest(key, &c.device_id, &c.kind, &c.nonce, &c.ciphertext)
                .map_err(|e| {
                    tracing::error!(error = %e, "stored credential does not decrypt with the data key");
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "credential_store",
                        "a stored device credential cannot be decrypted; the inventory team must check the server's credential key",
                    )
                })?;
            out.push(sealed::seal(&t.public_key, &t.id, &c.device_id, &c.kind, &secret).map_err(
                |e| {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "credential_store",
                        e.to_string(),
                    )
                },
            )?);
        }
        Ok(out)
    }

    /// Lock every log named in the batch, in a fixed order (no deadlock between batches).
    async fn lock_logs(
        &self,
        events: &[(Event, push::Prepared)],
    ) -> Vec<tokio::sync::OwnedMutexGuard<()>> {
        let ids: std::collections::BTreeSet<uuid::Uuid> =
            events.iter().map(|(e, _)| e.body.log_id).collect();
        let locks: Vec<_> = {
            let mut map = self.log_locks.lock().unwrap_or_else(|p| p.into_inner());
            // Forget locks nobody holds or waits for.
            map.retain(|_, l| Arc::strong_count(l) > 1);
            ids.iter().map(|id| map.entry(*id).or_default().clone()).collect()
        };
        let mut guards = Vec::with_capacity(locks.len());
        for l in locks {
            guards.push(l.lock_owned().await);
        }
        guards
    }

    /// Hex of the checkpoint key's public half.
    pub fn public_key(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }
}

/// A new random API token (shown once; store only [`token_hash`]).
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("fpt_{}", hex::encode(bytes))
}

/// SHA-256 of a token, hex: what the database holds.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// An API error: HTTP status plus `{code, message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
    fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or unknown token: send `Authorization: Bearer <token>` with a token from the inventory team",
        )
    }
    fn forbidden(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", msg)
    }
    fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", msg)
    }
    fn not_found(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", msg)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => Self::not_found(format!("{m} not found")),
            StoreError::Invalid(m) => Self::bad_request(m),
            StoreError::Exists(m) => Self::new(StatusCode::CONFLICT, "already_exists", m),
            StoreError::Conflict(m) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "concurrent_push", m)
            }
            other => {
                tracing::error!(error = %other, "storage error");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    "the inventory database is unavailable; retry later",
                )
            }
        }
    }
}

/// Seconds a client should wait before retrying a 503.
pub const RETRY_AFTER_SECS: u64 = 2;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retryable = self.status == StatusCode::SERVICE_UNAVAILABLE;
        let mut r =
            (self.status, Json(ApiErrorBody { code: self.code.into(), message: self.message }))
                .into_response();
        if retryable {
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(RETRY_AFTER_SECS));
        }
        r
    }
}

type Shared<S> = State<Arc<App<S>>>;

/// A JSON request body, read by the handler once the caller is authenticated ([`Body::get`]):
/// a body that is not JSON, not sent as JSON, or not of the operation's shape is then a 400 with
/// the API's error body (`invalid_body`), as every other refusal, instead of the framework's
/// plain-text 415/422, and a caller without a valid token hears 401 whatever it sent.
struct Body<T>(Result<T, ApiError>);

impl<T> Body<T> {
    fn get(self) -> Result<T, ApiError> {
        self.0
    }
}

impl<T, St> axum::extract::FromRequest<St> for Body<T>
where
    T: serde::de::DeserializeOwned,
    St: Send + Sync,
{
    type Rejection = std::convert::Infallible;

    async fn from_request(
        req: axum::extract::Request,
        state: &St,
    ) -> Result<Self, std::convert::Infallible> {
        Ok(Body(Json::<T>::from_request(req, state).await.map(|Json(t)| t).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!(
                    "{}: send the JSON body this operation describes (see /v1/openapi.json)",
                    e.body_text()
                ),
            )
        })))
    }
}

/// Query parameters. Ones that do not parse are a 400 with the API's error body
/// (`invalid_query`), as every other refusal.
struct Params<T>(T);

impl<T, St> axum::extract::FromRequestParts<St> for Params<T>
where
    T: serde::de::DeserializeOwned,
    St: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &St,
    ) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(t)) => Ok(Params(t)),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("{}: see /v1/openapi.json for this operation's parameters", e.body_text()),
            )),
        }
    }
}

async fn principal<S: Store>(app: &App<S>, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(ApiError::unauthorized)?;
    let p = app.store.principal(&token_hash(token)).await?.ok_or_else(ApiError::unauthorized)?;
    // The request log names who asked (never the token).
    let span = tracing::Span::current();
    match &p {
        Principal::Technician(t) => span.record("technician", tracing::field::display(&t.id)),
        Principal::Admin => span.record("admin", true),
    };
    Ok(p)
}

async fn technician<S: Store>(app: &App<S>, headers: &HeaderMap) -> Result<Technician, ApiError> {
    match principal(app, headers).await? {
        Principal::Technician(t) => Ok(t),
        Principal::Admin => {
            Err(ApiError::forbidden("this endpoint is for technicians; use a technician token"))
        }
    }
}

async fn admin<S: Store>(app: &App<S>, headers: &HeaderMap) -> Result<(), ApiError> {
    match principal(app, headers).await? {
        Principal::Admin => Ok(()),
        Principal::Technician(_) => Err(ApiError::forbidden("this operation needs an admin token")),
    }
}

/// `None` = admin (all sites), `Some(id)` = that technician's sites only.
async fn scope<S: Store>(app: &App<S>, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    Ok(match principal(app, headers).await? {
        Principal::Admin => None,
        Principal::Technician(t) => Some(t.id),
    })
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    version: &'static str,
    api: &'static str,
}

async fn health() -> Json<Health> {
    Json(Health { status: "ok", version: crate::VERSION, api: "v1" })
}

#[derive(Serialize)]
struct Ready {
    status: &'static str,
    database: &'static str,
}

/// How long the readiness check waits for the database.
pub const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Readiness: 200 when this instance takes requests and its database answers a round trip,
/// 503 (retryable) while shutting down or when the database does not answer.
async fn ready<S: Store>(State(app): Shared<S>) -> Result<Json<Ready>, ApiError> {
    if app.is_draining() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "this server instance is shutting down; use another",
        ));
    }
    match tokio::time::timeout(READY_TIMEOUT, app.store.ping()).await {
        Ok(Ok(())) => Ok(Json(Ready { status: "ready", database: "ok" })),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: the database does not answer");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "the inventory database does not answer; retry later",
            ))
        }
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            format!("the inventory database did not answer within {}s", READY_TIMEOUT.as_secs()),
        )),
    }
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

#[derive(Serialize, Deserialize)]
struct ServerKey {
    public_key: String,
}

async fn server_key<S: Store>(State(app): Shared<S>) -> Json<ServerKey> {
    Json(ServerKey { public_key: app.public_key() })
}

async fn pull<S: Store>(
    State(app): Shared<S>,
    headers: HeaderMap,
) -> Result<Json<PullResponse>, ApiError> {
    let t = technician(&app, &headers).await?;
    Ok(Json(PullResponse {
        server_time: chrono::Utc::now(),
        server_key: app.public_key(),
        technician_id: t.id.clone(),
        sites: app.store.sites(Some(&t.id)).await?,
        devices: app.store.devices(Some(&t.id)).await?,
        work_orders: app.store.work_orders(Some(&t.id)).await?,
        catalog: app.store.catalog_for(&t.id).await?,
        trust_store: app.store.trust_store().await?,
        catalog_listing: app.store.catalog_listing().await?,
        credentials: app.sealed_credentials(&t).await?,
    }))
}

async fn bundle<S: Store>(
    State(app): Shared<S>,
    headers: HeaderMap,
    Path(sha256): Path<String>,
) -> Result<Response, ApiError> {
    let sha256 = sha256.to_ascii_lowercase();
    let missing =
        || ApiError::not_found(format!("no bundle with SHA-256 {sha256} in your catalog"));
    // A technician downloads only what their catalog lists: a bundle published to other sites
    // answers like one that does not exist.
    if let Principal::Technician(t) = principal(&app, &headers).await?
        && !app.store.catalog_for(&t.id).await?.iter().any(|e| e.sha256 == sha256)
    {
        return Err(missing());
    }
    let bytes = app.store.bundle_bytes(&sha256).await?.ok_or_else(missing)?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

async fn push_events<S: Store>(
    State(app): Shared<S>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<PushAck>, ApiError> {
    let t = technician(&app, &headers).await?;
    if body.len() > MAX_PUSH_BODY {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!("a push body is at most {MAX_PUSH_BODY} bytes; split the batch"),
        ));
    }
    let _slot = app.pushes.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "the server is handling many pushes; retry shortly",
        )
    })?;
    // Count the events before building any of them.
    #[derive(serde::Deserialize)]
    struct Count<'a> {
        #[serde(borrow)]
        events: Vec<&'a serde_json::value::RawValue>,
    }
    let count: Count<'_> = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("push body is not a valid event batch: {e}")))?;
    if count.events.len() > MAX_PUSH_EVENTS {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!("at most {MAX_PUSH_EVENTS} events per push; split the batch"),
        ));
    }
    let req: PushRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("push body is not a valid event batch: {e}")))?;
    // Signatures and hashes do not depend on the log's state: check them before taking the lock,
    // skipping events the server already holds (heads only move forward).
    let mut held = std::collections::BTreeMap::new();
    for e in &req.events {
        if let std::collections::btree_map::Entry::Vacant(v) = held.entry(e.body.log_id) {
            let head = app.store.log_head(&e.body.log_id.to_string()).await?;
            v.insert(head.map(|h| h.last_seq).unwrap_or(0));
        }
    }
    let prepared = tokio::task::spawn_blocking(move || push::prepare(req.events, &held))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "signature check task failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "signature check failed; retry",
            )
        })?;
    let _guards = app.lock_logs(&prepared).await;
    // Other instances on the same database take turns on these logs too.
    let log_ids: Vec<String> = prepared
        .iter()
        .map(|(e, _)| e.body.log_id)
        .collect::<std::collections::BTreeSet<_>>()
        .iter()
        .map(|l| l.to_string())
        .collect();
    let db_lock = app.store.lock_logs(&log_ids).await?;
    let result = push::push(&app.store, &app.key, &t, prepared).await;
    db_lock.release().await;
    let (ack, added) = result?;
    tracing::info!(technician = %t.id, added, stored = ack.stored.len(), retryable = ack.retryable.len(), rejected = ack.rejected.len(), "push");
    Ok(Json(ack))
}

async fn device_history<S: Store>(
    State(app): Shared<S>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Vec<Event>>, ApiError> {
    let scope = scope(&app, &headers).await?;
    let device = app.store.device(&id).await?;
    // A technician learns nothing about devices outside their sites: an unassigned device
    // answers exactly like one that does not exist.
    let hidden = || {
        ApiError::not_found(format!(
            "device {id} is not in the inventory, or not at a site assigned to you"
        ))
    };
    let device = match (device, &scope) {
        (Some(d), Some(t)) if !app.store.is_assigned(t, &d.site_id).await? => return Err(hidden()),
        (Some(d), _) => d,
        (None, _) => return Err(hidden()),
    };
    Ok(Json(app.store.device_history(&device).await?))
}

/// Whether a device runs its approved version (versions compared numerically when both parse).
fn at_approved(d: &Device) -> bool {
    match (&d.approved_version, &d.current_firmware) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(a), Some(c)) => match (a.parse::<Version>(), c.parse::<Version>()) {
            (Ok(a), Ok(c)) => a == c,
            _ => a == c,
        },
    }
}

/// Devices not at their approved version: all (`None`) or at the technician's sites.
pub async fn report_not_at_approved<S: Store>(
    store: &S,
    technician: Option<&str>,
) -> Result<Vec<Device>, StoreError> {
    Ok(report_page(store, technician, None).await?.0)
}

/// One page of [`report_not_at_approved`] (`page`: after that device id, at most that many read),
/// and the id the next page starts after when there may be more.
pub async fn report_page<S: Store>(
    store: &S,
    technician: Option<&str>,
    page: Option<(&str, u32)>,
) -> Result<(Vec<Device>, Option<String>), StoreError> {
    let read = store.devices_off_approved(technician, page).await?;
    // A full page may have a next one: it starts after the last device read (which may itself
    // be left out below).
    let next = match page {
        Some((_, limit)) if read.len() >= limit as usize => read.last().map(|d| d.id.clone()),
        _ => None,
    };
    // The database leaves out devices whose firmware is the approved string; versions that are
    // equal but spelled differently are compared here.
    Ok((read.into_iter().filter(|d| !at_approved(d)).collect(), next))
}

/// `text` as a query-string value (RFC 3986 unreserved characters kept, every other byte %XX).
fn query_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The most devices one page of a report holds.
pub const MAX_REPORT_PAGE: u32 = 10_000;

/// `GET /v1/reports/not-at-approved-version` query: without `limit`, the whole report.
#[derive(Debug, Deserialize)]
pub struct ReportPageQuery {
    /// At most this many devices (1 to [`MAX_REPORT_PAGE`]).
    pub limit: Option<u32>,
    /// Only devices whose id sorts after this one (the `next` of the previous page).
    pub after: Option<String>,
}

/// Devices in work orders that are not at their approved version, with the recorded reasons.
pub async fn report_planned_not_patched<S: Store>(
    store: &S,
    technician: Option<&str>,
) -> Result<Vec<PlannedNotPatched>, StoreError> {
    // Work orders, devices and the approved-version filter are joined in the database.
    Ok(store
        .planned_off_approved(technician)
        .await?
        .into_iter()
        .filter(|(_, d)| !at_approved(d))
        .map(|(work_order_id, device)| PlannedNotPatched { work_order_id, device })
        .collect())
}

/// The report, whole or (with `limit` or `after`) one page: a page that may have a next one says
/// where it starts in a `Link: <...>; rel="next"` header and in `X-Next-After`.
async fn not_at_approved<S: Store>(
    State(app): Shared<S>,
    headers: HeaderMap,
    Params(q): Params<ReportPageQuery>,
) -> Result<Response, ApiError> {
    let scope = scope(&app, &headers).await?;
    let page = match q.limit {
        // `after` alone asks for a page of the largest size.
        None => q.after.as_deref().map(|after| (after, MAX_REPORT_PAGE)),
        Some(l) if l == 0 || l > MAX_REPORT_PAGE => {
            return Err(ApiError::bad_request(format!(
                "limit {l}: give a page size from 1 to {MAX_REPORT_PAGE}"
            )));
        }
        Some(l) => Some((q.after.as_deref().unwrap_or(""), l)),
    };
    let (devices, next) = report_page(&app.store, scope.as_deref(), page).await?;
    let mut resp = Json(devices).into_response();
    if let (Some(next), Some((_, limit))) = (next, page) {
        let encoded = query_encode(&next);
        let link = format!(
            "</v1/reports/not-at-approved-version?limit={limit}&after={encoded}>; rel=\"next\""
        );
        let h = resp.headers_mut();
        if let Ok(v) = axum::http::HeaderValue::from_str(&link) {
            h.insert(axum::http::header::LINK, v);
        }
        if let Ok(v) = axum::http::HeaderValue::from_str(&encoded) {
            h.insert("x-next-after", v);
        }
    }
    Ok(resp)
}

async fn planned_not_patched<S: Store>(
    State(app): Shared<S>,
    headers: HeaderMap,
) -> Result<Json<Vec<PlannedNotPatched>>, ApiError> {
    let scope = scope(&app, &headers).await?;
    Ok(Json(report_planned_not_patched(&app.store, scope.as_deref()).await?))
}

/// `POST /v1/admin/technicians` body.
#[derive(Debug, Serialize, Deserialize)]
pub struct NewTechnician {
    pub id: String,
    pub name: String,
    pub public_key: String,
}

/// A token, shown once.
#[derive(Debug, Serialize, Deserialize)]
pub struct IssuedToken {
    pub token: String,
}

/// Register a technician after checking the key is a valid ed25519 public key.
pub async fn create_technician<S: Store>(
    store: &S,
    t: NewTechnician,
) -> Result<Technician, StoreError> {
    if fieldpatch_proto::wire::parse_key(&t.public_key).is_none() {
        return Err(StoreError::Invalid(format!(
            "public key {:?} is not an ed25519 public key: give the 64 hex digits `fieldpatch keys generate` printed for the technician (64 hex digits are not enough: they must encode a point of the curve)",
            t.public_key
        )));
    }
    if t.id.trim().is_empty() {
        return Err(StoreError::Invalid("technician id must not be empty".into()));
    }
    let tech = Technician { id: t.id, name: t.name, public_key: t.public_key.to_ascii_lowercase() };
    store.create_technician(&tech).await?;
    Ok(tech)
}

/// Issue a new token for a technician (or an admin token for `None`).
pub async fn issue_token<S: Store>(
    store: &S,
    technician_id: Option<&str>,
    label: &str,
) -> Result<String, StoreError> {
    issue_token_for(store, technician_id, label, TOKEN_LIFETIME).await
}

/// How long a token works when nothing else is said: a season of site visits.
pub const TOKEN_LIFETIME: chrono::Duration = chrono::Duration::days(90);

/// Issue a token that works for `lifetime` (refused when out of range).
pub async fn issue_token_for<S: Store>(
    store: &S,
    technician_id: Option<&str>,
    label: &str,
    lifetime: chrono::Duration,
) -> Result<String, StoreError> {
    let expires = chrono::Utc::now()
        .checked_add_signed(lifetime)
        .filter(|_| lifetime > chrono::Duration::zero())
        .ok_or_else(|| {
            StoreError::Invalid(format!("a token lifetime of {lifetime} is out of range"))
        })?;
    let token = new_token();
    store.add_token(&token_hash(&token), technician_id, label, expires).await?;
    Ok(token)
}

async fn admin_create_technician<S: Store>(
    State(app): Shared<S>,
    headers: HeaderMap,
    body: Body<NewTechnician>,
) -> Result<(StatusCode, Json<Technician>), ApiError> {
    admin(&app, &headers).await?;
    let body = body.get()?;
    Ok((StatusCode::CREATED, Json(create_technician(&app.store, body).await?)))
}

async fn admin_issue_token<S: Store>(
    State(app): Shared<S>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<IssuedToken>), ApiError> {
    admin(&app, &headers).await?;
    let token = issue_token(&app.store, Some(&id), "api").await?;
    Ok((StatusCode::CREATED, Json(IssuedToken { token })))
}

async fn admin_sites<S: Store>(
    State(app): Shared<S>,
    headers: HeaderMap,
    sites: Body<Vec<Site>>,
) -> Result<StatusCode, ApiError> {
    admin(&app, &headers).await?;
    let sites = sites.get()?;
    app.store.upsert_sites(&sites).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn admin_devices<S: Store>(
    State(app): Shared<S>,
    headers: HeaderMap,
    devices: Body<Vec<Device>>,
) -> Result<StatusCode, ApiError> {
    admin(&app, &headers).await?;
    let devices = devices.get()?;
    app.store.upsert_devices(&devices).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn admin_work_orders<S: Store>(
    State(app): Shared<S>,
    headers: HeaderMap,
    orders: Body<Vec<WorkOrder>>,
) -> Result<StatusCode, ApiError> {
    admin(&app, &headers).await?;
    let orders = orders.get()?;
    for w in &orders {
        app.store.upsert_work_order(w).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn admin_assign<S: Store>(
    State(app): Shared<S>,
    headers: HeaderMap,
    Path((tech, site)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    admin(&app, &headers).await?;
    app.store.assign(&tech, &site).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn admin_unassign<S: Store>(
    State(app): Shared<S>,
    headers: HeaderMap,
    Path((tech, site)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    admin(&app, &headers).await?;
    if app.store.unassign(&tech, &site).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("site {site} is not assigned to {tech}")))
    }
}

/// `PUT /v1/admin/devices/{id}/credentials/{kind}` body.
#[derive(Deserialize)]
pub struct NewCredential {
    pub secret: String,
}

impl std::fmt::Debug for NewCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewCredential { secret: <redacted> }")
    }
}

async fn admin_set_credential<S: Store>(
    State(app): Shared<S>,
    headers: HeaderMap,
    Path((device, kind)): Path<(String, String)>,
    body: Body<NewCredential>,
) -> Result<StatusCode, ApiError> {
    admin(&app, &headers).await?;
    let body = body.get()?;
    let secret = Zeroizing::new(body.secret.into_bytes());
    app.set_credential(&device, &kind, &secret).await?;
    Ok(StatusCode::NO_CONTENT)
}

impl From<crate::publish::PublishError> for ApiError {
    fn from(e: crate::publish::PublishError) -> Self {
        match e {
            crate::publish::PublishError::Store(e) => e.into(),
            other => Self::new(StatusCode::UNPROCESSABLE_ENTITY, other.code(), other.to_string()),
        }
    }
}

/// Publish a trust store (JSON body), checked as `admin publish-trust` checks it.
async fn admin_trust_store<S: Store>(
    State(app): Shared<S>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    admin(&app, &headers).await?;
    crate::publish::publish_trust_store(&app.store, &body, chrono::Utc::now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Publish a signed catalog listing (JSON body), checked as `admin publish-listing` checks it.
async fn admin_catalog_listing<S: Store>(
    State(app): Shared<S>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    admin(&app, &headers).await?;
    crate::publish::publish_listing(&app.store, &body, chrono::Utc::now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/admin/sites/{id}/audit-export` query.
#[derive(Debug, Deserialize)]
pub struct AuditExportQuery {
    pub from: Option<String>,
    pub to: Option<String>,
}

/// Every visit of a site as audit archives signed by the server key (see [`crate::export`]): one
/// tar holding `visit-<id>.fieldpatch-audit.tar` per visit, oldest first.
async fn admin_audit_export<S: Store>(
    State(app): Shared<S>,
    headers: HeaderMap,
    Path(site): Path<String>,
    Params(q): Params<AuditExportQuery>,
) -> Result<Response, ApiError> {
    use crate::export::{self, ExportError};
    admin(&app, &headers).await?;
    let bound = |t: Option<String>, end| {
        t.map(|t| export::parse_bound(&t, end))
            .transpose()
            .map_err(|e| ApiError::bad_request(e.to_string()))
    };
    let (from, to) = (bound(q.from, false)?, bound(q.to, true)?);
    let visits = match export::export_site(&app.store, &app.key, &site, from, to).await {
        Ok(v) => v,
        Err(ExportError::Store(e)) => return Err(e.into()),
        Err(e @ ExportError::NoSuchSite(_)) => return Err(ApiError::not_found(e.to_string())),
        Err(e @ ExportError::Invalid(_)) => return Err(ApiError::bad_request(e.to_string())),
        Err(e) => {
            tracing::error!(error = %e, "audit export");
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "export_failed",
                e.to_string(),
            ));
        }
    };
    let files: Vec<(String, Vec<u8>)> =
        visits.into_iter().map(|v| (v.file_name(), v.archive)).collect();
    let tar = fieldpatch_proto::audit::pack(&files).map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "export_failed", e.to_string())
    })?;
    Ok(([(header::CONTENT_TYPE, "application/x-tar")], tar).into_response())
}

/// Longest a request may take, body upload included; a stalled client gets 408 and the
/// connection's resources back.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

async fn request_timeout(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the request did not complete within {}s; retry", REQUEST_TIMEOUT.as_secs()),
        )
        .into_response(),
    }
}

/// While shutting down, every request but health and readiness gets a retryable 503.
async fn drain_gate(
    draining: Arc<std::sync::atomic::AtomicBool>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let exempt = matches!(req.uri().path(), "/v1/health" | "/v1/ready");
    if draining.load(std::sync::atomic::Ordering::SeqCst) && !exempt {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "this server instance is shutting down; retry (another instance will answer)",
        )
        .into_response();
    }
    next.run(req).await
}

/// The request log: one line per response with method, route (the path pattern, not the
/// request's path), status, latency and who asked (technician id, or admin). Headers are never
/// logged, so neither are tokens.
fn request_log<B>(req: &axum::http::Request<B>) -> tracing::Span {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    tracing::info_span!(
        "request",
        method = %req.method(),
        route = %route,
        technician = tracing::field::Empty,
        admin = tracing::field::Empty,
    )
}

fn response_log(res: &Response, latency: std::time::Duration, _span: &tracing::Span) {
    let status = res.status().as_u16();
    let latency_ms = latency.as_secs_f64() * 1000.0;
    if res.status().is_server_error() {
        tracing::warn!(status, latency_ms, "response");
    } else {
        tracing::info!(status, latency_ms, "response");
    }
}

/// One route: method, path pattern and handler.
pub type Route<S> = (Method, &'static str, axum::routing::MethodRouter<Arc<App<S>>>);

fn route<S: Store, H, T>(method: Method, path: &'static str, handler: H) -> Route<S>
where
    H: axum::handler::Handler<T, Arc<App<S>>>,
    T: 'static,
{
    #[allow(
        clippy::expect_used,
        reason = "the routes name standard methods (`Method::GET`...), which all have a filter"
    )]
    let filter = axum::routing::MethodFilter::try_from(method.clone())
        .expect("the API uses standard HTTP methods only");
    (method, path, axum::routing::on(filter, handler))
}

/// Every route of the `/v1` API. The router is built from this list, and the OpenAPI document's
/// test compares the document with it, so neither can gain or lose a route unnoticed.
pub fn routes<S: Store>() -> Vec<Route<S>> {
    use Method as M;
    vec![
        route(M::GET, "/v1/health", health),
        route(M::GET, "/v1/ready", ready::<S>),
        route(M::GET, "/v1/openapi.json", openapi),
        route(M::GET, "/v1/server-key", server_key::<S>),
        route(M::GET, "/v1/pull", pull::<S>),
        route(M::GET, "/v1/catalog/{sha256}", bundle::<S>),
        route(M::POST, "/v1/push", push_events::<S>),
        route(M::GET, "/v1/devices/{id}/history", device_history::<S>),
        route(M::GET, "/v1/reports/not-at-approved-version", not_at_approved::<S>),
        route(M::GET, "/v1/reports/planned-not-patched", planned_not_patched::<S>),
        route(M::POST, "/v1/admin/technicians", admin_create_technician::<S>),
        route(M::POST, "/v1/admin/technicians/{id}/tokens", admin_issue_token::<S>),
        route(M::POST, "/v1/admin/sites", admin_sites::<S>),
        route(M::POST, "/v1/admin/devices", admin_devices::<S>),
        route(M::POST, "/v1/admin/work-orders", admin_work_orders::<S>),
        route(M::PUT, "/v1/admin/assignments/{technician}/{site}", admin_assign::<S>),
        route(M::DELETE, "/v1/admin/assignments/{technician}/{site}", admin_unassign::<S>),
        route(M::GET, "/v1/admin/sites/{id}/audit-export", admin_audit_export::<S>),
        route(M::PUT, "/v1/admin/trust-store", admin_trust_store::<S>),
        route(M::PUT, "/v1/admin/catalog-listing", admin_catalog_listing::<S>),
        route(M::PUT, "/v1/admin/devices/{id}/credentials/{kind}", admin_set_credential::<S>),
    ]
}

/// A path the API does not have (an unknown path, or a known one with an empty id): the API's
/// JSON error body, as every other answer.
async fn no_such_path(uri: axum::http::Uri) -> ApiError {
    let path: String = uri.path().chars().take(200).collect();
    ApiError::not_found(format!("the API has no {path}: see /v1/openapi.json for its paths"))
}

/// The `/v1` API over `app`.
pub fn router<S: Store>(app: Arc<App<S>>) -> Router {
    let draining = app.draining.clone();
    // One method router per path, merging the methods of that path.
    let mut paths: Vec<(&'static str, axum::routing::MethodRouter<Arc<App<S>>>)> = Vec::new();
    for (_, path, handler) in routes::<S>() {
        match paths.iter().position(|(p, _)| *p == path) {
            Some(i) => {
                let (p, merged) = paths.remove(i);
                paths.insert(i, (p, merged.merge(handler)));
            }
            None => paths.push((path, handler)),
        }
    }
    paths
        .into_iter()
        .fold(Router::new(), |r, (path, handler)| r.route(path, handler))
        .fallback(no_such_path)
        .layer(axum::middleware::from_fn(request_timeout))
        .layer(axum::middleware::from_fn(move |req, next| drain_gate(draining.clone(), req, next)))
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(request_log)
                .on_request(())
                .on_response(response_log)
                .on_failure(()),
        )
        .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
        .with_state(app)
}
