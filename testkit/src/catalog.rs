//! Signed catalogs: release keys, a trust store and bundles signed by them.
//!
//! Two shapes:
//! - [`BundleKit`]: deterministic keys for every role (three roots, three release keys, two
//!   rollback keys, a revoked and a stranger's key), a trust store over them and helpers that make
//!   manifests and bundle bytes, good or deliberately bad, for the bundle verification tests.
//! - [`CatalogBuilder`] / [`SignedCatalog`]: a catalog folder as a release engineer publishes it,
//!   `trust.json` plus `catalog/<bundle id>.fpb`, for sessions, benchmarks and the demo site;
//!   with catalog keys ([`CatalogBuilder::catalog_key`]) also the signed catalog listing,
//!   `catalog/listing.json` ([`SignedCatalog::write_listing`]). It returns errors instead of
//!   panicking, so the demo can use it.

use chrono::{DateTime, Duration, TimeZone, Utc};
use ed25519_dalek::SigningKey;
use fieldpatch_core::bundle::container::assemble_raw;
use fieldpatch_core::bundle::listing::{self, CatalogListing, SignedCatalogListing};
use fieldpatch_core::bundle::signature::{self, CONTEXT_MANIFEST, SignatureEntry};
use fieldpatch_core::bundle::{
    BundleError, Evidence, Manifest, PayloadEntry, PayloadFormat, RevisionRange, Role, Severity,
    Target, TrustStore, TrustStoreBody, TrustedKey, VerifyPolicy, VersionRange, key_id,
};
use fieldpatch_core::model::Version;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use crate::chain::{labelled_key, random_key};

/// A deterministic key: 32 bytes of `seed`.
pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// Midnight UTC on the given day.
pub fn t(y: i32, m: u32, d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap()
}

/// The key id (as trust stores and approvals name keys) of `k`.
pub fn id(k: &SigningKey) -> String {
    key_id(&k.verifying_key())
}

/// Signatures by `signers` over manifest bytes.
pub fn sign_manifest(manifest_bytes: &[u8], signers: &[&SigningKey]) -> Vec<SignatureEntry> {
    signers.iter().map(|k| signature::sign(CONTEXT_MANIFEST, manifest_bytes, k)).collect()
}

/// A manifest payload entry for `bytes`.
pub fn payload_entry(name: &str, format: PayloadFormat, bytes: &[u8]) -> PayloadEntry {
    PayloadEntry {
        name: name.to_string(),
        format,
        length: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(bytes)),
        flash_offset: None,
    }
}

/// Keys for every role, a trust store and bundle helpers, in a temporary folder.
#[derive(Debug)]
pub struct BundleKit {
    pub dir: tempfile::TempDir,
    pub roots: Vec<SigningKey>,
    pub release: Vec<SigningKey>,
    pub rollback: Vec<SigningKey>,
    pub revoked: SigningKey,
    pub stranger: SigningKey,
    pub trust: TrustStore,
}

impl BundleKit {
    /// Roots `key(1..=3)`, release `key(11..=13)`, rollback `key(21..=22)`, a revoked release key
    /// `key(31)` and a stranger `key(41)`; thresholds 2 for root, release and rollback.
    pub fn new() -> BundleKit {
        let roots = vec![key(1), key(2), key(3)];
        let release = vec![key(11), key(12), key(13)];
        let rollback = vec![key(21), key(22)];
        let revoked = key(31);
        let stranger = key(41);
        let body = BundleKit::body(1, &roots, &release, &rollback, &revoked);
        let trust = TrustStore::provision(body.sign(&[&roots[0], &roots[1]])).unwrap();
        BundleKit {
            dir: tempfile::tempdir().unwrap(),
            roots,
            release,
            rollback,
            revoked,
            stranger,
            trust,
        }
    }

    /// A trust-store body over these keys (unsigned).
    pub fn body(
        version: u64,
        roots: &[SigningKey],
        release: &[SigningKey],
        rollback: &[SigningKey],
        revoked: &SigningKey,
    ) -> TrustStoreBody {
        let mut keys = Vec::new();
        for (i, k) in roots.iter().enumerate() {
            keys.push(TrustedKey::new(&k.verifying_key(), vec![Role::Root], format!("root {i}")));
        }
        for (i, k) in release.iter().enumerate() {
            keys.push(TrustedKey::new(
                &k.verifying_key(),
                vec![Role::Release],
                format!("release {i}"),
            ));
        }
        for (i, k) in rollback.iter().enumerate() {
            keys.push(TrustedKey::new(
                &k.verifying_key(),
                vec![Role::Rollback],
                format!("rollback {i}"),
            ));
        }
        let mut r = TrustedKey::new(&revoked.verifying_key(), vec![Role::Release], "lost laptop");
        r.revoked = true;
        keys.push(r);
        let thresholds = BTreeMap::from([
            (Role::Root, 2),
            (Role::Release, 2),
            (Role::Rollback, 2),
            (Role::VendorImage, 1),
        ]);
        TrustStoreBody {
            version,
            keys,
            thresholds,
            offline_grace_days: None,
            expires: None,
            vendor_certificates: Vec::new(),
        }
    }

    /// A valid manifest for the given payloads (raw format), approved by release[0] and release[1].
    pub fn manifest(&self, payloads: &[(&str, &[u8])]) -> Manifest {
        Manifest {
            schema: 1,
            bundle_id: "acme-sensor-fw-2.1.0".into(),
            bundle_version: 1,
            target: Target {
                vendor: "Acme".into(),
                model: "S-100".into(),
                hardware_revision: RevisionRange { min: Some("2".into()), max: Some("3.1".into()) },
            },
            applies_to: VersionRange {
                min: Version::new(1, 0, 0, 0),
                max: Version::new(2, 0, 5, 0),
            },
            installs: Version::new(2, 1, 0, 0),
            payloads: payloads
                .iter()
                .map(|(name, bytes)| payload_entry(name, PayloadFormat::Raw, bytes))
                .collect(),
            severity: Severity { cvss: Some("9.8".into()), cves: vec!["CVE-2026-1234".into()] },
            created: t(2026, 1, 1),
            expires: t(2026, 6, 1),
            evidence: Evidence {
                test_report_sha256: hex::encode(Sha256::digest(b"test report")),
                approvers: vec![id(&self.release[0]), id(&self.release[1])],
            },
            release_notes: "Fixes the boot-loop on low battery.".into(),
        }
    }

    /// Signatures by `signers` over manifest bytes.
    pub fn sign(&self, manifest_bytes: &[u8], signers: &[&SigningKey]) -> Vec<SignatureEntry> {
        sign_manifest(manifest_bytes, signers)
    }

    /// Bundle bytes: `manifest_bytes` signed by `signers`, then `payloads`.
    pub fn raw(
        &self,
        manifest_bytes: &[u8],
        signers: &[&SigningKey],
        payloads: &[&[u8]],
    ) -> Vec<u8> {
        assemble_raw(manifest_bytes, &self.sign(manifest_bytes, signers), payloads)
    }

    /// A valid bundle's bytes for `manifest` with its payloads, signed by release[0] and [1].
    pub fn good(&self, manifest: &Manifest, payloads: &[&[u8]]) -> Vec<u8> {
        let mb = manifest.canonical_bytes().unwrap();
        self.raw(&mb, &[&self.release[0], &self.release[1]], payloads)
    }

    /// Write `bytes` as `name` in the kit's folder.
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// A policy at 2026-03-01, online.
    pub fn policy(&self) -> VerifyPolicy {
        VerifyPolicy { now: t(2026, 3, 1), offline_grace: None }
    }
}

impl Default for BundleKit {
    fn default() -> Self {
        BundleKit::new()
    }
}

/// Errors writing a catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

/// One bundle of a [`SignedCatalog`]: one payload for one model.
#[derive(Debug, Clone)]
pub struct BundleSpec<'a> {
    pub id: &'a str,
    pub model: &'a str,
    /// The versions it applies to, inclusive.
    pub applies: (Version, Version),
    pub installs: Version,
    pub cvss: &'a str,
    pub format: PayloadFormat,
    pub payload: &'a [u8],
}

/// How a [`SignedCatalog`] is made. Every setting has a default; see each method.
#[derive(Debug, Clone)]
pub struct CatalogBuilder {
    roots: Vec<(SigningKey, String)>,
    release: Vec<(SigningKey, String)>,
    thresholds: BTreeMap<Role, u32>,
    vendor: String,
    payload_name: String,
    cves: Vec<String>,
    test_report: Vec<u8>,
    created: Option<DateTime<Utc>>,
    expires: Option<DateTime<Utc>>,
    release_note: String,
    offline_grace_days: Option<u32>,
    catalog: Vec<(SigningKey, String)>,
    trust_expires: Option<DateTime<Utc>>,
    vendor_certificates: Vec<fieldpatch_core::bundle::VendorCertificate>,
}

impl Default for CatalogBuilder {
    fn default() -> Self {
        CatalogBuilder::new()
    }
}

impl CatalogBuilder {
    /// Defaults: one fresh root key and two fresh release keys (thresholds root 1, release 2),
    /// vendor `Lab`, payload `image.bin`, no CVEs, valid from a day ago for 30 days.
    pub fn new() -> CatalogBuilder {
        CatalogBuilder {
            roots: vec![],
            release: vec![],
            thresholds: BTreeMap::from([(Role::Root, 1), (Role::Release, 2)]),
            vendor: "Lab".into(),
            payload_name: "image.bin".into(),
            cves: vec![],
            test_report: b"test report".to_vec(),
            created: None,
            expires: None,
            release_note: "release".into(),
            offline_grace_days: None,
            catalog: vec![],
            trust_expires: None,
            vendor_certificates: vec![],
        }
    }

    /// Add a vendor's X.509 certificate (PEM) to the trust store: CMS-signed images (`.swu`) are
    /// then checked against it. None by default.
    pub fn vendor_certificate(mut self, pem: &[u8], label: &str) -> Self {
        let pem = String::from_utf8_lossy(pem);
        let cert = fieldpatch_core::bundle::VendorCertificate::new(&pem, label)
            .expect("a PEM certificate");
        self.vendor_certificates.push(cert);
        self
    }

    /// Add a catalog key: the trust store then names catalog keys, so the catalog folder needs a
    /// listing signed by them ([`SignedCatalog::write_listing`]). None by default.
    pub fn catalog_key(mut self, key: SigningKey, label: &str) -> Self {
        self.catalog.push((key, label.into()));
        self
    }

    /// When the trust store expires (it does not by default).
    pub fn trust_expires(mut self, expires: DateTime<Utc>) -> Self {
        self.trust_expires = Some(expires);
        self
    }

    /// Add a root key (the first one given replaces the default fresh root key).
    pub fn root(mut self, key: SigningKey, label: &str) -> Self {
        self.roots.push((key, label.into()));
        self
    }

    /// Add a release key; every release key signs every bundle (the first one given replaces the
    /// two default fresh release keys).
    pub fn release(mut self, key: SigningKey, label: &str) -> Self {
        self.release.push((key, label.into()));
        self
    }

    /// How many keys of `role` must sign.
    pub fn threshold(mut self, role: Role, n: u32) -> Self {
        self.thresholds.insert(role, n);
        self
    }

    /// The vendor every bundle targets.
    pub fn vendor(mut self, vendor: &str) -> Self {
        self.vendor = vendor.into();
        self
    }

    /// The name of each bundle's one payload.
    pub fn payload_name(mut self, name: &str) -> Self {
        self.payload_name = name.into();
        self
    }

    /// The CVEs every bundle fixes.
    pub fn cves(mut self, cves: &[&str]) -> Self {
        self.cves = cves.iter().map(|c| c.to_string()).collect();
        self
    }

    /// The test report whose hash is the evidence.
    pub fn test_report(mut self, bytes: &[u8]) -> Self {
        self.test_report = bytes.to_vec();
        self
    }

    /// The validity period of every bundle.
    pub fn valid(mut self, created: DateTime<Utc>, expires: DateTime<Utc>) -> Self {
        self.created = Some(created);
        self.expires = Some(expires);
        self
    }

    /// Release notes read `<model> <installs>: <note>`.
    /// The trust store's signed offline-grace policy, in days (none by default).
    pub fn offline_grace_days(mut self, days: u32) -> Self {
        self.offline_grace_days = Some(days);
        self
    }

    pub fn release_note(mut self, note: &str) -> Self {
        self.release_note = note.into();
        self
    }

    /// Write the trust store to `<dir>/trust.json` (pretty JSON) and make `<dir>/catalog/`.
    /// Only public keys go to disk.
    pub fn write(mut self, dir: &Path) -> Result<SignedCatalog, CatalogError> {
        if self.roots.is_empty() {
            self.roots.push((random_key(), "root".into()));
        }
        if self.release.is_empty() {
            self.release.push((random_key(), "release A".into()));
            self.release.push((random_key(), "release B".into()));
        }
        let mut keys = Vec::new();
        for (k, label) in &self.roots {
            keys.push(TrustedKey::new(&k.verifying_key(), vec![Role::Root], label.clone()));
        }
        for (k, label) in &self.release {
            keys.push(TrustedKey::new(&k.verifying_key(), vec![Role::Release], label.clone()));
        }
        for (k, label) in &self.catalog {
            keys.push(TrustedKey::new(&k.verifying_key(), vec![Role::Catalog], label.clone()));
        }
        let root_keys: Vec<&SigningKey> = self.roots.iter().map(|(k, _)| k).collect();
        let trust = TrustStore::provision(
            TrustStoreBody {
                version: 1,
                keys,
                thresholds: self.thresholds.clone(),
                offline_grace_days: self.offline_grace_days,
                expires: self.trust_expires,
                vendor_certificates: self.vendor_certificates.clone(),
            }
            .sign(&root_keys),
        )?;
        let catalog_dir = dir.join("catalog");
        std::fs::create_dir_all(&catalog_dir)
            .map_err(|source| CatalogError::Write { path: catalog_dir.clone(), source })?;
        let trust_path = dir.join("trust.json");
        let doc = serde_json::to_vec_pretty(trust.document()).expect("a trust store serializes");
        write(&trust_path, &doc)?;
        let now = Utc::now();
        Ok(SignedCatalog {
            created: self.created.unwrap_or(now - Duration::days(1)),
            expires: self.expires.unwrap_or(now + Duration::days(30)),
            settings: self,
            dir: dir.to_path_buf(),
            catalog_dir,
            trust_path,
            trust,
        })
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), CatalogError> {
    std::fs::write(path, bytes)
        .map_err(|source| CatalogError::Write { path: path.to_path_buf(), source })
}

/// A trust store and a catalog folder, and the keys that sign bundles into it.
#[derive(Debug)]
pub struct SignedCatalog {
    /// The folder holding `trust.json` and `catalog/`.
    pub dir: PathBuf,
    /// Where the bundles go: `<bundle id>.fpb`.
    pub catalog_dir: PathBuf,
    /// The trust store document.
    pub trust_path: PathBuf,
    /// The trust store, provisioned.
    pub trust: TrustStore,
    settings: CatalogBuilder,
    created: DateTime<Utc>,
    expires: DateTime<Utc>,
}

impl SignedCatalog {
    /// The release keys that sign every bundle.
    pub fn release_keys(&self) -> Vec<&SigningKey> {
        self.settings.release.iter().map(|(k, _)| k).collect()
    }

    /// The manifest [`SignedCatalog::bundle`] signs for `b`.
    pub fn manifest(&self, b: &BundleSpec<'_>) -> Manifest {
        let s = &self.settings;
        Manifest {
            schema: 1,
            bundle_id: b.id.into(),
            bundle_version: 1,
            target: Target {
                vendor: s.vendor.clone(),
                model: b.model.into(),
                hardware_revision: RevisionRange::default(),
            },
            applies_to: VersionRange { min: b.applies.0, max: b.applies.1 },
            installs: b.installs,
            payloads: vec![payload_entry(&s.payload_name, b.format, b.payload)],
            severity: Severity { cvss: Some(b.cvss.into()), cves: s.cves.clone() },
            created: self.created,
            expires: self.expires,
            evidence: Evidence {
                test_report_sha256: hex::encode(Sha256::digest(&s.test_report)),
                approvers: s.release.iter().map(|(k, _)| id(k)).collect(),
            },
            release_notes: format!("{} {}: {}", b.model, b.installs, s.release_note),
        }
    }

    /// Sign `b` with every release key and write it as `<catalog>/<id>.fpb`; returns its path.
    pub fn bundle(&self, b: &BundleSpec<'_>) -> Result<PathBuf, CatalogError> {
        let mb = self.manifest(b).canonical_bytes()?;
        let sigs = sign_manifest(&mb, &self.release_keys());
        let path = self.catalog_dir.join(format!("{}.fpb", b.id));
        write(&path, &assemble_raw(&mb, &sigs, &[b.payload]))?;
        Ok(path)
    }

    /// The catalog keys that sign listings.
    pub fn catalog_keys(&self) -> Vec<&SigningKey> {
        self.settings.catalog.iter().map(|(k, _)| k).collect()
    }

    /// A listing of every bundle now in the catalog folder (each verified against the trust
    /// store as of now), at `version`, expiring at `expires`, signed by every catalog key.
    pub fn listing(
        &self,
        version: u64,
        expires: DateTime<Utc>,
    ) -> Result<SignedCatalogListing, CatalogError> {
        let bundles = listing::list_folder(&self.catalog_dir, &self.trust, &VerifyPolicy::now())?;
        let body =
            CatalogListing { version, expires, trust_store_version: self.trust.version(), bundles };
        Ok(body.sign(&self.catalog_keys()))
    }

    /// Write [`SignedCatalog::listing`] as `<catalog>/listing.json` (pretty JSON); returns its
    /// path.
    pub fn write_listing(
        &self,
        version: u64,
        expires: DateTime<Utc>,
    ) -> Result<PathBuf, CatalogError> {
        let doc = self.listing(version, expires)?;
        let path = listing::listing_path(&self.catalog_dir);
        write(&path, &serde_json::to_vec_pretty(&doc).expect("a listing serializes"))?;
        Ok(path)
    }
}
