//! Chaining a technician's visit logs: what a new log names as the head it continues, and the
//! small record in the OS keyring that survives a wiped data directory.
//!
//! Design decisions:
//!
//! * **Every log starts with `log_started`** (an
//!   [`EventKind::LogStarted`](super::event::EventKind::LogStarted)): the log writes it at seq 1,
//!   before the first event a caller appends ([`super::log`]), so no job can start a log without
//!   it. It names the previous head this laptop knows, or nothing, and the inventory
//!   compares that with what it holds (its `log-continuity` report: `continues`, `restarted`,
//!   `cut`, `first`).
//! * **The previous head comes from the keyring.** The local store holds one log per technician
//!   key (`logs.signer` is unique), so when a new log starts the store has no earlier log of the
//!   key to name: the store was wiped, replaced or never used. After each push that moved a log's
//!   head, the head the server countersigned is written to the keyring entry `log-head/<dir>`
//!   ([`record_name`]) beside the technician key. It is not a secret; it lives in the keyring
//!   because the keyring outlives the data directory.
//! * **One record per data directory.** `<dir>` is derived from the data directory's path, so the
//!   demo (`<data dir>/demo`, synced with its own embedded inventory) never chains the real log to
//!   the demo's, and a data directory wiped in place finds its record again.
//! * **Cheap.** The record is written once per log per sync, and only when the push moved the
//!   head; it is read only when a log is about to start.
//! * **What it cannot see.** Events appended after the last push and lost with the data directory
//!   are in no record (writing the keyring at every append would cost too much): the new log names
//!   the last pushed head and the inventory sees it continue. A data directory restored from an
//!   older copy keeps its old log id; the inventory notices that when the laptop sends events that
//!   contradict the ones it holds ([`crate::sync::SyncError::LogDiverged`]).

use crate::credentials::{CredentialError, CredentialName, Credentials, Secret};
use crate::store::{Store, StoreError};
use fieldpatch_proto::event::LogHeadRef;
use fieldpatch_proto::wire::Checkpoint;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

/// `why` of a `log_started` naming the head from the keyring record.
pub const WHY_KEYRING: &str = "keyring";
/// `why` of a `log_started` that names nothing: no record for this data directory and key.
pub const WHY_NOTHING_KNOWN: &str = "nothing_known";
/// `why` of a `log_started` that names nothing because the keyring record could not be read.
pub const WHY_RECORD_UNREADABLE: &str = "keyring_record_unreadable";

/// What a new log's `log_started` event says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogStart {
    /// The head of the technician's earlier log this one continues, if known.
    pub previous: Option<LogHeadRef>,
    /// Where `previous` came from (one of the `WHY_*` values).
    pub why: String,
}

impl LogStart {
    /// A start that names no earlier log.
    pub fn nothing_known() -> LogStart {
        LogStart { previous: None, why: WHY_NOTHING_KNOWN.into() }
    }
}

/// The keyring record: the head the server acknowledged and the key that signs that log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushedHead {
    /// Hex ed25519 public key of the technician key that signs the log.
    pub signer: String,
    #[serde(flatten)]
    pub head: LogHeadRef,
}

/// The keyring entry that holds the pushed-head record of the data directory `data_dir`:
/// `log-head/<first 16 hex digits of SHA-256 over the canonical path>`.
pub fn record_name(data_dir: &Path) -> CredentialName {
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let digest = Sha256::digest(dir.to_string_lossy().as_bytes());
    CredentialName::LogHead { dir: hex::encode(&digest[..8]) }
}

/// What a log starting now in `data_dir`, signed by `signer`, names as its previous head: the
/// keyring record when it belongs to that key, else nothing.
pub async fn start_for(
    credentials: &Credentials,
    data_dir: &Path,
    signer: &str,
) -> Result<LogStart, CredentialError> {
    let Some(secret) = credentials.get_optional(&record_name(data_dir)).await? else {
        return Ok(LogStart::nothing_known());
    };
    Ok(match serde_json::from_str::<PushedHead>(secret.expose()) {
        Ok(r) if r.signer.eq_ignore_ascii_case(signer) => {
            LogStart { previous: Some(r.head), why: WHY_KEYRING.into() }
        }
        // The record of a key this laptop no longer signs with: that log is not this one's past.
        Ok(_) => LogStart::nothing_known(),
        Err(_) => LogStart { previous: None, why: WHY_RECORD_UNREADABLE.into() },
    })
}

/// Remember that the server acknowledged `checkpoint` (a push moved the head of its log), in the
/// keyring record of `data_dir`. Nothing is written for a log the local store does not hold.
/// Returns whether the record was written.
pub async fn remember_pushed_head(
    store: &Store,
    credentials: &Credentials,
    data_dir: &Path,
    checkpoint: &Checkpoint,
) -> Result<bool, CredentialError> {
    let signer: Option<String> = sqlx::query_scalar("SELECT signer FROM logs WHERE id = ?")
        .bind(checkpoint.log_id.to_string())
        .fetch_optional(store.pool())
        .await
        .map_err(StoreError::Sql)?;
    let Some(signer) = signer else { return Ok(false) };
    let record = PushedHead {
        signer,
        head: LogHeadRef {
            log_id: checkpoint.log_id,
            seq: checkpoint.last_seq,
            hash: checkpoint.last_hash.clone(),
        },
    };
    let text = serde_json::to_string(&record).map_err(|e| StoreError::Corrupt {
        what: "log head record".into(),
        detail: e.to_string(),
    })?;
    credentials.set(&record_name(data_dir), &Secret::new(text)).await?;
    Ok(true)
}
