//! fieldpatch-server's integration tests, one module per area, linked into one test binary.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap fails the run

mod common;

mod api;
mod audit_export;
mod bulk;
mod cli_tls;
mod continuity;
mod kill;
mod ops;
mod pg_tls;
mod publish;
mod scale;
mod site_catalog;
