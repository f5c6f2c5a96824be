//! fieldpatch-core's integration tests, one module per area, linked into one test binary.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap fails the run

mod audit_export;
mod bundle_corpus;
mod bundle_verify;
mod catalog_listing;
#[cfg(target_os = "linux")]
mod credentials_keyutils;
mod credentials_secret_service;
mod dfu_file_flash;
mod dfu_file_tools;
mod dfu_gate;
mod esp_flash;
mod esp_image;
mod esp_ota;
mod esp_session;
mod mcuboot_imgtool;
mod offline_grace;
mod overview;
#[cfg(unix)]
mod recovery_discovery;
mod recovery_flash;
mod store_schema;
mod store_secrets_never_on_disk;
mod swupdate_session;
mod sync_client_retries;
mod sync_settings;
mod trust_in_force;
mod visitlog_chain;
mod visitlog_crash;
mod visitlog_tamper;
mod visitlog_visits;
