//! The SWUpdate HTTP client against the real `swupdate` daemon (Debian's, with mongoose): digest
//! authentication, a streamed upload installed byte for byte by the `raw` handler, wrong and
//! missing credentials refused before an image is sent, and the daemon's own refusals of unsigned,
//! wrongly signed, wrong-hardware and tampered images (sent raw, with no Fieldpatch checks) carried
//! back with its message.

use fieldpatch_drivers::progress::{Progress, TransferProgress};
use fieldpatch_drivers::swupdate::{DigestCredentials, SwupdateClient, SwupdateError, Timeouts};
use fieldpatch_testkit::swupdate::{Daemon, DaemonAuth, Swu, Vendor};
use std::sync::Mutex;
use std::time::Duration;

const PASSWORD: &str = "gw-digest-pass-4471";

fn auth() -> DaemonAuth {
    DaemonAuth { user: "admin".into(), realm: "gw-site-a".into(), password: PASSWORD.into() }
}

fn timeouts() -> Timeouts {
    Timeouts { request: Duration::from_secs(5), install: Duration::from_secs(20) }
}

struct Setup {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    vendor: Vendor,
    daemon: Daemon,
}

fn setup(with_auth: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let vendor = Vendor::new(&root.join("vendor"), "Gateway Vendor");
    let a = auth();
    let daemon =
        Daemon::start(&root.join("daemon"), "gw100:1.0", &vendor.cert, with_auth.then_some(&a));
    Setup { _dir: dir, root, vendor, daemon }
}

fn image(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1]).collect()
}

fn swu(s: &Setup) -> Swu {
    Swu {
        version: "2.1.0".into(),
        hardware: vec!["1.0".into()],
        image_name: "rootfs.img".into(),
        image: image(300_000),
        device_path: s.daemon.flash.clone(),
        signer: Some(s.vendor.clone()),
        tamper: false,
    }
}

#[derive(Default)]
struct Recorder {
    phases: Mutex<Vec<String>>,
    transfers: Mutex<Vec<TransferProgress>>,
}

impl Progress for Recorder {
    fn phase(&self, name: &str) {
        self.phases.lock().unwrap().push(name.into());
    }
    fn transfer(&self, p: TransferProgress) {
        self.transfers.lock().unwrap().push(p);
    }
}

#[tokio::test]
async fn swupdate_digest_upload_installs_byte_identical() {
    let s = setup(true);
    let good = swu(&s);
    let path = good.write(&s.root, "good.swu");
    let client = SwupdateClient::new(&s.daemon.url(), timeouts()).unwrap();
    let creds = DigestCredentials::new("admin", PASSWORD);
    let rec = Recorder::default();
    let report = client.install(&path, Some(&creds), &rec).await.unwrap_or_else(|e| {
        panic!("install failed: {e} ({}); daemon log:\n{}", e.code(), s.daemon.log_text())
    });
    assert_eq!(report.bytes_sent, std::fs::metadata(&path).unwrap().len());
    let file_sha = fieldpatch_testkit::swupdate::sha256_hex(&std::fs::read(&path).unwrap());
    assert_eq!(hex::encode(report.sha256), file_sha, "the bytes sent are hashed as they stream");
    assert_eq!(s.daemon.flash_bytes(), good.image, "the flash file is the image, byte for byte");
    assert_eq!(*rec.phases.lock().unwrap(), ["authenticate", "upload", "install"]);
    let last = *rec.transfers.lock().unwrap().last().expect("upload progress was reported");
    assert_eq!((last.done, last.total), (report.bytes_sent, report.bytes_sent));
    assert!(s.daemon.log_text().contains("SWUPDATE successful"));
}

#[tokio::test]
async fn swupdate_wrong_or_missing_credentials_refused_before_upload() {
    let s = setup(true);
    let path = swu(&s).write(&s.root, "good.swu");
    let client = SwupdateClient::new(&s.daemon.url(), timeouts()).unwrap();

    let wrong = DigestCredentials::new("admin", "not-the-password");
    let e = client.install(&path, Some(&wrong), &fieldpatch_drivers::progress::NoProgress).await;
    let e = e.unwrap_err();
    assert_eq!(e.code(), "swupdate_unauthorized", "{e}");
    assert!(!e.to_string().contains("not-the-password"));
    assert!(matches!(&e, SwupdateError::Unauthorized { realm, .. } if realm == "gw-site-a"));

    let e = client.install(&path, None, &fieldpatch_drivers::progress::NoProgress).await;
    assert_eq!(e.unwrap_err().code(), "swupdate_credentials_required");

    let other_user = DigestCredentials::new("root", PASSWORD);
    let e = client.install(&path, Some(&other_user), &fieldpatch_drivers::progress::NoProgress);
    assert_eq!(e.await.unwrap_err().code(), "swupdate_unauthorized");

    assert!(!s.daemon.started_an_update(), "no image reached the daemon");
    assert!(s.daemon.flash_bytes().is_empty());
}

#[tokio::test]
async fn swupdate_daemon_itself_refuses_bad_images_sent_raw() {
    let s = setup(false);
    let client = SwupdateClient::new(&s.daemon.url(), timeouts()).unwrap();
    let stranger = Vendor::new(&s.root.join("stranger"), "Someone Else");
    let base = swu(&s);
    let cases = [
        ("unsigned", Swu { signer: None, ..base.clone() }),
        ("wrong-signer", Swu { signer: Some(stranger), ..base.clone() }),
        ("wrong-hw", Swu { hardware: vec!["2.0".into()], ..base.clone() }),
        ("tampered", Swu { tamper: true, ..base.clone() }),
    ];
    for (name, bad) in cases {
        let path = bad.write(&s.root, &format!("{name}.swu"));
        let e = client
            .install(&path, None, &fieldpatch_drivers::progress::NoProgress)
            .await
            .expect_err(name);
        let SwupdateError::Refused { message } = &e else {
            panic!(
                "{name}: expected a refusal, got {e} ({}); log:\n{}",
                e.code(),
                s.daemon.log_text()
            )
        };
        assert!(!message.is_empty(), "{name}");
        eprintln!("{name}: the daemon said: {message}");
        // A tampered image is refused only at the end: its hash is checked as it streams, after
        // the bytes were written; the others never touch the flash.
        if name != "tampered" {
            assert!(s.daemon.flash_bytes().is_empty(), "{name} touched the flash");
        }
    }
    // The daemon is still usable afterwards.
    let good = base.write(&s.root, "good.swu");
    client.install(&good, None, &fieldpatch_drivers::progress::NoProgress).await.unwrap();
    assert_eq!(s.daemon.flash_bytes(), base.image);
}

#[tokio::test]
async fn swupdate_busy_daemon_is_a_transient_busy_error() {
    let s = setup(false);
    let big = Swu { image: image(3_000_000), ..swu(&s) }.write(&s.root, "big.swu");
    let path = swu(&s).write(&s.root, "good.swu");
    // Another client (curl, slowed down) is installing: the daemon is busy with it.
    let mut other = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--limit-rate", "100k", "-F"])
        .arg(format!("file=@{}", big.display()))
        .arg(format!("{}/upload", s.daemon.url()))
        .spawn()
        .expect("curl runs (scripts/setup installs it)");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !s.daemon.started_an_update() {
        assert!(std::time::Instant::now() < deadline, "the other upload never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = SwupdateClient::new(&s.daemon.url(), timeouts()).unwrap();
    let e = client
        .install(&path, None, &fieldpatch_drivers::progress::NoProgress)
        .await
        .expect_err("a busy daemon");
    let _ = other.kill();
    let _ = other.wait();
    // The daemon answers "busy" (HTTP 500, "Failed to queue"); when it hangs up before the body
    // was sent, the client sees a closed connection instead. Either way: retryable, nothing
    // installed.
    assert!(
        matches!(e.code(), "swupdate_busy" | "swupdate_unreachable"),
        "{e} ({}); log:\n{}",
        e.code(),
        s.daemon.log_text()
    );
    assert!(e.is_transient());
}
