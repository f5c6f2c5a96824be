//! The bundle layer's one error type: every way a bundle, a signature, a trust store or a
//! rollback approval can be refused, each with a stable code and advice.
//!
//! Signature and trust-store checks run in `fieldpatch-proto` ([`TrustError`]); their errors
//! become the variants of the same name here (same codes, the bundle layer's advice), and the
//! rest (expiry of the store, catalog listings) are carried as [`BundleError::Trust`].

use crate::model::Version;
use fieldpatch_proto::trust::TrustError;

/// Everything that can make a bundle, a signature, a trust store or a rollback approval
/// unacceptable. Each message says what failed and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "not a Fieldpatch bundle (the file does not start with the bundle magic): check that you picked the right file"
    )]
    BadMagic,
    #[error(
        "bundle format version {found} is not supported (this Fieldpatch reads version {supported}): update Fieldpatch"
    )]
    UnsupportedFormatVersion { found: u32, supported: u32 },
    #[error(
        "bundle is truncated: the {what} needs {needed} more bytes but only {available} remain; download the bundle again"
    )]
    Truncated { what: String, needed: u64, available: u64 },
    #[error(
        "{field} is {value} bytes, over the limit of {limit}: the bundle is corrupt or hostile; do not use it"
    )]
    LengthTooLarge { field: String, value: u64, limit: u64 },
    #[error(
        "the manifest declares {declared} payload bytes but the file holds {actual}: the manifest lies about payload lengths; do not use this bundle"
    )]
    PayloadLengthMismatch { declared: u64, actual: u64 },
    #[error("manifest is not valid: {reason}; rebuild the bundle with `fieldpatch bundle create`")]
    InvalidManifest { reason: String },
    #[error(
        "{document} repeats the key {key:?}: a repeated key can hide what was signed, so it is refused; rebuild it"
    )]
    DuplicateKey { document: String, key: String },
    #[error(
        "{document} is not in canonical form (sorted keys, no whitespace, no floats): it was edited after signing or made by another tool; rebuild and re-sign it"
    )]
    NonCanonical { document: String },
    #[error(
        "payload name {name:?} is not allowed ({reason}): payload names must be plain file names"
    )]
    UnsafePayloadName { name: String, reason: String },
    #[error("payload {name:?} appears twice in the manifest: payload names must be unique")]
    DuplicatePayloadName { name: String },
    #[error(
        "payload {name:?} does not match its manifest digest (expected sha256 {expected}, got {actual}): the bundle was corrupted or tampered with; download it again"
    )]
    PayloadHashMismatch { name: String, expected: String, actual: String },
    #[error(
        "payload {name:?} is {length} bytes, over the {limit} bytes Fieldpatch holds in memory for flashing"
    )]
    PayloadTooLarge { name: String, length: u64, limit: u64 },
    #[error("signature block is not valid: {reason}; re-sign the bundle")]
    InvalidSignatureBlock { reason: String },
    #[error("{document} carries no signatures: sign it with `fieldpatch bundle sign`")]
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
    #[error(
        "manifest lists {key_id} as an approver but that key did not sign it: re-sign with that key or correct the evidence"
    )]
    ApproverDidNotSign { key_id: String },
    #[error(
        "bundle expired at {expires} and is past its offline grace ({reason}); sync the catalog online to get a current bundle"
    )]
    Expired { expires: String, reason: String },
    #[error(
        "bundle was created at {created}, which is in the future for this machine: check the laptop's clock"
    )]
    NotYetValid { created: String },
    #[error("trust store is not valid: {reason}")]
    InvalidTrustStore { reason: String },
    #[error(
        "trust store version {offered} does not replace the current version {current}: a trust store can only move forward"
    )]
    TrustStoreRollback { current: u64, offered: u64 },
    #[error(
        "the device does not report its {field}: identify the device again before planning this patch"
    )]
    DeviceIdentityIncomplete { field: String },
    #[error(
        "bundle targets {field} {expected:?} but the device is {actual:?}: pick a bundle for this device"
    )]
    WrongTarget { field: String, expected: String, actual: String },
    #[error(
        "device hardware revision {actual} is outside the bundle's range {range}: pick a bundle for this hardware revision"
    )]
    HardwareRevisionOutOfRange { actual: String, range: String },
    #[error(
        "bundle applies to installed versions {range} but the device runs {installed}: an intermediate update may be needed first"
    )]
    InstalledVersionNotApplicable { installed: Version, range: String },
    #[error(
        "bundle would downgrade the device from {from} to {to} and no signed rollback approval names that downgrade: ask the rollback approvers for one"
    )]
    DowngradeNotApproved { from: Version, to: Version },
    #[error("rollback approval is not valid: {reason}")]
    InvalidRollbackApproval { reason: String },
    #[error("signing key problem: {reason}")]
    Key { reason: String },
    #[error("payload {name:?} is not a valid MCUboot image: {source}")]
    Image {
        name: String,
        #[source]
        source: crate::image::mcuboot::McubootError,
    },
    #[error("payload {name:?} is not a valid DFU file: {source}")]
    DfuImage {
        name: String,
        #[source]
        source: crate::image::dfu_file::DfuFileError,
    },
    #[error("payload {name:?} is not a valid SWUpdate image: {source}")]
    SwuImage {
        name: String,
        #[source]
        source: crate::image::swu::SwuError,
    },
    #[error("payload {name:?} is not a valid ESP payload: {source}")]
    EspImage {
        name: String,
        #[source]
        source: Box<crate::image::esp::EspImageError>,
    },
    /// A trust-root refusal without a bundle-specific twin: an expired trust store, a catalog
    /// listing that does not hold.
    #[error(transparent)]
    Trust(TrustError),
}

impl From<TrustError> for BundleError {
    fn from(e: TrustError) -> Self {
        match e {
            TrustError::DuplicateKey { document, key } => {
                BundleError::DuplicateKey { document, key }
            }
            TrustError::LengthTooLarge { field, value, limit } => {
                BundleError::LengthTooLarge { field, value, limit }
            }
            TrustError::Unsigned { document } => BundleError::Unsigned { document },
            TrustError::UnknownKey { document, key_id } => {
                BundleError::UnknownKey { document, key_id }
            }
            TrustError::RevokedKey { document, key_id } => {
                BundleError::RevokedKey { document, key_id }
            }
            TrustError::KeyLacksRole { document, key_id, role } => {
                BundleError::KeyLacksRole { document, key_id, role }
            }
            TrustError::BadSignature { document, key_id } => {
                BundleError::BadSignature { document, key_id }
            }
            TrustError::ThresholdNotMet { document, role, have, need } => {
                BundleError::ThresholdNotMet { document, role, have, need }
            }
            TrustError::InvalidTrustStore { reason } => BundleError::InvalidTrustStore { reason },
            TrustError::TrustStoreRollback { current, offered } => {
                BundleError::TrustStoreRollback { current, offered }
            }
            other => BundleError::Trust(other),
        }
    }
}

impl BundleError {
    /// A stable machine-readable code (snake_case), for `--json` and the app bridge.
    pub fn code(&self) -> &'static str {
        match self {
            BundleError::Io { .. } => "io",
            BundleError::BadMagic => "bad_magic",
            BundleError::UnsupportedFormatVersion { .. } => "unsupported_format_version",
            BundleError::Truncated { .. } => "truncated",
            BundleError::LengthTooLarge { .. } => "length_too_large",
            BundleError::PayloadLengthMismatch { .. } => "payload_length_mismatch",
            BundleError::InvalidManifest { .. } => "invalid_manifest",
            BundleError::DuplicateKey { .. } => "duplicate_key",
            BundleError::NonCanonical { .. } => "non_canonical",
            BundleError::UnsafePayloadName { .. } => "unsafe_payload_name",
            BundleError::DuplicatePayloadName { .. } => "duplicate_payload_name",
            BundleError::PayloadHashMismatch { .. } => "payload_hash_mismatch",
            BundleError::PayloadTooLarge { .. } => "payload_too_large",
            BundleError::InvalidSignatureBlock { .. } => "invalid_signature_block",
            BundleError::Unsigned { .. } => "unsigned",
            BundleError::UnknownKey { .. } => "unknown_key",
            BundleError::RevokedKey { .. } => "revoked_key",
            BundleError::KeyLacksRole { .. } => "key_lacks_role",
            BundleError::BadSignature { .. } => "bad_signature",
            BundleError::ThresholdNotMet { .. } => "threshold_not_met",
            BundleError::ApproverDidNotSign { .. } => "approver_did_not_sign",
            BundleError::Expired { .. } => "expired",
            BundleError::NotYetValid { .. } => "not_yet_valid",
            BundleError::InvalidTrustStore { .. } => "invalid_trust_store",
            BundleError::TrustStoreRollback { .. } => "trust_store_rollback",
            BundleError::DeviceIdentityIncomplete { .. } => "device_identity_incomplete",
            BundleError::WrongTarget { .. } => "wrong_target",
            BundleError::HardwareRevisionOutOfRange { .. } => "hardware_revision_out_of_range",
            BundleError::InstalledVersionNotApplicable { .. } => "installed_version_not_applicable",
            BundleError::DowngradeNotApproved { .. } => "downgrade_not_approved",
            BundleError::InvalidRollbackApproval { .. } => "invalid_rollback_approval",
            BundleError::Key { .. } => "key",
            BundleError::Image { .. } => "image",
            BundleError::DfuImage { .. } => "dfu_image",
            BundleError::SwuImage { source, .. } => source.code(),
            BundleError::EspImage { source, .. } => source.code(),
            BundleError::Trust(e) => e.code(),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        BundleError::Io { context: context.into(), source }
    }
}
