//! `fieldpatch device --swupdate URL --device ID --hardware REV image upload FILE.swu --trust
//! FILE` against the real SWUpdate daemon (its mongoose web server with HTTP digest
//! authentication and a vendor key), with the gateway's password in the real Secret Service and
//! the vendor's certificate in a trust store made with `fieldpatch keys trust-init --vendor-cert`:
//! a good image installed byte for byte; unsigned, wrongly signed, wrong-hardware and tampered
//! images refused by Fieldpatch before any byte reaches the daemon; a missing or wrong credential
//! refused without an upload; no secret in the data directory or anything printed. The trust
//! anchor is the trust store in force, never a file named for the one job: a store without the
//! vendor's certificate refuses the image unless the technician sends it as unverified (recorded),
//! and a hand-made store is refused once a store is pinned.

use fieldpatch_testkit::swupdate::{Daemon, DaemonAuth, Swu, Vendor};
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const REALM: &str = "gw-site-a";

fn require_session_bus() {
    assert!(
        std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some(),
        "this test needs the real Secret Service but DBUS_SESSION_BUS_ADDRESS is not set: run it \
         through scripts/test, or inside `dbus-run-session` with an unlocked gnome-keyring"
    );
}

struct Env {
    dir: tempfile::TempDir,
    service: String,
    transcript: std::cell::RefCell<Vec<u8>>,
}

impl Env {
    fn new() -> Env {
        require_session_bus();
        Env {
            dir: tempfile::tempdir().unwrap(),
            service: format!("fieldpatch-test-{}", uuid::Uuid::new_v4().simple()),
            transcript: Default::default(),
        }
    }

    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fieldpatch"))
            .args(args)
            .env("FIELDPATCH_DATA_DIR", self.data())
            .env("FIELDPATCH_KEYRING", "secret-service")
            .env("FIELDPATCH_KEYRING_SERVICE", &self.service)
            .env("RUST_LOG", "trace")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            let _ = input.write_all(s.as_bytes());
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        let mut t = self.transcript.borrow_mut();
        t.extend_from_slice(&out.stdout);
        t.extend_from_slice(&out.stderr);
        out
    }

    fn set_password(&self, device: &str, password: &str) {
        let name = format!("device/{device}/password");
        let out = self.run(&["credentials", "set", &name], Some(password));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    fn upload(&self, daemon: &Daemon, device: &str, swu: &Path, trust: &Path) -> Output {
        self.upload_with(daemon, device, swu, &["--trust", trust.to_str().unwrap()])
    }

    fn upload_with(&self, daemon: &Daemon, device: &str, swu: &Path, extra: &[&str]) -> Output {
        let url = daemon.url();
        let args = [
            &[
                "--json",
                "device",
                "--swupdate",
                &url,
                "--device",
                device,
                "--hardware",
                "1.0",
                "image",
                "upload",
                swu.to_str().unwrap(),
            ],
            extra,
        ]
        .concat();
        self.run(&args, None)
    }

    /// A trust store made with the CLI: a new root key in `dir`, and `vendors`' certificates.
    fn trust_store(&self, dir: &str, vendors: &[&Vendor]) -> std::path::PathBuf {
        let dir = self.dir.path().join(dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("root.key");
        let out = self.run(&["--json", "keys", "generate", "--out", key.to_str().unwrap()], None);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let public: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let root = format!("root={}:root", public["public_key"].as_str().unwrap());
        let store = dir.join("trust.json");
        let mut args = vec![
            "keys".to_string(),
            "trust-init".into(),
            "--out".into(),
            store.display().to_string(),
            "--key".into(),
            root,
            "--sign".into(),
            key.display().to_string(),
        ];
        for v in vendors {
            args.push("--vendor-cert".into());
            args.push(format!("{}:Gateway Vendor", v.cert.display()));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.run(&args, None);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        store
    }

    /// The secret appears nowhere: not in any file of the data directory, not in any output.
    fn assert_no_secret(&self, secret: &str) {
        let t = self.transcript.borrow();
        assert!(!t.windows(secret.len()).any(|w| w == secret.as_bytes()), "a secret was printed");
        let mut stack = vec![self.data()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let b = std::fs::read(&p).unwrap();
                    assert!(
                        !b.windows(secret.len()).any(|w| w == secret.as_bytes()),
                        "the secret is in {}",
                        p.display()
                    );
                }
            }
        }
    }
}

impl Env {
    /// The visit log's events about `device`, as `(kind, event)`.
    fn events_about(&self, device: &str) -> Vec<(String, serde_json::Value)> {
        let out = self.run(&["--json", "log", "show"], None);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        all.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["device"] == device)
            .map(|e| (e["kind"].as_str().unwrap_or("").to_string(), e.clone()))
            .collect()
    }
}

fn error_code(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.contains("\"error\"")).unwrap_or_else(|| {
        panic!("no JSON error; stdout: {stdout}; stderr: {}", String::from_utf8_lossy(&out.stderr))
    });
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["error"]["code"].as_str().unwrap().to_string()
}

fn image() -> Vec<u8> {
    (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

struct Gateway {
    vendor: Vendor,
    daemon: Daemon,
    password: String,
    /// A trust store naming the vendor's certificate.
    trust: std::path::PathBuf,
}

fn gateway(env: &Env) -> Gateway {
    let root = env.dir.path();
    let vendor = Vendor::new(&root.join("vendor"), "Gateway Vendor");
    let password = format!("gw-pass-{}", uuid::Uuid::new_v4().simple());
    let auth = DaemonAuth { user: "admin".into(), realm: REALM.into(), password: password.clone() };
    let daemon = Daemon::start(&root.join("daemon"), "gw100:1.0", &vendor.cert, Some(&auth));
    let trust = env.trust_store("release", &[&vendor]);
    Gateway { vendor, daemon, password, trust }
}

fn good(gw: &Gateway) -> Swu {
    Swu {
        version: "4.2.0".into(),
        hardware: vec!["1.0".into()],
        image_name: "rootfs.img".into(),
        image: image(),
        device_path: gw.daemon.flash.clone(),
        signer: Some(gw.vendor.clone()),
        tamper: false,
    }
}

#[test]
fn swupdate_cli_installs_with_the_keyring_credential_and_leaks_nothing() {
    let env = Env::new();
    let gw = gateway(&env);
    env.set_password("gw-1", &gw.password);
    let swu = good(&gw);
    let file = swu.write(env.dir.path(), "good.swu");
    let out = env.upload(&gw.daemon, "gw-1", &file, &gw.trust);
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}\ndaemon log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        gw.daemon.log_text()
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], "4.2.0");
    assert_eq!(gw.daemon.flash_bytes(), swu.image, "the flash file is the image, byte for byte");
    assert!(gw.daemon.log_text().contains("SWUPDATE successful"));
    let events = env.events_about("gw-1");
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    // Then the gateway is asked to restart into the new software (what it answered is noted).
    assert_eq!(kinds, ["note", "flash_started", "image_uploaded", "note"], "{events:?}");
    let restart = v["restart"].as_str().unwrap();
    assert!(events[3].1["text"].as_str().unwrap().ends_with(restart), "{events:?}");
    assert!(v["health"].is_null(), "no health URL was given: {v}");
    let sha = fieldpatch_testkit::swupdate::sha256_hex(&std::fs::read(&file).unwrap());
    let cert_id =
        fieldpatch_core::bundle::certificate_id(&String::from_utf8(gw.vendor.cert_pem()).unwrap())
            .unwrap();
    let note = events[0].1["text"].as_str().unwrap();
    assert!(note.contains(&format!("verified by vendor certificate {cert_id}")), "{note}");
    assert!(note.contains(&sha), "{note}");
    assert_eq!(events[1].1["image_sha256"], sha.as_str());
    assert_eq!(events[1].1["to_version"], "4.2.0");
    env.assert_no_secret(&gw.password);
}

/// A health endpoint on loopback answering every request with `status` (until dropped).
fn health_server(status: u16) -> (String, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/healthz", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut conn in listener.incoming().flatten().take(20) {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (url, handle)
}

/// `--health-url`: the install counts as done only once the device's own health URL answers
/// 2xx; one that keeps failing is a failed health check in the visit log and a non-zero exit,
/// with the new software installed (SWUpdate has no revert) and said so.
#[test]
fn swupdate_cli_checks_the_device_health_url_after_the_install() {
    let env = Env::new();
    let gw = gateway(&env);
    env.set_password("gw-1", &gw.password);
    let file = good(&gw).write(env.dir.path(), "good.swu");
    let trust = gw.trust.to_str().unwrap().to_string();

    let (healthy, _h) = health_server(200);
    let install = |extra: &[&str]| {
        let url = gw.daemon.url();
        let args = [
            &["--json", "device", "--swupdate", &url, "--device", "gw-1", "--hardware", "1.0"],
            extra,
            &["image", "upload", file.to_str().unwrap(), "--trust", &trust],
        ]
        .concat();
        env.run(&args, None)
    };
    let out = install(&["--no-restart", "--health-url", &healthy]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["restart"].is_null(), "--no-restart asks for none: {v}");
    assert!(v["health"].as_str().unwrap().contains("answered 2xx"), "{v}");
    let events = env.events_about("gw-1");
    let last = events.last().unwrap();
    assert_eq!((last.0.as_str(), &last.1["passed"]), ("health_check", &serde_json::json!(true)));

    let (sick, _s) = health_server(503);
    let out = install(&["--health-url", &sick, "--health-timeout", "1"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("503") && stderr.contains("not healthy"), "{stderr}");
    let events = env.events_about("gw-1");
    let last = events.last().unwrap();
    assert_eq!(last.0, "health_check", "{events:?}");
    assert_eq!(last.1["passed"], false, "{events:?}");
    env.assert_no_secret(&gw.password);
}

#[test]
fn swupdate_cli_refuses_bad_images_and_credentials_before_upload() {
    let env = Env::new();
    let gw = gateway(&env);
    env.set_password("gw-1", &gw.password);
    let stranger = Vendor::new(&env.dir.path().join("stranger"), "Someone Else");
    let base = good(&gw);
    let cases = [
        ("unsigned", Swu { signer: None, ..base.clone() }, "swu_unsigned"),
        ("wrong-signer", Swu { signer: Some(stranger), ..base.clone() }, "swu_bad_signature"),
        ("wrong-hw", Swu { hardware: vec!["2.0".into()], ..base.clone() }, "swu_wrong_hardware"),
        ("tampered", Swu { tamper: true, ..base.clone() }, "swu_hash_mismatch"),
    ];
    for (name, swu, code) in cases {
        let file = swu.write(env.dir.path(), &format!("{name}.swu"));
        let out = env.upload(&gw.daemon, "gw-1", &file, &gw.trust);
        assert!(!out.status.success(), "{name} was accepted");
        assert_eq!(error_code(&out), code, "{name}");
    }

    let file = base.write(env.dir.path(), "good.swu");
    // No credential for this gateway: a clear error naming it and how to add it.
    let out = env.upload(&gw.daemon, "gw-9", &file, &gw.trust);
    assert_eq!(error_code(&out), "credential_missing");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("device/gw-9/password"), "{err}");
    assert!(err.contains("fieldpatch credentials set"), "{err}");
    // A wrong credential: the daemon's 401, before the image is sent.
    env.set_password("gw-2", "not-the-gateway-password");
    let out = env.upload(&gw.daemon, "gw-2", &file, &gw.trust);
    assert_eq!(error_code(&out), "swupdate_unauthorized");

    assert!(
        !gw.daemon.started_an_update(),
        "no image reached the daemon:\n{}",
        gw.daemon.log_text()
    );
    assert!(gw.daemon.flash_bytes().is_empty());
    // Refused images are recorded as failed verification, never as started flashes.
    let events = env.events_about("gw-1");
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["failed"; 4], "{events:?}");
    assert!(events.iter().all(|(_, e)| e["stage"] == "verify"), "{events:?}");
    // The wrong credential is refused before anything starts, and that is recorded (after the
    // note that the image verified).
    let events = env.events_about("gw-2");
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["note", "failed"], "{events:?}");
    assert_eq!(events[1].1["stage"], "authenticate");
    env.assert_no_secret(&gw.password);
    env.assert_no_secret("not-the-gateway-password");
}

#[test]
fn swupdate_cli_takes_its_trust_anchor_from_the_trust_store_in_force_only() {
    let env = Env::new();
    let gw = gateway(&env);
    env.set_password("gw-1", &gw.password);
    let file = good(&gw).write(env.dir.path(), "good.swu");

    // No trust store at all (none named, none pinned): refused, saying how to get one.
    let out = env.upload_with(&gw.daemon, "gw-1", &file, &[]);
    assert_eq!(error_code(&out), "no_trust_store");

    // A trust store without the vendor's certificate: the signature cannot be checked, so the
    // image is refused, saying how to add the certificate or send it as unverified.
    let bare = env.trust_store("bare", &[]);
    let out = env.upload(&gw.daemon, "gw-1", &file, &bare);
    assert_eq!(error_code(&out), "swu_vendor_certificate");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--vendor-cert") && err.contains("--allow-unverified"), "{err}");
    assert!(!gw.daemon.started_an_update(), "{}", gw.daemon.log_text());

    // The technician may send it anyway, as unverified: recorded before the first byte.
    let out = env.upload_with(
        &gw.daemon,
        "gw-1",
        &file,
        &["--trust", bare.to_str().unwrap(), "--allow-unverified"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let kinds: Vec<String> = env.events_about("gw-1").into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        kinds,
        ["failed", "unverified_image_allowed", "flash_started", "image_uploaded", "note"],
        "the refusal, then the unverified upload and the restart request"
    );

    // Once a store is pinned on this laptop (as a sync leaves it), a store made by hand for the
    // job is refused, even one naming the right vendor: the anchor is the store in force.
    std::fs::create_dir_all(env.data()).unwrap();
    std::fs::copy(&bare, env.data().join("trust.json")).unwrap();
    let out = env.upload(&gw.daemon, "gw-1", &file, &gw.trust);
    assert_eq!(error_code(&out), "trust_store_not_in_force");
    // Without --trust the pinned store is used; it names no vendor certificate.
    let out = env.upload_with(&gw.daemon, "gw-1", &file, &[]);
    assert_eq!(error_code(&out), "swu_vendor_certificate");
    env.assert_no_secret(&gw.password);
}
