//! The `fieldpatch` binary's integration tests, one module per command group, linked into one
//! test binary.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap fails the run

mod bundle_cli;
mod credentials_cli;
mod demo_cli;
mod device_cli;
mod dfu;
mod esp_cli;
mod info;
mod log_cli;
mod recovery_cli;
mod swupdate_cli;
