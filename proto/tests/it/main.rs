//! fieldpatch-proto's integration tests, one module per area, linked into one test binary.

mod audit_bundles;
mod audit_export;
mod audit_fuzz_regressions;
mod trust_documents;
