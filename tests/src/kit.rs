//! A signing kit for end-to-end tests: keys, a trust store and signed bundles made with the real
//! `fieldpatch` binary, as a release engineer would make them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Run the built `fieldpatch` binary in `dir` with `FIELDPATCH_DATA_DIR` = `data`.
pub fn fieldpatch(dir: &Path, data: &Path, args: &[&str]) -> Output {
    Command::new(crate::built_binary("fieldpatch"))
        .args(args)
        .current_dir(dir)
        .env("FIELDPATCH_DATA_DIR", data)
        .output()
        .expect("the fieldpatch binary runs")
}

fn ok_json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = fieldpatch(dir, dir, args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// A release engineer's desk: a root key, two release keys (threshold 2) and a trust store; with
/// [`Kit::with_catalog_key`] also a catalog key (`catalog.pem`) the trust store names, which signs
/// catalog listings ([`Kit::sign_listing`]).
#[derive(Debug)]
pub struct Kit {
    pub dir: PathBuf,
    pub trust: PathBuf,
    pub catalog: PathBuf,
    release_ids: Vec<String>,
}

/// One bundle to make.
#[derive(Debug, Clone)]
pub struct BundleSpec<'a> {
    pub id: &'a str,
    pub vendor: &'a str,
    pub model: &'a str,
    pub applies: (&'a str, &'a str),
    pub installs: &'a str,
    pub cvss: &'a str,
    /// `mcuboot`, `dfu` or `raw`.
    pub format: &'a str,
    pub payload: &'a [u8],
}

impl Kit {
    pub fn new(dir: &Path) -> Kit {
        Kit::make(dir, false)
    }

    /// A kit whose trust store also names a catalog key (`catalog.pem`, threshold 1): laptops
    /// that pin it require a signed catalog listing.
    pub fn with_catalog_key(dir: &Path) -> Kit {
        Kit::make(dir, true)
    }

    fn make(dir: &Path, catalog_key: bool) -> Kit {
        let mut pubs = Vec::new();
        let names: &[&str] = if catalog_key {
            &["root", "rel1", "rel2", "catalog"]
        } else {
            &["root", "rel1", "rel2"]
        };
        for name in names {
            let v = ok_json(dir, &["--json", "keys", "generate", "--out", &format!("{name}.pem")]);
            pubs.push((
                v["key_id"].as_str().unwrap().to_string(),
                v["public_key"].as_str().unwrap().to_string(),
            ));
        }
        let keys = [
            format!("root={}:root", pubs[0].1),
            format!("release={}:alice", pubs[1].1),
            format!("release={}:bob", pubs[2].1),
        ];
        let mut args = vec!["--json", "keys", "trust-init", "--out", "trust.json"];
        for k in &keys {
            args.extend(["--key", k.as_str()]);
        }
        let catalog = pubs.get(3).map(|p| format!("catalog={}:catalog", p.1));
        if let Some(k) = &catalog {
            args.extend(["--key", k.as_str()]);
        }
        args.extend(["--threshold", "release=2", "--sign", "root.pem"]);
        ok_json(dir, &args);
        let catalog = dir.join("catalog");
        std::fs::create_dir_all(&catalog).unwrap();
        Kit {
            dir: dir.to_path_buf(),
            trust: dir.join("trust.json"),
            catalog,
            release_ids: vec![pubs[1].0.clone(), pubs[2].0.clone()],
        }
    }

    /// `fieldpatch bundle sign-listing` over the catalog folder with the catalog key, at
    /// `version`, with `extra` arguments (e.g. `--expires`); written to `out` in the kit's folder.
    pub fn sign_listing(&self, version: u64, out: &str, extra: &[&str]) -> PathBuf {
        let path = self.dir.join(out);
        let version = version.to_string();
        let mut args = vec![
            "--json",
            "bundle",
            "sign-listing",
            "--catalog",
            self.catalog.to_str().unwrap(),
            "--trust",
            self.trust.to_str().unwrap(),
            "--key",
            "catalog.pem",
            "--version",
            &version,
            "--out",
            path.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        ok_json(&self.dir, &args);
        path
    }

    /// Create and sign (2 of 2 release keys) a bundle into the catalog folder.
    pub fn bundle(&self, b: &BundleSpec<'_>) -> PathBuf {
        let now = chrono::Utc::now();
        let template = serde_json::json!({
            "bundle_id": b.id,
            "bundle_version": 1,
            "target": {"vendor": b.vendor, "model": b.model, "hardware_revision": {}},
            "applies_to": {"min": b.applies.0, "max": b.applies.1},
            "installs": b.installs,
            "severity": {"cvss": b.cvss, "cves": []},
            "created": (now - chrono::Duration::days(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "expires": (now + chrono::Duration::days(30)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "evidence": {"test_report_sha256": "ab".repeat(32), "approvers": self.release_ids},
            "release_notes": format!("{} for {}", b.installs, b.model),
        });
        let tpl = self.dir.join(format!("{}.tpl.json", b.id));
        std::fs::write(&tpl, serde_json::to_vec(&template).unwrap()).unwrap();
        let payload = self.dir.join(format!("{}.img", b.id));
        std::fs::write(&payload, b.payload).unwrap();
        let out = self.catalog.join(format!("{}.fpb", b.id));
        let (tpl, payload, out_s) =
            (tpl.to_str().unwrap(), payload.to_str().unwrap(), out.to_str().unwrap().to_string());
        ok_json(
            &self.dir,
            &[
                "--json",
                "bundle",
                "create",
                "--template",
                tpl,
                "--payload",
                &format!("image={payload}"),
                "--format",
                &format!("image={}", b.format),
                "--out",
                &out_s,
            ],
        );
        for key in ["rel1.pem", "rel2.pem"] {
            ok_json(&self.dir, &["--json", "bundle", "sign", &out_s, "--key", key]);
        }
        out
    }
}
