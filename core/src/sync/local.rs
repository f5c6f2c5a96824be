//! [`SyncLocal`] over the laptop's real local store, keyring and data directory.
//!
//! Design decisions:
//!
//! * **Files next to the store.** Pulled bundle files go to `<data_dir>/catalog/<sha256>.fpb` and
//!   the trust store to `<data_dir>/trust.json`, the layout `fieldpatch plan --catalog --trust`
//!   and the batch planner read. Files are written to a temporary name, synced and renamed, so a
//!   file that exists is complete; naming bundles by hash makes "do we have it" a file check.
//! * **One transaction for the inventory.** Sites, devices, work orders and catalog entries are
//!   replaced together ([`Store::replace_inventory`]); the trust store and bundle files are written
//!   before it (a crash leaves at worst verified extra files) and stale bundle files are removed
//!   after it. The `catalog/` folder belongs to sync: it mirrors the published catalog.
//! * **Catalog verdicts.** Each pulled bundle is verified against the pulled trust store before it
//!   is recorded, so the local catalog says which bundles the planner will accept and why not.
//! * **The signed catalog listing.** When the trust store in force after the pull names catalog
//!   keys, the pull must carry a listing signed by their threshold for that trust-store version,
//!   not expired, and not older than the one accepted before (the same version only if
//!   identical); every listed bundle must be in the pull. Otherwise nothing of the pull is
//!   written. A pulled bundle the listing does not name by hash is refused: not stored, and
//!   recorded as refused with the reason. The accepted listing is kept as
//!   `<data_dir>/catalog/listing.json`, where [`crate::catalog`] reads it.
//! * **The server key is pinned** in the store on the first pull; a later pull announcing another
//!   key is refused rather than silently re-pinned.
//! * **Credentials only in the keyring.** Sealed device credentials are opened with the
//!   technician key and written with [`Credentials::set`]; the store keeps only the *names* sync
//!   provisioned (`sync.provisioned_credentials`), so credentials of revoked assignments can be
//!   deleted at the next sync without touching credentials the technician set by hand. The names
//!   are recorded before the keyring is written, so an interrupted sync never loses track of one.

use super::client::{LogCursor, SyncLocal};
use super::sealed::{SealError, SealedCredential};
use super::wire::{CatalogEntry, PullResponse, SignedCheckpoint};
use crate::bundle::listing::{self, SignedCatalogListing};
use crate::bundle::trust::{SignedTrustStore, TrustError, TrustStore};
use crate::bundle::verify::{VerifyPolicy, verify_file};
use crate::catalog::BUNDLE_EXTENSION;
use crate::credentials::{CredentialError, CredentialName, Credentials, Secret};
use crate::store::{
    BundleRecord, BundleVerdict, InventoryDevice, SiteRecord, Store, StoreError, WorkOrderRecord,
};
use crate::visitlog::{Event, LogError, continuity};
use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// Store fact: the inventory server's base URL, remembered from `fieldpatch sync --server`.
pub const SERVER_META: &str = "sync.server";
/// Store fact: the private CA (PEM) the inventory server's certificate is checked against, when
/// it is not signed by a CA the system trusts.
pub const SERVER_CA_META: &str = "sync.server_ca_pem";
/// Store fact: the pinned hex key the server countersigns checkpoints with.
pub const SERVER_KEY_META: &str = "sync.server_key";
/// Store fact: JSON list of the credential names sync wrote to the keyring (never values).
pub const PROVISIONED_META: &str = "sync.provisioned_credentials";
/// Folder of pulled bundle files inside the data directory.
pub const CATALOG_DIR: &str = "catalog";
/// The pulled trust store inside the data directory.
pub const TRUST_FILE: &str = "trust.json";

/// Errors of the laptop side of sync. Never carry a secret.
#[derive(Debug, thiserror::Error)]
pub enum LocalSyncError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error(
        "cannot write {path}: {source}; check free space and permissions of the data directory"
    )]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "the inventory server now announces key {announced}, but this laptop pinned {pinned}: check the server address; if the inventory team rotated the key, pass the new one with --server-key"
    )]
    ServerKeyChanged { pinned: String, announced: String },
    #[error(
        "the inventory sent a credential of kind {kind:?} for device {device:?} that cannot be named in the keyring; ask the inventory team to fix it"
    )]
    BadCredentialName { device: String, kind: String },
    #[error("the stored list of sync-provisioned credentials is unreadable: {0}")]
    Corrupt(String),
    #[error(
        "the inventory's trust store was refused and the pinned one stays in force: {reason}. Ask the inventory team to publish a rotation signed by the current root keys"
    )]
    TrustStoreRefused { reason: String },
    #[error(
        "the inventory's catalog listing was refused, so this pull was not applied (the local catalog and trust store are unchanged): {0}. Ask the inventory team to publish a current listing signed by the catalog keys"
    )]
    ListingRefused(TrustError),
}

impl LocalSyncError {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            LocalSyncError::Store(e) => e.code(),
            LocalSyncError::Log(e) => e.code(),
            LocalSyncError::Credential(e) => e.code(),
            LocalSyncError::Seal(_) => "sealed_credential",
            LocalSyncError::Io { .. } => "io",
            LocalSyncError::ServerKeyChanged { .. } => "server_key_changed",
            LocalSyncError::BadCredentialName { .. } => "credential_name",
            LocalSyncError::Corrupt(_) => "store_corrupt",
            LocalSyncError::TrustStoreRefused { .. } => "trust_store_refused",
            LocalSyncError::ListingRefused(e) => match e {
                TrustError::ListingMissing
                | TrustError::ListingTrustVersion { .. }
                | TrustError::ListingExpired { .. }
                | TrustError::ListingRollback { .. }
                | TrustError::ListingConflict { .. }
                | TrustError::ListedBundleMissing { .. }
                | TrustError::NoCatalogKeys => e.code(),
                _ => "catalog_listing_refused",
            },
        }
    }
}

/// The laptop's store, keyring and data directory, as sync sees them.
#[derive(Debug, Clone)]
pub struct StoreSync {
    store: Store,
    credentials: Credentials,
    data_dir: PathBuf,
}

impl StoreSync {
    pub fn new(store: Store, credentials: Credentials, data_dir: impl Into<PathBuf>) -> Self {
        Self { store, credentials, data_dir: data_dir.into() }
    }

    /// The local store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Where pulled bundle files are kept (`--catalog` for `fieldpatch plan`).
    pub fn catalog_dir(&self) -> PathBuf {
        self.data_dir.join(CATALOG_DIR)
    }

    /// Decide what to do with the trust store a server published: `Some(store)` to write (the
    /// first one, or a valid rotation of the pinned one, not already expired at `now`), `None`
    /// when it is the pinned one already. Anything else is refused and the pinned store stays in
    /// force.
    fn accept_trust_store(
        &self,
        doc: &serde_json::Value,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<TrustStore>, LocalSyncError> {
        let refused = |reason: String| LocalSyncError::TrustStoreRefused { reason };
        let offered = SignedTrustStore::from_value(doc).map_err(|e| refused(e.to_string()))?;
        let path = self.trust_path();
        let accepted = if !path.exists() {
            // First sync: the store becomes the anchor if it is signed by its own root threshold.
            TrustStore::provision(offered).map_err(|e| refused(e.to_string()))?
        } else {
            let pinned = self.pinned_trust_store()?;
            if offered == *pinned.document() {
                return Ok(None);
            }
            if offered.store.version == pinned.version() {
                return Err(refused(format!(
                    "it differs from the pinned trust store but has the same version {}; a new trust store needs a higher version and the current root keys' signatures",
                    pinned.version()
                )));
            }
            pinned.rotate(offered).map_err(|e| refused(e.to_string()))?
        };
        // A store that is already expired would only stop every bundle: keep the pinned one.
        accepted.check_current(now).map_err(|e| refused(e.to_string()))?;
        Ok(Some(accepted))
    }

    /// The pinned trust store (it must exist).
    fn pinned_trust_store(&self) -> Result<TrustStore, LocalSyncError> {
        let path = self.trust_path();
        TrustStore::load(&path).map_err(|e| LocalSyncError::TrustStoreRefused {
            reason: format!("the pinned trust store {} cannot be read: {e}", path.display()),
        })
    }

    /// Where the accepted catalog listing is kept.
    pub fn listing_path(&self) -> PathBuf {
        listing::listing_path(&self.catalog_dir())
    }

    /// Decide on the pull's catalog listing under the trust store in force after the pull:
    /// `None` when that store names no catalog keys (today's behaviour), else the listing to keep,
    /// after checking its signatures, trust-store version, expiry at `now`, that it does not go
    /// back from the listing accepted before, and that the pull carries every bundle it lists
    /// for every site or for one of the technician's assigned sites.
    fn accept_listing(
        &self,
        pull: &PullResponse,
        in_force: Option<&TrustStore>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<SignedCatalogListing>, LocalSyncError> {
        let Some(trust) = in_force.filter(|t| t.requires_listing()) else { return Ok(None) };
        let refused = LocalSyncError::ListingRefused;
        let doc = pull.catalog_listing.as_ref().ok_or(refused(TrustError::ListingMissing))?;
        let offered = SignedCatalogListing::from_value(doc).map_err(refused)?;
        offered.verify(trust.proto()).map_err(refused)?;
        offered.check_current(now).map_err(refused)?;
        let path = self.listing_path();
        let previous = if path.exists() {
            Some(listing::load(&path).map_err(|e| {
                LocalSyncError::Corrupt(format!(
                    "the accepted catalog listing {} cannot be read ({e}), so a newer one cannot be told from an older one; restore it from a backup or re-provision the laptop",
                    path.display()
                ))
            })?)
        } else {
            None
        };
        offered.check_successor(previous.as_ref()).map_err(refused)?;
        // A bundle published to some sites only reaches the technicians assigned to one of them.
        let assigned: Vec<&str> = pull.sites.iter().map(|s| s.id.as_str()).collect();
        for listed in offered.listing.bundles.iter().filter(|l| l.reaches(&assigned)) {
            let carried = pull.catalog.iter().any(|e| {
                e.sha256.eq_ignore_ascii_case(&listed.sha256)
                    && e.bundle_id == listed.bundle_id
                    && e.size == listed.size
            });
            if !carried {
                return Err(refused(TrustError::ListedBundleMissing {
                    bundle_id: listed.bundle_id.clone(),
                    sha256: listed.sha256.clone(),
                    place: "the inventory's catalog".into(),
                    advice: "the server withholds or replaced a listed bundle".into(),
                }));
            }
        }
        Ok(Some(offered))
    }

    /// Where the pulled trust store is kept (`--trust` for `fieldpatch plan`).
    pub fn trust_path(&self) -> PathBuf {
        self.data_dir.join(TRUST_FILE)
    }

    fn bundle_path(&self, sha256: &str) -> PathBuf {
        self.catalog_dir().join(format!("{}.{BUNDLE_EXTENSION}", sha256.to_ascii_lowercase()))
    }

    /// The remembered server URL, if any.
    pub async fn server(&self) -> Result<Option<String>, LocalSyncError> {
        Ok(self.store.meta(SERVER_META).await?)
    }

    /// The private CA (PEM) remembered for the server, if any.
    pub async fn server_ca(&self) -> Result<Option<Vec<u8>>, LocalSyncError> {
        Ok(self.store.meta(SERVER_CA_META).await?.map(String::into_bytes))
    }

    /// Remember (or, with `None`, forget) the private CA the server's certificate is checked
    /// against.
    pub async fn remember_server_ca(&self, pem: Option<&str>) -> Result<(), LocalSyncError> {
        Ok(self.store.set_meta(SERVER_CA_META, pem.unwrap_or("")).await?)
    }

    /// Remember the server URL for the next `fieldpatch sync`.
    pub async fn remember_server(&self, url: &str) -> Result<(), LocalSyncError> {
        Ok(self.store.set_meta(SERVER_META, url.trim_end_matches('/')).await?)
    }

    /// The pinned server key, if a sync already pinned one.
    pub async fn pinned_server_key(&self) -> Result<Option<String>, LocalSyncError> {
        Ok(self.store.meta(SERVER_KEY_META).await?)
    }

    /// Pin `key` as the server's checkpoint key (replacing any earlier pin).
    pub async fn pin_server_key(&self, key: &str) -> Result<(), LocalSyncError> {
        Ok(self.store.set_meta(SERVER_KEY_META, &key.to_ascii_lowercase()).await?)
    }

    /// Names of the credentials sync wrote to the keyring.
    pub async fn provisioned(&self) -> Result<BTreeSet<String>, LocalSyncError> {
        match self.store.meta(PROVISIONED_META).await? {
            None => Ok(BTreeSet::new()),
            Some(text) => {
                serde_json::from_str(&text).map_err(|e| LocalSyncError::Corrupt(e.to_string()))
            }
        }
    }

    async fn set_provisioned(&self, names: &BTreeSet<String>) -> Result<(), LocalSyncError> {
        let text =
            serde_json::to_string(names).map_err(|e| LocalSyncError::Corrupt(e.to_string()))?;
        Ok(self.store.set_meta(PROVISIONED_META, &text).await?)
    }

    /// Verify every pulled bundle file against the pulled trust store, for the local catalog;
    /// bundles the accepted listing does not name are recorded as refused (they were not stored).
    fn verdicts(
        &self,
        pull: &PullResponse,
        listing: Option<&SignedCatalogListing>,
    ) -> Vec<BundleRecord> {
        let trust = match pull.trust_store.as_ref() {
            None => Err("the inventory has published no trust store".to_string()),
            Some(_) => TrustStore::load(&self.trust_path()).map_err(|e| e.to_string()),
        };
        let policy = VerifyPolicy { now: self.store.clock().now(), offline_grace: None };
        pull.catalog
            .iter()
            .map(|entry| {
                let (verdict, verdict_detail) = match (&trust, not_listed(listing, entry)) {
                    (_, Some(e)) => (BundleVerdict::Refused, format!("{e} and was not stored")),
                    (Err(why), None) => (BundleVerdict::Unverified, why.clone()),
                    (Ok(trust), None) => {
                        match verify_file(&self.bundle_path(&entry.sha256), trust, &policy) {
                            Ok(v) => (BundleVerdict::Verified, format!("{:?}", v.rule)),
                            Err(rejected) => (BundleVerdict::Refused, rejected.error.to_string()),
                        }
                    }
                };
                BundleRecord {
                    bundle_id: entry.bundle_id.clone(),
                    version: entry.version.clone(),
                    manifest: entry.manifest.clone(),
                    sha256: entry.sha256.to_ascii_lowercase(),
                    verdict,
                    verdict_detail,
                }
            })
            .collect()
    }
}

/// Why `entry` is refused under the accepted `listing` (`None` when no listing is required, or it
/// names the entry's hash with the same bundle id and size).
fn not_listed(listing: Option<&SignedCatalogListing>, entry: &CatalogEntry) -> Option<TrustError> {
    let listing = listing?;
    let detail = match listing.listing.bundle(&entry.sha256) {
        None => match listing.listing.bundles.iter().find(|b| b.bundle_id == entry.bundle_id) {
            Some(b) => format!(" (it lists {} with sha256 {})", b.bundle_id, b.sha256),
            None => String::new(),
        },
        Some(b) if b.bundle_id != entry.bundle_id => {
            format!(" (that hash is listed as {})", b.bundle_id)
        }
        Some(b) if b.size != entry.size => format!(" (that hash is listed with {} bytes)", b.size),
        Some(_) => return None,
    };
    Some(TrustError::NotListed {
        bundle_id: entry.bundle_id.clone(),
        sha256: entry.sha256.to_ascii_lowercase(),
        detail,
    })
}

/// Write `bytes` to `path` so that the file is either absent/old or complete: temporary file in
/// the same folder, fsync, rename, fsync of the folder.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LocalSyncError> {
    let io = |source| LocalSyncError::Io { path: path.to_path_buf(), source };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", Uuid::now_v7().simple()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

fn credential_name(c: &SealedCredential) -> Result<CredentialName, LocalSyncError> {
    format!("device/{}/{}", c.device_id, c.kind).parse().map_err(|_| {
        LocalSyncError::BadCredentialName { device: c.device_id.clone(), kind: c.kind.clone() }
    })
}

impl SyncLocal for StoreSync {
    type Error = LocalSyncError;

    async fn sync_turn(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        Some(self.store.sync_turn().await)
    }

    async fn cursors(&self) -> Result<Vec<LogCursor>, LocalSyncError> {
        Ok(self
            .store
            .visit_logs()
            .await?
            .into_iter()
            .map(|l| LogCursor {
                log_id: l.log_id,
                pushed_seq: l.sync.last_pushed_seq,
                last_seq: l.head_seq,
            })
            .collect())
    }

    async fn events_after(
        &self,
        log_id: Uuid,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, LocalSyncError> {
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        Ok(self.store.log_events(log_id, after_seq, limit).await?)
    }

    async fn record_checkpoint(&self, checkpoint: &SignedCheckpoint) -> Result<(), LocalSyncError> {
        let log_id = checkpoint.checkpoint.log_id;
        // The countersigned checkpoint (evidence) is stored before the pushed seq moves (the
        // cursor). If sync stops between the two, the cursor is behind: the next sync pushes the
        // same events again, the server's idempotent push answers with the same checkpoint, and
        // both are recorded. The evidence never lags the cursor.
        let json = serde_json::to_string(checkpoint)
            .map_err(|e| LocalSyncError::Corrupt(format!("checkpoint: {e}")))?;
        self.store.set_log_server_checkpoint(log_id, &json).await?;
        self.store.mark_log_pushed(log_id, checkpoint.checkpoint.last_seq).await?;
        Ok(())
    }

    async fn record_pushed_head(
        &self,
        checkpoint: &SignedCheckpoint,
    ) -> Result<(), LocalSyncError> {
        // The head goes to the keyring, which outlives this data directory (visitlog::continuity).
        let cp = &checkpoint.checkpoint;
        continuity::remember_pushed_head(&self.store, &self.credentials, &self.data_dir, cp)
            .await?;
        Ok(())
    }

    async fn has_bundle(&self, sha256: &str) -> Result<bool, LocalSyncError> {
        let path = self.bundle_path(sha256);
        Ok(tokio::fs::try_exists(&path).await.unwrap_or(false))
    }

    async fn apply_credentials(
        &self,
        technician_id: &str,
        sealed: Vec<SealedCredential>,
    ) -> Result<(), LocalSyncError> {
        let key = self.credentials.technician_key().await?;
        // Open everything first: nothing is written if any credential cannot be opened.
        let mut opened = Vec::with_capacity(sealed.len());
        for c in &sealed {
            let name = credential_name(c)?;
            let bytes = c.open(&key, technician_id)?;
            let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
                LocalSyncError::BadCredentialName {
                    device: c.device_id.clone(),
                    kind: c.kind.clone(),
                }
            })?;
            opened.push((name, Secret::new(text)));
        }
        let before = self.provisioned().await?;
        let now: BTreeSet<String> = opened.iter().map(|(n, _)| n.to_string()).collect();
        // Record the union first so an interruption never leaves an untracked keyring entry.
        self.set_provisioned(&before.union(&now).cloned().collect()).await?;
        for (name, secret) in &opened {
            self.credentials.set(name, secret).await?;
        }
        for gone in before.difference(&now) {
            if let Ok(name) = gone.parse::<CredentialName>() {
                self.credentials.delete(&name).await?;
            }
        }
        self.set_provisioned(&now).await
    }

    async fn apply_pull(
        &self,
        pull: &PullResponse,
        bundles: Vec<(CatalogEntry, Vec<u8>)>,
    ) -> Result<(), LocalSyncError> {
        let announced = pull.server_key.to_ascii_lowercase();
        match self.pinned_server_key().await? {
            Some(pinned) if !pinned.eq_ignore_ascii_case(&announced) => {
                return Err(LocalSyncError::ServerKeyChanged { pinned, announced });
            }
            Some(_) => {}
            None => self.pin_server_key(&announced).await?,
        }
        // Expiry decisions at sync use the latest time known: this clock, the server's, and what
        // was trusted before (a clock set back cannot revive an expired listing or store).
        let now = [Some(self.store.clock().now()), Some(pull.server_time)]
            .into_iter()
            .chain([crate::clock::latest_trusted(&self.store).await?])
            .flatten()
            .max()
            .unwrap_or(pull.server_time);
        // The trust store is pinned on this laptop: a pulled one replaces it only as a rotation
        // signed by a threshold of the current root with a higher version, and a pull without
        // one never removes it. Then the catalog listing, under the store in force after the
        // pull. Both are checked before anything of the pull is written.
        let rotated = match &pull.trust_store {
            Some(doc) => self.accept_trust_store(doc, now)?,
            None => None,
        };
        let in_force = match &rotated {
            Some(store) => Some(store.clone()),
            None if self.trust_path().exists() => Some(self.pinned_trust_store()?),
            None => None,
        };
        let listing = self.accept_listing(pull, in_force.as_ref(), now)?;
        for (entry, bytes) in &bundles {
            if not_listed(listing.as_ref(), entry).is_none() {
                write_atomic(&self.bundle_path(&entry.sha256), bytes)?;
            }
        }
        if let Some(store) = rotated {
            let bytes = store
                .document()
                .file_bytes()
                .map_err(|e| LocalSyncError::Corrupt(format!("trust store: {e}")))?;
            write_atomic(&self.trust_path(), &bytes)?;
        }
        if let Some(listing) = &listing {
            let bytes = serde_json::to_vec_pretty(listing)
                .map_err(|e| LocalSyncError::Corrupt(format!("catalog listing: {e}")))?;
            let unchanged = std::fs::read(self.listing_path()).is_ok_and(|old| old == bytes);
            if !unchanged {
                write_atomic(&self.listing_path(), &bytes)?;
            }
        }
        let sites: Vec<SiteRecord> = pull
            .sites
            .iter()
            .map(|s| SiteRecord {
                id: s.id.clone(),
                name: s.name.clone(),
                address: s.address.clone(),
            })
            .collect();
        let devices: Vec<InventoryDevice> = pull
            .devices
            .iter()
            .map(|d| InventoryDevice {
                id: d.id.clone(),
                site_id: Some(d.site_id.clone()),
                vendor: d.vendor.clone(),
                model: d.model.clone(),
                hardware_revision: d.hardware_revision.clone(),
                serial_number: d.serial_number.clone(),
                firmware_version: d.current_firmware.clone(),
            })
            .collect();
        let work_orders: Vec<WorkOrderRecord> = pull
            .work_orders
            .iter()
            .map(|w| WorkOrderRecord {
                id: w.id.clone(),
                site_id: w.site_id.clone(),
                title: w.title.clone(),
                status: "open".into(),
                device_ids: w.devices.clone(),
                detail: serde_json::json!({ "planned_for": w.planned_for }),
            })
            .collect();
        let catalog = self.verdicts(pull, listing.as_ref());
        self.store.replace_inventory(&sites, &devices, &work_orders, &catalog).await?;
        // Bundle files no longer in the catalog (or not listed) go, so the planner only sees
        // what was published.
        let keep: BTreeSet<PathBuf> = pull
            .catalog
            .iter()
            .filter(|e| not_listed(listing.as_ref(), e).is_none())
            .map(|e| self.bundle_path(&e.sha256))
            .collect();
        if let Ok(read) = std::fs::read_dir(self.catalog_dir()) {
            for path in read.filter_map(|e| e.ok().map(|e| e.path())) {
                let is_bundle = path.extension().is_some_and(|x| x == BUNDLE_EXTENSION);
                if is_bundle && !keep.contains(&path) {
                    std::fs::remove_file(&path)
                        .map_err(|source| LocalSyncError::Io { path: path.clone(), source })?;
                }
            }
        }
        // The clock ran ahead after its last check: the visit log says so before the times it
        // stamped then stop counting as checked (first, so that a failure here leaves the
        // give-up to the next sync rather than losing the note).
        if let Some(latest) = crate::clock::ran_ahead_of(&self.store, pull.server_time).await? {
            self.note_clock_ran_ahead(latest, pull.server_time).await?;
        }
        // The laptop was online at the server's time: the offline grace period counts from here,
        // the clock is checked against it, and it becomes the latest trusted time.
        if let Some(ahead) = crate::clock::note_online(&self.store, pull.server_time).await? {
            tracing::warn!(
                trusted = %ahead,
                server_time = %pull.server_time,
                "the laptop's clock had run ahead of the inventory server's; the times it stamped then no longer count as trusted"
            );
        }
        self.store.record_clock_check(pull.server_time - self.store.clock().now()).await?;
        Ok(())
    }
}

impl StoreSync {
    /// Note in the technician's log that event times up to `latest` were stamped by a clock that
    /// ran ahead of the inventory's (`server_time`), so an auditor reading those times knows
    /// they no longer count as checked. A log with no event yet has stamped nothing.
    async fn note_clock_ran_ahead(
        &self,
        latest: chrono::DateTime<chrono::Utc>,
        server_time: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), LocalSyncError> {
        let key = self.credentials.technician_key().await?;
        let log = crate::visitlog::VisitLog::open(&self.store, key).await?;
        if log.is_started().await? {
            log.note(format!(
                "this laptop's clock ran ahead after its last check: events were stamped as late \
                 as {}, while the inventory's time at this sync is {}. Those event times no \
                 longer count as checked; expiry decisions go on from the inventory's time.",
                latest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                server_time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ))
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Against the real Secret Service (run inside a D-Bus session with gnome-keyring unlocked).
    use super::*;
    use crate::credentials::BackendChoice;
    use crate::sync::sealed::seal;
    use crate::sync::wire::{Checkpoint, Device, Site, WorkOrder};
    use crate::visitlog::VisitLog;
    use ed25519_dalek::SigningKey;

    async fn setup(dir: &Path) -> StoreSync {
        let store = Store::open_in(dir).await.unwrap();
        let service = format!("fieldpatch-test-{}", Uuid::new_v4().simple());
        let creds = Credentials::open_with(&store, BackendChoice::SecretService, &service)
            .await
            .unwrap_or_else(|e| panic!("the Secret Service must be usable here: {e}"));
        StoreSync::new(store, creds, dir)
    }

    fn pull(server_key: &str, devices: &[&str], catalog: Vec<CatalogEntry>) -> PullResponse {
        PullResponse {
            server_time: chrono::Utc::now(),
            server_key: server_key.into(),
            technician_id: "tech-1".into(),
            sites: vec![Site { id: "site-a".into(), name: "Plant A".into(), address: None }],
            devices: devices
                .iter()
                .map(|id| Device {
                    id: (*id).into(),
                    site_id: "site-a".into(),
                    vendor: Some("Lab".into()),
                    model: Some("sensor".into()),
                    hardware_revision: None,
                    serial_number: Some(format!("SN-{id}")),
                    approved_version: Some("2.0.0".into()),
                    current_firmware: Some("1.0.0".into()),
                    last_visit: None,
                    failures: 0,
                    last_failure: None,
                    not_patched_reason: None,
                })
                .collect(),
            work_orders: vec![WorkOrder {
                id: "wo-1".into(),
                site_id: "site-a".into(),
                title: "Patch sensors".into(),
                planned_for: Some("2026-12-01".into()),
                devices: devices
                    .iter()
                    .map(|d| (*d).to_string())
                    .chain(["elsewhere".into()])
                    .collect(),
            }],
            catalog,
            trust_store: None,
            catalog_listing: None,
            credentials: vec![],
        }
    }

    fn entry(bytes: &[u8]) -> CatalogEntry {
        use sha2::{Digest, Sha256};
        CatalogEntry {
            bundle_id: "b1".into(),
            version: "1".into(),
            manifest: serde_json::json!({"bundle_id": "b1"}),
            sha256: hex::encode(Sha256::digest(bytes)),
            size: bytes.len() as u64,
            published_at: chrono::Utc::now(),
        }
    }

    #[tokio::test]
    async fn cursors_follow_the_log_and_recorded_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let local = setup(dir.path()).await;
        let key = local.credentials.technician_key().await.unwrap();
        let log = VisitLog::open(&local.store, key).await.unwrap();
        let mut events = Vec::new();
        for i in 0..3 {
            events.push(log.note(format!("note {i}")).await.unwrap());
        }
        // The notes follow the log's log_started (seq 1).
        let c = local.cursors().await.unwrap();
        assert_eq!(c, vec![LogCursor { log_id: log.log_id(), pushed_seq: 0, last_seq: 4 }]);
        let page = local.events_after(log.log_id(), 2, 10).await.unwrap();
        assert_eq!(page.iter().map(|e| e.body.seq).collect::<Vec<_>>(), vec![3, 4]);

        let server = SigningKey::generate(&mut rand::rng());
        let cp = Checkpoint { log_id: log.log_id(), last_seq: 3, last_hash: events[1].hash() }
            .sign(&server);
        local.record_checkpoint(&cp).await.unwrap();
        assert_eq!(local.cursors().await.unwrap()[0].pushed_seq, 3);
        let state = local.store.log_sync_state(log.log_id()).await.unwrap();
        let stored: SignedCheckpoint =
            serde_json::from_str(state.server_checkpoint.as_deref().unwrap()).unwrap();
        assert_eq!(stored, cp);
        let _ = local.credentials.delete(&CredentialName::TechnicianKey).await;
    }

    #[tokio::test]
    async fn a_pull_replaces_the_inventory_and_keeps_bundle_files_by_hash() {
        let dir = tempfile::tempdir().unwrap();
        let local = setup(dir.path()).await;
        let server_key = "ab".repeat(32);
        let bytes = b"bundle bytes".to_vec();
        let e = entry(&bytes);
        assert!(!local.has_bundle(&e.sha256).await.unwrap());
        let first = pull(&server_key, &["d1", "d2"], vec![e.clone()]);
        local.apply_pull(&first, vec![(e.clone(), bytes.clone())]).await.unwrap();
        assert!(local.has_bundle(&e.sha256).await.unwrap());
        assert_eq!(std::fs::read(local.bundle_path(&e.sha256)).unwrap(), bytes);
        assert_eq!(local.pinned_server_key().await.unwrap().as_deref(), Some(&*server_key));
        assert_eq!(local.store.devices(Some("site-a")).await.unwrap().len(), 2);
        let wo = local.store.work_orders().await.unwrap();
        assert_eq!(wo[0].device_ids, vec!["d1", "d2"], "unknown devices are left out");
        let b = local.store.bundles().await.unwrap();
        assert_eq!(b[0].verdict, BundleVerdict::Unverified);
        assert!(b[0].verdict_detail.contains("no trust store"), "{}", b[0].verdict_detail);

        // A device observed on site keeps its observation when it leaves the inventory.
        local
            .store
            .record_identity(Some("d2"), "udp", "127.0.0.1:1", &Default::default())
            .await
            .unwrap();
        let second = pull(&server_key, &["d1"], vec![]);
        local.apply_pull(&second, vec![]).await.unwrap();
        assert_eq!(
            local.store.devices(None).await.unwrap().iter().map(|d| &d.id).collect::<Vec<_>>(),
            vec!["d1"]
        );
        assert!(!local.has_bundle(&e.sha256).await.unwrap(), "unpublished bundles are removed");
        assert!(local.store.bundles().await.unwrap().is_empty());
        let kept: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM device_identities")
            .fetch_one(local.store.pool())
            .await
            .unwrap();
        assert_eq!(kept, 1);

        // Another server key is refused, and nothing is replaced.
        let other = pull(&"cd".repeat(32), &["d9"], vec![]);
        let err = local.apply_pull(&other, vec![]).await.unwrap_err();
        assert!(matches!(err, LocalSyncError::ServerKeyChanged { .. }), "{err}");
        assert_eq!(local.store.devices(None).await.unwrap()[0].id, "d1");
    }

    #[tokio::test]
    async fn a_sync_that_gives_up_times_stamped_by_a_clock_that_ran_ahead_notes_it_in_the_log() {
        use crate::visitlog::EventKind;
        let dir = tempfile::tempdir().unwrap();
        let local = setup(dir.path()).await;
        let server_key = "ab".repeat(32);
        let key = local.credentials.technician_key().await.unwrap();
        let log = VisitLog::open(&local.store, key.clone()).await.unwrap();
        log.note("before the first sync").await.unwrap();
        local.apply_pull(&pull(&server_key, &["d1"], vec![]), vec![]).await.unwrap();
        let before = local.events_after(log.log_id(), 0, 100).await.unwrap();
        assert!(
            !before.iter().any(
                |e| matches!(&e.body.kind, EventKind::Note { text } if text.contains("ran ahead"))
            ),
            "a sync with nothing to give up notes nothing"
        );
        // After the check the clock runs 200 days ahead, and stamps an event as checked.
        let ahead =
            crate::clock::Clock::from_fn(|| chrono::Utc::now() + chrono::Duration::days(200));
        let stamped = VisitLog::open(&local.store.clone().with_clock(ahead), key.clone())
            .await
            .unwrap()
            .note("stamped while the clock ran ahead")
            .await
            .unwrap();
        // The next sync gives those times up, and the log says so, naming both times.
        local.apply_pull(&pull(&server_key, &["d1"], vec![]), vec![]).await.unwrap();
        let after = local.events_after(log.log_id(), 0, 100).await.unwrap();
        assert_eq!(after.len(), before.len() + 2, "the stamped event and one note");
        match &after.last().unwrap().body.kind {
            EventKind::Note { text } => {
                let stamped_at =
                    stamped.body.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                assert!(text.contains("ran ahead") && text.contains(&stamped_at), "{text}");
                assert!(text.contains("no longer count as checked"), "{text}");
            }
            other => panic!("{other:?}"),
        }
        assert!(crate::clock::checked_now(&local.store).await.is_ok());
        // Given up once: the sync after that notes nothing more.
        local.apply_pull(&pull(&server_key, &["d1"], vec![]), vec![]).await.unwrap();
        assert_eq!(local.events_after(log.log_id(), 0, 100).await.unwrap().len(), after.len());
        let _ = local.credentials.delete(&CredentialName::TechnicianKey).await;
    }

    #[tokio::test]
    async fn credentials_go_to_the_keyring_and_revoked_ones_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let local = setup(dir.path()).await;
        let key = local.credentials.technician_key().await.unwrap();
        let public = hex::encode(key.verifying_key().as_bytes());
        let manual = CredentialName::Device {
            device: "d9".into(),
            kind: crate::credentials::CredentialKind::Psk,
        };
        local.credentials.set(&manual, &Secret::new("by hand")).await.unwrap();

        let sealed = vec![
            seal(&public, "tech-1", "d1", "password", b"pw-one").unwrap(),
            seal(&public, "tech-1", "d2", "psk", b"psk-two").unwrap(),
        ];
        local.apply_credentials("tech-1", sealed.clone()).await.unwrap();
        let d1: CredentialName = "device/d1/password".parse().unwrap();
        let d2: CredentialName = "device/d2/psk".parse().unwrap();
        assert_eq!(local.credentials.get(&d1).await.unwrap().expose(), "pw-one");
        assert_eq!(local.credentials.get(&d2).await.unwrap().expose(), "psk-two");
        assert_eq!(local.provisioned().await.unwrap().len(), 2);

        // d2's site was unassigned: its credential goes; the one set by hand stays.
        local.apply_credentials("tech-1", sealed[..1].to_vec()).await.unwrap();
        assert!(local.credentials.get_optional(&d2).await.unwrap().is_none());
        assert_eq!(local.credentials.get(&d1).await.unwrap().expose(), "pw-one");
        assert_eq!(local.credentials.get(&manual).await.unwrap().expose(), "by hand");

        // Sealed for someone else: refused, nothing changes.
        let err = local.apply_credentials("tech-2", sealed.clone()).await.unwrap_err();
        assert!(matches!(err, LocalSyncError::Seal(_)), "{err}");
        assert!(local.credentials.get_optional(&d2).await.unwrap().is_none());

        // No secret reached the store file.
        local.store.clone().close().await;
        for f in std::fs::read_dir(dir.path()).unwrap() {
            let raw = std::fs::read(f.unwrap().path()).unwrap_or_default();
            for secret in ["pw-one", "psk-two"] {
                assert!(!raw.windows(secret.len()).any(|w| w == secret.as_bytes()));
            }
        }
        for n in [&d1, &manual, &CredentialName::TechnicianKey] {
            let local2 = setup_same(&local, dir.path()).await;
            let _ = local2.credentials.delete(n).await;
        }
    }

    async fn setup_same(local: &StoreSync, dir: &Path) -> StoreSync {
        let store = Store::open_in(dir).await.unwrap();
        let creds = Credentials::open_with(
            &store,
            BackendChoice::SecretService,
            local.credentials.service(),
        )
        .await
        .unwrap();
        StoreSync::new(store, creds, dir)
    }
}
