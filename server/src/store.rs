//! Inventory storage behind the [`Store`] trait, with SQLite ([`SqliteStore`], the zero-set-up
//! default: one file in the data directory) and PostgreSQL ([`PgStore`]) implementations.
//!
//! Both run the same queries: every statement uses `$N` placeholders, which SQLite accepts too,
//! and only the schema differs (`TIMESTAMPTZ`/`BYTEA` versus `TIMESTAMP`/`BLOB`), so there are two
//! migration folders (`migrations/sqlite`, `migrations/postgres`), embedded in the binary. The
//! implementations are generated from one macro body so they cannot drift apart.
//!
//! Accepted events and their effect on the inventory (firmware, last visit, failures, not-patched
//! reasons) are written in one transaction together with the log's new checkpoint, so the
//! inventory never reflects an event the server does not hold, or the reverse.

use chrono::{DateTime, Utc};
use fieldpatch_proto::event::{Event, EventKind, LogHeadRef};
use fieldpatch_proto::wire::{CatalogEntry, Device, Site, WorkOrder};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use std::borrow::Cow;
use std::future::Future;

/// Storage errors. Messages never contain secrets (tokens are only ever stored hashed).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed: {0} (is the database shared with another program?)")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Conflict(String),
    /// What was to be created exists already.
    #[error("{0}")]
    Exists(String),
}

/// A registered technician.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Technician {
    pub id: String,
    pub name: String,
    /// Hex ed25519 public key the technician signs visit-log events with.
    pub public_key: String,
}

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Technician(Technician),
}

/// What the server holds of one visit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHead {
    pub technician_id: String,
    pub last_seq: u64,
    pub last_hash: String,
    pub signature: String,
}

/// An event the server holds, as far as push needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub id: String,
    pub seq: u64,
    pub hash: String,
}

/// How a log began and whether a laptop contradicted it, with the server's head of the log (the
/// evidence of the log-continuity report, [`crate::continuity`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogContinuityRow {
    pub log_id: String,
    pub technician_id: String,
    /// When the log's first event reached the server.
    pub started_at: DateTime<Utc>,
    /// Whether the first event is `log_started` (laptops from before chaining send none).
    pub chained: bool,
    /// The head of an earlier log that `log_started` names.
    pub previous: Option<LogHeadRef>,
    /// Where the laptop had `previous` from, as `log_started` says.
    pub why: Option<String>,
    pub head_seq: u64,
    pub head_hash: String,
    /// The first event a laptop sent that contradicts this log as the server holds it.
    pub diverged: Option<Divergence>,
}

/// An event a technician's laptop signed and sent for a seq of a log where the server holds
/// another event (or that does not link to the server's head): the laptop's copy of the log went
/// back to an older state and continued from there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Divergence {
    pub seq: u64,
    pub event_id: String,
    pub hash: String,
    pub detected_at: DateTime<Utc>,
}

/// A device credential as stored: encrypted under the server's data key.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredCredential {
    pub device_id: String,
    pub kind: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for StoredCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCredential")
            .field("device_id", &self.device_id)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Row counts, for reports and the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub events: u64,
    pub checkpoints: u64,
}

/// The inventory's storage. Every method is one transaction.
pub trait Store: Send + Sync + 'static {
    /// Apply the embedded migrations.
    fn migrate(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// One round trip to the database (readiness).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Take the push locks of these logs (in a fixed order, so two batches never deadlock) and
    /// hold them until the returned [`LogLock`] is released or dropped. On PostgreSQL they are
    /// transaction-scoped advisory locks, so every server instance sharing the database takes
    /// turns on a log, and a lock dies with its connection if the instance does. SQLite serves
    /// one instance, which orders pushes in process: nothing is locked here.
    fn lock_logs(
        &self,
        log_ids: &[String],
    ) -> impl Future<Output = Result<LogLock, StoreError>> + Send;

    fn create_technician(
        &self,
        t: &Technician,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn technician(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<Technician>, StoreError>> + Send;
    /// Register a token by its SHA-256 (hex). `technician_id` is `None` for admin tokens; the
    /// token stops working at `expires_at`.
    fn add_token(
        &self,
        token_hash: &str,
        technician_id: Option<&str>,
        label: &str,
        expires_at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Revoke the token with this hash, or every token of `technician_id`; returns how many.
    fn revoke_tokens(
        &self,
        token_hash: Option<&str>,
        technician_id: Option<&str>,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    fn principal(
        &self,
        token_hash: &str,
    ) -> impl Future<Output = Result<Option<Principal>, StoreError>> + Send;

    fn upsert_site(&self, s: &Site) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Insert or update a device's descriptive fields and approved version; what the inventory
    /// learnt from visit logs is kept.
    fn upsert_device(&self, d: &Device) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// [`Store::upsert_device`] for many devices in one transaction (multi-row statements, so
    /// an import of a large inventory is not one round trip per device). All or nothing; a
    /// device listed twice takes its last entry. Returns how many distinct devices were written.
    fn upsert_devices(
        &self,
        devices: &[Device],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// [`Store::upsert_site`] for many sites in one transaction.
    fn upsert_sites(&self, sites: &[Site]) -> impl Future<Output = Result<u64, StoreError>> + Send;
    fn assign(
        &self,
        technician_id: &str,
        site_id: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn unassign(
        &self,
        technician_id: &str,
        site_id: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    fn upsert_work_order(
        &self,
        w: &WorkOrder,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Publish a bundle file for every site.
    fn publish_bundle(
        &self,
        entry: &CatalogEntry,
        bytes: &[u8],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.publish_bundle_to(entry, bytes, &[])
    }
    /// Publish a bundle file for these sites only (every site when empty): only technicians
    /// assigned to one of them pull it or can download it.
    fn publish_bundle_to(
        &self,
        entry: &CatalogEntry,
        bytes: &[u8],
        sites: &[String],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The catalog a technician pulls: bundles for every site and those published to one of
    /// their assigned sites.
    fn catalog_for(
        &self,
        technician_id: &str,
    ) -> impl Future<Output = Result<Vec<CatalogEntry>, StoreError>> + Send;
    /// The sites each site-restricted bundle is published to, by SHA-256 (bundles for every
    /// site are not named).
    fn bundle_sites(
        &self,
    ) -> impl Future<Output = Result<std::collections::BTreeMap<String, Vec<String>>, StoreError>> + Send;
    fn set_trust_store(
        &self,
        doc: &serde_json::Value,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Publish `next` as the trust store if the published one is still `current` (`None`: none
    /// yet); [`StoreError::Conflict`] when another publish came in between. The caller has
    /// checked `next` against `current`.
    fn replace_trust_store(
        &self,
        current: Option<&serde_json::Value>,
        next: &serde_json::Value,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Publish `next` as the catalog listing if the published one is still `current`, as
    /// [`Store::replace_trust_store`] does.
    fn replace_catalog_listing(
        &self,
        current: Option<&serde_json::Value>,
        next: &serde_json::Value,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Sites assigned to the technician, or all sites for `None`.
    fn sites(
        &self,
        technician_id: Option<&str>,
    ) -> impl Future<Output = Result<Vec<Site>, StoreError>> + Send;
    fn devices(
        &self,
        technician_id: Option<&str>,
    ) -> impl Future<Output = Result<Vec<Device>, StoreError>> + Send;
    /// Devices with an approved version whose recorded firmware is not that very string (all, or
    /// at the technician's sites), in device id order: what the "not at approved version" reports
    /// start from, filtered in the database so a large inventory is not read whole. `page`: only
    /// devices after that id, at most that many.
    fn devices_off_approved(
        &self,
        technician_id: Option<&str>,
        page: Option<(&str, u32)>,
    ) -> impl Future<Output = Result<Vec<Device>, StoreError>> + Send;
    /// [`Store::devices_off_approved`] that are in a work order, with the work order's id,
    /// ordered by work order and device.
    fn planned_off_approved(
        &self,
        technician_id: Option<&str>,
    ) -> impl Future<Output = Result<Vec<(String, Device)>, StoreError>> + Send;
    fn device(&self, id: &str) -> impl Future<Output = Result<Option<Device>, StoreError>> + Send;
    fn work_orders(
        &self,
        technician_id: Option<&str>,
    ) -> impl Future<Output = Result<Vec<WorkOrder>, StoreError>> + Send;
    fn is_assigned(
        &self,
        technician_id: &str,
        site_id: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    fn catalog(&self) -> impl Future<Output = Result<Vec<CatalogEntry>, StoreError>> + Send;
    fn bundle_bytes(
        &self,
        sha256: &str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;
    fn trust_store(
        &self,
    ) -> impl Future<Output = Result<Option<serde_json::Value>, StoreError>> + Send;
    /// The published catalog listing, if any.
    fn catalog_listing(
        &self,
    ) -> impl Future<Output = Result<Option<serde_json::Value>, StoreError>> + Send;

    fn log_head(
        &self,
        log_id: &str,
    ) -> impl Future<Output = Result<Option<LogHead>, StoreError>> + Send;
    /// Stored events of a log with `from <= seq <= to`.
    fn stored_events(
        &self,
        log_id: &str,
        from: u64,
        to: u64,
    ) -> impl Future<Output = Result<Vec<StoredEvent>, StoreError>> + Send;
    /// The full stored envelopes (exactly as pushed and signed) of a log with
    /// `from <= seq <= to`, in seq order: what audit exports are made of.
    fn log_events(
        &self,
        log_id: &str,
        from: u64,
        to: u64,
    ) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send;
    /// Every stored `visit_opened` event (the start of each visit, naming its site), oldest first.
    fn visit_openings(&self) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send;
    /// Which of these event ids are already stored (in any log).
    fn existing_event_ids(
        &self,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
    /// Store verified events (each with its hash) that continue `log_id`, fold them into the
    /// inventory (only for devices at sites assigned to `technician_id`) and move the log's
    /// checkpoint, atomically. Returns the rows added. Fails with
    /// [`StoreError::Conflict`] (and changes nothing) when any event or the checkpoint was written
    /// concurrently by another server instance.
    fn commit_events(
        &self,
        technician_id: &str,
        log_id: &str,
        events: &[(Event, String)],
        head: &LogHead,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Record that `technician_id`'s laptop signed and sent `event_id` (with `hash`) at `seq` of
    /// its log `log_id`, contradicting the events the server holds (see [`Divergence`]). The
    /// lowest such seq is kept.
    fn record_divergence(
        &self,
        technician_id: &str,
        log_id: &str,
        seq: u64,
        event_id: &str,
        hash: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// How every log began, with its head and any divergence, ordered by technician and start.
    fn log_continuity(
        &self,
    ) -> impl Future<Output = Result<Vec<LogContinuityRow>, StoreError>> + Send;
    /// Events about a device (by inventory id or serial number), oldest first.
    fn device_history(
        &self,
        device: &Device,
    ) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send;
    fn counts(&self) -> impl Future<Output = Result<Counts, StoreError>> + Send;

    /// Insert or replace a device credential (already encrypted at rest).
    fn set_credential(
        &self,
        c: &StoredCredential,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Credentials of devices at the technician's assigned sites.
    fn credentials_for(
        &self,
        technician_id: &str,
    ) -> impl Future<Output = Result<Vec<StoredCredential>, StoreError>> + Send;
}

/// Push locks held in the database until released (see [`Store::lock_logs`]).
#[derive(Debug)]
pub struct LogLock(Option<sqlx::Transaction<'static, sqlx::Postgres>>);

impl LogLock {
    /// Release the locks now (dropping the lock releases them too, a moment later, when its
    /// connection goes back to the pool).
    pub async fn release(self) {
        if let Some(tx) = self.0
            && let Err(e) = tx.rollback().await
        {
            tracing::warn!(error = %e, "releasing push locks; they end with the connection");
        }
    }

    /// Whether the locks are held in the database.
    pub fn in_database(&self) -> bool {
        self.0.is_some()
    }
}

/// The advisory-lock key of a visit log: the first 8 bytes of SHA-256 over a product prefix and
/// the log id (a collision only makes two logs take turns).
pub fn log_lock_key(log_id: &str) -> i64 {
    use sha2::Digest;
    let d: [u8; 32] = sha2::Sha256::digest(format!("fieldpatch push lock\0{log_id}")).into();
    let [b0, b1, b2, b3, b4, b5, b6, b7, ..] = d;
    i64::from_be_bytes([b0, b1, b2, b3, b4, b5, b6, b7])
}

/// How long a push waits for another instance's push of the same log before answering
/// "retry" (PostgreSQL `lock_timeout`).
pub const LOG_LOCK_WAIT: &str = "30s";

fn migrator(files: &[(&'static str, &'static str)]) -> Migrator {
    let migrations: Vec<Migration> = files
        .iter()
        .enumerate()
        .map(|(i, (desc, sql))| {
            Migration::new(
                i as i64 + 1,
                Cow::Borrowed(*desc),
                MigrationType::Simple,
                sqlx::SqlSafeStr::into_sql_str(*sql),
                false,
            )
        })
        .collect();
    Migrator { migrations: Cow::Owned(migrations), ..Migrator::DEFAULT }
}

const SQLITE_MIGRATIONS: &[(&str, &str)] = &[
    ("inventory", include_str!("../migrations/sqlite/0001_inventory.sql")),
    ("device credentials", include_str!("../migrations/sqlite/0002_device_credentials.sql")),
    ("token lifetime", include_str!("../migrations/sqlite/0003_token_lifetime.sql")),
    ("log continuity", include_str!("../migrations/sqlite/0004_log_continuity.sql")),
    ("catalog listing", include_str!("../migrations/sqlite/0005_catalog_listing.sql")),
    ("catalog sites", include_str!("../migrations/sqlite/0006_catalog_sites.sql")),
    ("visit openings index", include_str!("../migrations/sqlite/0007_visit_openings_index.sql")),
];
const POSTGRES_MIGRATIONS: &[(&str, &str)] = &[
    ("inventory", include_str!("../migrations/postgres/0001_inventory.sql")),
    ("device credentials", include_str!("../migrations/postgres/0002_device_credentials.sql")),
    ("token lifetime", include_str!("../migrations/postgres/0003_token_lifetime.sql")),
    ("log continuity", include_str!("../migrations/postgres/0004_log_continuity.sql")),
    ("catalog listing", include_str!("../migrations/postgres/0005_catalog_listing.sql")),
    ("catalog sites", include_str!("../migrations/postgres/0006_catalog_sites.sql")),
    ("visit openings index", include_str!("../migrations/postgres/0007_visit_openings_index.sql")),
];

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Rows per multi-row `INSERT` (10 binds each; below SQLite's and PostgreSQL's bind limits).
const INSERT_CHUNK: usize = 500;

/// What a run of events (in seq order) changes on one device.
#[derive(Debug, Default)]
struct DeviceFold {
    last_visit: Option<DateTime<Utc>>,
    /// The version of the last `confirmed` event that names one.
    firmware: Option<String>,
    /// Whether `not_patched_reason` changes: set by `device_not_patched`, cleared by a later
    /// `confirmed`.
    not_patched_changed: bool,
    not_patched_reason: Option<String>,
    failures: u64,
    last_failure: Option<String>,
}

/// Fold events into per-device changes, in first-seen order.
fn fold_batch(events: &[(Event, String)]) -> Vec<(String, DeviceFold)> {
    let mut out: Vec<(String, DeviceFold)> = Vec::new();
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (e, _) in events {
        let Some(device) = &e.body.device else { continue };
        let i = *index.entry(device.as_str()).or_insert_with(|| {
            out.push((device.clone(), DeviceFold::default()));
            out.len() - 1
        });
        let f = &mut out[i].1;
        f.last_visit = Some(f.last_visit.map_or(e.body.time, |t| t.max(e.body.time)));
        match &e.body.kind {
            EventKind::Confirmed { version, .. } => {
                if let Some(v) = version {
                    f.firmware = Some(v.clone());
                }
                f.not_patched_changed = true;
                f.not_patched_reason = None;
            }
            EventKind::Failed { reason, .. } | EventKind::RolledBack { reason } => {
                f.failures += 1;
                f.last_failure = Some(reason.clone());
            }
            EventKind::DeviceNotPatched { reason } => {
                f.not_patched_changed = true;
                f.not_patched_reason = Some(reason.clone());
            }
            _ => {}
        }
    }
    out
}

/// The columns `device_row` reads. A constant, so the queries formatted with it are SQL-safe
/// (`sqlx::AssertSqlSafe`).
const DEVICE_COLUMNS: &str = "d.id, d.site_id, d.vendor, d.model, d.hardware_revision, d.serial_number, \
     d.approved_version, d.current_firmware, d.last_visit, d.failures, d.last_failure, d.not_patched_reason";

/// Devices with an approved version whose firmware is not that very string (a constant, so the
/// queries formatted with it are SQL-safe).
const OFF_APPROVED: &str = "d.approved_version IS NOT NULL \
     AND (d.current_firmware IS NULL OR d.current_firmware <> d.approved_version)";

/// The documents published as one row each.
#[derive(Debug, Clone, Copy)]
enum Singleton {
    TrustStore,
    CatalogListing,
}

impl Singleton {
    /// The insert (no row yet) and the compare-and-swap update, with `$1` the new document,
    /// `$2` the time and `$3` the document it replaces.
    fn statements(self) -> (&'static str, &'static str) {
        match self {
            Singleton::TrustStore => (
                "INSERT INTO trust_store (id, document, updated_at) VALUES (1, $1, $2) \
                 ON CONFLICT (id) DO NOTHING",
                "UPDATE trust_store SET document = $1, updated_at = $2 WHERE id = 1 AND document = $3",
            ),
            Singleton::CatalogListing => (
                "INSERT INTO catalog_listing (id, document, updated_at) VALUES (1, $1, $2) \
                 ON CONFLICT (id) DO NOTHING",
                "UPDATE catalog_listing SET document = $1, updated_at = $2 WHERE id = 1 AND document = $3",
            ),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Singleton::TrustStore => "trust store",
            Singleton::CatalogListing => "catalog listing",
        }
    }
}

macro_rules! store_impl {
    ($name:ident, $db:ty, $pool:ty, $migrations:expr) => {
        /// Inventory storage on this database.
        #[derive(Debug, Clone)]
        pub struct $name {
            pool: $pool,
            /// Connections that hold per-log push locks while a push runs on `pool` (separate,
            /// so lock holders can never take every connection the push itself needs).
            lock_pool: Option<$pool>,
        }

        impl $name {
            /// Wrap an open pool. Call [`Store::migrate`] before use.
            pub fn new(pool: $pool) -> Self {
                Self { pool, lock_pool: None }
            }

            /// Hold push locks on connections of `locks` instead of the main pool.
            pub fn with_lock_pool(mut self, locks: $pool) -> Self {
                self.lock_pool = Some(locks);
                self
            }

            /// The pool, for tests and tools.
            pub fn pool(&self) -> &$pool {
                &self.pool
            }

            /// The pool push locks are held on.
            pub fn lock_pool(&self) -> &$pool {
                self.lock_pool.as_ref().unwrap_or(&self.pool)
            }

            /// Replace a one-row published document (compare and swap in one statement), so two
            /// publishes cannot both pass their checks against the same document and overwrite
            /// each other.
            async fn swap_document(
                &self,
                which: Singleton,
                current: Option<&serde_json::Value>,
                next: &serde_json::Value,
            ) -> Result<(), StoreError> {
                let (insert, update) = which.statements();
                let changed = match current {
                    None => sqlx::query(insert)
                        .bind(next.to_string())
                        .bind(Utc::now())
                        .execute(&self.pool)
                        .await?
                        .rows_affected(),
                    Some(c) => sqlx::query(update)
                        .bind(next.to_string())
                        .bind(Utc::now())
                        .bind(c.to_string())
                        .execute(&self.pool)
                        .await?
                        .rows_affected(),
                };
                if changed != 1 {
                    return Err(StoreError::Conflict(format!(
                        "the published {} changed while this one was checked; publish again",
                        which.name()
                    )));
                }
                Ok(())
            }

            fn catalog_row(r: &<$db as sqlx::Database>::Row) -> Result<CatalogEntry, StoreError> {
                use sqlx::Row;
                let manifest: String = r.try_get("manifest")?;
                Ok(CatalogEntry {
                    bundle_id: r.try_get("bundle_id")?,
                    version: r.try_get("version")?,
                    manifest: serde_json::from_str(&manifest)
                        .map_err(|e| StoreError::Corrupt(format!("catalog manifest: {e}")))?,
                    sha256: r.try_get("sha256")?,
                    size: to_u64(r.try_get::<i64, _>("size")?),
                    published_at: r.try_get("published_at")?,
                })
            }

            fn device_row(row: &<$db as sqlx::Database>::Row) -> Result<Device, StoreError> {
                use sqlx::Row;
                Ok(Device {
                    id: row.try_get("id")?,
                    site_id: row.try_get("site_id")?,
                    vendor: row.try_get("vendor")?,
                    model: row.try_get("model")?,
                    hardware_revision: row.try_get("hardware_revision")?,
                    serial_number: row.try_get("serial_number")?,
                    approved_version: row.try_get("approved_version")?,
                    current_firmware: row.try_get("current_firmware")?,
                    last_visit: row.try_get::<Option<DateTime<Utc>>, _>("last_visit")?,
                    failures: to_u64(row.try_get::<i64, _>("failures")?),
                    last_failure: row.try_get("last_failure")?,
                    not_patched_reason: row.try_get("not_patched_reason")?,
                })
            }
        }

        impl Store for $name {
            async fn migrate(&self) -> Result<(), StoreError> {
                migrator($migrations).run(&self.pool).await?;
                Ok(())
            }

            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn lock_logs(&self, log_ids: &[String]) -> Result<LogLock, StoreError> {
                self.take_log_locks(log_ids).await
            }

            async fn create_technician(&self, t: &Technician) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO technicians (id, name, public_key, created_at) VALUES ($1, $2, $3, $4)",
                )
                .bind(&t.id)
                .bind(&t.name)
                .bind(t.public_key.to_ascii_lowercase())
                .bind(Utc::now())
                .execute(&self.pool)
                .await
                .map_err(|e| match &e {
                    sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Exists(
                        format!("a technician with id {:?} or this public key already exists", t.id),
                    ),
                    _ => StoreError::Db(e),
                })?;
                Ok(())
            }

            async fn technician(&self, id: &str) -> Result<Option<Technician>, StoreError> {
                use sqlx::Row;
                let row = sqlx::query("SELECT id, name, public_key FROM technicians WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|r| {
                    Ok(Technician {
                        id: r.try_get("id")?,
                        name: r.try_get("name")?,
                        public_key: r.try_get("public_key")?,
                    })
                })
                .transpose()
            }

            async fn add_token(
                &self,
                token_hash: &str,
                technician_id: Option<&str>,
                label: &str,
                expires_at: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                if let Some(t) = technician_id {
                    if self.technician(t).await?.is_none() {
                        return Err(StoreError::NotFound(format!("technician {t:?}")));
                    }
                }
                let role = if technician_id.is_some() { "technician" } else { "admin" };
                sqlx::query(
                    "INSERT INTO tokens (token_hash, role, technician_id, label, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(token_hash)
                .bind(role)
                .bind(technician_id)
                .bind(label)
                .bind(Utc::now())
                .bind(expires_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn revoke_tokens(
                &self,
                token_hash: Option<&str>,
                technician_id: Option<&str>,
            ) -> Result<u64, StoreError> {
                let r = sqlx::query(
                    "UPDATE tokens SET revoked_at = $3 WHERE revoked_at IS NULL \
                     AND (($1 IS NOT NULL AND token_hash = $1) OR ($2 IS NOT NULL AND technician_id = $2))",
                )
                .bind(token_hash)
                .bind(technician_id)
                .bind(Utc::now())
                .execute(&self.pool)
                .await?;
                Ok(r.rows_affected())
            }

            async fn principal(&self, token_hash: &str) -> Result<Option<Principal>, StoreError> {
                use sqlx::Row;
                let row = sqlx::query(
                    "SELECT k.role, t.id, t.name, t.public_key FROM tokens k \
                     LEFT JOIN technicians t ON t.id = k.technician_id WHERE k.token_hash = $1 \
                     AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > $2)",
                )
                .bind(token_hash)
                .bind(Utc::now())
                .fetch_optional(&self.pool)
                .await?;
                let Some(r) = row else { return Ok(None) };
                let role: String = r.try_get("role")?;
                Ok(Some(match role.as_str() {
                    "admin" => Principal::Admin,
                    _ => Principal::Technician(Technician {
                        id: r.try_get("id")?,
                        name: r.try_get("name")?,
                        public_key: r.try_get("public_key")?,
                    }),
                }))
            }

            async fn upsert_site(&self, s: &Site) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO sites (id, name, address) VALUES ($1, $2, $3) \
                     ON CONFLICT (id) DO UPDATE SET name = excluded.name, address = excluded.address",
                )
                .bind(&s.id)
                .bind(&s.name)
                .bind(&s.address)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn upsert_devices(&self, devices: &[Device]) -> Result<u64, StoreError> {
                // The last entry of a device wins (one statement may not touch a row twice).
                let mut last: std::collections::HashMap<&str, usize> = Default::default();
                for (i, d) in devices.iter().enumerate() {
                    last.insert(d.id.as_str(), i);
                }
                let unique: Vec<&Device> =
                    devices.iter().enumerate().filter(|(i, d)| last[d.id.as_str()] == *i).map(|(_, d)| d).collect();
                let mut tx = self.pool.begin().await?;
                for chunk in unique.chunks(INSERT_CHUNK) {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO devices (id, site_id, vendor, model, hardware_revision, serial_number, \
                         approved_version, current_firmware) ",
                    );
                    qb.push_values(chunk.iter(), |mut b, d| {
                        b.push_bind(d.id.clone())
                            .push_bind(d.site_id.clone())
                            .push_bind(d.vendor.clone())
                            .push_bind(d.model.clone())
                            .push_bind(d.hardware_revision.clone())
                            .push_bind(d.serial_number.clone())
                            .push_bind(d.approved_version.clone())
                            .push_bind(d.current_firmware.clone());
                    });
                    qb.push(
                        " ON CONFLICT (id) DO UPDATE SET site_id = excluded.site_id, vendor = excluded.vendor, \
                         model = excluded.model, hardware_revision = excluded.hardware_revision, \
                         serial_number = excluded.serial_number, approved_version = excluded.approved_version, \
                         current_firmware = COALESCE(devices.current_firmware, excluded.current_firmware)",
                    );
                    if let Err(e) = qb.build().execute(&mut *tx).await {
                        let fk = matches!(&e, sqlx::Error::Database(x) if x.is_foreign_key_violation());
                        drop(tx);
                        if !fk {
                            return Err(StoreError::Db(e));
                        }
                        // Name the first device whose site is missing.
                        for d in chunk {
                            let exists = sqlx::query("SELECT 1 FROM sites WHERE id = $1")
                                .bind(&d.site_id)
                                .fetch_optional(&self.pool)
                                .await?
                                .is_some();
                            if !exists {
                                return Err(StoreError::Invalid(format!(
                                    "device {:?} names site {:?}, which does not exist; import the site first (nothing was imported)",
                                    d.id, d.site_id
                                )));
                            }
                        }
                        return Err(StoreError::Db(e));
                    }
                }
                tx.commit().await?;
                Ok(unique.len() as u64)
            }

            async fn upsert_sites(&self, sites: &[Site]) -> Result<u64, StoreError> {
                let mut last: std::collections::HashMap<&str, usize> = Default::default();
                for (i, s) in sites.iter().enumerate() {
                    last.insert(s.id.as_str(), i);
                }
                let unique: Vec<&Site> =
                    sites.iter().enumerate().filter(|(i, s)| last[s.id.as_str()] == *i).map(|(_, s)| s).collect();
                let mut tx = self.pool.begin().await?;
                for chunk in unique.chunks(INSERT_CHUNK) {
                    let mut qb = sqlx::QueryBuilder::<$db>::new("INSERT INTO sites (id, name, address) ");
                    qb.push_values(chunk.iter(), |mut b, s| {
                        b.push_bind(s.id.clone()).push_bind(s.name.clone()).push_bind(s.address.clone());
                    });
                    qb.push(" ON CONFLICT (id) DO UPDATE SET name = excluded.name, address = excluded.address");
                    qb.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(unique.len() as u64)
            }

            async fn upsert_device(&self, d: &Device) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO devices (id, site_id, vendor, model, hardware_revision, serial_number, \
                     approved_version, current_firmware) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (id) DO UPDATE SET site_id = excluded.site_id, vendor = excluded.vendor, \
                     model = excluded.model, hardware_revision = excluded.hardware_revision, \
                     serial_number = excluded.serial_number, approved_version = excluded.approved_version, \
                     current_firmware = COALESCE(devices.current_firmware, excluded.current_firmware)",
                )
                .bind(&d.id)
                .bind(&d.site_id)
                .bind(&d.vendor)
                .bind(&d.model)
                .bind(&d.hardware_revision)
                .bind(&d.serial_number)
                .bind(&d.approved_version)
                .bind(&d.current_firmware)
                .execute(&self.pool)
                .await
                .map_err(|e| match &e {
                    sqlx::Error::Database(x) if x.is_foreign_key_violation() => StoreError::Invalid(
                        format!("device {:?} names site {:?}, which does not exist; import the site first", d.id, d.site_id),
                    ),
                    _ => StoreError::Db(e),
                })?;
                Ok(())
            }

            async fn assign(&self, technician_id: &str, site_id: &str) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO assignments (technician_id, site_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                )
                .bind(technician_id)
                .bind(site_id)
                .execute(&self.pool)
                .await
                .map_err(|e| match &e {
                    sqlx::Error::Database(x) if x.is_foreign_key_violation() => StoreError::NotFound(
                        format!("technician {technician_id:?} or site {site_id:?}"),
                    ),
                    _ => StoreError::Db(e),
                })?;
                Ok(())
            }

            async fn unassign(&self, technician_id: &str, site_id: &str) -> Result<bool, StoreError> {
                let r = sqlx::query("DELETE FROM assignments WHERE technician_id = $1 AND site_id = $2")
                    .bind(technician_id)
                    .bind(site_id)
                    .execute(&self.pool)
                    .await?;
                Ok(r.rows_affected() > 0)
            }

            async fn upsert_work_order(&self, w: &WorkOrder) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO work_orders (id, site_id, title, planned_for) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (id) DO UPDATE SET site_id = excluded.site_id, title = excluded.title, \
                     planned_for = excluded.planned_for",
                )
                .bind(&w.id)
                .bind(&w.site_id)
                .bind(&w.title)
                .bind(&w.planned_for)
                .execute(&mut *tx)
                .await
                .map_err(|e| match &e {
                    sqlx::Error::Database(x) if x.is_foreign_key_violation() => StoreError::Invalid(
                        format!("work order {:?} names site {:?}, which does not exist", w.id, w.site_id),
                    ),
                    _ => StoreError::Db(e),
                })?;
                sqlx::query("DELETE FROM work_order_devices WHERE work_order_id = $1")
                    .bind(&w.id)
                    .execute(&mut *tx)
                    .await?;
                for d in &w.devices {
                    use sqlx::Row;
                    let site: Option<String> = sqlx::query("SELECT site_id FROM devices WHERE id = $1")
                        .bind(d)
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(|r| r.try_get("site_id"))
                        .transpose()?;
                    match site {
                        None => {
                            return Err(StoreError::Invalid(format!(
                                "work order {:?} names device {d:?}, which does not exist; import it first",
                                w.id
                            )));
                        }
                        Some(s) if s != w.site_id => {
                            return Err(StoreError::Invalid(format!(
                                "work order {:?} is for site {:?} but device {d:?} is at site {s:?}",
                                w.id, w.site_id
                            )));
                        }
                        Some(_) => {}
                    }
                    sqlx::query(
                        "INSERT INTO work_order_devices (work_order_id, device_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    )
                    .bind(&w.id)
                    .bind(d)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn publish_bundle_to(
                &self,
                e: &CatalogEntry,
                bytes: &[u8],
                sites: &[String],
            ) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO catalog_bundles (sha256, bundle_id, version, manifest, bytes, size, published_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&e.sha256)
                .bind(&e.bundle_id)
                .bind(&e.version)
                .bind(e.manifest.to_string())
                .bind(bytes)
                .bind(to_i64(e.size))
                .bind(e.published_at)
                .execute(&mut *tx)
                .await
                .map_err(|err| match &err {
                    sqlx::Error::Database(x) if x.is_unique_violation() => StoreError::Invalid(format!(
                        "bundle {} {} (or a file with the same SHA-256) is already in the catalog; publish a new version instead",
                        e.bundle_id, e.version
                    )),
                    _ => StoreError::Db(err),
                })?;
                for site in sites {
                    sqlx::query(
                        "INSERT INTO catalog_bundle_sites (sha256, site_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    )
                    .bind(&e.sha256)
                    .bind(site)
                    .execute(&mut *tx)
                    .await
                    .map_err(|err| match &err {
                        sqlx::Error::Database(x) if x.is_foreign_key_violation() => StoreError::Invalid(format!(
                            "site {site:?} does not exist; import it first (nothing was published)"
                        )),
                        _ => StoreError::Db(err),
                    })?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn catalog_for(&self, technician_id: &str) -> Result<Vec<CatalogEntry>, StoreError> {
                let rows = sqlx::query(
                    "SELECT b.sha256, b.bundle_id, b.version, b.manifest, b.size, b.published_at FROM catalog_bundles b \
                     WHERE NOT EXISTS (SELECT 1 FROM catalog_bundle_sites s WHERE s.sha256 = b.sha256) \
                     OR EXISTS (SELECT 1 FROM catalog_bundle_sites s JOIN assignments a ON a.site_id = s.site_id \
                                WHERE s.sha256 = b.sha256 AND a.technician_id = $1) \
                     ORDER BY b.bundle_id, b.published_at",
                )
                .bind(technician_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::catalog_row).collect()
            }

            async fn bundle_sites(&self) -> Result<std::collections::BTreeMap<String, Vec<String>>, StoreError> {
                use sqlx::Row;
                let rows = sqlx::query("SELECT sha256, site_id FROM catalog_bundle_sites ORDER BY sha256, site_id")
                    .fetch_all(&self.pool)
                    .await?;
                let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
                for r in &rows {
                    out.entry(r.try_get("sha256")?).or_default().push(r.try_get("site_id")?);
                }
                Ok(out)
            }

            async fn set_trust_store(&self, doc: &serde_json::Value) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO trust_store (id, document, updated_at) VALUES (1, $1, $2) \
                     ON CONFLICT (id) DO UPDATE SET document = excluded.document, updated_at = excluded.updated_at",
                )
                .bind(doc.to_string())
                .bind(Utc::now())
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn replace_trust_store(
                &self,
                current: Option<&serde_json::Value>,
                next: &serde_json::Value,
            ) -> Result<(), StoreError> {
                self.swap_document(Singleton::TrustStore, current, next).await
            }

            async fn replace_catalog_listing(
                &self,
                current: Option<&serde_json::Value>,
                next: &serde_json::Value,
            ) -> Result<(), StoreError> {
                self.swap_document(Singleton::CatalogListing, current, next).await
            }

            async fn sites(&self, technician_id: Option<&str>) -> Result<Vec<Site>, StoreError> {
                use sqlx::Row;
                let rows = match technician_id {
                    Some(t) => sqlx::query(
                        "SELECT s.id, s.name, s.address FROM sites s JOIN assignments a ON a.site_id = s.id \
                         WHERE a.technician_id = $1 ORDER BY s.id",
                    )
                    .bind(t)
                    .fetch_all(&self.pool)
                    .await?,
                    None => sqlx::query("SELECT s.id, s.name, s.address FROM sites s ORDER BY s.id")
                        .fetch_all(&self.pool)
                        .await?,
                };
                rows.iter()
                    .map(|r| {
                        Ok(Site {
                            id: r.try_get("id")?,
                            name: r.try_get("name")?,
                            address: r.try_get("address")?,
                        })
                    })
                    .collect()
            }

            async fn devices(&self, technician_id: Option<&str>) -> Result<Vec<Device>, StoreError> {
                let rows = match technician_id {
                    Some(t) => sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT {DEVICE_COLUMNS} FROM devices d JOIN assignments a ON a.site_id = d.site_id \
                         WHERE a.technician_id = $1 ORDER BY d.id"
                    )))
                    .bind(t)
                    .fetch_all(&self.pool)
                    .await?,
                    None => sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {DEVICE_COLUMNS} FROM devices d ORDER BY d.id")))
                        .fetch_all(&self.pool)
                        .await?,
                };
                rows.iter().map(Self::device_row).collect()
            }

            async fn planned_off_approved(&self, technician_id: Option<&str>) -> Result<Vec<(String, Device)>, StoreError> {
                use sqlx::Row;
                let rows = match technician_id {
                    Some(t) => sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT wd.work_order_id, {DEVICE_COLUMNS} FROM work_order_devices wd \
                         JOIN work_orders w ON w.id = wd.work_order_id \
                         JOIN assignments a ON a.site_id = w.site_id \
                         JOIN devices d ON d.id = wd.device_id \
                         WHERE a.technician_id = $1 AND {OFF_APPROVED} ORDER BY wd.work_order_id, d.id"
                    )))
                    .bind(t)
                    .fetch_all(&self.pool)
                    .await?,
                    None => sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT wd.work_order_id, {DEVICE_COLUMNS} FROM work_order_devices wd \
                         JOIN devices d ON d.id = wd.device_id \
                         WHERE {OFF_APPROVED} ORDER BY wd.work_order_id, d.id"
                    )))
                    .fetch_all(&self.pool)
                    .await?,
                };
                rows.iter().map(|r| Ok((r.try_get("work_order_id")?, Self::device_row(r)?))).collect()
            }

            async fn devices_off_approved(&self, technician_id: Option<&str>, page: Option<(&str, u32)>) -> Result<Vec<Device>, StoreError> {
                const OFF: &str = OFF_APPROVED;
                // Without a page: everything after "" (every id), with no limit.
                let (after, limit) = match page {
                    Some((after, limit)) => (after, i64::from(limit)),
                    None => ("", i64::MAX),
                };
                let rows = match technician_id {
                    Some(t) => sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT {DEVICE_COLUMNS} FROM devices d JOIN assignments a ON a.site_id = d.site_id \
                         WHERE a.technician_id = $1 AND {OFF} AND d.id > $2 ORDER BY d.id LIMIT $3"
                    )))
                    .bind(t)
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?,
                    None => sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT {DEVICE_COLUMNS} FROM devices d WHERE {OFF} AND d.id > $1 ORDER BY d.id LIMIT $2"
                    )))
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?,
                };
                rows.iter().map(Self::device_row).collect()
            }

            async fn device(&self, id: &str) -> Result<Option<Device>, StoreError> {
                let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {DEVICE_COLUMNS} FROM devices d WHERE d.id = $1")))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(Self::device_row).transpose()
            }

            async fn work_orders(&self, technician_id: Option<&str>) -> Result<Vec<WorkOrder>, StoreError> {
                use sqlx::Row;
                let rows = match technician_id {
                    Some(t) => sqlx::query(
                        "SELECT w.id, w.site_id, w.title, w.planned_for, wd.device_id FROM work_orders w \
                         JOIN assignments a ON a.site_id = w.site_id \
                         LEFT JOIN work_order_devices wd ON wd.work_order_id = w.id \
                         WHERE a.technician_id = $1 ORDER BY w.id, wd.device_id",
                    )
                    .bind(t)
                    .fetch_all(&self.pool)
                    .await?,
                    None => sqlx::query(
                        "SELECT w.id, w.site_id, w.title, w.planned_for, wd.device_id FROM work_orders w \
                         LEFT JOIN work_order_devices wd ON wd.work_order_id = w.id ORDER BY w.id, wd.device_id",
                    )
                    .fetch_all(&self.pool)
                    .await?,
                };
                let mut out: Vec<WorkOrder> = Vec::new();
                for r in &rows {
                    let id: String = r.try_get("id")?;
                    let device: Option<String> = r.try_get("device_id")?;
                    if out.last().map(|w| w.id != id).unwrap_or(true) {
                        out.push(WorkOrder {
                            id,
                            site_id: r.try_get("site_id")?,
                            title: r.try_get("title")?,
                            planned_for: r.try_get("planned_for")?,
                            devices: Vec::new(),
                        });
                    }
                    if let (Some(d), Some(w)) = (device, out.last_mut()) {
                        w.devices.push(d);
                    }
                }
                Ok(out)
            }

            async fn is_assigned(&self, technician_id: &str, site_id: &str) -> Result<bool, StoreError> {
                let row = sqlx::query("SELECT 1 FROM assignments WHERE technician_id = $1 AND site_id = $2")
                    .bind(technician_id)
                    .bind(site_id)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.is_some())
            }

            async fn catalog(&self) -> Result<Vec<CatalogEntry>, StoreError> {
                let rows = sqlx::query(
                    "SELECT sha256, bundle_id, version, manifest, size, published_at FROM catalog_bundles \
                     ORDER BY bundle_id, published_at",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::catalog_row).collect()
            }

            async fn bundle_bytes(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
                use sqlx::Row;
                let row = sqlx::query("SELECT bytes FROM catalog_bundles WHERE sha256 = $1")
                    .bind(sha256)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map(|r| r.try_get("bytes")).transpose()?)
            }

            async fn trust_store(&self) -> Result<Option<serde_json::Value>, StoreError> {
                use sqlx::Row;
                let row = sqlx::query("SELECT document FROM trust_store WHERE id = 1")
                    .fetch_optional(&self.pool)
                    .await?;
                let Some(r) = row else { return Ok(None) };
                let doc: String = r.try_get("document")?;
                serde_json::from_str(&doc)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt(format!("trust store: {e}")))
            }

            async fn catalog_listing(&self) -> Result<Option<serde_json::Value>, StoreError> {
                use sqlx::Row;
                let row = sqlx::query("SELECT document FROM catalog_listing WHERE id = 1")
                    .fetch_optional(&self.pool)
                    .await?;
                let Some(r) = row else { return Ok(None) };
                let doc: String = r.try_get("document")?;
                serde_json::from_str(&doc)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt(format!("catalog listing: {e}")))
            }

            async fn log_head(&self, log_id: &str) -> Result<Option<LogHead>, StoreError> {
                use sqlx::Row;
                let row = sqlx::query(
                    "SELECT technician_id, last_seq, last_hash, signature FROM checkpoints WHERE log_id = $1",
                )
                .bind(log_id)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|r| {
                    Ok(LogHead {
                        technician_id: r.try_get("technician_id")?,
                        last_seq: to_u64(r.try_get::<i64, _>("last_seq")?),
                        last_hash: r.try_get("last_hash")?,
                        signature: r.try_get("signature")?,
                    })
                })
                .transpose()
            }

            async fn existing_event_ids(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
                use sqlx::Row;
                let mut out = Vec::new();
                for chunk in ids.chunks(INSERT_CHUNK) {
                    let mut qb = sqlx::QueryBuilder::<$db>::new("SELECT id FROM events WHERE id IN (");
                    let mut list = qb.separated(", ");
                    for id in chunk {
                        list.push_bind(id.clone());
                    }
                    qb.push(")");
                    for r in qb.build().fetch_all(&self.pool).await? {
                        out.push(r.try_get("id")?);
                    }
                }
                Ok(out)
            }

            async fn stored_events(&self, log_id: &str, from: u64, to: u64) -> Result<Vec<StoredEvent>, StoreError> {
                use sqlx::Row;
                let rows = sqlx::query(
                    "SELECT id, seq, hash FROM events WHERE log_id = $1 AND seq >= $2 AND seq <= $3 ORDER BY seq",
                )
                .bind(log_id)
                .bind(to_i64(from))
                .bind(to_i64(to))
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(StoredEvent {
                            id: r.try_get("id")?,
                            seq: to_u64(r.try_get::<i64, _>("seq")?),
                            hash: r.try_get("hash")?,
                        })
                    })
                    .collect()
            }

            async fn log_events(&self, log_id: &str, from: u64, to: u64) -> Result<Vec<Event>, StoreError> {
                use sqlx::Row;
                let rows = sqlx::query(
                    "SELECT body FROM events WHERE log_id = $1 AND seq >= $2 AND seq <= $3 ORDER BY seq",
                )
                .bind(log_id)
                .bind(to_i64(from))
                .bind(to_i64(to))
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        let body: String = r.try_get("body")?;
                        serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(format!("stored event: {e}")))
                    })
                    .collect()
            }

            async fn visit_openings(&self) -> Result<Vec<Event>, StoreError> {
                use sqlx::Row;
                let rows = sqlx::query(
                    "SELECT body FROM events WHERE kind = 'visit_opened' ORDER BY time, log_id, seq",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        let body: String = r.try_get("body")?;
                        serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(format!("stored event: {e}")))
                    })
                    .collect()
            }

            async fn commit_events(
                &self,
                technician_id: &str,
                log_id: &str,
                events: &[(Event, String)],
                head: &LogHead,
            ) -> Result<u64, StoreError> {
                let mut tx = self.pool.begin().await?;
                let now = Utc::now();
                let mut added = 0;
                // Multi-row inserts: one round trip per chunk instead of per event.
                for chunk in events.chunks(INSERT_CHUNK) {
                    let mut rows = Vec::with_capacity(chunk.len());
                    for (e, hash) in chunk {
                        let body = serde_json::to_string(e).map_err(|err| {
                            StoreError::Invalid(format!("event {}: {err}", e.body.id))
                        })?;
                        rows.push((e, hash.clone(), body));
                    }
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO events (id, log_id, seq, technician_id, device, kind, time, hash, body, received_at) ",
                    );
                    qb.push_values(rows, |mut b, (e, hash, body)| {
                        b.push_bind(e.body.id.to_string())
                            .push_bind(log_id.to_string())
                            .push_bind(to_i64(e.body.seq))
                            .push_bind(technician_id.to_string())
                            .push_bind(e.body.device.clone())
                            .push_bind(e.body.kind.tag())
                            .push_bind(e.body.time)
                            .push_bind(hash)
                            .push_bind(body)
                            .push_bind(now);
                    });
                    qb.push(" ON CONFLICT DO NOTHING");
                    added += qb.build().execute(&mut *tx).await?.rows_affected();
                }
                if added != events.len() as u64 {
                    return Err(StoreError::Conflict(format!(
                        "log {log_id} was extended concurrently; push again"
                    )));
                }
                // The log's first event: how it began, for the log-continuity report.
                if let Some((first, _)) = events.first().filter(|(e, _)| e.body.seq == 1) {
                    let (chained, previous, why) = match &first.body.kind {
                        EventKind::LogStarted { previous, why } => (true, previous.clone(), Some(why.clone())),
                        _ => (false, None, None),
                    };
                    sqlx::query(
                        "INSERT INTO log_continuity (log_id, technician_id, started_at, chained, \
                         previous_log_id, previous_seq, previous_hash, why) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (log_id) DO NOTHING",
                    )
                    .bind(log_id)
                    .bind(technician_id)
                    .bind(now)
                    .bind(chained)
                    .bind(previous.as_ref().map(|p| p.log_id.to_string()))
                    .bind(previous.as_ref().map(|p| to_i64(p.seq)))
                    .bind(previous.map(|p| p.hash))
                    .bind(why)
                    .execute(&mut *tx)
                    .await?;
                }
                // One update per device named in the batch.
                for (device, f) in fold_batch(events) {
                    sqlx::query(
                        "UPDATE devices SET \
                         last_visit = CASE WHEN last_visit IS NULL OR last_visit < $2 THEN $2 ELSE last_visit END, \
                         current_firmware = COALESCE($3, current_firmware), \
                         not_patched_reason = CASE WHEN $4 THEN $5 ELSE not_patched_reason END, \
                         failures = failures + $6, \
                         last_failure = COALESCE($7, last_failure) \
                         WHERE (id = $1 OR (serial_number = $1 AND NOT EXISTS (SELECT 1 FROM devices x WHERE x.id = $1))) \
                         AND site_id IN (SELECT site_id FROM assignments WHERE technician_id = $8)",
                    )
                    .bind(device)
                    .bind(f.last_visit)
                    .bind(f.firmware)
                    .bind(f.not_patched_changed)
                    .bind(f.not_patched_reason)
                    .bind(to_i64(f.failures))
                    .bind(f.last_failure)
                    .bind(technician_id)
                    .execute(&mut *tx)
                    .await?;
                }
                let moved = sqlx::query(
                    "INSERT INTO checkpoints (log_id, technician_id, last_seq, last_hash, signature, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (log_id) DO UPDATE SET \
                     last_seq = excluded.last_seq, last_hash = excluded.last_hash, \
                     signature = excluded.signature, updated_at = excluded.updated_at \
                     WHERE checkpoints.technician_id = excluded.technician_id AND checkpoints.last_seq < excluded.last_seq",
                )
                .bind(log_id)
                .bind(technician_id)
                .bind(to_i64(head.last_seq))
                .bind(&head.last_hash)
                .bind(&head.signature)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                if moved.rows_affected() != 1 {
                    return Err(StoreError::Conflict(format!(
                        "the checkpoint of log {log_id} moved concurrently; push again"
                    )));
                }
                tx.commit().await?;
                Ok(added)
            }

            async fn record_divergence(
                &self,
                technician_id: &str,
                log_id: &str,
                seq: u64,
                event_id: &str,
                hash: &str,
            ) -> Result<(), StoreError> {
                sqlx::query(
                    "UPDATE log_continuity SET diverged_seq = $3, diverged_event_id = $4, \
                     diverged_hash = $5, diverged_at = $6 \
                     WHERE log_id = $1 AND technician_id = $2 AND (diverged_seq IS NULL OR diverged_seq > $3)",
                )
                .bind(log_id)
                .bind(technician_id)
                .bind(to_i64(seq))
                .bind(event_id)
                .bind(hash)
                .bind(Utc::now())
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn log_continuity(&self) -> Result<Vec<LogContinuityRow>, StoreError> {
                use sqlx::Row;
                let rows = sqlx::query(
                    "SELECT c.log_id, c.technician_id, c.started_at, c.chained, c.previous_log_id, \
                     c.previous_seq, c.previous_hash, c.why, c.diverged_seq, c.diverged_event_id, \
                     c.diverged_hash, c.diverged_at, k.last_seq, k.last_hash \
                     FROM log_continuity c JOIN checkpoints k ON k.log_id = c.log_id \
                     ORDER BY c.technician_id, c.started_at, c.log_id",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        let log_id: String = r.try_get("log_id")?;
                        let corrupt = |what: &str| {
                            StoreError::Corrupt(format!("log continuity of {log_id}: {what}"))
                        };
                        let previous = match (
                            r.try_get::<Option<String>, _>("previous_log_id")?,
                            r.try_get::<Option<i64>, _>("previous_seq")?,
                            r.try_get::<Option<String>, _>("previous_hash")?,
                        ) {
                            (Some(id), Some(seq), Some(hash)) => Some(LogHeadRef {
                                log_id: id.parse().map_err(|_| corrupt("previous log id"))?,
                                seq: to_u64(seq),
                                hash,
                            }),
                            (None, None, None) => None,
                            _ => return Err(corrupt("partial previous head")),
                        };
                        let diverged = match (
                            r.try_get::<Option<i64>, _>("diverged_seq")?,
                            r.try_get::<Option<String>, _>("diverged_event_id")?,
                            r.try_get::<Option<String>, _>("diverged_hash")?,
                            r.try_get::<Option<DateTime<Utc>>, _>("diverged_at")?,
                        ) {
                            (Some(seq), Some(event_id), Some(hash), Some(detected_at)) => {
                                Some(Divergence { seq: to_u64(seq), event_id, hash, detected_at })
                            }
                            (None, None, None, None) => None,
                            _ => return Err(corrupt("partial divergence")),
                        };
                        Ok(LogContinuityRow {
                            technician_id: r.try_get("technician_id")?,
                            started_at: r.try_get("started_at")?,
                            chained: r.try_get("chained")?,
                            previous,
                            why: r.try_get("why")?,
                            head_seq: to_u64(r.try_get::<i64, _>("last_seq")?),
                            head_hash: r.try_get("last_hash")?,
                            diverged,
                            log_id,
                        })
                    })
                    .collect()
            }

            async fn device_history(&self, device: &Device) -> Result<Vec<Event>, StoreError> {
                use sqlx::Row;
                let serial = device.serial_number.clone().unwrap_or_else(|| device.id.clone());
                let rows = sqlx::query(
                    "SELECT body FROM events WHERE device = $1 OR device = $2 ORDER BY time, log_id, seq",
                )
                .bind(&device.id)
                .bind(serial)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        let body: String = r.try_get("body")?;
                        serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(format!("stored event: {e}")))
                    })
                    .collect()
            }

            async fn counts(&self) -> Result<Counts, StoreError> {
                use sqlx::Row;
                let r = sqlx::query(
                    "SELECT (SELECT COUNT(*) FROM events) AS events, (SELECT COUNT(*) FROM checkpoints) AS checkpoints",
                )
                .fetch_one(&self.pool)
                .await?;
                Ok(Counts {
                    events: to_u64(r.try_get::<i64, _>("events")?),
                    checkpoints: to_u64(r.try_get::<i64, _>("checkpoints")?),
                })
            }

            async fn set_credential(&self, c: &StoredCredential) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO device_credentials (device_id, kind, nonce, ciphertext, updated_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (device_id, kind) DO UPDATE SET \
                     nonce = excluded.nonce, ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
                )
                .bind(&c.device_id)
                .bind(&c.kind)
                .bind(&c.nonce)
                .bind(&c.ciphertext)
                .bind(Utc::now())
                .execute(&self.pool)
                .await
                .map_err(|e| match &e {
                    sqlx::Error::Database(x) if x.is_foreign_key_violation() => {
                        StoreError::NotFound(format!("device {:?}", c.device_id))
                    }
                    _ => StoreError::Db(e),
                })?;
                Ok(())
            }

            async fn credentials_for(&self, technician_id: &str) -> Result<Vec<StoredCredential>, StoreError> {
                use sqlx::Row;
                let rows = sqlx::query(
                    "SELECT c.device_id, c.kind, c.nonce, c.ciphertext FROM device_credentials c \
                     JOIN devices d ON d.id = c.device_id \
                     JOIN assignments a ON a.site_id = d.site_id \
                     WHERE a.technician_id = $1 ORDER BY c.device_id, c.kind",
                )
                .bind(technician_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(StoredCredential {
                            device_id: r.try_get("device_id")?,
                            kind: r.try_get("kind")?,
                            nonce: r.try_get("nonce")?,
                            ciphertext: r.try_get("ciphertext")?,
                        })
                    })
                    .collect()
            }
        }
    };
}

store_impl!(SqliteStore, sqlx::Sqlite, sqlx::SqlitePool, SQLITE_MIGRATIONS);
store_impl!(PgStore, sqlx::Postgres, sqlx::PgPool, POSTGRES_MIGRATIONS);

impl SqliteStore {
    async fn take_log_locks(&self, _log_ids: &[String]) -> Result<LogLock, StoreError> {
        Ok(LogLock(None))
    }

    /// Open (creating if needed) the SQLite database file, with WAL, full sync and foreign keys on.
    pub async fn open(path: &std::path::Path) -> Result<Self, StoreError> {
        use sqlx::sqlite::{
            SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
        };
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .foreign_keys(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: an acknowledged push survives a power cut. With NORMAL the last commits can
            // vanish, and a client whose cursor is past the server's head would see gaps.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(opts).await?;
        Ok(Self::new(pool))
    }
}

impl PgStore {
    async fn take_log_locks(&self, log_ids: &[String]) -> Result<LogLock, StoreError> {
        let mut keys: Vec<i64> = log_ids.iter().map(|l| log_lock_key(l)).collect();
        keys.sort_unstable();
        keys.dedup();
        let busy = |e: sqlx::Error| match &e {
            // lock_not_available (lock_timeout) and deadlock_detected: another instance holds
            // the log; the client retries.
            sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("55P03" | "40P01")) => {
                StoreError::Conflict(
                    "another server instance is storing a push of this log; push again shortly"
                        .into(),
                )
            }
            sqlx::Error::PoolTimedOut => StoreError::Conflict(
                "the server is handling many pushes; push again shortly".into(),
            ),
            _ => StoreError::Db(e),
        };
        let mut tx = self.lock_pool().begin().await.map_err(busy)?;
        sqlx::query(sqlx::AssertSqlSafe(format!("SET LOCAL lock_timeout = '{LOG_LOCK_WAIT}'")))
            .execute(&mut *tx)
            .await
            .map_err(busy)?;
        for key in keys {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(busy)?;
        }
        Ok(LogLock(Some(tx)))
    }

    /// Connect to PostgreSQL (`postgres://user@host:port/db`), over TLS (rustls) when the URL's
    /// `sslmode` (or `PGSSLMODE`) asks for it: `require` encrypts; `verify-ca` and `verify-full`
    /// also check the server's certificate, against `sslrootcert=FILE` or the public (Mozilla)
    /// roots built in; `prefer` encrypts when the server offers TLS. Without one the connection is
    /// plain TCP, as it always was here (sqlx would default to `prefer`; sqlx 0.9.0 also leaves
    /// Nagle's algorithm on, which costs some 80 ms per TLS handshake).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        // sqlx builds its `verify-ca` verifier on rustls' process-wide crypto provider. A binary
        // that also holds reqwest's (aws-lc-rs) has two and rustls cannot pick one by itself, so
        // name ring, the provider the server's own TLS uses. Already set: keep what is there.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut options: sqlx::postgres::PgConnectOptions = url.parse()?;
        if !names_ssl_mode(url) && std::env::var_os("PGSSLMODE").is_none() {
            options = options.ssl_mode(sqlx::postgres::PgSslMode::Disable);
        }
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(options.clone())
            .await?;
        // One lock connection per push this instance works on at once, opened on demand.
        let locks = sqlx::postgres::PgPoolOptions::new()
            .max_connections(crate::api::MAX_CONCURRENT_PUSHES as u32)
            .min_connections(0)
            .idle_timeout(std::time::Duration::from_secs(60))
            .acquire_timeout(std::time::Duration::from_secs(30))
            .connect_lazy_with(options);
        Ok(Self::new(pool).with_lock_pool(locks))
    }
}

/// Whether a database URL names an `sslmode` (sqlx also reads `ssl-mode`).
fn names_ssl_mode(url: &str) -> bool {
    url.split_once('?').is_some_and(|(_, query)| {
        query.split('&').any(|pair| matches!(pair.split('=').next(), Some("sslmode" | "ssl-mode")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldpatch_proto::event::{TimeSource, UnsignedEvent};

    #[test]
    fn the_ssl_mode_is_read_from_the_url_query() {
        assert!(names_ssl_mode("postgres://u@h/db?sslmode=require"));
        assert!(names_ssl_mode("postgres://u@h/db?application_name=x&ssl-mode=verify-full"));
        assert!(!names_ssl_mode("postgres://u@h/db"));
        assert!(!names_ssl_mode("postgres://u@h/db?sslrootcert=ca.pem"));
    }

    #[tokio::test]
    async fn the_sqlite_store_syncs_every_commit_to_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("inventory.db")).await.unwrap();
        // PRAGMA synchronous: 2 is FULL (NORMAL, 1, can lose acknowledged commits on power loss).
        let (level,): (i64,) =
            sqlx::query_as("PRAGMA synchronous").fetch_one(store.pool()).await.unwrap();
        assert_eq!(level, 2);
    }

    #[tokio::test]
    async fn logs_stored_before_chaining_are_backfilled_as_unchained() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("inventory.db")).await.unwrap();
        // The schema before log continuity, holding one log (its first event and one more).
        migrator(&SQLITE_MIGRATIONS[..3]).run(store.pool()).await.unwrap();
        let t = Technician { id: "alice".into(), name: "Alice".into(), public_key: "ab".into() };
        store.create_technician(&t).await.unwrap();
        let received = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        for seq in [1i64, 2] {
            sqlx::query(
                "INSERT INTO events (id, log_id, seq, technician_id, kind, time, hash, body, \
                 received_at) VALUES ($1, 'log-1', $2, 'alice', 'note', $3, 'h', '{}', $3)",
            )
            .bind(format!("e{seq}"))
            .bind(seq)
            .bind(received)
            .execute(store.pool())
            .await
            .unwrap();
        }
        sqlx::query(
            "INSERT INTO checkpoints (log_id, technician_id, last_seq, last_hash, signature, \
             updated_at) VALUES ('log-1', 'alice', 2, 'h2', 's', $1)",
        )
        .bind(received)
        .execute(store.pool())
        .await
        .unwrap();
        store.migrate().await.unwrap();
        let rows = store.log_continuity().await.unwrap();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!((r.log_id.as_str(), r.technician_id.as_str()), ("log-1", "alice"));
        assert_eq!((r.started_at, r.chained, r.head_seq), (received, false, 2));
        assert!(r.previous.is_none() && r.why.is_none() && r.diverged.is_none());
    }

    fn ev(device: &str, kind: EventKind, secs: i64) -> (Event, String) {
        let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
        let e = UnsignedEvent {
            id: uuid::Uuid::now_v7(),
            log_id: uuid::Uuid::nil(),
            seq: 1,
            time: DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap(),
            time_source: TimeSource::SystemClock,
            signer: String::new(),
            visit_id: None,
            device: Some(device.into()),
            prev_hash: String::new(),
            kind,
        }
        .sign(&key);
        let h = e.hash();
        (e, h)
    }

    #[test]
    fn a_batch_folds_per_device_in_order() {
        let events = vec![
            ev("a", EventKind::DeviceNotPatched { reason: "locked".into() }, 5),
            ev("b", EventKind::Failed { stage: "upload".into(), reason: "r1".into() }, 1),
            ev(
                "a",
                EventKind::Confirmed { version: Some("2.0.0".into()), image_sha256: String::new() },
                3,
            ),
            ev("b", EventKind::RolledBack { reason: "r2".into() }, 2),
            ev("b", EventKind::DeviceNotPatched { reason: "gave up".into() }, 4),
        ];
        let folded = fold_batch(&events);
        assert_eq!(folded.iter().map(|(d, _)| d.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let a = &folded[0].1;
        assert_eq!(a.firmware.as_deref(), Some("2.0.0"));
        // Confirmed after not-patched clears the reason; the latest time wins for last visit.
        assert!(a.not_patched_changed && a.not_patched_reason.is_none());
        assert_eq!(a.last_visit.unwrap().timestamp(), 1_800_000_005);
        let b = &folded[1].1;
        assert_eq!((b.failures, b.last_failure.as_deref()), (2, Some("r2")));
        assert_eq!(b.not_patched_reason.as_deref(), Some("gave up"));
        assert!(b.firmware.is_none());
    }
}
