//! fieldpatch-lab's integration tests, one module per area, linked into one test binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod dfu_flash;
mod dfuse_addressing;
mod discovery;
mod esptool;
mod imgtool;
mod lab_bin;
mod mcumgrctl;
mod serial_recovery;
mod smpmgr;
