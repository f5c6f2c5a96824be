//! Offline batch sessions: a plan taken to patched, confirmed devices, safely.
//!
//! * **Canary first.** The first device of the plan is flashed alone, left to soak, and checked
//!   again; only a healthy canary lets the session go on.
//! * **Waves.** The rest go in waves of `wave_size`, at most `concurrency` at a time (each device
//!   on its own port or address), with per-device retries.
//! * **Failure threshold.** After each wave the failures (failed or rolled back) are counted; past
//!   the threshold the session stops, leaving the remaining devices pending.
//! * **Survives a restart.** The session state (each device's status) is saved through
//!   [`SessionStore`] after every change, so a killed or paused session resumes where it was;
//!   confirmed devices are never flashed again (and the flash pipeline itself recognises a device
//!   that already runs its target confirmed).
//! * **Dry run** walks the plan and says what would be done, touching no device.

use crate::flash::{
    EventSink, FlashOptions, FlashOutcome, FlashStage, FlashTarget, SinkError, TargetError,
    VerifiedImage, flash,
};
use crate::plan::{DevicePlan, DeviceRecord, Plan, Step};
use crate::progress::{Progress, TransferProgress};
use crate::visitlog::EventKind;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use ts_rs::TS;
use uuid::Uuid;

pub mod batch;
pub mod local;
pub mod lock;

/// When to stop a session.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Threshold {
    /// Stop once this many devices failed.
    Count(u32),
    /// Stop once this percentage of the devices attempted so far failed.
    Percent(f32),
}

impl Threshold {
    fn exceeded(&self, failed: u32, attempted: u32) -> bool {
        match *self {
            Threshold::Count(n) => failed >= n,
            Threshold::Percent(p) => {
                attempted > 0 && (failed as f32 * 100.0 / attempted as f32) > p
            }
        }
    }
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Threshold::Count(n) => write!(f, "{n}"),
            Threshold::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl std::str::FromStr for Threshold {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("invalid failure threshold {s:?}: give a count (3) or a percentage (10%)");
        match s.strip_suffix('%') {
            Some(p) => p
                .trim()
                .parse::<f32>()
                .ok()
                .filter(|p| (0.0..=100.0).contains(p))
                .map(Threshold::Percent)
                .ok_or_else(bad),
            None => s
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .map(Threshold::Count)
                .ok_or_else(bad),
        }
    }
}

/// How a session runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionOptions {
    pub canary: bool,
    pub soak: Duration,
    pub wave_size: usize,
    pub concurrency: usize,
    pub failure_threshold: Threshold,
    /// Attempts after the first for a device whose flash failed (not for rollbacks).
    pub retries: u32,
    pub dry_run: bool,
    pub reconnect_timeout: Duration,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            canary: true,
            soak: Duration::from_secs(10),
            wave_size: 8,
            concurrency: 4,
            failure_threshold: Threshold::Percent(20.0),
            retries: 1,
            dry_run: false,
            reconnect_timeout: Duration::from_secs(30),
        }
    }
}

impl SessionOptions {
    /// The options of a real site visit (the CLI's defaults): canary, a 10 s soak, waves of 8,
    /// 4 at a time, stop at 20 % failures, one retry.
    pub fn field() -> Self {
        Self::default()
    }

    /// The options of the built-in demo site: a short soak, everything at once, no retries, and a
    /// threshold that lets the demo's failing sensor roll back without stopping the session.
    pub fn demo() -> Self {
        Self {
            soak: Duration::from_secs(1),
            wave_size: 8,
            concurrency: 8,
            failure_threshold: Threshold::Percent(50.0),
            retries: 0,
            ..Self::default()
        }
    }
}

/// Where one device stands in a session. Its `Display` is the one wording of it that the CLI and
/// the app show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum DeviceStatus {
    Pending,
    /// Being flashed (step index); after a restart the device is checked and continued.
    InProgress {
        step: usize,
    },
    Patched {
        version: String,
    },
    RolledBack {
        reason: String,
    },
    Failed {
        reason: String,
    },
    Skipped {
        reason: String,
    },
    /// Written and accepted, but what the device runs cannot be checked: it cannot report or read
    /// back what it holds, or (MCUboot serial recovery) its application does not answer SMP.
    Unverified {
        version: String,
    },
}

impl DeviceStatus {
    fn is_final(&self) -> bool {
        !matches!(self, DeviceStatus::Pending | DeviceStatus::InProgress { .. })
    }
    fn is_failure(&self) -> bool {
        matches!(self, DeviceStatus::RolledBack { .. } | DeviceStatus::Failed { .. })
    }
}

impl std::fmt::Display for DeviceStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceStatus::Pending => f.write_str("pending"),
            DeviceStatus::InProgress { step } => write!(f, "flashing (step {})", step + 1),
            DeviceStatus::Patched { version } => write!(f, "patched: {version}"),
            DeviceStatus::RolledBack { reason } => write!(f, "rolled back: {reason}"),
            DeviceStatus::Failed { reason } => write!(f, "failed: {reason}"),
            DeviceStatus::Skipped { reason } => write!(f, "skipped: {reason}"),
            DeviceStatus::Unverified { version } => write!(
                f,
                "written, unverified: {version} (what the device runs could not be checked)"
            ),
        }
    }
}

/// Where the session as a whole stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    NotStarted,
    Running,
    Paused,
    Stopped { reason: String },
    Finished,
}

/// Everything needed to resume a session. Saved after every change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionState {
    pub id: Uuid,
    pub plan: Plan,
    pub options: SessionOptions,
    pub phase: Phase,
    pub canary_done: bool,
    pub devices: BTreeMap<String, DeviceStatus>,
    /// The site and work order the session's visit is for; `None`: a visit named after the
    /// session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visit_for: Option<VisitFor>,
    /// Devices the visit was to patch (its work order's or site's) that discovery did not find:
    /// each is recorded as not patched, and needs the technician's reason at the close-out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    /// The visit the session's last run opened in the visit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visit: Option<Uuid>,
}

/// What a session's visit is for: a site and, usually, a work order of the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisitFor {
    pub site: String,
    pub work_order: Option<String>,
}

/// Why a device the visit was to patch, not found on site, stayed unpatched.
pub const NOT_FOUND_REASON: &str = "not found on site: discovery did not find it";

/// Why a device the plan would flash was left out of a session by the technician's choice.
pub const NOT_CHOSEN_REASON: &str = "not chosen for this session";

/// Why the devices chosen for a session cannot be its devices.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChoiceError {
    #[error("no device was chosen: choose at least one device the plan would flash")]
    Empty,
    #[error("{0} is not in the plan: plan again after discovering it, or choose another device")]
    NotPlanned(String),
    #[error("{device} has nothing to flash now ({why}): leave it out of the session")]
    NothingToFlash { device: String, why: String },
}

impl SessionState {
    /// A new session for `plan`: every device with steps is pending; the others are skipped with
    /// the plan's reason.
    pub fn new(plan: Plan, options: SessionOptions) -> Self {
        let devices = plan
            .devices
            .iter()
            .map(|d| {
                let status = if d.steps_now().is_empty() {
                    DeviceStatus::Skipped { reason: skip_reason(d) }
                } else {
                    DeviceStatus::Pending
                };
                (d.device.id.clone(), status)
            })
            .collect();
        Self {
            id: Uuid::now_v7(),
            plan,
            options,
            phase: Phase::NotStarted,
            canary_done: false,
            devices,
            visit_for: None,
            missing: Vec::new(),
            visit: None,
        }
    }

    /// The same session, for `visit` (its visit is opened for that site and work order), which
    /// was to patch `expected`: those the plan does not hold were not found on site, and are
    /// recorded as not patched, each needing a reason at the close-out.
    pub fn for_visit(mut self, visit: VisitFor, expected: Vec<String>) -> Self {
        let planned: std::collections::BTreeSet<&String> = self.devices.keys().collect();
        let mut missing: Vec<String> =
            expected.into_iter().filter(|m| !planned.contains(m)).collect();
        missing.sort();
        missing.dedup();
        self.visit_for = Some(visit);
        self.missing = missing;
        self
    }

    /// The same session, flashing only the `chosen` devices (one, to flash a single device
    /// through the session's checks and log): every other device the plan would flash is
    /// skipped with [`NOT_CHOSEN_REASON`], so it is still accounted for and needs a reason at the
    /// close-out. Refused when nothing is chosen, or when a chosen device is not in the plan or
    /// has nothing to flash now (the message says why).
    pub fn only(mut self, chosen: &[String]) -> Result<Self, ChoiceError> {
        if chosen.is_empty() {
            return Err(ChoiceError::Empty);
        }
        for id in chosen {
            let Some(planned) = self.plan.devices.iter().find(|d| &d.device.id == id) else {
                return Err(ChoiceError::NotPlanned(id.clone()));
            };
            if planned.steps_now().is_empty() {
                return Err(ChoiceError::NothingToFlash {
                    device: id.clone(),
                    why: skip_reason(planned),
                });
            }
        }
        for (id, status) in self.devices.iter_mut() {
            if matches!(status, DeviceStatus::Pending) && !chosen.contains(id) {
                *status = DeviceStatus::Skipped { reason: NOT_CHOSEN_REASON.into() };
            }
        }
        Ok(self)
    }

    /// Counts by outcome.
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for st in self.devices.values() {
            match st {
                DeviceStatus::Pending | DeviceStatus::InProgress { .. } => s.pending += 1,
                DeviceStatus::Patched { .. } => s.patched += 1,
                DeviceStatus::RolledBack { .. } => s.rolled_back += 1,
                DeviceStatus::Failed { .. } => s.failed += 1,
                DeviceStatus::Skipped { .. } => s.skipped += 1,
                DeviceStatus::Unverified { .. } => s.unverified += 1,
            }
        }
        s
    }
}

fn skip_reason(d: &DevicePlan) -> String {
    use crate::plan::Disposition;
    match &d.disposition {
        Disposition::Patch { .. } => "nothing to flash".into(),
        Disposition::Scheduled { not_before, .. } => {
            format!("outside its maintenance window; scheduled from {not_before}")
        }
        Disposition::UpToDate { version } => format!("already at {version}"),
        Disposition::Unpatchable { why } => why.to_string(),
    }
}

/// Session totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, TS)]
pub struct Summary {
    pub patched: u32,
    pub rolled_back: u32,
    pub failed: u32,
    pub skipped: u32,
    pub pending: u32,
    /// Written but not verifiable on the device (never counted as patched).
    pub unverified: u32,
}

/// Persists session state (the local store implements it).
#[async_trait]
pub trait SessionStore: Send + Sync {
    async fn save(&self, state: &SessionState) -> Result<(), SessionError>;
}

/// Opens devices (driver adapters behind it): a device of a plan for flashing, and the USB DFU
/// devices on the bus. Optional capabilities default to "unsupported", so a connector for one kind
/// of device (a lab, a test fake) implements only what it has.
#[async_trait]
pub trait Connector: Send + Sync {
    async fn open(&self, device: &DeviceRecord) -> Result<Box<dyn FlashTarget>, TargetError>;

    /// Hold `device` for this runner while a session flashes it (released when the lock drops).
    /// Connectors to real transports lock across processes; a fake needs no lock.
    fn hold(&self, _device: &DeviceRecord) -> Result<Option<lock::RunnerLock>, lock::LockError> {
        Ok(None)
    }

    /// The USB DFU devices attached, in run-time or DFU mode.
    fn dfu_devices(&self) -> Result<Vec<fieldpatch_drivers::dfu::DfuDeviceInfo>, TargetError> {
        Err(TargetError::Unsupported("USB DFU"))
    }

    /// `device`'s identity strings and DFU alternate settings (names, DfuSe memory maps), read
    /// with standard descriptor requests only (blocking).
    fn dfu_describe(
        &self,
        _device: &fieldpatch_drivers::dfu::DfuDeviceInfo,
    ) -> Result<fieldpatch_drivers::dfu::DfuDescription, TargetError> {
        Err(TargetError::Unsupported("USB DFU"))
    }

    /// Download a checked DFU file to the device at USB `location` (blocking).
    fn dfu_download(
        &self,
        _location: &str,
        _file: &crate::image::dfu_file::DfuFile,
        _options: fieldpatch_drivers::dfu::DfuseOptions,
        _progress: &dyn crate::progress::Progress,
    ) -> Result<fieldpatch_drivers::dfu::DownloadReport, TargetError> {
        Err(TargetError::Unsupported("USB DFU"))
    }
}

/// Gives the verified image for a plan step (from the verified catalog).
pub trait ImageSource: Send + Sync {
    fn image(&self, device: &DeviceRecord, step: &Step) -> Result<VerifiedImage, String>;
    /// What the planner knows of every verified bundle: the steps of a plan are checked against
    /// it when they are about to run.
    fn entries(&self) -> Vec<crate::plan::PlannableBundle>;
}

/// What the session tells its front end (CLI progress bars, the app).
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    Phase { name: String },
    Status(DeviceStatus),
    Transfer(TransferProgress),
    Note(String),
}

/// Receives session events per device (`None` for the session itself).
pub type Observer = Arc<dyn Fn(Option<&str>, SessionEvent) + Send + Sync>;

/// Errors that stop a session (device failures do not: they are statuses).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Log(#[from] SinkError),
    /// The clock cannot be trusted for the expiry decision before a device; the session stops
    /// (nothing was sent to the device) and resumes once the clock is right.
    #[error("{0}")]
    Clock(String),
    #[error("cannot save the session state ({0}); stopped so that a restart does not redo work")]
    Store(String),
}

impl SessionError {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            SessionError::Log(_) => "log_unwritable",
            SessionError::Clock(_) => "clock_behind",
            SessionError::Store(_) => "store",
        }
    }
}

/// What a session needs from the outside.
#[derive(Clone)]
pub struct SessionDeps {
    pub connector: Arc<dyn Connector>,
    pub images: Arc<dyn ImageSource>,
    pub sink: Arc<dyn EventSink>,
    pub store: Arc<dyn SessionStore>,
    pub observer: Observer,
    /// Set to pause: devices in flight finish, no new ones start.
    pub pause: Arc<AtomicBool>,
    /// "Now" for the expiry decision made before each device.
    pub clock: SessionClock,
}

/// The clock a session decides expiry with before each device: the data directory's clock,
/// refused when it is behind the latest trusted time known when the session (re)started (it was
/// set back during the session).
#[derive(Debug, Clone, Default)]
pub struct SessionClock {
    pub clock: crate::clock::Clock,
    pub latest_trusted: Option<chrono::DateTime<chrono::Utc>>,
}

impl SessionClock {
    /// Now, checked (see [`crate::clock::check`]).
    pub fn now(&self) -> Result<chrono::DateTime<chrono::Utc>, crate::clock::ClockError> {
        crate::clock::check(self.clock.now(), self.latest_trusted)
    }
}

impl std::fmt::Debug for SessionDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionDeps").field("pause", &self.pause).finish_non_exhaustive()
    }
}

struct DeviceProgress {
    id: String,
    observer: Observer,
}

impl Progress for DeviceProgress {
    fn phase(&self, name: &str) {
        (self.observer)(Some(&self.id), SessionEvent::Phase { name: name.to_string() });
    }
    fn transfer(&self, p: TransferProgress) {
        (self.observer)(Some(&self.id), SessionEvent::Transfer(p));
    }
    fn note(&self, message: &str) {
        (self.observer)(Some(&self.id), SessionEvent::Note(message.to_string()));
    }
}

/// A session's state shared between its device tasks.
pub type SharedState = Arc<tokio::sync::Mutex<SessionState>>;

/// Run (or resume) a session until it finishes, stops on the failure threshold, or is paused.
pub async fn run(state: &SharedState, deps: &SessionDeps) -> Result<Summary, SessionError> {
    let (opts, order) = {
        let st = state.lock().await;
        let order: Vec<DevicePlan> = st
            .plan
            .patchable()
            .filter(|d| !st.devices.get(&d.device.id).is_some_and(DeviceStatus::is_final))
            .cloned()
            .collect();
        // Devices already settled (skipped by the plan or the technician's choice, or done
        // before a resume) are said first, so that a window opened now shows, and asks a reason
        // for, every device of the session.
        for (id, status) in st.devices.iter().filter(|(_, s)| s.is_final()) {
            (deps.observer)(Some(id), SessionEvent::Status(status.clone()));
        }
        (st.options.clone(), order)
    };
    if opts.dry_run {
        for d in &order {
            let steps: Vec<String> = d
                .steps_now()
                .iter()
                .map(|s| format!("{} ({} -> {})", s.bundle_id, s.from, s.to))
                .collect();
            let note = format!("would flash {}", steps.join(", then "));
            (deps.observer)(Some(&d.device.id), SessionEvent::Note(note));
        }
        return Ok(state.lock().await.summary());
    }
    // A session resumed after it stopped on its failure threshold does not flash another device
    // until the technician raises the threshold (having understood the failures).
    let (failed, attempted) = failure_counts(&*state.lock().await);
    if failed > 0 && opts.failure_threshold.exceeded(failed, attempted) {
        let reason = format!(
            "{failed} of {attempted} devices failed before this run: the failure threshold ({}) is already reached; resume with a higher threshold once the cause is understood",
            opts.failure_threshold
        );
        return stop(state, deps, reason).await;
    }
    set_phase(state, deps, Phase::Running).await?;

    let mut remaining = order;
    let canary_done = state.lock().await.canary_done;
    if opts.canary && !canary_done && !remaining.is_empty() {
        // The canary proves the image on one device before the rest: it is a device that can
        // test-boot and revert where the session has one (a device in serial recovery or a
        // gateway is patched without a way back, so it waits for the canary's verdict).
        let pick = remaining.iter().position(|d| d.no_rollback.is_none());
        let canary = remaining.remove(pick.unwrap_or(0));
        let id = canary.device.id.clone();
        let note = match pick {
            Some(_) => format!("canary: {id}"),
            None => format!(
                "canary: {id}; no device in this session can test-boot and revert, so the canary cannot either"
            ),
        };
        (deps.observer)(None, SessionEvent::Note(note));
        let status = match run_device(state, deps, &canary).await {
            Err(SessionError::Clock(reason)) => return stop(state, deps, reason).await,
            other => other?,
        };
        if !matches!(status, DeviceStatus::Patched { .. }) {
            return stop(state, deps, format!("canary {id} did not patch cleanly")).await;
        }
        if !opts.soak.is_zero() {
            let note = format!("soaking the canary for {:?}", opts.soak);
            (deps.observer)(None, SessionEvent::Note(note));
            tokio::time::sleep(opts.soak).await;
        }
        if let Err(why) = recheck(deps, &canary).await {
            let reason = format!("canary {id} unhealthy after its soak: {why}");
            let kind =
                EventKind::Failed { stage: FlashStage::Soak.to_string(), reason: reason.clone() };
            deps.sink.record(&id, kind).await?;
            set_status(state, deps, &id, DeviceStatus::Failed { reason: reason.clone() }).await?;
            return stop(state, deps, reason).await;
        }
        let mut st = state.lock().await;
        st.canary_done = true;
        deps.store.save(&st).await?;
    }

    for wave in remaining.chunks(opts.wave_size.max(1)) {
        if deps.pause.load(Ordering::SeqCst) {
            break;
        }
        let sem = Arc::new(tokio::sync::Semaphore::new(opts.concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for d in wave {
            let (sem, state, deps, d) = (sem.clone(), state.clone(), deps.clone(), d.clone());
            tasks.spawn(async move {
                // The semaphore is never closed; were it, the device would run without a permit.
                let _permit = sem.acquire_owned().await.ok();
                if deps.pause.load(Ordering::SeqCst) {
                    return Ok(());
                }
                run_device(&state, &deps, &d).await.map(|_| ())
            });
        }
        let mut first_err = None;
        while let Some(joined) = tasks.join_next().await {
            let err = match joined {
                Ok(r) => r.err(),
                Err(e) => Some(SessionError::Store(format!("a device task ended abnormally: {e}"))),
            };
            first_err = first_err.or(err);
        }
        match first_err {
            // Nothing was sent to the device that met it: the session stops, to resume once
            // the clock is right.
            Some(SessionError::Clock(reason)) => return stop(state, deps, reason).await,
            Some(e) => return Err(e),
            None => {}
        }
        let (failed, attempted) = failure_counts(&*state.lock().await);
        if opts.failure_threshold.exceeded(failed, attempted) {
            let reason =
                format!("{failed} of {attempted} devices failed: failure threshold reached");
            return stop(state, deps, reason).await;
        }
    }
    let unfinished = state.lock().await.devices.values().filter(|s| !s.is_final()).count();
    if unfinished > 0 && !deps.pause.load(Ordering::SeqCst) {
        // Devices another runner held were left pending: the session is not over for them.
        let reason = format!(
            "{unfinished} device(s) were held by another Fieldpatch runner and left untouched; resume the session once it is done"
        );
        return stop(state, deps, reason).await;
    }
    let phase = if unfinished > 0 { Phase::Paused } else { Phase::Finished };
    set_phase(state, deps, phase).await?;
    Ok(state.lock().await.summary())
}

async fn set_phase(
    state: &SharedState,
    deps: &SessionDeps,
    phase: Phase,
) -> Result<(), SessionError> {
    let mut st = state.lock().await;
    st.phase = phase;
    deps.store.save(&st).await
}

async fn stop(
    state: &SharedState,
    deps: &SessionDeps,
    reason: String,
) -> Result<Summary, SessionError> {
    (deps.observer)(None, SessionEvent::Note(format!("session stopped: {reason}")));
    set_phase(state, deps, Phase::Stopped { reason }).await?;
    Ok(state.lock().await.summary())
}

/// Devices failed and devices attempted (finished, not skipped) so far.
fn failure_counts(st: &SessionState) -> (u32, u32) {
    let failed = st.devices.values().filter(|s| s.is_failure()).count() as u32;
    let attempted = st
        .devices
        .values()
        .filter(|s| s.is_final() && !matches!(s, DeviceStatus::Skipped { .. }))
        .count() as u32;
    (failed, attempted)
}

async fn recheck(deps: &SessionDeps, d: &DevicePlan) -> Result<(), String> {
    let last = d.steps_now().last().ok_or("no steps")?;
    let image = deps.images.image(&d.device, last)?;
    let mut target = deps.connector.open(&d.device).await.map_err(|e| e.to_string())?;
    let s = target.state().await.map_err(|e| e.to_string())?;
    if s.running_hash.is_none() && s.running_version.is_none() && !target.supports_test_boot() {
        // A device that cannot say what it runs (USB DFU) was checked when it was written
        // (readback); after the soak all that can be asked is that it still answers.
        return Ok(());
    }
    if s.running_hash.as_deref() != Some(image.device_hash.as_slice()) || !s.confirmed {
        return Err(format!(
            "runs {} (confirmed: {})",
            s.running_version.map(|v| v.to_string()).unwrap_or_else(|| "an unknown image".into()),
            s.confirmed
        ));
    }
    Ok(())
}

async fn set_status(
    shared: &SharedState,
    deps: &SessionDeps,
    id: &str,
    status: DeviceStatus,
) -> Result<(), SessionError> {
    (deps.observer)(Some(id), SessionEvent::Status(status.clone()));
    let mut st = shared.lock().await;
    st.devices.insert(id.to_string(), status);
    deps.store.save(&st).await
}

async fn run_device(
    shared: &SharedState,
    deps: &SessionDeps,
    d: &DevicePlan,
) -> Result<DeviceStatus, SessionError> {
    let id = d.device.id.as_str();
    // A device left in progress by a stop is resumed at the step it was in (that step's transfer
    // may have been cut short).
    let (opts, start_step, resumed) = {
        let st = shared.lock().await;
        let start = match st.devices.get(id) {
            Some(DeviceStatus::InProgress { step }) => Some(*step),
            _ => None,
        };
        (st.options.clone(), start.unwrap_or(0), start.is_some())
    };
    // One runner per device: another session (another process) flashing it is refused here.
    let _device_lock = match deps.connector.hold(&d.device) {
        Ok(l) => l,
        Err(e) => {
            // Left pending (a resume tries it again); nothing was sent to it.
            (deps.observer)(Some(id), SessionEvent::Note(e.to_string()));
            set_status(shared, deps, id, DeviceStatus::Pending).await?;
            return Ok(DeviceStatus::Pending);
        }
    };
    let progress = DeviceProgress { id: id.to_string(), observer: deps.observer.clone() };
    let flash_opts =
        FlashOptions { reconnect_timeout: opts.reconnect_timeout, ..Default::default() };
    let steps = d.steps_now();
    // What the plan says is checked again now, against the verified catalog and what the device
    // reports: an edited plan cannot send another model's bundle or a downgrade.
    // The device is opened once for this check and the first flash (a serial port cannot be
    // opened twice at once).
    let mut opened = deps.connector.open(&d.device).await.ok();
    let running = match opened.as_mut() {
        Some(t) => t.state().await.ok().and_then(|s| s.running_version),
        None => None,
    };
    let remaining = steps.get(start_step..).unwrap_or_default();
    // Expiry is decided now, before anything is sent: a bundle usable when the session was
    // planned may have expired since (or the clock may have been set back).
    let now = match deps.clock.now() {
        Ok(now) => now,
        Err(e) => {
            let reason = format!("before {id}: refused an expiry decision: {e}");
            deps.sink.record(id, EventKind::Note { text: reason.clone() }).await?;
            return Err(SessionError::Clock(reason));
        }
    };
    if let Err(reason) = crate::plan::check_steps(
        &deps.images.entries(),
        &d.device.identity,
        running,
        remaining,
        now,
    ) {
        let bundle_id = remaining.first().map(|s| s.bundle_id.clone()).unwrap_or_default();
        deps.sink
            .record(id, EventKind::BundleRefused { bundle_id, reason: reason.clone() })
            .await?;
        let reason = match resumed {
            false => format!("refused before sending: {reason}"),
            // Not untouched: a stop interrupted this device's flash, and it is as that left it.
            true => format!(
                "refused before sending step {} of {} again (the session stopped while it was \
                 flashing this device; check what it runs): {reason}",
                start_step + 1,
                steps.len()
            ),
        };
        let status = DeviceStatus::Failed { reason };
        set_status(shared, deps, id, status.clone()).await?;
        return Ok(status);
    }
    let mut version = String::new();
    for (i, step) in steps.iter().enumerate().skip(start_step) {
        set_status(shared, deps, id, DeviceStatus::InProgress { step: i }).await?;
        let image = match deps.images.image(&d.device, step) {
            Ok(img) => img,
            Err(why) => {
                deps.sink
                    .record(
                        id,
                        EventKind::BundleRefused {
                            bundle_id: step.bundle_id.clone(),
                            reason: why.clone(),
                        },
                    )
                    .await?;
                let status =
                    DeviceStatus::Failed { reason: format!("bundle {}: {why}", step.bundle_id) };
                set_status(shared, deps, id, status.clone()).await?;
                return Ok(status);
            }
        };
        let mut attempt = 0;
        let outcome = loop {
            let target = match opened.take() {
                Some(t) => Ok(t),
                None => deps.connector.open(&d.device).await,
            };
            let outcome = match target {
                Ok(mut target) => {
                    flash(id, target.as_mut(), &image, deps.sink.as_ref(), &progress, &flash_opts)
                        .await?
                }
                Err(e) => {
                    let reason = format!("cannot open {}: {e}", d.device.address);
                    deps.sink
                        .record(
                            id,
                            EventKind::Failed {
                                stage: FlashStage::Open.to_string(),
                                reason: reason.clone(),
                            },
                        )
                        .await?;
                    FlashOutcome::Failed { stage: FlashStage::Open, reason }
                }
            };
            match &outcome {
                FlashOutcome::Failed { .. } if attempt < opts.retries => {
                    attempt += 1;
                    progress.note(&format!("retrying (attempt {})", attempt + 1));
                }
                _ => break outcome,
            }
        };
        match outcome {
            FlashOutcome::Confirmed { version: v } | FlashOutcome::AlreadyDone { version: v } => {
                version = v.to_string();
            }
            FlashOutcome::Unverified { version } => {
                let status = DeviceStatus::Unverified { version: version.to_string() };
                set_status(shared, deps, id, status.clone()).await?;
                return Ok(status);
            }
            FlashOutcome::RolledBack { reason } => {
                let status = DeviceStatus::RolledBack { reason };
                set_status(shared, deps, id, status.clone()).await?;
                return Ok(status);
            }
            FlashOutcome::Failed { stage, reason } => {
                let status = DeviceStatus::Failed { reason: format!("{stage}: {reason}") };
                set_status(shared, deps, id, status.clone()).await?;
                return Ok(status);
            }
        }
    }
    let status = DeviceStatus::Patched { version };
    set_status(shared, deps, id, status.clone()).await?;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flash::fake::{FakeDevice, MemorySink};
    use crate::model::DeviceIdentity;
    use crate::plan::{DeviceAddress, InstalledRange, PlanInput, PlannableBundle, plan};
    use sha2::{Digest, Sha256};
    use std::collections::HashMap;
    use std::sync::Mutex;

    #[test]
    fn device_statuses_read_the_same_everywhere() {
        let texts: Vec<String> = [
            DeviceStatus::Pending,
            DeviceStatus::InProgress { step: 0 },
            DeviceStatus::Patched { version: "1.5.0".into() },
            DeviceStatus::RolledBack { reason: "unhealthy".into() },
            DeviceStatus::Failed { reason: "timeout".into() },
            DeviceStatus::Skipped { reason: "already at 3.0.0".into() },
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            texts,
            [
                "pending",
                "flashing (step 1)",
                "patched: 1.5.0",
                "rolled back: unhealthy",
                "failed: timeout",
                "skipped: already at 3.0.0"
            ]
        );
    }

    struct Lab(HashMap<String, FakeDevice>);

    #[async_trait]
    impl Connector for Lab {
        async fn open(&self, d: &DeviceRecord) -> Result<Box<dyn FlashTarget>, TargetError> {
            let dev = self.0.get(&d.id).ok_or(TargetError::reported_transient("no such device"))?;
            Ok(Box::new(dev.open()))
        }
    }

    /// A lab whose devices named in `held` are being flashed by another runner.
    struct HeldLab(Lab, Vec<String>);

    #[async_trait]
    impl Connector for HeldLab {
        async fn open(&self, d: &DeviceRecord) -> Result<Box<dyn FlashTarget>, TargetError> {
            self.0.open(d).await
        }
        fn hold(&self, d: &DeviceRecord) -> Result<Option<lock::RunnerLock>, lock::LockError> {
            if self.1.contains(&d.id) {
                return Err(lock::LockError::Held { what: format!("the device {}", d.id) });
            }
            Ok(None)
        }
    }

    #[tokio::test]
    async fn a_device_held_by_another_runner_leaves_the_session_stopped_for_a_resume() {
        let (plan, lab) = setup(3);
        let held = plan.devices[1].device.id.clone();
        let mut d = deps(lab.clone(), Arc::new(Saved::default()), Arc::new(MemorySink::default()));
        d.connector = Arc::new(HeldLab(Lab(lab.clone()), vec![held.clone()]));
        let state = Arc::new(tokio::sync::Mutex::new(SessionState::new(plan, opts())));
        let summary = run(&state, &d).await.unwrap();
        assert_eq!((summary.patched, summary.pending), (2, 1), "{summary:?}");
        assert!(
            matches!(&state.lock().await.phase, Phase::Stopped { reason } if reason.contains("held by another")),
            "{:?}",
            state.lock().await.phase
        );
        // Once the other runner is done, a resume flashes it.
        d.connector = Arc::new(Lab(lab.clone()));
        let summary = run(&state, &d).await.unwrap();
        assert_eq!(summary.patched, 3, "{summary:?}");
        assert_eq!(state.lock().await.phase, Phase::Finished);
        assert_eq!(lab[&held].uploads(), 1);
    }

    struct Images;
    impl ImageSource for Images {
        fn entries(&self) -> Vec<PlannableBundle> {
            catalog_entries()
        }
        fn image(&self, _d: &DeviceRecord, step: &Step) -> Result<VerifiedImage, String> {
            let bytes = vec![9u8; 3000];
            let sha: [u8; 32] = Sha256::digest(&bytes).into();
            Ok(VerifiedImage {
                bundle_id: Some(step.bundle_id.clone()),
                from: Some(step.from),
                to: step.to,
                bytes: bytes.into(),
                sha256: sha,
                device_hash: sha.to_vec(),
                esp: None,
            })
        }
    }

    #[derive(Default)]
    struct Saved(Mutex<Vec<SessionState>>);
    #[async_trait]
    impl SessionStore for Saved {
        async fn save(&self, s: &SessionState) -> Result<(), SessionError> {
            // Persist through JSON, as the store does.
            let json = serde_json::to_string(s).map_err(|e| SessionError::Store(e.to_string()))?;
            self.0.lock().unwrap().push(serde_json::from_str(&json).unwrap());
            Ok(())
        }
    }

    fn setup(n: usize) -> (Plan, HashMap<String, FakeDevice>) {
        let mut devices = Vec::new();
        let mut lab = HashMap::new();
        for i in 0..n {
            let id = format!("dev-{i:02}");
            devices.push(DeviceRecord {
                id: id.clone(),
                address: DeviceAddress::Udp { addr: format!("127.0.0.1:{}", 2000 + i) },
                identity: DeviceIdentity {
                    vendor: Some("acme".into()),
                    model: Some("sensor".into()),
                    firmware_version: Some("1.0.0".parse().unwrap()),
                    ..Default::default()
                },
                criticality: Default::default(),
                windows: vec![],
                credential: None,
                health_url: None,
            });
            lab.insert(id, FakeDevice::new("1.0.0"));
        }
        let catalog = catalog_entries();
        let input = PlanInput { devices, catalog, ..Default::default() };
        (plan(&input, chrono::Utc::now()), lab)
    }

    fn catalog_entries() -> Vec<PlannableBundle> {
        vec![PlannableBundle {
            bundle_id: "fw-2".into(),
            vendor: "acme".into(),
            model: "sensor".into(),
            hw_min: None,
            hw_max: None,
            applies_to: InstalledRange { min: None, max: Some("1.9.0".parse().unwrap()) },
            installs: "2.0.0".parse().unwrap(),
            cvss: 7.5,
            cves: vec![],
            usable_until: chrono::Utc::now() + chrono::Duration::days(1),
            needs_credential: false,
        }]
    }

    fn deps(
        lab: HashMap<String, FakeDevice>,
        store: Arc<Saved>,
        sink: Arc<MemorySink>,
    ) -> SessionDeps {
        SessionDeps {
            connector: Arc::new(Lab(lab)),
            images: Arc::new(Images),
            sink,
            store,
            observer: Arc::new(|_, _| {}),
            pause: Arc::new(AtomicBool::new(false)),
            clock: SessionClock::default(),
        }
    }

    fn opts() -> SessionOptions {
        SessionOptions {
            soak: Duration::ZERO,
            wave_size: 3,
            concurrency: 2,
            failure_threshold: Threshold::Count(2),
            retries: 0,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_bundle_expired_since_the_plan_is_refused_before_anything_is_sent() {
        let (plan, lab) = setup(2);
        let store = Arc::new(Saved::default());
        let sink = Arc::new(MemorySink::default());
        let mut d = deps(lab.clone(), store, sink.clone());
        // Planned while the bundle was usable (a day left); the clock is now two days on.
        d.clock.clock =
            crate::clock::Clock::from_fn(|| chrono::Utc::now() + chrono::Duration::days(2));
        // The second device is resumed: a stop interrupted its flash.
        let resumed = plan.devices[1].device.id.clone();
        // Without a canary: a canary refused would stop the session before the other device.
        let mut state = SessionState::new(plan, SessionOptions { canary: false, ..opts() });
        state.devices.insert(resumed.clone(), DeviceStatus::InProgress { step: 0 });
        let state = Arc::new(tokio::sync::Mutex::new(state));
        run(&state, &d).await.unwrap();
        for (id, device) in &lab {
            assert_eq!(device.uploads(), 0, "{id} was sent nothing");
            match state.lock().await.devices.get(id) {
                Some(DeviceStatus::Failed { reason }) => {
                    assert!(reason.contains("usable until") && reason.contains("sync"), "{reason}");
                    // Only a device nothing was ever sent to is called untouched.
                    if *id == resumed {
                        assert!(
                            reason.starts_with("refused before sending step 1 of 1 again")
                                && reason.contains("stopped while it was flashing this device"),
                            "{reason}"
                        );
                    } else {
                        assert!(reason.starts_with("refused before sending: "), "{reason}");
                    }
                }
                other => panic!("{id}: {other:?}"),
            }
        }
        let tags: Vec<&str> = sink.0.lock().unwrap().iter().map(|(_, k)| k.tag()).collect();
        assert!(tags.contains(&"bundle_refused"), "{tags:?}");
    }

    #[tokio::test]
    async fn a_clock_set_back_during_a_session_stops_it_untouched_until_the_clock_is_right() {
        let (plan, lab) = setup(2);
        let store = Arc::new(Saved::default());
        let sink = Arc::new(MemorySink::default());
        let mut d = deps(lab.clone(), store, sink.clone());
        // The latest trusted time is an hour ahead of this clock: it was set back.
        d.clock.latest_trusted = Some(chrono::Utc::now() + chrono::Duration::hours(1));
        let state = Arc::new(tokio::sync::Mutex::new(SessionState::new(plan, opts())));
        run(&state, &d).await.unwrap();
        match &state.lock().await.phase {
            Phase::Stopped { reason } => {
                assert!(reason.contains("clock was set back"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert!(lab.values().all(|dev| dev.uploads() == 0));
        assert!(
            state.lock().await.devices.values().all(|s| !s.is_final()),
            "no device has an outcome: each waits for the resume"
        );
        let notes = sink.0.lock().unwrap().clone();
        assert!(
            notes.iter().any(|(_, k)| matches!(k, EventKind::Note { text } if text.contains("refused an expiry decision"))),
            "the log says why: {notes:?}"
        );
        // The clock set right, the session resumes and finishes.
        d.clock.latest_trusted = Some(chrono::Utc::now());
        let summary = run(&state, &d).await.unwrap();
        assert_eq!(summary.patched, 2, "{summary:?}");
        assert_eq!(state.lock().await.phase, Phase::Finished);
    }

    #[tokio::test]
    async fn the_canary_is_a_device_that_can_revert_when_the_session_has_one() {
        let (mut plan, lab) = setup(4);
        // The first two in plan order cannot test-boot or revert (as a device in serial
        // recovery): the canary is the first that can.
        for d in plan.devices.iter_mut().take(2) {
            d.no_rollback = Some(crate::plan::SERIAL_RECOVERY_NO_ROLLBACK.into());
        }
        let first_revertible = plan.devices[2].device.id.clone();
        let store = Arc::new(Saved::default());
        let sink = Arc::new(MemorySink::default());
        let d = deps(lab.clone(), store.clone(), sink.clone());
        let state = Arc::new(tokio::sync::Mutex::new(SessionState::new(plan, opts())));
        let summary = run(&state, &d).await.unwrap();
        assert_eq!(summary.patched, 4, "{summary:?}");
        let tags = sink.0.lock().unwrap().clone();
        let confirmed = tags.iter().position(|(_, k)| k.tag() == "confirmed").unwrap();
        assert!(
            tags[..=confirmed].iter().all(|(dev, _)| dev == &first_revertible),
            "the canary {first_revertible} went first and alone: {tags:?}"
        );
    }

    #[tokio::test]
    async fn a_session_of_chosen_devices_flashes_those_only_and_accounts_for_the_rest() {
        let (mut plan, lab) = setup(4);
        // One device with nothing to flash now: it cannot be chosen.
        plan.devices[3].disposition =
            crate::plan::Disposition::UpToDate { version: "2.0.0".parse().unwrap() };
        let up_to_date = plan.devices[3].device.id.clone();
        let new = || SessionState::new(plan.clone(), opts());
        assert_eq!(new().only(&[]).unwrap_err(), ChoiceError::Empty);
        assert_eq!(
            new().only(&["dev-99".into()]).unwrap_err(),
            ChoiceError::NotPlanned("dev-99".into())
        );
        let err = new().only(std::slice::from_ref(&up_to_date)).unwrap_err();
        assert!(
            matches!(&err, ChoiceError::NothingToFlash { device, why } if device == &up_to_date && why.contains("already at")),
            "{err}"
        );

        let chosen = plan.devices[1].device.id.clone();
        let state = new().only(std::slice::from_ref(&chosen)).unwrap();
        let sink = Arc::new(MemorySink::default());
        let d = deps(lab.clone(), Arc::new(Saved::default()), sink.clone());
        let state = Arc::new(tokio::sync::Mutex::new(state));
        let summary = run(&state, &d).await.unwrap();
        assert_eq!((summary.patched, summary.skipped), (1, 3), "{summary:?}");
        let st = state.lock().await;
        for (id, status) in &st.devices {
            let uploads = lab[id].uploads();
            if id == &chosen {
                assert!(matches!(status, DeviceStatus::Patched { .. }), "{id}: {status}");
                assert_eq!(uploads, 1);
            } else {
                assert_eq!(uploads, 0, "{id} was not chosen, yet flashed");
                let not_chosen = DeviceStatus::Skipped { reason: NOT_CHOSEN_REASON.into() };
                assert_eq!(*status == not_chosen, id != &up_to_date, "{id}: {status}");
            }
        }
        // Only the chosen device shows up in the log.
        assert!(sink.0.lock().unwrap().iter().all(|(dev, _)| dev == &chosen));
    }

    #[tokio::test]
    async fn canary_then_waves_patch_every_device() {
        let (plan, lab) = setup(7);
        let store = Arc::new(Saved::default());
        let sink = Arc::new(MemorySink::default());
        let d = deps(lab.clone(), store.clone(), sink.clone());
        let state = Arc::new(tokio::sync::Mutex::new(SessionState::new(plan, opts())));
        let summary = run(&state, &d).await.unwrap();
        assert_eq!(summary.patched, 7, "{summary:?}");
        assert_eq!(state.lock().await.phase, Phase::Finished);
        assert!(lab.values().all(|dev| dev.snapshot().confirmed && dev.uploads() == 1));
        // The canary was finished before any other device started.
        let tags = sink.0.lock().unwrap().clone();
        let canary_done = tags.iter().position(|(_, k)| k.tag() == "confirmed").unwrap();
        assert!(tags[..canary_done].iter().all(|(dev, _)| dev == &tags[0].0));
        assert!(!store.0.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_rolled_back_device_does_not_stop_the_session_but_the_threshold_does() {
        let (plan, lab) = setup(7);
        lab["dev-02"].set_fail_boot(true);
        let sink = Arc::new(MemorySink::default());
        let d = deps(lab.clone(), Arc::new(Saved::default()), sink.clone());
        let state = Arc::new(tokio::sync::Mutex::new(SessionState::new(plan.clone(), opts())));
        let s = run(&state, &d).await.unwrap();
        assert_eq!((s.patched, s.rolled_back), (6, 1), "{s:?}");
        assert_eq!(sink.for_device("dev-02").last().unwrap(), "rolled_back");

        let (plan, lab) = setup(7);
        for id in ["dev-01", "dev-02"] {
            lab[id].set_fail_boot(true);
        }
        let d = deps(lab.clone(), Arc::new(Saved::default()), Arc::new(MemorySink::default()));
        let state = Arc::new(tokio::sync::Mutex::new(SessionState::new(plan, opts())));
        let s = run(&state, &d).await.unwrap();
        assert!(
            matches!(state.lock().await.phase, Phase::Stopped { ref reason } if reason.contains("threshold"))
        );
        assert_eq!(s.rolled_back, 2);
        assert!(s.pending > 0, "devices after the stop stay pending: {s:?}");
    }

    #[tokio::test]
    async fn a_session_stopped_by_its_threshold_flashes_nothing_more_on_resume() {
        let (plan, lab) = setup(7);
        for id in ["dev-01", "dev-02"] {
            lab[id].set_fail_boot(true);
        }
        let store = Arc::new(Saved::default());
        let d = deps(lab.clone(), store.clone(), Arc::new(MemorySink::default()));
        let state = Arc::new(tokio::sync::Mutex::new(SessionState::new(plan, opts())));
        run(&state, &d).await.unwrap();
        let uploads: u32 = lab.values().map(|d| d.uploads()).sum();

        // Resumed as it was: stopped again before any device is touched.
        let saved = store.0.lock().unwrap().last().unwrap().clone();
        let resumed = Arc::new(tokio::sync::Mutex::new(saved.clone()));
        let s = run(&resumed, &d).await.unwrap();
        assert_eq!(lab.values().map(|d| d.uploads()).sum::<u32>(), uploads, "flashed on resume");
        assert!(s.pending > 0, "{s:?}");
        assert!(
            matches!(resumed.lock().await.phase, Phase::Stopped { ref reason } if reason.contains("already reached")),
            "{:?}",
            resumed.lock().await.phase
        );

        // With the threshold raised by the technician, the rest is flashed.
        let mut raised = saved;
        raised.options.failure_threshold = Threshold::Count(10);
        let resumed = Arc::new(tokio::sync::Mutex::new(raised));
        let s = run(&resumed, &d).await.unwrap();
        assert_eq!(s.pending, 0, "{s:?}");
        assert!(lab.values().map(|d| d.uploads()).sum::<u32>() > uploads);
    }

    #[tokio::test]
    async fn an_edited_plan_cannot_choose_what_is_sent() {
        use crate::plan::Disposition;
        let (mut plan, lab) = setup(3);
        // Another model: the inventory record in the plan is left alone, the step is rewritten
        // to a downgrade-shaped version the verified bundle does not install.
        if let Disposition::Patch { steps, .. } = &mut plan.devices[0].disposition {
            steps[0].to = "9.9.9".parse().unwrap();
        }
        // A device whose plan claims another vendor's bundle applies.
        plan.devices[1].device.identity.model = Some("pump".into());
        let sink = Arc::new(MemorySink::default());
        let d = deps(lab.clone(), Arc::new(Saved::default()), sink.clone());
        let mut o = opts();
        o.canary = false;
        o.failure_threshold = Threshold::Count(10);
        let state = Arc::new(tokio::sync::Mutex::new(SessionState::new(plan, o)));
        let s = run(&state, &d).await.unwrap();
        assert_eq!((s.patched, s.failed), (1, 2), "{s:?}");
        for id in ["dev-00", "dev-01"] {
            assert_eq!(lab[id].uploads(), 0, "{id} received bytes");
            assert_eq!(sink.for_device(id), ["bundle_refused"], "{id}");
        }
        assert_eq!(lab["dev-02"].uploads(), 1);
    }

    #[tokio::test]
    async fn a_failed_canary_stops_everything() {
        let (plan, lab) = setup(4);
        let first = plan.devices[0].device.id.clone();
        lab[&first].set_fail_boot(true);
        let d = deps(lab.clone(), Arc::new(Saved::default()), Arc::new(MemorySink::default()));
        let state = Arc::new(tokio::sync::Mutex::new(SessionState::new(plan, opts())));
        let s = run(&state, &d).await.unwrap();
        assert_eq!((s.patched, s.rolled_back, s.pending), (0, 1, 3));
        assert!(lab.values().filter(|d| d.uploads() > 0).count() == 1);
    }

    #[tokio::test]
    async fn paused_session_resumes_from_saved_state_without_reflashing() {
        let (plan, lab) = setup(6);
        let store = Arc::new(Saved::default());
        let d = deps(lab.clone(), store.clone(), Arc::new(MemorySink::default()));
        let state = Arc::new(tokio::sync::Mutex::new(SessionState::new(plan, opts())));
        let mut d = d;
        // Pause as soon as the canary is patched (what a technician's "pause" does mid-session).
        let pause = d.pause.clone();
        d.observer = Arc::new(move |_, e| {
            if matches!(e, SessionEvent::Status(DeviceStatus::Patched { .. })) {
                pause.store(true, Ordering::SeqCst);
            }
        });
        let first = run(&state, &d).await.unwrap();
        assert_eq!(state.lock().await.phase, Phase::Paused);
        assert_eq!((first.patched, first.pending), (1, 5), "{first:?}");

        // "Restart": load the last saved state and run it again.
        let saved = store.0.lock().unwrap().last().unwrap().clone();
        assert_eq!(saved.phase, Phase::Paused);
        d.observer = Arc::new(|_, _| {});
        d.pause.store(false, Ordering::SeqCst);
        let resumed = Arc::new(tokio::sync::Mutex::new(saved));
        let s = run(&resumed, &d).await.unwrap();
        assert_eq!(s.patched, 6, "{s:?}");
        assert!(lab.values().all(|d| d.uploads() == 1), "no device was flashed twice");
    }

    #[tokio::test]
    async fn dry_run_touches_no_device() {
        let (plan, lab) = setup(3);
        let notes = Arc::new(Mutex::new(Vec::new()));
        let mut d = deps(lab.clone(), Arc::new(Saved::default()), Arc::new(MemorySink::default()));
        let n = notes.clone();
        d.observer = Arc::new(move |_, e| {
            if let SessionEvent::Note(t) = e {
                n.lock().unwrap().push(t)
            }
        });
        let state = Arc::new(tokio::sync::Mutex::new(SessionState::new(
            plan,
            SessionOptions { dry_run: true, ..opts() },
        )));
        let s = run(&state, &d).await.unwrap();
        assert_eq!(s.pending, 3);
        assert!(lab.values().all(|d| d.uploads() == 0));
        assert_eq!(notes.lock().unwrap().len(), 3);
        assert!(notes.lock().unwrap()[0].contains("fw-2 (1.0.0 -> 2.0.0)"));
    }

    #[test]
    fn thresholds_parse() {
        assert_eq!("3".parse::<Threshold>().unwrap(), Threshold::Count(3));
        assert_eq!("10%".parse::<Threshold>().unwrap(), Threshold::Percent(10.0));
        assert!("0".parse::<Threshold>().is_err());
        assert!("150%".parse::<Threshold>().unwrap_err().contains("percentage"));
        assert!(Threshold::Percent(20.0).exceeded(1, 4));
        assert!(!Threshold::Percent(25.0).exceeded(1, 4));
    }
}
