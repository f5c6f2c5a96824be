//! # fieldpatch-lab
//!
//! Simulated devices for tests, benchmarks and the demo. They speak the real wire protocols over
//! real operating-system plumbing: pseudo-terminals for serial devices, loopback sockets for
//! networked devices, and a backend seam for USB (where no bus exists). Faults (link drops,
//! corrupted bytes, stalls, reboots, power loss) are injected here, never in the drivers.
//!
//! The simulators are checked against independent clients (for example `smpmgr`) so that a test
//! passing against the lab means something for real hardware.

pub mod dfu;
pub mod pty;
pub mod smp;
