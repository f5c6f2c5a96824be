//! The local store: one SQLite file in the data directory, opened through sqlx.
//!
//! Design decisions:
//!
//! * **Embedded migrations** (`sqlx::migrate!("./migrations")`) run on every open, so a store file
//!   from an older build is brought up to date and a newer file is refused with a clear error.
//! * **WAL, `synchronous = FULL`, a busy timeout and foreign keys** on every connection. WAL lets the
//!   app read while a batch session appends; FULL makes every committed visit-log event durable
//!   even if the laptop loses power; the busy timeout makes a second process (the CLI while the
//!   app runs) wait instead of failing.
//! * **No secrets.** Credential *names* are indexed here because keyrings cannot always enumerate;
//!   the values live only in the OS keyring ([`crate::credentials`]).
//! * Queries are plain `sqlx::query` with binds (no compile-time database); rows are mapped by
//!   hand.
//!
//! The visit-log tables are written only through [`crate::visitlog::log`], which owns the
//! append/verify rules; this module gives the other tables a small typed API.

mod records;

pub use records::{
    BundleRecord, BundleVerdict, InventoryDevice, SavedJob, SiteRecord, WorkOrderRecord,
};

use crate::clock::Clock;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// File name of the store inside the data directory.
pub const STORE_FILE: &str = "fieldpatch.db";

/// How long a writer waits for another process's write lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Errors of the local store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Path(#[from] crate::paths::PathError),
    #[error(
        "cannot create the data directory {path}: {source}; check permissions or set FIELDPATCH_DATA_DIR"
    )]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error(
        "cannot open the local store {path}: {source}; check the file is a Fieldpatch store and is writable"
    )]
    Open { path: PathBuf, source: sqlx::Error },
    #[error(
        "cannot bring the local store {path} up to date: {source}; if it was written by a newer Fieldpatch, upgrade Fieldpatch"
    )]
    Migrate { path: PathBuf, source: sqlx::migrate::MigrateError },
    #[error("{}", sql_message(.0))]
    Sql(#[from] sqlx::Error),
    #[error("local store row is corrupt ({what}): {detail}")]
    Corrupt { what: String, detail: String },
    #[error("{0}")]
    Invalid(String),
}

impl StoreError {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Path(e) => e.code(),
            StoreError::CreateDir { .. } | StoreError::Open { .. } => "store_open",
            StoreError::Migrate { .. } => "store_migrate",
            StoreError::Sql(e) if is_disk_full(e) => "disk_full",
            StoreError::Sql(_) => "store",
            StoreError::Corrupt { .. } => "store_corrupt",
            StoreError::Invalid(_) => "invalid_input",
        }
    }
}

/// Whether the store could not write because its disk is full (SQLite's `SQLITE_FULL`, or the
/// operating system's `ENOSPC`).
pub fn is_disk_full(e: &sqlx::Error) -> bool {
    const SQLITE_FULL: &str = "13";
    const ENOSPC: i32 = 28;
    match e {
        sqlx::Error::Database(d) => d.code().is_some_and(|c| c == SQLITE_FULL),
        sqlx::Error::Io(io) => io.raw_os_error() == Some(ENOSPC),
        _ => false,
    }
}

fn sql_message(e: &sqlx::Error) -> String {
    if is_disk_full(e) {
        format!(
            "the disk that holds the Fieldpatch data directory is full ({e}): the last step was not recorded, and what was recorded before is kept. Free space on that disk, then resume (`fieldpatch session resume`, or Resume in the app)"
        )
    } else {
        format!(
            "local store query failed: {e}; if another Fieldpatch process holds the store for long, retry"
        )
    }
}

/// Handle to the local store. Cheap to clone (a connection pool).
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    path: PathBuf,
    /// Taken for the whole of one sync: syncs of this store from one process (automatic sync
    /// and "sync now") take turns.
    sync_turn: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Where "now" comes from for everything this store stamps or decides.
    clock: Clock,
}

impl Store {
    /// Wait for this process's other sync of the store, if one runs, and hold the turn until
    /// the guard is dropped.
    pub async fn sync_turn(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.sync_turn.clone().lock_owned().await
    }

    /// Open (creating if needed) the store in the data directory from [`crate::paths::data_dir`].
    pub async fn open_default() -> Result<Store, StoreError> {
        let (dir, _) = crate::paths::data_dir()?;
        Store::open_in(&dir).await
    }

    /// Open (creating if needed) the store file inside `dir`.
    pub async fn open_in(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|source| StoreError::CreateDir { path: dir.to_path_buf(), source })?;
        Store::open(&dir.join(STORE_FILE)).await
    }

    /// Open (creating if needed) the store at `path` and run the embedded migrations.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open { path: path.to_path_buf(), source })?;
        // Two processes opening a new store at once may race to apply the same migration; the
        // loser sees it applied on a second look.
        let mut attempt = 0;
        loop {
            match MIGRATOR.run(&pool).await {
                Ok(()) => break,
                Err(_) if attempt < 3 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
                Err(source) => {
                    pool.close().await;
                    return Err(StoreError::Migrate { path: path.to_path_buf(), source });
                }
            }
        }
        Ok(Store {
            pool,
            path: path.to_path_buf(),
            sync_turn: Default::default(),
            clock: Clock::system(),
        })
    }

    /// This store with `clock` as its "now" (the system clock unless given): event times, record
    /// times and expiry decisions all read it.
    pub fn with_clock(mut self, clock: Clock) -> Store {
        self.clock = clock;
        self
    }

    /// The clock this store reads "now" from.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Now, as the store writes times (RFC 3339, microseconds, UTC).
    pub(crate) fn now_text(&self) -> String {
        self.clock.now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    }

    /// The SQLite file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection pool, for modules of this crate that own their tables.
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Close all connections (checkpointing the WAL).
    pub async fn close(self) {
        self.pool.close().await;
    }

    /// Read a small installation fact.
    pub async fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Write a small installation fact.
    pub async fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
