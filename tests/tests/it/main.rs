//! fieldpatch-e2e's end-to-end tests and tidy checks, one module per area, linked into one test
//! binary.

#[cfg(target_os = "linux")]
mod app_window;
mod session_lab;
mod sync_cli;
mod sync_e2e;
mod tidy;
mod trust;
