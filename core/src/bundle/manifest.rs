//! The bundle manifest: what a bundle is for, what it installs and what it carries.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use super::BundleError;
use super::canonical::{self, CanonicalIssue};
use crate::model::Version;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;

/// Manifest schema version this code writes and reads.
pub const MANIFEST_SCHEMA: u32 = 1;
/// Most payloads one bundle may carry.
pub const MAX_PAYLOADS: usize = 64;
/// Longest payload name.
pub const MAX_NAME_LEN: usize = 128;

/// How a payload image is laid out, which decides how it is checked and flashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// An MCUboot image (header, image, TLVs); its vendor signature is checked too.
    Mcuboot,
    /// A DFU file (DFU suffix, possibly DfuSe).
    Dfu,
    /// Raw bytes.
    Raw,
    /// An SWUpdate image (`.swu`) for an embedded Linux gateway: its archive, `sw-description`,
    /// signature presence and every artifact's sha256 are checked at catalog load.
    Swupdate,
    /// ESP-family flash contents (application and bootloader images, a partition table, data),
    /// each written at its `flash_offset`: images, checksums, appended SHA-256 and the layout are
    /// checked at catalog load.
    Esp,
}

impl std::str::FromStr for PayloadFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mcuboot" => Ok(PayloadFormat::Mcuboot),
            "dfu" => Ok(PayloadFormat::Dfu),
            "raw" => Ok(PayloadFormat::Raw),
            "swupdate" => Ok(PayloadFormat::Swupdate),
            "esp" => Ok(PayloadFormat::Esp),
            _ => {
                Err(format!("unknown payload format {s:?}: use mcuboot, dfu, raw, swupdate or esp"))
            }
        }
    }
}

/// One payload image: its name, format, length and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadEntry {
    /// A plain file name (no directories), unique in the bundle.
    pub name: String,
    pub format: PayloadFormat,
    pub length: u64,
    /// SHA-256 of the payload bytes, lowercase hex.
    pub sha256: String,
    /// Where an `esp` payload is written in the device's flash (absent from the signed bytes of
    /// every other payload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flash_offset: Option<u32>,
}

/// An inclusive range of hardware revisions. Revisions that parse as versions (`2`, `1.3`) compare
/// as versions; others compare as text. A missing bound is open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RevisionRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
}

fn cmp_revision(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<Version>(), b.parse::<Version>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

impl RevisionRange {
    pub fn contains(&self, rev: &str) -> bool {
        self.min.as_deref().is_none_or(|m| cmp_revision(rev, m).is_ge())
            && self.max.as_deref().is_none_or(|m| cmp_revision(rev, m).is_le())
    }
}

impl fmt::Display for RevisionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{} ..= {}]",
            self.min.as_deref().unwrap_or("any"),
            self.max.as_deref().unwrap_or("any")
        )
    }
}

/// An inclusive range of installed firmware versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionRange {
    #[serde(with = "version_text")]
    pub min: Version,
    #[serde(with = "version_text")]
    pub max: Version,
}

impl VersionRange {
    pub fn contains(&self, v: Version) -> bool {
        self.min <= v && v <= self.max
    }
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{} ..= {}]", self.min, self.max)
    }
}

/// Which devices a bundle is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub vendor: String,
    pub model: String,
    pub hardware_revision: RevisionRange,
}

/// How urgent the patch is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Severity {
    /// CVSS base score as decimal text (`"9.8"`), 0.0 to 10.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cvss: Option<String>,
    /// CVE ids the patch fixes.
    #[serde(default)]
    pub cves: Vec<String>,
}

/// Evidence the release was vetted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// SHA-256 of the test report, hex.
    pub test_report_sha256: String,
    /// Key ids of the approvers; each must also have signed the bundle.
    pub approvers: Vec<String>,
}

/// The signed description of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest schema version ([`MANIFEST_SCHEMA`]).
    pub schema: u32,
    pub bundle_id: String,
    /// The bundle's own revision (a re-issued bundle has a higher one).
    pub bundle_version: u32,
    pub target: Target,
    /// Installed firmware versions this bundle applies to.
    pub applies_to: VersionRange,
    /// The firmware version the bundle installs.
    #[serde(with = "version_text")]
    pub installs: Version,
    pub payloads: Vec<PayloadEntry>,
    pub severity: Severity,
    pub created: DateTime<Utc>,
    pub expires: DateTime<Utc>,
    pub evidence: Evidence,
    pub release_notes: String,
}

impl Manifest {
    /// Canonical bytes of the manifest (what release approvers sign).
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, BundleError> {
        canonical::to_canonical_of(self)
            .map_err(|e| BundleError::InvalidManifest { reason: format!("{e:?}") })
    }

    /// Parse manifest bytes from a bundle: canonical JSON, no duplicate keys, schema-valid.
    pub fn from_canonical_bytes(bytes: &[u8]) -> Result<Manifest, BundleError> {
        let doc = || "manifest".to_string();
        let value = canonical::parse_canonical(bytes).map_err(|e| match e {
            CanonicalIssue::DuplicateKey(key) => BundleError::DuplicateKey { document: doc(), key },
            CanonicalIssue::Syntax(reason) => BundleError::InvalidManifest { reason },
            CanonicalIssue::Float | CanonicalIssue::NotCanonical => {
                BundleError::NonCanonical { document: doc() }
            }
        })?;
        let m: Manifest = serde_json::from_value(value)
            .map_err(|e| BundleError::InvalidManifest { reason: e.to_string() })?;
        m.validate()?;
        // The typed manifest must re-serialize to the same bytes, so nothing signed is ignored.
        if m.canonical_bytes()? != bytes {
            return Err(BundleError::NonCanonical { document: doc() });
        }
        Ok(m)
    }

    /// Build a manifest from a JSON template (every field but `payloads`, any formatting, no
    /// duplicate keys) and the payload entries.
    pub fn from_template(
        template: &[u8],
        payloads: Vec<PayloadEntry>,
    ) -> Result<Manifest, BundleError> {
        let mut value = canonical::parse_strict(template).map_err(|e| match e {
            CanonicalIssue::DuplicateKey(key) => {
                BundleError::DuplicateKey { document: "manifest template".into(), key }
            }
            other => BundleError::InvalidManifest { reason: format!("template: {other:?}") },
        })?;
        let obj = value.as_object_mut().ok_or_else(|| BundleError::InvalidManifest {
            reason: "the template must be a JSON object".into(),
        })?;
        let entries = serde_json::to_value(payloads)
            .map_err(|e| BundleError::InvalidManifest { reason: e.to_string() })?;
        obj.insert("payloads".into(), entries);
        obj.entry("schema").or_insert(MANIFEST_SCHEMA.into());
        let m: Manifest = serde_json::from_value(value)
            .map_err(|e| BundleError::InvalidManifest { reason: format!("template: {e}") })?;
        m.validate()?;
        Ok(m)
    }

    /// Check the manifest's own rules (names, digests, ranges, times).
    pub fn validate(&self) -> Result<(), BundleError> {
        let bad = |reason: String| Err(BundleError::InvalidManifest { reason });
        if self.schema != MANIFEST_SCHEMA {
            return bad(format!("schema {} is not {MANIFEST_SCHEMA}", self.schema));
        }
        if self.bundle_id.is_empty() || self.bundle_id.len() > 128 {
            return bad("bundle_id must be 1 to 128 characters".into());
        }
        if self.target.vendor.is_empty() || self.target.model.is_empty() {
            return bad("target vendor and model must not be empty".into());
        }
        if self.applies_to.min > self.applies_to.max {
            return bad(format!("applies_to range {} is empty", self.applies_to));
        }
        if self.payloads.is_empty() {
            return bad("a bundle needs at least one payload".into());
        }
        if self.payloads.len() > MAX_PAYLOADS {
            return Err(BundleError::LengthTooLarge {
                field: "payload count".into(),
                value: self.payloads.len() as u64,
                limit: MAX_PAYLOADS as u64,
            });
        }
        let mut names = HashSet::new();
        for p in &self.payloads {
            check_payload_name(&p.name)?;
            if !names.insert(p.name.as_str()) {
                return Err(BundleError::DuplicatePayloadName { name: p.name.clone() });
            }
            if p.sha256.len() != 64
                || !p.sha256.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            {
                return bad(format!("payload {:?} sha256 must be 64 lowercase hex digits", p.name));
            }
            if p.flash_offset.is_some() && p.format != PayloadFormat::Esp {
                return bad(format!(
                    "payload {:?} has a flash_offset but only esp payloads are written at one",
                    p.name
                ));
            }
        }
        if let Some(cvss) = &self.severity.cvss {
            let ok = cvss.parse::<f64>().is_ok_and(|s| (0.0..=10.0).contains(&s))
                && cvss.bytes().all(|b| b.is_ascii_digit() || b == b'.');
            if !ok {
                return bad(format!("cvss {cvss:?} must be a decimal from 0.0 to 10.0"));
            }
        }
        for cve in &self.severity.cves {
            let ok =
                cve.strip_prefix("CVE-").and_then(|r| r.split_once('-')).is_some_and(|(y, n)| {
                    y.len() == 4
                        && n.len() >= 4
                        && y.bytes().all(|b| b.is_ascii_digit())
                        && n.bytes().all(|b| b.is_ascii_digit())
                });
            if !ok {
                return bad(format!("{cve:?} is not a CVE id (CVE-YYYY-NNNN)"));
            }
        }
        if self.expires <= self.created {
            return bad("expires must be after created".into());
        }
        if self.evidence.test_report_sha256.len() != 64
            || hex::decode(&self.evidence.test_report_sha256).is_err()
        {
            return bad("evidence.test_report_sha256 must be 64 hex digits".into());
        }
        Ok(())
    }

    /// Total declared payload bytes (None if it overflows).
    pub fn payload_total(&self) -> Option<u64> {
        self.payloads.iter().try_fold(0u64, |acc, p| acc.checked_add(p.length))
    }
}

/// Refuse payload names that could act as paths anywhere they are written or shown.
pub fn check_payload_name(name: &str) -> Result<(), BundleError> {
    let unsafe_name = |reason: &str| {
        Err(BundleError::UnsafePayloadName { name: name.to_string(), reason: reason.into() })
    };
    if name.is_empty() {
        return unsafe_name("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return unsafe_name("longer than 128 bytes");
    }
    if name.contains('/') || name.contains('\\') {
        return unsafe_name("contains a path separator");
    }
    if name == "." || name == ".." || name.contains("..") {
        return unsafe_name("contains '..'");
    }
    if name.chars().any(|c| c == '\0' || c.is_control()) {
        return unsafe_name("contains NUL or a control character");
    }
    if name.as_bytes().get(1) == Some(&b':') {
        return unsafe_name("looks like a drive letter (absolute path)");
    }
    Ok(())
}

/// Versions in manifests are written as text (`1.4.2+7`).
pub(crate) mod version_text {
    use crate::model::Version;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Version, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Version, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
