//! `fieldpatch bundle`: create, sign, verify and inspect patch bundles.

use anyhow::Context;
use chrono::{DateTime, Duration, Utc};
use clap::Subcommand;
use fieldpatch_core::bundle::{
    self, KeySource, Manifest, OfflineGrace, PayloadFormat, TrustStore, Verdict, VerifyPolicy,
};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum BundleCmd {
    /// Create an unsigned bundle from a manifest template and payload files.
    Create {
        /// JSON manifest template: every manifest field except `payloads`.
        #[arg(long)]
        template: PathBuf,
        /// A payload, in order: NAME=PATH.
        #[arg(long = "payload", required = true)]
        payloads: Vec<String>,
        /// A payload's format: NAME=mcuboot|dfu|raw (default raw).
        #[arg(long = "format")]
        formats: Vec<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Add a detached signature over the bundle's manifest with a private key file.
    Sign {
        bundle: PathBuf,
        /// Private key file (PKCS#8 PEM, mode 0600).
        #[arg(long)]
        key: PathBuf,
    },
    /// Verify a bundle against a trust store; exit status 0 only when it is valid.
    Verify {
        bundle: PathBuf,
        /// Trust store (JSON).
        #[arg(long)]
        trust: PathBuf,
        /// Verify as of this time (RFC 3339) instead of now.
        #[arg(long)]
        at: Option<DateTime<Utc>>,
        /// When the catalog was last verified online (RFC 3339): enables offline grace.
        #[arg(long, requires = "grace_days")]
        last_online: Option<DateTime<Utc>>,
        /// Offline grace period in days after a bundle's expiry.
        #[arg(long, requires = "last_online")]
        grace_days: Option<i64>,
    },
    /// Show a bundle's manifest and signatures (no trust decision).
    Inspect { bundle: PathBuf },
}

pub fn run(cmd: BundleCmd, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        BundleCmd::Create { template, payloads, formats, out } => {
            let tpl = std::fs::read(&template)
                .with_context(|| format!("reading {}", template.display()))?;
            let mut entries = Vec::new();
            let mut files = Vec::new();
            for spec in &payloads {
                let (name, path) = spec.split_once('=').context("--payload must be NAME=PATH")?;
                let format = formats
                    .iter()
                    .find_map(|f| f.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
                    .map_or(Ok(PayloadFormat::Raw), str::parse)
                    .map_err(anyhow::Error::msg)?;
                entries.push(bundle::container::payload_entry(name, format, path.as_ref())?);
                files.push(PathBuf::from(path));
            }
            let manifest = Manifest::from_template(&tpl, entries)?;
            bundle::create_bundle(&manifest, &files, &out)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&manifest)?);
            } else {
                println!("bundle {} written to {} (unsigned)", manifest.bundle_id, out.display());
            }
        }
        BundleCmd::Sign { bundle: path, key } => {
            let key = KeySource::File(key).load()?;
            let entry = bundle::sign_bundle_file(&path, &key)?;
            if json {
                println!("{}", serde_json::json!({"key_id": entry.key_id}));
            } else {
                println!("signed {} with key {}", path.display(), entry.key_id);
            }
        }
        BundleCmd::Verify { bundle: path, trust, at, last_online, grace_days } => {
            let trust = TrustStore::load(&trust)?;
            let policy = VerifyPolicy {
                now: at.unwrap_or_else(Utc::now),
                offline_grace: last_online.zip(grace_days).map(|(last, days)| OfflineGrace {
                    last_online_verification: last,
                    grace: Duration::days(days),
                }),
            };
            let (verdict, ok) = match bundle::verify_file(&path, &trust, &policy) {
                Ok(v) => (v, true),
                Err(r) => (*r.verdict, false),
            };
            print_verdict(&verdict, json)?;
            return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) });
        }
        BundleCmd::Inspect { bundle: path } => {
            let info = bundle::inspect_file(&path)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                let m = &info.manifest;
                println!(
                    "bundle {} (revision {}), {} bytes",
                    m.bundle_id, m.bundle_version, info.file_len
                );
                println!(
                    "target {} {} hw {}",
                    m.target.vendor, m.target.model, m.target.hardware_revision
                );
                println!("applies to {}, installs {}", m.applies_to, m.installs);
                println!("created {}, expires {}", m.created.to_rfc3339(), m.expires.to_rfc3339());
                for p in &m.payloads {
                    println!(
                        "payload {} ({:?}) {} bytes sha256 {}",
                        p.name, p.format, p.length, p.sha256
                    );
                }
                let ids: Vec<_> = info.signatures.iter().map(|s| s.key_id.as_str()).collect();
                println!(
                    "signatures: {}",
                    if ids.is_empty() { "none".into() } else { ids.join(", ") }
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_verdict(v: &Verdict, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    for c in &v.checks {
        println!("{} {:<16} {}", if c.ok { "ok  " } else { "FAIL" }, c.name, c.detail);
    }
    match &v.error {
        None => println!("VALID"),
        Some(e) => println!("INVALID ({}): {}", e.code, e.message),
    }
    Ok(())
}
