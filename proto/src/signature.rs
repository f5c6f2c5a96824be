//! Detached ed25519 signatures over domain-separated canonical bytes, and threshold checking
//! against a [`TrustStore`]: what bundle manifests, rollback approvals, trust stores and catalog
//! listings are signed with, on the laptop and the inventory server alike.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use crate::trust::{Role, TrustError, TrustStore};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;

/// Signing contexts: what kind of document a signature is for. The context is prepended to the
/// canonical bytes, so a signature on one kind can never verify as another.
pub const CONTEXT_MANIFEST: &[u8] = b"fieldpatch/bundle-manifest/v1\0";
pub const CONTEXT_ROLLBACK: &[u8] = b"fieldpatch/rollback-approval/v1\0";
pub const CONTEXT_TRUST_STORE: &[u8] = b"fieldpatch/trust-store/v1\0";
pub const CONTEXT_CATALOG_LISTING: &[u8] = b"fieldpatch/catalog-listing/v1\0";

/// Most signatures any one document may carry.
pub const MAX_SIGNATURES: usize = 64;

/// One detached signature: who signed and the signature bytes (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureEntry {
    pub key_id: String,
    pub signature: String,
}

/// A key's id: the first 8 bytes of SHA-256 over the raw public key, hex.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(Sha256::digest(key.as_bytes()).iter().take(8).copied().collect::<Vec<u8>>())
}

fn message(context: &[u8], bytes: &[u8]) -> Vec<u8> {
    [context, bytes].concat()
}

/// Sign `bytes` in `context` with `key`.
pub fn sign(context: &[u8], bytes: &[u8], key: &SigningKey) -> SignatureEntry {
    let sig = key.sign(&message(context, bytes));
    SignatureEntry { key_id: key_id(&key.verifying_key()), signature: hex::encode(sig.to_bytes()) }
}

/// Add or replace `entry` in `list` (one signature per key).
pub fn upsert(list: &mut Vec<SignatureEntry>, entry: SignatureEntry) {
    list.retain(|s| s.key_id != entry.key_id);
    list.push(entry);
}

/// Check every signature in `sigs` against `trust` for `role` and require the role's threshold of
/// distinct valid signers. Returns the signers' key ids, sorted.
pub fn check_threshold(
    document: &str,
    context: &[u8],
    bytes: &[u8],
    sigs: &[SignatureEntry],
    trust: &TrustStore,
    role: Role,
) -> Result<Vec<String>, TrustError> {
    let need = trust.threshold(role);
    let signers = check_signers(document, context, bytes, sigs, |id| trust.lookup(id), role)?;
    let have = u32::try_from(signers.len()).unwrap_or(u32::MAX);
    if have < need {
        return Err(TrustError::ThresholdNotMet {
            document: document.into(),
            role: role.to_string(),
            have,
            need,
        });
    }
    Ok(signers)
}

/// What a signer lookup yields: the key, its roles and whether it is revoked.
pub type KeyLookup<'a> = Option<(&'a VerifyingKey, &'a [Role], bool)>;

/// Verify each signature strictly (known, unrevoked, holds `role`, verifies); return distinct
/// signer ids, sorted.
pub fn check_signers<'a>(
    document: &str,
    context: &[u8],
    bytes: &[u8],
    sigs: &[SignatureEntry],
    lookup: impl Fn(&str) -> KeyLookup<'a>,
    role: Role,
) -> Result<Vec<String>, TrustError> {
    if sigs.is_empty() {
        return Err(TrustError::Unsigned { document: document.into() });
    }
    let msg = message(context, bytes);
    let mut signers = BTreeSet::new();
    for s in sigs {
        let Some((key, roles, revoked)) = lookup(&s.key_id) else {
            return Err(TrustError::UnknownKey {
                document: document.into(),
                key_id: s.key_id.clone(),
            });
        };
        if revoked {
            return Err(TrustError::RevokedKey {
                document: document.into(),
                key_id: s.key_id.clone(),
            });
        }
        if !roles.contains(&role) {
            return Err(TrustError::KeyLacksRole {
                document: document.into(),
                key_id: s.key_id.clone(),
                role: role.to_string(),
            });
        }
        let bad =
            || TrustError::BadSignature { document: document.into(), key_id: s.key_id.clone() };
        let raw = hex::decode(&s.signature).map_err(|_| bad())?;
        let raw: [u8; 64] = raw.try_into().map_err(|_| bad())?;
        key.verify_strict(&msg, &Signature::from_bytes(&raw)).map_err(|_| bad())?;
        signers.insert(s.key_id.clone());
    }
    Ok(signers.into_iter().collect())
}
