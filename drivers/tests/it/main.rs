//! fieldpatch-drivers' integration tests, one module per area, linked into one test binary.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap fails the run

mod dfu_descriptors;
mod discovery;
mod esp_lab;
mod smp_bad_input;
mod smp_lab;
mod smp_recovery;
mod swupdate;
mod swupdate_short_file;
