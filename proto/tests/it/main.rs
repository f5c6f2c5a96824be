//! fieldpatch-proto's integration tests, one module per area, linked into one test binary.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap fails the run

mod audit_bundles;
mod audit_export;
mod audit_fuzz_regressions;
mod trust_documents;
