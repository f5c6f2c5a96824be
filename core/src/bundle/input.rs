//! What a technician may send to a device from a file: a signed bundle (verified as everywhere
//! else) or a bare MCUboot image whose vendor signature verifies against a trusted vendor key.
//! Anything else is refused unless the technician explicitly allows it (and the caller logs that).
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use super::trust::{Role, TrustStore};
use super::verify::{AcceptRule, VerifiedBundle, VerifyPolicy};
use crate::image::mcuboot::McubootImage;
use std::path::Path;

/// Bytes cleared to be sent, with how they were cleared.
#[derive(Debug, Clone)]
pub struct ClearedImage {
    pub bytes: Vec<u8>,
    /// The image hash the device must report for these bytes (MCUboot SHA-256 TLV), when known.
    pub device_hash: Option<Vec<u8>>,
    pub how: Clearance,
}

/// Why the bytes may be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Clearance {
    /// Payload of a verified bundle.
    Bundle { bundle_id: String, bundle_version: String, rule: String },
    /// A bare MCUboot image signed by this trusted vendor key (id).
    VendorSigned { key_id: String },
    /// Not verified; the technician allowed it explicitly.
    Unverified,
}

/// Why a file may not be sent.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("bundle {path} was refused: {reason}")]
    Bundle { path: String, reason: String },
    #[error("bundle {path} has no payload to send")]
    Empty { path: String },
    #[error(
        "refusing to send {path}: it is a bare image that Fieldpatch could not verify ({why}). Use a signed patch bundle, add the vendor's image key to the trust store, or pass --allow-unverified to send it anyway (recorded in the visit log)"
    )]
    Unverified { path: String, why: String },
    #[error("{path} is larger than {limit} bytes: it is not an image or a file Fieldpatch reads")]
    TooLarge { path: String, limit: u64 },
}

impl InputError {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            InputError::Read { .. } => "file_unreadable",
            InputError::Bundle { .. } => "bundle_refused",
            InputError::Empty { .. } => "empty_image",
            InputError::Unverified { .. } => "unverified_image",
            InputError::TooLarge { .. } => "file_too_large",
        }
    }
}

/// Decide what may be sent from `path`. `trust` is needed for bundles and vendor-signed images.
pub fn clear_for_device(
    path: &Path,
    trust: Option<&TrustStore>,
    policy: &VerifyPolicy,
    allow_unverified: bool,
) -> Result<ClearedImage, InputError> {
    let shown = path.display().to_string();
    if super::container::looks_like_bundle(path) {
        let trust = trust.ok_or_else(|| InputError::Bundle {
            path: shown.clone(),
            reason: "no trust store given (pass --trust FILE)".into(),
        })?;
        let b = VerifiedBundle::open(path, trust, policy)
            .map_err(|r| InputError::Bundle { path: shown.clone(), reason: r.error.to_string() })?;
        let p = b.payloads().first().ok_or(InputError::Empty { path: shown })?;
        let rule = b.verdict().rule.as_ref().map_or("", AcceptRule::name).to_string();
        return Ok(ClearedImage {
            bytes: p.bytes().to_vec(),
            device_hash: p.device_image_hash().and_then(|h| hex::decode(h).ok()),
            how: Clearance::Bundle {
                bundle_id: b.manifest().bundle_id.clone(),
                bundle_version: b.manifest().bundle_version.to_string(),
                rule,
            },
        });
    }
    let bytes = read_bounded(path, MAX_IMAGE_FILE)?;
    let vendor = trust.map(|t| t.keys_with_role(Role::VendorImage)).unwrap_or_default();
    let checked = McubootImage::parse(&bytes).map_err(|e| e.to_string()).and_then(|img| {
        img.verify_hash().map_err(|e| e.to_string())?;
        if vendor.is_empty() {
            return Err("no trusted vendor image key".into());
        }
        let keys: Vec<_> = vendor.iter().map(|(_, k)| *k).collect();
        let key = img.verify_ed25519(&keys).map_err(|e| e.to_string())?;
        let id =
            vendor.iter().find(|(_, k)| *k == key).map(|(id, _)| id.clone()).unwrap_or_default();
        Ok((img.image_hash(), id))
    });
    match checked {
        Ok((hash, key_id)) => Ok(ClearedImage {
            bytes: bytes.clone(),
            device_hash: hash,
            how: Clearance::VendorSigned { key_id },
        }),
        Err(_) if allow_unverified => {
            let hash = McubootImage::parse(&bytes).ok().and_then(|i| i.image_hash());
            Ok(ClearedImage { bytes, device_hash: hash, how: Clearance::Unverified })
        }
        Err(why) => Err(InputError::Unverified { path: shown, why }),
    }
}

/// The largest bare image file Fieldpatch reads into memory (bundles are streamed and verified
/// with their own limits).
pub const MAX_IMAGE_FILE: u64 = 64 << 20;

/// Read the file at `path`, refusing one larger than `limit` bytes without reading past it (so a
/// device file such as `/dev/zero` or a huge file cannot exhaust memory).
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, InputError> {
    use std::io::Read;
    let shown = path.display().to_string();
    let file = std::fs::File::open(path)
        .map_err(|source| InputError::Read { path: shown.clone(), source })?;
    let mut bytes = Vec::new();
    // One byte past the limit tells a file of exactly `limit` bytes from a larger one.
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| InputError::Read { path: shown.clone(), source })?;
    if bytes.len() as u64 > limit {
        return Err(InputError::TooLarge { path: shown, limit });
    }
    Ok(bytes)
}
