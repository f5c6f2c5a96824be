//! The trust store: which keys exist, what each may sign, how many must agree, which are revoked,
//! and until when the store may be used.
//!
//! The document, its verification and the rotation rules live in `fieldpatch-proto`
//! ([`fieldpatch_proto::trust`]), so the inventory server refuses to publish what a laptop would
//! refuse to pin. This module wraps the verified store for the laptop: it reads store files
//! (bounded) and reports with the bundle layer's [`BundleError`], keeping its codes and messages.
//! Everything read-only ([`Role`]s, thresholds, the offline-grace policy, expiry, key lookup) is
//! the proto store's, reached through `Deref`.
//!
//! The first store a laptop holds is provisioned (its root keys must reach the root threshold over
//! their own document). Rotation ([`TrustStore::rotate`]) accepts a newer version only when a
//! threshold of the *current* root keys and a threshold of the *new* root keys signed it (as TUF
//! does). Revocation is a rotation that marks a key `revoked`: the key stays listed so signatures
//! by it are named as revoked, not unknown.

use super::BundleError;
pub use fieldpatch_proto::trust::{
    MAX_TRUST_STORE_BYTES, Role, SignedTrustStore, TrustError, TrustStoreBody, TrustedKey,
    VendorCertificate, certificate_id,
};
use std::io::Read;
use std::path::Path;

/// A trust store whose structure and root signatures have been checked.
#[derive(Debug, Clone)]
pub struct TrustStore(fieldpatch_proto::trust::TrustStore);

impl std::ops::Deref for TrustStore {
    type Target = fieldpatch_proto::trust::TrustStore;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl From<fieldpatch_proto::trust::TrustStore> for TrustStore {
    fn from(store: fieldpatch_proto::trust::TrustStore) -> Self {
        TrustStore(store)
    }
}

impl TrustStore {
    /// Load a provisioned trust store from JSON, checking it is signed by its own root threshold.
    pub fn from_json(bytes: &[u8]) -> Result<TrustStore, BundleError> {
        Ok(TrustStore(fieldpatch_proto::trust::TrustStore::from_json(bytes)?))
    }

    /// Read and load a trust store file (at most [`MAX_TRUST_STORE_BYTES`]).
    pub fn load(path: &Path) -> Result<TrustStore, BundleError> {
        let io = |e| BundleError::io(format!("reading trust store {}", path.display()), e);
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.len() > MAX_TRUST_STORE_BYTES {
            return Err(BundleError::LengthTooLarge {
                field: "trust store file".into(),
                value: meta.len(),
                limit: MAX_TRUST_STORE_BYTES,
            });
        }
        // Read at most one byte over the limit, in case the file grew since `metadata`.
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_TRUST_STORE_BYTES + 1).read_to_end(&mut bytes))
            .map_err(io)?;
        TrustStore::from_json(&bytes)
    }

    /// Accept `doc` as a trust anchor: structurally valid and signed by a threshold of its own
    /// root keys.
    pub fn provision(doc: SignedTrustStore) -> Result<TrustStore, BundleError> {
        Ok(TrustStore(fieldpatch_proto::trust::TrustStore::provision(doc)?))
    }

    /// Replace this store with a newer one: `next` must have a higher version and be signed by a
    /// threshold of this store's root keys and a threshold of its own root keys.
    pub fn rotate(&self, next: SignedTrustStore) -> Result<TrustStore, BundleError> {
        Ok(TrustStore(self.0.rotate(next)?))
    }

    /// The verified store as `fieldpatch-proto` has it (for its signature and listing checks).
    pub fn proto(&self) -> &fieldpatch_proto::trust::TrustStore {
        &self.0
    }
}
