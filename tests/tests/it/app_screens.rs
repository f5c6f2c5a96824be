//! The window's Home, Visit log and export screens on the demo site, in the real window under
//! Xvfb at 1366x768, driven through WebDriver: Home says the embedded inventory is online, how
//! many events wait for sync (deterministically, with automatic sync off during a session), the
//! last sync and how long the trust store and catalog listing stay usable; turning sync back on
//! brings a report (accepted, pending, rejected) and empties the queue; the visit log of the
//! session's visit shows its events and a verifying chain; the audit export goes to a typed file
//! and through the native Save-as dialog (driven by xdotool's keyboard), and the offline verifier
//! passes each in the window and `fieldpatch_core::export::verify_file` again here. A session paused at once stops after the canary (whose upload shows its
//! rate and time left) and resumes to the end. Every control on each screen has an accessible name, Tab reaches the
//! screens' controls with a visible focus ring, and nothing overflows the width. Screenshots go
//! to the test's temporary directory and to `artifacts/`.

use super::app_window::display_with;
use fieldpatch_e2e::{artifacts_dir, built_binary, webdriver::Session, xvfb::Xvfb};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// WebDriver's key code for Tab.
const TAB: &str = "\u{E004}";

/// Controls on the current screen without an accessible name (label, aria-label, text, title),
/// and whether the page is wider than the window.
const A11Y_SCRIPT: &str = "const done = arguments[arguments.length - 1];
    const named = (el) => {
      if (el.getAttribute('aria-label') || el.getAttribute('title')) return true;
      if (el.labels && [...el.labels].some((l) => l.textContent.trim())) return true;
      return ['BUTTON', 'A'].includes(el.tagName) && el.textContent.trim() !== '';
    };
    const controls = [...document.querySelectorAll('button, input, select, textarea, a[href]')]
      .filter((el) => el.offsetParent !== null);
    done({
      controls: controls.length,
      unnamed: controls.filter((el) => !named(el)).map((el) => el.outerHTML.slice(0, 120)),
      unreachable: controls.filter((el) => el.tabIndex < 0).map((el) => el.outerHTML.slice(0, 120)),
      overflow: document.documentElement.scrollWidth > window.innerWidth,
      width: window.innerWidth,
      height: window.innerHeight,
    });";

/// What has the keyboard focus and how its outline is drawn.
const FOCUS_SCRIPT: &str = "const done = arguments[arguments.length - 1];
    const el = document.activeElement;
    const s = getComputedStyle(el);
    done({ id: el.id, tag: el.tagName, outline: s.outlineStyle, width: parseFloat(s.outlineWidth) });";

/// The first transfer rate a device row shows while the session runs.
fn first_rate(session: &Session, timeout: Duration) -> String {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let found = session
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 done([...document.querySelectorAll('#devices td.progress .rate')]
                   .map((r) => r.textContent.trim()).find((t) => t) ?? null);",
            )
            .unwrap();
        if let Some(t) = found.as_str() {
            return t.to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no device showed a transfer rate");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Real mode's first run opens on the settings: log in there to `url` with `token`.
pub(crate) fn log_in(session: &Session, url: &str, token: &str, timeout: Duration) {
    session.wait_for("dd[data-setting='Sync token']", timeout, |t| !t.is_empty()).unwrap();
    session.type_text("#server-url", url).unwrap();
    session.type_text("#sync-token", token).unwrap();
    session.click("#login", timeout).unwrap();
    session.wait_for("#login-status", timeout, |t| t.starts_with("logged in")).unwrap();
}

/// Put `path` in the export's file field, as typing it would.
fn set_export_path(session: &Session, path: &Path) {
    session
        .execute_async(&format!(
            "const done = arguments[arguments.length - 1];
             const input = document.querySelector('#export-path');
             input.value = {};
             input.dispatchEvent(new Event('input', {{ bubbles: true }}));
             done(true);",
            serde_json::to_string(path.to_str().unwrap()).unwrap()
        ))
        .unwrap();
}

fn save(dir: &Path, name: &str, png: &[u8]) {
    assert!(png.starts_with(b"\x89PNG"), "{name} is not a PNG");
    std::fs::write(dir.join(name), png).unwrap();
    std::fs::write(artifacts_dir().join(name), png).unwrap();
}

#[test]
fn home_visit_log_and_export_screens_work_on_the_demo_site_at_1366x768() {
    let app = built_binary("fieldpatch-app");
    let (xvfb, data, _driver, port) = display_with(Xvfb::start_with_screen("1366x768x24").unwrap());
    let shots = tempfile::tempdir().unwrap();
    let session =
        Session::start_with_args(&format!("http://127.0.0.1:{port}"), &app, &["--demo"]).unwrap();
    let long = Duration::from_secs(120);
    session.set_window_size(1366, 768).unwrap();

    // Home: the embedded inventory answers, the demo's first sync happened, the trust store does
    // not expire and the catalog listing is valid.
    session.wait_text("#home-heading", long).unwrap();
    let online = session.wait_for("#online", long, |t| !t.is_empty()).unwrap();
    session.wait_for("#nav-site", long, |t| !t.is_empty()).unwrap();
    let last_sync = session
        .wait_for("#last-sync", long, |t| !t.starts_with("never"))
        .unwrap_or_else(|e| panic!("the demo never synced: {e}"));
    let validity = session
        .execute_async(
            "const done = arguments[arguments.length - 1];
             done({
               states: Object.fromEntries([...document.querySelectorAll('dd[data-validity]')]
                 .map((d) => [d.dataset.validity, d.dataset.state])),
               banners: [...document.querySelectorAll('[data-banner]')]
                 .map((b) => [b.dataset.tone, b.textContent.trim()]),
             });",
        )
        .unwrap();
    let home_a11y = session.execute_async(A11Y_SCRIPT).unwrap();
    // Tab from the top of the page: the screens, then the home's controls, each with a ring.
    let mut focused: Vec<Value> = Vec::new();
    for _ in 0..6 {
        session.press_key(TAB).unwrap();
        focused.push(session.execute_async(FOCUS_SCRIPT).unwrap());
    }
    save(shots.path(), "app-home.png", &session.screenshot().unwrap());

    // A session with automatic sync off: its events wait on Home.
    session.click("#nav-site", long).unwrap();
    session.wait_for("#sync-status", long, |t| t.starts_with("synced: ")).unwrap();
    session.click("#auto-sync", long).unwrap();
    session.wait_for("#sync-status", long, |t| t.contains("off")).unwrap();
    session.wait_for("tr[data-device='sensor-01'] td.runs", long, |t| t == "1.4.0").unwrap();
    let site_a11y = session.execute_async(A11Y_SCRIPT).unwrap();
    session.click("#plan", long).unwrap();
    session.wait_for("tr[data-device='pump-ctl-01'] td.plan", long, |t| !t.is_empty()).unwrap();
    // Run, and pause at once: the device in flight (the canary) finishes, no other starts; its
    // upload shows a rate and the time left meanwhile. Resume finishes the session.
    session.click("#run", long).unwrap();
    session.click("#pause", long).unwrap();
    let rate = first_rate(&session, long);
    session.wait_for("#session-done", long, |t| t.contains("finished")).unwrap();
    let paused =
        session.wait_for("#session-log", long, |t| t.contains("session finished")).unwrap();
    session.click("#resume", long).unwrap();
    // sensor-04 fails its health check after the canary's wave: it was not reached before the
    // pause, and rolls back after the resume.
    let results = session
        .wait_for("tr[data-device='sensor-04'] td.result", long, |t| {
            ["patched", "rolled back", "failed"].iter().any(|end| t.starts_with(end))
        })
        .unwrap();
    session.wait_for("#session-done", long, |t| t.contains("finished")).unwrap();
    save(shots.path(), "app-devices-session.png", &session.screenshot().unwrap());
    session.click("#nav-home", long).unwrap();
    let pending = session.wait_for("#pending", long, |t| t.ends_with("event(s) to sync")).unwrap();

    // Automatic sync back on: the report names what the inventory accepted, and nothing waits.
    session.click("#nav-site", long).unwrap();
    session.click("#auto-sync", long).unwrap();
    session.click("#nav-home", long).unwrap();
    let report =
        session.wait_for("#sync-report-line", long, |t| !t.starts_with("accepted 0,")).unwrap();
    let pending_after = session.wait_for("#pending", long, |t| t.starts_with("none")).unwrap();
    save(shots.path(), "app-home-synced.png", &session.screenshot().unwrap());

    // The newest visit (the session's) in the visit log: its events and a verifying chain.
    session.click("#visits button[data-show-visit]", long).unwrap();
    let chain = session.wait_for("#chain-status", long, |t| !t.is_empty()).unwrap();
    let kinds = session
        .execute_async(
            "const done = arguments[arguments.length - 1];
             done([...document.querySelectorAll('#timeline tbody tr')]
               .map((tr) => [tr.dataset.kind, tr.dataset.trust]));",
        )
        .unwrap();
    let log_a11y = session.execute_async(A11Y_SCRIPT).unwrap();
    let suggested = session
        .execute_async(
            "const done = arguments[arguments.length - 1];
             done(document.querySelector('#export-path').value);",
        )
        .unwrap();

    // Export to a typed file in the test's own folder; the window shows the offline verifier's
    // verdict.
    let out = shots.path().join("exports").join("visit.tar");
    set_export_path(&session, &out);
    session.click("#export", long).unwrap();
    let exported =
        session.wait_for("#export-result, #export-error", long, |t| !t.is_empty()).unwrap();
    let verdict = session
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const r = document.querySelector('#export-result');
             done(r ? r.dataset.result : null);",
        )
        .unwrap();
    save(shots.path(), "app-visit-log.png", &session.screenshot().unwrap());

    // Save as… through the native GTK dialog: it opens in the folder of the path in the field
    // with its file name; the keyboard gives it another name and Enter saves there. A second
    // dialog cancelled with Escape changes nothing.
    let picked = shots.path().join("picked");
    std::fs::create_dir_all(&picked).unwrap();
    set_export_path(&session, &picked.join("suggested.tar"));
    session.click("#export-choose", long).unwrap();
    let dialog = xvfb.window_titled("Save the visit's audit export", long).unwrap();
    xvfb.xdotool(&["windowfocus", "--sync", &dialog]).unwrap();
    xvfb.xdotool(&["key", "--clearmodifiers", "ctrl+a"]).unwrap();
    xvfb.xdotool(&["type", "--delay", "30", "from-dialog.tar"]).unwrap();
    xvfb.xdotool(&["key", "Return"]).unwrap();
    let chosen_out = picked.join("from-dialog.tar");
    let through_dialog = session
        .wait_for("#export-result, #export-error", long, |t| t.contains("from-dialog.tar"))
        .unwrap_or_else(|e| panic!("the dialog's file was not exported: {e}"));
    let chosen_field = session
        .execute_async(
            "const done = arguments[arguments.length - 1];
             done(document.querySelector('#export-path').value);",
        )
        .unwrap();
    session.click("#export-choose", long).unwrap();
    let second = xvfb.window_titled("Save the visit's audit export", long).unwrap();
    xvfb.xdotool(&["windowfocus", "--sync", &second]).unwrap();
    xvfb.xdotool(&["key", "Escape"]).unwrap();
    let deadline = std::time::Instant::now() + long;
    while xvfb.window_titled("Save the visit's audit export", Duration::ZERO).is_ok() {
        assert!(std::time::Instant::now() < deadline, "Escape did not close the dialog");
        std::thread::sleep(Duration::from_millis(100));
    }
    let after_cancel = session
        .execute_async(
            "const done = arguments[arguments.length - 1];
             done([document.querySelector('#export-path').value,
                   document.querySelector('#export-result')?.textContent ?? null,
                   document.querySelector('#export-error')?.textContent ?? null]);",
        )
        .unwrap();
    session.close().unwrap();

    assert_eq!(online, "online");
    assert!(last_sync.starts_with("20"), "{last_sync}");
    assert_eq!(validity["states"]["trust_store"], "no_expiry", "{validity}");
    assert_eq!(validity["states"]["catalog_listing"], "valid", "{validity}");
    let banners = validity["banners"].as_array().unwrap();
    assert!(banners.iter().all(|b| b[0] != "error"), "{validity}");

    for (screen, a11y) in [("home", &home_a11y), ("devices", &site_a11y), ("visit log", &log_a11y)]
    {
        assert!(a11y["controls"].as_u64().unwrap() > 2, "{screen}: {a11y}");
        assert_eq!(a11y["unnamed"], serde_json::json!([]), "{screen}: controls without a name");
        assert_eq!(a11y["unreachable"], serde_json::json!([]), "{screen}: out of the Tab order");
        assert_eq!(a11y["overflow"], false, "{screen}: wider than the window: {a11y}");
    }
    assert!(home_a11y["width"].as_u64().unwrap() <= 1366, "{home_a11y}");
    let ids: Vec<&str> = focused.iter().map(|f| f["id"].as_str().unwrap_or("")).collect();
    for id in ["nav-home", "nav-site", "nav-log", "home-sync"] {
        assert!(ids.contains(&id), "Tab never reached #{id}: {focused:?}");
    }
    for f in &focused {
        assert!(
            f["outline"] != "none" && f["width"].as_f64().unwrap_or(0.0) >= 2.0,
            "focus is not visible on {f}"
        );
    }

    assert!(rate.contains("/s"), "{rate}");
    let pending_devices: u64 = paused
        .lines()
        .rfind(|l| l.starts_with("session finished"))
        .and_then(|l| l.split(", ").find_map(|p| p.strip_suffix(" pending")))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no pending count in {paused}"));
    assert!(pending_devices > 0, "the pause stopped nothing: {paused}");
    assert!(results.starts_with("rolled back"), "{results}");

    let waiting: u64 = pending.split_whitespace().next().unwrap().parse().unwrap();
    assert!(waiting > 0, "{pending}");
    assert!(report.contains("rejected 0"), "{report}");
    assert!(report.contains("pending 0"), "{report}");
    assert!(pending_after.starts_with("none"), "{pending_after}");

    assert!(chain.starts_with("chain verifies"), "{chain}");
    let kinds: Vec<(String, String)> = serde_json::from_value(kinds).unwrap();
    assert_eq!(kinds.first().map(|k| k.0.as_str()), Some("visit_opened"), "{kinds:?}");
    assert!(kinds.iter().any(|k| k.0 == "rolled_back"), "sensor-04 rolls back: {kinds:?}");
    assert!(kinds.iter().all(|k| k.1 == "verified"), "{kinds:?}");
    let suggested = suggested.as_str().unwrap();
    assert!(suggested.starts_with(data.path().join("demo").join("exports").to_str().unwrap()));
    assert!(suggested.ends_with(".tar"), "{suggested}");

    assert_eq!(verdict, "pass", "{exported}");
    assert!(exported.contains("verifies offline"), "{exported}");
    assert!(exported.contains("countersigned by the inventory"), "{exported}");
    // The archive on disk verifies offline here too, with the same events.
    let v = fieldpatch_core::export::verify_file(&out, None).unwrap();
    assert!(exported.contains(&format!("{} signed event(s)", v.events)), "{exported}");
    assert!(v.checkpoint_server_key.is_some());

    assert!(through_dialog.contains("verifies offline"), "{through_dialog}");
    assert_eq!(chosen_field, chosen_out.to_str().unwrap());
    let again = fieldpatch_core::export::verify_file(&chosen_out, None).unwrap();
    assert_eq!(again.events, v.events);
    assert!(!picked.join("suggested.tar").exists(), "the dialog's own name was not used");
    assert_eq!(
        after_cancel[0],
        chosen_out.to_str().unwrap(),
        "a cancelled dialog changed the file"
    );
    assert!(after_cancel[1].as_str().unwrap_or("").contains("from-dialog.tar"), "{after_cancel}");
    assert!(after_cancel[2].is_null(), "a cancelled dialog is not an error: {after_cancel}");
}

/// Real mode against a `fieldpatch-server` process: after the login, Home says the inventory is
/// online, and automatic sync (on from the login) brings the work order assigned to the
/// technician among the visits to do without being asked; "Sync now" runs one sync with the
/// token from the OS keyring and shows its report (what was accepted, pending and rejected, and
/// what the pull brought).
#[test]
fn real_mode_home_syncs_now_and_lists_the_work_orders() {
    use super::sync_cli::{Laptop, admin, serve};
    let app = built_binary("fieldpatch-app");
    let (_xvfb, data, _driver, port) =
        display_with(Xvfb::start_with_screen("1366x768x24").unwrap());
    let shots = tempfile::tempdir().unwrap();
    // The window's technician key, as the inventory team registers it (same data directory and
    // keyring service as the window).
    let laptop =
        Laptop { data: data.path().to_path_buf(), service: format!("fieldpatch-window-{port}") };
    let key: Value = serde_json::from_str(&laptop.ok(&["--json", "sync", "key"])).unwrap();
    let server_data = shots.path().join("server");
    let public_key = key["public_key"].as_str().unwrap();
    let out = admin(
        &server_data,
        &["create-technician", "--id", "alice", "--name", "Alice", "--public-key", public_key],
        None,
    );
    let token = out.lines().find_map(|l| l.strip_prefix("token: ")).unwrap().to_string();
    let file = |name: &str, text: &str| {
        let p = shots.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let sites = file("sites.csv", "id,name,address\nsite-a,Plant A,\n");
    let devices = file(
        "devices.json",
        r#"[{"id":"d1","site_id":"site-a","vendor":"Lab","model":"sensor","serial_number":"SN1"},
            {"id":"d2","site_id":"site-a","vendor":"Lab","model":"sensor","serial_number":"SN2"}]"#,
    );
    let orders = file(
        "orders.json",
        r#"[{"id":"wo-1","site_id":"site-a","title":"Patch the sensors","planned_for":"2026-12-01","devices":["d1","d2"]}]"#,
    );
    admin(&server_data, &["import-sites", &sites], None);
    admin(&server_data, &["import-devices", &devices], None);
    admin(&server_data, &["import-work-orders", &orders], None);
    admin(&server_data, &["assign", "--technician", "alice", "--site", "site-a"], None);
    let (_server, url) = serve(&server_data);

    let session = Session::start(&format!("http://127.0.0.1:{port}"), &app).unwrap();
    let long = Duration::from_secs(60);
    session.set_window_size(1366, 768).unwrap();
    log_in(&session, &url, &token, long);

    session.click("#nav-home", long).unwrap();
    // Home as it is after the login (it names the server logged in to).
    session.wait_for("#home-status", long, |t| t.contains(url.as_str())).unwrap();
    let online = session.wait_text("#online", long).unwrap();
    let order = session.wait_for("tr[data-work-order='wo-1']", long, |t| !t.is_empty()).unwrap();
    session.click("#home-sync", long).unwrap();
    let report = session.wait_for("#sync-report-line", long, |t| !t.is_empty()).unwrap();
    let after = session.wait_for("#last-sync", long, |t| !t.starts_with("never")).unwrap();
    let pending = session.wait_text("#pending", long).unwrap();
    // Automatic sync reports on the same line; the last word is a finished sync's.
    let status =
        session.wait_for("#home-sync-status", long, |t| t.starts_with("synced: ")).unwrap();
    // No trust store was published: the banner says so, as an alert.
    let banner = session.wait_text("[data-banner='trust_store'][role='alert']", long).unwrap();
    let a11y = session.execute_async(A11Y_SCRIPT).unwrap();
    save(shots.path(), "app-real-home.png", &session.screenshot().unwrap());
    session.close().unwrap();

    assert_eq!(online, "online");
    assert!(report.contains("rejected 0"), "{report}");
    assert!(report.contains("pending 0"), "{report}");
    assert!(report.contains("pulled 2 device(s), 1 work order(s)"), "{report}");
    assert!(status.starts_with("synced: "), "{status}");
    assert!(order.contains("Patch the sensors") && order.contains("d1, d2"), "{order}");
    assert!(after.starts_with("20"), "{after}");
    assert!(pending.starts_with("none"), "{pending}");
    assert!(banner.starts_with("Trust store: no trust store yet"), "{banner}");
    assert_eq!(a11y["unnamed"], serde_json::json!([]), "{a11y}");
    assert_eq!(a11y["overflow"], false, "{a11y}");
}
