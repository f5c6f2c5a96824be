//! The offline batch job end to end, as the CLI and the app run it: load and verify the catalog,
//! identify the devices, plan, and run a session inside a visit in the signed visit log.

use super::local::{LogSink, StoreSessions};
use super::{Connector, Observer, SessionDeps, SessionError, SessionState, SharedState, Summary};
use crate::bundle::trust::TrustStore;
use crate::bundle::verify::VerifyPolicy;
use crate::catalog::{Catalog, CatalogError};
use crate::credentials::Credentials;
use crate::plan::{DeviceRecord, Plan, PlanInput, plan};
use crate::store::Store;
use crate::visitlog::{EventKind, VisitLog};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// Errors preparing or running a batch job.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("trust store {path}: {message}")]
    Trust { path: String, message: String },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("devices file {path}: {message}")]
    Devices { path: String, message: String },
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The visit log could not be written or read: the device was left as it was.
    #[error(transparent)]
    Log(#[from] crate::visitlog::LogError),
    #[error(transparent)]
    Reasons(#[from] ReasonsMissing),
    #[error("work order {id}: {message}")]
    WorkOrder { id: String, message: String },
}

impl BatchError {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            BatchError::Trust { .. } => "trust_store",
            BatchError::Catalog(e) => e.code(),
            BatchError::Devices { .. } => "devices_file",
            BatchError::Session(e) => e.code(),
            BatchError::Log(e) => e.code(),
            BatchError::Reasons(_) => "reasons_missing",
            BatchError::WorkOrder { .. } => "work_order",
        }
    }
}

/// Load the trust store and verify every bundle of the catalog folder against it.
pub fn load_catalog(
    catalog_dir: &Path,
    trust_path: &Path,
    policy: &VerifyPolicy,
) -> Result<Catalog, BatchError> {
    let trust = TrustStore::load(trust_path).map_err(|e| BatchError::Trust {
        path: trust_path.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(Catalog::load_dir(catalog_dir, &trust, policy)?)
}

/// The largest devices, plan or addresses file read (a site's list, not a device image).
pub const MAX_LIST_FILE: u64 = 16 << 20;

/// Read the devices of a work order from a JSON file (a list of device records).
pub fn read_devices(path: &Path) -> Result<Vec<DeviceRecord>, BatchError> {
    let bad = |message: String| BatchError::Devices { path: path.display().to_string(), message };
    let text =
        crate::bundle::input::read_bounded(path, MAX_LIST_FILE).map_err(|e| bad(e.to_string()))?;
    serde_json::from_slice(&text).map_err(|e| {
        bad(format!("{e}; expected a JSON list of {{id, address: {{transport, ...}}, identity: {{vendor, model, ...}}}}"))
    })
}

/// The devices of a work order synced from the inventory, each at the address the technician
/// gives for it (device id -> address). Returns the records and, separately, the ids of devices
/// with no address (not found on site), so none is silently dropped.
pub async fn work_order_devices(
    store: &Store,
    work_order: &str,
    addresses: &std::collections::BTreeMap<String, crate::plan::DeviceAddress>,
) -> Result<(Vec<DeviceRecord>, Vec<String>), BatchError> {
    let bad = |message: String| BatchError::WorkOrder { id: work_order.to_string(), message };
    let orders = store.work_orders().await.map_err(|e| bad(e.to_string()))?;
    let order = orders.into_iter().find(|w| w.id == work_order).ok_or_else(|| {
        bad("not in the local store: sync with the inventory first (`fieldpatch sync`)".into())
    })?;
    let known = store.devices(Some(&order.site_id)).await.map_err(|e| bad(e.to_string()))?;
    let (mut found, mut missing) = (Vec::new(), Vec::new());
    for id in &order.device_ids {
        let Some(address) = addresses.get(id) else {
            missing.push(id.clone());
            continue;
        };
        let inv = known.iter().find(|d| &d.id == id);
        found.push(DeviceRecord {
            id: id.clone(),
            address: address.clone(),
            identity: crate::model::DeviceIdentity {
                vendor: inv.and_then(|d| d.vendor.clone()),
                model: inv.and_then(|d| d.model.clone()),
                hardware_revision: inv.and_then(|d| d.hardware_revision.clone()),
                serial_number: inv.and_then(|d| d.serial_number.clone()),
                firmware_version: inv
                    .and_then(|d| d.firmware_version.as_deref())
                    .and_then(|v| v.parse().ok()),
                image_hash: None,
                mode: None,
            },
            criticality: Default::default(),
            windows: vec![],
            credential: None,
            health_url: None,
        });
    }
    Ok((found, missing))
}

/// Connect to each device and fill in what it reports (running version and image hash).
/// Devices that do not answer keep what the inventory says, with the error returned beside them.
pub async fn identify(
    connector: &dyn Connector,
    devices: Vec<DeviceRecord>,
    timeout: Duration,
) -> Vec<(DeviceRecord, Option<String>)> {
    let mut out = Vec::with_capacity(devices.len());
    for mut d in devices {
        let found = tokio::time::timeout(timeout, async {
            let mut target = connector.open(&d).await.map_err(|e| e.to_string())?;
            let state = target.state().await.map_err(|e| e.to_string());
            // Whatever the answer, the device goes back to what it was doing.
            let released = target.release().await.map_err(|e| e.to_string());
            let state = state?;
            released?;
            Ok::<_, String>((state, target.device_mode()))
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
        match found {
            Ok((state, mode)) => {
                if mode.is_some() {
                    d.identity.mode = mode;
                }
                if let Some(v) = state.running_version {
                    d.identity.firmware_version = Some(v);
                }
                if let Some(h) = state.running_hash {
                    d.identity.image_hash = Some(hex::encode(h));
                }
                out.push((d, None));
            }
            Err(e) => out.push((d, Some(e))),
        }
    }
    out
}

/// Plan `devices` against the verified catalog, with the credential names in the keyring, at
/// the system clock's time.
pub async fn make_plan(
    devices: Vec<DeviceRecord>,
    catalog: &Catalog,
    credentials: Option<&Credentials>,
) -> Plan {
    make_plan_at(devices, catalog, credentials, chrono::Utc::now()).await
}

/// [`make_plan`] at `now` (what a data directory's clock says, [`crate::store::Store::clock`]).
pub async fn make_plan_at(
    devices: Vec<DeviceRecord>,
    catalog: &Catalog,
    credentials: Option<&Credentials>,
    now: chrono::DateTime<chrono::Utc>,
) -> Plan {
    let mut names = std::collections::BTreeSet::new();
    if let Some(c) = credentials
        && let Ok(list) = c.list().await
    {
        names.extend(list.into_iter().map(|n| n.name));
    }
    let input = PlanInput {
        devices,
        catalog: catalog.entries(),
        credentials: names,
        rollback_approvals: Vec::new(),
    };
    plan(&input, now)
}

/// What a session runs with inside a visit: the store, the technician's log, the verified
/// catalog, how devices are reached, who watches, and the pause switch.
pub struct VisitRun<'a> {
    pub store: &'a Store,
    pub log: Arc<VisitLog>,
    pub catalog: Arc<Catalog>,
    pub connector: Arc<dyn Connector>,
    pub observer: Observer,
    pub pause: Arc<AtomicBool>,
}

impl std::fmt::Debug for VisitRun<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VisitRun").field("log", &self.log.log_id()).finish_non_exhaustive()
    }
}

/// Run (or resume) a session inside a visit of the technician's signed visit log.
pub async fn run_in_visit(
    run: VisitRun<'_>,
    state: SessionState,
) -> Result<(Summary, SessionState), BatchError> {
    let VisitRun { store, log, catalog, connector, observer, pause } = run;
    // A bundle the signed listing publishes to some sites only is used only at those sites.
    let catalog = if catalog.has_site_restrictions() {
        Arc::new(catalog.for_site(state.visit_for.as_ref().map(|v| v.site.as_str())))
    } else {
        catalog
    };
    let (visit, _) = match &state.visit_for {
        Some(v) => log.open_visit(&v.site, v.work_order.as_deref()).await?,
        None => log.open_visit(&session_label(&state), None).await?,
    };
    let sink = Arc::new(LogSink { log: log.clone(), visit: Some(visit) });
    // The synced inventory is authoritative for what a device is (vendor, model, hardware
    // revision): a plan file cannot make a device look like another model.
    let mut state = state;
    state.visit = Some(visit);
    if let Ok(known) = store.devices(None).await {
        for dp in &mut state.plan.devices {
            if let Some(inv) = known.iter().find(|k| k.id == dp.device.id) {
                let id = &mut dp.device.identity;
                id.vendor = inv.vendor.clone().or(id.vendor.take());
                id.model = inv.model.clone().or(id.model.take());
                id.hardware_revision =
                    inv.hardware_revision.clone().or(id.hardware_revision.take());
            }
        }
    }
    for r in &catalog.refused {
        let kind = EventKind::BundleRefused {
            bundle_id: r.bundle_id.clone().unwrap_or_else(|| r.path.display().to_string()),
            reason: r.reason.clone(),
        };
        log.append(crate::visitlog::NewEvent::new(kind).visit(visit)).await?;
    }
    let deps = SessionDeps {
        connector,
        images: catalog,
        sink,
        store: Arc::new(StoreSessions(store.clone())),
        observer,
        pause,
        clock: super::SessionClock {
            clock: store.clock().clone(),
            latest_trusted: crate::clock::latest_trusted(store)
                .await
                .map_err(crate::visitlog::LogError::from)?,
        },
    };
    let shared: SharedState = Arc::new(tokio::sync::Mutex::new(state));
    let result = super::run(&shared, &deps).await;
    let state = shared.lock().await.clone();
    let summary = state.summary();
    // No device left behind: every device of the plan that was not patched is named in the log
    // with the reason, before the visit closes.
    for (device, reason) in unpatched(&state) {
        let kind = EventKind::DeviceNotPatched { reason };
        log.append(crate::visitlog::NewEvent::new(kind).visit(visit).device(device.as_str()))
            .await?;
    }
    let missing = u32::try_from(state.missing.len()).unwrap_or(u32::MAX);
    log.close_visit(
        visit,
        summary.patched,
        summary.failed
            + summary.rolled_back
            + summary.pending
            + summary.skipped
            + summary.unverified
            + missing,
    )
    .await?;
    result?;
    Ok((summary, state))
}

/// The visit a session without a site of its own is recorded under.
fn session_label(state: &SessionState) -> String {
    format!("batch session {}", state.id)
}

/// Every device of the session left unpatched, with why: the plan's devices, then those the
/// visit was to patch that were not found on site.
fn unpatched(state: &SessionState) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = state
        .devices
        .iter()
        .filter_map(|(id, st)| not_patched_reason(st).map(|why| (id.clone(), why)))
        .collect();
    out.extend(state.missing.iter().map(|id| (id.clone(), super::NOT_FOUND_REASON.to_string())));
    out
}

/// Why a device ended a session unpatched, or `None` when it was patched.
pub fn not_patched_reason(status: &super::DeviceStatus) -> Option<String> {
    use super::DeviceStatus::*;
    match status {
        Patched { .. } => None,
        Pending => {
            Some("not attempted: the session stopped or was paused before this device".into())
        }
        InProgress { .. } => Some("interrupted while being flashed; resume the session".into()),
        RolledBack { reason } => Some(format!("rolled back: {reason}")),
        Failed { reason } => Some(format!("failed: {reason}")),
        Skipped { reason } => Some(format!("skipped: {reason}")),
        Unverified { version } => Some(format!(
            "{version} written but unverified: what the device runs could not be checked (it cannot report or read back its image, or its application does not answer after a serial-recovery flash; the visit log says which)"
        )),
    }
}

/// Devices of a session left unpatched that still need the technician's reason.
#[derive(Debug, thiserror::Error)]
#[error(
    "give a reason for every device that was not patched (not present, powered off, refused by owner, ...): missing for {}",
    .0.join(", ")
)]
pub struct ReasonsMissing(pub Vec<String>);

/// Close out a session: every device it did not patch gets the technician's reason in the visit
/// log (`device_not_patched`), which sync carries to the inventory. Refuses, writing nothing, if
/// any unpatched device has no reason. Returns the devices recorded.
pub async fn close_out(
    log: &VisitLog,
    state: &SessionState,
    reasons: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<String>, BatchError> {
    let unpatched = unpatched(state);
    let missing: Vec<String> = unpatched
        .iter()
        .filter(|(id, _)| reasons.get(id).is_none_or(|r| r.trim().is_empty()))
        .map(|(id, _)| id.clone())
        .collect();
    if !missing.is_empty() {
        return Err(BatchError::Reasons(ReasonsMissing(missing)));
    }
    // The reasons belong to the session's latest visit (so its audit export carries them).
    let visit = match state.visit {
        Some(id) => Some(id),
        None => {
            let site = session_label(state);
            log.store()
                .visits(false)
                .await?
                .into_iter()
                .find(|v| v.site == site)
                .map(|v| v.visit_id)
        }
    };
    let mut done = Vec::new();
    for (id, why) in unpatched {
        let reason = format!("{} (session {}: {why})", reasons[&id].trim(), state.id);
        let kind = EventKind::DeviceNotPatched { reason };
        let mut new = crate::visitlog::NewEvent::new(kind).device(id.as_str());
        if let Some(v) = visit {
            new = new.visit(v);
        }
        log.append(new).await?;
        done.push(id);
    }
    Ok(done)
}
