//! # fieldpatch-proto
//!
//! What the technician's laptop and the inventory server must agree on byte for byte, and nothing
//! else: the visit-log event envelope and its canonical bytes ([`event`]), the sync API's wire
//! types and countersigned checkpoints ([`wire`]), device credentials sealed to a technician's key
//! ([`sealed`]), firmware versions and device identities ([`model`]), and the trust root both
//! sides verify: canonical JSON ([`canonical`]), detached signatures and thresholds
//! ([`signature`]), the trust store with its rotation rules ([`trust`]) and the signed catalog
//! listing ([`listing`]), the patch bundle file's layout ([`bundle`]), and the site-visit audit
//! export format and its offline verifier ([`audit`]).
//!
//! Design decisions:
//!
//! * **Small and without I/O.** No files, sockets, databases or keyrings: both `fieldpatch-core`
//!   (the laptop) and `fieldpatch-server` (the inventory) depend on this crate, and the server
//!   depends on nothing else of Fieldpatch, so it never builds USB, serial or keyring code.
//! * **Shapes never change silently.** The canonical bytes of an event are what its signature and
//!   the hash chain cover; changing them needs a new schema version, on both sides at once.

pub mod audit;
pub mod bundle;
pub mod canonical;
pub mod event;
pub mod listing;
pub mod model;
pub mod sealed;
pub mod signature;
pub mod trust;
pub mod wire;

pub use event::{
    ChainError, Event, EventKind, GENESIS_HASH, TimeSource, UnsignedEvent, verify_chain,
};
pub use model::{DeviceIdentity, DeviceMode, Version};
