//! `fieldpatch sync` end to end: the real `fieldpatch-server` binary on a loopback port with a
//! SQLite data dir, set up with its admin CLI; the laptop is the real `fieldpatch` binary with its
//! own data dir and the real Secret Service (run inside a D-Bus session with gnome-keyring
//! unlocked, as scripts/test does).
//!
//! Notes go up exactly once (a second sync pushes nothing), the pulled catalog and trust store
//! land where `fieldpatch plan` reads them, device credentials arrive in the keyring and leave it
//! when the site is unassigned, and a tampered event is reported as rejected with a non-zero exit.

use fieldpatch_core::model::Version;
use fieldpatch_core::plan::DeviceAddress;
use fieldpatch_e2e::kit::{BundleSpec, Kit};
use fieldpatch_e2e::{built_binary, free_port};
use fieldpatch_testkit::site::record;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn admin(data: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(built_binary("fieldpatch-server"))
        .arg("--data-dir")
        .arg(data)
        .arg("admin")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "admin {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

pub(crate) fn serve(data: &Path) -> (Server, String) {
    serve_with(data, &[])
}

/// [`serve`] with more `serve` flags (`--tls-cert`, ...).
pub(crate) fn serve_with(data: &Path, extra: &[&str]) -> (Server, String) {
    let mut child = Command::new(built_binary("fieldpatch-server"))
        .arg("--data-dir")
        .arg(data)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut line = String::new();
    while !line.starts_with("listening on ") {
        line.clear();
        assert!(Instant::now() < deadline, "the server did not start");
        assert!(out.read_line(&mut line).unwrap() > 0, "the server exited before listening");
    }
    (server, line.trim().trim_start_matches("listening on ").to_string())
}

/// The technician's laptop: the `fieldpatch` binary with its own data dir and keyring service.
pub(crate) struct Laptop {
    pub(crate) data: PathBuf,
    pub(crate) service: String,
}

impl Laptop {
    pub(crate) fn run(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(built_binary("fieldpatch"))
            .args(args)
            .current_dir(&self.data)
            .env("FIELDPATCH_DATA_DIR", &self.data)
            .env("FIELDPATCH_KEYRING", "secret-service")
            .env("FIELDPATCH_KEYRING_SERVICE", &self.service)
            .env_remove("FIELDPATCH_SERVER")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).unwrap();
        drop(input);
        child.wait_with_output().unwrap()
    }

    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args, "");
        assert!(
            out.status.success(),
            "fieldpatch {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// A laptop with its own data directory (under `dir`) and keyring service.
pub(crate) fn new_laptop(dir: &Path) -> Laptop {
    let laptop = Laptop {
        data: dir.join("laptop"),
        service: format!("fieldpatch-e2e-{}", uuid::Uuid::now_v7().simple()),
    };
    std::fs::create_dir_all(&laptop.data).unwrap();
    laptop
}

/// Register the laptop's technician key with the server (in `server_data`) as technician `id`;
/// returns the first token.
pub(crate) fn enrol(laptop: &Laptop, server_data: &Path, id: &str) -> String {
    let key: serde_json::Value =
        serde_json::from_str(&laptop.ok(&["--json", "sync", "key"])).unwrap();
    let out = admin(
        server_data,
        &[
            "create-technician",
            "--id",
            id,
            "--name",
            id,
            "--public-key",
            key["public_key"].as_str().unwrap(),
        ],
        None,
    );
    out.lines().find_map(|l| l.strip_prefix("token: ")).unwrap().to_string()
}

async fn server_event_count(db: &Path, log_id: &str) -> (i64, i64) {
    let url = format!("sqlite://{}?mode=ro", db.display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let row: (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT id) FROM events WHERE log_id = ?")
            .bind(log_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    row
}

#[tokio::test]
async fn sync_pushes_notes_once_and_pulls_a_catalog_plan_can_use() {
    let tmp = tempfile::tempdir().unwrap();
    let server_data = tmp.path().join("server");
    let laptop = Laptop {
        data: tmp.path().join("laptop"),
        service: format!("fieldpatch-e2e-{}", uuid::Uuid::now_v7().simple()),
    };
    std::fs::create_dir_all(&laptop.data).unwrap();

    // The inventory team registers the technician with the laptop's key.
    let public_key: serde_json::Value =
        serde_json::from_str(&laptop.ok(&["--json", "sync", "key"])).unwrap();
    let public_key = public_key["public_key"].as_str().unwrap().to_string();
    assert_eq!(public_key.len(), 64);
    let out = admin(
        &server_data,
        &["create-technician", "--id", "alice", "--name", "Alice", "--public-key", &public_key],
        None,
    );
    let token = out.lines().find_map(|l| l.strip_prefix("token: ")).unwrap().to_string();

    let file = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let sites = file("sites.csv", "id,name,address\nsite-a,Plant A,\nsite-b,Plant B,\n");
    let devices = file(
        "devices.json",
        r#"[{"id":"d1","site_id":"site-a","vendor":"Lab","model":"sensor","serial_number":"SN1","approved_version":"2.0.0","current_firmware":"1.0.0"},
            {"id":"d2","site_id":"site-a","vendor":"Lab","model":"sensor","serial_number":"SN2","approved_version":"2.0.0","current_firmware":"1.0.0"},
            {"id":"d3","site_id":"site-b","vendor":"Lab","model":"sensor","serial_number":"SN3"}]"#,
    );
    let orders = file(
        "orders.json",
        r#"[{"id":"wo-1","site_id":"site-a","title":"Patch the sensors","planned_for":"2026-12-01","devices":["d1","d2"]}]"#,
    );
    admin(&server_data, &["import-sites", &sites], None);
    admin(&server_data, &["import-devices", &devices], None);
    admin(&server_data, &["import-work-orders", &orders], None);
    admin(&server_data, &["assign", "--technician", "alice", "--site", "site-a"], None);
    admin(
        &server_data,
        &["set-credential", "--device", "d1", "--kind", "password"],
        Some("pw-d1\n"),
    );

    // A release engineer's signed bundle and trust store, published to the catalog.
    let kit_dir = tmp.path().join("kit");
    std::fs::create_dir_all(&kit_dir).unwrap();
    let kit = Kit::new(&kit_dir);
    let payload: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    let bundle = kit.bundle(&BundleSpec {
        id: "lab-sensor-2.0.0",
        vendor: "Lab",
        model: "sensor",
        applies: ("1.0.0", "1.9.9"),
        installs: "2.0.0",
        cvss: "8.1",
        format: "raw",
        payload: &payload,
    });
    let manifest = kit_dir.join("lab-sensor-2.0.0.tpl.json");
    admin(
        &server_data,
        &[
            "publish",
            "--bundle-id",
            "lab-sensor-2.0.0",
            "--version",
            "1",
            "--manifest",
            manifest.to_str().unwrap(),
            "--bundle",
            bundle.to_str().unwrap(),
        ],
        None,
    );
    admin(&server_data, &["trust-store", kit.trust.to_str().unwrap()], None);

    let (server, url) = serve(&server_data);

    // Without a token, sync says what to do.
    let out = laptop.run(&["sync", "--server", &url], "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("fieldpatch sync login"));

    let out = laptop.run(&["sync", "login", "--server", &url], &format!("{token}\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&token), "the token is never printed");

    for i in 0..3 {
        laptop.ok(&["log", "note", &format!("site walk {i}")]);
    }
    let shown: serde_json::Value =
        serde_json::from_str(&laptop.ok(&["--json", "log", "show"])).unwrap();
    let log_id = shown[0]["log_id"].as_str().unwrap().to_string();

    // First sync: the server URL was remembered by `sync login`. The log's log_started and the
    // three notes go up.
    let text = laptop.ok(&["sync"]);
    assert!(text.contains("pushed 4 events"), "{text}");
    assert!(text.contains("nothing pending"), "{text}");
    assert!(text.contains("pulled 1 sites, 2 devices, 1 work orders, 1 catalog entries"), "{text}");
    assert!(!text.contains("not usable"), "the published bundle verifies: {text}");
    let db = server_data.join("inventory.db");
    assert_eq!(server_event_count(&db, &log_id).await, (4, 4));

    // Second sync: nothing new goes up, nothing is stored twice.
    let report: serde_json::Value = serde_json::from_str(&laptop.ok(&["--json", "sync"])).unwrap();
    assert_eq!(report["pushed"], 0, "{report}");
    assert_eq!(report["bundles_downloaded"], 0, "{report}");
    assert_eq!(server_event_count(&db, &log_id).await, (4, 4));

    // The catalog and trust store are on disk, byte for byte as published.
    let catalog = laptop.data.join("catalog");
    let pulled: Vec<PathBuf> =
        std::fs::read_dir(&catalog).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(pulled.len(), 1, "{pulled:?}");
    assert_eq!(std::fs::read(&pulled[0]).unwrap(), std::fs::read(&bundle).unwrap());
    let trust = laptop.data.join("trust.json");
    assert!(trust.exists());

    // The credential of d1 is in the keyring (never in the store file).
    let secret = laptop.ok(&["credentials", "get", "device/d1/password", "--reveal"]);
    assert_eq!(secret.trim(), "pw-d1");
    let store_bytes = std::fs::read(laptop.data.join("fieldpatch.db")).unwrap();
    assert!(!store_bytes.windows(5).any(|w| w == b"pw-d1"));

    // `fieldpatch plan` uses what sync pulled. The device does not answer (a closed port), so
    // the inventory's record stands in for its identity.
    let mut record = record(
        "d1",
        "Lab",
        "sensor",
        DeviceAddress::Udp { addr: format!("127.0.0.1:{}", free_port()) },
    );
    record.identity.serial_number = Some("SN1".into());
    record.identity.firmware_version = Some(Version::new(1, 0, 0, 0));
    std::fs::write(laptop.data.join("plan-devices.json"), serde_json::to_vec(&[record]).unwrap())
        .unwrap();
    let plan = laptop.ok(&[
        "plan",
        "--devices",
        "plan-devices.json",
        "--catalog",
        catalog.to_str().unwrap(),
        "--trust",
        trust.to_str().unwrap(),
        "--identify-timeout",
        "1",
    ]);
    assert!(plan.contains("patch: 1.0.0 -> 2.0.0 (lab-sensor-2.0.0)"), "{plan}");

    // Or straight from the synced work order: its devices come from the store, the technician
    // gives the addresses found on site; a device without one is named, not dropped.
    let addresses = serde_json::json!({
        "d1": {"transport": "udp", "addr": format!("127.0.0.1:{}", free_port())}
    });
    std::fs::write(laptop.data.join("addresses.json"), addresses.to_string()).unwrap();
    let out = laptop.run(
        &[
            "plan",
            "--work-order",
            "wo-1",
            "--addresses",
            "addresses.json",
            "--catalog",
            catalog.to_str().unwrap(),
            "--trust",
            trust.to_str().unwrap(),
            "--identify-timeout",
            "1",
        ],
        "",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("d1") && stdout.contains("patch: 1.0.0 -> 2.0.0"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("d2: not found on site"));

    // The site is unassigned: the next sync removes its device credential and inventory.
    admin(&server_data, &["unassign", "--technician", "alice", "--site", "site-a"], None);
    let text = laptop.ok(&["sync"]);
    assert!(text.contains("pulled 0 sites, 0 devices, 0 work orders"), "{text}");
    let out = laptop.run(&["credentials", "get", "device/d1/password"], "");
    assert!(!out.status.success(), "the revoked credential is gone");

    // A tampered event: reported as rejected with its reason, and the exit code says so.
    laptop.ok(&["log", "note", "original text"]);
    let store = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        laptop.data.join("fieldpatch.db").display()
    ))
    .await
    .unwrap();
    sqlx::query(
        "UPDATE events SET body = replace(body, 'original text', 'edited text') WHERE seq = 5",
    )
    .execute(&store)
    .await
    .unwrap();
    store.close().await;
    let out = laptop.run(&["sync"], "");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("1 rejected"), "{text}");
    assert!(text.contains("seq 5 [bad_signature]: signature does not match the content"), "{text}");
    assert!(text.contains("1 events pending"), "{text}");
    assert_eq!(server_event_count(&db, &log_id).await, (4, 4));

    drop(server);
    // Clean the test's keyring entries.
    for name in ["sync-token", "technician-key"] {
        let _ = laptop.run(&["credentials", "delete", name], "");
    }
}

/// Lines of a child's stdout, read on a thread so waits can time out.
fn lines_of(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let out = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for(rx: &std::sync::mpsc::Receiver<String>, what: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let hit = line.contains(what);
                seen.push(line);
                if hit {
                    return;
                }
            }
            Err(e) => panic!("no line containing {what:?} ({e}); saw {seen:#?}"),
        }
    }
}

#[tokio::test]
async fn sync_watch_syncs_by_itself_once_the_server_comes_up() {
    let tmp = tempfile::tempdir().unwrap();
    let server_data = tmp.path().join("server");
    let laptop = new_laptop(tmp.path());
    let token = enrol(&laptop, &server_data, "bob");

    // The laptop knows the server's address, but the server is not up yet.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let out = laptop.run(&["sync", "login", "--server", &url], &token);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    laptop.ok(&["log", "note", "written offline"]);

    let mut watch = Command::new(built_binary("fieldpatch"))
        .args(["sync", "--watch", "--interval", "3600"])
        .current_dir(&laptop.data)
        .env("FIELDPATCH_DATA_DIR", &laptop.data)
        .env("FIELDPATCH_KEYRING", "secret-service")
        .env("FIELDPATCH_KEYRING_SERVICE", &laptop.service)
        .env_remove("FIELDPATCH_SERVER")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut watch);
    let mut seen = Vec::new();
    wait_for(&rx, "server unreachable", &mut seen);

    let server = Command::new(built_binary("fieldpatch-server"))
        .arg("--data-dir")
        .arg(&server_data)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server(server);
    // The log's log_started and the note.
    wait_for(&rx, "synced: pushed 2, pending 0, rejected 0", &mut seen);

    // Ctrl-C stops it cleanly.
    let status = Command::new("kill").args(["-INT", &watch.id().to_string()]).status().unwrap();
    assert!(status.success());
    wait_for(&rx, "automatic sync is off", &mut seen);
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(s) = watch.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "watch did not exit after Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(code.success(), "{code:?}; saw {seen:#?}");

    let shown: serde_json::Value =
        serde_json::from_str(&laptop.ok(&["--json", "log", "show"])).unwrap();
    let log_id = shown[0]["log_id"].as_str().unwrap();
    assert_eq!(server_event_count(&server_data.join("inventory.db"), log_id).await, (2, 2));
    drop(server);
    for name in ["sync-token", "technician-key"] {
        let _ = laptop.run(&["credentials", "delete", name], "");
    }
}

/// Copy the server's SQLite files (database, WAL) from `from` to `to`.
fn copy_db(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("inventory.db") {
            std::fs::copy(&p, to.join(&name)).unwrap();
        }
    }
}

#[tokio::test]
async fn a_server_restored_from_backup_gets_the_lost_events_again() {
    let tmp = tempfile::tempdir().unwrap();
    let server_data = tmp.path().join("server");
    let laptop = new_laptop(tmp.path());
    let token = enrol(&laptop, &server_data, "alice");
    let sync = |url: &str| {
        let out = laptop.run(&["--json", "sync", "--server", url], "");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };

    let (server, url) = serve(&server_data);
    laptop.run(&["sync", "login", "--server", &url], &format!("{token}\n"));
    laptop.ok(&["log", "note", "one"]);
    laptop.ok(&["log", "note", "two"]);
    sync(&url);
    drop(server);
    let backup = tmp.path().join("backup");
    copy_db(&server_data, &backup);

    let (server, url) = serve(&server_data);
    laptop.ok(&["log", "note", "three"]);
    laptop.ok(&["log", "note", "four"]);
    sync(&url);
    drop(server);

    // The inventory is restored from the backup: it lost events 4 and 5 it had countersigned
    // (seq 1 is the log's log_started).
    for entry in std::fs::read_dir(&server_data).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().starts_with("inventory.db") {
            std::fs::remove_file(p).unwrap();
        }
    }
    copy_db(&backup, &server_data);
    let shown: serde_json::Value =
        serde_json::from_str(&laptop.ok(&["--json", "log", "show"])).unwrap();
    let log_id = shown[0]["log_id"].as_str().unwrap().to_string();
    let db = server_data.join("inventory.db");
    assert_eq!(server_event_count(&db, &log_id).await, (3, 3));

    let (_server, url) = serve(&server_data);
    laptop.ok(&["log", "note", "five"]);
    let report = sync(&url);
    assert_eq!(report["pending"], serde_json::json!({}), "{report}");
    assert_eq!(server_event_count(&db, &log_id).await, (6, 6), "every event is on the server once");
}

/// `sync login --ca-cert`: the private CA is checked and remembered, so later syncs check the
/// server's certificate against it without the flag (as the app's login does); without it the
/// server is refused as untrusted, and a file holding no certificate is refused at the login.
#[test]
fn sync_login_remembers_the_private_ca_for_later_syncs() {
    let tmp = tempfile::tempdir().unwrap();
    let laptop = new_laptop(tmp.path());
    let server_data = tmp.path().join("server");
    let token = enrol(&laptop, &server_data, "alice");
    let tls = fieldpatch_testkit::tls::self_signed(tmp.path());
    let (cert, key) = (tls.cert.to_str().unwrap(), tls.key.to_str().unwrap());
    let (_server, url) = serve_with(&server_data, &["--tls-cert", cert, "--tls-key", key]);
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let login = |extra: &[&str]| {
        let args = [&["sync", "login", "--server", url.as_str()], extra].concat();
        laptop.run(&args, &format!("{token}\n"))
    };

    let out = login(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let untrusted = laptop.run(&["sync"], "");
    assert!(!untrusted.status.success());
    let e = String::from_utf8_lossy(&untrusted.stderr).to_lowercase();
    assert!(e.contains("certificate"), "{e}");

    let not_a_cert = login(&["--ca-cert", key]);
    assert!(!not_a_cert.status.success());
    let e = String::from_utf8_lossy(&not_a_cert.stderr);
    assert!(e.contains("no PEM certificate"), "{e}");

    let out = login(&["--ca-cert", cert]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A later login without the flag keeps it, and sync trusts the server from then on.
    let out = login(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let synced = laptop.run(&["sync"], "");
    assert!(synced.status.success(), "{}", String::from_utf8_lossy(&synced.stderr));
}
