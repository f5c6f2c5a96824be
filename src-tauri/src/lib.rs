//! The Fieldpatch desktop shell. Tauri commands and events only: each command is a few lines over
//! [`fieldpatch_core::Fieldpatch`]; errors cross the bridge as `{code, message}` with the core's
//! stable codes, so the front end branches on codes, not on strings. Session progress reaches the
//! window as `session` events, sync as `sync` events, discovery as `discovery` events.
//!
//! With `--demo` the window runs the built-in demo site in a data directory of its own (`demo/`
//! inside the data directory): its store, visit log, catalog, trust store and embedded inventory
//! live there, so nothing the demo does is visible in the technician's real data. Without it the
//! window runs in real mode on the technician's data directory and opens on the settings
//! (inventory server, login with the token kept in the OS keyring, the pinned server key and the
//! trust store in force).
//!
//! In both modes the window has a home screen (`home`: pending events, last sync, visits and work
//! orders, the trust store's and catalog's validity, whether the inventory answers), the visit log
//! (`visit_log`: a visit's events and its log's verification) and the audit export
//! (`export_visit`, checked by the offline verifier once written); real mode syncs on demand
//! (`sync_once`), the demo's sessions can be paused and resumed.
//!
//! The window may call exactly the commands of `generate_handler!` (the app manifest in `build.rs`
//! and `capabilities/default.json`); one instance runs per data directory and mode, and it logs
//! to a rotating file (`shell`). On Linux the window draws in software, without OpenGL, on a
//! machine without a GPU (`rendering`, `FIELDPATCH_GPU`).
//!
//! What crosses the bridge is typed once, in Rust: `ipc` and the core's own types derive `TS`,
//! and the window's `ui/src/lib/ipc.ts` is generated from them.

mod ipc;
#[cfg(target_os = "linux")]
mod rendering;
mod shell;

use fieldpatch_core::Fieldpatch;
use fieldpatch_core::SyncSettings;
use fieldpatch_core::catalog::Catalog;
use fieldpatch_core::credentials::{CredentialError, CredentialName};
use fieldpatch_core::discovery::{DiscoveryReport, DiscoverySettings, Update};
use fieldpatch_core::flash::connect::{DriverConnector, SystemUsb};
use fieldpatch_core::overview::VisitTimeline;
use fieldpatch_core::plan::{DeviceRecord, Plan};
use fieldpatch_core::session::{SessionEvent, SessionOptions, SessionState};
use fieldpatch_core::sync::{AutoSync, SyncConfig, WatchEvent};
use fieldpatch_core::visitlog::LogVerification;
use fieldpatch_demo::Demo;
use ipc::{
    BridgeError, CredentialsView, ExportCheck, ExportView, HomeView, Mode, PlanView,
    SessionEventView, SessionFinished, SiteView, SyncEventView, SyncKind, SyncReportView,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tauri::{Emitter, Manager};
use tokio::sync::Mutex;

/// What the window works on in the demo: the demo site, its verified catalog and Fieldpatch in
/// the demo's data directory.
struct Site {
    fp: Fieldpatch,
    demo: Demo,
    /// The embedded inventory server (SQLite, loopback).
    inventory: fieldpatch_server::Embedded,
    catalog: Arc<Catalog>,
    bench: Bench,
    /// Syncing with the embedded inventory (the demo token is kept in memory only).
    sync: Option<Arc<AutoSync>>,
    /// Why sync is unavailable, when it is.
    sync_unavailable: Option<String>,
    /// The runtime the automatic sync runs on.
    runtime: tokio::runtime::Handle,
}

/// Real mode: Fieldpatch in the technician's own data directory, reaching devices through the
/// system's drivers, with the catalog and inventory the last sync pulled.
struct Real {
    fp: Fieldpatch,
    bench: Bench,
    /// Automatic sync with the remembered server, once logged in.
    sync: Mutex<Option<Arc<AutoSync>>>,
    runtime: tokio::runtime::Handle,
}

/// The window's work on site, the same in both modes: the devices it identified, the plan it
/// showed, the session it ran, and what the visit is for.
struct Bench {
    devices: Mutex<Vec<DeviceRecord>>,
    /// The plan last shown in the window (its number and the plan): the only one it can run.
    plan: Mutex<Option<(u64, Plan)>>,
    /// The last session run from the window, for its close-out.
    last_session: Mutex<Option<SessionState>>,
    /// Set to pause the running session.
    pause: Arc<AtomicBool>,
    /// The work order the visit is for (`None`: an ad-hoc visit).
    work_order: Mutex<Option<String>>,
    /// Devices of the work order the last discovery did not find.
    missing: Mutex<Vec<String>>,
}

impl Bench {
    fn new(devices: Vec<DeviceRecord>) -> Bench {
        Bench {
            devices: Mutex::new(devices),
            plan: Mutex::new(None),
            last_session: Mutex::new(None),
            pause: Arc::new(AtomicBool::new(false)),
            work_order: Mutex::new(None),
            missing: Mutex::new(Vec::new()),
        }
    }
}

/// Version and local data directory of this installation.
#[tauri::command]
fn app_info() -> Result<fieldpatch_core::AppInfo, BridgeError> {
    Ok(fieldpatch_core::app_info()?)
}

/// Identify the devices on the bench (the demo site's, or those the last discovery matched to
/// the inventory) and list the verified catalog.
#[tauri::command]
async fn site(app: tauri::AppHandle) -> Result<SiteView, BridgeError> {
    let shell = Shell::of(&app)?;
    let bench = shell.bench();
    let devices = bench.devices.lock().await.clone();
    let found = shell.fp().identify(devices, Duration::from_secs(10)).await;
    let unreachable =
        found.iter().filter_map(|(d, e)| e.clone().map(|e| (d.id.clone(), e))).collect();
    let devices: Vec<DeviceRecord> = found.into_iter().map(|(d, _)| d).collect();
    *bench.devices.lock().await = devices.clone();
    let (catalog, catalog_problem) = match shell.catalog().await {
        Ok(c) => (Some(c), None),
        Err(e) => (None, Some(e.message)),
    };
    let (sync, sync_unavailable) = match shell.sync().await {
        Ok(s) => (Some(s), None),
        Err(e) => (None, Some(e.message)),
    };
    Ok(SiteView {
        devices,
        unreachable,
        bundles: catalog.as_ref().map(|c| c.entries()).unwrap_or_default(),
        refused: catalog.as_ref().map(|c| c.refused.clone()).unwrap_or_default(),
        inventory: shell.server().await.unwrap_or_default(),
        auto_sync: sync.as_ref().is_some_and(|s| s.is_on()),
        sync_unavailable,
        work_order: bench.work_order.lock().await.clone(),
        missing: {
            // Those of the last discovery, and those the last session recorded (after a restart
            // of the app only the session knows them).
            let mut m = bench.missing.lock().await.clone();
            if let Some(s) = &*bench.last_session.lock().await {
                m.extend(
                    s.missing.iter().filter(|id| !m.contains(id)).cloned().collect::<Vec<_>>(),
                );
            }
            m
        },
        catalog_problem,
    })
}

/// Find the devices: on the demo site its pty, its UDP sensors and the lab USB bus; in real mode
/// the places the discovery settings allow. Each device reaches the window as a `discovery`
/// event ([`Update`]) the moment it answers; the command returns the whole report, matched
/// against the chosen work order (its devices not found listed as missing) or the synced
/// inventory. Everything found is recorded in the visit log. In real mode the devices matched to
/// the inventory become the bench's devices (what the plan takes).
#[tauri::command]
async fn discover(app: tauri::AppHandle) -> Result<DiscoveryReport, BridgeError> {
    let shell = Shell::of(&app)?;
    let emitter = app.clone();
    let mut on_update = move |u: &Update| {
        let _ = emitter.emit("discovery", u);
    };
    match &shell {
        Shell::Demo(site) => {
            Ok(site.fp.discover(site.demo.discover_options(), &mut on_update).await?)
        }
        Shell::Real(real) => {
            let work_order = real.bench.work_order.lock().await.clone();
            let options = real.fp.discovery_settings().await?.options(work_order)?;
            let report = real.fp.discover(options, &mut on_update).await?;
            let records = report.records(&real.fp.inventory_devices().await?);
            *real.bench.devices.lock().await = records;
            *real.bench.missing.lock().await = report.missing.clone();
            Ok(report)
        }
    }
}

/// Real mode: the visit is for synced work order `work_order` (`None`: an ad-hoc visit).
/// Discovery then matches against its devices, and the session's visit is recorded at its site
/// with the order. Returns the work order chosen.
#[tauri::command]
async fn choose_work_order(
    real: tauri::State<'_, Arc<Real>>,
    work_order: Option<String>,
) -> Result<Option<String>, BridgeError> {
    let work_order = work_order.map(|w| w.trim().to_string()).filter(|w| !w.is_empty());
    if let Some(id) = &work_order {
        // Refused for an order the last sync did not bring.
        real.fp.work_order_visit(id).await?;
    }
    let bench = &real.bench;
    if *bench.work_order.lock().await != work_order {
        bench.devices.lock().await.clear();
        bench.missing.lock().await.clear();
        *bench.plan.lock().await = None;
    }
    *bench.work_order.lock().await = work_order.clone();
    Ok(work_order)
}

/// Real mode: where discovery looks (USB serial, other ports, USB DFU, networks, interfaces).
#[tauri::command]
async fn discovery_settings(
    real: tauri::State<'_, Arc<Real>>,
) -> Result<DiscoverySettings, BridgeError> {
    Ok(real.fp.discovery_settings().await?)
}

/// Real mode: check and save where discovery looks; returns the settings as saved.
#[tauri::command]
async fn set_discovery_settings(
    real: tauri::State<'_, Arc<Real>>,
    settings: DiscoverySettings,
) -> Result<DiscoverySettings, BridgeError> {
    Ok(real.fp.set_discovery_settings(settings).await?)
}

/// Real mode: the device and site credentials in the OS keyring, by name (never their values).
#[tauri::command]
async fn credentials(real: tauri::State<'_, Arc<Real>>) -> Result<CredentialsView, BridgeError> {
    credentials_view(&real.fp).await
}

/// Real mode: keep a device's (`device/<device>/<kind>`) or a site model's
/// (`site/<site>/<model>/<kind>`) credential in the OS keyring. The window sets no other
/// credential: the technician key is made by Fieldpatch and the sync token comes with the login.
#[tauri::command]
async fn set_credential(
    real: tauri::State<'_, Arc<Real>>,
    name: String,
    secret: String,
) -> Result<CredentialsView, BridgeError> {
    let name = device_credential(&name)?;
    let secret = fieldpatch_core::credentials::Secret::new(secret);
    if secret.is_empty() {
        return Err(BridgeError {
            code: "invalid_input",
            message: format!("no secret given for {name}: type the device's secret"),
        });
    }
    real.fp.set_credential(&name, &secret).await?;
    credentials_view(&real.fp).await
}

/// Real mode: remove a device or site credential from the OS keyring.
#[tauri::command]
async fn delete_credential(
    real: tauri::State<'_, Arc<Real>>,
    name: String,
) -> Result<CredentialsView, BridgeError> {
    let name = device_credential(&name)?;
    real.fp.delete_credential(&name).await?;
    credentials_view(&real.fp).await
}

/// A device or site credential's name, or why the window may not touch it.
fn device_credential(name: &str) -> Result<CredentialName, BridgeError> {
    let parsed: CredentialName = name.trim().parse().map_err(|e: CredentialError| BridgeError {
        code: "invalid_input",
        message: e.to_string(),
    })?;
    match parsed {
        CredentialName::Device { .. } | CredentialName::SiteModel { .. } => Ok(parsed),
        _ => Err(BridgeError {
            code: "invalid_input",
            message: format!(
                "{name}: only device (device/<device>/<kind>) and site (site/<site>/<model>/<kind>) credentials are kept here"
            ),
        }),
    }
}

async fn credentials_view(fp: &Fieldpatch) -> Result<CredentialsView, BridgeError> {
    let creds = fp.credentials().await?;
    let listed = creds.list().await.map_err(fieldpatch_core::Error::from)?;
    let credentials = listed
        .into_iter()
        .filter(|l| l.name.starts_with("device/") || l.name.starts_with("site/"))
        .collect();
    Ok(CredentialsView { keyring: creds.backend().as_str().into(), credentials })
}

/// Turn automatic sync with the inventory on or off. While on, sync probes the server (with
/// backoff when it is unreachable) and syncs by itself, so a laptop back on the network syncs
/// without being asked; `sync` events tell the window.
#[tauri::command]
async fn set_auto_sync(app: tauri::AppHandle, on: bool) -> Result<bool, BridgeError> {
    let shell = Shell::of(&app)?;
    let sync = shell.sync().await?;
    sync.set(on, shell.runtime(), sync_events(app));
    Ok(on)
}

/// Sync now: wakes automatic sync (refused while it is off: nothing would sync).
#[tauri::command]
async fn sync_now(app: tauri::AppHandle) -> Result<(), BridgeError> {
    let sync = Shell::of(&app)?.sync().await?;
    if !sync.is_on() {
        return Err(BridgeError {
            code: "sync_off",
            message: "automatic sync is off: turn it on to sync with the inventory".into(),
        });
    }
    sync.sync_now();
    Ok(())
}

/// Forward watch events to the window as `sync` events.
fn sync_events(app: tauri::AppHandle) -> fieldpatch_core::sync::WatchSink {
    Arc::new(move |e: WatchEvent| {
        let _ = app.emit("sync", SyncEventView::from(&e));
    })
}

/// Plan the identified devices against the verified catalog.
#[tauri::command]
async fn plan(app: tauri::AppHandle) -> Result<PlanView, BridgeError> {
    let shell = Shell::of(&app)?;
    let catalog = shell.catalog().await?;
    let bench = shell.bench();
    let devices = bench.devices.lock().await.clone();
    if devices.is_empty() {
        return Err(BridgeError {
            code: "no_devices",
            message: "no device of the inventory is on the bench: run a discovery first (check the discovery settings if it finds none)".into(),
        });
    }
    // A visit for a work order is at its site: bundles published to other sites only are not
    // planned.
    let site = match bench.work_order.lock().await.clone() {
        Some(order) => Some(shell.fp().work_order_visit(&order).await?.0.site),
        None => None,
    };
    let plan = shell.fp().plan_at_site(devices, &catalog, site.as_deref()).await;
    let mut last = bench.plan.lock().await;
    let n = last.as_ref().map_or(1, |(n, _)| n + 1);
    *last = Some((n, plan.clone()));
    Ok(PlanView { id: plan_label(n), plan })
}

/// The id the window knows the `n`th plan of this run by.
fn plan_label(n: u64) -> String {
    format!("plan-{n}")
}

/// Start a batch session on the plan; progress arrives as `session` events, the end as
/// `session-finished` ([`SessionFinished`]). In real mode the session has the field options
/// (canary, soak, waves, threshold) and its visit is for the chosen work order. `devices`: the
/// devices the technician chose (one to flash a single device); the plan's others are skipped
/// as not chosen. `None`: every device the plan would flash.
#[tauri::command]
async fn run_session(
    app: tauri::AppHandle,
    plan_id: String,
    canary: bool,
    devices: Option<Vec<String>>,
) -> Result<String, BridgeError> {
    let shell = Shell::of(&app)?;
    if shell.fp().session_running() {
        return Err(fieldpatch_core::Error::Busy.into());
    }
    let bench = shell.bench();
    // The window names a plan the app made; it never hands one in.
    let plan = match &*bench.plan.lock().await {
        Some((n, plan)) if plan_label(*n) == plan_id => plan.clone(),
        _ => {
            return Err(BridgeError {
                code: "no_plan",
                message: format!("{plan_id} is not the current plan: plan again"),
            });
        }
    };
    let base = match &shell {
        Shell::Demo(_) => SessionOptions::demo(),
        Shell::Real(_) => SessionOptions::field(),
    };
    let mut state = SessionState::new(plan, SessionOptions { canary, ..base });
    if let Some(chosen) = devices {
        state = state.only(&chosen).map_err(fieldpatch_core::Error::from)?;
    }
    if let Some(order) = bench.work_order.lock().await.clone() {
        let (visit, expected) = shell.fp().work_order_visit(&order).await?;
        state = state.for_visit(visit, expected);
    }
    let id = state.id.to_string();
    let catalog = shell.catalog().await?;
    spawn_session(app, shell, catalog, Some(state));
    Ok(id)
}

/// Resume the latest unfinished session (paused, or cut short when the app was closed) where it
/// stopped; progress and the end arrive as for [`run_session`].
#[tauri::command]
async fn resume_session(app: tauri::AppHandle) -> Result<String, BridgeError> {
    let shell = Shell::of(&app)?;
    if shell.fp().session_running() {
        return Err(fieldpatch_core::Error::Busy.into());
    }
    let state = shell.fp().unfinished_session(None).await?;
    let id = state.id.to_string();
    let catalog = shell.catalog().await?;
    spawn_session(app, shell, catalog, None);
    Ok(id)
}

/// Pause the running session: devices in flight finish, no new one starts; it ends with a
/// `session-finished` event and can be resumed (also after a restart of the app).
#[tauri::command]
async fn pause_session(app: tauri::AppHandle) -> Result<bool, BridgeError> {
    let shell = Shell::of(&app)?;
    if !shell.fp().session_running() {
        return Err(BridgeError { code: "no_session", message: "no session is running".into() });
    }
    shell.bench().pause.store(true, std::sync::atomic::Ordering::SeqCst);
    Ok(true)
}

/// End the latest unfinished session for good (paused, or cut short when the app was closed):
/// its devices not yet attempted are skipped and need a reason at the close-out. Every device's
/// final status reaches the window as a `session` event. Refused while the session runs (pause
/// it first) and while a device was cut short in the middle of its flash (resume first).
#[tauri::command]
async fn end_session(app: tauri::AppHandle) -> Result<String, BridgeError> {
    let shell = Shell::of(&app)?;
    let state = shell.fp().end_session(None).await?;
    for (device, status) in &state.devices {
        let event = SessionEvent::Status(status.clone());
        let _ = app.emit("session", SessionEventView::new(Some(device), event));
    }
    let id = state.id.to_string();
    *shell.bench().last_session.lock().await = Some(state);
    Ok(id)
}

/// Run `state` (or resume the latest unfinished session) in the background, forwarding its
/// events to the window.
fn spawn_session(
    app: tauri::AppHandle,
    shell: Shell,
    catalog: Arc<Catalog>,
    state: Option<SessionState>,
) {
    let emitter = app.clone();
    let observer = Arc::new(move |device: Option<&str>, event: SessionEvent| {
        let _ = emitter.emit("session", SessionEventView::new(device, event));
    });
    shell.bench().pause.store(false, std::sync::atomic::Ordering::SeqCst);
    tauri::async_runtime::spawn(async move {
        let pause = shell.bench().pause.clone();
        let fp = shell.fp();
        let result = match state {
            Some(state) => fp.run_session(state, catalog, observer, pause).await,
            None => fp.resume_session(None, catalog, observer, pause).await,
        };
        let summary = match result {
            Ok((summary, state)) => {
                *shell.bench().last_session.lock().await = Some(state);
                Ok(summary)
            }
            Err(e) => Err(BridgeError::from(e)),
        };
        let _ = app.emit("session-finished", SessionFinished::from(summary));
    });
}

/// Close out the last session: the technician's reason for every device it did not patch, and
/// for every device of the work order that was not found, goes into the visit log (and, with
/// sync, to the inventory). Refused while any reason is missing.
#[tauri::command]
async fn close_session(
    app: tauri::AppHandle,
    reasons: std::collections::BTreeMap<String, String>,
) -> Result<Vec<String>, BridgeError> {
    let shell = Shell::of(&app)?;
    let state =
        shell.bench().last_session.lock().await.clone().ok_or_else(|| BridgeError {
            code: "no_session",
            message: "run a session first".into(),
        })?;
    Ok(shell.fp().close_session(&state, &reasons).await?)
}

/// Verify the visit log(s) in the local store.
#[tauri::command]
async fn verify_log(app: tauri::AppHandle) -> Result<Vec<LogVerification>, BridgeError> {
    Ok(Shell::of(&app)?.fp().verify_logs().await?)
}

/// The window's Fieldpatch in either mode.
#[derive(Clone)]
enum Shell {
    Demo(Arc<Site>),
    Real(Arc<Real>),
}

impl Shell {
    fn of(app: &tauri::AppHandle) -> Result<Shell, BridgeError> {
        if let Some(site) = app.try_state::<Arc<Site>>() {
            return Ok(Shell::Demo(site.inner().clone()));
        }
        if let Some(real) = app.try_state::<Arc<Real>>() {
            return Ok(Shell::Real(real.inner().clone()));
        }
        Err(BridgeError {
            code: "starting",
            message: "the app is still opening its data directory: try again in a moment".into(),
        })
    }

    fn fp(&self) -> &Fieldpatch {
        match self {
            Shell::Demo(site) => &site.fp,
            Shell::Real(real) => &real.fp,
        }
    }

    fn bench(&self) -> &Bench {
        match self {
            Shell::Demo(site) => &site.bench,
            Shell::Real(real) => &real.bench,
        }
    }

    fn runtime(&self) -> &tokio::runtime::Handle {
        match self {
            Shell::Demo(site) => &site.runtime,
            Shell::Real(real) => &real.runtime,
        }
    }

    /// The inventory server: the embedded one, or the one logged in to.
    async fn server(&self) -> Option<String> {
        match self {
            Shell::Demo(site) => Some(format!("http://{}", site.inventory.addr)),
            Shell::Real(real) => real.fp.sync_settings().await.ok().and_then(|s| s.server),
        }
    }

    /// The verified catalog: the demo's, or the synced folder verified again against the trust
    /// store in force (so a sync since the last plan is taken into account).
    async fn catalog(&self) -> Result<Arc<Catalog>, BridgeError> {
        match self {
            Shell::Demo(site) => Ok(site.catalog.clone()),
            Shell::Real(real) => {
                let (trust, dir) = self.trust_and_catalog().await?;
                if !trust.exists() || !dir.exists() {
                    return Err(BridgeError {
                        code: "no_catalog",
                        message: "no verified catalog yet: log in and sync to pull the trust store and the catalog".into(),
                    });
                }
                Ok(Arc::new(real.fp.load_catalog(&dir, &trust).await?))
            }
        }
    }

    /// Automatic sync: the demo's with the embedded inventory, or real mode's with the server
    /// logged in to (made at the first use after a login; on from then on).
    async fn sync(&self) -> Result<Arc<AutoSync>, BridgeError> {
        match self {
            Shell::Demo(site) => site.sync.clone().ok_or_else(|| BridgeError {
                code: "sync_unavailable",
                message: site.sync_unavailable.clone().unwrap_or_default(),
            }),
            Shell::Real(real) => {
                let mut slot = real.sync.lock().await;
                if let Some(s) = &*slot {
                    return Ok(s.clone());
                }
                let made = Arc::new(real.fp.auto_sync().await.map_err(|e| BridgeError {
                    code: "sync_unavailable",
                    message: BridgeError::from(e).message,
                })?);
                *slot = Some(made.clone());
                Ok(made)
            }
        }
    }

    /// The trust store in force and the catalog folder (the demo's, or the synced ones).
    async fn trust_and_catalog(&self) -> Result<(PathBuf, PathBuf), BridgeError> {
        Ok(match self {
            Shell::Demo(site) => (site.demo.trust_path.clone(), site.demo.catalog_dir.clone()),
            Shell::Real(real) => {
                let local = real.fp.sync_local().await?;
                (local.trust_path(), local.catalog_dir())
            }
        })
    }
}

/// The home screen: pending events, last sync, visits and work orders, how long the trust store
/// and the catalog stay usable, and whether the inventory answers now.
#[tauri::command]
async fn home(app: tauri::AppHandle) -> Result<HomeView, BridgeError> {
    let shell = Shell::of(&app)?;
    let (trust, catalog_dir) = shell.trust_and_catalog().await?;
    let (catalog, server) = match &shell {
        Shell::Demo(site) => {
            (Some(site.catalog.clone()), Some(format!("http://{}", site.inventory.addr)))
        }
        Shell::Real(real) => (None, real.fp.sync_settings().await?.server),
    };
    let overview = shell.fp().overview(&trust, &catalog_dir, catalog.as_deref()).await?;
    let ca = match &shell {
        Shell::Demo(_) => None,
        Shell::Real(real) => real.fp.server_ca().await?,
    };
    let online = match &server {
        Some(s) => {
            fieldpatch_core::overview::reachable(s, Duration::from_secs(3), ca.as_deref()).await
        }
        None => false,
    };
    let export_dir = shell.fp().data_dir().join("exports").display().to_string();
    let notices = match &shell {
        Shell::Demo(site) => site.demo.gateway_absent.iter().cloned().collect(),
        Shell::Real(_) => Vec::new(),
    };
    Ok(HomeView { overview, server, online, export_dir, notices })
}

/// A visit's events (the newest visit without `visit_id`) and its log's verification.
#[tauri::command]
async fn visit_log(
    app: tauri::AppHandle,
    visit_id: Option<String>,
) -> Result<VisitTimeline, BridgeError> {
    let id = visit_id.as_deref().map(parse_visit).transpose()?;
    Ok(Shell::of(&app)?.fp().visit_timeline(id).await?)
}

fn parse_visit(id: &str) -> Result<uuid::Uuid, BridgeError> {
    id.parse().map_err(|_| BridgeError {
        code: "invalid_input",
        message: format!("{id:?} is not a visit id: pick a visit from the list"),
    })
}

/// Real mode: sync now with the remembered server and the token in the OS keyring; the report
/// also reaches the window as a `sync` event.
#[tauri::command]
async fn sync_once(
    app: tauri::AppHandle,
    real: tauri::State<'_, Arc<Real>>,
) -> Result<SyncReportView, BridgeError> {
    let _ = app.emit("sync", SyncEventView::from(&WatchEvent::Reachable));
    match real.fp.sync_once().await {
        Ok(report) => {
            let _ = app.emit("sync", SyncEventView::from(&WatchEvent::Synced(report.clone())));
            Ok(SyncReportView::from(&report))
        }
        Err(e) => {
            let e = BridgeError::from(e);
            let text = format!("sync failed: {}", e.message);
            let _ = app.emit("sync", SyncEventView { kind: SyncKind::Failed, text, report: None });
            Err(e)
        }
    }
}

/// Write visit `visit_id`'s audit export to `path` (a full path; its folder is created), with
/// the trust store in force and the catalog's bundle verdicts, then check the written file with
/// the offline verifier.
#[tauri::command]
async fn export_visit(
    app: tauri::AppHandle,
    visit_id: String,
    path: String,
) -> Result<ExportView, BridgeError> {
    let shell = Shell::of(&app)?;
    let id = parse_visit(&visit_id)?;
    let out = PathBuf::from(path.trim());
    if !out.is_absolute() || out.file_name().is_none() {
        return Err(BridgeError {
            code: "invalid_input",
            message: format!("{path:?}: give the full path of the file to write"),
        });
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| BridgeError {
            code: "export_io",
            message: format!("cannot create {}: {e}; choose another folder", dir.display()),
        })?;
    }
    let (trust, catalog) = shell.trust_and_catalog().await?;
    let trust = trust.exists().then_some(trust);
    let catalog = catalog.exists().then_some(catalog).filter(|_| trust.is_some());
    let fp = shell.fp();
    let done = fp.export_visit(id, &out, trust.as_deref(), catalog.as_deref()).await?;
    let pinned = fp.sync_settings().await.ok().and_then(|s| s.pinned_server_key);
    let check = match fieldpatch_core::export::verify_file(&done.path, pinned.as_deref()) {
        Ok(v) => ExportCheck::Pass {
            events: v.events,
            devices: v.devices,
            fingerprint: v.fingerprint,
            countersigned: v.checkpoint_server_key.is_some(),
        },
        Err(e) => ExportCheck::Fail { code: e.code().into(), problem: e.to_string() },
    };
    let v = done.verified;
    Ok(ExportView {
        path: done.path.display().to_string(),
        bytes: done.bytes,
        visit_id: v.visit_id.to_string(),
        events: v.events,
        devices: v.devices,
        fingerprint: v.fingerprint,
        server_key: v.checkpoint_server_key,
        check,
    })
}

/// The native Save-as dialog of the audit export, over the window, opened at `suggested` (the
/// full path the window proposes: its folder and file name). Answers the chosen full path, or
/// `None` when the technician cancels; the export itself is `export_visit`.
#[tauri::command]
async fn choose_export_path(
    window: tauri::Window,
    suggested: String,
) -> Result<Option<String>, BridgeError> {
    #[cfg(not(any(target_os = "android", target_os = "ios")))]
    {
        use tauri_plugin_dialog::DialogExt;
        let suggested = PathBuf::from(suggested.trim());
        let mut dialog = window
            .dialog()
            .file()
            .set_parent(&window)
            .set_title("Save the visit's audit export")
            .add_filter("Fieldpatch audit export (.tar)", &["tar"]);
        if let Some(dir) = suggested.parent().filter(|d| d.is_absolute()) {
            // The proposed folder may not exist yet (the first export): start from the nearest
            // folder that does.
            if let Some(existing) = dir.ancestors().find(|d| d.is_dir()) {
                dialog = dialog.set_directory(existing);
            }
        }
        if let Some(name) = suggested.file_name() {
            dialog = dialog.set_file_name(name.to_string_lossy());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        dialog.save_file(move |chosen| {
            let _ = tx.send(chosen);
        });
        let chosen = rx.await.map_err(|_| BridgeError {
            code: "dialog_closed",
            message:
                "the Save-as dialog closed without an answer: type the file's full path instead"
                    .into(),
        })?;
        match chosen.map(|p| p.into_path()) {
            None => Ok(None),
            Some(Ok(path)) => Ok(Some(path.display().to_string())),
            Some(Err(e)) => Err(BridgeError {
                code: "invalid_input",
                message: format!(
                    "the chosen file is not a local path ({e}): choose a file on this laptop"
                ),
            }),
        }
    }
    #[cfg(any(target_os = "android", target_os = "ios"))]
    {
        let _ = (window, suggested);
        Err(BridgeError {
            code: "unsupported",
            message: "no Save-as dialog on this platform: type the file's full path".into(),
        })
    }
}

/// Start the built-in demo site, open Fieldpatch in the demo's own data directory and start the
/// embedded inventory server there.
async fn start_site() -> Result<Site, String> {
    let (data_dir, _) = fieldpatch_core::paths::data_dir().map_err(|e| e.to_string())?;
    let demo_dir = data_dir.join("demo");
    let site_dir = demo_dir.join("site");
    std::fs::create_dir_all(&site_dir).map_err(|e| format!("{}: {e}", site_dir.display()))?;
    let demo = fieldpatch_demo::start(&site_dir).map_err(|e| e.to_string())?;
    let connector = Arc::new(DriverConnector { usb: demo.usb.clone() });
    let fp = Fieldpatch::open_in(&demo_dir, connector).await.map_err(|e| e.to_string())?;
    match &demo.gateway_absent {
        Some(why) => tracing::warn!("{why}"),
        // Without it the planner refuses the gateway (its password is missing), as it would on
        // a real site: the window still starts.
        None => {
            if let Err(e) = demo.store_gateway_password(&fp).await {
                tracing::warn!(error = %e, "the demo gateway's password is not in the keyring");
            }
        }
    }
    let catalog =
        fp.load_catalog(&demo.catalog_dir, &demo.trust_path).await.map_err(|e| e.to_string())?;
    let inventory = fieldpatch_server::start_embedded(&demo_dir.join("inventory"))
        .await
        .map_err(|e| e.to_string())?;
    let (sync, sync_unavailable) = match enroll(&inventory, &demo, &catalog, &fp).await {
        Ok(s) => (Some(s), None),
        Err(e) => (None, Some(e)),
    };
    Ok(Site {
        fp,
        sync: sync.map(Arc::new),
        sync_unavailable,
        bench: Bench::new(demo.devices.clone()),
        demo,
        inventory,
        catalog: Arc::new(catalog),
        runtime: tokio::runtime::Handle::current(),
    })
}

/// Register this laptop's technician key with the embedded inventory, load the demo site into it
/// and prepare sync (the token stays in memory: the demo never touches the keyring's sync token).
async fn enroll(
    inventory: &fieldpatch_server::Embedded,
    demo: &Demo,
    catalog: &Catalog,
    fp: &Fieldpatch,
) -> Result<AutoSync, String> {
    let credentials = fp.credentials().await.map_err(|e| e.to_string())?;
    let key = credentials.technician_key().await.map_err(|e| e.to_string())?;
    let content = demo.inventory_content(catalog).map_err(|e| e.to_string())?;
    let seed = fieldpatch_server::Seed {
        technician: fieldpatch_server::api::NewTechnician {
            id: "demo-technician".into(),
            name: "Demo technician".into(),
            public_key: hex::encode(key.verifying_key().as_bytes()),
        },
        site: content.site,
        devices: content.devices,
        bundles: content.bundles,
        trust_store: content.trust_store,
        catalog_listing: content.catalog_listing,
    };
    let token = inventory.seed(seed).await.map_err(|e| e.to_string())?;
    let local = fp.sync_local().await.map_err(|e| e.to_string())?;
    Ok(AutoSync::new(SyncConfig::new(format!("http://{}", inventory.addr), token), local))
}

/// Which mode the window runs in: `demo` (the built-in demo site, `--demo`) or `real` (the
/// technician's data directory, starting with the settings).
#[tauri::command]
fn mode(mode: tauri::State<'_, Mode>) -> Mode {
    *mode
}

/// Real mode: the remembered inventory server, whether a token is in the OS keyring, the pinned
/// server key and the trust store in force.
#[tauri::command]
async fn settings(real: tauri::State<'_, Arc<Real>>) -> Result<SyncSettings, BridgeError> {
    Ok(real.fp.sync_settings().await?)
}

/// Real mode: log in to the inventory server (the token goes to the OS keyring, the server is
/// remembered, with the private CA its certificate is checked against when `ca_path` names one;
/// without `ca_path` a CA set at an earlier login stays) and return the settings as they now are.
#[tauri::command]
async fn login(
    app: tauri::AppHandle,
    real: tauri::State<'_, Arc<Real>>,
    server: String,
    token: String,
    ca_path: Option<String>,
) -> Result<SyncSettings, BridgeError> {
    let ca = match ca_path.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
        None => None,
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| BridgeError {
            code: "invalid_input",
            message: format!(
                "cannot read the private CA file {path}: {e}; give the full path of its PEM file"
            ),
        })?),
    };
    let token = fieldpatch_core::credentials::Secret::new(token);
    // The CA is checked before anything is stored; without one, the CA set before stays.
    if let Some(pem) = &ca {
        real.fp.set_server_ca(Some(pem)).await?;
    }
    real.fp.sync_login(server.trim(), &token).await?;
    // Automatic sync starts again with the new server and token.
    if let Some(old) = real.sync.lock().await.take() {
        old.set(false, &real.runtime, sync_events(app.clone()));
    }
    start_auto_sync(&app, &real).await;
    Ok(real.fp.sync_settings().await?)
}

/// Real mode: turn automatic sync on once a server and a token are known, so that the laptop
/// syncs by itself whenever the inventory answers again. Without a login it stays off.
async fn start_auto_sync(app: &tauri::AppHandle, real: &Arc<Real>) {
    match Shell::Real(real.clone()).sync().await {
        Ok(sync) => sync.set(true, &real.runtime, sync_events(app.clone())),
        Err(e) => tracing::info!(reason = %e.message, "automatic sync is off"),
    }
}

async fn start_real() -> Result<Real, String> {
    let connector = Arc::new(DriverConnector { usb: SystemUsb });
    let fp = Fieldpatch::open(connector).await.map_err(|e| e.to_string())?;
    Ok(Real {
        fp,
        bench: Bench::new(Vec::new()),
        sync: Mutex::new(None),
        runtime: tokio::runtime::Handle::current(),
    })
}

/// Start the desktop app: on the built-in demo site with `demo`, else in real mode.
pub fn run(demo: bool) {
    // First of all: it sets environment variables GTK and WebKit read, while the process has
    // a single thread.
    #[cfg(target_os = "linux")]
    let rendering = rendering::apply();
    let started_as = if demo { Mode::Demo } else { Mode::Real };
    let builder = tauri::Builder::default();
    // First, so that a second launch on the same data directory and mode focuses the running
    // window and exits before it opens anything.
    #[cfg(not(any(target_os = "android", target_os = "ios")))]
    let builder = {
        let mut single = tauri_plugin_single_instance::Builder::new()
            .callback(|app, argv, _cwd| shell::focus_main(app, &argv));
        if let Some(dir) = shell::data_dir() {
            single = single.dbus_id(shell::instance_id(&dir, demo));
        }
        builder.plugin(single.build()).plugin(tauri_plugin_dialog::init())
    };
    let ran = builder
        .manage(started_as)
        .setup(move |app| {
            match shell::log_dir(app.handle(), demo).and_then(|dir| shell::init_logs(&dir)) {
                Ok(()) => tracing::info!(
                    version = fieldpatch_core::VERSION,
                    mode = if demo { "demo" } else { "real" },
                    "Fieldpatch window starting"
                ),
                // The window still opens; it reports its own errors.
                Err(e) => eprintln!("fieldpatch-app: logs are off: {e}"),
            }
            #[cfg(target_os = "linux")]
            tracing::info!(rendering = ?rendering.rendering, "{}", rendering.why);
            if !demo {
                let real = tauri::async_runtime::block_on(start_real()).inspect_err(|e| {
                    tracing::error!(error = %e, "cannot open the data directory");
                })?;
                let real = Arc::new(real);
                app.manage(real.clone());
                tauri::async_runtime::block_on(start_auto_sync(app.handle(), &real));
                tracing::info!("ready (real mode)");
                return Ok(());
            }
            let site = tauri::async_runtime::block_on(start_site()).inspect_err(|e| {
                tracing::error!(error = %e, "cannot start the demo site");
            })?;
            // Automatic sync is on from the start; the window can turn it off.
            if let Some(sync) = &site.sync {
                sync.set(true, &site.runtime, sync_events(app.handle().clone()));
            }
            app.manage(Arc::new(site));
            tracing::info!("ready (demo site)");
            Ok(())
        })
        .invoke_handler(tauri::generate_handler![
            app_info,
            mode,
            settings,
            login,
            site,
            discover,
            plan,
            run_session,
            verify_log,
            set_auto_sync,
            sync_now,
            close_session,
            home,
            visit_log,
            sync_once,
            export_visit,
            choose_export_path,
            pause_session,
            resume_session,
            end_session,
            choose_work_order,
            discovery_settings,
            set_discovery_settings,
            credentials,
            set_credential,
            delete_credential
        ])
        .run(tauri::generate_context!());
    if let Err(e) = ran {
        tracing::error!(error = %e, "the window could not be started");
        eprintln!("fieldpatch: the window could not be started: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod capability_tests {
    //! The window's capability, the app manifest (`build.rs`), the registered commands and the
    //! commands `ui/src/lib/bridge.ts` calls are one list.

    use std::collections::BTreeSet;

    fn read(path: &str) -> String {
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
            .unwrap()
    }

    /// The quoted names between `start` and the next `]` of `text`.
    fn quoted_after(text: &str, start: &str) -> BTreeSet<String> {
        let rest = &text[text.find(start).unwrap() + start.len()..];
        let list = &rest[..rest.find(']').unwrap()];
        list.split('"').skip(1).step_by(2).map(str::to_string).collect()
    }

    /// The first string argument of each `marker("name"` call in `text`.
    fn called(text: &str, marker: &str) -> BTreeSet<String> {
        text.split(marker)
            .skip(1)
            .filter_map(|s| s.split_once(">(\"").and_then(|(_, r)| r.split_once('"')))
            .map(|(name, _)| name.to_string())
            .collect()
    }

    #[test]
    fn the_capability_allows_exactly_the_commands_the_window_calls() {
        let manifest = quoted_after(&read("build.rs"), "const COMMANDS: &[&str] = &[");
        let lib = read("src/lib.rs");
        let handler = &lib[lib.find("generate_handler![").unwrap()..];
        let registered: BTreeSet<String> = handler[18..handler.find(']').unwrap()]
            .split(',')
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(manifest, registered, "build.rs lists every registered command");

        let bridge = read("../ui/src/lib/bridge.ts");
        let calls = called(&bridge, "call<");
        assert_eq!(calls, registered, "the window calls every command, and only those");

        let cap: serde_json::Value =
            serde_json::from_str(&read("capabilities/default.json")).unwrap();
        let permissions: BTreeSet<String> = cap["permissions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().expect("plain permission identifiers").to_string())
            .collect();
        let allowed: BTreeSet<String> = permissions
            .iter()
            .filter_map(|p| p.strip_prefix("allow-"))
            .map(|c| c.replace('-', "_"))
            .collect();
        assert_eq!(allowed, registered);
        // Tauri's own API: listening to the shell's events, nothing else.
        let events = called(&bridge, "listen<");
        assert_eq!(
            events,
            ["discovery", "session", "session-finished", "sync"].map(String::from).into()
        );
        let core: BTreeSet<&str> =
            permissions.iter().map(String::as_str).filter(|p| !p.starts_with("allow-")).collect();
        assert_eq!(core, ["core:event:allow-listen", "core:event:allow-unlisten"].into());
    }
}
