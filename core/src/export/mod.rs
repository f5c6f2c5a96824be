//! Site-visit audit exports: the laptop's side of [`fieldpatch_proto::audit`] (the archive format
//! and its offline verifier, shared with the inventory server, documented there check by check).
//!
//! [`export_visit`] gathers one visit from the local store: the contiguous run of the log from the
//! visit's first event to its last (to the server's countersigned head when the visit was
//! synced), the event before it as the chain's anchor, the server checkpoint (checked against the
//! pinned server key), and optionally the trust store in force and the manifests, verdicts and
//! release signatures of the bundles the visit used. It signs the archive's manifest with the
//! technician's key, verifies the archive it built, and only then writes it (atomically).
//! [`verify_file`] reads an archive (bounded) and verifies it without the store.
//!
//! Nothing secret is ever exported: the archive holds the signed events (which name credentials
//! at most by name), public keys and public documents; the technician key signs, it is never
//! written.

use crate::catalog::Catalog;
use crate::store::Store;
use crate::visitlog::{Event, LogError};
use ed25519_dalek::SigningKey;
use fieldpatch_proto::audit::{self, AuditError, Extras, Verified};
use fieldpatch_proto::wire::SignedCheckpoint;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// Why an export could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("no visit {0} in the local store (see `fieldpatch log show`)")]
    NoSuchVisit(Uuid),
    #[error(
        "visit {visit} was signed by technician key {signer}, not by this laptop's key {current}: export it on the laptop that holds that key"
    )]
    KeyMismatch { visit: Uuid, signer: String, current: String },
    #[error("the log of visit {0} is damaged: {1}; run `fieldpatch log verify`")]
    Damaged(Uuid, String),
    #[error(
        "bundle {0} was used by the visit but is not in the catalog given; give the catalog the session used"
    )]
    BundleNotInCatalog(String),
    #[error("{path}: {detail}")]
    Io { path: PathBuf, detail: String },
    #[error(transparent)]
    Audit(#[from] AuditError),
}

impl ExportError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ExportError::Log(e) => e.code(),
            ExportError::NoSuchVisit(_) => "no_such_visit",
            ExportError::KeyMismatch { .. } => "export_key_mismatch",
            ExportError::Damaged(..) => "log_damaged",
            ExportError::BundleNotInCatalog(_) => "export_bundle_missing",
            ExportError::Io { .. } => "export_io",
            ExportError::Audit(e) => e.code(),
        }
    }
}

/// What the export adds besides the events: the trust store in force, and the catalog whose
/// bundles the visit used (verified against that trust store).
#[derive(Debug, Default)]
pub struct Sources<'a> {
    pub trust: Option<&'a Path>,
    pub catalog: Option<&'a Catalog>,
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    pub path: PathBuf,
    pub bytes: u64,
    pub verified: Verified,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ExportError + '_ {
    move |e| ExportError::Io { path: path.to_path_buf(), detail: e.to_string() }
}

/// Read at most `limit` bytes of `path`; a larger file is an error.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, ExportError> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(io(path))?;
    if bytes.len() as u64 > limit {
        return Err(ExportError::Io {
            path: path.to_path_buf(),
            detail: format!("larger than {limit} bytes: not an audit export"),
        });
    }
    Ok(bytes)
}

/// Verify the archive at `path` offline (see [`fieldpatch_proto::audit`] for the checks).
pub fn verify_file(path: &Path, pinned_server_key: Option<&str>) -> Result<Verified, ExportError> {
    let bytes = read_bounded(path, audit::MAX_ARCHIVE)?;
    Ok(audit::verify(&bytes, pinned_server_key)?)
}

/// Export visit `visit_id` from `store` to `out`, signed with the technician's `key`. The
/// server's countersigned head of the visit's log stored at the last sync is included when it
/// covers the visit; it is checked against `pinned_server_key` (when one is pinned) first.
pub async fn export_visit(
    store: &Store,
    key: &SigningKey,
    pinned_server_key: Option<&str>,
    visit_id: Uuid,
    sources: &Sources<'_>,
    out: &Path,
) -> Result<Exported, ExportError> {
    let visit = store
        .visits(false)
        .await?
        .into_iter()
        .find(|v| v.visit_id == visit_id)
        .ok_or(ExportError::NoSuchVisit(visit_id))?;
    let log_id = visit.log_id;
    let events: Vec<Event> = store
        .visit_events(visit_id)
        .await?
        .into_iter()
        .filter(|e| e.body.log_id == log_id)
        .collect();
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Err(ExportError::NoSuchVisit(visit_id));
    };
    let current = hex::encode(key.verifying_key().as_bytes());
    if first.body.signer != current {
        return Err(ExportError::KeyMismatch {
            visit: visit_id,
            signer: first.body.signer.clone(),
            current,
        });
    }
    let (first_seq, last_seq) = (first.body.seq, last.body.seq);
    let checkpoint = match store.log_sync_state(log_id).await?.server_checkpoint {
        Some(json) => {
            let c: SignedCheckpoint = serde_json::from_str(&json)
                .map_err(|e| ExportError::Damaged(visit_id, format!("stored checkpoint: {e}")))?;
            c.verify(pinned_server_key.unwrap_or(&c.server_key))
                .map_err(|e| ExportError::Damaged(visit_id, e.to_string()))?;
            (c.checkpoint.log_id == log_id && c.checkpoint.last_seq >= last_seq).then_some(c)
        }
        None => None,
    };
    let end = checkpoint.as_ref().map(|c| c.checkpoint.last_seq).unwrap_or(last_seq);
    let count = u32::try_from(end - first_seq + 1)
        .map_err(|_| ExportError::Damaged(visit_id, "too many events".into()))?;
    let run = store.log_events(log_id, first_seq - 1, count).await?;
    let anchor = if first_seq > 1 {
        let before = store.log_events(log_id, first_seq - 2, 1).await?;
        let e = before.first().ok_or_else(|| {
            ExportError::Damaged(visit_id, format!("event seq {} is missing", first_seq - 1))
        })?;
        Some((e.body.seq, e.hash()))
    } else {
        None
    };
    let mut extras = Extras { checkpoint, ..Default::default() };
    if let Some(path) = sources.trust {
        extras.trust_store =
            Some(read_bounded(path, fieldpatch_proto::trust::MAX_TRUST_STORE_BYTES)?);
    }
    if let Some(catalog) = sources.catalog {
        for id in fieldpatch_proto::audit::bundles_used(&events) {
            let b =
                catalog.bundle(&id).ok_or_else(|| ExportError::BundleNotInCatalog(id.clone()))?;
            let manifest = b
                .bundle
                .manifest()
                .canonical_bytes()
                .map_err(|e| ExportError::Damaged(visit_id, format!("bundle {id}: {e}")))?;
            let verdict = serde_json::to_vec(b.bundle.verdict())
                .map_err(|e| ExportError::Damaged(visit_id, format!("bundle {id}: {e}")))?;
            // The manifest's release signatures, so the verifier re-proves the verdict.
            let header = read_bundle_header(&b.path)?;
            if header.manifest_bytes != manifest {
                return Err(ExportError::Damaged(
                    visit_id,
                    format!("bundle {id} changed on disk since the catalog was verified"),
                ));
            }
            let sigs = serde_json::to_vec(&header.signatures)
                .map_err(|e| ExportError::Damaged(visit_id, format!("bundle {id}: {e}")))?;
            extras.bundle_signatures.push((id.clone(), sigs));
            extras.bundles.push((id, manifest, verdict));
        }
    }
    let archive = audit::build(visit_id, &run, anchor, &extras, key)?;
    // Never hand out an export that does not verify.
    let verified = audit::verify(&archive, pinned_server_key)?;
    write_atomically(out, &archive)?;
    Ok(Exported { path: out.to_path_buf(), bytes: archive.len() as u64, verified })
}

fn read_bundle_header(path: &Path) -> Result<crate::bundle::container::Header, ExportError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let len = f.metadata().map_err(io(path))?.len();
    crate::bundle::container::read_header(&mut f, len)
        .map_err(|e| ExportError::Io { path: path.to_path_buf(), detail: e.to_string() })
}

fn write_atomically(out: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    let tmp = out.with_file_name(name);
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, out).map_err(io(out))?;
    Ok(())
}
