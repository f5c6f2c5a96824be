//! Trust stores and catalog listings built on `fieldpatch-proto` alone, for the server's tests
//! (which never build `fieldpatch-core`) and any test that needs a signed trust root without a
//! catalog folder: [`TrustDocs`] holds a root key and a catalog key and signs store versions and
//! listings with them; [`listed`] names a bundle file's bytes as a listing does.

use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use fieldpatch_proto::listing::{CatalogListing, ListedBundle, SignedCatalogListing};
use fieldpatch_proto::trust::{Role, SignedTrustStore, TrustStoreBody, TrustedKey};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// A root key and a catalog key (thresholds 1), and the documents they sign.
#[derive(Debug, Clone)]
pub struct TrustDocs {
    pub root: SigningKey,
    pub catalog: SigningKey,
}

impl TrustDocs {
    /// Fresh random keys.
    pub fn new() -> TrustDocs {
        TrustDocs { root: crate::chain::random_key(), catalog: crate::chain::random_key() }
    }

    /// A trust store at `version` naming the root key and, with `with_catalog`, the catalog key;
    /// signed by the root key and `extra_signers` (e.g. a previous root, for a rotation).
    pub fn store(
        &self,
        version: u64,
        with_catalog: bool,
        expires: Option<DateTime<Utc>>,
        extra_signers: &[&SigningKey],
    ) -> SignedTrustStore {
        let mut keys = vec![TrustedKey::new(&self.root.verifying_key(), vec![Role::Root], "root")];
        if with_catalog {
            keys.push(TrustedKey::new(
                &self.catalog.verifying_key(),
                vec![Role::Catalog],
                "catalog",
            ));
        }
        let body = TrustStoreBody {
            version,
            keys,
            thresholds: BTreeMap::from([(Role::Root, 1), (Role::Catalog, 1)]),
            offline_grace_days: None,
            expires,
            vendor_certificates: Vec::new(),
        };
        let mut signers = vec![&self.root];
        signers.extend_from_slice(extra_signers);
        body.sign(&signers)
    }

    /// A listing at `version` for trust-store version `trust_version`, signed by the catalog key.
    pub fn listing(
        &self,
        version: u64,
        trust_version: u64,
        expires: DateTime<Utc>,
        bundles: Vec<ListedBundle>,
    ) -> SignedCatalogListing {
        CatalogListing { version, expires, trust_store_version: trust_version, bundles }
            .sign(&[&self.catalog])
    }
}

impl Default for TrustDocs {
    fn default() -> Self {
        TrustDocs::new()
    }
}

/// How a listing names the bundle file `bytes` (bundle version 1).
pub fn listed(bundle_id: &str, bytes: &[u8]) -> ListedBundle {
    ListedBundle {
        bundle_id: bundle_id.into(),
        bundle_version: 1,
        sha256: hex::encode(Sha256::digest(bytes)),
        size: bytes.len() as u64,
        sites: Vec::new(),
    }
}

/// How a listing names the bundle file `bytes` published to `sites` only.
pub fn listed_for(bundle_id: &str, bytes: &[u8], sites: &[&str]) -> ListedBundle {
    let mut l = listed(bundle_id, bytes);
    l.sites = sites.iter().map(|s| s.to_string()).collect();
    l.sites.sort();
    l
}
