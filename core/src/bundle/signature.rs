//! Detached ed25519 signatures over domain-separated canonical bytes, and threshold checking.
//!
//! The signature format, contexts and checks live in `fieldpatch-proto`
//! ([`fieldpatch_proto::signature`]) so the inventory server verifies exactly what the laptop
//! does; this module re-exports them and checks thresholds against the core's [`TrustStore`],
//! with the bundle layer's error type.

use super::BundleError;
use super::trust::{Role, TrustStore};
pub use fieldpatch_proto::signature::{
    CONTEXT_CATALOG_LISTING, CONTEXT_MANIFEST, CONTEXT_ROLLBACK, CONTEXT_TRUST_STORE, KeyLookup,
    MAX_SIGNATURES, SignatureEntry, key_id, sign, upsert,
};

/// Check every signature in `sigs` against `trust` for `role` and require the role's threshold of
/// distinct valid signers. Returns the signers' key ids, sorted.
pub fn check_threshold(
    document: &str,
    context: &[u8],
    bytes: &[u8],
    sigs: &[SignatureEntry],
    trust: &TrustStore,
    role: Role,
) -> Result<Vec<String>, BundleError> {
    Ok(fieldpatch_proto::signature::check_threshold(
        document,
        context,
        bytes,
        sigs,
        trust.proto(),
        role,
    )?)
}
