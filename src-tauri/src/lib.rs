//! The Fieldpatch desktop shell. Tauri commands and events only: each command is a few lines that
//! call `fieldpatch-core`; errors cross the bridge as `{code, message}` so the front end branches
//! on codes, not on strings. Session progress reaches the window as `session` events.

use fieldpatch_core::bundle::verify::VerifyPolicy;
use fieldpatch_core::catalog::Catalog;
use fieldpatch_core::credentials::Credentials;
use fieldpatch_core::demo::Demo;
use fieldpatch_core::flash::connect::DriverConnector;
use fieldpatch_core::plan::{DeviceRecord, Plan};
use fieldpatch_core::session::batch::{identify, load_catalog, make_plan, run_in_visit};
use fieldpatch_core::session::{SessionEvent, SessionOptions, SessionState, Threshold};
use fieldpatch_core::store::Store;
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
    })
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
        let _ =
            app.emit("session-finished", result.map(|(s, _)| s).map_err(|e| err("session")(&e)));
    });
    Ok(id)
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
    Ok(Site {
        devices: Mutex::new(demo.devices.clone()),
        demo,
        inventory,
        catalog: Arc::new(catalog),
        store,
        running: AtomicBool::new(false),
    })
}

/// Start the desktop app.
pub fn run() {
    tauri::Builder::default()
        .setup(|app| {
            let site = tauri::async_runtime::block_on(start_site())?;
            app.manage(Arc::new(site));
            Ok(())
        })
        .invoke_handler(tauri::generate_handler![app_info, site, plan, run_session, verify_log])
        .run(tauri::generate_context!())
        .expect("the Fieldpatch window could not be started");
}
