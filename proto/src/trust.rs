//! The trust store: which keys exist, what each may sign, how many must agree, which are revoked,
//! and until when the store itself may be used. Shared by the laptop (which pins it) and the
//! inventory server (which refuses to publish anything that is not a valid store or rotation).
//!
//! A trust store is a [`SignedTrustStore`] document: a versioned body (keys with ids and roles,
//! thresholds per role, an optional expiry and offline-grace policy) and signatures over its
//! canonical bytes. The first store a laptop holds is provisioned (its root keys must reach the
//! root threshold over their own document). Rotation ([`TrustStore::rotate`]) accepts a newer
//! version only when a threshold of the *current* root keys and a threshold of the *new* root keys
//! signed it (as TUF does). Revocation is a rotation that marks a key `revoked`: the key stays
//! listed so signatures by it are named as revoked, not unknown.
//!
//! An expiring store (`expires`) stops a server from freezing a laptop on an old store: once it
//! has expired (beyond the signed offline grace), bundles verified against it are refused until a
//! rotation arrives. Optional fields are not serialized when absent, so stores made before they
//! existed keep their signed bytes.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use crate::canonical::{self, CanonicalIssue};
use crate::signature::{
    self, CONTEXT_TRUST_STORE, KeyLookup, MAX_SIGNATURES, SignatureEntry, key_id,
};
use chrono::{DateTime, Utc};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// Largest trust-store document read (bytes).
pub const MAX_TRUST_STORE_BYTES: u64 = 4 << 20;

/// Why a trust store, a signature or a catalog listing is refused. Each message says what failed
/// and what to do; [`TrustError::code`] is stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error(
        "{document} repeats the key {key:?}: a repeated key can hide what was signed, so it is refused; rebuild it"
    )]
    DuplicateKey { document: String, key: String },
    #[error(
        "{field} is {value} bytes, over the limit of {limit}: it is corrupt or hostile; do not use it"
    )]
    LengthTooLarge { field: String, value: u64, limit: u64 },
    #[error("{document} carries no signatures: it must be signed before it can be trusted")]
    Unsigned { document: String },
    #[error(
        "{document} is signed by key {key_id}, which is not in the trust store: sync the trust store or ask the release team which key this is"
    )]
    UnknownKey { document: String, key_id: String },
    #[error(
        "{document} is signed by key {key_id}, which has been revoked: do not use it; ask the release team for a re-signed copy"
    )]
    RevokedKey { document: String, key_id: String },
    #[error(
        "{document} is signed by key {key_id}, which does not hold the {role} role: it needs signatures from {role} keys"
    )]
    KeyLacksRole { document: String, key_id: String, role: String },
    #[error(
        "the signature by key {key_id} on {document} does not verify: the {document} was altered after signing"
    )]
    BadSignature { document: String, key_id: String },
    #[error(
        "{document} has {have} valid {role} signature(s) but the trust store requires {need}: collect more approvals"
    )]
    ThresholdNotMet { document: String, role: String, have: u32, need: u32 },
    #[error("trust store is not valid: {reason}")]
    InvalidTrustStore { reason: String },
    #[error(
        "trust store version {offered} does not replace the current version {current}: a trust store can only move forward"
    )]
    TrustStoreRollback { current: u64, offered: u64 },
    #[error("the trust store expired on {expires}; sync to get its rotation ({reason})")]
    TrustStoreExpired { expires: String, reason: String },
    #[error("catalog listing is not valid: {reason}")]
    InvalidListing { reason: String },
    #[error(
        "the trust store names no unrevoked catalog keys, so no catalog listing can be trusted: add catalog keys in a trust-store rotation first"
    )]
    NoCatalogKeys,
    #[error(
        "the trust store names catalog keys, so the catalog needs a signed catalog listing, and none is available: ask the inventory team to publish one (`fieldpatch bundle sign-listing`, then `fieldpatch-server admin publish-listing`)"
    )]
    ListingMissing,
    #[error(
        "the catalog listing was signed for trust store version {listing} but version {in_force} is in force: sign a new listing for the current trust store"
    )]
    ListingTrustVersion { listing: u64, in_force: u64 },
    #[error("the catalog listing expired on {expires}; sync to get a fresh one ({reason})")]
    ListingExpired { expires: String, reason: String },
    #[error(
        "catalog listing version {offered} is older than version {current}, which was already accepted: the server is serving an old catalog (a freeze or rollback attempt), so the newer listing stays in force"
    )]
    ListingRollback { current: u64, offered: u64 },
    #[error(
        "catalog listing version {version} differs from the listing already accepted at the same version: a changed listing needs a higher version"
    )]
    ListingConflict { version: u64 },
    #[error(
        "bundle {bundle_id} (sha256 {sha256}) is not in the signed catalog listing{detail}: it is refused"
    )]
    NotListed { bundle_id: String, sha256: String, detail: String },
    #[error(
        "the catalog listing names bundle {bundle_id} (sha256 {sha256}) but {place} does not hold it with that hash: {advice}"
    )]
    ListedBundleMissing { bundle_id: String, sha256: String, place: String, advice: String },
}

impl TrustError {
    /// A stable machine-readable code (snake_case), for `--json`, the app bridge and the server.
    pub fn code(&self) -> &'static str {
        match self {
            TrustError::DuplicateKey { .. } => "duplicate_key",
            TrustError::LengthTooLarge { .. } => "length_too_large",
            TrustError::Unsigned { .. } => "unsigned",
            TrustError::UnknownKey { .. } => "unknown_key",
            TrustError::RevokedKey { .. } => "revoked_key",
            TrustError::KeyLacksRole { .. } => "key_lacks_role",
            TrustError::BadSignature { .. } => "bad_signature",
            TrustError::ThresholdNotMet { .. } => "threshold_not_met",
            TrustError::InvalidTrustStore { .. } => "invalid_trust_store",
            TrustError::TrustStoreRollback { .. } => "trust_store_rollback",
            TrustError::TrustStoreExpired { .. } => "trust_store_expired",
            TrustError::InvalidListing { .. } => "invalid_catalog_listing",
            TrustError::NoCatalogKeys => "no_catalog_keys",
            TrustError::ListingMissing => "catalog_listing_missing",
            TrustError::ListingTrustVersion { .. } => "catalog_listing_trust_version",
            TrustError::ListingExpired { .. } => "catalog_listing_expired",
            TrustError::ListingRollback { .. } => "catalog_listing_rollback",
            TrustError::ListingConflict { .. } => "catalog_listing_conflict",
            TrustError::NotListed { .. } => "bundle_not_listed",
            TrustError::ListedBundleMissing { .. } => "listed_bundle_missing",
        }
    }
}

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
    /// Signs the catalog listing: which bundles (by hash) the published catalog holds, until when.
    Catalog,
}

impl Role {
    pub const ALL: [Role; 5] =
        [Role::Root, Role::Release, Role::Rollback, Role::VendorImage, Role::Catalog];
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Root => "root",
            Role::Release => "release",
            Role::Rollback => "rollback",
            Role::VendorImage => "vendor_image",
            Role::Catalog => "catalog",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL.into_iter().find(|r| r.to_string() == s).ok_or_else(|| {
            format!("unknown role {s:?}: use root, release, rollback, vendor_image or catalog")
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
    /// Days an expired bundle (or store, or catalog listing) stays usable offline, counted from
    /// the last sync before its expiry: the signed policy, never a command-line argument. Absent:
    /// no offline grace. (Absent fields are not serialized, so stores without a policy keep
    /// their signed bytes.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_grace_days: Option<u32>,
    /// When the store stops being usable (RFC 3339); a rotation must arrive before. Absent: it
    /// does not expire (and is not serialized, so older stores keep their signed bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<DateTime<Utc>>,
    /// X.509 certificates of device vendors whose CMS-signed images the store vouches for (an
    /// SWUpdate `.swu` signs its `sw-description` with one). Absent: not serialized, so older
    /// stores keep their signed bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vendor_certificates: Vec<VendorCertificate>,
}

/// Largest vendor certificate (PEM) a trust store may carry.
pub const MAX_VENDOR_CERTIFICATE_PEM: usize = 16 << 10;

/// A vendor's X.509 signing certificate in the trust store, the anchor for CMS signatures on
/// images (the counterpart of a `vendor_image` ed25519 key for MCUboot images).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VendorCertificate {
    /// [`certificate_id`]: lower-case hex SHA-256 of the certificate's DER bytes.
    pub id: String,
    /// The certificate, PEM (exactly one `CERTIFICATE` block).
    pub pem: String,
    /// Whose certificate it is (for people reading the store).
    pub label: String,
    #[serde(default)]
    pub revoked: bool,
}

impl VendorCertificate {
    /// A certificate entry for `pem` (one PEM certificate), its id computed.
    pub fn new(pem: &str, label: impl Into<String>) -> Result<VendorCertificate, TrustError> {
        let id = certificate_id(pem)?;
        Ok(VendorCertificate {
            id,
            pem: pem.trim().to_string() + "\n",
            label: label.into(),
            revoked: false,
        })
    }
}

/// The id of a PEM certificate: lower-case hex SHA-256 of its DER bytes (the fingerprint
/// `openssl x509 -noout -fingerprint -sha256` prints, without colons). Refuses anything but
/// exactly one `CERTIFICATE` block.
pub fn certificate_id(pem: &str) -> Result<String, TrustError> {
    use sha2::{Digest, Sha256};
    let der = pem_certificate_der(pem)?;
    Ok(hex::encode(Sha256::digest(der)))
}

fn pem_certificate_der(pem: &str) -> Result<Vec<u8>, TrustError> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    if pem.len() > MAX_VENDOR_CERTIFICATE_PEM {
        return Err(TrustError::LengthTooLarge {
            field: "vendor certificate".into(),
            value: pem.len() as u64,
            limit: MAX_VENDOR_CERTIFICATE_PEM as u64,
        });
    }
    let bad = |why: &str| {
        invalid(format!(
            "a vendor certificate {why}: give exactly one PEM certificate (-----BEGIN CERTIFICATE----- ... -----END CERTIFICATE-----)"
        ))
    };
    let text = pem.trim();
    let body = text
        .strip_prefix(BEGIN)
        .and_then(|rest| rest.strip_suffix(END))
        .ok_or_else(|| bad("is not a single PEM CERTIFICATE block"))?;
    if body.contains("-----") {
        return Err(bad("holds more than one PEM block"));
    }
    let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| bad("is not valid base64"))?
    };
    // A DER certificate is a SEQUENCE.
    if der.first() != Some(&0x30) || der.len() < 64 {
        return Err(bad("does not hold a DER certificate"));
    }
    Ok(der)
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

impl SignedTrustStore {
    /// Parse a trust-store document (any JSON formatting), refusing oversized input, repeated
    /// keys and unknown fields. Signatures are not checked here: see [`TrustStore::provision`].
    pub fn from_json(bytes: &[u8]) -> Result<SignedTrustStore, TrustError> {
        let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        if len > MAX_TRUST_STORE_BYTES {
            return Err(TrustError::LengthTooLarge {
                field: "trust store document".into(),
                value: len,
                limit: MAX_TRUST_STORE_BYTES,
            });
        }
        match canonical::parse_strict(bytes) {
            Ok(_) => {}
            Err(CanonicalIssue::DuplicateKey(key)) => {
                return Err(TrustError::DuplicateKey { document: "trust store".into(), key });
            }
            Err(e) => return Err(invalid(format!("not valid JSON: {e:?}"))),
        }
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("{e}")))
    }

    /// Read a trust-store document already parsed as JSON (as the sync API carries it).
    pub fn from_value(doc: &serde_json::Value) -> Result<SignedTrustStore, TrustError> {
        SignedTrustStore::deserialize(doc)
            .map_err(|e| invalid(format!("it is not a signed trust store: {e}")))
    }

    /// The document as a laptop keeps it once a sync pinned it (pretty JSON): the same store
    /// has the same bytes, and so the same SHA-256, in the laptop's and the server's audit
    /// exports.
    pub fn file_bytes(&self) -> Result<Vec<u8>, TrustError> {
        serde_json::to_vec_pretty(self).map_err(|e| invalid(format!("{e}")))
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

    /// Describe a public key given as hex (as `fieldpatch keys generate` prints it).
    pub fn from_hex(
        public_hex: &str,
        roles: Vec<Role>,
        label: impl Into<String>,
    ) -> Result<Self, TrustError> {
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

fn invalid(reason: impl Into<String>) -> TrustError {
    TrustError::InvalidTrustStore { reason: reason.into() }
}

impl TrustStore {
    /// Load a provisioned trust store from JSON, checking it is signed by its own root threshold.
    pub fn from_json(bytes: &[u8]) -> Result<TrustStore, TrustError> {
        TrustStore::provision(SignedTrustStore::from_json(bytes)?)
    }

    /// Accept `doc` as a trust anchor: structurally valid and signed by a threshold of its own
    /// root keys. Signatures by keys the document does not list (or lists as revoked) are set aside
    /// here, since a rotated store legitimately carries signatures of departing root keys.
    pub fn provision(doc: SignedTrustStore) -> Result<TrustStore, TrustError> {
        let store = TrustStore::structural(doc)?;
        store.self_signed("trust store")?;
        Ok(store)
    }

    fn self_signed(&self, document: &str) -> Result<Vec<String>, TrustError> {
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

    fn structural(doc: SignedTrustStore) -> Result<TrustStore, TrustError> {
        if doc.signatures.len() > MAX_SIGNATURES {
            return Err(invalid(format!(
                "it carries {} signatures; at most {MAX_SIGNATURES} are allowed",
                doc.signatures.len()
            )));
        }
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
        let mut certs = std::collections::HashSet::new();
        for c in &doc.store.vendor_certificates {
            let id = certificate_id(&c.pem)?;
            if id != c.id {
                return Err(invalid(format!(
                    "vendor certificate id {} does not match its certificate (expected {id})",
                    c.id
                )));
            }
            if !certs.insert(id) {
                return Err(invalid(format!("vendor certificate {} is listed twice", c.id)));
            }
        }
        for role in Role::ALL {
            let need = doc.store.thresholds.get(&role).copied().unwrap_or(1);
            if need == 0 {
                return Err(invalid(format!("threshold for {role} is 0: it must be at least 1")));
            }
            let available = keys.values().filter(|e| !e.revoked && e.roles.contains(&role)).count();
            let available = u32::try_from(available).unwrap_or(u32::MAX);
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
    pub fn rotate(&self, next: SignedTrustStore) -> Result<TrustStore, TrustError> {
        if next.store.version <= self.doc.store.version {
            return Err(TrustError::TrustStoreRollback {
                current: self.doc.store.version,
                offered: next.store.version,
            });
        }
        if next.signatures.len() > MAX_SIGNATURES {
            return Err(invalid(format!(
                "it carries {} signatures; at most {MAX_SIGNATURES} are allowed",
                next.signatures.len()
            )));
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
            TrustError::Unsigned { .. } => invalid(format!(
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

    /// The offline grace period the store's signed policy allows after an expiry (none unless
    /// the root keys signed one).
    pub fn offline_grace(&self) -> Option<chrono::Duration> {
        self.doc.store.offline_grace_days.and_then(|d| chrono::Duration::try_days(i64::from(d)))
    }

    /// When the store expires, if it does.
    pub fn expires(&self) -> Option<DateTime<Utc>> {
        self.doc.store.expires
    }

    /// Refuse the store if it has expired at `now` (no offline grace: for installing or
    /// publishing a store, not for using one already pinned).
    pub fn check_current(&self, now: DateTime<Utc>) -> Result<(), TrustError> {
        match self.expires() {
            Some(expires) if now > expires => Err(TrustError::TrustStoreExpired {
                expires: expires.to_rfc3339(),
                reason: format!("it was already expired at {}", now.to_rfc3339()),
            }),
            _ => Ok(()),
        }
    }

    /// Whether the store names unrevoked catalog keys: then the catalog must come with a catalog
    /// listing signed by their threshold.
    pub fn requires_listing(&self) -> bool {
        !self.keys_with_role(Role::Catalog).is_empty()
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

    /// Unrevoked vendor certificates (the anchors for CMS-signed images such as SWUpdate's).
    pub fn vendor_certificates(&self) -> Vec<&VendorCertificate> {
        self.doc.store.vendor_certificates.iter().filter(|c| !c.revoked).collect()
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
