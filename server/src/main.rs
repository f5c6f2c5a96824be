//! `fieldpatch-server`: the central inventory and sync API, and its admin commands.
//!
//! `serve` runs the API; `admin ...` works directly on the database (technicians, tokens, imports,
//! assignments, the catalog, the trust store and catalog listing, checked before they are
//! published, and reports).

use anyhow::Context;
use chrono::Utc;
use clap::{Parser, Subcommand};
use fieldpatch_proto::wire::{CatalogEntry, WorkOrder};
use fieldpatch_server::api::{self, NewTechnician};
use fieldpatch_server::config::Config;
use fieldpatch_server::{App, Bound, PgStore, SqliteStore, Store, TlsFiles};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Where `serve` listens unless told otherwise.
const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8470);

#[derive(Parser, Debug)]
#[command(name = "fieldpatch-server", version, about = "Fieldpatch central inventory and sync API")]
struct Cli {
    /// Configuration file (TOML) with any of the settings below (keys named like the flags, with
    /// `_` for `-`: data_dir, database, listen, tls_cert, tls_key, allow_insecure_non_loopback,
    /// shutdown_grace_secs, log). Flags and environment variables override it.
    #[arg(long, env = "FIELDPATCH_SERVER_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Directory for the server keys (checkpoint signing, credential encryption) and the default
    /// SQLite database. Back it up together with the database. Instances sharing one database
    /// need the same keys. Default: fieldpatch-server-data.
    #[arg(long, env = "FIELDPATCH_SERVER_DATA", global = true)]
    data_dir: Option<PathBuf>,
    /// Log filter (`info`, `debug`, `fieldpatch_server=debug,info`...). Default: `RUST_LOG`,
    /// else info.
    #[arg(long, env = "FIELDPATCH_SERVER_LOG", global = true)]
    log: Option<String>,
    /// Database: `postgres://...` for PostgreSQL (over TLS when the URL asks: `?sslmode=require`,
    /// or `?sslmode=verify-full&sslrootcert=CA.pem`); default is `inventory.db` (SQLite) in the
    /// data directory; a `sqlite://PATH` URL picks another SQLite file.
    #[arg(long, env = "FIELDPATCH_DATABASE", global = true)]
    database: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the API.
    Serve {
        /// Address to listen on. Default: 127.0.0.1:8470.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// PEM certificate chain; enables HTTPS together with --tls-key.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key for --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Allow plain HTTP on a non-loopback address (only behind a TLS-terminating proxy).
        #[arg(long)]
        allow_insecure_non_loopback: bool,
        /// At shutdown (SIGTERM, Ctrl-C), how long requests in flight may take to finish before
        /// their connections are cut. Default: 30.
        #[arg(long)]
        shutdown_grace_secs: Option<u64>,
    },
    /// Inventory administration.
    #[command(subcommand)]
    Admin(Admin),
}

#[derive(Subcommand, Debug)]
enum TokenCmd {
    /// Revoke every token of a technician (--technician), or the one token read from standard
    /// input (--stdin; it is never taken as an argument). Revoked tokens answer 401 at once.
    Revoke {
        #[arg(long, conflicts_with = "stdin", required_unless_present = "stdin")]
        technician: Option<String>,
        #[arg(long)]
        stdin: bool,
    },
}

#[derive(Subcommand, Debug)]
enum Admin {
    /// Register a technician and their ed25519 public key (hex); prints a first token.
    CreateTechnician {
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        public_key: String,
    },
    /// Issue a new token for a technician, or an admin token with --admin. Printed once.
    CreateToken {
        #[arg(long, conflicts_with = "admin", required_unless_present = "admin")]
        technician: Option<String>,
        #[arg(long)]
        admin: bool,
        #[arg(long, default_value = "cli")]
        label: String,
        /// Days the token works (it can be revoked before).
        #[arg(long, default_value_t = 90)]
        valid_days: i64,
    },
    /// Tokens: revoke a leaked or departing technician's tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Export every visit of a site as signed audit archives (one per visit, in the laptop's
    /// `fieldpatch export` format, manifest signed by this server's key), verifiable offline
    /// with `fieldpatch audit verify`.
    Export {
        #[arg(long)]
        site: String,
        /// Only visits opened at or after this date (YYYY-MM-DD, UTC) or RFC 3339 time.
        #[arg(long)]
        from: Option<String>,
        /// Only visits opened at or before this date (its whole day, UTC) or RFC 3339 time.
        #[arg(long)]
        to: Option<String>,
        /// Directory to write `visit-<id>.fieldpatch-audit.tar` files into (created if needed).
        #[arg(long)]
        out: PathBuf,
    },
    /// Import sites from a CSV (`id,name,address`) or JSON file.
    ImportSites { file: PathBuf },
    /// Import devices from a CSV or JSON file.
    ImportDevices { file: PathBuf },
    /// Import work orders from a JSON file (array of `{id, site_id, title, planned_for, devices}`).
    ImportWorkOrders { file: PathBuf },
    /// Assign a site to a technician.
    Assign {
        #[arg(long)]
        technician: String,
        #[arg(long)]
        site: String,
    },
    /// Revoke a site assignment.
    Unassign {
        #[arg(long)]
        technician: String,
        #[arg(long)]
        site: String,
    },
    /// Publish a bundle file with its manifest (JSON) to the catalog, for every site or some.
    Publish {
        #[arg(long)]
        bundle_id: String,
        #[arg(long)]
        version: String,
        #[arg(long)]
        manifest: PathBuf,
        #[arg(long)]
        bundle: PathBuf,
        /// Publish to this site only (repeat for several): only technicians assigned to one of
        /// them pull and download it. Default: every site.
        #[arg(long = "site")]
        sites: Vec<String>,
    },
    /// Publish the trust store document (JSON): it must be signed by its own root threshold and,
    /// when a store is published, be a rotation of it (signed by a threshold of the current root
    /// keys, with a higher version). Anything else is refused and nothing is stored.
    #[command(alias = "trust-store")]
    PublishTrust { file: PathBuf },
    /// Publish the signed catalog listing (JSON, from `fieldpatch bundle sign-listing`): signed
    /// by the catalog keys of the published trust store for its version, not expired, newer than
    /// the published listing, naming only published bundles (same SHA-256). Anything else is
    /// refused and nothing is stored.
    PublishListing { file: PathBuf },
    /// Store a device credential, encrypted at rest; the secret is read from standard input
    /// (never from the command line, where other users could see it).
    SetCredential {
        #[arg(long)]
        device: String,
        /// What the secret is: `password`, `psk` or `token`.
        #[arg(long)]
        kind: String,
    },
    /// Print a report as JSON: `not-at-approved-version`, `planned-not-patched`,
    /// `log-continuity` (each technician log: first, continues, restarted or cut, with the
    /// evidence), or `device-history` (with --device).
    Report {
        #[arg(value_parser = [
            "not-at-approved-version",
            "planned-not-patched",
            "log-continuity",
            "device-history",
        ])]
        name: String,
        #[arg(long, required_if_eq("name", "device-history"))]
        device: Option<String>,
    },
    /// Print the server's checkpoint public key.
    ServerKey,
}

/// Settings after merging flags and environment variables over the configuration file.
#[derive(Debug)]
struct Settings {
    data_dir: PathBuf,
    file: Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    let file = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let filter = match cli.log.clone().or_else(|| file.log.clone()) {
        Some(f) => tracing_subscriber::EnvFilter::try_new(&f).with_context(|| {
            format!("log filter {f:?} is not valid (try \"info\" or \"debug\")")
        })?,
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let data_dir = cli
        .data_dir
        .take()
        .or_else(|| file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("fieldpatch-server-data"));
    let database = cli
        .database
        .clone()
        .or_else(|| file.database.clone())
        .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("inventory.db").display()));
    let settings = Settings { data_dir, file };
    if database.starts_with("postgres://") || database.starts_with("postgresql://") {
        let store = PgStore::connect(&database).await.context("cannot connect to PostgreSQL")?;
        run(store, cli, settings).await
    } else if let Some(path) = database.strip_prefix("sqlite://") {
        let path = PathBuf::from(path);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let store = SqliteStore::open(&path)
            .await
            .with_context(|| format!("cannot open the SQLite database {}", path.display()))?;
        run(store, cli, settings).await
    } else {
        anyhow::bail!("--database must be a postgres://... or sqlite://PATH URL")
    }
}

async fn run<S: Store>(store: S, cli: Cli, settings: Settings) -> anyhow::Result<()> {
    store.migrate().await?;
    let data_dir = &settings.data_dir;
    let file = settings.file;
    let key = fieldpatch_server::load_or_create_key(data_dir)?;
    match cli.command {
        Command::Serve {
            listen,
            tls_cert,
            tls_key,
            allow_insecure_non_loopback,
            shutdown_grace_secs,
        } => {
            let listen = listen.or(file.listen).unwrap_or(DEFAULT_LISTEN);
            let (tls_cert, tls_key) = match (tls_cert, tls_key) {
                (Some(c), Some(k)) => (Some(c), Some(k)),
                _ => (file.tls_cert, file.tls_key),
            };
            let allow_insecure_non_loopback =
                allow_insecure_non_loopback || file.allow_insecure_non_loopback.unwrap_or(false);
            let grace = std::time::Duration::from_secs(
                shutdown_grace_secs.or(file.shutdown_grace_secs).unwrap_or(30),
            );
            let tls = match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => {
                    Some(fieldpatch_server::tls_config(&TlsFiles { cert, key })?)
                }
                _ => None,
            };
            let https = tls.is_some();
            let bound = Bound::bind(listen, tls, allow_insecure_non_loopback).await?;
            let addr = bound.local_addr();
            tracing::info!(%addr, https, "listening");
            // Tests and scripts read the bound address from stdout.
            println!("listening on {}://{addr}", if https { "https" } else { "http" });
            let credential_key = fieldpatch_server::load_or_create_credential_key(data_dir)?;
            let app = App::new(store, key).with_credential_key(credential_key);
            bound.serve_until(Arc::new(app), fieldpatch_server::shutdown_signal(), grace).await?;
            tracing::info!("stopped");
        }
        Command::Admin(cmd) => {
            let credential_key = fieldpatch_server::load_or_create_credential_key(data_dir)?;
            admin(App::new(store, key).with_credential_key(credential_key), cmd).await?
        }
    }
    Ok(())
}

/// Read a document to publish, refusing files over `limit` bytes before reading them.
fn read_document(file: &std::path::Path, limit: u64) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
    let len = f.metadata().with_context(|| format!("cannot read {}", file.display()))?.len();
    anyhow::ensure!(
        len <= limit,
        "{} is {len} bytes, over the limit of {limit}: it is not a document to publish",
        file.display()
    );
    let mut bytes = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", file.display()))?;
    Ok(bytes)
}

fn print_published(what: &str, p: &fieldpatch_server::publish::Published) {
    for note in &p.notes {
        eprintln!("note: {note}");
    }
    match (p.unchanged, p.replaced) {
        (true, _) => println!("{what} version {} is already published: nothing changed", p.version),
        (false, Some(old)) => {
            println!("{what} version {} published (replaces version {old})", p.version)
        }
        (false, None) => println!("{what} version {} published", p.version),
    }
}

async fn admin<S: Store>(app: App<S>, cmd: Admin) -> anyhow::Result<()> {
    let store = &app.store;
    match cmd {
        Admin::CreateTechnician { id, name, public_key } => {
            let t = api::create_technician(store, NewTechnician { id, name, public_key }).await?;
            let token = api::issue_token(store, Some(&t.id), "first").await?;
            println!("technician {} registered", t.id);
            println!("token: {token}");
        }
        Admin::CreateToken { technician, label, valid_days, .. } => {
            let lifetime = chrono::Duration::try_days(valid_days)
                .filter(|_| (1..=3650).contains(&valid_days))
                .context("--valid-days must be between 1 and 3650")?;
            let token =
                api::issue_token_for(store, technician.as_deref(), &label, lifetime).await?;
            println!("token: {token}");
        }
        Admin::Token(TokenCmd::Revoke { technician, stdin }) => {
            let hash = if stdin {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                let token = zeroize::Zeroizing::new(line.trim().to_string());
                anyhow::ensure!(!token.is_empty(), "no token on standard input");
                Some(api::token_hash(&token))
            } else {
                None
            };
            let n = store.revoke_tokens(hash.as_deref(), technician.as_deref()).await?;
            println!("{n} token(s) revoked");
        }
        Admin::ImportSites { file } => {
            let sites = fieldpatch_server::import::read_sites(&file)?;
            let n = store.upsert_sites(&sites).await?;
            println!("imported {n} sites");
        }
        Admin::ImportDevices { file } => {
            let devices = fieldpatch_server::import::read_devices(&file)?;
            let n = store.upsert_devices(&devices).await?;
            println!("imported {n} devices");
        }
        Admin::ImportWorkOrders { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let orders: Vec<WorkOrder> = serde_json::from_str(&text).with_context(|| {
                format!("{} is not a JSON array of work orders", file.display())
            })?;
            for w in &orders {
                store.upsert_work_order(w).await?;
            }
            println!("imported {} work orders", orders.len());
        }
        Admin::Assign { technician, site } => {
            store.assign(&technician, &site).await?;
            println!("site {site} assigned to {technician}");
        }
        Admin::Unassign { technician, site } => {
            if !store.unassign(&technician, &site).await? {
                anyhow::bail!("site {site} was not assigned to {technician}");
            }
            println!("site {site} no longer assigned to {technician}");
        }
        Admin::Publish { bundle_id, version, manifest, bundle, sites } => {
            let manifest_text = std::fs::read_to_string(&manifest)
                .with_context(|| format!("cannot read {}", manifest.display()))?;
            let manifest_json: serde_json::Value = serde_json::from_str(&manifest_text)
                .with_context(|| format!("{} is not JSON", manifest.display()))?;
            let bytes = std::fs::read(&bundle)
                .with_context(|| format!("cannot read {}", bundle.display()))?;
            let entry = CatalogEntry {
                bundle_id,
                version,
                manifest: manifest_json,
                sha256: hex::encode(Sha256::digest(&bytes)),
                size: bytes.len() as u64,
                published_at: Utc::now(),
            };
            store.publish_bundle_to(&entry, &bytes, &sites).await?;
            let scope = if sites.is_empty() { "every site".to_string() } else { sites.join(", ") };
            println!(
                "published {} {} (sha256 {}) to {scope}",
                entry.bundle_id, entry.version, entry.sha256
            );
        }
        Admin::PublishTrust { file } => {
            let bytes = read_document(&file, fieldpatch_proto::trust::MAX_TRUST_STORE_BYTES)?;
            let p = fieldpatch_server::publish::publish_trust_store(store, &bytes, Utc::now())
                .await
                .map_err(|e| anyhow::anyhow!("{e} [{}]", e.code()))?;
            print_published("trust store", &p);
        }
        Admin::PublishListing { file } => {
            let bytes = read_document(&file, fieldpatch_proto::listing::MAX_LISTING_BYTES)?;
            let p = fieldpatch_server::publish::publish_listing(store, &bytes, Utc::now())
                .await
                .map_err(|e| anyhow::anyhow!("{e} [{}]", e.code()))?;
            print_published("catalog listing", &p);
        }
        Admin::SetCredential { device, kind } => {
            use std::io::Read;
            let mut secret = zeroize::Zeroizing::new(Vec::new());
            std::io::stdin()
                .read_to_end(&mut secret)
                .context("cannot read the secret from standard input")?;
            while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                secret.pop();
            }
            anyhow::ensure!(!secret.is_empty(), "no secret on standard input");
            anyhow::ensure!(
                std::str::from_utf8(&secret).is_ok(),
                "the secret on standard input is not UTF-8 text; encode binary keys (e.g. hex) first"
            );
            app.set_credential(&device, &kind, &secret).await?;
            println!("credential {kind} stored for device {device} (encrypted at rest)");
        }
        Admin::Report { name, device } => {
            let json = match (name.as_str(), device) {
                ("not-at-approved-version", _) => {
                    serde_json::to_string_pretty(&api::report_not_at_approved(store, None).await?)?
                }
                ("planned-not-patched", _) => serde_json::to_string_pretty(
                    &api::report_planned_not_patched(store, None).await?,
                )?,
                ("log-continuity", _) => serde_json::to_string_pretty(
                    &fieldpatch_server::continuity::report(store).await?,
                )?,
                (_, Some(id)) => {
                    let d = store
                        .device(&id)
                        .await?
                        .with_context(|| format!("device {id} is not in the inventory"))?;
                    serde_json::to_string_pretty(&store.device_history(&d).await?)?
                }
                (_, None) => anyhow::bail!("device-history needs --device"),
            };
            println!("{json}");
        }
        Admin::ServerKey => println!("{}", app.public_key()),
        Admin::Export { site, from, to, out } => {
            use fieldpatch_server::export;
            let from = from.map(|f| export::parse_bound(&f, false)).transpose()?;
            let to = to.map(|t| export::parse_bound(&t, true)).transpose()?;
            let visits = export::export_site(store, &app.key, &site, from, to).await?;
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            for v in &visits {
                let path = out.join(v.file_name());
                let tmp = out.join(format!("{}.partial", v.file_name()));
                std::fs::write(&tmp, &v.archive)
                    .and_then(|()| std::fs::rename(&tmp, &path))
                    .with_context(|| format!("cannot write {}", path.display()))?;
                println!(
                    "visit {} (opened {}): {} events, {} devices, {} bytes -> {}",
                    v.visit_id,
                    v.opened.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    v.verified.events,
                    v.verified.devices,
                    v.archive.len(),
                    path.display()
                );
            }
            println!(
                "{} visit(s) of site {site} exported to {}, signed by server key {}",
                visits.len(),
                out.display(),
                app.public_key()
            );
        }
    }
    Ok(())
}
