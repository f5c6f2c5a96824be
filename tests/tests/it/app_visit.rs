//! A technician's whole day in the window, in real mode, under Xvfb through WebDriver: the app
//! (no `--demo`) against a `fieldpatch-server` process that holds a site, its devices, a work
//! order, the signed catalog and the trust store, and lab devices on a pty and on UDP (a pump
//! controller, and a sensor that fails its health check; the site's USB gateway is not reachable
//! from this laptop). The window logs in (automatic sync then pulls the work order, the catalog
//! and the trust store), is told where discovery may look, keeps the gateway's password in the
//! OS keyring from the credentials screen (and nowhere on disk), opens a visit for the work
//! order, discovers (the gateway is listed as missing), plans, runs a session (the failing sensor
//! rolls back), is refused the close-out until every unpatched or missing device has a reason,
//! closes out and syncs. The server's reports then show the result. Screenshots of each screen
//! go to `artifacts/`.

use super::app_screens::log_in;
use super::app_window::display_with;
use super::sync_cli::{Laptop, admin, serve};
use fieldpatch_core::plan::DeviceAddress;
use fieldpatch_e2e::{artifacts_dir, built_binary, webdriver::Session, xvfb::Xvfb};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

fn shot(session: &Session, name: &str) {
    let png = session.screenshot().unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name} is not a PNG");
    std::fs::write(artifacts_dir().join(name), png).unwrap();
}

/// Replace the value of the input or textarea `css` and tell the page it changed.
fn set_value(session: &Session, css: &str, value: &str) {
    session
        .execute_async(&format!(
            "const done = arguments[arguments.length - 1];
             const el = document.querySelector({});
             el.value = {};
             el.dispatchEvent(new Event('input', {{ bubbles: true }}));
             done(true);",
            serde_json::to_string(css).unwrap(),
            serde_json::to_string(value).unwrap()
        ))
        .unwrap();
}

/// Publish the demo lab's inventory to a server's data directory through its admin CLI: the
/// site, its devices, one work order for all of them, the technician (with the laptop's key),
/// the trust store, every bundle and the signed listing. Returns the technician's token.
fn publish(
    server: &Path,
    work: &Path,
    demo: &fieldpatch_demo::Demo,
    key: &str,
) -> (String, String) {
    let trust = fieldpatch_core::bundle::TrustStore::load(&demo.trust_path).unwrap();
    let policy = fieldpatch_core::bundle::VerifyPolicy::now();
    let catalog =
        fieldpatch_core::catalog::Catalog::load_dir(&demo.catalog_dir, &trust, &policy).unwrap();
    assert!(catalog.refused.is_empty(), "{:?}", catalog.refused);
    let mut content = demo.inventory_content(&catalog).unwrap();
    // The site as this inventory knows it: the pump controller, one sensor and the USB gateway.
    // (Lab sensors report no serial number: one sensor of its model is what discovery can match.)
    content.devices.retain(|d| SITE.contains(&d.id.as_str()));
    let file = |name: &str, bytes: &[u8]| {
        let p = work.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_string()
    };
    let out = admin(
        server,
        &["create-technician", "--id", "alice", "--name", "Alice", "--public-key", key],
        None,
    );
    let token = out.lines().find_map(|l| l.strip_prefix("token: ")).unwrap().to_string();
    let site = &content.site;
    admin(
        server,
        &[
            "import-sites",
            &file("sites.csv", format!("id,name,address\n{},{},\n", site.id, site.name).as_bytes()),
        ],
        None,
    );
    admin(
        server,
        &["import-devices", &file("devices.json", &serde_json::to_vec(&content.devices).unwrap())],
        None,
    );
    let ids: Vec<&str> = content.devices.iter().map(|d| d.id.as_str()).collect();
    let orders = serde_json::json!([{
        "id": "wo-7", "site_id": site.id, "title": "Patch the pump room",
        "planned_for": "2026-12-06", "devices": ids,
    }]);
    admin(
        server,
        &["import-work-orders", &file("orders.json", &serde_json::to_vec(&orders).unwrap())],
        None,
    );
    admin(server, &["assign", "--technician", "alice", "--site", &site.id], None);
    admin(server, &["trust-store", demo.trust_path.to_str().unwrap()], None);
    for (id, version, manifest, bytes) in &content.bundles {
        let manifest = file(&format!("{id}.manifest.json"), &serde_json::to_vec(manifest).unwrap());
        let bundle = file(&format!("{id}.fpb"), bytes);
        admin(
            server,
            &[
                "publish",
                "--bundle-id",
                id,
                "--version",
                version,
                "--manifest",
                &manifest,
                "--bundle",
                &bundle,
            ],
            None,
        );
    }
    if let Some(listing) = &content.catalog_listing {
        admin(
            server,
            &["publish-listing", &file("listing.json", &serde_json::to_vec(listing).unwrap())],
            None,
        );
    }
    (token, site.id.clone())
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

/// The inventory's devices at the site (and the work order's).
const SITE: [&str; 3] = ["pump-ctl-01", "sensor-04", "gateway-01"];

#[test]
fn a_real_site_visit_from_login_to_sync_in_the_window() {
    let app = built_binary("fieldpatch-app");
    let (_xvfb, data, _driver, port) =
        display_with(Xvfb::start_with_screen("1366x768x24").unwrap());
    let work = tempfile::tempdir().unwrap();
    let laptop =
        Laptop { data: data.path().to_path_buf(), service: format!("fieldpatch-window-{port}") };
    let key: Value = serde_json::from_str(&laptop.ok(&["--json", "sync", "key"])).unwrap();

    // The lab devices live as long as this runtime.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let lab_dir = work.path().join("lab");
    std::fs::create_dir_all(&lab_dir).unwrap();
    let demo = rt.block_on(async { fieldpatch_demo::start(&lab_dir) }).unwrap();
    // Discovery may look at the console's pty and at sensor-04's address only.
    let (mut ports, mut networks) = (Vec::new(), Vec::new());
    for d in &demo.devices {
        match &d.address {
            DeviceAddress::Serial { port, .. } => ports.push(port.clone()),
            DeviceAddress::Udp { addr } if d.id == "sensor-04" => networks.push(addr.clone()),
            _ => {}
        }
    }
    assert_eq!((ports.len(), networks.len()), (1, 1), "the lab: a console and sensor-04");
    let server_data = work.path().join("server");
    let (token, site) =
        publish(&server_data, work.path(), &demo, key["public_key"].as_str().unwrap());
    let (server, url) = serve(&server_data);

    let session = Session::start(&format!("http://127.0.0.1:{port}"), &app).unwrap();
    let long = Duration::from_secs(120);
    session.set_window_size(1366, 768).unwrap();

    // Settings: log in, and allow discovery only on the lab's pty and the sensors' addresses.
    log_in(&session, &url, &token, long);
    session.wait_for("#ds-deadline", long, |_| true).unwrap();
    session.click("#ds-usb-serial", long).unwrap();
    session.click("#ds-usb-dfu", long).unwrap();
    set_value(&session, "#ds-ports", &ports.join("\n"));
    set_value(&session, "#ds-networks", &networks.join("\n"));
    session.click("#ds-save", long).unwrap();
    let saved = session.wait_for("#ds-status", long, |t| !t.is_empty()).unwrap();
    // The gateway's password goes to the OS keyring from the credentials screen.
    let secret = format!("gw-secret-{port}-{}", std::process::id());
    session.type_text("#cred-device", "gateway-01").unwrap();
    session.type_text("#cred-secret", &secret).unwrap();
    session.click("#cred-save", long).unwrap();
    let credential =
        session.wait_text("tr[data-credential='device/gateway-01/password']", long).unwrap();
    let secret_field = session
        .execute_async(
            "const done = arguments[arguments.length - 1];
             done(document.querySelector('#cred-secret').value);",
        )
        .unwrap();
    shot(&session, "app-real-settings.png");

    // Home: automatic sync brings the work order by itself; open a visit for it.
    session.click("#nav-home", long).unwrap();
    let order = session.wait_for("tr[data-work-order='wo-7']", long, |t| !t.is_empty()).unwrap();
    shot(&session, "app-real-home-work-order.png");
    session.click("button[data-open-work-order='wo-7']", long).unwrap();
    let visit_for = session.wait_for("#visit-for", long, |t| t.contains("wo-7")).unwrap();

    // Devices: discovery streams the lab devices in; the USB gateway is missing.
    session.click("#discover", long).unwrap();
    let missing = session.wait_text("#missing li[data-missing='gateway-01']", long).unwrap();
    let discovered = session
        .execute_async(
            "const done = arguments[arguments.length - 1];
             done([...document.querySelectorAll('#discovered tbody tr')]
               .map((tr) => tr.dataset.inventory).sort());",
        )
        .unwrap();
    // The devices discovery matched are identified on the bench: they run 1.4.0.
    session.wait_for("tr[data-device='sensor-04'] td.runs", long, |t| t == "1.4.0").unwrap();
    session.click("#plan", long).unwrap();
    session.wait_for("tr[data-device='pump-ctl-01'] td.plan", long, |t| !t.is_empty()).unwrap();
    shot(&session, "app-real-devices-plan.png");

    // The session: the canary, then the rest; sensor-04 fails its health check and rolls back.
    session.click("#run", long).unwrap();
    let ends = |t: &str| ["patched", "rolled back", "failed"].iter().any(|e| t.starts_with(e));
    let sensor4 = session.wait_for("tr[data-device='sensor-04'] td.result", long, ends).unwrap();
    session.wait_for("#session-done", long, |t| t.contains("finished")).unwrap();
    let pump = session.wait_for("tr[data-device='pump-ctl-01'] td.result", long, ends).unwrap();
    shot(&session, "app-real-session.png");

    // Close-out: refused while a reason is missing; then every unpatched or missing device has
    // one.
    let asked = session
        .execute_async(
            "const done = arguments[arguments.length - 1];
             done([...document.querySelectorAll('#close-out input[data-reason]')]
               .map((i) => i.dataset.reason).sort());",
        )
        .unwrap();
    set_value(
        &session,
        "input[data-reason='sensor-04']",
        "rolled back: health check failed, vendor ticket 4711",
    );
    session.click("#close-out-btn", long).unwrap();
    let highlighted = session.wait_text("#close-out input[aria-invalid='true']", long).map(|_| ());
    let invalid = session
        .execute_async(
            "const done = arguments[arguments.length - 1];
             done([...document.querySelectorAll('#close-out input[aria-invalid=\"true\"]')]
               .map((i) => i.dataset.reason));",
        )
        .unwrap();
    set_value(&session, "input[data-reason='gateway-01']", "not on site: removed for repair");
    session.click("#close-out-btn", long).unwrap();
    let closed = session.wait_for("#close-out-status", long, |t| t.contains("closed out")).unwrap();
    shot(&session, "app-real-close-out.png");

    // Sync: nothing waits afterwards.
    session.click("#nav-home", long).unwrap();
    session.click("#home-sync", long).unwrap();
    let pending = session.wait_for("#pending", long, |t| t.starts_with("none")).unwrap();
    session.click("#visits button[data-show-visit]", long).unwrap();
    let chain = session.wait_for("#chain-status", long, |t| !t.is_empty()).unwrap();
    let visit = session
        .execute_async(
            "const done = arguments[arguments.length - 1];
             done([...document.querySelectorAll('#timeline tbody tr')].map((tr) => tr.dataset.kind));",
        )
        .unwrap();
    shot(&session, "app-real-visit-log.png");
    session.close().unwrap();

    // What the inventory now says.
    let get = |path: &str| -> Value {
        rt.block_on(async {
            reqwest::Client::new()
                .get(format!("{url}{path}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .error_for_status()
                .unwrap()
                .json()
                .await
                .unwrap()
        })
    };
    let not_patched = get("/v1/reports/planned-not-patched");
    let pump_history = get("/v1/devices/pump-ctl-01/history");

    assert!(saved.starts_with("saved"), "{saved}");
    assert!(credential.contains("device/gateway-01/password"), "{credential}");
    assert!(!credential.contains(&secret), "{credential}");
    assert_eq!(secret_field, "", "the secret stays in the form after it was sent");
    // The keyring has it; no file of the app's data directory (store, logs) does.
    let kept = laptop.ok(&["credentials", "get", "device/gateway-01/password", "--reveal"]);
    assert_eq!(kept.trim(), secret);
    for entry in walk(data.path()) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the secret is on disk in {}",
            entry.display()
        );
    }
    assert!(order.contains("Patch the pump room"), "{order}");
    assert!(visit_for.contains("work order wo-7"), "{visit_for}");
    assert_eq!(missing, "gateway-01");
    let discovered: Vec<String> = serde_json::from_value(discovered).unwrap();
    assert_eq!(discovered, ["pump-ctl-01", "sensor-04"], "{discovered:?}");
    assert!(sensor4.starts_with("rolled back"), "{sensor4}");
    assert!(pump.starts_with("patched"), "{pump}");
    assert_eq!(asked, serde_json::json!(["gateway-01", "sensor-04"]), "{asked}");
    assert!(highlighted.is_ok());
    assert_eq!(invalid, serde_json::json!(["gateway-01"]), "{invalid}");
    assert!(closed.contains("2 unpatched device(s)"), "{closed}");
    assert!(pending.starts_with("none"), "{pending}");
    assert!(chain.starts_with("chain verifies"), "{chain}");
    let kinds: Vec<String> = serde_json::from_value(visit).unwrap();
    assert_eq!(kinds.first().map(String::as_str), Some("visit_opened"), "{kinds:?}");
    assert!(kinds.iter().any(|k| k == "rolled_back"), "{kinds:?}");
    assert!(kinds.iter().filter(|k| *k == "device_not_patched").count() >= 2, "{kinds:?}");
    // The inventory: the work order's gateway and sensor-04 are planned but not patched, each
    // with the technician's reason; the pump controller's history has its patch.
    let rows = not_patched.as_array().unwrap();
    let reason = |id: &str| {
        rows.iter()
            .find(|r| r["device"]["id"] == id)
            .map(|r| r["device"]["not_patched_reason"].as_str().unwrap_or("").to_string())
    };
    assert!(
        reason("gateway-01").is_some_and(|r| r.contains("removed for repair")),
        "{not_patched}"
    );
    assert!(reason("sensor-04").is_some_and(|r| r.contains("vendor ticket 4711")), "{not_patched}");
    assert!(reason("pump-ctl-01").is_none(), "{not_patched}");
    let history = pump_history.to_string();
    assert!(history.contains("1.5.0"), "the pump controller's patch is in its history: {history}");

    // The inventory team's export of the site verifies offline, and carries the trust store the
    // laptop pinned (byte for byte) and the server's verdicts on the bundles the visit flashed.
    drop(server);
    let exports = work.path().join("exports");
    admin(&server_data, &["export", "--site", &site, "--out", exports.to_str().unwrap()], None);
    let server_key = admin(&server_data, &["server-key"], None).trim().to_string();
    let pinned = std::fs::read(data.path().join("trust.json")).unwrap();
    let pinned_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&pinned));
    let mut with_verdicts = 0;
    for file in std::fs::read_dir(&exports).unwrap() {
        let file = file.unwrap().path();
        let out = laptop.ok(&[
            "--json",
            "audit",
            "verify",
            file.to_str().unwrap(),
            "--server-key",
            &server_key,
        ]);
        let verified: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(verified["trust_store_sha256"], pinned_sha.as_str(), "{verified}");
        let bytes = std::fs::read(&file).unwrap();
        let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        if has(b"bundles/") && has(b".verdict.json") && has(b".signatures.json") {
            with_verdicts += 1;
        }
    }
    assert!(with_verdicts >= 1, "no server export carries a bundle verdict");
    drop(demo);
}
