//! The `fieldpatch-server` binary: admin commands, HTTPS with rustls, and the refusal to serve
//! plain HTTP on a non-loopback address.

use fieldpatch_proto::wire::PullResponse;
use fieldpatch_testkit::tls::self_signed;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_fieldpatch-server");

fn admin(data: &Path, args: &[&str]) -> String {
    let out =
        Command::new(BIN).arg("--data-dir").arg(data).arg("admin").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "admin {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(data: &Path, extra: &[&str]) -> (Server, String) {
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(data)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    while !line.starts_with("listening on ") {
        line.clear();
        assert!(Instant::now() < deadline, "server did not start");
        assert!(out.read_line(&mut line).unwrap() > 0, "server exited before listening");
    }
    (Server(child), line.trim().trim_start_matches("listening on ").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_cli_then_a_technician_pulls_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rng());
    let out = admin(
        &data,
        &[
            "create-technician",
            "--id",
            "alice",
            "--name",
            "Alice",
            "--public-key",
            &hex::encode(key.verifying_key().as_bytes()),
        ],
    );
    let token = out.lines().find_map(|l| l.strip_prefix("token: ")).unwrap().to_string();
    std::fs::write(
        dir.path().join("sites.csv"),
        "id,name,address\ns1,Plant 1,\"Dock 4, North\"\ns2,Plant 2,\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("devices.json"),
        r#"[{"id":"d1","site_id":"s1","serial_number":"SN1","approved_version":"1.4.0"},
            {"id":"d2","site_id":"s2","approved_version":"1.4.0"}]"#,
    )
    .unwrap();
    assert!(
        admin(&data, &["import-sites", dir.path().join("sites.csv").to_str().unwrap()])
            .contains("imported 2 sites")
    );
    assert!(
        admin(&data, &["import-devices", dir.path().join("devices.json").to_str().unwrap()])
            .contains("imported 2 devices")
    );
    admin(&data, &["assign", "--technician", "alice", "--site", "s1"]);
    let bundle = b"bundle bytes as published".to_vec();
    std::fs::write(dir.path().join("b.fpb"), &bundle).unwrap();
    std::fs::write(dir.path().join("m.json"), r#"{"target":{"model":"gw-2"},"installs":"1.4.0"}"#)
        .unwrap();
    admin(
        &data,
        &[
            "publish",
            "--bundle-id",
            "gw2-fw",
            "--version",
            "1.4.0",
            "--manifest",
            dir.path().join("m.json").to_str().unwrap(),
            "--bundle",
            dir.path().join("b.fpb").to_str().unwrap(),
        ],
    );
    let trust = fieldpatch_testkit::trust::TrustDocs::new().store(1, false, None, &[]);
    std::fs::write(dir.path().join("trust.json"), serde_json::to_vec(&trust).unwrap()).unwrap();
    let out = admin(&data, &["publish-trust", dir.path().join("trust.json").to_str().unwrap()]);
    assert!(out.contains("trust store version 1 published"), "{out}");
    let server_key = admin(&data, &["server-key"]).trim().to_string();
    // A device credential from standard input, encrypted at rest.
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(&data)
        .args(["admin", "set-credential", "--device", "d1", "--kind", "password"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"pa55word-d1\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("encrypted at rest"));
    let db = std::fs::read(data.join("inventory.db")).unwrap();
    let wal = std::fs::read(data.join("inventory.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(
            !bytes.windows(11).any(|w| w == b"pa55word-d1"),
            "plaintext credential in the database"
        );
    }

    // Reports from the admin CLI: both devices lack their approved version; d1 has no history.
    let report: Vec<serde_json::Value> =
        serde_json::from_str(&admin(&data, &["report", "not-at-approved-version"])).unwrap();
    assert_eq!(report.len(), 2);
    let history: Vec<serde_json::Value> =
        serde_json::from_str(&admin(&data, &["report", "device-history", "--device", "d1"]))
            .unwrap();
    assert!(history.is_empty());

    // A missing device site is a clear error.
    std::fs::write(dir.path().join("bad.csv"), "id,site_id\nd7,nowhere\n").unwrap();
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(&data)
        .args(["admin", "import-devices"])
        .arg(dir.path().join("bad.csv"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("import the site first"));

    let tls = self_signed(dir.path());
    let (_server, url) = serve(
        &data,
        &["--tls-cert", tls.cert.to_str().unwrap(), "--tls-key", tls.key.to_str().unwrap()],
    );
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let client = reqwest::Client::builder()
        .tls_backend_rustls()
        .tls_certs_merge([reqwest::Certificate::from_pem(&tls.cert_pem()).unwrap()])
        .build()
        .unwrap();
    let pull: PullResponse = client
        .get(format!("{url}/v1/pull"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pull.server_key, server_key);
    assert_eq!(pull.sites.len(), 1);
    assert_eq!(pull.sites[0].address.as_deref(), Some("Dock 4, North"));
    assert_eq!(pull.devices.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["d1"]);
    assert_eq!(pull.trust_store.unwrap(), serde_json::to_value(&trust).unwrap());
    assert_eq!(pull.credentials.len(), 1);
    assert_eq!(pull.credentials[0].open(&key, "alice").unwrap().as_slice(), b"pa55word-d1");
    let entry = &pull.catalog[0];
    assert_eq!(entry.manifest["installs"], "1.4.0");
    let got = client
        .get(format!("{url}/v1/catalog/{}", entry.sha256))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), bundle.as_slice());
    assert_eq!(hex::encode(Sha256::digest(&got)), entry.sha256);

    // Plain HTTP to the TLS port fails; a client that does not trust the certificate fails.
    let plain = url.replace("https://", "http://");
    assert!(
        reqwest::get(format!("{plain}/v1/health")).await.is_err() || {
            let r = reqwest::get(format!("{plain}/v1/health")).await.unwrap();
            !r.status().is_success()
        }
    );
    let untrusting = reqwest::Client::builder().tls_backend_rustls().build().unwrap();
    assert!(untrusting.get(format!("{url}/v1/health")).send().await.is_err());
}

#[test]
fn plain_http_on_a_non_loopback_address_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to listen on 0.0.0.0:0 without TLS"), "{err}");
    assert!(err.contains("--allow-insecure-non-loopback"), "{err}");

    // Explicitly allowed: it starts (and is stopped by the test).
    let (_server, url) = serve(dir.path(), &[]);
    assert!(url.starts_with("http://127.0.0.1:"));
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["serve", "--listen", "0.0.0.0:0", "--allow-insecure-non-loopback"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("listening on http://0.0.0.0:"), "{line}");
}
