//! Verification: a bundle file against a trust store and a time policy ([`verify_file`],
//! [`VerifiedBundle::open`]), and a verified manifest against a device ([`check_target`]).
//!
//! Order of checks: container structure and lengths, manifest, the trust store's own expiry (when
//! it has one, with the same offline grace as bundles), signatures and threshold, approver
//! evidence, validity period (with offline grace), then payload digests while streaming, then
//! MCUboot image checks (digest TLV, vendor signature when the trust store knows vendor keys),
//! and for ESP payloads each image, partition table and flash offset, then their layout together.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use super::BundleError;
use super::container::{self, CHUNK, Header, read_chunk};
use super::manifest::{Manifest, PayloadEntry, PayloadFormat};
use super::rollback::SignedRollbackApproval;
use super::signature::{self, CONTEXT_MANIFEST};
use super::trust::{Role, TrustStore};
use crate::image::mcuboot::McubootImage;
use crate::model::{DeviceIdentity, Version};
use chrono::{DateTime, Duration, Utc};
use fieldpatch_proto::trust::TrustError;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::Path;

/// Most payload bytes held in memory (for flashing, or to check an MCUboot image).
pub const MAX_IN_MEMORY: u64 = 64 << 20;
/// How far in the future a bundle's creation time may be before the clock is suspected.
pub const CLOCK_SKEW: i64 = 300;

/// Offline grace: the catalog was last verified online at `last_online_verification`; an expired
/// bundle stays usable until `expires + grace` if it had not yet expired at that time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OfflineGrace {
    pub last_online_verification: DateTime<Utc>,
    #[serde(serialize_with = "ser_duration")]
    pub grace: Duration,
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_i64(d.num_seconds())
}

/// The time rules a verification applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyPolicy {
    pub now: DateTime<Utc>,
    pub offline_grace: Option<OfflineGrace>,
}

impl VerifyPolicy {
    /// Verify as of now, online (no grace).
    pub fn now() -> Self {
        VerifyPolicy { now: Utc::now(), offline_grace: None }
    }
}

/// Which rule let an accepted bundle through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum AcceptRule {
    /// Signed, within its validity period.
    Valid { expires: DateTime<Utc> },
    /// Expired, but verified online before expiry and still within the offline grace period.
    OfflineGrace {
        expired_at: DateTime<Utc>,
        grace_until: DateTime<Utc>,
        last_online_verification: DateTime<Utc>,
    },
}

impl AcceptRule {
    /// The rule's name, as serialized (`valid`, `offline_grace`).
    pub fn name(&self) -> &'static str {
        match self {
            AcceptRule::Valid { .. } => "valid",
            AcceptRule::OfflineGrace { .. } => "offline_grace",
        }
    }

    /// The last moment this rule allows: the expiry, or the end of the offline grace period.
    pub fn usable_until(&self) -> DateTime<Utc> {
        match self {
            AcceptRule::Valid { expires } => *expires,
            AcceptRule::OfflineGrace { grace_until, .. } => *grace_until,
        }
    }

    /// One line for a verdict's check.
    pub fn describe(&self) -> String {
        match self {
            AcceptRule::Valid { expires } => format!("valid until {}", expires.to_rfc3339()),
            AcceptRule::OfflineGrace { expired_at, grace_until, last_online_verification } => {
                format!(
                    "expired at {}, accepted under offline grace until {} (last verified online {})",
                    expired_at.to_rfc3339(),
                    grace_until.to_rfc3339(),
                    last_online_verification.to_rfc3339()
                )
            }
        }
    }
}

/// How something that expires at `expires` (a bundle, the trust store, a catalog listing) may be
/// used at `policy.now`: valid, within the offline grace (verified online before it expired, and
/// the signed grace period not over), or not, with the reason.
pub fn expiry_rule(expires: DateTime<Utc>, policy: &VerifyPolicy) -> Result<AcceptRule, String> {
    if policy.now <= expires {
        return Ok(AcceptRule::Valid { expires });
    }
    let Some(g) = policy.offline_grace else {
        return Err("no offline grace applies".into());
    };
    if g.last_online_verification > expires {
        return Err(format!(
            "it was already expired when last verified online at {}",
            g.last_online_verification.to_rfc3339()
        ));
    }
    // Times and periods come from outside (manifests, settings): out-of-range sums are refusals,
    // never panics.
    let Some(grace_until) = expires.checked_add_signed(g.grace) else {
        return Err(format!(
            "the offline grace period ({} days) is out of range",
            g.grace.num_days()
        ));
    };
    if policy.now > grace_until {
        return Err(format!("the grace period ended at {}", grace_until.to_rfc3339()));
    }
    Ok(AcceptRule::OfflineGrace {
        expired_at: expires,
        grace_until,
        last_online_verification: g.last_online_verification,
    })
}

/// The trust store's own expiry under `policy`: `None` when it does not expire, the rule that
/// lets it be used, or the refusal ("the trust store expired on ...; sync to get its rotation").
pub fn trust_rule(
    trust: &TrustStore,
    policy: &VerifyPolicy,
) -> Result<Option<AcceptRule>, BundleError> {
    let Some(expires) = trust.expires() else { return Ok(None) };
    expiry_rule(expires, policy).map(Some).map_err(|reason| {
        BundleError::Trust(TrustError::TrustStoreExpired { expires: expires.to_rfc3339(), reason })
    })
}

/// One check and its outcome, in the order made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// The error part of a verdict, for `--json` and the app bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerdictError {
    pub code: String,
    pub message: String,
}

/// The structured outcome of verifying a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Verdict {
    pub valid: bool,
    pub bundle_id: Option<String>,
    pub bundle_version: Option<u32>,
    pub installs: Option<String>,
    /// Key ids whose signatures verified.
    pub signers: Vec<String>,
    pub rule: Option<AcceptRule>,
    pub checks: Vec<Check>,
    pub error: Option<VerdictError>,
}

impl Verdict {
    fn pass(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.checks.push(Check { name: name.into(), ok: true, detail: detail.into() });
    }
    fn fail(mut self, name: &str, error: BundleError) -> Rejected {
        self.valid = false;
        self.checks.push(Check { name: name.into(), ok: false, detail: error.to_string() });
        self.error = Some(VerdictError { code: error.code().into(), message: error.to_string() });
        Rejected { error, verdict: Box::new(self) }
    }
}

/// A refused bundle: the specific error and the verdict recording the checks made.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Rejected {
    pub error: BundleError,
    pub verdict: Box<Verdict>,
}

/// One verified payload held in memory: exactly the bytes that were hashed.
#[derive(Debug, Clone)]
pub struct VerifiedPayload {
    entry: PayloadEntry,
    bytes: Vec<u8>,
}

impl VerifiedPayload {
    pub fn entry(&self) -> &PayloadEntry {
        &self.entry
    }
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// For an MCUboot payload, the image hash (hex) a device reports once this image is in a
    /// slot: what the flash pipeline compares the device's answer with.
    pub fn device_image_hash(&self) -> Option<String> {
        if self.entry.format != PayloadFormat::Mcuboot {
            return None;
        }
        McubootImage::parse(&self.bytes).ok()?.image_hash().map(hex::encode)
    }
}

/// A bundle that passed verification, with its payloads held in memory read-only. These bytes are
/// what the flash pipeline sends.
#[derive(Debug, Clone)]
pub struct VerifiedBundle {
    manifest: Manifest,
    payloads: Vec<VerifiedPayload>,
    verdict: Verdict,
}

impl VerifiedBundle {
    /// Verify the bundle at `path` and hold its payloads (each at most [`MAX_IN_MEMORY`]).
    pub fn open(
        path: &Path,
        trust: &TrustStore,
        policy: &VerifyPolicy,
    ) -> Result<VerifiedBundle, Rejected> {
        let mut held = Vec::new();
        let (header, verdict) = run(path, trust, policy, Hold::All, &mut held)?;
        let payloads = header
            .manifest
            .payloads
            .iter()
            .cloned()
            .zip(held)
            .map(|(entry, bytes)| VerifiedPayload { entry, bytes: bytes.unwrap_or_default() })
            .collect();
        Ok(VerifiedBundle { manifest: header.manifest, payloads, verdict })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn payloads(&self) -> &[VerifiedPayload] {
        &self.payloads
    }
    pub fn payload(&self, name: &str) -> Option<&VerifiedPayload> {
        self.payloads.iter().find(|p| p.entry.name == name)
    }
    pub fn verdict(&self) -> &Verdict {
        &self.verdict
    }
}

/// Verify the bundle at `path` streaming: bounded memory whatever its size (only MCUboot payloads
/// up to [`MAX_IN_MEMORY`] are held, to check the image inside). Returns the verdict when valid.
pub fn verify_file(
    path: &Path,
    trust: &TrustStore,
    policy: &VerifyPolicy,
) -> Result<Verdict, Rejected> {
    verify_file_manifest(path, trust, policy).map(|(_, v)| v)
}

/// [`verify_file`], also returning the manifest that was verified (read once, from the same pass).
pub fn verify_file_manifest(
    path: &Path,
    trust: &TrustStore,
    policy: &VerifyPolicy,
) -> Result<(Manifest, Verdict), Rejected> {
    let mut held = Vec::new();
    run(path, trust, policy, Hold::McubootOnly, &mut held).map(|(h, v)| (h.manifest, v))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Hold {
    All,
    McubootOnly,
}

fn run(
    path: &Path,
    trust: &TrustStore,
    policy: &VerifyPolicy,
    hold: Hold,
    held: &mut Vec<Option<Vec<u8>>>,
) -> Result<(Header, Verdict), Rejected> {
    let mut v = Verdict::default();
    let (mut file, _len, header) = match container::open_file(path) {
        Ok(x) => x,
        Err(e) => return Err(v.fail("container", e)),
    };
    let m = &header.manifest;
    v.bundle_id = Some(m.bundle_id.clone());
    v.bundle_version = Some(m.bundle_version);
    v.installs = Some(m.installs.to_string());
    v.pass(
        "container",
        format!(
            "format {}, {} payload(s), lengths fill the file",
            container::FORMAT_VERSION,
            m.payloads.len()
        ),
    );
    v.pass("manifest", "canonical, no duplicate keys, schema valid");
    if let Err((stage, e)) = check_header(&header, trust, policy, &mut v) {
        return Err(v.fail(stage, e));
    }
    let total = header.manifest.payload_total().unwrap_or(u64::MAX);
    if hold == Hold::All && total > MAX_IN_MEMORY {
        let e = BundleError::PayloadTooLarge {
            name: "(all payloads together)".into(),
            length: total,
            limit: MAX_IN_MEMORY,
        };
        return Err(v.fail("payloads", e));
    }
    let mut buf = vec![0u8; CHUNK];
    // ESP payloads are checked one by one, then together (offsets, overlaps, partitions).
    let mut esp = Vec::new();
    for p in &header.manifest.payloads {
        // Image formats are parsed as well as hashed, so MCUboot and DFU payloads are held.
        let keep = hold == Hold::All || p.format != PayloadFormat::Raw;
        let check = format!("payload:{}", p.name);
        if keep && p.length > MAX_IN_MEMORY {
            let e = BundleError::PayloadTooLarge {
                name: p.name.clone(),
                length: p.length,
                limit: MAX_IN_MEMORY,
            };
            return Err(v.fail(&check, e));
        }
        let mut bytes = keep.then(|| Vec::with_capacity(p.length as usize));
        match hash_payload(&mut file, p, &mut buf, bytes.as_mut()) {
            Ok(()) => v.pass(&check, format!("{} bytes, sha256 {}", p.length, p.sha256)),
            Err(e) => return Err(v.fail(&check, e)),
        }
        if p.format == PayloadFormat::Mcuboot {
            let image_check = format!("image:{}", p.name);
            match check_mcuboot(p, bytes.as_deref().unwrap_or_default(), &header.manifest, trust) {
                Ok(detail) => v.pass(&image_check, detail),
                Err(e) => return Err(v.fail(&image_check, e)),
            }
        }
        if p.format == PayloadFormat::Dfu {
            let image_check = format!("image:{}", p.name);
            match crate::image::dfu_file::DfuFile::parse(bytes.as_deref().unwrap_or_default()) {
                Ok(f) => v.pass(
                    &image_check,
                    format!(
                        "DFU file for {:04x}:{:04x} (bcdDFU {:#06x})",
                        f.suffix.id_vendor, f.suffix.id_product, f.suffix.bcd_dfu
                    ),
                ),
                Err(source) => {
                    let e = BundleError::DfuImage { name: p.name.clone(), source };
                    return Err(v.fail(&image_check, e));
                }
            }
        }
        if p.format == PayloadFormat::Swupdate {
            let image_check = format!("image:{}", p.name);
            let vendor = crate::image::swu::trusted_vendor_pem(trust);
            let swu_bytes = bytes.as_deref().unwrap_or_default();
            match crate::image::swu::verify_bytes(swu_bytes, vendor.as_deref(), None) {
                Ok(swu) => {
                    // The planner decides from the manifest's version: the image must say the same.
                    let said = swu.description.version.as_deref().map(str::parse::<Version>);
                    if let Some(Ok(version)) = said
                        && version != header.manifest.installs
                    {
                        let e = BundleError::InvalidManifest {
                            reason: format!(
                                "the manifest installs {} but the .swu's sw-description says version {version}",
                                header.manifest.installs
                            ),
                        };
                        return Err(v.fail(&image_check, e));
                    }
                    v.pass(&image_check, swu_detail(&swu, vendor.is_some()))
                }
                Err(source) => {
                    let e = BundleError::SwuImage { name: p.name.clone(), source };
                    return Err(v.fail(&image_check, e));
                }
            }
        }
        if p.format == PayloadFormat::Esp {
            let image_check = format!("image:{}", p.name);
            let esp_payload = crate::image::esp::inspect_payload(
                &p.name,
                bytes.as_deref().unwrap_or_default(),
                p.flash_offset,
            );
            match esp_payload {
                Ok(e) => {
                    v.pass(&image_check, e.describe());
                    esp.push(e);
                }
                Err(source) => {
                    let e =
                        BundleError::EspImage { name: p.name.clone(), source: Box::new(source) };
                    return Err(v.fail(&image_check, e));
                }
            }
        }
        held.push(if hold == Hold::All { bytes } else { None });
    }
    if !esp.is_empty() {
        match check_esp_layout(esp) {
            Ok(detail) => v.pass("esp_layout", detail),
            Err(e) => return Err(v.fail("esp_layout", e)),
        }
    }
    v.valid = true;
    Ok((header, v))
}

fn hash_payload(
    file: &mut std::fs::File,
    p: &PayloadEntry,
    buf: &mut [u8],
    mut keep: Option<&mut Vec<u8>>,
) -> Result<(), BundleError> {
    let mut h = Sha256::new();
    let mut left = p.length;
    while left > 0 {
        let read = read_chunk(file, buf, left)
            .map_err(|e| BundleError::io(format!("reading payload {:?}", p.name), e))?;
        if read.is_empty() {
            return Err(BundleError::Truncated {
                what: format!("payload {:?}", p.name),
                needed: left,
                available: 0,
            });
        }
        h.update(read);
        if let Some(k) = keep.as_deref_mut() {
            k.extend_from_slice(read);
        }
        // `read_chunk` reads at most `left` bytes.
        left = left.saturating_sub(read.len() as u64);
    }
    let actual = hex::encode(h.finalize());
    if actual != p.sha256 {
        return Err(BundleError::PayloadHashMismatch {
            name: p.name.clone(),
            expected: p.sha256.clone(),
            actual,
        });
    }
    Ok(())
}

/// The flash layout of a bundle's ESP payloads, checked together.
fn check_esp_layout(esp: Vec<crate::image::esp::EspPayload>) -> Result<String, BundleError> {
    let name = esp.first().map(|p| p.name.clone()).unwrap_or_default();
    crate::image::esp::check_layout(esp).map(|l| l.describe()).map_err(|source| {
        let name = match &source {
            crate::image::esp::EspImageError::Overlap { name, .. }
            | crate::image::esp::EspImageError::MixedChips { name, .. }
            | crate::image::esp::EspImageError::Duplicate { name, .. }
            | crate::image::esp::EspImageError::AppPlacement { name, .. }
            | crate::image::esp::EspImageError::DataPlacement { name, .. } => name.clone(),
            _ => name,
        };
        BundleError::EspImage { name, source: Box::new(source) }
    })
}

/// What the catalog checked of a `.swu` payload, and what it left to the gateway.
fn swu_detail(swu: &crate::image::swu::VerifiedSwu, cms_checked: bool) -> String {
    let signature = if cms_checked {
        "its CMS signature verifies against a vendor certificate in the trust store"
    } else {
        "sw-description is signed; its CMS signature is verified by the gateway only (the trust \
         store carries no vendor certificates)"
    };
    format!(
        "SWUpdate image {} for hardware {}, {} artifact(s) sha256-checked; {signature}",
        swu.description.version.as_deref().unwrap_or("(no version)"),
        swu.description.hardware_compatibility.join(", "),
        swu.description.artifacts.len()
    )
}

fn check_mcuboot(
    p: &PayloadEntry,
    bytes: &[u8],
    manifest: &Manifest,
    trust: &TrustStore,
) -> Result<String, BundleError> {
    let image_err = |source| BundleError::Image { name: p.name.clone(), source };
    let img = McubootImage::parse(bytes).map_err(image_err)?;
    let hash = img.verify_hash().map_err(image_err)?;
    let vendor_keys = trust.keys_with_role(Role::VendorImage);
    let mut detail = format!("MCUboot image {} hash {}", img.header.version, hex::encode(&hash));
    if vendor_keys.is_empty() {
        detail.push_str("; no vendor key in the trust store, vendor signature not checked");
    } else {
        let keys: Vec<_> = vendor_keys.iter().map(|(_, k)| *k).collect();
        let used = img.verify_ed25519(&keys).map_err(image_err)?;
        detail.push_str(&format!("; vendor signature by {}", signature::key_id(&used)));
    }
    if manifest.payloads.len() == 1 && img.header.version != manifest.installs {
        return Err(BundleError::InvalidManifest {
            reason: format!(
                "the manifest installs {} but the MCUboot image header says {}",
                manifest.installs, img.header.version
            ),
        });
    }
    Ok(detail)
}

fn check_header(
    header: &Header,
    trust: &TrustStore,
    policy: &VerifyPolicy,
    v: &mut Verdict,
) -> Result<(), (&'static str, BundleError)> {
    let m = &header.manifest;
    if let Some(rule) = trust_rule(trust, policy).map_err(|e| ("trust_store", e))? {
        v.pass("trust_store", format!("version {}, {}", trust.version(), rule.describe()));
    }
    let signers = signature::check_threshold(
        "bundle manifest",
        CONTEXT_MANIFEST,
        &header.manifest_bytes,
        &header.signatures,
        trust,
        Role::Release,
    )
    .map_err(|e| ("signatures", e))?;
    v.pass(
        "signatures",
        format!(
            "{} valid release signature(s) ({}), threshold {}",
            signers.len(),
            signers.join(", "),
            trust.threshold(Role::Release)
        ),
    );
    v.signers = signers.clone();
    for a in &m.evidence.approvers {
        if !signers.contains(a) {
            return Err(("evidence", BundleError::ApproverDidNotSign { key_id: a.clone() }));
        }
    }
    v.pass(
        "evidence",
        format!(
            "test report sha256 {}, approvers {} all signed",
            m.evidence.test_report_sha256,
            m.evidence.approvers.join(", ")
        ),
    );
    let rule = time_rule(m, policy).map_err(|e| ("validity_period", e))?;
    v.pass("validity_period", rule.describe());
    v.rule = Some(rule);
    Ok(())
}

fn time_rule(m: &Manifest, policy: &VerifyPolicy) -> Result<AcceptRule, BundleError> {
    let latest_created =
        policy.now.checked_add_signed(Duration::seconds(CLOCK_SKEW)).unwrap_or(policy.now);
    if m.created > latest_created {
        return Err(BundleError::NotYetValid { created: m.created.to_rfc3339() });
    }
    expiry_rule(m.expires, policy)
        .map_err(|reason| BundleError::Expired { expires: m.expires.to_rfc3339(), reason })
}

/// What [`check_target`] decided for one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetCheck {
    pub installed: Version,
    pub installs: Version,
    /// The bundle installs an older version than the device runs.
    pub downgrade: bool,
    /// Key ids that signed the rollback approval that allowed a downgrade.
    pub rollback_approved_by: Vec<String>,
}

/// Check a verified manifest against a device: vendor, model, hardware revision range, installed
/// version range, and the downgrade rule (an older version needs a valid rollback approval naming
/// exactly this vendor, model, from, to and bundle).
pub fn check_target(
    manifest: &Manifest,
    device: &DeviceIdentity,
    trust: &TrustStore,
    approvals: &[SignedRollbackApproval],
    now: DateTime<Utc>,
) -> Result<TargetCheck, BundleError> {
    let need = |field: &str, v: &Option<String>| {
        v.clone().ok_or_else(|| BundleError::DeviceIdentityIncomplete { field: field.into() })
    };
    let vendor = need("vendor", &device.vendor)?;
    let model = need("model", &device.model)?;
    let installed = device.firmware_version.ok_or_else(|| {
        BundleError::DeviceIdentityIncomplete { field: "firmware version".into() }
    })?;
    let t = &manifest.target;
    if vendor != t.vendor {
        return Err(BundleError::WrongTarget {
            field: "vendor".into(),
            expected: t.vendor.clone(),
            actual: vendor,
        });
    }
    if model != t.model {
        return Err(BundleError::WrongTarget {
            field: "model".into(),
            expected: t.model.clone(),
            actual: model,
        });
    }
    if t.hardware_revision.min.is_some() || t.hardware_revision.max.is_some() {
        let rev = need("hardware revision", &device.hardware_revision)?;
        if !t.hardware_revision.contains(&rev) {
            return Err(BundleError::HardwareRevisionOutOfRange {
                actual: rev,
                range: t.hardware_revision.to_string(),
            });
        }
    }
    if !manifest.applies_to.contains(installed) {
        return Err(BundleError::InstalledVersionNotApplicable {
            installed,
            range: manifest.applies_to.to_string(),
        });
    }
    let downgrade = manifest.installs < installed;
    let mut rollback_approved_by = Vec::new();
    if downgrade {
        let mut last_err = None;
        for a in approvals {
            if !a.names(&t.vendor, &t.model, installed, manifest.installs, &manifest.bundle_id) {
                continue;
            }
            match a.verify(trust, now) {
                Ok(signers) => {
                    rollback_approved_by = signers;
                    last_err = None;
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        if let Some(e) = last_err {
            return Err(e);
        }
        if rollback_approved_by.is_empty() {
            return Err(BundleError::DowngradeNotApproved {
                from: installed,
                to: manifest.installs,
            });
        }
    }
    Ok(TargetCheck { installed, installs: manifest.installs, downgrade, rollback_approved_by })
}
