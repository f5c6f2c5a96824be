//! The trust store: which keys exist, what each may sign, how many must agree, and which are
//! revoked.
//!
//! A trust store is a [`SignedTrustStore`] document: a versioned body (keys with ids and roles,
//! thresholds per role) and signatures over its canonical bytes. The first store a laptop holds is
//! provisioned (its root keys must reach the root threshold over their own document). Rotation
//! ([`TrustStore::rotate`]) accepts a newer version only when a threshold of the *current* root keys
//! and a threshold of the *new* root keys signed it (as TUF does). Revocation is a rotation that
//! marks a key `revoked`: the key stays listed so signatures by it are named as revoked, not unknown.

use super::BundleError;
use super::canonical::{self, CanonicalIssue};
use super::signature::{self, CONTEXT_TRUST_STORE, KeyLookup, SignatureEntry, key_id};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

/// What a key may sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Signs trust-store documents (rotation, revocation).
    Root,
    /// Approves patch bundles for release.
    Release,
    /// Approves a specific downgrade.
    Rollback,
    /// A device vendor's image-signing key (MCUboot ED25519 TLV).
    VendorImage,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Root, Role::Release, Role::Rollback, Role::VendorImage];
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Root => "root",
            Role::Release => "release",
            Role::Rollback => "rollback",
            Role::VendorImage => "vendor_image",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL.into_iter().find(|r| r.to_string() == s).ok_or_else(|| {
            format!("unknown role {s:?}: use root, release, rollback or vendor_image")
        })
    }
}

/// One key in the trust store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedKey {
    /// [`key_id`] of the public key.
    pub id: String,
    /// Raw ed25519 public key, hex (64 hex digits).
    pub public_key: String,
    pub roles: Vec<Role>,
    /// Who holds the key (for people reading the store).
    pub label: String,
    #[serde(default)]
    pub revoked: bool,
}

/// The signed content of a trust store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustStoreBody {
    /// Increases with every rotation.
    pub version: u64,
    pub keys: Vec<TrustedKey>,
    /// How many distinct keys of a role must sign. A role without an entry needs 1.
    pub thresholds: BTreeMap<Role, u32>,
    /// Days an expired bundle stays usable offline, counted from the last sync before its
    /// expiry: the signed policy, never a command-line argument. Absent: no offline grace.
    /// (Absent fields are not serialized, so stores without a policy keep their signed bytes.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_grace_days: Option<u32>,
}

/// A trust store document as stored and distributed: body plus root signatures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedTrustStore {
    pub store: TrustStoreBody,
    pub signatures: Vec<SignatureEntry>,
}

impl TrustStoreBody {
    /// Canonical bytes of the body (what root keys sign).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // The body has no floats, so canonical serialization cannot fail.
        canonical::to_canonical_of(self).unwrap_or_default()
    }

    /// Sign the body with each of `root_keys`.
    pub fn sign(self, root_keys: &[&SigningKey]) -> SignedTrustStore {
        let bytes = self.canonical_bytes();
        let mut signatures = Vec::new();
        for k in root_keys {
            signature::upsert(&mut signatures, signature::sign(CONTEXT_TRUST_STORE, &bytes, k));
        }
        SignedTrustStore { store: self, signatures }
    }
}

impl TrustedKey {
    /// Describe `key` with `roles`.
    pub fn new(key: &VerifyingKey, roles: Vec<Role>, label: impl Into<String>) -> Self {
        TrustedKey {
            id: key_id(key),
            public_key: hex::encode(key.as_bytes()),
            roles,
            label: label.into(),
            revoked: false,
        }
    }
}

impl TrustedKey {
    /// Describe a public key given as hex (as `fieldpatch keys generate` prints it).
    pub fn from_hex(
        public_hex: &str,
        roles: Vec<Role>,
        label: impl Into<String>,
    ) -> Result<Self, BundleError> {
        let raw = hex::decode(public_hex.trim()).ok().and_then(|r| <[u8; 32]>::try_from(r).ok());
        let key = raw.and_then(|r| VerifyingKey::from_bytes(&r).ok()).ok_or_else(|| {
            invalid(format!("{public_hex:?} is not an ed25519 public key (64 hex digits)"))
        })?;
        Ok(TrustedKey::new(&key, roles, label))
    }
}

#[derive(Debug, Clone)]
struct Entry {
    key: VerifyingKey,
    roles: Vec<Role>,
    revoked: bool,
}

/// A trust store whose structure and root signatures have been checked.
#[derive(Debug, Clone)]
pub struct TrustStore {
    doc: SignedTrustStore,
    keys: HashMap<String, Entry>,
}

fn invalid(reason: impl Into<String>) -> BundleError {
    BundleError::InvalidTrustStore { reason: reason.into() }
}

impl TrustStore {
    /// Load a provisioned trust store from JSON, checking it is signed by its own root threshold.
    pub fn from_json(bytes: &[u8]) -> Result<TrustStore, BundleError> {
        match canonical::parse_strict(bytes) {
            Ok(_) => {}
            Err(CanonicalIssue::DuplicateKey(key)) => {
                return Err(BundleError::DuplicateKey { document: "trust store".into(), key });
            }
            Err(e) => return Err(invalid(format!("not valid JSON: {e:?}"))),
        }
        let doc: SignedTrustStore =
            serde_json::from_slice(bytes).map_err(|e| invalid(format!("{e}")))?;
        TrustStore::provision(doc)
    }

    /// Read and load a trust store file.
    pub fn load(path: &Path) -> Result<TrustStore, BundleError> {
        let meta = std::fs::metadata(path)
            .map_err(|e| BundleError::io(format!("reading trust store {}", path.display()), e))?;
        if meta.len() > 4 << 20 {
            return Err(BundleError::LengthTooLarge {
                field: "trust store file".into(),
                value: meta.len(),
                limit: 4 << 20,
            });
        }
        let bytes = std::fs::read(path)
            .map_err(|e| BundleError::io(format!("reading trust store {}", path.display()), e))?;
        TrustStore::from_json(&bytes)
    }

    /// Accept `doc` as a trust anchor: structurally valid and signed by a threshold of its own
    /// root keys. Signatures by keys the document does not list (or lists as revoked) are set aside
    /// here, since a rotated store legitimately carries signatures of departing root keys.
    pub fn provision(doc: SignedTrustStore) -> Result<TrustStore, BundleError> {
        let store = TrustStore::structural(doc)?;
        store.self_signed("trust store")?;
        Ok(store)
    }

    fn self_signed(&self, document: &str) -> Result<Vec<String>, BundleError> {
        let own: Vec<_> = self
            .doc
            .signatures
            .iter()
            .filter(|s| matches!(self.lookup(&s.key_id), Some((_, _, false))))
            .cloned()
            .collect();
        signature::check_threshold(
            document,
            CONTEXT_TRUST_STORE,
            &self.doc.store.canonical_bytes(),
            &own,
            self,
            Role::Root,
        )
    }

    fn structural(doc: SignedTrustStore) -> Result<TrustStore, BundleError> {
        let mut keys = HashMap::new();
        for k in &doc.store.keys {
            let raw = hex::decode(&k.public_key)
                .map_err(|_| invalid(format!("key {} public key is not hex", k.id)))?;
            let raw: [u8; 32] = raw
                .try_into()
                .map_err(|_| invalid(format!("key {} public key is not 32 bytes", k.id)))?;
            let key = VerifyingKey::from_bytes(&raw)
                .map_err(|_| invalid(format!("key {} is not a valid ed25519 public key", k.id)))?;
            if key.is_weak() {
                return Err(invalid(format!("key {} is a weak ed25519 key", k.id)));
            }
            if key_id(&key) != k.id {
                return Err(invalid(format!(
                    "key id {} does not match its public key (expected {})",
                    k.id,
                    key_id(&key)
                )));
            }
            if k.roles.is_empty() {
                return Err(invalid(format!("key {} has no roles", k.id)));
            }
            let entry = Entry { key, roles: k.roles.clone(), revoked: k.revoked };
            if keys.insert(k.id.clone(), entry).is_some() {
                return Err(invalid(format!("key {} is listed twice", k.id)));
            }
        }
        for role in Role::ALL {
            let need = doc.store.thresholds.get(&role).copied().unwrap_or(1);
            if need == 0 {
                return Err(invalid(format!("threshold for {role} is 0: it must be at least 1")));
            }
            let available =
                keys.values().filter(|e| !e.revoked && e.roles.contains(&role)).count() as u32;
            if role == Role::Root && available < need {
                return Err(invalid(format!(
                    "root threshold {need} cannot be met by {available} unrevoked root key(s)"
                )));
            }
        }
        Ok(TrustStore { doc, keys })
    }

    /// Replace this store with a newer one: `next` must have a higher version and be signed by a
    /// threshold of this store's root keys and a threshold of its own root keys.
    pub fn rotate(&self, next: SignedTrustStore) -> Result<TrustStore, BundleError> {
        if next.store.version <= self.doc.store.version {
            return Err(BundleError::TrustStoreRollback {
                current: self.doc.store.version,
                offered: next.store.version,
            });
        }
        let bytes = next.store.canonical_bytes();
        // Signatures by keys only the new store knows are fine for the old-root check, and vice
        // versa, so each check sees only the signatures from keys of its own store.
        let old_sigs: Vec<_> =
            next.signatures.iter().filter(|s| self.keys.contains_key(&s.key_id)).cloned().collect();
        signature::check_threshold(
            "trust store rotation (current root keys)",
            CONTEXT_TRUST_STORE,
            &bytes,
            &old_sigs,
            self,
            Role::Root,
        )
        .map_err(|e| match e {
            BundleError::Unsigned { .. } => invalid(format!(
                "version {} is not signed by any current root key; a rotation needs {} of them (sign it with `fieldpatch keys trust-init --sign` and the current root key files)",
                next.store.version,
                self.threshold(Role::Root)
            )),
            other => other,
        })?;
        let next = TrustStore::structural(next)?;
        next.self_signed("trust store rotation (new root keys)")?;
        Ok(next)
    }

    /// How many distinct keys of `role` must sign.
    pub fn threshold(&self, role: Role) -> u32 {
        self.doc.store.thresholds.get(&role).copied().unwrap_or(1)
    }

    /// The offline grace period the store's signed policy allows after a bundle's expiry (none
    /// unless the root keys signed one).
    pub fn offline_grace(&self) -> Option<chrono::Duration> {
        self.doc.store.offline_grace_days.and_then(|d| chrono::Duration::try_days(i64::from(d)))
    }

    /// The store's version.
    pub fn version(&self) -> u64 {
        self.doc.store.version
    }

    /// The signed document (to save or export).
    pub fn document(&self) -> &SignedTrustStore {
        &self.doc
    }

    /// Look a key up by id.
    pub fn lookup(&self, id: &str) -> KeyLookup<'_> {
        self.keys.get(id).map(|e| (&e.key, e.roles.as_slice(), e.revoked))
    }

    /// Unrevoked keys holding `role`, with their ids.
    pub fn keys_with_role(&self, role: Role) -> Vec<(String, VerifyingKey)> {
        let mut v: Vec<_> = self
            .keys
            .iter()
            .filter(|(_, e)| !e.revoked && e.roles.contains(&role))
            .map(|(id, e)| (id.clone(), e.key))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}
