//! The trust root and the clock hold through the real binaries (`fieldpatch-server` on loopback,
//! `fieldpatch` with its own data dir and the real Secret Service):
//!
//! - a trust store the server publishes replaces the laptop's pinned one only as a rotation signed
//!   by a threshold of the current root with a higher version; anything else is refused with its
//!   code and the pinned file stays byte for byte;
//! - the sync token never travels over plain HTTP to another host;
//! - a clock set back past the latest trusted time stops expiry decisions, and the visit log says
//!   so.

use crate::sync_cli::{Laptop, admin, new_laptop, serve};
use fieldpatch_e2e::kit::Kit;
use std::path::Path;

/// `fieldpatch keys generate` in `dir`: (key file name, public key hex).
fn generate(laptop: &Laptop, dir: &Path, name: &str) -> String {
    let out = laptop.ok(&[
        "--json",
        "keys",
        "generate",
        "--out",
        dir.join(format!("{name}.pem")).to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["public_key"].as_str().unwrap().to_string()
}

/// `fieldpatch keys trust-init` in `dir` with `args`, written to `out`.
fn trust_init(laptop: &Laptop, dir: &Path, out: &str, args: &[&str]) -> std::path::PathBuf {
    let path = dir.join(out);
    let mut all = vec!["keys", "trust-init", "--out", path.to_str().unwrap()];
    all.extend_from_slice(args);
    laptop.ok(&all);
    path
}

fn sync_error(laptop: &Laptop) -> (Option<i32>, serde_json::Value, String) {
    let out = laptop.run(&["--json", "sync"], "");
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code(), v, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_pulled_trust_store_replaces_the_pinned_one_only_as_a_signed_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    let server_data = tmp.path().join("server");
    let laptop = new_laptop(tmp.path());
    let token = crate::sync_cli::enrol(&laptop, &server_data, "alice");
    let kit_dir = tmp.path().join("kit");
    std::fs::create_dir_all(&kit_dir).unwrap();
    let kit = Kit::new(&kit_dir);
    admin(&server_data, &["trust-store", kit.trust.to_str().unwrap()], None);
    let (_server, url) = serve(&server_data);
    laptop.run(&["sync", "login", "--server", &url], &format!("{token}\n"));
    laptop.ok(&["sync"]);
    let pinned_path = laptop.data.join("trust.json");
    let pinned = std::fs::read(&pinned_path).unwrap();
    let version = |bytes: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(bytes).unwrap()["store"]["version"].clone()
    };
    assert_eq!(version(&pinned), 1);

    // An attacker's (or a mistaken) root: a higher version signed only by a key the laptop does
    // not trust. Refused, and the pinned store is untouched.
    let evil = generate(&laptop, &kit_dir, "evil");
    let forged = trust_init(
        &laptop,
        &kit_dir,
        "forged.json",
        &[
            "--version",
            "2",
            "--key",
            &format!("root,release={evil}:mallory"),
            "--sign",
            kit_dir.join("evil.pem").to_str().unwrap(),
        ],
    );
    admin(&server_data, &["trust-store", forged.to_str().unwrap()], None);
    let (code, v, err) = sync_error(&laptop);
    assert_eq!(code, Some(1), "{v} {err}");
    assert_eq!(v["error"]["code"], "trust_store_refused", "{v}");
    assert!(err.contains("pinned one stays in force"), "{err}");
    assert_eq!(std::fs::read(&pinned_path).unwrap(), pinned, "the pinned store changed");

    // Signed by the current root but not newer: refused too (no silent swap at one version).
    let rel = generate(&laptop, &kit_dir, "rel3");
    let root_pub: serde_json::Value = serde_json::from_str(&laptop.ok(&[
        "--json",
        "keys",
        "public",
        "--key",
        kit_dir.join("root.pem").to_str().unwrap(),
    ]))
    .unwrap();
    let root_pub = root_pub["public_key"].as_str().unwrap().to_string();
    let same_version = trust_init(
        &laptop,
        &kit_dir,
        "same.json",
        &[
            "--key",
            &format!("root={root_pub}:root"),
            "--key",
            &format!("release={rel}:carol"),
            "--sign",
            kit_dir.join("root.pem").to_str().unwrap(),
        ],
    );
    admin(&server_data, &["trust-store", same_version.to_str().unwrap()], None);
    let (code, v, _) = sync_error(&laptop);
    assert_eq!((code, v["error"]["code"].as_str()), (Some(1), Some("trust_store_refused")));
    assert_eq!(std::fs::read(&pinned_path).unwrap(), pinned);

    // A real rotation: version 2 with a new root, signed by the current root and the new one.
    let new_root = generate(&laptop, &kit_dir, "root2");
    let rotation = trust_init(
        &laptop,
        &kit_dir,
        "rotation.json",
        &[
            "--version",
            "2",
            "--key",
            &format!("root={new_root}:root 2"),
            "--key",
            &format!("release={rel}:carol"),
            "--sign",
            kit_dir.join("root.pem").to_str().unwrap(),
            "--sign",
            kit_dir.join("root2.pem").to_str().unwrap(),
        ],
    );
    admin(&server_data, &["trust-store", rotation.to_str().unwrap()], None);
    laptop.ok(&["sync"]);
    let rotated = std::fs::read(&pinned_path).unwrap();
    assert_eq!(version(&rotated), 2);

    // Going back to the old store (a replay of version 1) is refused now.
    admin(&server_data, &["trust-store", kit.trust.to_str().unwrap()], None);
    let (code, v, _) = sync_error(&laptop);
    assert_eq!((code, v["error"]["code"].as_str()), (Some(1), Some("trust_store_refused")));
    assert_eq!(std::fs::read(&pinned_path).unwrap(), rotated);
}

#[test]
fn the_sync_token_never_travels_over_plain_http_to_another_host() {
    let tmp = tempfile::tempdir().unwrap();
    let laptop = new_laptop(tmp.path());
    // TEST-NET-1: nothing answers there; the refusal must come before any connection.
    let out = laptop.run(
        &["--json", "sync", "login", "--server", "http://192.0.2.10:8470"],
        "fpt_not_a_real_token\n",
    );
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "insecure_server", "{v}");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("fpt_not_a_real_token"), "the token was echoed: {text}");
    // Nothing was remembered: a later sync knows no server and no token.
    let out = laptop.run(&["sync"], "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no inventory server known"), "{err}");
    let out = laptop.run(&["--json", "sync", "--server", "http://inventory.example.invalid"], "");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "insecure_server", "{v}");
}

#[tokio::test]
async fn a_clock_set_back_stops_expiry_decisions_and_the_log_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let laptop = new_laptop(tmp.path());
    let kit_dir = tmp.path().join("kit");
    std::fs::create_dir_all(&kit_dir).unwrap();
    let kit = Kit::new(&kit_dir);
    let devices = tmp.path().join("devices.json");
    std::fs::write(&devices, "[]").unwrap();
    let plan = |json: bool| {
        let mut args = vec![
            "plan",
            "--devices",
            devices.to_str().unwrap(),
            "--catalog",
            kit.catalog.to_str().unwrap(),
            "--trust",
            kit.trust.to_str().unwrap(),
        ];
        if json {
            args.insert(0, "--json");
        }
        laptop.run(&args, "")
    };
    let out = plan(false);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The inventory's time seen at the last sync is two days ahead of this clock: the clock was
    // wound back (what reviving expired bundles would take).
    let ahead = (chrono::Utc::now() + chrono::Duration::days(2)).to_rfc3339();
    let url = format!("sqlite://{}", laptop.data.join("fieldpatch.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("INSERT OR REPLACE INTO meta (key, value) VALUES ('clock.latest_trusted_time', ?)")
        .bind(&ahead)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let out = plan(true);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "clock_behind", "{v}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("set back") && err.contains("Set the clock right"), "{err}");
    let log = laptop.ok(&["--json", "log", "show"]);
    assert!(log.contains("refused an expiry decision"), "{log}");
    laptop.ok(&["log", "verify"]);
}

#[tokio::test]
async fn a_revoked_or_expired_token_no_longer_syncs() {
    let tmp = tempfile::tempdir().unwrap();
    let server_data = tmp.path().join("server");
    let laptop = new_laptop(tmp.path());
    let token = crate::sync_cli::enrol(&laptop, &server_data, "alice");
    let (_server, url) = serve(&server_data);
    laptop.run(&["sync", "login", "--server", &url], &format!("{token}\n"));
    laptop.ok(&["sync"]);

    // Revoked (the token is read from standard input, never an argument): refused at once.
    let out = admin(&server_data, &["token", "revoke", "--stdin"], Some(&format!("{token}\n")));
    assert!(out.contains("1 token(s) revoked"), "{out}");
    let out = laptop.run(&["--json", "sync"], "");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "unauthorized", "{v}");

    // A new token works until it expires.
    let out =
        admin(&server_data, &["create-token", "--technician", "alice", "--valid-days", "30"], None);
    let fresh = out.lines().find_map(|l| l.strip_prefix("token: ")).unwrap().to_string();
    laptop.run(&["sync", "login", "--server", &url], &format!("{fresh}\n"));
    laptop.ok(&["sync"]);
    let url_db = format!("sqlite://{}", server_data.join("inventory.db").display());
    let pool = sqlx::SqlitePool::connect(&url_db).await.unwrap();
    sqlx::query("UPDATE tokens SET expires_at = ? WHERE revoked_at IS NULL")
        .bind(chrono::Utc::now() - chrono::Duration::minutes(1))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let out = laptop.run(&["--json", "sync"], "");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "unauthorized", "{v}");
    // An out-of-range lifetime is refused, not issued.
    let out = std::process::Command::new(fieldpatch_e2e::built_binary("fieldpatch-server"))
        .arg("--data-dir")
        .arg(&server_data)
        .args(["admin", "create-token", "--technician", "alice", "--valid-days", "99999"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
}
