//! The signed catalog listing on the laptop: reading it (bounded), deciding whether it may be used
//! now, and making one for a folder of bundle files.
//!
//! The document and its rules live in `fieldpatch-proto` ([`fieldpatch_proto::listing`]): the
//! inventory server refuses to publish a listing the laptop would refuse. A listing is kept in the
//! catalog folder it describes, as [`LISTING_FILE`]; sync writes the accepted one there, and
//! [`crate::catalog`] refuses bundle files it does not name whenever the trust store names
//! catalog keys. Past its expiry a listing is still usable within the trust store's signed
//! offline grace, counted from the last sync, as bundles are ([`super::verify::expiry_rule`]).

use super::BundleError;
use super::container;
use super::trust::TrustStore;
use super::verify::{AcceptRule, VerifyPolicy, expiry_rule, verify_file_manifest};
pub use fieldpatch_proto::listing::{
    CatalogListing, ListedBundle, MAX_LISTED_BUNDLES, MAX_LISTING_BYTES, SignedCatalogListing,
};
use fieldpatch_proto::trust::TrustError;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Name of the listing inside a catalog folder.
pub const LISTING_FILE: &str = "listing.json";

/// Where the listing of the catalog folder `dir` is kept.
pub fn listing_path(dir: &Path) -> PathBuf {
    dir.join(LISTING_FILE)
}

/// Read and parse a listing file (at most [`MAX_LISTING_BYTES`]); signatures are not checked.
pub fn load(path: &Path) -> Result<SignedCatalogListing, BundleError> {
    let io = |e| BundleError::io(format!("reading catalog listing {}", path.display()), e);
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > MAX_LISTING_BYTES {
        return Err(BundleError::LengthTooLarge {
            field: "catalog listing file".into(),
            value: meta.len(),
            limit: MAX_LISTING_BYTES,
        });
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_LISTING_BYTES + 1).read_to_end(&mut bytes))
        .map_err(io)?;
    Ok(SignedCatalogListing::from_json(&bytes)?)
}

/// Decide whether `listing` may be used with `trust` under `policy`: signed by the catalog
/// threshold for this trust-store version, and not expired beyond the offline grace. Returns the
/// rule that lets it be used.
pub fn listing_rule(
    listing: &SignedCatalogListing,
    trust: &TrustStore,
    policy: &VerifyPolicy,
) -> Result<AcceptRule, BundleError> {
    listing.verify(trust.proto())?;
    let expires = listing.listing.expires;
    expiry_rule(expires, policy).map_err(|reason| {
        BundleError::Trust(TrustError::ListingExpired { expires: expires.to_rfc3339(), reason })
    })
}

/// SHA-256 (hex) and size of a whole file, read in chunks.
pub fn file_digest(path: &Path) -> Result<(String, u64), BundleError> {
    let io = |e| BundleError::io(format!("reading {}", path.display()), e);
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; container::CHUNK];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size = size.saturating_add(n as u64);
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// The bundle files of the catalog folder `dir` (`*.fpb`, sorted by name), each verified against
/// `trust` under `policy`, as a listing names them. Any bundle that does not verify is an error:
/// a listing vouches for every file it names. Every bundle is listed for every site: see
/// [`restrict_sites`].
pub fn list_folder(
    dir: &Path,
    trust: &TrustStore,
    policy: &VerifyPolicy,
) -> Result<Vec<ListedBundle>, BundleError> {
    let read = std::fs::read_dir(dir)
        .map_err(|e| BundleError::io(format!("reading catalog folder {}", dir.display()), e))?;
    let mut paths: Vec<PathBuf> = read
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == crate::catalog::BUNDLE_EXTENSION))
        .collect();
    paths.sort();
    let mut bundles = Vec::with_capacity(paths.len());
    for path in paths {
        if bundles.len() >= MAX_LISTED_BUNDLES {
            return Err(BundleError::Trust(TrustError::InvalidListing {
                reason: format!("the folder holds more than {MAX_LISTED_BUNDLES} bundles"),
            }));
        }
        let (manifest, _) = verify_file_manifest(&path, trust, policy).map_err(|rejected| {
            BundleError::Trust(TrustError::InvalidListing {
                reason: format!(
                    "{} does not verify, so it cannot be listed: {}",
                    path.display(),
                    rejected.error
                ),
            })
        })?;
        let (sha256, size) = file_digest(&path)?;
        bundles.push(ListedBundle {
            bundle_id: manifest.bundle_id,
            bundle_version: manifest.bundle_version,
            sha256,
            size,
            sites: Vec::new(),
        });
    }
    Ok(bundles)
}

/// Restrict listed bundles to the sites they are published to: each `(key, sites)` names the
/// bundles whose id or SHA-256 is `key`. A key that names no listed bundle is an error (a typo
/// would otherwise list a bundle for every site), as is an empty or repeated site.
pub fn restrict_sites(
    bundles: &mut [ListedBundle],
    restrictions: &[(String, Vec<String>)],
) -> Result<(), BundleError> {
    let invalid = |reason: String| BundleError::Trust(TrustError::InvalidListing { reason });
    for (key, sites) in restrictions {
        let mut sites = sites.clone();
        sites.sort();
        sites.dedup();
        if sites.is_empty() || sites.iter().any(String::is_empty) {
            return Err(invalid(format!(
                "the sites given for {key} are empty: give one or more site ids, as in {key}=site-a,site-b"
            )));
        }
        let key_hash = key.to_ascii_lowercase();
        let mut found = false;
        for b in bundles.iter_mut().filter(|b| b.bundle_id == *key || b.sha256 == key_hash) {
            found = true;
            b.sites = sites.clone();
        }
        if !found {
            return Err(invalid(format!(
                "no bundle in the folder has the id or SHA-256 {key}: name a bundle the folder holds"
            )));
        }
    }
    Ok(())
}
