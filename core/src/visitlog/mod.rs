//! The tamper-evident visit log.
//!
//! Every event carries a client-generated UUID (v7), a per-log sequence number, the time and where
//! the time came from, the SHA-256 of the previous event, and an ed25519 signature by the
//! technician's key. [`event`] defines the event envelope and its canonical bytes: it is the
//! contract between the laptop (which appends and signs) and the inventory server (which verifies
//! chains and signatures on push).

pub mod event;

pub use event::{ChainError, Event, EventKind, GENESIS_HASH, TimeSource, UnsignedEvent, verify_chain};
