//! The Fieldpatch desktop shell. Tauri commands and events only: each command is a few lines that
//! call `fieldpatch-core`; errors cross the bridge as `{code, message}` so the front end branches
//! on codes, not on strings. Session progress reaches the window as `session` events.

use fieldpatch_core::bundle::verify::VerifyPolicy;
use fieldpatch_core::catalog::Catalog;
use fieldpatch_core::credentials::Credentials;
use fieldpatch_core::demo::Demo;
use fieldpatch_core::flash::connect::DriverConnector;
use fieldpatch_core::plan::{DeviceRecord, Plan};
use fieldpatch_core::session::batch::{self, identify, load_catalog, make_plan, run_in_visit};
use fieldpatch_core::session::{SessionEvent, SessionOptions, SessionState, Threshold};
use fieldpatch_core::store::Store;
use fieldpatch_core::sync::{StoreSync, SyncConfig, WatchEvent, WatchOptions, watch};
use fieldpatch_core::visitlog::VisitLog;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tauri::{Emitter, Manager};
use tokio::sync::Mutex;

/// An error as the front end receives it.
#[derive(Debug, Clone, Serialize)]
pub struct BridgeError {
    /// Stable, machine-readable code (`data_dir`, `store`, `catalog`, `keyring`, `session`, ...).
    pub code: &'static str,
    /// Human-readable message that says what to do.
    pub message: String,
}

fn err(code: &'static str) -> impl Fn(&dyn std::fmt::Display) -> BridgeError {
    move |e| BridgeError { code, message: e.to_string() }
}

impl From<fieldpatch_core::paths::PathError> for BridgeError {
    fn from(e: fieldpatch_core::paths::PathError) -> Self {
        BridgeError { code: "data_dir", message: e.to_string() }
    }
}

/// What the window works on: the demo site, its verified catalog and the local store.
struct Site {
    demo: Demo,
    /// The embedded inventory server (SQLite, loopback).
    inventory: fieldpatch_server::Embedded,
    catalog: Arc<Catalog>,
    devices: Mutex<Vec<DeviceRecord>>,
    store: Store,
    running: AtomicBool,
    /// The last session run from the window, for its close-out.
    last_session: Mutex<Option<SessionState>>,
    /// Syncing with the embedded inventory: config (with the demo token, kept in memory only),
    /// the switch of the running watch, and a nudge to sync at once.
    sync: Option<SyncControl>,
    /// Why sync is unavailable, when it is.
    sync_unavailable: Option<String>,
}

struct SyncControl {
    config: SyncConfig,
    local: Arc<StoreSync>,
    stop: std::sync::Mutex<Option<tokio::sync::watch::Sender<bool>>>,
    nudge: Arc<tokio::sync::Notify>,
}

/// The site as the window shows it.
#[derive(Debug, Serialize)]
struct SiteView {
    devices: Vec<DeviceRecord>,
    unreachable: Vec<(String, String)>,
    bundles: Vec<fieldpatch_core::plan::CatalogEntry>,
    refused: Vec<fieldpatch_core::catalog::Refusal>,
    /// Base URL of the embedded inventory server.
    inventory: String,
    /// Whether automatic sync is on, or why sync is unavailable.
    auto_sync: bool,
    sync_unavailable: Option<String>,
}

/// Version and local data directory of this installation.
#[tauri::command]
fn app_info() -> Result<fieldpatch_core::AppInfo, BridgeError> {
    Ok(fieldpatch_core::app_info()?)
}

/// Identify every device of the site (what it runs now) and list the verified catalog.
#[tauri::command]
async fn site(site: tauri::State<'_, Arc<Site>>) -> Result<SiteView, BridgeError> {
    let connector = DriverConnector { usb: site.demo.usb.clone() };
    let found = identify(&connector, site.demo.devices.clone(), Duration::from_secs(10)).await;
    let unreachable =
        found.iter().filter_map(|(d, e)| e.clone().map(|e| (d.id.clone(), e))).collect();
    let devices: Vec<DeviceRecord> = found.into_iter().map(|(d, _)| d).collect();
    *site.devices.lock().await = devices.clone();
    Ok(SiteView {
        devices,
        unreachable,
        bundles: site.catalog.entries(),
        refused: site.catalog.refused.clone(),
        inventory: format!("http://{}", site.inventory.addr),
        auto_sync: site.sync.as_ref().is_some_and(|s| s.stop.lock().is_ok_and(|g| g.is_some())),
        sync_unavailable: site.sync_unavailable.clone(),
    })
}

/// Turn automatic sync with the inventory on or off. While on, sync probes the server (with
/// backoff when it is unreachable) and syncs by itself; `sync` events tell the window.
#[tauri::command]
async fn set_auto_sync(
    app: tauri::AppHandle,
    site: tauri::State<'_, Arc<Site>>,
    on: bool,
) -> Result<bool, BridgeError> {
    let sync = site.sync.as_ref().ok_or_else(|| BridgeError {
        code: "sync_unavailable",
        message: site.sync_unavailable.clone().unwrap_or_default(),
    })?;
    switch_watch(app, sync, on).map_err(|e| err("sync")(&e))?;
    Ok(on)
}

/// Stop the running watch, if any, and start a new one when `on`.
fn switch_watch(app: tauri::AppHandle, sync: &SyncControl, on: bool) -> Result<(), String> {
    let mut guard = sync.stop.lock().map_err(|_| "sync state poisoned".to_string())?;
    if let Some(stop) = guard.take() {
        let _ = stop.send(true);
    }
    if on {
        let (tx, rx) = tokio::sync::watch::channel(false);
        *guard = Some(tx);
        let (config, local, nudge) = (sync.config.clone(), sync.local.clone(), sync.nudge.clone());
        tauri::async_runtime::spawn(async move {
            let options = WatchOptions {
                interval: Duration::from_secs(20),
                initial_backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(15),
            };
            let emit = move |e: WatchEvent| {
                let _ = app.emit("sync", SyncEventView::new(e));
            };
            let _ = watch(&config, local.as_ref(), options, rx, Some(&nudge), &emit).await;
        });
    }
    Ok(())
}

/// Sync now (when automatic sync is on, this wakes it).
#[tauri::command]
async fn sync_now(site: tauri::State<'_, Arc<Site>>) -> Result<(), BridgeError> {
    let sync = site.sync.as_ref().ok_or_else(|| BridgeError {
        code: "sync_unavailable",
        message: site.sync_unavailable.clone().unwrap_or_default(),
    })?;
    sync.nudge.notify_one();
    Ok(())
}

/// A sync event as the window receives it.
#[derive(Debug, Clone, Serialize)]
struct SyncEventView {
    kind: &'static str,
    text: String,
}

impl SyncEventView {
    fn new(e: WatchEvent) -> Self {
        let (kind, text) = match e {
            WatchEvent::Offline { retry_in, detail } => {
                ("offline", format!("inventory unreachable ({detail}); next try in {retry_in:?}"))
            }
            WatchEvent::NetworkChanged => ("probing", "network changed: probing".into()),
            WatchEvent::Reachable => ("reachable", "inventory reachable: syncing".into()),
            WatchEvent::Synced(r) => (
                "synced",
                format!(
                    "synced: {} event(s) pushed, {} pending, {} rejected; {} device(s), {} bundle(s) pulled",
                    r.pushed,
                    r.pending_total(),
                    r.rejected.len(),
                    r.devices,
                    r.catalog
                ),
            ),
            WatchEvent::Failed(e) => ("failed", e.to_string()),
            WatchEvent::Stopped => ("stopped", "automatic sync is off".into()),
        };
        SyncEventView { kind, text }
    }
}

/// Plan the identified devices against the verified catalog.
#[tauri::command]
async fn plan(site: tauri::State<'_, Arc<Site>>) -> Result<Plan, BridgeError> {
    let creds = Credentials::open(&site.store).await.ok();
    Ok(make_plan(site.devices.lock().await.clone(), &site.catalog, creds.as_ref()).await)
}

/// Start a batch session on the plan; progress arrives as `session` events, the end as
/// `session-finished`.
#[tauri::command]
async fn run_session(
    app: tauri::AppHandle,
    site: tauri::State<'_, Arc<Site>>,
    plan: Plan,
    canary: bool,
) -> Result<String, BridgeError> {
    if site.running.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return Err(BridgeError { code: "busy", message: "a session is already running".into() });
    }
    let key = Credentials::open(&site.store).await.map_err(|e| err("keyring")(&e))?;
    let key = key.technician_key().await.map_err(|e| err("keyring")(&e))?;
    let log = Arc::new(VisitLog::open(&site.store, key).await.map_err(|e| err("store")(&e))?);
    let options = SessionOptions {
        canary,
        soak: Duration::from_secs(1),
        wave_size: 8,
        concurrency: 8,
        failure_threshold: Threshold::Percent(50.0),
        retries: 0,
        ..Default::default()
    };
    let state = SessionState::new(plan, options);
    let id = state.id.to_string();
    let emitter = app.clone();
    let observer = Arc::new(move |device: Option<&str>, event: SessionEvent| {
        let _ = emitter.emit("session", SessionEventView::new(device, event));
    });
    let site = site.inner().clone();
    tauri::async_runtime::spawn(async move {
        let connector = Arc::new(DriverConnector { usb: site.demo.usb.clone() });
        let result = run_in_visit(
            &site.store,
            log,
            state,
            site.catalog.clone(),
            connector,
            observer,
            Arc::new(AtomicBool::new(false)),
        )
        .await;
        site.running.store(false, std::sync::atomic::Ordering::SeqCst);
        let summary = match result {
            Ok((summary, state)) => {
                *site.last_session.lock().await = Some(state);
                Ok(summary)
            }
            Err(e) => Err(err("session")(&e)),
        };
        let _ = app.emit("session-finished", summary);
    });
    Ok(id)
}

/// Close out the last session: the technician's reason for every device it did not patch goes
/// into the visit log (and, with sync, to the inventory). Refused while any reason is missing.
#[tauri::command]
async fn close_session(
    site: tauri::State<'_, Arc<Site>>,
    reasons: std::collections::BTreeMap<String, String>,
) -> Result<Vec<String>, BridgeError> {
    let state =
        site.last_session.lock().await.clone().ok_or_else(|| BridgeError {
            code: "no_session",
            message: "run a session first".into(),
        })?;
    let creds = Credentials::open(&site.store).await.map_err(|e| err("keyring")(&e))?;
    let key = creds.technician_key().await.map_err(|e| err("keyring")(&e))?;
    let log = VisitLog::open(&site.store, key).await.map_err(|e| err("store")(&e))?;
    batch::close_out(&log, &state, &reasons).await.map_err(|e| match e {
        batch::BatchError::Reasons(missing) => err("reasons_missing")(&missing),
        other => err("session")(&other),
    })
}

/// Verify the visit log(s) in the local store.
#[tauri::command]
async fn verify_log(site: tauri::State<'_, Arc<Site>>) -> Result<serde_json::Value, BridgeError> {
    let checks = site.store.verify_all_logs().await.map_err(|e| err("store")(&e))?;
    Ok(serde_json::to_value(checks).unwrap_or_default())
}

/// A session event as the window receives it.
#[derive(Debug, Clone, Serialize)]
struct SessionEventView {
    device: Option<String>,
    kind: &'static str,
    text: Option<String>,
    done: Option<u64>,
    total: Option<u64>,
    status: Option<fieldpatch_core::session::DeviceStatus>,
}

impl SessionEventView {
    fn new(device: Option<&str>, event: SessionEvent) -> Self {
        let mut v = SessionEventView {
            device: device.map(str::to_string),
            kind: "note",
            text: None,
            done: None,
            total: None,
            status: None,
        };
        match event {
            SessionEvent::Phase { name } => (v.kind, v.text) = ("phase", Some(name)),
            SessionEvent::Note(n) => v.text = Some(n),
            SessionEvent::Transfer(p) => {
                (v.kind, v.done, v.total) = ("transfer", Some(p.done), Some(p.total))
            }
            SessionEvent::Status(s) => (v.kind, v.status) = ("status", Some(s)),
        }
        v
    }
}

/// Start the built-in demo site, open the local store and start the embedded inventory server
/// (all in the data directory).
async fn start_site() -> Result<Site, String> {
    let (data_dir, _) = fieldpatch_core::paths::data_dir().map_err(|e| e.to_string())?;
    let demo_dir = data_dir.join("demo");
    std::fs::create_dir_all(&demo_dir).map_err(|e| format!("{}: {e}", demo_dir.display()))?;
    let demo = fieldpatch_core::demo::start(&demo_dir).map_err(|e| e.to_string())?;
    let catalog = load_catalog(&demo.catalog_dir, &demo.trust_path, &VerifyPolicy::now())
        .map_err(|e| e.to_string())?;
    let store = Store::open_in(&data_dir).await.map_err(|e| e.to_string())?;
    let inventory = fieldpatch_server::start_embedded(&data_dir.join("inventory"))
        .await
        .map_err(|e| e.to_string())?;
    let (sync, sync_unavailable) =
        match enroll(&inventory, &demo, &catalog, &store, &data_dir).await {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(e)),
        };
    Ok(Site {
        sync,
        sync_unavailable,
        devices: Mutex::new(demo.devices.clone()),
        demo,
        inventory,
        catalog: Arc::new(catalog),
        store,
        running: AtomicBool::new(false),
        last_session: Mutex::new(None),
    })
}

/// Register this laptop's technician key with the embedded inventory, load the demo site into it
/// and prepare sync (the token stays in memory: the demo never touches the keyring's sync token).
async fn enroll(
    inventory: &fieldpatch_server::Embedded,
    demo: &Demo,
    catalog: &Catalog,
    store: &Store,
    data_dir: &std::path::Path,
) -> Result<SyncControl, String> {
    let credentials = Credentials::open(store).await.map_err(|e| e.to_string())?;
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
    };
    let token = inventory.seed(seed).await.map_err(|e| e.to_string())?;
    Ok(SyncControl {
        config: SyncConfig::new(format!("http://{}", inventory.addr), token),
        local: Arc::new(StoreSync::new(store.clone(), credentials, data_dir)),
        stop: std::sync::Mutex::new(None),
        nudge: Arc::new(tokio::sync::Notify::new()),
    })
}

/// Start the desktop app.
pub fn run() {
    tauri::Builder::default()
        .setup(|app| {
            let site = tauri::async_runtime::block_on(start_site())?;
            // Automatic sync is on from the start; the window can turn it off.
            if let Some(sync) = &site.sync {
                switch_watch(app.handle().clone(), sync, true)?;
            }
            app.manage(Arc::new(site));
            Ok(())
        })
        .invoke_handler(tauri::generate_handler![
            app_info,
            site,
            plan,
            run_session,
            verify_log,
            set_auto_sync,
            sync_now,
            close_session
        ])
        .run(tauri::generate_context!())
        .expect("the Fieldpatch window could not be started");
}
