//! Canonical JSON: the exact bytes that signatures cover. The rules and the parser live in
//! `fieldpatch-proto` ([`fieldpatch_proto::canonical`]), so the inventory server checks documents
//! byte for byte the same way; this module re-exports them for the bundle layer.

pub use fieldpatch_proto::canonical::{
    CanonicalIssue, find_duplicate_key, parse_canonical, parse_strict, to_canonical,
    to_canonical_of,
};
