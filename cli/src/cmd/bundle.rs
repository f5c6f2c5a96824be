//! `fieldpatch bundle`: create, sign, verify and inspect patch bundles.

use anyhow::{Context, bail};
use chrono::{DateTime, Duration, Utc};
use clap::Subcommand;
use fieldpatch_core::bundle::{
    self, Manifest, OfflineGrace, PayloadFormat, RollbackApproval, SignedRollbackApproval,
    TrustStore, Verdict, VerifyPolicy,
};
use fieldpatch_core::model::{DeviceIdentity, Version};
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
        /// A payload's format: NAME=mcuboot|dfu|raw|swupdate|esp (default raw).
        #[arg(long = "format")]
        formats: Vec<String>,
        /// An `esp` payload's flash offset: NAME=OFFSET (hex with 0x, or decimal), e.g.
        /// bootloader=0x1000, partitions=0x8000, app=0x10000. Every `esp` payload needs one.
        #[arg(long = "offset")]
        offsets: Vec<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Add a detached signature over the bundle's manifest with a private key file.
    Sign {
        bundle: PathBuf,
        /// Private key file (PKCS#8 PEM, mode 0600), or `keyring:NAME` for a key in the OS keyring.
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
    /// Create a signed rollback approval for one exact downgrade, or co-sign an existing one.
    ApproveRollback {
        /// Approval file: created if missing (all fields required), co-signed if present.
        #[arg(long)]
        out: PathBuf,
        /// Rollback approver's private key file.
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        vendor: Option<String>,
        #[arg(long)]
        model: Option<String>,
        /// Version the device runs.
        #[arg(long)]
        from: Option<Version>,
        /// Older version the bundle installs.
        #[arg(long)]
        to: Option<Version>,
        #[arg(long)]
        bundle_id: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        expires: Option<DateTime<Utc>>,
    },
    /// Sign a catalog listing for a folder of bundle files with catalog key(s): every `*.fpb` in
    /// the folder is verified against the trust store and named by SHA-256 and size. Publish it
    /// with `fieldpatch-server admin publish-listing FILE`.
    SignListing {
        /// The folder of bundle files (`*.fpb`) the inventory publishes.
        #[arg(long)]
        catalog: PathBuf,
        /// Trust store (JSON) naming the catalog keys; the listing is signed for its version.
        #[arg(long)]
        trust: PathBuf,
        /// Catalog private key file (PKCS#8 PEM, mode 0600) or `keyring:NAME`; repeat it until
        /// the trust store's catalog threshold is reached.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// Listing version: higher than the last published one (default: the current Unix time).
        #[arg(long)]
        version: Option<u64>,
        /// When the listing expires (RFC 3339); default: --valid-days from now.
        #[arg(long, conflicts_with = "valid_days")]
        expires: Option<DateTime<Utc>>,
        /// Days the listing stays valid (1 to 3650).
        #[arg(long, default_value_t = 7)]
        valid_days: i64,
        /// A bundle published to some sites only: `BUNDLE=SITE[,SITE...]`, BUNDLE being its id
        /// or the file's SHA-256; repeat it per bundle. The sites must be those it was published
        /// to (`fieldpatch-server admin publish --site`). Without it a bundle is for every site.
        #[arg(long = "sites", value_name = "BUNDLE=SITES", value_parser = parse_sites)]
        sites: Vec<(String, Vec<String>)>,
        /// Where to write the listing (default: `listing.json` in the catalog folder, where
        /// `fieldpatch plan --catalog` reads it).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Verify a bundle, then check it against a device (target, versions, downgrade rule).
    CheckDevice {
        bundle: PathBuf,
        #[arg(long)]
        trust: PathBuf,
        #[arg(long)]
        vendor: String,
        #[arg(long)]
        model: String,
        #[arg(long)]
        hardware_revision: Option<String>,
        /// Firmware version the device runs.
        #[arg(long)]
        installed: Version,
        /// Rollback approval files.
        #[arg(long = "approval")]
        approvals: Vec<PathBuf>,
        #[arg(long)]
        at: Option<DateTime<Utc>>,
    },
}

pub fn run(cmd: BundleCmd, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        BundleCmd::Create { template, payloads, formats, offsets, out } => {
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
                let mut entry = bundle::container::payload_entry(name, format, path.as_ref())?;
                entry.flash_offset = offsets
                    .iter()
                    .find_map(|o| o.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
                    .map(|o| parse_offset(o).with_context(|| format!("--offset {name}={o}")))
                    .transpose()?;
                entries.push(entry);
                files.push(PathBuf::from(path));
            }
            for o in &offsets {
                let (name, _) = o.split_once('=').context("--offset must be NAME=OFFSET")?;
                if !entries.iter().any(|e| e.name == name) {
                    bail!("--offset names {name:?}, which is not a --payload");
                }
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
            let key = super::keys::load_key(&key)?;
            let entry = bundle::sign_bundle_file(&path, &key)?;
            if json {
                println!("{}", serde_json::json!({"key_id": entry.key_id}));
            } else {
                println!("signed {} with key {}", path.display(), entry.key_id);
            }
        }
        BundleCmd::Verify { bundle: path, trust, at, last_online, grace_days } => {
            let trust = TrustStore::load(&trust)?;
            let grace = match grace_days {
                Some(days) => Some(
                    Duration::try_days(days).filter(|_| (0..=3650).contains(&days)).ok_or_else(
                        || {
                            anyhow::anyhow!(
                                "--grace-days {days} is out of range: give 0 to 3650 days"
                            )
                        },
                    )?,
                ),
                None => None,
            };
            let policy = VerifyPolicy {
                now: at.unwrap_or_else(Utc::now),
                offline_grace: last_online
                    .zip(grace)
                    .map(|(last, grace)| OfflineGrace { last_online_verification: last, grace }),
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
        BundleCmd::ApproveRollback {
            out,
            key,
            vendor,
            model,
            from,
            to,
            bundle_id,
            reason,
            expires,
        } => {
            let key = super::keys::load_key(&key)?;
            let mut signed = if out.exists() {
                SignedRollbackApproval::from_json(&std::fs::read(&out)?)?
            } else {
                let missing = || {
                    anyhow::anyhow!(
                        "a new approval needs --vendor --model --from --to --bundle-id --reason --expires"
                    )
                };
                RollbackApproval {
                    vendor: vendor.ok_or_else(missing)?,
                    model: model.ok_or_else(missing)?,
                    from: from.ok_or_else(missing)?,
                    to: to.ok_or_else(missing)?,
                    bundle_id: bundle_id.ok_or_else(missing)?,
                    reason: reason.ok_or_else(missing)?,
                    expires: expires.ok_or_else(missing)?,
                }
                .sign(&[])
            };
            signed.cosign(&key);
            std::fs::write(&out, serde_json::to_vec_pretty(&signed)?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&signed)?);
            } else {
                let a = &signed.approval;
                println!(
                    "approval {} {} {} -> {} now has {} signature(s)",
                    a.vendor,
                    a.model,
                    a.from,
                    a.to,
                    signed.signatures.len()
                );
            }
        }
        BundleCmd::SignListing {
            catalog,
            trust,
            keys,
            version,
            expires,
            valid_days,
            sites,
            out,
        } => {
            let trust = TrustStore::load(&trust)?;
            let keys =
                keys.iter().map(|p| super::keys::load_key(p)).collect::<Result<Vec<_>, _>>()?;
            let now = Utc::now();
            let expires = match expires {
                Some(t) => t,
                None => Duration::try_days(valid_days)
                    .filter(|_| (1..=3650).contains(&valid_days))
                    .and_then(|d| now.checked_add_signed(d))
                    .ok_or_else(|| {
                        anyhow::anyhow!("--valid-days {valid_days} is out of range: give 1 to 3650")
                    })?,
            };
            let version = match version {
                Some(v) => v,
                None => u64::try_from(now.timestamp()).context("the clock is before 1970")?,
            };
            let mut bundles = bundle::listing::list_folder(&catalog, &trust, &VerifyPolicy::now())?;
            bundle::listing::restrict_sites(&mut bundles, &sites)?;
            let signed = bundle::CatalogListing {
                version,
                expires,
                trust_store_version: trust.version(),
                bundles,
            }
            .sign(&keys.iter().collect::<Vec<_>>());
            let signers = signed.verify(trust.proto()).map_err(bundle::BundleError::from)?;
            signed.check_current(now).map_err(bundle::BundleError::from)?;
            let out = out.unwrap_or_else(|| bundle::listing::listing_path(&catalog));
            std::fs::write(&out, serde_json::to_vec_pretty(&signed)?)
                .with_context(|| format!("writing {}", out.display()))?;
            let l = &signed.listing;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "listing": out,
                        "version": l.version,
                        "expires": l.expires,
                        "trust_store_version": l.trust_store_version,
                        "bundles": l.bundles.len(),
                        "site_restricted": l.bundles.iter().filter(|b| !b.sites.is_empty()).count(),
                        "signers": signers,
                    })
                );
            } else {
                println!(
                    "catalog listing version {} ({} bundle(s), trust store version {}, expires {}) signed by {} and written to {}",
                    l.version,
                    l.bundles.len(),
                    l.trust_store_version,
                    l.expires.to_rfc3339(),
                    signers.join(", "),
                    out.display()
                );
                for b in l.bundles.iter().filter(|b| !b.sites.is_empty()) {
                    println!(
                        "  {} version {}: {} only",
                        b.bundle_id,
                        b.bundle_version,
                        b.sites_text()
                    );
                }
            }
        }
        BundleCmd::CheckDevice {
            bundle: path,
            trust,
            vendor,
            model,
            hardware_revision,
            installed,
            approvals,
            at,
        } => {
            let trust = TrustStore::load(&trust)?;
            let now = at.unwrap_or_else(Utc::now);
            let policy = VerifyPolicy { now, offline_grace: None };
            let (manifest, _) =
                bundle::verify_file_manifest(&path, &trust, &policy).map_err(|r| r.error)?;
            let approvals = approvals
                .iter()
                .map(|p| {
                    SignedRollbackApproval::from_json(&std::fs::read(p)?)
                        .map_err(anyhow::Error::from)
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let device = DeviceIdentity {
                vendor: Some(vendor),
                model: Some(model),
                hardware_revision,
                firmware_version: Some(installed),
                ..Default::default()
            };
            let check = bundle::check_target(&manifest, &device, &trust, &approvals, now)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&check)?);
            } else {
                println!(
                    "bundle applies: {} -> {}{}",
                    check.installed,
                    check.installs,
                    if check.downgrade { " (approved downgrade)" } else { "" }
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

/// A flash offset: `0x` hex or decimal.
fn parse_offset(text: &str) -> anyhow::Result<u32> {
    let t = text.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => t.parse(),
    };
    parsed.map_err(|_| {
        anyhow::anyhow!("{t:?} is not an offset: give hex with 0x (0x10000) or decimal")
    })
}

/// `BUNDLE=SITE[,SITE...]` of `sign-listing --sites`.
fn parse_sites(arg: &str) -> Result<(String, Vec<String>), String> {
    let (bundle, sites) = arg.split_once('=').ok_or_else(|| {
        format!("{arg:?} has no '=': give BUNDLE=SITE[,SITE...], e.g. sensor-fw=site-a,site-b")
    })?;
    let sites: Vec<String> =
        sites.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
    if bundle.trim().is_empty() || sites.is_empty() {
        return Err(format!(
            "{arg:?} names no bundle or no site: give BUNDLE=SITE[,SITE...], e.g. sensor-fw=site-a"
        ));
    }
    Ok((bundle.trim().to_string(), sites))
}
