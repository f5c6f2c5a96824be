//! Audit exports end to end: a batch session on lab devices through the real `fieldpatch`
//! binary (one device patched, one rolled back, one missed), exported with `fieldpatch export`,
//! checked offline with `fieldpatch audit verify`, read back with `pdftotext`, tampered with; the
//! visit's device credential came from the OS keyring and the export never carries it. (One test:
//! parallel tests share the keyring and its technician key.)

use fieldpatch_e2e::kit::{BundleSpec, Kit, fieldpatch};
use fieldpatch_lab::smp::mcuboot::{Version, build_image, test_payload};
use fieldpatch_testkit::site::SiteBuilder;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const V2: Version = Version { major: 2, minor: 0, revision: 0, build: 0 };
const SECRET: &str = "s3cret-Device-Passw0rd-that-must-never-leave-the-keyring";

fn release(dir: &Path) -> Kit {
    let kit = Kit::new(dir);
    kit.bundle(&BundleSpec {
        id: "lab-sensor-2.0.0",
        vendor: "Lab",
        model: "sensor",
        applies: ("1.0.0", "1.9.9"),
        installs: "2.0.0",
        cvss: "8.1",
        format: "mcuboot",
        payload: &build_image(V2, &test_payload(8 * 1024, 42)),
    });
    kit
}

fn stderr(out: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The site's files extracted from `archive` by the system's `tar`.
fn extract(archive: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    let out = Command::new("tar").arg("-xf").arg(archive).arg("-C").arg(into).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Rewrite `archive` to `to` with `name` edited (through the system's `tar`).
fn tampered(archive: &Path, name: &str, to: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
    let dir = to.with_extension("d");
    extract(archive, &dir);
    let listing = Command::new("tar").arg("-tf").arg(archive).output().unwrap();
    let names: Vec<String> =
        String::from_utf8(listing.stdout).unwrap().lines().map(str::to_string).collect();
    let mut bytes = std::fs::read(dir.join(name)).unwrap();
    edit(&mut bytes);
    std::fs::write(dir.join(name), bytes).unwrap();
    let out = Command::new("tar")
        .args(["--format=ustar", "-cf"])
        .arg(to)
        .arg("-C")
        .arg(&dir)
        .args(&names)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

fn flip(bytes: &mut [u8], from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let at = bytes
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .unwrap_or_else(|| panic!("{from:?} not found"));
    bytes[at..at + to.len()].copy_from_slice(to.as_bytes());
}

struct Visit {
    tmp: tempfile::TempDir,
    kit: Kit,
    visit: String,
    /// The keyring name of s0's credential (one per test: the keyring is shared).
    credential: String,
}

impl Visit {
    fn data(&self) -> std::path::PathBuf {
        self.tmp.path().join("data")
    }

    fn run(&self, args: &[&str]) -> Output {
        fieldpatch(self.tmp.path(), &self.data(), args)
    }

    fn cleanup_credential(&self) {
        let _ = self.run(&["credentials", "delete", &self.credential]);
    }
}

/// A session on three lab sensors: s0 (its record names a keyring credential) is patched, s1
/// fails its health check and is rolled back, s2 does not answer (missed); the close-out gives
/// the reasons.
fn session_visit() -> Visit {
    let tmp = tempfile::tempdir().unwrap();
    let kit = release(tmp.path());
    let data = tmp.path().join("data");
    let site = SiteBuilder::new()
        .first_seed(3)
        .flash_speed(1024.0 * 1024.0)
        .udp_sensors(3, "sensor", fieldpatch_core::plan::Criticality::Normal, |i| format!("s{i}"))
        .start()
        .unwrap();
    site.sensors[1].faults().fail_health_check = true;
    let mut records = serde_json::to_value(&site.records).unwrap();
    let credential = format!("device/s0-{}/password", uuid::Uuid::new_v4().simple());
    records[0]["credential"] = credential.clone().into();
    // s2's address answers nothing: the device is missed.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    records[2]["address"]["addr"] = dead_addr.into();
    std::fs::write(tmp.path().join("devices.json"), serde_json::to_vec(&records).unwrap()).unwrap();
    let v = Visit { tmp, kit, visit: String::new(), credential };

    let mut child = Command::new(fieldpatch_e2e::built_binary("fieldpatch"))
        .args(["credentials", "set", &v.credential])
        .current_dir(v.tmp.path())
        .env("FIELDPATCH_DATA_DIR", &data)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(SECRET.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());

    let cat =
        ["--catalog", v.kit.catalog.to_str().unwrap(), "--trust", v.kit.trust.to_str().unwrap()];
    let mut args = vec!["plan", "--devices", "devices.json", "--out", "plan.json"];
    args.extend(cat);
    let out = v.run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut args =
        vec!["session", "run", "plan.json", "--no-canary", "--soak", "0", "--threshold", "5"];
    args.extend(cat);
    let out = v.run(&args);
    assert!(!out.status.success(), "a rollback makes the exit status non-zero: {}", stderr(&out));
    let out = v.run(&[
        "session",
        "close",
        "--reason",
        "s1=owner refused a second attempt",
        "--reason",
        "s2=device powered off, not reachable",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let log: serde_json::Value =
        serde_json::from_slice(&v.run(&["--json", "log", "show"]).stdout).unwrap();
    let visit = log
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "visit_opened")
        .expect("the session opened a visit")["visit_id"]
        .as_str()
        .unwrap()
        .to_string();
    Visit { visit, ..v }
}

#[test]
fn a_session_visit_exports_verifies_offline_holds_no_secret_and_refuses_changed_bytes() {
    let v = session_visit();
    let archive = v.tmp.path().join("visit.tar");
    let (trust, catalog) = (v.kit.trust.to_str().unwrap(), v.kit.catalog.to_str().unwrap());
    let out = v.run(&[
        "export",
        "--visit",
        &v.visit,
        "--out",
        archive.to_str().unwrap(),
        "--trust",
        trust,
        "--catalog",
        catalog,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Offline: another data directory, nothing of the laptop's store.
    let elsewhere = v.tmp.path().join("auditor");
    let verify = |file: &Path| {
        fieldpatch(v.tmp.path(), &elsewhere, &["--json", "audit", "verify", file.to_str().unwrap()])
    };
    let out = verify(&archive);
    assert!(out.status.success(), "{}", stderr(&out));
    let ok: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ok["visit_id"], v.visit.as_str());
    assert_eq!(ok["devices"], 3, "{ok}");
    assert_eq!(ok["server_key"], serde_json::Value::Null, "exported before sync: {ok}");
    let text =
        fieldpatch(v.tmp.path(), &elsewhere, &["audit", "verify", archive.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&text.stdout)
            .contains("no server checkpoint (exported before sync)"),
        "{}",
        stderr(&text)
    );

    let files = v.tmp.path().join("files");
    extract(&archive, &files);
    assert_no_secret(&v, &archive, &files);
    v.cleanup_credential();
    assert!(files.join("bundles/lab-sensor-2.0.0.manifest.json").exists());
    // The release signatures too: `audit verify` re-proved the verdict against the trust store.
    assert!(files.join("bundles/lab-sensor-2.0.0.signatures.json").exists());
    let csv = std::fs::read_to_string(files.join("devices.csv")).unwrap();
    for (device, outcome) in [("s0", "patched"), ("s1", "rolled_back"), ("s2", "not_patched")] {
        let row = csv
            .lines()
            .find(|l| l.starts_with(&format!("{device},")))
            .unwrap_or_else(|| panic!("{csv}"));
        assert!(row.contains(outcome), "{row}");
    }
    assert!(csv.contains("owner refused a second attempt"), "{csv}");

    // The PDF's text names every device and its outcome.
    let pdf = Command::new("pdftotext").arg(files.join("report.pdf")).arg("-").output().unwrap();
    assert!(pdf.status.success(), "{}", stderr(&pdf));
    let pdf = String::from_utf8_lossy(&pdf.stdout);
    assert!(pdf.contains("s0: patched (1.0.0 -> 2.0.0)"), "{pdf}");
    assert!(pdf.contains("s1: rolled_back"), "{pdf}");
    let s2 = pdf.lines().find(|l| l.starts_with("s2: ")).unwrap_or_else(|| panic!("{pdf}"));
    assert!(s2.contains("device powered off, not reachable"), "{s2}");
    assert!(pdf.contains("exported before sync"), "{pdf}");

    // One byte changed anywhere: refused, naming the reason.
    // In the manifest: one hex digit of the visit id (still a valid manifest, no longer signed).
    let visit_field = format!("\"visit_id\":\"{}", &v.visit[..35]);
    let last = if v.visit.as_bytes()[34] == b'0' { "1" } else { "0" };
    let edited_visit = format!("\"visit_id\":\"{}{last}", &v.visit[..34]);
    let cases: [(&str, &str, &str, &str); 4] = [
        ("events.jsonl", "owner refused", "owner refuseD", "audit_chain"),
        ("devices.csv", "owner refused", "owner refuseD", "audit_not_backed"),
        ("report.pdf", "rolled_back", "rolled_bacK", "audit_not_backed"),
        ("manifest.json", &visit_field, &edited_visit, "audit_manifest_signature"),
    ];
    for (name, from, to, code) in cases {
        let bad = v.tmp.path().join(format!("bad-{}.tar", name.replace('.', "-")));
        tampered(&archive, name, &bad, |b| flip(b, from, to));
        let out = verify(&bad);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", stderr(&out));
        let err: serde_json::Value = serde_json::from_slice(&out.stderr)
            .or_else(|_| serde_json::from_slice(&out.stdout))
            .unwrap_or_else(|_| panic!("{}", stderr(&out)));
        assert_eq!(err["error"]["code"], code, "{name}: {err}");
        if name != "manifest.json" {
            assert!(
                err["error"]["message"].as_str().unwrap().contains(if name == "events.jsonl" {
                    "seq"
                } else {
                    name
                }),
                "{err}"
            );
        }
    }
}

/// The credential s0's record named is in the keyring, and neither the archive nor the PDF's
/// text holds it (nor any 16-byte piece of it).
fn assert_no_secret(v: &Visit, archive: &Path, files: &Path) {
    let plan = std::fs::read_to_string(v.tmp.path().join("plan.json")).unwrap();
    assert!(plan.contains(&v.credential), "the visit's plan used the credential: {plan}");
    let secret_is_there = v.run(&["credentials", "get", &v.credential, "--reveal"]);
    assert!(String::from_utf8_lossy(&secret_is_there.stdout).contains(SECRET));
    let bytes = std::fs::read(archive).unwrap();
    let pdf = Command::new("pdftotext").arg(files.join("report.pdf")).arg("-").output().unwrap();
    for (what, hay) in [("archive", bytes.as_slice()), ("pdf text", pdf.stdout.as_slice())] {
        assert!(
            !hay.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "the secret is in the {what}"
        );
        assert!(!hay.windows(16).any(|w| w == &SECRET.as_bytes()[20..36]), "{what}");
    }
}
