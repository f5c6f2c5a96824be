//! The signed catalog listing through the real binaries: a release engineer signs it with
//! `fieldpatch bundle sign-listing`, the inventory publishes it with `fieldpatch-server admin
//! publish-listing`, and a laptop whose trust store names catalog keys holds the server to it:
//!
//! - a server serving an older listing than one already accepted (a freeze), or none at all, is
//!   refused and the laptop's catalog stays as it was;
//! - a bundle the listing does not name, or names with another hash (mix and match), is refused
//!   and not stored, while the listed ones are;
//! - an expired listing is refused at sync;
//! - a bundle published to some sites only is listed with those sites: a laptop whose technician
//!   is not assigned to one of them syncs without it, and a laptop that holds it plans it only
//!   for a visit at one of them.

use crate::sync_cli::{Laptop, Server, admin, enrol, new_laptop, serve};
use crate::trust::{Doc, admin_refused, published, serve_anyway, sync_error};
use fieldpatch_e2e::kit::{BundleSpec, Kit};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// An inventory with a trust store naming a catalog key, one published bundle and a listing
/// (version 1) naming it; a laptop that synced once.
struct Site {
    _tmp: tempfile::TempDir,
    server_data: PathBuf,
    laptop: Laptop,
    kit: Kit,
    _server: Server,
    /// The listing first published.
    v1: PathBuf,
    /// The first bundle file's bytes (listed), as published.
    a: Vec<u8>,
}

fn spec<'a>(id: &'a str, installs: &'a str, payload: &'a [u8]) -> BundleSpec<'a> {
    BundleSpec {
        id,
        vendor: "Lab",
        model: "sensor",
        applies: ("1.0.0", "1.9.9"),
        installs,
        cvss: "8.1",
        format: "raw",
        payload,
    }
}

/// `admin publish` of the kit's bundle `id` (file `bundle`) as `version`.
fn publish(site_data: &Path, kit: &Kit, id: &str, version: &str, bundle: &Path) {
    publish_to(site_data, kit, id, version, bundle, &[]);
}

/// `admin publish` to `sites` only (none: every site).
fn publish_to(site_data: &Path, kit: &Kit, id: &str, version: &str, bundle: &Path, sites: &[&str]) {
    let manifest = kit.dir.join(format!("{id}.tpl.json"));
    let mut args = vec![
        "publish",
        "--bundle-id",
        id,
        "--version",
        version,
        "--manifest",
        manifest.to_str().unwrap(),
        "--bundle",
        bundle.to_str().unwrap(),
    ];
    for site in sites {
        args.extend(["--site", site]);
    }
    admin(site_data, &args, None);
}

fn sha256_of(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// Every file of a folder with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())
        })
        .collect()
}

fn site() -> Site {
    let tmp = tempfile::tempdir().unwrap();
    let server_data = tmp.path().join("server");
    let laptop = new_laptop(tmp.path());
    let token = enrol(&laptop, &server_data, "alice");
    let kit_dir = tmp.path().join("kit");
    std::fs::create_dir_all(&kit_dir).unwrap();
    let kit = Kit::with_catalog_key(&kit_dir);
    let a = kit.bundle(&spec("lab-sensor-2.0.0", "2.0.0", &[1u8; 2048]));
    publish(&server_data, &kit, "lab-sensor-2.0.0", "1", &a);
    admin(&server_data, &["publish-trust", kit.trust.to_str().unwrap()], None);
    let v1 = kit.sign_listing(1, "listing-v1.json", &[]);
    let out = admin(&server_data, &["publish-listing", v1.to_str().unwrap()], None);
    assert!(out.contains("catalog listing version 1 published"), "{out}");
    let (server, url) = serve(&server_data);
    laptop.run(&["sync", "login", "--server", &url], &format!("{token}\n"));
    let text = laptop.ok(&["sync"]);
    assert!(!text.contains("not usable"), "{text}");
    let catalog = laptop.data.join("catalog");
    assert!(catalog.join(format!("{}.fpb", sha256_of(&a))).exists());
    let kept: serde_json::Value =
        serde_json::from_slice(&std::fs::read(catalog.join("listing.json")).unwrap()).unwrap();
    assert_eq!(kept["listing"]["version"], 1);
    let a = std::fs::read(&a).unwrap();
    Site { _tmp: tmp, server_data, laptop, kit, _server: server, v1, a }
}

impl Site {
    fn catalog(&self) -> PathBuf {
        self.laptop.data.join("catalog")
    }

    /// `fieldpatch plan` over the synced catalog for one sensor at 1.0.0.
    fn plan(&self) -> String {
        let mut record = fieldpatch_testkit::site::record(
            "d1",
            "Lab",
            "sensor",
            fieldpatch_core::plan::DeviceAddress::Udp {
                addr: format!("127.0.0.1:{}", fieldpatch_e2e::free_port()),
            },
        );
        record.identity.firmware_version = Some(fieldpatch_core::model::Version::new(1, 0, 0, 0));
        let devices = self.laptop.data.join("plan-devices.json");
        std::fs::write(&devices, serde_json::to_vec(&[record]).unwrap()).unwrap();
        let catalog = self.catalog();
        let trust = self.laptop.data.join("trust.json");
        self.laptop.ok(&[
            "plan",
            "--devices",
            devices.to_str().unwrap(),
            "--catalog",
            catalog.to_str().unwrap(),
            "--trust",
            trust.to_str().unwrap(),
            "--identify-timeout",
            "1",
        ])
    }
}

#[tokio::test]
async fn a_server_serving_an_older_listing_is_refused_and_the_catalog_stays() {
    let s = site();
    assert!(s.plan().contains("patch: 1.0.0 -> 2.0.0 (lab-sensor-2.0.0)"), "{}", s.plan());

    // A newer bundle and a newer listing naming it: synced.
    let b = s.kit.bundle(&spec("lab-sensor-2.1.0", "2.1.0", &[2u8; 2048]));
    publish(&s.server_data, &s.kit, "lab-sensor-2.1.0", "1", &b);
    let v2 = s.kit.sign_listing(2, "listing-v2.json", &[]);
    admin(&s.server_data, &["publish-listing", v2.to_str().unwrap()], None);
    s.laptop.ok(&["sync"]);
    assert!(s.catalog().join(format!("{}.fpb", sha256_of(&b))).exists());
    assert!(s.plan().contains("patch: 1.0.0 -> 2.1.0 (lab-sensor-2.1.0)"), "{}", s.plan());
    let before = snapshot(&s.catalog());
    let trust_before = std::fs::read(s.laptop.data.join("trust.json")).unwrap();

    // The inventory will not go back to version 1 ...
    let err = admin_refused(&s.server_data, &["publish-listing", s.v1.to_str().unwrap()]);
    assert!(err.contains("catalog_listing_not_newer"), "{err}");
    // ... but a compromised one (or one restored from an old backup) serves it: a freeze on the
    // older catalog. Refused; the laptop's catalog and trust store stay as they were.
    serve_anyway(&s.server_data, Doc::Listing, &s.v1).await;
    let (code, v, err) = sync_error(&s.laptop);
    assert_eq!(code, Some(1), "{v} {err}");
    assert_eq!(v["error"]["code"], "catalog_listing_rollback", "{v}");
    assert!(err.contains("freeze or rollback"), "{err}");
    assert!(err.contains("the local catalog and trust store are unchanged"), "{err}");
    assert_eq!(snapshot(&s.catalog()), before, "the catalog changed");
    assert_eq!(std::fs::read(s.laptop.data.join("trust.json")).unwrap(), trust_before);
    assert!(s.plan().contains("patch: 1.0.0 -> 2.1.0 (lab-sensor-2.1.0)"), "{}", s.plan());

    // Nor can the server strip the listing: the trust store says one is needed.
    let url = format!("sqlite://{}", s.server_data.join("inventory.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("DELETE FROM catalog_listing").execute(&pool).await.unwrap();
    pool.close().await;
    let (code, v, _) = sync_error(&s.laptop);
    assert_eq!((code, v["error"]["code"].as_str()), (Some(1), Some("catalog_listing_missing")));
    assert_eq!(snapshot(&s.catalog()), before, "the catalog changed");
}

#[tokio::test]
async fn a_bundle_the_listing_does_not_name_is_not_stored() {
    let s = site();
    // Published after the listing was signed: not in it. And the listed bundle's id with another
    // payload (another hash): mixed in under a listed name.
    let b = s.kit.bundle(&spec("lab-sensor-2.1.0", "2.1.0", &[2u8; 2048]));
    publish(&s.server_data, &s.kit, "lab-sensor-2.1.0", "1", &b);
    let a_hash = hex::encode(Sha256::digest(&s.a));
    let other_a = s.kit.bundle(&spec("lab-sensor-2.0.0", "2.0.0", &[3u8; 2048]));
    assert_ne!(sha256_of(&other_a), a_hash);
    publish(&s.server_data, &s.kit, "lab-sensor-2.0.0", "2", &other_a);

    // Sync takes the listed bundle and refuses the others, by name and hash; neither is stored.
    let text = s.laptop.ok(&["sync"]);
    assert!(text.contains("pulled 0 sites, 0 devices, 0 work orders, 3 catalog entries"), "{text}");
    assert!(
        text.contains(&format!(
            "bundle lab-sensor-2.1.0 (sha256 {}) is not in the signed catalog listing",
            sha256_of(&b)
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "bundle lab-sensor-2.0.0 (sha256 {}) is not in the signed catalog listing (it lists lab-sensor-2.0.0 with sha256 {a_hash})",
            sha256_of(&other_a)
        )),
        "{text}"
    );
    let stored: Vec<String> = snapshot(&s.catalog()).into_keys().collect();
    assert_eq!(stored, [format!("{a_hash}.fpb"), "listing.json".to_string()]);
    let plan = s.plan();
    assert!(plan.contains("patch: 1.0.0 -> 2.0.0 (lab-sensor-2.0.0)"), "{plan}");
    assert!(!plan.contains("2.1.0"), "{plan}");

    // A bundle file put into the catalog folder by hand is not in the listing either.
    std::fs::copy(&b, s.catalog().join(format!("{}.fpb", sha256_of(&b)))).unwrap();
    let plan = s.plan();
    assert!(!plan.contains("-> 2.1.0"), "an unlisted bundle was planned: {plan}");

    // A listing may only name published bundles.
    let unpublished = s.kit.bundle(&spec("lab-sensor-2.2.0", "2.2.0", &[4u8; 2048]));
    let v2 = s.kit.sign_listing(2, "listing-v2.json", &[]);
    let err = admin_refused(&s.server_data, &["publish-listing", v2.to_str().unwrap()]);
    assert!(err.contains("listed_bundle_missing"), "{err}");
    std::fs::remove_file(&unpublished).unwrap();

    // Once a listing names it, the next sync stores it (the kit's folder holds the listed
    // payload of lab-sensor-2.0.0 again, and lab-sensor-2.1.0).
    std::fs::write(s.kit.catalog.join("lab-sensor-2.0.0.fpb"), &s.a).unwrap();
    let v2 = s.kit.sign_listing(2, "listing-v2.json", &[]);
    admin(&s.server_data, &["publish-listing", v2.to_str().unwrap()], None);
    let text = s.laptop.ok(&["sync"]);
    assert!(text.contains(&sha256_of(&other_a)), "the other payload stays refused: {text}");
    assert!(s.catalog().join(format!("{}.fpb", sha256_of(&b))).exists());
    assert!(s.plan().contains("patch: 1.0.0 -> 2.1.0 (lab-sensor-2.1.0)"), "{}", s.plan());
}

#[tokio::test]
async fn an_expired_listing_is_refused_at_sync() {
    let s = site();
    let before = snapshot(&s.catalog());
    // A listing valid for two seconds, still served once it has expired.
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let short = s.kit.sign_listing(2, "listing-short.json", &["--expires", &soon]);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let err = admin_refused(&s.server_data, &["publish-listing", short.to_str().unwrap()]);
    assert!(err.contains("catalog_listing_expired"), "{err}");
    assert!(
        published(&s.server_data, Doc::Listing).await.is_some_and(|d| d.contains("\"version\":1"))
    );
    serve_anyway(&s.server_data, Doc::Listing, &short).await;
    let (code, v, err) = sync_error(&s.laptop);
    assert_eq!(code, Some(1), "{v} {err}");
    assert_eq!(v["error"]["code"], "catalog_listing_expired", "{v}");
    assert!(err.contains("the catalog listing expired on"), "{err}");
    assert_eq!(snapshot(&s.catalog()), before, "the catalog changed");
}

#[tokio::test]
async fn a_bundle_for_some_sites_is_listed_with_them_and_reaches_only_their_technicians() {
    let s = site();
    let sites = s.kit.dir.join("sites.csv");
    std::fs::write(&sites, "id,name,address\nnorth,North plant,\nsouth,South plant,\n").unwrap();
    admin(&s.server_data, &["import-sites", sites.to_str().unwrap()], None);
    admin(&s.server_data, &["assign", "--technician", "alice", "--site", "south"], None);
    let b = s.kit.bundle(&spec("lab-sensor-2.1.0", "2.1.0", &[2u8; 2048]));
    publish_to(&s.server_data, &s.kit, "lab-sensor-2.1.0", "1", &b, &["north"]);

    // A listing naming it for every site, or for other sites, is not published.
    for extra in [&[][..], &["--sites", "lab-sensor-2.1.0=north,south"][..]] {
        let wrong = s.kit.sign_listing(2, "listing-wrong.json", extra);
        let err = admin_refused(&s.server_data, &["publish-listing", wrong.to_str().unwrap()]);
        assert!(err.contains("listed_bundle_sites_differ"), "{err}");
        assert!(err.contains("published to sites north"), "{err}");
    }
    // A key that names no bundle of the folder is an error, not a bundle for every site.
    let (catalog, trust) = (s.kit.catalog.to_str().unwrap(), s.kit.trust.to_str().unwrap());
    let out = fieldpatch_e2e::kit::fieldpatch(
        &s.kit.dir,
        &s.kit.dir,
        &[
            "bundle",
            "sign-listing",
            "--catalog",
            catalog,
            "--trust",
            trust,
            "--key",
            "catalog.pem",
            "--sites",
            "lab-sensr-2.1.0=north",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no bundle in the folder"), "{err}");

    let v2 = s.kit.sign_listing(2, "listing-v2.json", &["--sites", "lab-sensor-2.1.0=north"]);
    let signed: serde_json::Value = serde_json::from_slice(&std::fs::read(&v2).unwrap()).unwrap();
    let bundles = signed["listing"]["bundles"].as_array().unwrap();
    let sites_of =
        |id: &str| bundles.iter().find(|b| b["bundle_id"] == id).map(|b| b.get("sites").cloned());
    assert_eq!(sites_of("lab-sensor-2.1.0"), Some(Some(serde_json::json!(["north"]))));
    assert_eq!(sites_of("lab-sensor-2.0.0"), Some(None), "a bundle for every site names none");
    admin(&s.server_data, &["publish-listing", v2.to_str().unwrap()], None);

    // Alice works at the south plant: her pull has no 2.1.0, and the listing does not expect it.
    let text = s.laptop.ok(&["sync"]);
    assert!(!text.contains("not usable") && !text.contains("refused"), "{text}");
    let kept: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.catalog().join("listing.json")).unwrap()).unwrap();
    assert_eq!(kept["listing"]["version"], 2);
    assert!(!s.catalog().join(format!("{}.fpb", sha256_of(&b))).exists());

    // Assigned to the north plant too, her next pull brings it; a plan for a visit that names
    // no site leaves it out (it is for the north plant only).
    admin(&s.server_data, &["assign", "--technician", "alice", "--site", "north"], None);
    s.laptop.ok(&["sync"]);
    assert!(s.catalog().join(format!("{}.fpb", sha256_of(&b))).exists());
    let plan = s.plan();
    assert!(plan.contains("patch: 1.0.0 -> 2.0.0 (lab-sensor-2.0.0)"), "{plan}");
    assert!(!plan.contains("-> 2.1.0"), "a bundle for the north plant was planned: {plan}");
}
