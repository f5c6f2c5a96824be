//! The signed catalog listing: TUF's snapshot and timestamp in one document.
//!
//! A [`CatalogListing`] names every bundle file of the published catalog by SHA-256 (with its id,
//! bundle version and size), the trust-store version it was signed under, a version that only
//! grows, and an expiry. It is signed by a threshold of the trust store's `catalog` keys
//! ([`crate::trust::Role::Catalog`]). When the pinned trust store names catalog keys:
//!
//! - a server cannot *mix and match*: a bundle file not in the listing (or under another hash) is
//!   refused, whatever the server's catalog says;
//! - a server cannot *freeze* a laptop on an old catalog: the listing expires, and a listing with
//!   a lower version than one already accepted is refused (the same version only if identical);
//! - a server cannot strip the listing: the trust store, signed by the root keys, says one is
//!   needed.
//!
//! The inventory server checks the same rules before it publishes a listing.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use crate::canonical::{self, CanonicalIssue};
use crate::signature::{self, CONTEXT_CATALOG_LISTING, MAX_SIGNATURES, SignatureEntry};
use crate::trust::{Role, TrustError, TrustStore};
use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Largest catalog-listing document read (bytes).
pub const MAX_LISTING_BYTES: u64 = 16 << 20;
/// Most bundles one listing may name.
pub const MAX_LISTED_BUNDLES: usize = 100_000;
/// Longest bundle id a listing may carry.
pub const MAX_BUNDLE_ID: usize = 256;
/// Longest site id a listing may carry.
pub const MAX_SITE_ID: usize = 256;
/// Most sites one listed bundle may be restricted to.
pub const MAX_LISTED_SITES: usize = 10_000;

/// One bundle file of the catalog, as the listing names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListedBundle {
    pub bundle_id: String,
    /// The manifest's `bundle_version`.
    pub bundle_version: u32,
    /// SHA-256 of the whole bundle file, lowercase hex.
    pub sha256: String,
    /// Size of the bundle file in bytes.
    pub size: u64,
    /// The sites the bundle is published to, sorted; empty: every site. A laptop uses the bundle
    /// only in a visit at one of them, and expects it in its pull only when one of them is among
    /// its technician's assigned sites. (Absent from the document when empty, so a listing of
    /// bundles for every site signs the same bytes as before sites existed.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<String>,
}

/// Whether a bundle listed for `sites` (empty: every site) may be used at `site` (`None`: work
/// that names no site, which may use only bundles for every site).
pub fn sites_allow(sites: &[String], site: Option<&str>) -> bool {
    sites.is_empty() || site.is_some_and(|s| sites.iter().any(|x| x == s))
}

/// Listed sites in words, for messages: "every site" or "sites a, b".
pub fn sites_in_words(sites: &[String]) -> String {
    if sites.is_empty() { "every site".into() } else { format!("sites {}", sites.join(", ")) }
}

impl ListedBundle {
    /// Whether the bundle may be used in a visit at `site` (see [`sites_allow`]).
    pub fn is_for_site(&self, site: Option<&str>) -> bool {
        sites_allow(&self.sites, site)
    }

    /// Whether a technician assigned to `assigned` sites is to receive the bundle.
    pub fn reaches(&self, assigned: &[&str]) -> bool {
        self.sites.is_empty() || assigned.iter().any(|a| self.sites.iter().any(|s| s == a))
    }

    /// The sites in words, for messages: "every site" or "sites a, b".
    pub fn sites_text(&self) -> String {
        sites_in_words(&self.sites)
    }
}

/// The signed content of a catalog listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogListing {
    /// Increases with every new listing.
    pub version: u64,
    /// After this time (and the signed offline grace) the catalog is not used until a sync.
    pub expires: DateTime<Utc>,
    /// The trust-store version whose catalog keys signed it.
    pub trust_store_version: u64,
    pub bundles: Vec<ListedBundle>,
}

/// A catalog listing as published and stored: body plus catalog-key signatures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedCatalogListing {
    pub listing: CatalogListing,
    pub signatures: Vec<SignatureEntry>,
}

fn invalid(reason: impl Into<String>) -> TrustError {
    TrustError::InvalidListing { reason: reason.into() }
}

impl CatalogListing {
    /// Canonical bytes of the body (what catalog keys sign).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // The body has no floats, so canonical serialization cannot fail.
        canonical::to_canonical_of(self).unwrap_or_default()
    }

    /// Sign the body with each of `keys` (catalog keys).
    pub fn sign(self, keys: &[&SigningKey]) -> SignedCatalogListing {
        let mut signed = SignedCatalogListing { listing: self, signatures: Vec::new() };
        for k in keys {
            signed.cosign(k);
        }
        signed
    }

    /// The listed bundle with this SHA-256 (hex, any case), if any.
    pub fn bundle(&self, sha256: &str) -> Option<&ListedBundle> {
        let sha256 = sha256.to_ascii_lowercase();
        self.bundles.iter().find(|b| b.sha256 == sha256)
    }

    /// Check the shape: bounded, well-formed hashes and ids, no hash listed twice.
    pub fn check_structure(&self) -> Result<(), TrustError> {
        if self.bundles.len() > MAX_LISTED_BUNDLES {
            return Err(invalid(format!(
                "it names {} bundles; at most {MAX_LISTED_BUNDLES} are allowed",
                self.bundles.len()
            )));
        }
        let mut seen = BTreeSet::new();
        for b in &self.bundles {
            if b.bundle_id.is_empty() || b.bundle_id.len() > MAX_BUNDLE_ID {
                return Err(invalid(format!(
                    "bundle id {:?} must be 1 to {MAX_BUNDLE_ID} bytes",
                    b.bundle_id
                )));
            }
            let hex_ok = b.sha256.len() == 64
                && b.sha256.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
            if !hex_ok {
                return Err(invalid(format!(
                    "bundle {} has sha256 {:?}: expected 64 lowercase hex digits",
                    b.bundle_id, b.sha256
                )));
            }
            if !seen.insert(b.sha256.as_str()) {
                return Err(invalid(format!("sha256 {} is listed twice", b.sha256)));
            }
            if b.sites.len() > MAX_LISTED_SITES {
                return Err(invalid(format!(
                    "bundle {} is restricted to {} sites; at most {MAX_LISTED_SITES} are allowed",
                    b.bundle_id,
                    b.sites.len()
                )));
            }
            if let Some(bad) = b.sites.iter().find(|s| s.is_empty() || s.len() > MAX_SITE_ID) {
                return Err(invalid(format!(
                    "bundle {} names site {bad:?}: a site id must be 1 to {MAX_SITE_ID} bytes",
                    b.bundle_id
                )));
            }
            if b.sites.windows(2).any(|w| matches!(w, [a, b] if a >= b)) {
                return Err(invalid(format!(
                    "the sites of bundle {} must be sorted and each named once",
                    b.bundle_id
                )));
            }
        }
        Ok(())
    }
}

impl SignedCatalogListing {
    /// Parse a listing document (any JSON formatting), refusing oversized input, repeated keys,
    /// unknown fields and a malformed shape. Signatures are not checked here: see
    /// [`SignedCatalogListing::verify`].
    pub fn from_json(bytes: &[u8]) -> Result<SignedCatalogListing, TrustError> {
        let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        if len > MAX_LISTING_BYTES {
            return Err(TrustError::LengthTooLarge {
                field: "catalog listing document".into(),
                value: len,
                limit: MAX_LISTING_BYTES,
            });
        }
        match canonical::parse_strict(bytes) {
            Ok(_) => {}
            Err(CanonicalIssue::DuplicateKey(key)) => {
                return Err(TrustError::DuplicateKey { document: "catalog listing".into(), key });
            }
            Err(e) => return Err(invalid(format!("not valid JSON: {e:?}"))),
        }
        let doc: SignedCatalogListing =
            serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        doc.check_structure()?;
        Ok(doc)
    }

    /// Read a listing already parsed as JSON (as the sync API carries it).
    pub fn from_value(doc: &serde_json::Value) -> Result<SignedCatalogListing, TrustError> {
        let doc = SignedCatalogListing::deserialize(doc)
            .map_err(|e| invalid(format!("it is not a signed catalog listing: {e}")))?;
        doc.check_structure()?;
        Ok(doc)
    }

    /// Add (or replace) `key`'s signature.
    pub fn cosign(&mut self, key: &SigningKey) {
        let entry = signature::sign(CONTEXT_CATALOG_LISTING, &self.listing.canonical_bytes(), key);
        signature::upsert(&mut self.signatures, entry);
    }

    fn check_structure(&self) -> Result<(), TrustError> {
        if self.signatures.len() > MAX_SIGNATURES {
            return Err(invalid(format!(
                "it carries {} signatures; at most {MAX_SIGNATURES} are allowed",
                self.signatures.len()
            )));
        }
        self.listing.check_structure()
    }

    /// Check the listing against the trust store in force: well formed, signed for this store's
    /// version, by a threshold of its catalog keys. Returns the signers' key ids. Expiry and
    /// version order are separate ([`Self::check_current`], [`Self::check_successor`]).
    pub fn verify(&self, trust: &TrustStore) -> Result<Vec<String>, TrustError> {
        self.check_structure()?;
        if !trust.requires_listing() {
            return Err(TrustError::NoCatalogKeys);
        }
        if self.listing.trust_store_version != trust.version() {
            return Err(TrustError::ListingTrustVersion {
                listing: self.listing.trust_store_version,
                in_force: trust.version(),
            });
        }
        signature::check_threshold(
            "catalog listing",
            CONTEXT_CATALOG_LISTING,
            &self.listing.canonical_bytes(),
            &self.signatures,
            trust,
            Role::Catalog,
        )
    }

    /// Refuse the listing if it has expired at `now` (no offline grace: for accepting or
    /// publishing a listing, not for using one already accepted).
    pub fn check_current(&self, now: DateTime<Utc>) -> Result<(), TrustError> {
        if now > self.listing.expires {
            return Err(TrustError::ListingExpired {
                expires: self.listing.expires.to_rfc3339(),
                reason: format!("it was already expired at {}", now.to_rfc3339()),
            });
        }
        Ok(())
    }

    /// Refuse a listing that does not move forward from `previous` (the last one accepted): a
    /// lower version is a freeze or rollback attempt; the same version must be the same listing.
    pub fn check_successor(
        &self,
        previous: Option<&SignedCatalogListing>,
    ) -> Result<(), TrustError> {
        let Some(previous) = previous else { return Ok(()) };
        let (offered, current) = (self.listing.version, previous.listing.version);
        if offered < current {
            return Err(TrustError::ListingRollback { current, offered });
        }
        if offered == current && self != previous {
            return Err(TrustError::ListingConflict { version: offered });
        }
        Ok(())
    }
}
