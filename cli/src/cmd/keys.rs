//! `fieldpatch keys`: signing keys and trust stores.

use anyhow::Context;
use clap::Subcommand;
use ed25519_dalek::SigningKey;
use fieldpatch_core::bundle::{KeySource, Role, TrustStoreBody, TrustedKey, generate_key_file};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Generate an ed25519 signing key. The private key goes to --out (mode 0600) or into the OS
    /// keyring (--keyring NAME), never to the screen; the key id and public key are printed.
    Generate {
        /// File for the private key (must not exist).
        #[arg(long, required_unless_present = "keyring", conflicts_with = "keyring")]
        out: Option<PathBuf>,
        /// Keep the private key in the OS keyring as `signing-key/NAME`; use it elsewhere as
        /// `--key keyring:NAME`.
        #[arg(long)]
        keyring: Option<String>,
    },
    /// Print the key id and public key of a private key file.
    Public {
        #[arg(long)]
        key: PathBuf,
    },
    /// Create a signed trust store from public keys, roles and thresholds.
    TrustInit {
        /// Where to write the trust store (JSON).
        #[arg(long)]
        out: PathBuf,
        /// A key: ROLE[,ROLE...]=PUBLIC_KEY_HEX[:LABEL] (roles: root, release, rollback,
        /// vendor_image, catalog). Naming catalog keys makes laptops require a catalog listing
        /// signed by them (`fieldpatch bundle sign-listing`).
        #[arg(long = "key", required = true)]
        keys: Vec<String>,
        /// A threshold: ROLE=N (default 1 per role).
        #[arg(long = "threshold")]
        thresholds: Vec<String>,
        /// Root private key files to sign the store with.
        #[arg(long = "sign", required = true)]
        signers: Vec<PathBuf>,
        /// Trust-store version (a rotation needs a higher one, signed by the current root keys
        /// too: pass their key files to --sign as well).
        #[arg(long, default_value_t = 1)]
        version: u64,
        /// Days an expired bundle stays usable offline after the last sync (signed policy; no
        /// offline grace without it).
        #[arg(long)]
        offline_grace_days: Option<u32>,
        /// When the trust store expires (RFC 3339): after it (and the offline grace), bundles
        /// are refused until a rotation is synced. Default: it does not expire.
        #[arg(long)]
        expires: Option<chrono::DateTime<chrono::Utc>>,
        /// A device vendor's X.509 signing certificate: PEM_FILE[:LABEL]. SWUpdate images (`.swu`)
        /// must carry a CMS signature that verifies against one of them before Fieldpatch sends
        /// them to a gateway.
        #[arg(long = "vendor-cert")]
        vendor_certs: Vec<String>,
    },
}

/// Load a private signing key named on the command line: `keyring:NAME` (the OS keyring) or the
/// path of a key file (mode 0600).
pub fn load_key(spec: &std::path::Path) -> anyhow::Result<SigningKey> {
    match spec.to_str().and_then(|s| s.strip_prefix("keyring:")) {
        Some(name) => super::runtime()?.block_on(async {
            let fp = super::open().await?;
            Ok(fp.credentials().await?.signing_key(name).await?)
        }),
        None => Ok(KeySource::File(spec.to_path_buf()).load()?),
    }
}

pub fn run(cmd: KeysCmd, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCmd::Generate { out: Some(out), .. } => {
            let (id, public) = generate_key_file(&out)?;
            print_key(&id, &public, json)?;
            if !json {
                eprintln!("private key written to {} (mode 0600)", out.display());
            }
        }
        KeysCmd::Generate { out: None, keyring } => {
            let name = keyring.context("say where the key goes: --out FILE or --keyring NAME")?;
            let key = SigningKey::generate(&mut rand::rand_core::UnwrapErr(rand::rngs::SysRng));
            super::runtime()?.block_on(async {
                let fp = super::open().await?;
                fp.credentials().await?.store_signing_key(&name, &key).await?;
                anyhow::Ok(())
            })?;
            let public = key.verifying_key();
            print_key(
                &fieldpatch_core::bundle::key_id(&public),
                &hex_encode(public.as_bytes()),
                json,
            )?;
            if !json {
                eprintln!("private key kept in the OS keyring as signing-key/{name}");
            }
        }
        KeysCmd::Public { key } => {
            let k = load_key(&key)?.verifying_key();
            let id = fieldpatch_core::bundle::key_id(&k);
            print_key(&id, &hex_encode(k.as_bytes()), json)?;
        }
        KeysCmd::TrustInit {
            out,
            keys,
            thresholds,
            signers,
            version,
            offline_grace_days,
            expires,
            vendor_certs,
        } => {
            let mut body = TrustStoreBody {
                version,
                keys: Vec::new(),
                thresholds: BTreeMap::new(),
                offline_grace_days,
                expires,
                vendor_certificates: Vec::new(),
            };
            for spec in &keys {
                let (roles, rest) =
                    spec.split_once('=').context("--key must be ROLES=PUBLIC_HEX[:LABEL]")?;
                let (public, label) = rest.split_once(':').unwrap_or((rest, ""));
                let roles = roles
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<Vec<Role>, _>>()
                    .map_err(anyhow::Error::msg)?;
                body.keys.push(TrustedKey::from_hex(public, roles, label)?);
            }
            for spec in &vendor_certs {
                let (path, label) = spec.split_once(':').unwrap_or((spec, ""));
                let pem = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the vendor certificate {path}"))?;
                body.vendor_certificates.push(
                    fieldpatch_core::bundle::VendorCertificate::new(&pem, label)
                        .with_context(|| format!("the vendor certificate {path}"))?,
                );
            }
            for spec in &thresholds {
                let (role, n) = spec.split_once('=').context("--threshold must be ROLE=N")?;
                body.thresholds.insert(
                    role.parse().map_err(anyhow::Error::msg)?,
                    n.parse().context("threshold must be a number")?,
                );
            }
            let keys = signers.iter().map(|p| load_key(p)).collect::<Result<Vec<_>, _>>()?;
            let doc = body.sign(&keys.iter().collect::<Vec<_>>());
            let store = fieldpatch_core::bundle::TrustStore::provision(doc)?;
            std::fs::write(&out, serde_json::to_vec_pretty(store.document())?)
                .with_context(|| format!("writing {}", out.display()))?;
            if json {
                println!("{}", serde_json::json!({"trust_store": out, "version": store.version()}));
            } else {
                println!("trust store version {} written to {}", store.version(), out.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn print_key(id: &str, public: &str, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::json!({"key_id": id, "public_key": public}));
    } else {
        println!("key id:     {id}");
        println!("public key: {public}");
    }
    Ok(())
}
