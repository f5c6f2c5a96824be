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

/// A release engineer's desk: a root key, two release keys (threshold 2) and a trust store.
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
        let mut pubs = Vec::new();
        for name in ["root", "rel1", "rel2"] {
            let v = ok_json(dir, &["--json", "keys", "generate", "--out", &format!("{name}.pem")]);
            pubs.push((
                v["key_id"].as_str().unwrap().to_string(),
                v["public_key"].as_str().unwrap().to_string(),
            ));
        }
        ok_json(
            dir,
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
        let catalog = dir.join("catalog");
        std::fs::create_dir_all(&catalog).unwrap();
        Kit {
            dir: dir.to_path_buf(),
            trust: dir.join("trust.json"),
            catalog,
            release_ids: vec![pubs[1].0.clone(), pubs[2].0.clone()],
        }
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
