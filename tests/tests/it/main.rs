//! fieldpatch-e2e's end-to-end tests and tidy checks, one module per area, linked into one test
//! binary.

#[cfg(target_os = "linux")]
mod app_screens;
#[cfg(target_os = "linux")]
mod app_shell;
#[cfg(target_os = "linux")]
mod app_visit;
#[cfg(target_os = "linux")]
mod app_window;
mod audit_export;
mod audit_server;
mod campaign;
#[cfg(target_os = "linux")]
mod discover;
mod listing;
mod log_chain;
mod session_lab;
mod sync_cli;
mod sync_e2e;
mod tidy;
mod trust;
