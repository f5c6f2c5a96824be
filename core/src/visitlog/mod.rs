//! The tamper-evident visit log.
//!
//! Every event carries a client-generated UUID (v7), a per-log sequence number, the time and where
//! the time came from, the SHA-256 of the previous event, and an ed25519 signature by the
//! technician's key. [`event`] defines the event envelope and its canonical bytes: it is the
//! contract between the laptop (which appends and signs) and the inventory server (which verifies
//! chains and signatures on push). [`log`] keeps logs in the local store: atomic appends, reading,
//! verification that names the first bad event, and the sync client's view. [`continuity`] chains
//! a technician's logs: each log's first event names the head it continues.

pub mod continuity;
/// The event envelope, shared with the inventory server (`fieldpatch-proto`).
pub use fieldpatch_proto::event;
pub mod log;

pub use event::{
    ChainError, Event, EventKind, GENESIS_HASH, TimeSource, UnsignedEvent, verify_chain,
};
pub use log::{
    LogError, LogInfo, LogProblem, LogVerification, NewEvent, SyncState, VisitLog, VisitRecord,
};
