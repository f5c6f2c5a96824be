//! Offline-first sync with the central inventory (`fieldpatch-server`).
//!
//! Sync is push-then-pull:
//!
//! 1. **Push.** For each local visit log, the events after the server's last countersigned
//!    checkpoint go up in batches. The server answers with what it holds and a checkpoint it signs;
//!    the client verifies that signature against the pinned server key and only then records the
//!    checkpoint locally. A batch that was sent but whose answer was lost is simply sent again: the
//!    server's push is idempotent, so interrupting sync at any byte loses nothing and stores nothing
//!    twice.
//! 2. **Pull.** Sites, devices, work orders, the catalog and the trust store for the technician's
//!    assigned sites; bundle files the laptop does not have yet are fetched and checked against
//!    their SHA-256 before the whole snapshot is handed to the local store in one call.
//!
//! Device credentials for the assigned sites arrive sealed to the technician's key
//! ([`sealed`]) and are handed to [`SyncLocal::apply_credentials`] separately from the rest of
//! the pull, so a store cannot persist them by accident: they belong in the OS keyring only.
//!
//! The local store is reached through the [`SyncLocal`] trait so this module knows nothing of SQL.
//! Transport failures (connection refused or cut, timeouts, 5xx) are retried with exponential
//! backoff and jitter; authorization and request errors are not.

pub mod auto;
pub mod client;
pub mod local;
pub mod netwatch;
/// Sealed credentials and the sync wire types, shared with the server (`fieldpatch-proto`).
pub use fieldpatch_proto::{sealed, wire};

pub use auto::{AutoSync, WatchSink};
pub use client::{
    LogCursor, PushProgress, RetryPolicy, SyncConfig, SyncError, SyncLocal, SyncReport, WatchEvent,
    WatchOptions, sync, watch,
};
pub use local::{LocalSyncError, StoreSync};
pub use sealed::SealedCredential;
pub use wire::{
    Checkpoint, CheckpointError, EventProblem, PullResponse, PushAck, PushRequest, SignedCheckpoint,
};
