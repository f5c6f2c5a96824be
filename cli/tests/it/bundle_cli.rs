//! `fieldpatch keys` and `fieldpatch bundle` end to end through the real binary.

use std::path::Path;
use std::process::{Command, Output};

fn fp(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fieldpatch"))
        .args(args)
        .current_dir(dir)
        .env("FIELDPATCH_DATA_DIR", dir)
        .output()
        .unwrap()
}

fn ok_json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = fp(dir, args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Run `bundle verify --json`, returning (exit success, verdict).
fn verify(dir: &Path, extra: &[&str]) -> (bool, serde_json::Value) {
    let mut args = vec!["--json", "bundle", "verify", "b.fpb", "--trust", "trust.json"];
    args.extend_from_slice(extra);
    let out = fp(dir, &args);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), v)
}

#[test]
fn generate_keys_build_a_trust_store_create_sign_verify_and_inspect_a_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut pubs = Vec::new();
    for name in ["root", "rel1", "rel2"] {
        let out = fp(d, &["--json", "keys", "generate", "--out", &format!("{name}.pem")]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let pem = std::fs::read_to_string(d.join(format!("{name}.pem"))).unwrap();
        let secret_line = pem.lines().nth(1).unwrap();
        assert!(
            !stdout.contains(secret_line) && !stdout.contains("PRIVATE"),
            "private key printed"
        );
        assert!(!String::from_utf8_lossy(&out.stderr).contains(secret_line));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join(format!("{name}.pem"))).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        pubs.push((
            v["key_id"].as_str().unwrap().to_string(),
            v["public_key"].as_str().unwrap().to_string(),
        ));
    }
    let public = ok_json(d, &["--json", "keys", "public", "--key", "rel1.pem"]);
    assert_eq!(public["key_id"], pubs[1].0.as_str());

    ok_json(
        d,
        &[
            "--json",
            "keys",
            "trust-init",
            "--out",
            "trust.json",
            "--key",
            &format!("root={}:root", pubs[0].1),
            "--key",
            &format!("release={}:alice", pubs[1].1),
            "--key",
            &format!("release={}:bob", pubs[2].1),
            "--threshold",
            "release=2",
            "--sign",
            "root.pem",
        ],
    );

    let template = serde_json::json!({
        "bundle_id": "acme-s100-2.1.0",
        "bundle_version": 1,
        "target": {"vendor": "Acme", "model": "S-100", "hardware_revision": {"min": "2"}},
        "applies_to": {"min": "1.0.0", "max": "2.0.5"},
        "installs": "2.1.0",
        "severity": {"cvss": "7.5", "cves": ["CVE-2026-0001"]},
        "created": "2026-01-01T00:00:00Z",
        "expires": "2026-06-01T00:00:00Z",
        "evidence": {"test_report_sha256": "ab".repeat(32), "approvers": [pubs[1].0, pubs[2].0]},
        "release_notes": "Fixes the watchdog reset."
    });
    std::fs::write(d.join("tpl.json"), serde_json::to_vec_pretty(&template).unwrap()).unwrap();
    std::fs::write(d.join("app.bin"), vec![0x5au8; 100_000]).unwrap();
    let m = ok_json(
        d,
        &[
            "--json",
            "bundle",
            "create",
            "--template",
            "tpl.json",
            "--payload",
            "app.bin=app.bin",
            "--out",
            "b.fpb",
        ],
    );
    assert_eq!(m["payloads"][0]["length"], 100_000);

    let at = ["--at", "2026-03-01T00:00:00Z"];
    let (ok, v) = verify(d, &at);
    assert!(!ok);
    assert_eq!(v["error"]["code"], "unsigned");

    ok_json(d, &["--json", "bundle", "sign", "b.fpb", "--key", "rel1.pem"]);
    let (ok, v) = verify(d, &at);
    assert!(!ok);
    assert_eq!(v["error"]["code"], "threshold_not_met");

    ok_json(d, &["--json", "bundle", "sign", "b.fpb", "--key", "rel2.pem"]);
    let (ok, v) = verify(d, &at);
    assert!(ok, "{v}");
    assert_eq!(v["valid"], true);
    assert_eq!(v["rule"]["rule"], "valid");
    assert!(v["checks"].as_array().unwrap().iter().all(|c| c["ok"] == true));

    // Text output and exit status agree.
    let out = fp(
        d,
        &["bundle", "verify", "b.fpb", "--trust", "trust.json", "--at", "2026-03-01T00:00:00Z"],
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("VALID"));

    let info = ok_json(d, &["--json", "bundle", "inspect", "b.fpb"]);
    assert_eq!(info["signatures"].as_array().unwrap().len(), 2);
    assert_eq!(info["manifest"]["installs"], "2.1.0");

    // Expired: refused online, accepted under offline grace with the rule named.
    let (ok, v) = verify(d, &["--at", "2026-06-10T00:00:00Z"]);
    assert!(!ok);
    assert_eq!(v["error"]["code"], "expired");
    let (ok, v) = verify(
        d,
        &[
            "--at",
            "2026-06-10T00:00:00Z",
            "--last-online",
            "2026-05-30T00:00:00Z",
            "--grace-days",
            "14",
        ],
    );
    assert!(ok, "{v}");
    assert_eq!(v["rule"]["rule"], "offline_grace");
    assert_eq!(v["rule"]["last_online_verification"], "2026-05-30T00:00:00Z");
    // A grace period out of any sane range is refused with advice, not a panic (exit 1, not 101).
    let out = fp(
        d,
        &[
            "bundle",
            "verify",
            "b.fpb",
            "--trust",
            "trust.json",
            "--last-online",
            "2026-05-30T00:00:00Z",
            "--grace-days",
            "9223372036854775807",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("out of range"));

    // One flipped payload byte: refused with the specific reason.
    let mut bytes = std::fs::read(d.join("b.fpb")).unwrap();
    let n = bytes.len() - 10;
    bytes[n] ^= 0xff;
    std::fs::write(d.join("b.fpb"), bytes).unwrap();
    let (ok, v) = verify(d, &at);
    assert!(!ok);
    assert_eq!(v["error"]["code"], "payload_hash_mismatch");
}

#[test]
fn bad_key_files_and_missing_bundles_fail_with_advice() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("k.pem"), "not a key").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.join("k.pem"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = fp(d, &["bundle", "sign", "nothing.fpb", "--key", "k.pem"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("keys generate"), "{err}");
    let out = fp(d, &["bundle", "inspect", "nothing.fpb"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing.fpb"));
}

#[test]
fn a_downgrade_is_refused_until_two_rollback_approvers_sign_it() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut pubs = Vec::new();
    for name in ["root", "rel", "rb1", "rb2"] {
        let v = ok_json(d, &["--json", "keys", "generate", "--out", &format!("{name}.pem")]);
        pubs.push((
            v["key_id"].as_str().unwrap().to_string(),
            v["public_key"].as_str().unwrap().to_string(),
        ));
    }
    ok_json(
        d,
        &[
            "--json",
            "keys",
            "trust-init",
            "--out",
            "trust.json",
            "--key",
            &format!("root={}", pubs[0].1),
            "--key",
            &format!("release={}", pubs[1].1),
            "--key",
            &format!("rollback={}", pubs[2].1),
            "--key",
            &format!("rollback={}", pubs[3].1),
            "--threshold",
            "rollback=2",
            "--sign",
            "root.pem",
        ],
    );
    let template = serde_json::json!({
        "bundle_id": "acme-s100-rollback-1.5.0",
        "bundle_version": 1,
        "target": {"vendor": "Acme", "model": "S-100", "hardware_revision": {}},
        "applies_to": {"min": "2.0.0", "max": "2.0.0"},
        "installs": "1.5.0",
        "severity": {"cves": []},
        "created": "2026-01-01T00:00:00Z",
        "expires": "2026-06-01T00:00:00Z",
        "evidence": {"test_report_sha256": "cd".repeat(32), "approvers": []},
        "release_notes": "Back to 1.5.0: 2.0.0 drains the battery."
    });
    std::fs::write(d.join("tpl.json"), template.to_string()).unwrap();
    std::fs::write(d.join("fw.bin"), b"older firmware").unwrap();
    ok_json(
        d,
        &[
            "--json",
            "bundle",
            "create",
            "--template",
            "tpl.json",
            "--payload",
            "fw.bin=fw.bin",
            "--out",
            "b.fpb",
        ],
    );
    ok_json(d, &["--json", "bundle", "sign", "b.fpb", "--key", "rel.pem"]);

    let check = |approval: bool| {
        let mut args = vec![
            "--json",
            "bundle",
            "check-device",
            "b.fpb",
            "--trust",
            "trust.json",
            "--vendor",
            "Acme",
            "--model",
            "S-100",
            "--installed",
            "2.0.0",
            "--at",
            "2026-03-01T00:00:00Z",
        ];
        if approval {
            args.extend(["--approval", "approval.json"]);
        }
        fp(d, &args)
    };
    let out = check(false);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("downgrade"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let approve = |key: &str| {
        ok_json(
            d,
            &[
                "--json",
                "bundle",
                "approve-rollback",
                "--out",
                "approval.json",
                "--key",
                key,
                "--vendor",
                "Acme",
                "--model",
                "S-100",
                "--from",
                "2.0.0",
                "--to",
                "1.5.0",
                "--bundle-id",
                "acme-s100-rollback-1.5.0",
                "--reason",
                "battery drain",
                "--expires",
                "2026-12-01T00:00:00Z",
            ],
        )
    };
    approve("rb1.pem");
    let out = check(true);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("requires 2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let a = approve("rb2.pem");
    assert_eq!(a["signatures"].as_array().unwrap().len(), 2);
    let out = check(true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["downgrade"], true);
    assert_eq!(v["rollback_approved_by"].as_array().unwrap().len(), 2);
}

#[test]
fn signing_keys_kept_in_the_os_keyring_sign_bundles_and_never_touch_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let tag = format!("{}", std::process::id());
    let name = |k: &str| format!("{k}-{tag}");
    let mut pubs = Vec::new();
    for k in ["root", "rel1", "rel2"] {
        let v = ok_json(d, &["--json", "keys", "generate", "--keyring", &name(k)]);
        pubs.push(v["public_key"].as_str().unwrap().to_string());
    }
    let spec = |k: &str| format!("keyring:{}", name(k));
    ok_json(
        d,
        &[
            "--json",
            "keys",
            "trust-init",
            "--out",
            "trust.json",
            "--key",
            &format!("root={}:root", pubs[0]),
            "--key",
            &format!("release={}:a", pubs[1]),
            "--key",
            &format!("release={}:b", pubs[2]),
            "--threshold",
            "release=2",
            "--sign",
            &spec("root"),
        ],
    );
    let rel_ids: Vec<String> = ["rel1", "rel2"]
        .iter()
        .map(|k| {
            ok_json(d, &["--json", "keys", "public", "--key", &spec(k)])["key_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let template = serde_json::json!({
        "bundle_id": "kr-1.1.0", "bundle_version": 1,
        "target": {"vendor": "Acme", "model": "S-100", "hardware_revision": {}},
        "applies_to": {"min": "1.0.0", "max": "1.0.9"}, "installs": "1.1.0",
        "severity": {"cves": []},
        "created": "2026-01-01T00:00:00Z", "expires": "2026-06-01T00:00:00Z",
        "evidence": {"test_report_sha256": "cd".repeat(32), "approvers": rel_ids},
        "release_notes": "keyring-signed"
    });
    std::fs::write(d.join("tpl.json"), serde_json::to_vec(&template).unwrap()).unwrap();
    std::fs::write(d.join("app.bin"), vec![7u8; 5000]).unwrap();
    ok_json(
        d,
        &[
            "--json",
            "bundle",
            "create",
            "--template",
            "tpl.json",
            "--payload",
            "app.bin=app.bin",
            "--out",
            "b.fpb",
        ],
    );
    for k in ["rel1", "rel2"] {
        ok_json(d, &["--json", "bundle", "sign", "b.fpb", "--key", &spec(k)]);
    }
    let (ok, v) = verify(d, &["--at", "2026-03-01T00:00:00Z"]);
    assert!(ok, "{v:#}");

    // A missing keyring key is a clear error.
    let out = fp(d, &["bundle", "sign", "b.fpb", "--key", "keyring:no-such-key"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("signing-key/no-such-key"));

    // Only names reach the data directory, never key bytes.
    let secret =
        fp(d, &["credentials", "get", &format!("signing-key/{}", name("rel1")), "--reveal"]);
    assert!(secret.status.success(), "{}", String::from_utf8_lossy(&secret.stderr));
    let secret = String::from_utf8_lossy(&secret.stdout).trim().to_string();
    assert_eq!(secret.len(), 64, "a hex ed25519 key");
    let names = fp(d, &["credentials", "list"]);
    assert!(
        String::from_utf8_lossy(&names.stdout).contains(&format!("signing-key/{}", name("rel1")))
    );
    for entry in std::fs::read_dir(d).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("PRIVATE KEY"), "{} holds a private key", path.display());
        assert!(!text.contains(&secret), "{} holds the keyring key", path.display());
    }
}

#[test]
fn bundle_create_places_esp_payloads_at_their_flash_offsets() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let template = serde_json::json!({
        "bundle_id": "acme-esp-1.1.0",
        "bundle_version": 1,
        "target": {"vendor": "Acme", "model": "E-32", "hardware_revision": {}},
        "applies_to": {"min": "1.0.0", "max": "1.0.9"},
        "installs": "1.1.0",
        "severity": {"cvss": "5.0", "cves": []},
        "created": "2026-01-01T00:00:00Z",
        "expires": "2027-01-01T00:00:00Z",
        "evidence": {"test_report_sha256": "ab".repeat(32), "approvers": []},
        "release_notes": "ESP32 application and partition table."
    });
    std::fs::write(d.join("tpl.json"), serde_json::to_vec_pretty(&template).unwrap()).unwrap();
    std::fs::write(d.join("app.bin"), vec![0xe9u8; 4096]).unwrap();
    std::fs::write(d.join("parts.bin"), vec![0xaau8; 3072]).unwrap();
    let create = |extra: &[&str]| {
        let mut args = vec![
            "--json",
            "bundle",
            "create",
            "--template",
            "tpl.json",
            "--payload",
            "app=app.bin",
            "--payload",
            "parts=parts.bin",
            "--format",
            "app=esp",
            "--format",
            "parts=esp",
            "--out",
            "esp.fpb",
        ];
        args.extend_from_slice(extra);
        fp(d, &args)
    };
    let out = create(&["--offset", "app=0x10000", "--offset", "parts=32768"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["payloads"][0]["format"], "esp");
    assert_eq!(m["payloads"][0]["flash_offset"], 0x10000);
    assert_eq!(m["payloads"][1]["flash_offset"], 0x8000);

    // An offset for a payload that is not there, or that is not a number: refused, saying why.
    let out = create(&["--offset", "app=0x10000", "--offset", "boot=0x1000"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a --payload"));
    let out = create(&["--offset", "app=ten", "--offset", "parts=0x8000"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an offset"));
}
