//! Patch bundles: the manifest, its canonical bytes, the container file, detached ed25519
//! signatures, the trust store, the signed catalog listing, rollback approvals and verification.
//! Canonical JSON, signatures, the trust store and the listing are shared with the inventory
//! server through `fieldpatch-proto`; the modules of the same names here re-export and wrap them.
//!
//! Design decisions:
//!
//! * **One file, verified streaming.** A bundle is `magic | format version | manifest | signatures |
//!   payloads` (see [`container`]). Every length is checked against the file size and a sane limit
//!   *before* anything is allocated, the signatures are checked before a payload byte is hashed,
//!   and payloads are hashed chunk by chunk, so [`verify_file`] needs a fixed amount of memory for
//!   a bundle of any size.
//! * **Canonical manifest bytes.** Signatures cover the manifest's canonical JSON (sorted keys, no
//!   whitespace, no floats; see [`canonical`]). A manifest that is not byte-for-byte canonical, or
//!   that repeats a key, is refused: two parsers can never disagree about what was signed.
//! * **Domain-separated signatures.** Manifests, rollback approvals, trust-store documents and
//!   catalog listings are signed over `context || bytes` with a distinct context each, so one
//!   signature can never be replayed as another kind.
//! * **The trust root expires and names the catalog.** A trust store may expire (then bundles are
//!   refused, beyond the offline grace, until its rotation is synced), and when it names catalog
//!   keys only the bundle files a catalog listing signed by them names are used ([`listing`],
//!   [`crate::catalog`]).
//! * **Strict signers.** Every signature on a bundle must come from a known, unrevoked key that holds
//!   the required role, and the distinct valid signers must reach the role's threshold (TUF-style).
//!   An unknown or revoked signer rejects the bundle outright: it means the catalog and trust store
//!   disagree, which a technician should hear about rather than have silently ignored.
//! * **The bytes sent are the bytes verified.** [`VerifiedBundle`] owns the payload bytes it hashed
//!   and exposes them read-only; the flash pipeline takes them from there.
//! * **Offline grace.** An expired bundle is still accepted when it was verified online before it
//!   expired and the configured grace period has not run out; the [`Verdict`] says which rule
//!   allowed it and when it was last verified online.

pub mod canonical;
pub mod container;
mod error;
pub mod input;
pub mod keys;
pub mod listing;
pub mod manifest;
pub mod rollback;
pub mod signature;
pub mod trust;
pub mod verify;

pub use container::{BundleInfo, create_bundle, inspect_file, sign_bundle_file};
pub use error::BundleError;
pub use keys::{KeySource, generate_key_file};
pub use listing::{CatalogListing, ListedBundle, SignedCatalogListing};
pub use manifest::{
    Evidence, Manifest, PayloadEntry, PayloadFormat, RevisionRange, Severity, Target, VersionRange,
};
pub use rollback::{RollbackApproval, SignedRollbackApproval};
pub use signature::{SignatureEntry, key_id};
pub use trust::{
    Role, SignedTrustStore, TrustError, TrustStore, TrustStoreBody, TrustedKey, VendorCertificate,
    certificate_id,
};
pub use verify::{
    AcceptRule, Check, OfflineGrace, Rejected, TargetCheck, Verdict, VerifiedBundle,
    VerifiedPayload, VerifyPolicy, check_target, expiry_rule, trust_rule, verify_file,
    verify_file_manifest,
};
