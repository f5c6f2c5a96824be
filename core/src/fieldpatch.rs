//! [`Fieldpatch`]: the one facade that owns every job the desktop app and the CLI offer.
//!
//! A shell opens it once (the local store in the data directory, how to reach devices), then
//! calls jobs on it: identify, plan, run / resume / close a session, one-device SMP commands, USB
//! DFU flashing, notes and log verification, sync. Each job opens the technician's signed visit log
//! itself and writes its events there, so no shell can skip a check or an event, and no shell
//! repeats the set-up (store, keyring, technician key, log).
//!
//! Design decisions:
//!
//! * **Opened lazily where it costs.** The keyring and the technician's key are reached the first
//!   time a job needs them, so reading commands (session status, log show) work on a laptop whose
//!   keyring is locked.
//! * **One runner per laptop process.** A second session started while one runs is refused with
//!   [`Error::Busy`].
//! * **Typed errors with stable codes.** [`Error::code`] is what the app's bridge and the CLI's
//!   `--json` carry beside the message.

use crate::bundle::input::{Clearance, ClearedImage};
use crate::catalog::Catalog;
use crate::credentials::{CredentialError, Credentials};
use crate::plan::{DeviceRecord, Plan};
use crate::session::batch::{self, BatchError};
use crate::session::local::StoreSessions;
use crate::session::{Connector, Observer, SessionState, Summary};
use crate::store::{Store, StoreError};
use crate::sync::StoreSync;
use crate::visitlog::{
    Event, EventKind, LogError, LogVerification, NewEvent, VisitLog, continuity,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::OnceCell;

/// A job of the facade failed. Every variant has a stable [`code`](Error::code).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Path(#[from] crate::paths::PathError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error(transparent)]
    Input(#[from] crate::bundle::input::InputError),
    #[error(transparent)]
    Bundle(#[from] crate::bundle::BundleError),
    #[error(transparent)]
    DfuFile(#[from] crate::image::dfu_file::DfuFileError),
    #[error(transparent)]
    Device(#[from] crate::flash::TargetError),
    #[error(transparent)]
    Sync(#[from] crate::sync::SyncError),
    #[error(transparent)]
    Lock(#[from] crate::session::lock::LockError),
    #[error(transparent)]
    Clock(#[from] crate::clock::ClockError),
    #[error(transparent)]
    Discover(#[from] crate::discovery::DiscoverError),
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
    /// The devices chosen for a session cannot be its devices.
    #[error(transparent)]
    Choice(#[from] crate::session::ChoiceError),
    /// A session is already running from this process.
    #[error("a session is already running; wait for it to finish or pause it")]
    Busy,
    /// The session asked for is not in the local store.
    #[error("no such session in the local store{0} (see `fieldpatch session status`)")]
    NoSession(String),
    /// The session already finished: nothing to resume.
    #[error("session {0} already finished")]
    Finished(String),
    /// The job cannot be done at this address (for example an SMP command to a USB address).
    #[error("{0}")]
    WrongAddress(String),
    /// The bundle does not apply to this device (target, upgrade path, downgrade rule, ...):
    /// nothing was sent.
    #[error("{device}: the bundle does not apply ({reason}); nothing was sent")]
    NotApplicable { device: String, reason: String },
    /// What the technician typed is not valid for this job.
    #[error("{0}")]
    Invalid(String),
    /// A SWUpdate image failed a check on the laptop: nothing was sent.
    #[error(transparent)]
    Swu(#[from] crate::image::swu::SwuError),
    /// The SWUpdate daemon refused, failed or could not be reached.
    #[error(transparent)]
    Swupdate(#[from] fieldpatch_drivers::swupdate::SwupdateError),
    /// The device's credential is not in this laptop's keyring: nothing was sent.
    #[error(
        "{device}: credential `{credential}` is not in this laptop's keyring: sync, or add it with `fieldpatch credentials set {credential}`; nothing was sent"
    )]
    MissingCredential { device: String, credential: String },
    /// The trust store named for a job is not the one in force on this laptop: nothing was sent.
    #[error(
        "the trust store {path} is not the one in force on this laptop ({reason}): use the pinned store (omit the trust file, or sync to receive a rotation), or ask the release team for a rotation signed by the current root keys"
    )]
    TrustNotInForce { path: String, reason: String },
    /// No trust store: none given and none pinned by a sync.
    #[error(
        "no trust store is in force on this laptop: sync with the inventory server first (it pins the trust store), or name the trust store file for an offline session"
    )]
    NoTrustStore,
}

impl Error {
    /// A stable, machine-readable code (snake_case) for the app's bridge and `--json`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Path(e) => e.code(),
            Error::Store(e) => e.code(),
            Error::Credentials(e) => e.code(),
            Error::Log(e) => e.code(),
            Error::Batch(e) => e.code(),
            Error::Input(e) => e.code(),
            Error::Bundle(e) => e.code(),
            Error::DfuFile(_) => "dfu_file",
            Error::Device(e) => e.code(),
            Error::Sync(e) => e.code(),
            Error::Lock(e) => e.code(),
            Error::Discover(e) => e.code(),
            Error::Clock(e) => e.code(),
            Error::Export(e) => e.code(),
            Error::Choice(_) => "device_choice",
            Error::Busy => "busy",
            Error::NoSession(_) => "no_session",
            Error::Finished(_) => "session_finished",
            Error::WrongAddress(_) => "wrong_address",
            Error::NotApplicable { .. } => "not_applicable",
            Error::Invalid(_) => "invalid_input",
            Error::Swu(e) => e.code(),
            Error::Swupdate(e) => e.code(),
            Error::MissingCredential { .. } => "credential_missing",
            Error::TrustNotInForce { .. } => "trust_store_not_in_force",
            Error::NoTrustStore => "no_trust_store",
        }
    }
}

/// Fieldpatch on this laptop: the local store, devices, the technician's log. See the module docs.
pub struct Fieldpatch {
    data_dir: PathBuf,
    store: Store,
    connector: Arc<dyn Connector>,
    credentials: OnceCell<Credentials>,
    log: OnceCell<Arc<VisitLog>>,
    running: AtomicBool,
}

impl std::fmt::Debug for Fieldpatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fieldpatch").field("data_dir", &self.data_dir).finish_non_exhaustive()
    }
}

/// Clears the "a session runs" flag when the session ends, however it ends.
struct Running<'a>(&'a AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Fieldpatch {
    /// Open Fieldpatch in the data directory (`FIELDPATCH_DATA_DIR` or the OS convention).
    pub async fn open(connector: Arc<dyn Connector>) -> Result<Fieldpatch, Error> {
        let (dir, _) = crate::paths::data_dir()?;
        Self::open_in(&dir, connector).await
    }

    /// Open Fieldpatch in `data_dir` (created if needed).
    pub async fn open_in(
        data_dir: &Path,
        connector: Arc<dyn Connector>,
    ) -> Result<Fieldpatch, Error> {
        let store = Store::open_in(data_dir).await?;
        Ok(Fieldpatch {
            data_dir: data_dir.to_path_buf(),
            store,
            connector,
            credentials: OnceCell::new(),
            log: OnceCell::new(),
            running: AtomicBool::new(false),
        })
    }

    /// This instance with `clock` as "now" for everything it stamps and decides (see
    /// [`crate::clock::Clock`]; the system clock unless given). Give it before first use.
    pub fn with_clock(mut self, clock: crate::clock::Clock) -> Fieldpatch {
        self.store = self.store.with_clock(clock);
        self
    }

    /// The data directory this instance works in.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The local store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// How devices are reached.
    pub fn connector(&self) -> Arc<dyn Connector> {
        self.connector.clone()
    }

    /// The OS keyring (opened on first use).
    pub async fn credentials(&self) -> Result<&Credentials, Error> {
        Ok(self.credentials.get_or_try_init(|| Credentials::open(&self.store)).await?)
    }

    /// The technician's signed visit log (the key comes from the keyring on first use). A log
    /// without events yet will name the head this data directory last pushed (kept in the
    /// keyring, see [`crate::visitlog::continuity`]) in its `log_started` event.
    pub async fn log(&self) -> Result<Arc<VisitLog>, Error> {
        let log = self
            .log
            .get_or_try_init(|| async {
                let credentials = self.credentials().await?;
                let key = credentials.technician_key().await?;
                let log = VisitLog::open(&self.store, key).await?;
                let log = if log.is_started().await? {
                    log
                } else {
                    let start =
                        continuity::start_for(credentials, &self.data_dir, log.signer()).await?;
                    log.starting_from(start)
                };
                Ok::<_, Error>(Arc::new(log))
            })
            .await?;
        Ok(log.clone())
    }

    /// Record `kind` in the technician's log, about `device` when given.
    pub async fn record(&self, device: Option<&str>, kind: EventKind) -> Result<Event, Error> {
        let mut new = NewEvent::new(kind);
        if let Some(d) = device {
            new = new.device(d);
        }
        Ok(self.log().await?.append(new).await?)
    }

    /// Add the technician's note to the visit log.
    pub async fn note(&self, text: impl Into<String>) -> Result<Event, Error> {
        Ok(self.log().await?.note(text).await?)
    }

    /// Keep `secret` under `name` in the OS keyring. A device's or site model's credential is
    /// also noted in the visit log, by name only (its value never leaves the keyring), so an
    /// auditor sees which credentials this laptop was given and when.
    pub async fn set_credential(
        &self,
        name: &crate::credentials::CredentialName,
        secret: &crate::credentials::Secret,
    ) -> Result<(), Error> {
        self.credentials().await?.set(name, secret).await?;
        if audited(name) {
            self.note(format!(
                "credential {name} kept in the OS keyring (its value is not recorded)"
            ))
            .await?;
        }
        Ok(())
    }

    /// Remove `name` from the OS keyring (`false`: it was not there); a device's or site
    /// model's credential removed is noted in the visit log, as [`Fieldpatch::set_credential`].
    pub async fn delete_credential(
        &self,
        name: &crate::credentials::CredentialName,
    ) -> Result<bool, Error> {
        let removed = self.credentials().await?.delete(name).await?;
        if removed && audited(name) {
            self.note(format!("credential {name} removed from the OS keyring")).await?;
        }
        Ok(removed)
    }

    /// Verify every visit log in the local store (signatures and chain).
    pub async fn verify_logs(&self) -> Result<Vec<LogVerification>, Error> {
        Ok(self.store.verify_all_logs().await?)
    }

    /// The local side of sync over this store and keyring.
    pub async fn sync_local(&self) -> Result<StoreSync, Error> {
        let credentials = self.credentials().await?.clone();
        Ok(StoreSync::new(self.store.clone(), credentials, &self.data_dir))
    }

    /// The rules every verification on a path to a device uses: "now" from a clock checked
    /// against the latest trusted time (a clock set back is refused and recorded in the visit
    /// log), and the offline grace period from the trust store's signed policy, counted from the
    /// last sync recorded in the store.
    pub async fn verify_policy(
        &self,
        trust: &crate::bundle::TrustStore,
    ) -> Result<crate::bundle::VerifyPolicy, Error> {
        let now = match crate::clock::checked_now(&self.store).await {
            Ok(now) => now,
            Err(e) => {
                if let crate::clock::ClockError::Behind { .. } = e {
                    // Best effort: the refusal stands even when the log cannot be written.
                    let _ = self.note(format!("refused an expiry decision: {e}")).await;
                }
                return Err(e.into());
            }
        };
        let offline_grace =
            match (trust.offline_grace(), crate::clock::last_online(&self.store).await?) {
                (Some(grace), Some(last)) => Some(crate::bundle::verify::OfflineGrace {
                    last_online_verification: last,
                    grace,
                }),
                _ => None,
            };
        Ok(crate::bundle::VerifyPolicy { now, offline_grace })
    }

    /// The trust store in force for a job that may send bytes to a device. Once a sync pinned a
    /// store on this laptop, that store is the anchor: `path` (a store file named for the job)
    /// must be the pinned store itself or a newer store signed as its rotation (a threshold of the
    /// pinned root keys); anything else is refused, so a hand-made trust store cannot open a
    /// path to a device. Without a pinned store (a laptop provisioned for offline sessions that
    /// never synced) the file named is the anchor, as a first sync's store would be. `None` asks
    /// for the pinned store.
    pub async fn trust_store(
        &self,
        path: Option<&Path>,
    ) -> Result<crate::bundle::TrustStore, Error> {
        let pinned_path = self.sync_local().await?.trust_path();
        let pinned = if pinned_path.exists() {
            Some(crate::bundle::TrustStore::load(&pinned_path)?)
        } else {
            None
        };
        let Some(path) = path else { return pinned.ok_or(Error::NoTrustStore) };
        let given = crate::bundle::TrustStore::load(path)?;
        let Some(pinned) = pinned else { return Ok(given) };
        if given.document() == pinned.document() {
            return Ok(given);
        }
        let refuse =
            |reason: String| Error::TrustNotInForce { path: path.display().to_string(), reason };
        if given.version() <= pinned.version() {
            return Err(refuse(format!(
                "it is version {}, the pinned store is version {}{}",
                given.version(),
                pinned.version(),
                if given.version() == pinned.version() { " with different contents" } else { "" }
            )));
        }
        pinned.rotate(given.document().clone()).map_err(|e| refuse(e.to_string()))
    }

    /// Load a trust store (which must be the one in force: [`Fieldpatch::trust_store`]) and
    /// verify every bundle of a catalog folder against it, under [`Fieldpatch::verify_policy`].
    pub async fn load_catalog(
        &self,
        catalog_dir: &Path,
        trust_path: &Path,
    ) -> Result<Catalog, Error> {
        let trust = self.trust_store(Some(trust_path)).await?;
        let policy = self.verify_policy(&trust).await?;
        Ok(batch::load_catalog(catalog_dir, trust_path, &policy)?)
    }

    /// Ask each device what it runs; devices that do not answer keep the inventory's record and
    /// come back with the reason beside them.
    pub async fn identify(
        &self,
        devices: Vec<DeviceRecord>,
        timeout: Duration,
    ) -> Vec<(DeviceRecord, Option<String>)> {
        let keyring = self.credentials().await.ok().cloned();
        let connector = crate::flash::swupdate::KeyringConnector::new(self.connector(), keyring);
        batch::identify(&connector, devices, timeout).await
    }

    /// The devices of a synced work order at the addresses found on site, and the ids of those
    /// without an address.
    pub async fn work_order_devices(
        &self,
        work_order: &str,
        addresses: &std::collections::BTreeMap<String, crate::plan::DeviceAddress>,
    ) -> Result<(Vec<DeviceRecord>, Vec<String>), Error> {
        Ok(batch::work_order_devices(&self.store, work_order, addresses).await?)
    }

    /// What the inventory says about device `id`, reached at `address`: from the synced
    /// inventory, or else from a work order's devices file. The running version and image hash
    /// are left out: they are read from the device.
    pub async fn inventory_record(
        &self,
        id: &str,
        address: crate::plan::DeviceAddress,
        devices_file: Option<&Path>,
    ) -> Result<DeviceRecord, Error> {
        let mut d = self.inventory_device(id, address, devices_file).await?;
        d.identity.firmware_version = None;
        d.identity.image_hash = None;
        Ok(d)
    }

    /// Like [`Fieldpatch::inventory_record`], with the version the inventory says the device
    /// runs: what the planner decides with for a device that cannot report it (USB DFU).
    pub async fn inventory_device(
        &self,
        id: &str,
        address: crate::plan::DeviceAddress,
        devices_file: Option<&Path>,
    ) -> Result<DeviceRecord, Error> {
        let synced = self.store.devices(None).await?;
        if let Some(d) = synced.iter().find(|d| d.id == id) {
            return Ok(DeviceRecord {
                id: d.id.clone(),
                address,
                identity: crate::model::DeviceIdentity {
                    vendor: d.vendor.clone(),
                    model: d.model.clone(),
                    hardware_revision: d.hardware_revision.clone(),
                    serial_number: d.serial_number.clone(),
                    firmware_version: d.firmware_version.as_deref().and_then(|v| v.parse().ok()),
                    image_hash: None,
                    mode: None,
                },
                criticality: Default::default(),
                windows: vec![],
                credential: None,
                health_url: None,
            });
        }
        if let Some(file) = devices_file
            && let Some(mut d) = batch::read_devices(file)?.into_iter().find(|d| d.id == id)
        {
            d.address = address;
            d.identity.image_hash = None;
            return Ok(d);
        }
        Err(Error::Invalid(format!(
            "device {id} is not in the synced inventory{}: sync with the inventory, or give the work order's devices file with --devices",
            devices_file.map(|f| format!(" nor in {}", f.display())).unwrap_or_default()
        )))
    }

    /// Plan `devices` against the verified catalog (credential names from the keyring when it is
    /// reachable) for a visit that names no site: bundles published to some sites only are left
    /// out, as the session would refuse them. See [`Fieldpatch::plan_at_site`].
    pub async fn plan(&self, devices: Vec<DeviceRecord>, catalog: &Catalog) -> Plan {
        self.plan_at_site(devices, catalog, None).await
    }

    /// Plan `devices` for a visit at `site` (a work order's site): a bundle the signed listing
    /// publishes to other sites only is not planned (the session refuses it too).
    pub async fn plan_at_site(
        &self,
        devices: Vec<DeviceRecord>,
        catalog: &Catalog,
        site: Option<&str>,
    ) -> Plan {
        let creds = self.credentials().await.ok();
        let now = self.store.clock().now();
        if catalog.has_site_restrictions() {
            batch::make_plan_at(devices, &catalog.for_site(site), creds, now).await
        } else {
            batch::make_plan_at(devices, catalog, creds, now).await
        }
    }

    /// Run (or resume) a session inside a visit of the technician's log. Refused with
    /// [`Error::Busy`] while another session of this process runs.
    pub async fn run_session(
        &self,
        state: SessionState,
        catalog: Arc<Catalog>,
        observer: Observer,
        pause: Arc<AtomicBool>,
    ) -> Result<(Summary, SessionState), Error> {
        if self.running.swap(true, Ordering::SeqCst) {
            return Err(Error::Busy);
        }
        let _running = Running(&self.running);
        // And one per data directory across processes (the app and the CLI, two CLIs).
        let _lock = crate::session::lock::RunnerLock::session(&self.data_dir)?;
        let log = self.log().await?;
        // SWUpdate gateways are opened with their password from the keyring, read at that moment.
        let keyring = Some(self.credentials().await?.clone());
        let connector: Arc<dyn Connector> =
            Arc::new(crate::flash::swupdate::KeyringConnector::new(self.connector(), keyring));
        let run = batch::VisitRun { store: &self.store, log, catalog, connector, observer, pause };
        Ok(batch::run_in_visit(run, state).await?)
    }

    /// Whether a session of this process is running.
    pub fn session_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// A session from the store: `id`, or the latest one.
    pub async fn session(&self, id: Option<&str>) -> Result<SessionState, Error> {
        self.find_session(id, false).await
    }

    /// A session that can be resumed: `id`, or the latest unfinished one.
    pub async fn unfinished_session(&self, id: Option<&str>) -> Result<SessionState, Error> {
        self.find_session(id, true).await
    }

    async fn find_session(
        &self,
        id: Option<&str>,
        unfinished: bool,
    ) -> Result<SessionState, Error> {
        let sessions = StoreSessions(self.store.clone());
        let found = match id {
            Some(id) => sessions.load(id).await,
            None if unfinished => sessions.latest_unfinished().await,
            None => sessions.latest().await,
        }
        .map_err(|e| Error::Batch(BatchError::Session(e)))?;
        found.ok_or_else(|| Error::NoSession(id.map(|i| format!(" ({i})")).unwrap_or_default()))
    }

    /// Resume a saved session that has not finished.
    pub async fn resume_session(
        &self,
        id: Option<&str>,
        catalog: Arc<Catalog>,
        observer: Observer,
        pause: Arc<AtomicBool>,
    ) -> Result<(Summary, SessionState), Error> {
        let state = self.unfinished_session(id).await?;
        if state.phase == crate::session::Phase::Finished {
            return Err(Error::Finished(state.id.to_string()));
        }
        self.run_session(state, catalog, observer, pause).await
    }

    /// End a paused or stopped session for good (the technician's "abort"): its devices not yet
    /// attempted are recorded as skipped and it is no longer offered for resume; its close-out
    /// then asks for their reasons. A running session is paused first (devices in flight
    /// finish), and a session cut short in the middle of a device's flash is refused: resume it
    /// so that device ends in a known state.
    pub async fn end_session(&self, id: Option<&str>) -> Result<SessionState, Error> {
        use crate::session::{DeviceStatus, Phase, SessionStore};
        if self.session_running() {
            return Err(Error::Busy);
        }
        let mut state = self.unfinished_session(id).await?;
        if state.phase == Phase::Finished {
            return Err(Error::Finished(state.id.to_string()));
        }
        if let Some((device, _)) =
            state.devices.iter().find(|(_, s)| matches!(s, DeviceStatus::InProgress { .. }))
        {
            return Err(Error::Invalid(format!(
                "{device} was cut short in the middle of its flash: resume the session so it ends in a known state, then end the session"
            )));
        }
        let mut ended = 0;
        for status in state.devices.values_mut() {
            if *status == DeviceStatus::Pending {
                *status = DeviceStatus::Skipped {
                    reason: "not attempted: the technician ended the session".into(),
                };
                ended += 1;
            }
        }
        state.phase = Phase::Finished;
        StoreSessions(self.store.clone())
            .save(&state)
            .await
            .map_err(|e| Error::Batch(BatchError::Session(e)))?;
        self.note(format!(
            "session {} ended by the technician: {ended} device(s) not attempted",
            state.id
        ))
        .await?;
        Ok(state)
    }

    /// Close out a session: the technician's reason for every device it left unpatched goes into
    /// the visit log. Refused, writing nothing, while any reason is missing.
    pub async fn close_session(
        &self,
        state: &SessionState,
        reasons: &std::collections::BTreeMap<String, String>,
    ) -> Result<Vec<String>, Error> {
        let log = self.log().await?;
        Ok(batch::close_out(&log, state, reasons).await?)
    }

    /// Write the audit export of visit `visit_id` to `out` (see [`crate::export`]), signed with
    /// the technician's key; with the trust store in force and, given the catalog the session
    /// used, the manifests and verdicts of its bundles.
    pub async fn export_visit(
        &self,
        visit_id: uuid::Uuid,
        out: &Path,
        trust: Option<&Path>,
        catalog_dir: Option<&Path>,
    ) -> Result<crate::export::Exported, Error> {
        let catalog = match (catalog_dir, trust) {
            (Some(dir), Some(trust)) => Some(self.load_catalog(dir, trust).await?),
            (Some(_), None) => {
                return Err(Error::Invalid(
                    "a catalog is verified with its trust store: give --trust too".into(),
                ));
            }
            _ => None,
        };
        let key = self.credentials().await?.technician_key().await?;
        let pinned = self
            .sync_local()
            .await?
            .pinned_server_key()
            .await
            .map_err(|e| Error::Sync(crate::sync::SyncError::Local(Box::new(e))))?;
        let sources = crate::export::Sources { trust, catalog: catalog.as_ref() };
        Ok(crate::export::export_visit(
            &self.store,
            &key,
            pinned.as_deref(),
            visit_id,
            &sources,
            out,
        )
        .await?)
    }

    /// Record in the visit log why these bytes may be sent to the device at `device`, before the
    /// first byte goes.
    pub(crate) async fn record_clearance(
        &self,
        device: &str,
        cleared: &ClearedImage,
        file: &Path,
    ) -> Result<(), Error> {
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&cleared.bytes));
        let kind = match &cleared.how {
            Clearance::Bundle { bundle_id, bundle_version, rule } => EventKind::BundleVerified {
                bundle_id: bundle_id.clone(),
                bundle_version: bundle_version.clone(),
                rule: rule.clone(),
            },
            Clearance::VendorSigned { key_id } => EventKind::Note {
                text: format!("image {} ({sha}) verified by vendor key {key_id}", file.display()),
            },
            Clearance::Unverified => EventKind::UnverifiedImageAllowed {
                image_sha256: sha,
                reason: format!("{}: sent with --allow-unverified", file.display()),
            },
        };
        self.record(Some(device), kind).await?;
        Ok(())
    }
}

/// How this laptop syncs, as a settings screen shows it: the remembered inventory server,
/// whether a sync token is in the OS keyring (never the token), the pinned server key and the
/// trust store in force.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, ts_rs::TS)]
pub struct SyncSettings {
    pub server: Option<String>,
    pub token_stored: bool,
    /// The keyring backend the token is kept in (`secret-service`, `keyutils`, `platform`).
    pub keyring: String,
    /// The server's checkpoint key pinned at the first sync (hex), if any.
    pub pinned_server_key: Option<String>,
    /// The pinned trust store, once a sync pulled one.
    pub trust: Option<TrustSummary>,
    /// Why the trust store on disk cannot be read, when it cannot.
    pub trust_problem: Option<String>,
    /// Whether the server's certificate is also checked against a private CA.
    pub private_ca: bool,
}

/// The trust store in force, for the technician to check.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, ts_rs::TS)]
pub struct TrustSummary {
    #[ts(type = "number")]
    pub version: u64,
    /// RFC 3339; `None`: it does not expire.
    pub expires: Option<String>,
    pub root_key_ids: Vec<String>,
}

impl Fieldpatch {
    /// Remember the inventory server and keep its sync token in the OS keyring (what
    /// `fieldpatch sync login` does). Refused before the token is stored when it would travel in
    /// the clear.
    pub async fn sync_login(
        &self,
        server: &str,
        token: &crate::credentials::Secret,
    ) -> Result<(), Error> {
        crate::sync::client::check_transport(server)?;
        if token.is_empty() {
            return Err(Error::Invalid("no token: paste the token from the inventory team".into()));
        }
        let local = self.sync_local().await?;
        self.credentials()
            .await?
            .set(&crate::credentials::CredentialName::SyncToken, token)
            .await?;
        local.remember_server(server).await.map_err(local_sync)?;
        Ok(())
    }

    /// Check the inventory server's certificate against this private CA (PEM) from now on, as
    /// well as the system's roots; `None` forgets it. Refused, changing nothing, when `pem` holds
    /// no certificate.
    pub async fn set_server_ca(&self, pem: Option<&str>) -> Result<(), Error> {
        if let Some(pem) = pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes()).unwrap_or_default();
            if certs.is_empty() {
                return Err(Error::Invalid(
                    "the private CA file holds no PEM certificate (-----BEGIN CERTIFICATE-----): choose the CA's certificate file".into(),
                ));
            }
        }
        let local = self.sync_local().await?;
        local.remember_server_ca(pem).await.map_err(local_sync)
    }

    /// The private CA (PEM) the inventory server is checked against, if one was set.
    pub async fn server_ca(&self) -> Result<Option<Vec<u8>>, Error> {
        let local = self.sync_local().await?;
        Ok(local.server_ca().await.map_err(local_sync)?.filter(|p| !p.is_empty()))
    }

    /// This laptop's sync settings ([`SyncSettings`]).
    pub async fn sync_settings(&self) -> Result<SyncSettings, Error> {
        let local = self.sync_local().await?;
        let credentials = self.credentials().await?;
        let path = local.trust_path();
        let (trust, trust_problem) = if !path.exists() {
            (None, None)
        } else {
            match crate::bundle::TrustStore::load(&path) {
                Ok(t) => (
                    Some(TrustSummary {
                        version: t.version(),
                        expires: t.expires().map(|e| e.to_rfc3339()),
                        root_key_ids: t
                            .keys_with_role(crate::bundle::Role::Root)
                            .into_iter()
                            .map(|(id, _)| id)
                            .collect(),
                    }),
                    None,
                ),
                Err(e) => (None, Some(e.to_string())),
            }
        };
        Ok(SyncSettings {
            server: local.server().await.map_err(local_sync)?,
            token_stored: credentials.sync_token().await?.is_some(),
            keyring: credentials.backend().as_str().into(),
            pinned_server_key: local.pinned_server_key().await.map_err(local_sync)?,
            trust,
            trust_problem,
            private_ca: local.server_ca().await.map_err(local_sync)?.is_some_and(|p| !p.is_empty()),
        })
    }
}

fn local_sync(e: crate::sync::LocalSyncError) -> Error {
    Error::Sync(crate::sync::SyncError::Local(Box::new(e)))
}

/// Whether a change of `name` goes into the visit log: the credentials of devices and site
/// models, which the technician hands to devices (not Fieldpatch's own key, token or records).
fn audited(name: &crate::credentials::CredentialName) -> bool {
    use crate::credentials::CredentialName;
    matches!(name, CredentialName::Device { .. } | CredentialName::SiteModel { .. })
}
