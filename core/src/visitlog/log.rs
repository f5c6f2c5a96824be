//! The visit log in the local store: appending, reading, verifying, and the sync client's view.
//!
//! Design decisions:
//!
//! * **One log per technician key.** A log's events are all signed by one key, recorded when the
//!   log is created; verification names any event signed by another key (a forged insertion).
//! * **Appending is one `BEGIN IMMEDIATE` transaction**: read the head, build the event (UUID v7,
//!   next seq, previous hash, time), sign it, insert one row, commit. The write lock is taken before
//!   the head is read, so two processes appending to one log never pick the same seq, and a process
//!   killed at any point leaves either the whole event or nothing (SQLite's WAL discards
//!   uncommitted frames). `UNIQUE (log_id, seq)` backs this up.
//! * **The row stores the signed bytes.** `body` is the canonical JSON exactly as signed; `seq`,
//!   `hash`, `prev_hash`, `kind`, ... are an index over it. Verification recomputes everything from
//!   `body` + `signature` and cross-checks the index, so editing, removing, reordering or inserting
//!   any row is named at the first bad event.
//! * **Every log begins with `log_started`** (seq 1), written in the same transaction as the first
//!   event a caller appends. It names the head this log continues, as the opener said
//!   ([`VisitLog::starting_from`], see [`super::continuity`]); a log that starts without being told
//!   names nothing.
//! * **Sync** reads events after a seq ([`Store::log_events`]) and records what the server accepted
//!   ([`Store::mark_log_pushed`]); a log whose head is behind what was already pushed has lost
//!   events and fails verification.

use super::continuity::LogStart;
use super::event::{
    ChainError, Event, EventKind, GENESIS_HASH, TimeSource, UnsignedEvent, verify_chain,
};
use crate::store::{Store, StoreError};
use ed25519_dalek::SigningKey;
use serde::Serialize;
use sqlx::Row;
use ts_rs::TS;
use uuid::Uuid;

/// How many rows verification and sync read at a time.
const PAGE: i64 = 1000;

/// Store fact: when a sync last found the laptop clock in step with the server's.
const CLOCK_CHECKED_META: &str = "clock.server_checked_at";
/// Per log, the last seq whose server-checked time no longer counts as trusted (JSON object).
const EVENT_TIMES_DISTRUSTED_META: &str = "clock.event_times_distrusted_through";

/// Largest clock difference to the server that still counts as "checked".
pub const MAX_CLOCK_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(2);

/// Errors appending to or reading the visit log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no visit log {0} in the local store; `fieldpatch log show` lists the logs")]
    NoSuchLog(Uuid),
    #[error("no open visit {0} in this visit log; open a visit first")]
    NoOpenVisit(Uuid),
    #[error("cannot mark seq {requested} of log {log_id} as pushed: the log ends at seq {head}")]
    PushBeyondHead { log_id: Uuid, requested: u64, head: u64 },
    #[error("visit log row is unreadable: {0}; run `fieldpatch log verify` to locate the damage")]
    Unreadable(String),
}

impl LogError {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            LogError::Store(e) => e.code(),
            LogError::NoSuchLog(_) => "no_such_log",
            LogError::NoOpenVisit(_) => "no_open_visit",
            LogError::PushBeyondHead { .. } => "log_cursor",
            LogError::Unreadable(_) => "log_unreadable",
        }
    }
}

impl From<sqlx::Error> for LogError {
    fn from(e: sqlx::Error) -> Self {
        LogError::Store(StoreError::Sql(e))
    }
}

/// What a caller asks to append; the log fills in id, seq, time, signer and prev_hash.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub kind: EventKind,
    pub visit_id: Option<Uuid>,
    pub device: Option<String>,
    /// `None`: the log decides ([`TimeSource::ServerChecked`] once a sync has checked the clock,
    /// [`TimeSource::SystemClock`] before).
    pub time_source: Option<TimeSource>,
}

impl NewEvent {
    /// An event of `kind` about no particular visit or device, timed by the system clock.
    pub fn new(kind: EventKind) -> Self {
        NewEvent { kind, visit_id: None, device: None, time_source: None }
    }
    /// Attach the event to a visit.
    pub fn visit(mut self, visit_id: Uuid) -> Self {
        self.visit_id = Some(visit_id);
        self
    }
    /// Say which device the event is about (inventory id or serial number).
    pub fn device(mut self, device: impl Into<String>) -> Self {
        self.device = Some(device.into());
        self
    }
    /// Say where the time came from (for example [`TimeSource::Device`]).
    pub fn time_source(mut self, source: TimeSource) -> Self {
        self.time_source = Some(source);
        self
    }
}

/// A visit as recorded in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VisitRecord {
    pub visit_id: Uuid,
    pub log_id: Uuid,
    pub site: String,
    pub work_order: Option<String>,
    pub opened_at: String,
    /// `None` while the visit is open.
    pub closed_at: Option<String>,
}

/// A log in the store, with its head and sync progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogInfo {
    pub log_id: Uuid,
    /// Hex ed25519 public key that signs every event of this log.
    pub signer: String,
    pub created_at: String,
    /// Highest seq (0 when empty).
    pub head_seq: u64,
    /// Hash of the last event ([`GENESIS_HASH`] when empty).
    pub head_hash: String,
    pub sync: SyncState,
}

/// Sync progress of one log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct SyncState {
    /// Every event up to this seq was accepted by the server (0: none).
    pub last_pushed_seq: u64,
    /// The server's opaque checkpoint from the last pull, if any.
    pub server_checkpoint: Option<String>,
}

/// What is wrong with a stored log, naming the first bad event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogProblem {
    #[error("{0}")]
    Chain(ChainError),
    #[error(
        "event at row seq {seq} ({id}): stored content is not a readable event ({detail}); the row was edited"
    )]
    Unreadable { seq: u64, id: String, detail: String },
    #[error(
        "event seq {seq} ({id}): stored {field} does not match the signed event; the row was edited"
    )]
    ColumnMismatch { seq: u64, id: Uuid, field: &'static str },
    #[error(
        "event seq {seq} ({id}): signed by {signer}, but this log belongs to {expected}; the event was inserted from elsewhere"
    )]
    ForeignSigner { seq: u64, id: Uuid, signer: String, expected: String },
    #[error(
        "the log ends at seq {head_seq} but events up to seq {pushed_seq} were already pushed; events after seq {head_seq} were removed"
    )]
    Truncated { head_seq: u64, pushed_seq: u64 },
}

impl LogProblem {
    /// Seq of the first bad event, where one event is to blame.
    pub fn seq(&self) -> Option<u64> {
        match self {
            LogProblem::Chain(c) => Some(match c {
                ChainError::BadSigner { seq, .. }
                | ChainError::MalformedSignature { seq, .. }
                | ChainError::BadSignature { seq, .. }
                | ChainError::Sequence { seq, .. }
                | ChainError::SequenceExhausted { seq, .. }
                | ChainError::BrokenLink { seq, .. }
                | ChainError::WrongLog { seq, .. } => *seq,
            }),
            LogProblem::Unreadable { seq, .. }
            | LogProblem::ColumnMismatch { seq, .. }
            | LogProblem::ForeignSigner { seq, .. } => Some(*seq),
            LogProblem::Truncated { .. } => None,
        }
    }
}

/// The result of verifying one stored log. Serializes as `LogVerificationShape` (the problem as
/// text, the seq of the first bad event as `bad_seq`), which its TypeScript type is made from.
#[derive(Debug, Clone, PartialEq, Eq, TS)]
#[ts(as = "LogVerificationShape")]
pub struct LogVerification {
    pub log_id: Uuid,
    pub signer: String,
    /// Events that verified before the first problem (all of them when `problem` is `None`).
    pub verified: u64,
    /// `None`: the whole log verifies.
    pub problem: Option<LogProblem>,
}

/// How a [`LogVerification`] serializes, for `--json` and the app.
#[derive(Debug, Serialize, TS)]
#[ts(rename = "LogVerification")]
pub struct LogVerificationShape {
    pub log_id: Uuid,
    /// Hex ed25519 public key that signs the log.
    pub signer: String,
    /// Events that verified before the first problem (all of them when `problem` is null).
    pub verified: u64,
    /// Whether the whole log verifies.
    pub ok: bool,
    /// What is wrong, naming the first bad event; null when the log verifies.
    pub problem: Option<String>,
    /// Seq of the first bad event, where one event is to blame.
    pub bad_seq: Option<u64>,
}

impl From<&LogVerification> for LogVerificationShape {
    fn from(v: &LogVerification) -> Self {
        LogVerificationShape {
            log_id: v.log_id,
            signer: v.signer.clone(),
            verified: v.verified,
            ok: v.is_ok(),
            problem: v.problem.as_ref().map(|p| p.to_string()),
            bad_seq: v.problem.as_ref().and_then(LogProblem::seq),
        }
    }
}

impl Serialize for LogVerification {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        LogVerificationShape::from(self).serialize(s)
    }
}

impl LogVerification {
    pub fn is_ok(&self) -> bool {
        self.problem.is_none()
    }
}

/// The appending side of a visit log: holds the technician's signing key.
pub struct VisitLog {
    store: Store,
    key: SigningKey,
    signer: String,
    log_id: Uuid,
    /// What `log_started` says if this log has no event yet when the first one is appended.
    start: LogStart,
}

impl std::fmt::Debug for VisitLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VisitLog")
            .field("log_id", &self.log_id)
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

impl VisitLog {
    /// Open the log signed by `key`, creating it on first use.
    pub async fn open(store: &Store, key: SigningKey) -> Result<VisitLog, LogError> {
        let signer = hex::encode(key.verifying_key().as_bytes());
        let mut tx = store.pool().begin_with("BEGIN IMMEDIATE").await?;
        let existing: Option<String> = sqlx::query_scalar("SELECT id FROM logs WHERE signer = ?")
            .bind(&signer)
            .fetch_optional(&mut *tx)
            .await?;
        let log_id = match existing {
            Some(id) => parse_uuid(&id)?,
            None => {
                let id = Uuid::now_v7();
                sqlx::query("INSERT INTO logs (id, signer, created_at) VALUES (?, ?, ?)")
                    .bind(id.to_string())
                    .bind(&signer)
                    .bind(store.now_text())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO sync_state (log_id, last_pushed_seq, updated_at) VALUES (?, 0, ?)",
                )
                .bind(id.to_string())
                .bind(store.now_text())
                .execute(&mut *tx)
                .await?;
                id
            }
        };
        tx.commit().await?;
        Ok(VisitLog { store: store.clone(), key, signer, log_id, start: LogStart::nothing_known() })
    }

    /// Say which earlier head this log continues, for its `log_started` event (used only if the
    /// log has no event yet when the first one is appended).
    pub fn starting_from(mut self, start: LogStart) -> VisitLog {
        self.start = start;
        self
    }

    /// Whether the log holds any event yet (its `log_started` is written with the first one).
    pub async fn is_started(&self) -> Result<bool, LogError> {
        let any: Option<i64> = sqlx::query_scalar("SELECT 1 FROM events WHERE log_id = ? LIMIT 1")
            .bind(self.log_id.to_string())
            .fetch_optional(self.store.pool())
            .await?;
        Ok(any.is_some())
    }

    pub fn log_id(&self) -> Uuid {
        self.log_id
    }

    /// Hex public key of the technician signing this log.
    pub fn signer(&self) -> &str {
        &self.signer
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Append one event atomically and return it as stored.
    pub async fn append(&self, new: NewEvent) -> Result<Event, LogError> {
        let mut tx = self.store.pool().begin_with("BEGIN IMMEDIATE").await?;
        let event = self.append_in(&mut tx, new).await?;
        tx.commit().await?;
        Ok(event)
    }

    /// Append a technician note.
    pub async fn note(&self, text: impl Into<String>) -> Result<Event, LogError> {
        self.append(NewEvent::new(EventKind::Note { text: text.into() })).await
    }

    /// Open a visit: records the visit and appends `visit_opened` in one transaction.
    pub async fn open_visit(
        &self,
        site: &str,
        work_order: Option<&str>,
    ) -> Result<(Uuid, Event), LogError> {
        let visit_id = Uuid::now_v7();
        let mut tx = self.store.pool().begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "INSERT INTO visits (id, log_id, site, work_order_id, opened_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(visit_id.to_string())
        .bind(self.log_id.to_string())
        .bind(site)
        .bind(work_order)
        .bind(self.store.now_text())
        .execute(&mut *tx)
        .await?;
        let kind = EventKind::VisitOpened {
            site: site.to_string(),
            work_order: work_order.map(str::to_string),
        };
        let event = self.append_in(&mut tx, NewEvent::new(kind).visit(visit_id)).await?;
        tx.commit().await?;
        Ok((visit_id, event))
    }

    /// Close an open visit: appends `visit_closed` and marks the visit closed in one transaction.
    pub async fn close_visit(
        &self,
        visit_id: Uuid,
        patched: u32,
        not_patched: u32,
    ) -> Result<Event, LogError> {
        let mut tx = self.store.pool().begin_with("BEGIN IMMEDIATE").await?;
        let done = sqlx::query(
            "UPDATE visits SET closed_at = ? WHERE id = ? AND log_id = ? AND closed_at IS NULL",
        )
        .bind(self.store.now_text())
        .bind(visit_id.to_string())
        .bind(self.log_id.to_string())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(LogError::NoOpenVisit(visit_id));
        }
        let kind = EventKind::VisitClosed { patched, not_patched };
        let event = self.append_in(&mut tx, NewEvent::new(kind).visit(visit_id)).await?;
        tx.commit().await?;
        Ok(event)
    }

    /// Append `new` inside `tx`; a log without events gets its `log_started` first.
    async fn append_in(
        &self,
        tx: &mut sqlx::SqliteConnection,
        new: NewEvent,
    ) -> Result<Event, LogError> {
        let head: Option<(i64, String)> = sqlx::query_as(
            "SELECT seq, hash FROM events WHERE log_id = ? ORDER BY seq DESC LIMIT 1",
        )
        .bind(self.log_id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        let head = match head {
            None if !matches!(new.kind, EventKind::LogStarted { .. }) => {
                let kind = EventKind::LogStarted {
                    previous: self.start.previous.clone(),
                    why: self.start.why.clone(),
                };
                let started = self.insert_in(tx, None, NewEvent::new(kind)).await?;
                Some((started.body.seq as i64, started.hash()))
            }
            head => head,
        };
        self.insert_in(tx, head, new).await
    }

    /// Sign `new` as the event after `head` (`None`: the first of the log) and insert it.
    async fn insert_in(
        &self,
        tx: &mut sqlx::SqliteConnection,
        head: Option<(i64, String)>,
        new: NewEvent,
    ) -> Result<Event, LogError> {
        let time_source = match new.time_source {
            Some(t) => t,
            None => {
                let checked: Option<String> =
                    sqlx::query_scalar("SELECT value FROM meta WHERE key = ?")
                        .bind(CLOCK_CHECKED_META)
                        .fetch_optional(&mut *tx)
                        .await?;
                if checked.is_some() { TimeSource::ServerChecked } else { TimeSource::SystemClock }
            }
        };
        let (seq, prev_hash) = match head {
            Some((seq, hash)) => (seq as u64 + 1, hash),
            None => (1, GENESIS_HASH.to_string()),
        };
        let event = UnsignedEvent {
            id: Uuid::now_v7(),
            log_id: self.log_id,
            seq,
            time: self.store.clock().now(),
            time_source,
            signer: self.signer.clone(),
            visit_id: new.visit_id,
            device: new.device,
            prev_hash,
            kind: new.kind,
        }
        .sign(&self.key);
        let body = String::from_utf8(event.body.canonical_bytes())
            .map_err(|e| LogError::Unreadable(e.to_string()))?;
        sqlx::query(
            "INSERT INTO events (id, log_id, seq, hash, prev_hash, kind, visit_id, device, time, body,
               signature) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(event.body.id.to_string())
        .bind(self.log_id.to_string())
        .bind(seq as i64)
        .bind(event.hash())
        .bind(&event.body.prev_hash)
        .bind(event.body.kind.tag())
        .bind(event.body.visit_id.map(|v| v.to_string()))
        .bind(&event.body.device)
        .bind(event.body.time.to_rfc3339())
        .bind(body)
        .bind(&event.signature)
        .execute(&mut *tx)
        .await?;
        Ok(event)
    }
}

fn parse_uuid(s: &str) -> Result<Uuid, LogError> {
    Uuid::parse_str(s).map_err(|e| LogError::Unreadable(format!("log id {s:?}: {e}")))
}

/// One stored row, as read for verification.
struct Row_ {
    id: String,
    log_id: String,
    seq: i64,
    hash: String,
    prev_hash: String,
    kind: String,
    visit_id: Option<String>,
    device: Option<String>,
    body: String,
    signature: String,
}

/// The columns `row_from` reads. A constant, so the queries formatted with it are SQL-safe
/// (`sqlx::AssertSqlSafe`).
const ROW_COLUMNS: &str =
    "id, log_id, seq, hash, prev_hash, kind, visit_id, device, body, signature";

fn row_from(r: &sqlx::sqlite::SqliteRow) -> Result<Row_, sqlx::Error> {
    Ok(Row_ {
        id: r.try_get(0)?,
        log_id: r.try_get(1)?,
        seq: r.try_get(2)?,
        hash: r.try_get(3)?,
        prev_hash: r.try_get(4)?,
        kind: r.try_get(5)?,
        visit_id: r.try_get(6)?,
        device: r.try_get(7)?,
        body: r.try_get(8)?,
        signature: r.try_get(9)?,
    })
}

impl Row_ {
    fn event(&self) -> Result<Event, String> {
        let body: UnsignedEvent = serde_json::from_str(&self.body).map_err(|e| e.to_string())?;
        Ok(Event { body, signature: self.signature.clone() })
    }

    /// The index columns and the exact bytes must agree with the signed event.
    fn mismatch(&self, e: &Event) -> Option<&'static str> {
        let b = &e.body;
        if self.body.as_bytes() != b.canonical_bytes().as_slice() {
            return Some("body (not the bytes that were signed)");
        }
        if self.seq != b.seq as i64 {
            return Some("seq");
        }
        if self.id != b.id.to_string() {
            return Some("id");
        }
        if self.log_id != b.log_id.to_string() {
            return Some("log_id");
        }
        if self.prev_hash != b.prev_hash {
            return Some("prev_hash");
        }
        if self.kind != b.kind.tag() {
            return Some("kind");
        }
        if self.visit_id != b.visit_id.map(|v| v.to_string()) {
            return Some("visit_id");
        }
        if self.device != b.device {
            return Some("device");
        }
        if self.hash != e.hash() {
            return Some("hash");
        }
        None
    }
}

impl Store {
    /// The time of the newest event stamped with a server-checked clock, across the local logs.
    pub async fn newest_event_time(
        &self,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
        // Only times stamped while the clock agreed with the server's: a clock that was once
        // wrong (ahead) must not make the corrected one look wound back.
        // Events up to the marks a sync left (their clock had run ahead) do not count.
        let through: std::collections::BTreeMap<String, i64> = self
            .meta(EVENT_TIMES_DISTRUSTED_META)
            .await?
            .and_then(|m| serde_json::from_str(&m).ok())
            .unwrap_or_default();
        let times: Vec<(String, i64, String)> = sqlx::query_as(
            "SELECT log_id, seq, time FROM events
             WHERE json_extract(body, '$.time_source') = 'server_checked'",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(times
            .iter()
            .filter(|(log, seq, _)| through.get(log).is_none_or(|t| seq > t))
            .filter_map(|(_, _, t)| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
            .max())
    }

    /// Stop counting the times of the events stored so far as trusted (see
    /// [`crate::clock::note_online`]): their clock ran ahead after it was checked.
    pub async fn distrust_event_times(&self) -> Result<(), StoreError> {
        let heads: Vec<(String, i64)> =
            sqlx::query_as("SELECT log_id, MAX(seq) FROM events GROUP BY log_id")
                .fetch_all(self.pool())
                .await?;
        let through: std::collections::BTreeMap<String, i64> = heads.into_iter().collect();
        let text = serde_json::to_string(&through).map_err(|e| StoreError::Corrupt {
            what: "the distrusted event times".into(),
            detail: e.to_string(),
        })?;
        self.set_meta(EVENT_TIMES_DISTRUSTED_META, &text).await
    }

    /// Record the outcome of comparing the laptop clock with the server's at sync
    /// (`skew` = server time - laptop time). Within [`MAX_CLOCK_SKEW`] later events are stamped
    /// [`TimeSource::ServerChecked`]; beyond it they fall back to [`TimeSource::SystemClock`].
    pub async fn record_clock_check(&self, skew: chrono::TimeDelta) -> Result<(), LogError> {
        if skew.abs() <= MAX_CLOCK_SKEW {
            self.set_meta(CLOCK_CHECKED_META, &self.now_text()).await?;
        } else {
            sqlx::query("DELETE FROM meta WHERE key = ?")
                .bind(CLOCK_CHECKED_META)
                .execute(self.pool())
                .await?;
        }
        Ok(())
    }

    /// Visits, most recent first; only open ones when `open_only`.
    pub async fn visits(&self, open_only: bool) -> Result<Vec<VisitRecord>, LogError> {
        type VisitRow = (String, String, String, Option<String>, String, Option<String>);
        let rows: Vec<VisitRow> = sqlx::query_as(
            "SELECT id, log_id, site, work_order_id, opened_at, closed_at FROM visits
                 WHERE (?1 = 0 OR closed_at IS NULL) ORDER BY opened_at DESC, id DESC",
        )
        .bind(open_only)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|(id, log, site, work_order, opened_at, closed_at)| {
                Ok(VisitRecord {
                    visit_id: parse_uuid(&id)?,
                    log_id: parse_uuid(&log)?,
                    site,
                    work_order,
                    opened_at,
                    closed_at,
                })
            })
            .collect()
    }

    /// Every visit log in the store, oldest first, with head and sync progress.
    pub async fn visit_logs(&self) -> Result<Vec<LogInfo>, LogError> {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id FROM logs ORDER BY id").fetch_all(self.pool()).await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.visit_log(parse_uuid(&id)?).await?);
        }
        Ok(out)
    }

    /// One visit log's head and sync progress.
    pub async fn visit_log(&self, log_id: Uuid) -> Result<LogInfo, LogError> {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT signer, created_at FROM logs WHERE id = ?")
                .bind(log_id.to_string())
                .fetch_optional(self.pool())
                .await?;
        let (signer, created_at) = row.ok_or(LogError::NoSuchLog(log_id))?;
        let head: Option<(i64, String)> = sqlx::query_as(
            "SELECT seq, hash FROM events WHERE log_id = ? ORDER BY seq DESC LIMIT 1",
        )
        .bind(log_id.to_string())
        .fetch_optional(self.pool())
        .await?;
        let (head_seq, head_hash) = match head {
            Some((s, h)) => (s as u64, h),
            None => (0, GENESIS_HASH.to_string()),
        };
        let sync = self.log_sync_state(log_id).await?;
        Ok(LogInfo { log_id, signer, created_at, head_seq, head_hash, sync })
    }

    /// Events of a log with seq greater than `after_seq`, in seq order, at most `limit`.
    /// Rows that do not parse are an error: verify the log to locate them.
    pub async fn log_events(
        &self,
        log_id: Uuid,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<Event>, LogError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ROW_COLUMNS} FROM events WHERE log_id = ? AND seq > ? ORDER BY seq LIMIT ?"
        )))
        .bind(log_id.to_string())
        .bind(after_seq as i64)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let row = row_from(r)?;
                row.event().map_err(|e| LogError::Unreadable(format!("seq {}: {e}", row.seq)))
            })
            .collect()
    }

    /// Events of one visit, in seq order.
    pub async fn visit_events(&self, visit_id: Uuid) -> Result<Vec<Event>, LogError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ROW_COLUMNS} FROM events WHERE visit_id = ? ORDER BY log_id, seq"
        )))
        .bind(visit_id.to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let row = row_from(r)?;
                row.event().map_err(|e| LogError::Unreadable(format!("seq {}: {e}", row.seq)))
            })
            .collect()
    }

    /// Verify one stored log end to end: signatures, sequence, hash links, signer, and that the
    /// stored index columns match the signed content. Stops at and names the first bad event.
    pub async fn verify_log(&self, log_id: Uuid) -> Result<LogVerification, LogError> {
        let info = self.visit_log(log_id).await?;
        let mut prev: Option<(u64, String)> = None;
        let mut verified = 0u64;
        let mut after: i64 = i64::MIN;
        let fail = |verified, problem| LogVerification {
            log_id,
            signer: info.signer.clone(),
            verified,
            problem: Some(problem),
        };
        loop {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {ROW_COLUMNS} FROM events WHERE log_id = ? AND seq > ? ORDER BY seq LIMIT ?"
            )))
            .bind(log_id.to_string())
            .bind(after)
            .bind(PAGE)
            .fetch_all(self.pool())
            .await?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                let row = row_from(r)?;
                after = row.seq;
                let event = match row.event() {
                    Ok(e) => e,
                    Err(detail) => {
                        let p = LogProblem::Unreadable { seq: row.seq as u64, id: row.id, detail };
                        return Ok(fail(verified, p));
                    }
                };
                if let Err(c) = verify_chain(std::slice::from_ref(&event), prev.clone()) {
                    // verify_chain cannot see a log mix-up on a single event; the index check does.
                    return Ok(fail(verified, LogProblem::Chain(c)));
                }
                let (seq, id) = (event.body.seq, event.body.id);
                if event.body.signer != info.signer {
                    let p = LogProblem::ForeignSigner {
                        seq,
                        id,
                        signer: event.body.signer.clone(),
                        expected: info.signer.clone(),
                    };
                    return Ok(fail(verified, p));
                }
                if let Some(field) = row.mismatch(&event) {
                    return Ok(fail(verified, LogProblem::ColumnMismatch { seq, id, field }));
                }
                verified += 1;
                prev = Some((seq, event.hash()));
            }
        }
        if info.sync.last_pushed_seq > verified {
            let p =
                LogProblem::Truncated { head_seq: verified, pushed_seq: info.sync.last_pushed_seq };
            return Ok(fail(verified, p));
        }
        Ok(LogVerification { log_id, signer: info.signer, verified, problem: None })
    }

    /// Verify every log in the store.
    pub async fn verify_all_logs(&self) -> Result<Vec<LogVerification>, LogError> {
        let mut out = Vec::new();
        for info in self.visit_logs().await? {
            out.push(self.verify_log(info.log_id).await?);
        }
        Ok(out)
    }

    /// Sync progress of a log.
    pub async fn log_sync_state(&self, log_id: Uuid) -> Result<SyncState, LogError> {
        let row: Option<(i64, Option<String>)> = sqlx::query_as(
            "SELECT last_pushed_seq, server_checkpoint FROM sync_state WHERE log_id = ?",
        )
        .bind(log_id.to_string())
        .fetch_optional(self.pool())
        .await?;
        Ok(row
            .map(|(s, c)| SyncState { last_pushed_seq: s.max(0) as u64, server_checkpoint: c })
            .unwrap_or_default())
    }

    /// The events the server has not accepted yet (at most `limit`), with the `(seq, hash)` of the
    /// event before them (for [`verify_chain`] and the server's link check), `None` at the start.
    pub async fn log_events_to_push(
        &self,
        log_id: Uuid,
        limit: u32,
    ) -> Result<(Option<(u64, String)>, Vec<Event>), LogError> {
        let pushed = self.log_sync_state(log_id).await?.last_pushed_seq;
        let prev = if pushed == 0 {
            None
        } else {
            let hash: Option<String> =
                sqlx::query_scalar("SELECT hash FROM events WHERE log_id = ? AND seq = ?")
                    .bind(log_id.to_string())
                    .bind(pushed as i64)
                    .fetch_optional(self.pool())
                    .await?;
            let hash = hash.ok_or_else(|| {
                LogError::Unreadable(format!(
                    "pushed event seq {pushed} of log {log_id} is missing from the store"
                ))
            })?;
            Some((pushed, hash))
        };
        Ok((prev, self.log_events(log_id, pushed, limit).await?))
    }

    /// Record that the server accepted every event of `log_id` up to `seq`. Never moves backwards;
    /// refuses a seq beyond the log's head.
    pub async fn mark_log_pushed(&self, log_id: Uuid, seq: u64) -> Result<SyncState, LogError> {
        let info = self.visit_log(log_id).await?;
        if seq > info.head_seq {
            return Err(LogError::PushBeyondHead { log_id, requested: seq, head: info.head_seq });
        }
        sqlx::query(
            "INSERT INTO sync_state (log_id, last_pushed_seq, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(log_id) DO UPDATE SET
               last_pushed_seq = MAX(last_pushed_seq, excluded.last_pushed_seq),
               updated_at = excluded.updated_at",
        )
        .bind(log_id.to_string())
        .bind(seq as i64)
        .bind(self.now_text())
        .execute(self.pool())
        .await?;
        self.log_sync_state(log_id).await
    }

    /// Store the server's opaque checkpoint for a log (from the last pull).
    pub async fn set_log_server_checkpoint(
        &self,
        log_id: Uuid,
        checkpoint: &str,
    ) -> Result<(), LogError> {
        self.visit_log(log_id).await?;
        sqlx::query(
            "INSERT INTO sync_state (log_id, last_pushed_seq, server_checkpoint, updated_at)
             VALUES (?1, 0, ?2, ?3)
             ON CONFLICT(log_id) DO UPDATE SET server_checkpoint = excluded.server_checkpoint,
               updated_at = excluded.updated_at",
        )
        .bind(log_id.to_string())
        .bind(checkpoint)
        .bind(self.now_text())
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
