//! The local patch catalog: a folder of bundle files, each verified against the trust store.
//!
//! Loading verifies every bundle (signatures, thresholds, payload hashes, MCUboot images, expiry
//! with offline grace, the trust store's own expiry) and keeps the payload bytes of the accepted
//! ones in memory: those bytes are what the flash pipeline sends. Refused bundles are kept with
//! their reason, so a session can log `bundle_refused` and the technician sees why a bundle is
//! missing from the plan.
//!
//! When the trust store names catalog keys, the folder's signed catalog listing
//! ([`crate::bundle::listing`], `listing.json` beside the bundles, written by sync) decides which
//! files belong to the catalog: a bundle file it does not name by hash is refused, and once the
//! listing has expired beyond the offline grace every bundle is refused until a sync brings a
//! fresh one. Stores without catalog keys keep the folder as the catalog.

use crate::bundle::listing::{self, SignedCatalogListing};
use crate::bundle::manifest::PayloadFormat;
use crate::bundle::trust::TrustStore;
use crate::bundle::verify::{VerifiedBundle, VerifyPolicy, trust_rule};
use crate::flash::VerifiedImage;
use crate::plan::{DeviceRecord, InstalledRange, PlannableBundle, Step};
use crate::session::ImageSource;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File extension of patch bundles in a catalog folder.
pub const BUNDLE_EXTENSION: &str = "fpb";

/// Errors reading a catalog folder (individual bad bundles are refusals, not errors).
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(
        "cannot read the catalog folder {path}: {source} (sync the catalog or pass --catalog DIR)"
    )]
    ReadDir { path: PathBuf, source: std::io::Error },
}

impl CatalogError {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        "catalog_unreadable"
    }
}

/// A bundle that passed verification.
#[derive(Debug, Clone)]
pub struct CatalogBundle {
    pub path: PathBuf,
    pub bundle: Arc<VerifiedBundle>,
    /// Last moment it may be used: its expiry, or the end of the offline grace period.
    pub usable_until: DateTime<Utc>,
    /// The sites the signed catalog listing restricts it to (sorted); empty: every site.
    pub sites: Vec<String>,
}

/// A bundle that did not verify, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, ts_rs::TS)]
pub struct Refusal {
    pub path: PathBuf,
    pub bundle_id: Option<String>,
    pub reason: String,
}

/// The verified catalog.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub bundles: Vec<CatalogBundle>,
    pub refused: Vec<Refusal>,
}

/// What the catalog listing allows, decided once per load.
enum ListingGate {
    /// The trust store names no catalog keys: the folder is the catalog.
    NotRequired,
    /// A valid listing, usable until the given time.
    Listed { listing: SignedCatalogListing, usable_until: DateTime<Utc> },
    /// A listing is required but missing, invalid or expired: every bundle is refused for this.
    Refused(String),
}

impl ListingGate {
    fn for_folder(dir: &Path, trust: &TrustStore, policy: &VerifyPolicy) -> ListingGate {
        if !trust.requires_listing() {
            return ListingGate::NotRequired;
        }
        let path = listing::listing_path(dir);
        if !path.exists() {
            return ListingGate::Refused(format!(
                "the trust store names catalog keys, so bundles need a signed catalog listing, and {} has none; sync the catalog",
                dir.display()
            ));
        }
        let checked = listing::load(&path)
            .and_then(|l| listing::listing_rule(&l, trust, policy).map(|rule| (l, rule)));
        match checked {
            Ok((listing, rule)) => {
                ListingGate::Listed { listing, usable_until: rule.usable_until() }
            }
            Err(e) => ListingGate::Refused(e.to_string()),
        }
    }

    /// The sites the verified bundle at `path` is listed for (empty: every site), or why it may
    /// not be used.
    fn admit(&self, path: &Path, bundle: &VerifiedBundle) -> Result<Vec<String>, String> {
        let listing = match self {
            ListingGate::NotRequired => return Ok(Vec::new()),
            ListingGate::Refused(reason) => return Err(reason.clone()),
            ListingGate::Listed { listing, .. } => listing,
        };
        let (sha256, size) = listing::file_digest(path).map_err(|e| e.to_string())?;
        let m = bundle.manifest();
        let detail = match listing.listing.bundle(&sha256) {
            None => String::new(),
            Some(l) if l.bundle_id != m.bundle_id || l.bundle_version != m.bundle_version => {
                format!(" (that hash is listed as {} version {})", l.bundle_id, l.bundle_version)
            }
            Some(l) if l.size != size => format!(" (that hash is listed with {} bytes)", l.size),
            Some(l) => return Ok(l.sites.clone()),
        };
        let e = fieldpatch_proto::trust::TrustError::NotListed {
            bundle_id: m.bundle_id.clone(),
            sha256,
            detail,
        };
        Err(format!("{e}; sync the catalog"))
    }

    fn usable_until(&self) -> Option<DateTime<Utc>> {
        match self {
            ListingGate::Listed { usable_until, .. } => Some(*usable_until),
            _ => None,
        }
    }
}

impl Catalog {
    /// Verify every `*.fpb` file in `dir` (sorted by name, so loading is deterministic). When the
    /// trust store names catalog keys, only files the folder's signed listing names are accepted.
    pub fn load_dir(
        dir: &Path,
        trust: &TrustStore,
        policy: &VerifyPolicy,
    ) -> Result<Catalog, CatalogError> {
        let read = std::fs::read_dir(dir)
            .map_err(|source| CatalogError::ReadDir { path: dir.to_path_buf(), source })?;
        let mut paths: Vec<PathBuf> = read
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == BUNDLE_EXTENSION))
            .collect();
        paths.sort();
        let gate = ListingGate::for_folder(dir, trust, policy);
        let mut catalog = Catalog::default();
        for path in paths {
            catalog.add(path, trust, policy, &gate);
        }
        Ok(catalog)
    }

    /// A catalog of the one bundle file at `path` (verified, or refused with the reason). When
    /// the trust store names catalog keys, the listing of the file's folder must name it.
    pub fn load_file(path: &Path, trust: &TrustStore, policy: &VerifyPolicy) -> Catalog {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let gate = ListingGate::for_folder(dir, trust, policy);
        let mut catalog = Catalog::default();
        catalog.add(path.to_path_buf(), trust, policy, &gate);
        catalog
    }

    fn add(
        &mut self,
        path: PathBuf,
        trust: &TrustStore,
        policy: &VerifyPolicy,
        gate: &ListingGate,
    ) {
        match VerifiedBundle::open(&path, trust, policy) {
            Ok(bundle) => {
                let sites = match gate.admit(&path, &bundle) {
                    Ok(sites) => sites,
                    Err(reason) => {
                        let bundle_id = Some(bundle.manifest().bundle_id.clone());
                        self.refused.push(Refusal { path, bundle_id, reason });
                        return;
                    }
                };
                let mut usable_until = match &bundle.verdict().rule {
                    Some(rule) => rule.usable_until(),
                    None => bundle.manifest().expires,
                };
                // The trust store and the listing expire too: a bundle is usable while all are.
                if let Ok(Some(rule)) = trust_rule(trust, policy) {
                    usable_until = usable_until.min(rule.usable_until());
                }
                if let Some(until) = gate.usable_until() {
                    usable_until = usable_until.min(until);
                }
                let bundle = Arc::new(bundle);
                self.bundles.push(CatalogBundle { path, bundle, usable_until, sites });
            }
            Err(rejected) => self.refused.push(Refusal {
                path,
                bundle_id: rejected.verdict.bundle_id.clone(),
                reason: rejected.error.to_string(),
            }),
        }
    }

    /// The catalog of work at `site` (a visit's site, or the inventory's site of the one device a
    /// single-device command flashes; `None`: no site): a bundle the signed
    /// listing restricts to other sites is refused, with the reason, like any bundle that may not
    /// be used. A catalog without site-restricted bundles is the same catalog.
    pub fn for_site(&self, site: Option<&str>) -> Catalog {
        let mut out = Catalog { bundles: Vec::new(), refused: self.refused.clone() };
        for b in &self.bundles {
            if fieldpatch_proto::listing::sites_allow(&b.sites, site) {
                out.bundles.push(b.clone());
                continue;
            }
            let m = b.bundle.manifest();
            let here = match site {
                Some(s) => format!("this work is at site {s}"),
                None => "this work names no site (a visit without a work order, or a device the inventory places at no site)".to_string(),
            };
            out.refused.push(Refusal {
                path: b.path.clone(),
                bundle_id: Some(m.bundle_id.clone()),
                reason: format!(
                    "bundle {} version {} is published to {} only, and {here}: it is used only at one of those sites (open the visit from a work order there)",
                    m.bundle_id,
                    m.bundle_version,
                    fieldpatch_proto::listing::sites_in_words(&b.sites)
                ),
            });
        }
        out
    }

    /// Whether some bundle is restricted to some sites only.
    pub fn has_site_restrictions(&self) -> bool {
        self.bundles.iter().any(|b| !b.sites.is_empty())
    }

    /// What the planner needs to know of each verified bundle.
    pub fn entries(&self) -> Vec<PlannableBundle> {
        self.bundles
            .iter()
            .map(|b| {
                let m = b.bundle.manifest();
                PlannableBundle {
                    bundle_id: m.bundle_id.clone(),
                    vendor: m.target.vendor.clone(),
                    model: m.target.model.clone(),
                    hw_min: m.target.hardware_revision.min.clone(),
                    hw_max: m.target.hardware_revision.max.clone(),
                    applies_to: InstalledRange {
                        min: Some(m.applies_to.min),
                        max: Some(m.applies_to.max),
                    },
                    installs: m.installs,
                    cvss: m.severity.cvss.as_deref().and_then(|c| c.parse().ok()).unwrap_or(0.0),
                    cves: m.severity.cves.clone(),
                    usable_until: b.usable_until,
                    // An SWUpdate gateway takes an image only with its password from the keyring.
                    needs_credential: b
                        .bundle
                        .payloads()
                        .iter()
                        .any(|p| p.entry().format == PayloadFormat::Swupdate),
                }
            })
            .collect()
    }

    /// The verified bundle with this id (the highest bundle version when several are loaded).
    pub fn bundle(&self, bundle_id: &str) -> Option<&CatalogBundle> {
        self.bundles
            .iter()
            .filter(|b| b.bundle.manifest().bundle_id == bundle_id)
            .max_by_key(|b| b.bundle.manifest().bundle_version)
    }
}

impl ImageSource for Catalog {
    fn entries(&self) -> Vec<PlannableBundle> {
        Catalog::entries(self)
    }

    fn image(&self, _device: &DeviceRecord, step: &Step) -> Result<VerifiedImage, String> {
        let b = self.bundle(&step.bundle_id).ok_or_else(|| {
            match self.refused.iter().find(|r| r.bundle_id.as_deref() == Some(&step.bundle_id)) {
                Some(r) => format!("bundle {} may not be used: {}", step.bundle_id, r.reason),
                None => format!("bundle {} is not in the verified catalog", step.bundle_id),
            }
        })?;
        if b.bundle.payloads().iter().any(|p| p.entry().format == PayloadFormat::Esp) {
            return esp_image(&step.bundle_id, &b.bundle, step);
        }
        let payload = b
            .bundle
            .payloads()
            .first()
            .ok_or_else(|| format!("bundle {} has no payload", step.bundle_id))?;
        let bytes: Arc<[u8]> = payload.bytes().into();
        let sha256: [u8; 32] = Sha256::digest(&bytes).into();
        let device_hash = match payload.entry().format {
            PayloadFormat::Mcuboot => {
                payload.device_image_hash().and_then(|h| hex::decode(h).ok()).ok_or_else(|| {
                    format!("bundle {}: MCUboot payload has no image hash", step.bundle_id)
                })?
            }
            _ => sha256.to_vec(),
        };
        Ok(VerifiedImage {
            bundle_id: Some(step.bundle_id.clone()),
            from: Some(step.from),
            to: step.to,
            bytes,
            sha256,
            device_hash,
            esp: None,
        })
    }
}

/// An ESP bundle's application as the image, with the other `esp` payloads (bootloader,
/// partition table, data) placed at their manifest offsets and the layout checked again.
fn esp_image(
    bundle_id: &str,
    bundle: &VerifiedBundle,
    step: &Step,
) -> Result<VerifiedImage, String> {
    use crate::flash::esp::{EspPlacement, PlacedPayload};
    use crate::image::esp::EspPayloadKind;
    let payloads: Vec<_> =
        bundle.payloads().iter().filter(|p| p.entry().format == PayloadFormat::Esp).collect();
    let layout = crate::image::esp::layout_of(
        payloads.iter().map(|p| (p.entry().name.as_str(), p.bytes(), p.entry().flash_offset)),
    )
    .map_err(|e| format!("bundle {bundle_id}: {e}"))?;
    let apps: Vec<&str> = layout
        .payloads
        .iter()
        .filter(|p| matches!(p.kind, EspPayloadKind::App { .. }))
        .map(|p| p.name.as_str())
        .collect();
    let [app_name] = apps.as_slice() else {
        return Err(format!(
            "bundle {bundle_id} carries {} ESP application images ({}): it must carry exactly one, the application the device runs",
            apps.len(),
            apps.join(", ")
        ));
    };
    let mut app = None;
    let mut others = Vec::new();
    for p in &payloads {
        let e = p.entry();
        let bytes: Arc<[u8]> = p.bytes().into();
        let sha256: [u8; 32] = Sha256::digest(&bytes).into();
        if hex::encode(sha256) != e.sha256.to_ascii_lowercase() {
            return Err(format!(
                "bundle {bundle_id}: payload {} does not match its manifest hash",
                e.name
            ));
        }
        // The layout check refused a payload without an offset.
        let offset = e
            .flash_offset
            .ok_or_else(|| format!("bundle {bundle_id}: payload {} has no flash_offset", e.name))?;
        if e.name == *app_name {
            app = Some((offset, bytes, sha256));
        } else {
            others.push(PlacedPayload { name: e.name.clone(), offset, bytes, sha256 });
        }
    }
    others.sort_by_key(|p| p.offset);
    let (offset, bytes, sha256) =
        app.ok_or_else(|| format!("bundle {bundle_id}: application {app_name} not found"))?;
    Ok(VerifiedImage {
        bundle_id: Some(bundle_id.to_string()),
        from: Some(step.from),
        to: step.to,
        bytes,
        sha256,
        device_hash: sha256.to_vec(),
        esp: Some(Arc::new(EspPlacement { layout, offset, others })),
    })
}
