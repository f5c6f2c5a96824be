//! `fieldpatch sync [--server URL] [--watch]`, `fieldpatch sync login`, `fieldpatch sync key`.
//!
//! A thin layer over `fieldpatch_core::sync`: it builds the configuration from flags, the store
//! (remembered server URL, pinned server key) and the OS keyring (sync token), runs one sync (or
//! `watch` until Ctrl-C) over the laptop's local store ([`StoreSync`]) and renders what happened:
//! what was pushed, what is still pending and what the server rejected, with its reasons.

use anyhow::Context;
use clap::{Args, Subcommand};
use fieldpatch_core::credentials::Secret;
use fieldpatch_core::store::BundleVerdict;
use fieldpatch_core::sync::{
    SyncConfig, SyncLocal, SyncReport, WatchEvent, WatchOptions, sync as sync_once, watch,
};
use std::fmt::Write as _;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// `fieldpatch sync`: sync now (or keep syncing with --watch), or one of its subcommands.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SyncCommand {
    #[command(subcommand)]
    pub action: Option<SyncAction>,
    #[command(flatten)]
    pub args: SyncArgs,
}

#[derive(Subcommand, Debug)]
pub enum SyncAction {
    /// Store the sync token from the inventory team (read from standard input) in the OS keyring
    /// and remember the server.
    Login {
        /// Inventory server base URL.
        #[arg(long)]
        server: String,
        /// The private CA (PEM) the server's certificate is also checked against, remembered
        /// for every later sync (a login without it keeps the one set before).
        #[arg(long)]
        ca_cert: Option<PathBuf>,
    },
    /// Print this laptop's technician public key (hex), to register with the inventory.
    Key,
}

#[derive(Args, Debug)]
pub struct SyncArgs {
    /// Inventory server base URL (remembered; defaults to the last one used).
    #[arg(long, env = "FIELDPATCH_SERVER")]
    pub server: Option<String>,
    /// Pin the server's checkpoint key (hex); by default the key from the first sync is pinned.
    #[arg(long)]
    pub server_key: Option<String>,
    /// Extra trusted root certificate (PEM) for a private inventory CA (default: the one
    /// remembered on this laptop, if any).
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Events per push.
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
    /// Keep running: probe the server with backoff and sync by itself whenever it is reachable.
    /// Stop with Ctrl-C.
    #[arg(long)]
    pub watch: bool,
    /// With --watch: seconds between syncs while the server is reachable.
    #[arg(long, default_value_t = 300)]
    pub interval: u64,
}

/// Build the sync configuration from the flags, the server URL and the technician's token.
pub fn config(args: &SyncArgs, server: &str, token: String) -> anyhow::Result<SyncConfig> {
    let mut cfg = SyncConfig::new(server, token);
    cfg.server_key = args.server_key.clone();
    cfg.batch_size = args.batch_size.max(1);
    if let Some(path) = &args.ca_cert {
        cfg.root_certificate_pem = Some(
            std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("cannot read --ca-cert {}: {e}", path.display()))?,
        );
    }
    Ok(cfg)
}

/// Human-readable summary of one sync.
pub fn render_report(r: &SyncReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "pushed {} events", r.pushed);
    if r.pending.is_empty() {
        let _ = writeln!(s, "nothing pending: every visit log is on the server");
    } else {
        let _ = writeln!(s, "{} events pending:", r.pending_total());
        for (log, n) in &r.pending {
            let _ = writeln!(s, "  log {log}: {n} events");
        }
    }
    for (title, list) in [
        ("rejected (will not be accepted as they are)", &r.rejected),
        ("to retry later", &r.retryable),
        ("kept but not applied to the inventory", &r.not_applied),
    ] {
        if list.is_empty() {
            continue;
        }
        let _ = writeln!(s, "{} {title}:", list.len());
        for p in list {
            let _ = writeln!(s, "  log {} seq {} [{}]: {}", p.log_id, p.seq, p.code, p.reason);
        }
    }
    let _ = writeln!(
        s,
        "pulled {} sites, {} devices, {} work orders, {} catalog entries ({} bundles downloaded)",
        r.sites, r.devices, r.work_orders, r.catalog, r.bundles_downloaded
    );
    s
}

/// Run `fieldpatch sync` and its subcommands over the laptop's local store and keyring.
pub fn run(cmd: SyncCommand, json: bool) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let fp = super::open().await?;
        let creds = fp.credentials().await?.clone();
        let local = fp.sync_local().await?;
        match cmd.action {
            Some(SyncAction::Login { server, ca_cert }) => {
                // Refused before the token is even read: it would travel in the clear.
                fieldpatch_core::sync::client::check_transport(&server)?;
                let ca = match &ca_cert {
                    None => None,
                    Some(path) => Some(std::fs::read_to_string(path).with_context(|| {
                        format!("cannot read --ca-cert {}", path.display())
                    })?),
                };
                let token = read_token()?;
                // The same login as the app's: the CA is checked before anything is stored.
                if let Some(pem) = &ca {
                    fp.set_server_ca(Some(pem)).await?;
                }
                fp.sync_login(&server, &token).await?;
                println!("sync token stored in the {} keyring; server {server}", creds.backend());
                Ok(ExitCode::SUCCESS)
            }
            Some(SyncAction::Key) => {
                let key = creds.technician_key().await?;
                let public = hex::encode(key.verifying_key().as_bytes());
                if json {
                    println!("{}", serde_json::json!({ "public_key": public }));
                } else {
                    println!("{public}");
                }
                Ok(ExitCode::SUCCESS)
            }
            None => {
                let args = cmd.args;
                let server = match &args.server {
                    Some(s) => {
                        fieldpatch_core::sync::client::check_transport(s)?;
                        local.remember_server(s).await?;
                        s.clone()
                    }
                    None => local.server().await?.context(
                        "no inventory server known: pass --server URL (it is remembered)",
                    )?,
                };
                let token = creds.sync_token().await?.context(
                    "no sync token in the keyring: run `fieldpatch sync login --server URL` and paste the token from the inventory team",
                )?;
                if let Some(k) = &args.server_key {
                    local.pin_server_key(k).await?;
                }
                let mut cfg = config(&args, &server, token.expose().to_string())?;
                cfg.server_key = local.pinned_server_key().await?;
                // Without --ca-cert: the private CA remembered on this laptop (set in the app).
                if cfg.root_certificate_pem.is_none() {
                    cfg.root_certificate_pem =
                        local.server_ca().await?.filter(|pem| !pem.is_empty());
                }
                let code = sync_with(&args, &cfg, &local, json).await?;
                if !json && !args.watch {
                    for b in local.store().bundles().await? {
                        if b.verdict != BundleVerdict::Verified {
                            println!(
                                "catalog bundle {} {} is not usable ({:?}): {}",
                                b.bundle_id, b.version, b.verdict, b.verdict_detail
                            );
                        }
                    }
                    println!(
                        "catalog: {}  trust store: {}",
                        local.catalog_dir().display(),
                        local.trust_path().display()
                    );
                }
                Ok(code)
            }
        }
    })
}

/// The token, from standard input (never from the command line).
fn read_token() -> anyhow::Result<Secret> {
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text).context("reading the token from standard input")?;
    let token = Secret::new(text.trim().to_string());
    // Overwrite the plain copy in place before it is freed.
    let len = text.len();
    text.clear();
    text.extend(std::iter::repeat_n('\0', len));
    anyhow::ensure!(!token.is_empty(), "no token on standard input");
    Ok(token)
}

/// One sync (exit code 2 when events were rejected), or `watch` until Ctrl-C.
pub async fn sync_with<L: SyncLocal>(
    args: &SyncArgs,
    cfg: &SyncConfig,
    store: &L,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if args.watch {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            let _ = stop_tx.send(true);
        });
        let options = WatchOptions {
            interval: Duration::from_secs(args.interval.max(1)),
            ..WatchOptions::default()
        };
        let on_event = |e: WatchEvent| {
            if json {
                println!("{}", serde_json::json!({ "event": e.to_string() }));
            } else {
                println!("{e}");
            }
        };
        // Network changes (where the OS exposes them) make watch probe at once.
        let nudge = std::sync::Arc::new(tokio::sync::Notify::new());
        let _monitor = fieldpatch_core::sync::netwatch::spawn_monitor(
            "/".into(),
            Duration::from_secs(2),
            nudge.clone(),
        );
        watch(cfg, store, options, stop_rx, Some(&nudge), &on_event).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let report = sync_once(cfg, store, &|p| {
        if !json {
            eprintln!("log {}: {}/{} pushed", p.log_id, p.pushed_seq, p.last_seq);
        }
    })
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_report(&report));
    }
    Ok(if report.rejected.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldpatch_core::sync::EventProblem;
    use uuid::Uuid;

    #[test]
    fn the_report_names_pending_and_rejected_events_with_reasons() {
        let log = Uuid::now_v7();
        let mut r = SyncReport { pushed: 12, sites: 2, devices: 5, ..SyncReport::default() };
        r.pending.insert(log, 4);
        r.rejected.push(EventProblem {
            id: Uuid::now_v7(),
            log_id: log,
            seq: 3,
            code: "bad_signature".into(),
            reason: "signature does not match the content".into(),
        });
        let text = render_report(&r);
        assert!(text.contains("pushed 12 events"), "{text}");
        assert!(text.contains(&format!("log {log}: 4 events")), "{text}");
        assert!(text.contains("seq 3 [bad_signature]: signature does not match"), "{text}");
        assert!(text.contains("pulled 2 sites, 5 devices"), "{text}");
        let e =
            WatchEvent::Offline { retry_in: Duration::from_millis(1500), detail: "refused".into() }
                .to_string();
        assert_eq!(e, "server unreachable (refused); next try in 2s");
    }

    #[test]
    fn config_takes_flags_and_refuses_an_unreadable_ca() {
        let mut args = SyncArgs {
            server: None,
            server_key: Some("ab".repeat(32)),
            ca_cert: None,
            batch_size: 0,
            watch: false,
            interval: 300,
        };
        let cfg = config(&args, "https://inventory.example/", "secret-token".into()).unwrap();
        assert_eq!(cfg.server, "https://inventory.example");
        assert_eq!(cfg.batch_size, 1);
        assert!(!format!("{cfg:?}").contains("secret-token"));
        args.ca_cert = Some("/nonexistent/ca.pem".into());
        let e = config(&args, "https://inventory.example", "t".into()).unwrap_err().to_string();
        assert!(e.contains("cannot read --ca-cert /nonexistent/ca.pem"), "{e}");
    }
}
