//! `fieldpatch export` (a visit's signed audit archive) and `fieldpatch audit verify` (checks one
//! offline, without the local store); the format and the checks are
//! `fieldpatch_proto::audit`'s, reached through `fieldpatch_core::export`.

use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The visit to export (UUID; see `fieldpatch log show`).
    #[arg(long)]
    visit: uuid::Uuid,
    /// Where to write the archive (a tar file).
    #[arg(long)]
    out: PathBuf,
    /// The trust store in force, included with its SHA-256.
    #[arg(long)]
    trust: Option<PathBuf>,
    /// The catalog folder the session used: the manifests and verdicts of the visit's bundles
    /// are included (needs --trust).
    #[arg(long, requires = "trust")]
    catalog: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Verify an audit export offline; exits non-zero and names the first problem.
    Verify {
        /// The archive written by `fieldpatch export` or `fieldpatch-server admin export`.
        file: PathBuf,
        /// The inventory server's public key (hex) the checkpoint must be signed by; without it
        /// the key the checkpoint names is used.
        #[arg(long)]
        server_key: Option<String>,
    },
}

pub fn export(args: ExportArgs, json: bool) -> anyhow::Result<ExitCode> {
    super::runtime()?.block_on(async move {
        let fp = super::open().await?;
        let done = fp
            .export_visit(args.visit, &args.out, args.trust.as_deref(), args.catalog.as_deref())
            .await?;
        let v = &done.verified;
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "path": done.path, "bytes": done.bytes, "visit_id": v.visit_id,
                    "events": v.events, "devices": v.devices, "fingerprint": v.fingerprint,
                    "server_checkpoint": v.checkpoint_server_key.is_some(),
                })
            );
        } else {
            println!(
                "exported visit {} ({} events, {} devices, {} bytes) to {}; {}",
                v.visit_id,
                v.events,
                v.devices,
                done.bytes,
                done.path.display(),
                checkpoint_text(v.checkpoint_server_key.as_deref())
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn checkpoint_text(key: Option<&str>) -> String {
    match key {
        Some(k) => format!("countersigned by server key {k}"),
        None => {
            "no server checkpoint (exported before sync): not countersigned by the server".into()
        }
    }
}

pub fn run(cmd: AuditCommand, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Verify { file, server_key } => {
            let v = fieldpatch_core::export::verify_file(&file, server_key.as_deref())?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": true, "visit_id": v.visit_id, "log_id": v.log_id,
                        "technician_key": v.technician_key, "events": v.events,
                        "devices": v.devices, "fingerprint": v.fingerprint,
                        "server_key": v.checkpoint_server_key,
                        "trust_store_sha256": v.trust_store_sha256,
                        "manifest_server_key": v.manifest_server_key,
                    })
                );
            } else {
                println!(
                    "OK: visit {} verifies: {} signed events by technician key {}, {} devices; fingerprint {}; {}{}",
                    v.visit_id,
                    v.events,
                    v.technician_key,
                    v.devices,
                    v.fingerprint,
                    checkpoint_text(v.checkpoint_server_key.as_deref()),
                    match &v.manifest_server_key {
                        Some(k) => format!(
                            "; exported by the inventory server: manifest signed by server key {k}"
                        ),
                        None => String::new(),
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
