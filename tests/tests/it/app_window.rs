//! The real desktop window under Xvfb, driven through tauri-driver + WebKitWebDriver: it opens,
//! loads the built UI, shows the version it got from the core over IPC, then identifies the demo
//! site's lab devices, discovers them (each matched to the inventory), plans, runs a batch session
//! (one sensor rolls back) and verifies the visit log, all from the window (`--demo`). Without
//! `--demo` it opens in real mode on the settings and logs in. Commands outside the window's
//! capability are refused. Screenshots are kept in
//! `artifacts/`.

use fieldpatch_e2e::{artifacts_dir, built_binary, free_port, webdriver::Session, xvfb::Xvfb};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

/// tauri-driver and the WebKitWebDriver it spawns, in their own process group; the whole group is
/// ended on drop so no driver outlives the test.
pub(crate) struct DriverGroup(std::process::Child);
impl Drop for DriverGroup {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let _ = self.0.wait();
    }
}

/// Xvfb, a fresh data directory (`FIELDPATCH_DATA_DIR`) and tauri-driver on a free port, in the
/// order they must be dropped in (the driver first).
fn display() -> (Xvfb, tempfile::TempDir, DriverGroup, u16) {
    display_with(Xvfb::start().unwrap())
}

/// [`display`] on a given X server.
pub(crate) fn display_with(xvfb: Xvfb) -> (Xvfb, tempfile::TempDir, DriverGroup, u16) {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let native_port = free_port();
    let driver = Command::new("tauri-driver")
        .args(["--port", &port.to_string(), "--native-port", &native_port.to_string()])
        .env("DISPLAY", xvfb.display())
        .env("FIELDPATCH_DATA_DIR", data.path())
        // A keyring service of its own: real mode stores a sync token.
        .env("FIELDPATCH_KEYRING_SERVICE", format!("fieldpatch-window-{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .expect("cannot start tauri-driver: install it with `cargo install tauri-driver --locked`");
    (xvfb, data, DriverGroup(driver), port)
}

/// The demo's SWUpdate gateway: the real daemon behind digest authentication, its password put
/// in the keyring by the demo at start (`scripts/setup` installs `swupdate`).
const GATEWAY: &str = fieldpatch_demo::GATEWAY_ID;

#[test]
fn window_shows_the_version_and_runs_a_session_on_the_demo_site() {
    let app = built_binary("fieldpatch-app");
    let (_xvfb, data, _driver, port) = display();
    let base = format!("http://127.0.0.1:{port}");
    let session = Session::start_with_args(&base, &app, &["--demo"]).unwrap();
    let version = session.wait_text("#core-version", Duration::from_secs(60)).unwrap();
    let data_dir = session.wait_text("#data-dir", Duration::from_secs(5)).unwrap();
    let png = session.screenshot().unwrap();
    std::fs::write(artifacts_dir().join("app-window.png"), &png).unwrap();

    // The demo site's devices and session are on their own screen (the window opens on Home).
    session.click("#nav-site", Duration::from_secs(60)).unwrap();
    // The demo site: identify, plan, run a session from the window, verify the visit log.
    let long = Duration::from_secs(120);
    session.wait_for("tr[data-device='sensor-01'] td.runs", long, |t| t == "1.4.0").unwrap();
    session.wait_for("tr[data-device='gateway-01'] td.runs", long, |t| t == "3.0.0").unwrap();
    let inventory =
        session.wait_for("#inventory", long, |t| t.starts_with("http://127.0.0.1:")).unwrap();
    // The embedded inventory server answers from inside the running app.
    let health: serde_json::Value =
        reqwest::blocking::get(format!("{inventory}/v1/health")).unwrap().json().unwrap();
    assert_eq!(health["status"], "ok");
    // Discovery in the window: once the demo site is synced into the local inventory, every lab
    // device streams in (pty, UDP, the lab USB bus). The pump controller is the only one of its
    // model and the gateway reports its USB serial number, so both are matched; the four LAN
    // sensors share a model and SMP reports no serial number, so they are listed as unknown
    // (never guessed) and their inventory records as missing.
    session.wait_for("#sync-status", long, |t| t.starts_with("synced: ")).unwrap();
    session.click("#discover", long).unwrap();
    let discovered = session.wait_for("#discovery-status", long, |t| t.contains("found")).unwrap();
    let listed = session
        .execute_async(
            "const done = arguments[arguments.length - 1];
             done({
               rows: [...document.querySelectorAll('#discovered tbody tr')].map((tr) =>
                 [tr.dataset.inventory, tr.querySelector('td.version').textContent.trim()]),
               missing: [...document.querySelectorAll('#missing li')].map((li) => li.dataset.missing),
             });",
        )
        .unwrap();
    session.type_text("#device-filter", "gateway").unwrap();
    let filtered = session
        .wait_for("#discovered tbody", long, |t| {
            !t.contains("pump-ctl-01") && t.contains("gateway-01")
        })
        .unwrap();
    let png_devices = session.screenshot().unwrap();
    std::fs::write(artifacts_dir().join("app-devices.png"), &png_devices).unwrap();
    session.click("#plan", long).unwrap();
    let planned =
        session.wait_for("tr[data-device='pump-ctl-01'] td.plan", long, |t| !t.is_empty()).unwrap();
    // The technician leaves sensor-02 out of this session.
    session.click("input[data-choose='sensor-02']", long).unwrap();
    let run_label = session.wait_for("#run", long, |t| t.contains("6 of 7")).unwrap();
    session.click("#run", long).unwrap();
    session.wait_for("#session-done", long, |t| t.contains("finished")).unwrap();
    let result = |id: &str| {
        session
            .wait_for(&format!("tr[data-device='{id}'] td.result"), long, |t| !t.is_empty())
            .unwrap()
    };
    let results: Vec<(String, String)> =
        ["pump-ctl-01", "sensor-01", "sensor-02", "sensor-03", "sensor-04", "gateway-01", GATEWAY]
            .iter()
            .map(|id| (id.to_string(), result(id)))
            .collect();
    // No device left behind: closing out needs a reason for the rolled-back sensor and for the
    // one left out.
    session.click("#close-out-btn", long).unwrap();
    let refused = session.wait_for("#close-out-status", long, |t| !t.is_empty()).unwrap();
    session.type_text("input[data-reason='sensor-04']", "owner refused a second attempt").unwrap();
    session.type_text("input[data-reason='sensor-02']", "flashed alone next").unwrap();
    session.click("#close-out-btn", long).unwrap();
    let closed = session.wait_for("#close-out-status", long, |t| t.contains("closed out")).unwrap();

    // Then sensor-02 alone: a session of one, the rolled-back sensor-04 not chosen.
    session.click("#plan", long).unwrap();
    session
        .wait_for("tr[data-device='pump-ctl-01'] td.plan", long, |t| t.starts_with("up to date"))
        .unwrap();
    session.click("button[data-flash-one='sensor-02']", long).unwrap();
    let alone = session
        .wait_for("tr[data-device='sensor-02'] td.result", long, |t| {
            ["patched", "rolled back", "failed"].iter().any(|e| t.starts_with(e))
        })
        .unwrap();
    session.wait_for("#session-done", long, |t| t.contains("finished")).unwrap();
    let left_out = result("sensor-04");

    // Sync pushes the session's visit log to the embedded inventory.
    session.click("#sync-now", long).unwrap();
    let synced = session
        .wait_for("#sync-status", long, |t| {
            t.starts_with("synced: ")
                && !t.starts_with("synced: pushed 0,")
                && t.contains("pending 0,")
        })
        .unwrap();
    session.click("#auto-sync", long).unwrap();
    let off = session.wait_for("#sync-status", long, |t| t.contains("off")).unwrap();
    // The window names a plan the app made; a plan (or a plan id) it makes up is refused.
    let invoke = |args: &str| {
        session
            .execute_async(&format!(
                "const done = arguments[arguments.length - 1];
                 window.__TAURI_INTERNALS__.invoke('run_session', {args})
                   .then((r) => done({{ ok: r }}), (e) => done({{ err: e }}));"
            ))
            .unwrap()
    };
    let forged_id = invoke("{ planId: 'plan-999', canary: false }");
    let forged_plan = invoke("{ plan: { devices: [] }, canary: false }");
    // The capability grants the app's commands and listening to events, nothing else of Tauri:
    // a core API the window does not use is refused at the IPC boundary.
    let call = |cmd: &str| {
        session
            .execute_async(&format!(
                "const done = arguments[arguments.length - 1];
                 window.__TAURI_INTERNALS__.invoke('{cmd}', {{}})
                   .then((r) => done({{ ok: r }}), (e) => done({{ err: String(e) }}));"
            ))
            .unwrap()
    };
    let app_version = call("plugin:app|version");
    let window_title = call("plugin:window|title");
    let emitted = call("plugin:event|emit");
    session.click("#verify", long).unwrap();
    let log = session.wait_for("#log-status", long, |t| !t.is_empty()).unwrap();
    let png2 = session.screenshot().unwrap();
    std::fs::write(artifacts_dir().join("app-session.png"), &png2).unwrap();
    session.close().unwrap();

    assert!(
        discovered.starts_with("6 device(s) found (2 in the inventory, 4 unknown), 5 missing"),
        "{discovered}"
    );
    let mut rows: Vec<(String, String)> = serde_json::from_value(listed["rows"].clone()).unwrap();
    rows.sort();
    let unknown = ("".to_string(), "1.4.0".to_string());
    let mut want = vec![unknown.clone(), unknown.clone(), unknown.clone(), unknown];
    // A DFU board cannot say what it runs.
    want.extend([("gateway-01".into(), "?".into()), ("pump-ctl-01".into(), "1.4.0".into())]);
    assert_eq!(rows, want, "{listed}");
    let mut missing: Vec<String> = serde_json::from_value(listed["missing"].clone()).unwrap();
    missing.sort();
    // The SWUpdate gateway answers only at its inventory address: discovery has no probe for it.
    assert_eq!(missing, [GATEWAY, "sensor-01", "sensor-02", "sensor-03", "sensor-04"], "{listed}");
    assert!(filtered.contains("SN-GATEWAY-01"), "{filtered}");
    assert_eq!(planned, "1.4.0 → 1.5.0");
    assert!(run_label.contains("Run session (6 of 7 devices)"), "{run_label}");
    for (id, r) in &results {
        match id.as_str() {
            "sensor-04" => assert!(r.starts_with("rolled back"), "{id}: {r}"),
            "sensor-02" => assert_eq!(r, "skipped: not chosen for this session"),
            _ => assert!(r.starts_with("patched"), "{id}: {r}"),
        }
    }
    assert_eq!(log, "visit log verifies");
    assert!(refused.contains("sensor-02") && refused.contains("sensor-04"), "{refused}");
    assert!(closed.contains("2 unpatched device"), "{closed}");
    assert!(alone.starts_with("patched"), "{alone}");
    assert_eq!(left_out, "skipped: not chosen for this session");
    assert!(synced.contains("rejected 0;"), "{synced}");
    assert_eq!(off, "automatic sync is off");

    // The demo works in a data directory of its own: its store, log, catalog, trust store and
    // inventory are under demo/, and nothing else appears in the technician's data directory.
    let entries: Vec<String> = std::fs::read_dir(data.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, vec!["demo".to_string()], "the demo wrote into the real data directory");
    // The gateway was patched by the real daemon: its `raw` handler wrote the image (256 KiB)
    // into the file standing for its flash, and the daemon's log shows the install succeeded.
    let gateway = data.path().join("demo/site/gateway/daemon");
    let flashed = std::fs::metadata(gateway.join("flash.bin")).map(|m| m.len()).unwrap_or(0);
    let daemon_log = std::fs::read_to_string(gateway.join("swupdate.log")).unwrap_or_default();
    assert_eq!(flashed, 256 * 1024, "the gateway's flash; daemon log:\n{daemon_log}");

    assert_eq!(forged_id["err"]["code"], "no_plan", "{forged_id}");
    for refused in [&app_version, &window_title, &emitted] {
        let err = refused["err"].as_str().unwrap_or_else(|| panic!("allowed: {refused}"));
        assert!(err.contains("not allowed"), "{err}");
    }
    assert!(forged_plan["ok"].is_null(), "a plan sent by the window ran: {forged_plan}");

    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    assert!(data_dir.contains(data.path().to_str().unwrap()), "{data_dir}");
    assert!(data_dir.contains("FIELDPATCH_DATA_DIR"), "{data_dir}");
    assert!(png.starts_with(b"\x89PNG"), "screenshot is not a PNG");
}

/// Without `--demo` the window runs in real mode on the technician's data directory and opens on
/// the settings: nothing set on a first run; a login keeps the token in the OS keyring and
/// remembers the server; a server the token would reach in the clear is refused.
#[test]
fn window_in_real_mode_opens_on_the_settings_and_logs_in() {
    let app = built_binary("fieldpatch-app");
    let (_xvfb, data, _driver, port) = display();
    let session = Session::start(&format!("http://127.0.0.1:{port}"), &app).unwrap();
    let long = Duration::from_secs(60);
    let mode = session.wait_for("#mode", long, |t| !t.is_empty()).unwrap();
    let setting = |label: &str, f: &dyn Fn(&str) -> bool| {
        session.wait_for(&format!("dd[data-setting='{label}']"), long, |t| f(t)).unwrap()
    };
    let token_before = setting("Sync token", &|t| !t.is_empty());
    let trust_before = setting("Trust store", &|t| !t.is_empty());
    let insecure = session
        .execute_async(
            "const done = arguments[arguments.length - 1];
             window.__TAURI_INTERNALS__.invoke('login', { server: 'http://inventory.example.com', token: 't' })
               .then((r) => done({ ok: r }), (e) => done({ err: e }));",
        )
        .unwrap();
    session.type_text("#server-url", "http://127.0.0.1:9").unwrap();
    session.type_text("#sync-token", "window-test-token").unwrap();
    session.click("#login", long).unwrap();
    let status = session.wait_for("#login-status", long, |t| t.starts_with("logged in")).unwrap();
    let server = setting("Inventory server", &|t| t.starts_with("http://"));
    let token_after = setting("Sync token", &|t| t.starts_with("stored"));
    let png = session.screenshot().unwrap();
    std::fs::write(artifacts_dir().join("app-settings.png"), &png).unwrap();
    session.close().unwrap();

    assert_eq!(mode, "Your inventory");
    assert_eq!(token_before, "none: log in below");
    assert!(trust_before.starts_with("none yet"), "{trust_before}");
    assert_eq!(insecure["err"]["code"], "insecure_server", "{insecure}");
    assert!(status.contains("OS keyring"), "{status}");
    assert_eq!(server, "http://127.0.0.1:9");
    assert!(token_after.starts_with("stored in the OS keyring"), "{token_after}");
    // Real mode works in the technician's data directory, never the demo's.
    let entries = std::fs::read_dir(data.path()).unwrap().count();
    assert!(entries > 0, "real mode opened nothing in the technician's data directory");
    assert!(!data.path().join("demo").exists(), "real mode started the demo");
}
