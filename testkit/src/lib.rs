//! The shared test kit: what the integration tests and benchmarks of several crates build the same
//! way, built once.
//!
//! - [`chain`]: signed, hash-chained visit-log events (fieldpatch-proto only).
//! - [`tls`]: a self-signed certificate for a loopback HTTPS server (the `openssl` tool).
//! - [`swupdate`]: the real SWUpdate daemon on a free port and signed `.swu` images for it (the
//!   `swupdate`, `cpio` and `openssl` tools).
//! - [`trust`]: signed trust stores and catalog listings (fieldpatch-proto only).
//! - `catalog` (feature `core`): release keys, a trust store and signed bundles, in memory or
//!   written to a catalog folder.
//! - `site` (feature `lab`): a lab site of simulated devices (SMP over UDP and a pty, a USB DFU
//!   board) and the device records that find them.
//!
//! Without features the kit depends on fieldpatch-proto only, so fieldpatch-server's tests use it
//! without depending on fieldpatch-core (the architecture's rule holds for tests too).

pub mod chain;
pub mod swupdate;
pub mod tls;
pub mod trust;

#[cfg(feature = "core")]
pub mod catalog;
#[cfg(feature = "lab")]
pub mod site;
