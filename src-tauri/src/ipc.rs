//! What crosses the bridge to the window, besides the core's own types: errors, the site view,
//! session and sync events and the end of a session.
//!
//! Every type the commands take or return and every event payload derives [`TS`], and
//! `ui/src/lib/ipc.ts` is generated from them: the `ipc_types` test renders one declaration per
//! type (following each type to the types it contains) and fails while the committed file differs;
//! `FIELDPATCH_BLESS=1 cargo test -p fieldpatch-app ipc_types` rewrites it.

use fieldpatch_core::plan::{DeviceRecord, PlannableBundle};
use fieldpatch_core::session::{DeviceStatus, SessionEvent, Summary};
use fieldpatch_core::sync::{SyncReport, WatchEvent};
use serde::Serialize;
use ts_rs::TS;

/// An error as the front end receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
pub struct BridgeError {
    /// Stable, machine-readable code (`data_dir`, `store`, `catalog`, `keyring`, `session`, ...).
    pub code: &'static str,
    /// Human-readable message that says what to do.
    pub message: String,
}

impl From<fieldpatch_core::paths::PathError> for BridgeError {
    fn from(e: fieldpatch_core::paths::PathError) -> Self {
        BridgeError { code: e.code(), message: e.to_string() }
    }
}

impl From<fieldpatch_core::Error> for BridgeError {
    fn from(e: fieldpatch_core::Error) -> Self {
        BridgeError { code: e.code(), message: e.to_string() }
    }
}

/// Which mode the window runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The built-in demo site (`--demo`), in a data directory of its own.
    Demo,
    /// The technician's own data directory and inventory server.
    Real,
}

/// The site as the window shows it.
/// A plan as the window receives it: the window shows it and runs it by `id`; the plan itself
/// stays in the app (the window never sends a plan back).
#[derive(Debug, Clone, Serialize, TS)]
pub struct PlanView {
    pub id: String,
    pub plan: fieldpatch_core::plan::Plan,
}

#[derive(Debug, Serialize, TS)]
pub struct SiteView {
    pub devices: Vec<DeviceRecord>,
    /// Devices that did not answer: id and why.
    pub unreachable: Vec<(String, String)>,
    /// The verified catalog.
    pub bundles: Vec<PlannableBundle>,
    /// Bundles that did not verify, and why.
    pub refused: Vec<fieldpatch_core::catalog::Refusal>,
    /// Base URL of the inventory server (the embedded one in the demo); empty before a login.
    pub inventory: String,
    /// Whether automatic sync is on.
    pub auto_sync: bool,
    /// Why sync is unavailable, when it is.
    pub sync_unavailable: Option<String>,
    /// The work order the visit is for (real mode; `None`: an ad-hoc visit).
    pub work_order: Option<String>,
    /// Devices of that work order the last discovery did not find: each needs a reason at the
    /// close-out.
    pub missing: Vec<String>,
    /// Why there is no verified catalog to plan with (real mode, before a sync pulled one).
    pub catalog_problem: Option<String>,
}

/// A session event as the window receives it: the device it is about (none for the session
/// itself) and what happened; a device status comes with the core's wording of it.
#[derive(Debug, Clone, PartialEq, Serialize, TS)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SessionEventView {
    /// A named phase began (upload, test, confirm, ...).
    Phase { device: Option<String>, name: String },
    /// Something worth telling that is not an error (a retry, the canary, a wave).
    Note { device: Option<String>, text: String },
    /// Bytes the device acknowledged so far, of `total`.
    Transfer { device: Option<String>, done: u64, total: u64 },
    /// Where the device now stands; `text` is what the window shows for it.
    Status { device: Option<String>, status: DeviceStatus, text: String },
}

impl SessionEventView {
    pub fn new(device: Option<&str>, event: SessionEvent) -> Self {
        let device = device.map(str::to_string);
        match event {
            SessionEvent::Phase { name } => SessionEventView::Phase { device, name },
            SessionEvent::Note(text) => SessionEventView::Note { device, text },
            SessionEvent::Transfer(p) => {
                SessionEventView::Transfer { device, done: p.done, total: p.total }
            }
            SessionEvent::Status(status) => {
                SessionEventView::Status { device, text: status.to_string(), status }
            }
        }
    }
}

/// How a session run from the window ended (the `session-finished` event).
#[derive(Debug, Clone, PartialEq, Serialize, TS)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SessionFinished {
    /// The session ended: every device done, stopped at the failure threshold, or paused.
    Done { summary: Summary },
    /// The session could not run on.
    Failed { error: BridgeError },
}

impl From<Result<Summary, BridgeError>> for SessionFinished {
    fn from(r: Result<Summary, BridgeError>) -> Self {
        match r {
            Ok(summary) => SessionFinished::Done { summary },
            Err(error) => SessionFinished::Failed { error },
        }
    }
}

/// What a sync event is about (the core's `WatchEvent::kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum SyncKind {
    Offline,
    Probing,
    Reachable,
    Synced,
    Failed,
    Stopped,
}

impl From<&WatchEvent> for SyncKind {
    fn from(e: &WatchEvent) -> Self {
        match e {
            WatchEvent::Offline { .. } => SyncKind::Offline,
            WatchEvent::NetworkChanged => SyncKind::Probing,
            WatchEvent::Reachable => SyncKind::Reachable,
            WatchEvent::Synced(_) => SyncKind::Synced,
            WatchEvent::Failed(_) => SyncKind::Failed,
            WatchEvent::Stopped => SyncKind::Stopped,
        }
    }
}

/// A sync event as the window receives it (the kind and the core's wording); a finished sync
/// carries its report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
pub struct SyncEventView {
    pub kind: SyncKind,
    pub text: String,
    /// What the sync did, when `kind` is `synced`.
    pub report: Option<SyncReportView>,
}

impl From<&WatchEvent> for SyncEventView {
    fn from(e: &WatchEvent) -> Self {
        let report = match e {
            WatchEvent::Synced(r) => Some(SyncReportView::from(r)),
            _ => None,
        };
        SyncEventView { kind: e.into(), text: e.to_string(), report }
    }
}

/// What one sync did: events the server accepted, what is still pending, and the events it
/// rejected, will take later or kept without applying, each with its reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
pub struct SyncReportView {
    /// Events the server newly countersigned (accepted) in this sync.
    #[ts(type = "number")]
    pub accepted: u64,
    /// Events not on the server yet.
    #[ts(type = "number")]
    pub pending: u64,
    pub rejected: Vec<EventProblemView>,
    pub retryable: Vec<EventProblemView>,
    pub not_applied: Vec<EventProblemView>,
    /// What the pull brought: devices, work orders and catalog entries.
    pub devices: usize,
    pub work_orders: usize,
    pub catalog: usize,
}

/// One event the server did not take (or did not apply), and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
pub struct EventProblemView {
    pub log_id: String,
    #[ts(type = "number")]
    pub seq: u64,
    pub code: String,
    pub reason: String,
}

impl From<&SyncReport> for SyncReportView {
    fn from(r: &SyncReport) -> Self {
        let list = |v: &[fieldpatch_core::sync::EventProblem]| {
            v.iter()
                .map(|p| EventProblemView {
                    log_id: p.log_id.to_string(),
                    seq: p.seq,
                    code: p.code.clone(),
                    reason: p.reason.clone(),
                })
                .collect()
        };
        SyncReportView {
            accepted: r.pushed,
            pending: r.pending_total(),
            rejected: list(&r.rejected),
            retryable: list(&r.retryable),
            not_applied: list(&r.not_applied),
            devices: r.devices,
            work_orders: r.work_orders,
            catalog: r.catalog,
        }
    }
}

/// Real mode's credentials screen: the device and site credentials kept in the OS keyring, by
/// name and when they were set (never their values), and which keyring holds them.
#[derive(Debug, Clone, Serialize, TS)]
pub struct CredentialsView {
    pub keyring: String,
    pub credentials: Vec<fieldpatch_core::credentials::CredentialListing>,
}

/// The home screen: the core's overview, whether the inventory answers, and where exports go.
#[derive(Debug, Clone, Serialize, TS)]
pub struct HomeView {
    pub overview: fieldpatch_core::overview::Overview,
    /// The inventory server (none in real mode before a login).
    pub server: Option<String>,
    /// Whether the inventory server answered its health check just now.
    pub online: bool,
    /// The folder the window suggests for audit exports.
    pub export_dir: String,
    /// What the technician should know about this mode (the demo site says which of its
    /// devices could not start, and why).
    pub notices: Vec<String>,
}

/// An audit export written from the window, and what the offline verifier says of the file.
#[derive(Debug, Clone, Serialize, TS)]
pub struct ExportView {
    pub path: String,
    #[ts(type = "number")]
    pub bytes: u64,
    pub visit_id: String,
    pub events: usize,
    pub devices: usize,
    /// The hash of the visit's last event: the report's verification fingerprint.
    pub fingerprint: String,
    /// The inventory key that countersigned the visit (none when exported before sync).
    pub server_key: Option<String>,
    /// What `fieldpatch audit verify` says of the written file.
    pub check: ExportCheck,
}

/// The offline verifier's verdict on an archive: it verifies, or the first problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ExportCheck {
    Pass { events: usize, devices: usize, fingerprint: String, countersigned: bool },
    Fail { code: String, problem: String },
}

#[cfg(test)]
mod ipc_types {
    use super::*;
    use fieldpatch_core::AppInfo;
    use fieldpatch_core::plan::Plan;
    use fieldpatch_core::visitlog::LogVerification;
    use serde_json::json;
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use ts_rs::{Config, TypeVisitor};

    /// The command that regenerates the file.
    const BLESS: &str = "FIELDPATCH_BLESS=1 cargo test -p fieldpatch-app ipc_types";

    /// Collects the declaration of every type it visits and of the types those contain, by name.
    struct Declarations {
        cfg: Config,
        by_name: BTreeMap<String, String>,
    }

    impl TypeVisitor for Declarations {
        fn visit<T: TS + 'static + ?Sized>(&mut self) {
            // Types without a file of their own (primitives, strings, dates) have no declaration.
            if T::output_path().is_none() {
                return;
            }
            let name = T::ident(&self.cfg);
            let decl = format!("{}export {}", T::docs().unwrap_or_default(), T::decl(&self.cfg));
            match self.by_name.get(&name) {
                Some(seen) if *seen == decl => {}
                Some(seen) => panic!("two types are called {name} in TypeScript:\n{seen}\n{decl}"),
                None => {
                    self.by_name.insert(name, decl);
                    T::visit_dependencies(self);
                }
            }
        }
    }

    /// `ui/src/lib/ipc.ts` as the Rust types say it should be.
    fn render() -> String {
        // serde_json writes u64 as a plain number, never as a bigint.
        let cfg = Config::new().with_large_int("number");
        let mut d = Declarations { cfg, by_name: BTreeMap::new() };
        // What the commands return and take, and the payloads of the events.
        d.visit::<AppInfo>();
        d.visit::<BridgeError>();
        d.visit::<SiteView>();
        d.visit::<Plan>();
        d.visit::<PlanView>();
        d.visit::<LogVerification>();
        d.visit::<SessionEventView>();
        d.visit::<SessionFinished>();
        d.visit::<SyncEventView>();
        d.visit::<fieldpatch_core::discovery::DiscoveryReport>();
        d.visit::<fieldpatch_core::discovery::Update>();
        d.visit::<Mode>();
        d.visit::<fieldpatch_core::SyncSettings>();
        d.visit::<HomeView>();
        d.visit::<fieldpatch_core::overview::VisitTimeline>();
        d.visit::<SyncReportView>();
        d.visit::<ExportView>();
        d.visit::<fieldpatch_core::discovery::DiscoverySettings>();
        d.visit::<CredentialsView>();
        let mut out = format!(
            "// generated from the Rust types by `{BLESS}`; do not edit\n\
             // (the types the desktop shell's commands take and return, and its event payloads)\n"
        );
        for decl in d.by_name.values() {
            out.push('\n');
            for line in decl.trim_end().lines() {
                out.push_str(line.trim_end());
                out.push('\n');
            }
        }
        out
    }

    fn path() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ui/src/lib/ipc.ts")
    }

    #[test]
    fn ipc_types_match_the_generated_file() {
        let want = render();
        let path = path();
        if std::env::var_os("FIELDPATCH_BLESS").is_some_and(|v| v == "1") {
            std::fs::write(&path, &want).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            return;
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have != want {
            let line = have
                .lines()
                .zip(want.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| have.lines().count().min(want.lines().count()))
                + 1;
            panic!(
                "ui/src/lib/ipc.ts is stale: it no longer matches the Rust types that cross the \
                 bridge (first difference at line {line}).\nRegenerate it with `{BLESS}` and \
                 commit it with the change."
            );
        }
    }

    #[test]
    fn the_file_declares_the_types_inside_the_payloads_too() {
        let file = render();
        let names: Vec<&str> = file
            .lines()
            .filter_map(|l| l.strip_prefix("export type "))
            .filter_map(|l| l.split([' ', '<']).next())
            .collect();
        for name in ["DeviceStatus", "Disposition", "Summary", "SyncKind", "Version"] {
            assert!(names.contains(&name), "{name} missing from\n{file}");
        }
    }

    #[test]
    fn session_events_carry_the_core_wording_of_a_status() {
        let status = DeviceStatus::RolledBack { reason: "unhealthy".into() };
        let e = SessionEventView::new(Some("sensor-04"), SessionEvent::Status(status));
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({
                "kind": "status",
                "device": "sensor-04",
                "status": {"status": "rolled_back", "reason": "unhealthy"},
                "text": "rolled back: unhealthy",
            })
        );
        let e = SessionEventView::new(None, SessionEvent::Note("canary: sensor-01".into()));
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"kind": "note", "device": null, "text": "canary: sensor-01"})
        );
    }

    #[test]
    fn the_end_of_a_session_is_tagged() {
        let summary = Summary { patched: 5, rolled_back: 1, ..Summary::default() };
        assert_eq!(
            serde_json::to_value(SessionFinished::from(Ok(summary))).unwrap(),
            json!({"outcome": "done", "summary": serde_json::to_value(summary).unwrap()})
        );
        let failed =
            SessionFinished::from(Err(BridgeError { code: "busy", message: "wait".into() }));
        assert_eq!(
            serde_json::to_value(&failed).unwrap(),
            json!({"outcome": "failed", "error": {"code": "busy", "message": "wait"}})
        );
    }

    /// The `discovery` event is the core's `Update`: the window keys on `event`, and reads a
    /// device's match (`null`: unknown) and identity from it.
    #[test]
    fn discovery_events_are_tagged_and_carry_the_match() {
        use fieldpatch_core::discovery::{
            DiscoveredDevice, InventoryMatch, MatchKey, SkippedCandidate, Update,
        };
        use fieldpatch_core::plan::DeviceAddress;
        let device = DiscoveredDevice {
            addresses: vec![DeviceAddress::Udp { addr: "127.0.0.1:1337".into() }],
            via: vec!["udp-probe".into()],
            identity: Default::default(),
            bootloader: Some("MCUboot".into()),
            capabilities: Default::default(),
            details: vec![],
            matched: Some(InventoryMatch {
                device_id: "sensor-01".into(),
                key: MatchKey::SerialNumber,
            }),
        };
        let v = serde_json::to_value(Update::Device { device: Box::new(device) }).unwrap();
        assert_eq!(v["event"], "device");
        assert_eq!(
            v["device"]["matched"],
            json!({"device_id": "sensor-01", "key": "serial_number"})
        );
        assert_eq!(
            v["device"]["addresses"][0],
            json!({"transport": "udp", "addr": "127.0.0.1:1337"})
        );
        let skipped = SkippedCandidate {
            candidate: "/dev/pts/9".into(),
            code: "no_answer".into(),
            reason: "nothing answered".into(),
        };
        let v = serde_json::to_value(Update::Skipped { skipped }).unwrap();
        assert_eq!(v["event"], "skipped");
        assert_eq!(v["skipped"]["code"], "no_answer");
    }

    /// A finished sync carries what it did: accepted, pending, and each problem with its reason.
    #[test]
    fn a_synced_event_carries_its_report() {
        use fieldpatch_core::sync::{EventProblem, SyncReport};
        let log = uuid::Uuid::now_v7();
        let mut r = SyncReport { pushed: 7, devices: 6, ..SyncReport::default() };
        r.pending.insert(log, 2);
        r.pending.insert(uuid::Uuid::now_v7(), 1);
        r.rejected.push(EventProblem {
            id: uuid::Uuid::now_v7(),
            log_id: log,
            seq: 9,
            code: "bad_signature".into(),
            reason: "signature does not match the content".into(),
        });
        let v = serde_json::to_value(SyncEventView::from(&WatchEvent::Synced(r))).unwrap();
        assert_eq!(v["kind"], "synced");
        assert_eq!(v["report"]["accepted"], 7);
        assert_eq!(v["report"]["pending"], 3);
        assert_eq!(
            v["report"]["rejected"],
            json!([{"log_id": log.to_string(), "seq": 9, "code": "bad_signature",
                    "reason": "signature does not match the content"}])
        );
        let offline = WatchEvent::Offline { retry_in: Default::default(), detail: "x".into() };
        assert!(serde_json::to_value(SyncEventView::from(&offline)).unwrap()["report"].is_null());
    }

    #[test]
    fn the_export_verdict_is_tagged() {
        let pass = ExportCheck::Pass {
            events: 3,
            devices: 1,
            fingerprint: "ab".into(),
            countersigned: false,
        };
        assert_eq!(serde_json::to_value(&pass).unwrap()["result"], "pass");
        let fail = ExportCheck::Fail { code: "audit".into(), problem: "row 2".into() };
        assert_eq!(
            serde_json::to_value(&fail).unwrap(),
            json!({"result": "fail", "code": "audit", "problem": "row 2"})
        );
    }

    #[test]
    fn sync_kinds_are_the_core_kinds() {
        use fieldpatch_core::sync::{SyncError, SyncReport};
        let events = [
            WatchEvent::Offline { retry_in: std::time::Duration::from_secs(1), detail: "x".into() },
            WatchEvent::NetworkChanged,
            WatchEvent::Reachable,
            WatchEvent::Synced(SyncReport::default()),
            WatchEvent::Failed(SyncError::Unauthorized),
            WatchEvent::Stopped,
        ];
        for e in &events {
            let view = SyncEventView::from(e);
            assert_eq!(serde_json::to_value(view.kind).unwrap(), e.kind(), "{e:?}");
            assert_eq!(view.text, e.to_string());
        }
    }
}
