//! fieldpatch-drivers' integration tests, one module per area, linked into one test binary.

mod dfu_descriptors;
mod discovery;
mod esp_lab;
mod smp_bad_input;
mod smp_lab;
mod smp_recovery;
mod swupdate;
mod swupdate_short_file;
