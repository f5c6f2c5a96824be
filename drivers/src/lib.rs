//! # fieldpatch-drivers
//!
//! Device access for Fieldpatch: transports (serial ports, USB, UDP/TCP/HTTP), discovery, and one
//! module per device protocol.
//!
//! This crate knows bytes, ports and device protocols. It knows nothing of patch bundles,
//! signatures, plans, SQL or the UI: callers (`fieldpatch-core`) hand it bytes that were already
//! verified and read back what the device reports. Every wait has a timeout, and malformed bytes
//! from a device become errors, never panics.

pub mod dfu;
pub mod discovery;
pub mod esp;
pub mod progress;
pub mod smp;
pub mod swupdate;
pub mod transport;
pub mod usb;
