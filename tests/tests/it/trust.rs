//! The trust root and the clock hold through the real binaries (`fieldpatch-server` on loopback,
//! `fieldpatch` with its own data dir and the real Secret Service):
//!
//! - `fieldpatch-server admin publish-trust` stores only a signed trust store valid by its own
//!   root, and then only rotations of it; anything else exits non-zero and stores nothing;
//! - a trust store a (compromised) server serves replaces the laptop's pinned one only as a
//!   rotation signed by a threshold of the current root with a higher version, not already
//!   expired; anything else is refused with its code and the pinned file stays byte for byte;
//! - an expired trust store stops bundle verification ("sync to get its rotation");
//! - the sync token never travels over plain HTTP to another host;
//! - a clock set back past the latest trusted time stops expiry decisions, and the visit log says
//!   so.

use crate::sync_cli::{Laptop, admin, new_laptop, serve};
use fieldpatch_e2e::kit::{BundleSpec, Kit};
use std::path::Path;

/// `fieldpatch-server admin ARGS` that must fail: its stderr.
pub(crate) fn admin_refused(data: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(fieldpatch_e2e::built_binary("fieldpatch-server"))
        .arg("--data-dir")
        .arg(data)
        .arg("admin")
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "admin {args:?} was not refused: {stderr}");
    stderr
}

/// A document the inventory publishes: the trust store or the catalog listing.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Doc {
    TrustStore,
    Listing,
}

/// What the inventory database in `data` holds as the published `doc`, as stored.
pub(crate) async fn published(data: &Path, doc: Doc) -> Option<String> {
    let url = format!("sqlite://{}", data.join("inventory.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let q = match doc {
        Doc::TrustStore => sqlx::query_scalar("SELECT document FROM trust_store WHERE id = 1"),
        Doc::Listing => sqlx::query_scalar("SELECT document FROM catalog_listing WHERE id = 1"),
    };
    let row: Option<String> = q.fetch_optional(&pool).await.unwrap();
    pool.close().await;
    row
}

/// Make the inventory in `data` serve the JSON file `path` as `doc`, past the checks of `admin`:
/// what a compromised server (or one restored from an old backup) does.
pub(crate) async fn serve_anyway(data: &Path, doc: Doc, path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let url = format!("sqlite://{}", data.join("inventory.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let q = match doc {
        Doc::TrustStore => sqlx::query(
            "INSERT INTO trust_store (id, document, updated_at) VALUES (1, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET document = excluded.document",
        ),
        Doc::Listing => sqlx::query(
            "INSERT INTO catalog_listing (id, document, updated_at) VALUES (1, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET document = excluded.document",
        ),
    };
    q.bind(value.to_string()).bind(chrono::Utc::now()).execute(&pool).await.unwrap();
    pool.close().await;
}

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

/// `fieldpatch keys public --key FILE`: the public key hex.
fn public(laptop: &Laptop, key: &Path) -> String {
    let out = laptop.ok(&["--json", "keys", "public", "--key", key.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["public_key"].as_str().unwrap().to_string()
}

pub(crate) fn sync_error(laptop: &Laptop) -> (Option<i32>, serde_json::Value, String) {
    let out = laptop.run(&["--json", "sync"], "");
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code(), v, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn publish_trust_refuses_what_is_not_a_store_or_a_rotation_and_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server_data = tmp.path().join("server");
    let laptop = new_laptop(tmp.path());
    // The server's data directory and database exist (as for any inventory).
    admin(&server_data, &["server-key"], None);
    let kit_dir = tmp.path().join("kit");
    std::fs::create_dir_all(&kit_dir).unwrap();
    let kit = Kit::new(&kit_dir);

    // Any JSON is not a trust store.
    let not_a_store = kit_dir.join("not-a-store.json");
    std::fs::write(&not_a_store, r#"{"keys": [], "threshold": 1}"#).unwrap();
    let err = admin_refused(&server_data, &["publish-trust", not_a_store.to_str().unwrap()]);
    assert!(err.contains("the trust store was not published"), "{err}");
    assert!(err.contains("invalid_trust_store"), "{err}");
    let garbage = kit_dir.join("garbage.json");
    std::fs::write(&garbage, "this is not JSON").unwrap();
    admin_refused(&server_data, &["publish-trust", garbage.to_str().unwrap()]);
    assert_eq!(published(&server_data, Doc::TrustStore).await, None, "something was stored");

    // A valid store is published.
    let out = admin(&server_data, &["publish-trust", kit.trust.to_str().unwrap()], None);
    assert!(out.contains("trust store version 1 published"), "{out}");
    let stored = published(&server_data, Doc::TrustStore).await.expect("published");

    // Not rotations of it: a higher version signed only by a key the published store does not
    // trust; the same version with other keys. Refused, and the published store stays.
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
    let err = admin_refused(&server_data, &["publish-trust", forged.to_str().unwrap()]);
    assert!(err.contains("not signed by any current root key"), "{err}");
    let root_pub = public(&laptop, &kit_dir.join("root.pem"));
    let rel = generate(&laptop, &kit_dir, "rel3");
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
    let err = admin_refused(&server_data, &["publish-trust", same_version.to_str().unwrap()]);
    assert!(err.contains("trust_store_rollback"), "{err}");
    assert_eq!(published(&server_data, Doc::TrustStore).await.as_ref(), Some(&stored));

    // A real rotation is published; the old version after it is not.
    let rotation = trust_init(
        &laptop,
        &kit_dir,
        "rotation.json",
        &[
            "--version",
            "2",
            "--key",
            &format!("root={root_pub}:root"),
            "--key",
            &format!("release={rel}:carol"),
            "--sign",
            kit_dir.join("root.pem").to_str().unwrap(),
        ],
    );
    let out = admin(&server_data, &["publish-trust", rotation.to_str().unwrap()], None);
    assert!(out.contains("trust store version 2 published (replaces version 1)"), "{out}");
    let rotated = published(&server_data, Doc::TrustStore).await.expect("published");
    let err = admin_refused(&server_data, &["publish-trust", kit.trust.to_str().unwrap()]);
    assert!(err.contains("trust_store_rollback"), "{err}");
    assert_eq!(published(&server_data, Doc::TrustStore).await, Some(rotated));
}

#[tokio::test]
async fn a_pulled_trust_store_replaces_the_pinned_one_only_as_a_signed_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    let server_data = tmp.path().join("server");
    let laptop = new_laptop(tmp.path());
    let token = crate::sync_cli::enrol(&laptop, &server_data, "alice");
    let kit_dir = tmp.path().join("kit");
    std::fs::create_dir_all(&kit_dir).unwrap();
    let kit = Kit::new(&kit_dir);
    admin(&server_data, &["publish-trust", kit.trust.to_str().unwrap()], None);
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
    // not trust. The server would not publish it; a compromised one serves it anyway. Refused,
    // and the pinned store is untouched.
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
    serve_anyway(&server_data, Doc::TrustStore, &forged).await;
    let (code, v, err) = sync_error(&laptop);
    assert_eq!(code, Some(1), "{v} {err}");
    assert_eq!(v["error"]["code"], "trust_store_refused", "{v}");
    assert!(err.contains("pinned one stays in force"), "{err}");
    assert_eq!(std::fs::read(&pinned_path).unwrap(), pinned, "the pinned store changed");

    // Signed by the current root but not newer: refused too (no silent swap at one version).
    let rel = generate(&laptop, &kit_dir, "rel3");
    let root_pub = public(&laptop, &kit_dir.join("root.pem"));
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
    serve_anyway(&server_data, Doc::TrustStore, &same_version).await;
    let (code, v, _) = sync_error(&laptop);
    assert_eq!((code, v["error"]["code"].as_str()), (Some(1), Some("trust_store_refused")));
    assert_eq!(std::fs::read(&pinned_path).unwrap(), pinned);

    // A rotation that has already expired: it would stop every bundle, so it is not installed.
    let new_root = generate(&laptop, &kit_dir, "root2");
    let yesterday = (chrono::Utc::now() - chrono::Duration::days(1)).to_rfc3339();
    let stale = trust_init(
        &laptop,
        &kit_dir,
        "stale.json",
        &[
            "--version",
            "2",
            "--expires",
            &yesterday,
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
    let refused = admin_refused(&server_data, &["publish-trust", stale.to_str().unwrap()]);
    assert!(refused.contains("trust_store_expired"), "{refused}");
    serve_anyway(&server_data, Doc::TrustStore, &stale).await;
    let (code, v, err) = sync_error(&laptop);
    assert_eq!((code, v["error"]["code"].as_str()), (Some(1), Some("trust_store_refused")));
    assert!(err.contains("the trust store expired on"), "{err}");
    assert_eq!(std::fs::read(&pinned_path).unwrap(), pinned);

    // A real rotation: a new root, signed by the current root and the new one (version 3: the
    // server holds the stale version 2 it was made to serve).
    let rotation = trust_init(
        &laptop,
        &kit_dir,
        "rotation.json",
        &[
            "--version",
            "3",
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
    admin(&server_data, &["publish-trust", rotation.to_str().unwrap()], None);
    laptop.ok(&["sync"]);
    let rotated = std::fs::read(&pinned_path).unwrap();
    assert_eq!(version(&rotated), 3);

    // Going back to the old store (a replay of version 1) is refused now.
    serve_anyway(&server_data, Doc::TrustStore, &kit.trust).await;
    let (code, v, _) = sync_error(&laptop);
    assert_eq!((code, v["error"]["code"].as_str()), (Some(1), Some("trust_store_refused")));
    assert_eq!(std::fs::read(&pinned_path).unwrap(), rotated);
}

#[test]
fn an_expired_trust_store_stops_bundle_verification() {
    let tmp = tempfile::tempdir().unwrap();
    let laptop = new_laptop(tmp.path());
    let kit_dir = tmp.path().join("kit");
    std::fs::create_dir_all(&kit_dir).unwrap();
    let kit = Kit::new(&kit_dir);
    let bundle = kit.bundle(&BundleSpec {
        id: "lab-sensor-2.0.0",
        vendor: "Lab",
        model: "sensor",
        applies: ("1.0.0", "1.9.9"),
        installs: "2.0.0",
        cvss: "8.1",
        format: "raw",
        payload: &[7u8; 512],
    });
    // The same keys, re-signed with an expiry ten days out (bundles are valid for thirty).
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&kit.trust).unwrap()).unwrap();
    let mut args = vec![];
    let key_specs: Vec<String> = doc["store"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let roles: Vec<&str> =
                k["roles"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
            format!(
                "{}={}:{}",
                roles.join(","),
                k["public_key"].as_str().unwrap(),
                k["label"].as_str().unwrap()
            )
        })
        .collect();
    for spec in &key_specs {
        args.extend(["--key", spec.as_str()]);
    }
    let expires = (chrono::Utc::now() + chrono::Duration::days(10)).to_rfc3339();
    args.extend(["--expires", &expires, "--threshold", "release=2"]);
    let root = kit_dir.join("root.pem");
    args.extend(["--sign", root.to_str().unwrap()]);
    let dated = trust_init(&laptop, &kit_dir, "dated.json", &args);
    let verify = |at: &str| {
        laptop.run(
            &[
                "--json",
                "bundle",
                "verify",
                bundle.to_str().unwrap(),
                "--trust",
                dated.to_str().unwrap(),
                "--at",
                at,
            ],
            "",
        )
    };

    // Before its expiry the store vouches for the bundle, and the verdict says until when.
    let out = verify(&(chrono::Utc::now() + chrono::Duration::days(9)).to_rfc3339());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let check = v["checks"].as_array().unwrap().iter().find(|c| c["name"] == "trust_store");
    assert!(check.is_some_and(|c| c["ok"] == true), "{v}");

    // After it, verification refuses (the bundle itself would still be valid).
    let out = verify(&(chrono::Utc::now() + chrono::Duration::days(11)).to_rfc3339());
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "trust_store_expired", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("the trust store expired on ")
            && message.contains("sync to get its rotation"),
        "{message}"
    );
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
