//! fieldpatch-proto's integration tests, one module per area, linked into one test binary.

mod trust_documents;
