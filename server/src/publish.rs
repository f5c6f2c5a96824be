//! Publishing the trust root: the trust store and the signed catalog listing are checked with
//! `fieldpatch_proto` (the same code the laptop runs) before they are stored, so the inventory
//! never serves what a laptop must refuse.
//!
//! - **Trust store** ([`publish_trust_store`]): a signed store valid by its own root threshold,
//!   not already expired, and, when one is published, a valid rotation of it (a threshold of the
//!   current root keys, a strictly higher version). Publishing the published document again
//!   changes nothing. A published document that is not a valid store (stored before the server
//!   checked) can be replaced by any valid store.
//! - **Catalog listing** ([`publish_listing`]): signed by the catalog threshold of the published
//!   trust store, naming its version, not expired, with a version higher than the published
//!   listing, and every listed bundle published with the same SHA-256 (and id and size) to the
//!   sites the listing names for it (none: every site): a laptop refuses a pull that lacks a
//!   bundle listed for one of its technician's sites, and uses a site-restricted bundle only in
//!   a visit at one of its sites.
//!
//! Both are written with a compare-and-swap on the published document, so two publishes at once
//! cannot both pass their checks against the same predecessor.

use crate::store::{Store, StoreError};
use chrono::{DateTime, Utc};
use fieldpatch_proto::listing::SignedCatalogListing;
use fieldpatch_proto::trust::{SignedTrustStore, TrustError, TrustStore};

/// Why a trust store or catalog listing was not published. Nothing is stored in any case.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the trust store was not published: {0}")]
    TrustStore(TrustError),
    #[error("the catalog listing was not published: {0}")]
    Listing(TrustError),
    #[error(
        "the catalog listing was not published: no valid trust store is published ({0}); publish one that names catalog keys first (`fieldpatch-server admin publish-trust FILE`)"
    )]
    NoTrustStore(String),
    #[error(
        "the catalog listing was not published: its version {offered} does not replace the published version {current}; sign a listing with a higher version (`fieldpatch bundle sign-listing --version`)"
    )]
    ListingNotNewer { current: u64, offered: u64 },
    #[error(
        "the catalog listing was not published: it names bundle {bundle_id} ({sha256}) for {listed}, but the bundle is published to {published}; laptops expect a bundle where the listing says and use it only there, so the two must agree. Sign the listing with the sites the bundle was published to (`fieldpatch bundle sign-listing --sites {bundle_id}=SITE,...`, none for every site)"
    )]
    ListedBundleSites { bundle_id: String, sha256: String, listed: String, published: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PublishError {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            PublishError::TrustStore(e) | PublishError::Listing(e) => e.code(),
            PublishError::NoTrustStore(_) => "no_trust_store",
            PublishError::ListingNotNewer { .. } => "catalog_listing_not_newer",
            PublishError::ListedBundleSites { .. } => "listed_bundle_sites_differ",
            PublishError::Store(StoreError::Conflict(_)) => "publish_conflict",
            PublishError::Store(_) => "storage",
        }
    }
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Version of the published document.
    pub version: u64,
    /// Version it replaced (`None`: the first, or it replaced an invalid document).
    pub replaced: Option<u64>,
    /// The same document was published already: nothing changed.
    pub unchanged: bool,
    /// Things the publisher should know (an invalid predecessor replaced, a listing to re-sign).
    pub notes: Vec<String>,
}

/// Check and publish a trust-store document (`bytes`, JSON) at time `now`.
pub async fn publish_trust_store<S: Store>(
    store: &S,
    bytes: &[u8],
    now: DateTime<Utc>,
) -> Result<Published, PublishError> {
    let refused = PublishError::TrustStore;
    let offered = SignedTrustStore::from_json(bytes).map_err(refused)?;
    let next = TrustStore::provision(offered.clone()).map_err(refused)?;
    let mut notes = Vec::new();
    let current_doc = store.trust_store().await?;
    let current = match &current_doc {
        None => None,
        Some(doc) => match SignedTrustStore::from_value(doc).and_then(TrustStore::provision) {
            Ok(cur) => Some(cur),
            Err(e) => {
                notes.push(format!(
                    "the previously published document was not a valid trust store ({e}); it is replaced"
                ));
                None
            }
        },
    };
    if let Some(cur) = &current {
        if *cur.document() == offered {
            return Ok(Published {
                version: cur.version(),
                replaced: Some(cur.version()),
                unchanged: true,
                notes,
            });
        }
        cur.rotate(offered).map_err(refused)?;
    }
    next.check_current(now).map_err(refused)?;
    let doc = serde_json::to_value(next.document())
        .map_err(|e| StoreError::Corrupt(format!("trust store: {e}")))?;
    store.replace_trust_store(current_doc.as_ref(), &doc).await?;
    if next.requires_listing() {
        let listing = store.catalog_listing().await?;
        let listed_for = listing
            .as_ref()
            .and_then(|l| SignedCatalogListing::from_value(l).ok())
            .map(|l| l.listing.trust_store_version);
        if listed_for != Some(next.version()) {
            notes.push(format!(
                "trust store version {} names catalog keys: laptops now need a catalog listing signed for it (`fieldpatch bundle sign-listing`, then `fieldpatch-server admin publish-listing`)",
                next.version()
            ));
        }
    }
    Ok(Published {
        version: next.version(),
        replaced: current.map(|c| c.version()),
        unchanged: false,
        notes,
    })
}

/// Check and publish a catalog-listing document (`bytes`, JSON) at time `now`.
pub async fn publish_listing<S: Store>(
    store: &S,
    bytes: &[u8],
    now: DateTime<Utc>,
) -> Result<Published, PublishError> {
    let refused = PublishError::Listing;
    let offered = SignedCatalogListing::from_json(bytes).map_err(refused)?;
    let trust_doc = store
        .trust_store()
        .await?
        .ok_or_else(|| PublishError::NoTrustStore("none is published".into()))?;
    let trust = SignedTrustStore::from_value(&trust_doc)
        .and_then(TrustStore::provision)
        .map_err(|e| PublishError::NoTrustStore(e.to_string()))?;
    offered.verify(&trust).map_err(refused)?;
    offered.check_current(now).map_err(refused)?;
    let mut notes = Vec::new();
    let current_doc = store.catalog_listing().await?;
    let current = match &current_doc {
        None => None,
        Some(doc) => match SignedCatalogListing::from_value(doc) {
            Ok(cur) => Some(cur),
            Err(e) => {
                notes.push(format!(
                    "the previously published document was not a valid catalog listing ({e}); it is replaced"
                ));
                None
            }
        },
    };
    if let Some(cur) = &current {
        if *cur == offered {
            let version = cur.listing.version;
            return Ok(Published { version, replaced: Some(version), unchanged: true, notes });
        }
        if offered.listing.version <= cur.listing.version {
            return Err(PublishError::ListingNotNewer {
                current: cur.listing.version,
                offered: offered.listing.version,
            });
        }
    }
    let catalog = store.catalog().await?;
    for listed in &offered.listing.bundles {
        let missing = |advice: String| {
            refused(TrustError::ListedBundleMissing {
                bundle_id: listed.bundle_id.clone(),
                sha256: listed.sha256.clone(),
                place: "the published catalog".into(),
                advice,
            })
        };
        let Some(entry) = catalog.iter().find(|e| e.sha256.eq_ignore_ascii_case(&listed.sha256))
        else {
            return Err(missing(
                "publish the bundle file first (`fieldpatch-server admin publish`), or list the files that are published".into(),
            ));
        };
        let manifest_version = entry.manifest.get("bundle_version").and_then(|v| v.as_u64());
        if entry.bundle_id != listed.bundle_id
            || entry.size != listed.size
            || manifest_version.is_some_and(|v| v != u64::from(listed.bundle_version))
        {
            return Err(missing(format!(
                "that hash is published as bundle {} ({} bytes, bundle version {}); sign the listing from the published files",
                entry.bundle_id,
                entry.size,
                manifest_version.map_or_else(|| "unknown".to_string(), |v| v.to_string())
            )));
        }
    }
    let restricted = store.bundle_sites().await?;
    for listed in &offered.listing.bundles {
        let mut published =
            restricted.get(&listed.sha256.to_ascii_lowercase()).cloned().unwrap_or_default();
        published.sort();
        if published != listed.sites {
            return Err(PublishError::ListedBundleSites {
                bundle_id: listed.bundle_id.clone(),
                sha256: listed.sha256.clone(),
                listed: listed.sites_text(),
                published: fieldpatch_proto::listing::sites_in_words(&published),
            });
        }
    }
    let doc = serde_json::to_value(&offered)
        .map_err(|e| StoreError::Corrupt(format!("catalog listing: {e}")))?;
    store.replace_catalog_listing(current_doc.as_ref(), &doc).await?;
    Ok(Published {
        version: offered.listing.version,
        replaced: current.map(|c| c.listing.version),
        unchanged: false,
        notes,
    })
}
