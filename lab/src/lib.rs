//! # fieldpatch-lab
//!
//! Simulated devices for tests, benchmarks and the demo. They speak the real wire protocols over
//! real operating-system plumbing: pseudo-terminals for serial devices, loopback sockets for
//! networked devices, and a backend seam for USB (where no bus exists). Faults (link drops,
//! corrupted bytes, stalls, reboots, power loss) are injected here, never in the drivers.
//!
//! The simulators are checked against independent clients (for example `smpmgr`) so that a test
//! passing against the lab means something for real hardware.
//!
//! For discovery, lab devices have an identity and networked ones advertise it over mDNS
//! ([`mdns`]); [`noise`] is a pty that talks garbage, [`pty::OpenWatch`] tells whether anyone
//! opened a pty, and [`netns`] makes private networks (namespaces and veth pairs) to run mDNS
//! in without touching the machine's real network.

pub mod dfu;
pub mod esp;
pub mod mdns;
#[cfg(target_os = "linux")]
pub mod netns;
pub mod noise;
pub mod pty;
pub mod smp;
