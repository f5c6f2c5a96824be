//! Site-visit audit exports made by the inventory server (`fieldpatch-server admin export`,
//! `GET /v1/admin/sites/{id}/audit-export`): every visit of a site, one archive per visit, in
//! the laptop's format ([`fieldpatch_proto::audit`]), verifiable by the same verifier.
//!
//! A visit is found by its stored `visit_opened` event (a partial index keeps that a walk over
//! the visits; the event names the site; `--from`/`--to` bound its time). Its run of the log goes from that event to its `visit_closed` event (or, for
//! a visit still open, its last event the server holds), read back exactly as pushed; the event
//! before it is the chain's anchor. The server has no technician key: the manifest is signed by
//! the server's checkpoint key, and `checkpoint.json` is a checkpoint of the visit's log at the
//! end of the run, countersigned by that key at export time (the server holds every event up to
//! there). The events are still checked against the technician key that signed them.
//!
//! The trust store and the bundles are the inventory's own word, made at export time: the
//! archive's `trust_store.json` is the trust store the server publishes (in the bytes a laptop
//! pins it in), and for each bundle the visit verified or flashed that the server holds, its
//! manifest, its release signatures and the server's verdict: the release threshold met under
//! that trust store and every payload's SHA-256 as the manifest says. The verifier re-proves the
//! signatures. A bundle the server cannot vouch for that way (not published, or its signers no
//! longer trusted) is left out, with a warning in the server's log: the events still name it.
//! Every export is verified before it is handed out.

use crate::store::{Store, StoreError};
use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use ed25519_dalek::SigningKey;
use fieldpatch_proto::audit::{self, AuditError, Extras, Verified};
use fieldpatch_proto::event::{Event, EventKind};
use fieldpatch_proto::signature::{CONTEXT_MANIFEST, SignatureEntry, check_threshold};
use fieldpatch_proto::trust::{Role, SignedTrustStore, TrustStore};
use fieldpatch_proto::wire::Checkpoint;
use uuid::Uuid;

/// Events read from the store at once while looking for a visit's end.
const PAGE: u64 = 5_000;

/// Why a site's visits could not be exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("site {0} is not in the inventory and no visit names it")]
    NoSuchSite(String),
    #[error("visit {visit}: {detail}")]
    Incomplete { visit: Uuid, detail: String },
    #[error("visit {visit}: {source}")]
    Audit { visit: Uuid, source: AuditError },
    #[error("{0}")]
    Invalid(String),
}

/// One exported visit.
#[derive(Debug, Clone)]
pub struct VisitExport {
    pub visit_id: Uuid,
    pub log_id: Uuid,
    pub opened: DateTime<Utc>,
    /// The archive (`fieldpatch-audit/v1`, manifest signed by the server key).
    pub archive: Vec<u8>,
    pub verified: Verified,
}

impl VisitExport {
    /// The archive's file name in an export directory.
    pub fn file_name(&self) -> String {
        format!("visit-{}.fieldpatch-audit.tar", self.visit_id)
    }
}

/// Parse a `--from`/`--to` bound: an RFC 3339 time, or a date (`YYYY-MM-DD`), which means the
/// start of that day (UTC) for `from` and its end for `to`.
pub fn parse_bound(text: &str, end_of_day: bool) -> Result<DateTime<Utc>, ExportError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let day = NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
        ExportError::Invalid(format!(
            "{text:?} is neither a date (YYYY-MM-DD) nor an RFC 3339 time"
        ))
    })?;
    Ok(day.and_time(if end_of_day { LAST_NANOSECOND } else { NaiveTime::MIN }).and_utc())
}

/// 23:59:59.999999999, checked when the server is compiled.
const LAST_NANOSECOND: NaiveTime = match NaiveTime::from_hms_nano_opt(23, 59, 59, 999_999_999) {
    Some(t) => t,
    None => panic!("23:59:59.999999999 is a time of day"),
};

/// Export every visit of `site` opened within `from..=to` (either bound optional), oldest first,
/// each signed by the server's `key`.
pub async fn export_site<S: Store>(
    store: &S,
    key: &SigningKey,
    site: &str,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> Result<Vec<VisitExport>, ExportError> {
    if let (Some(f), Some(t)) = (from, to)
        && f > t
    {
        return Err(ExportError::Invalid(format!("--from {f} is after --to {t}")));
    }
    let openings: Vec<Event> = store
        .visit_openings()
        .await?
        .into_iter()
        .filter(|e| matches!(&e.body.kind, EventKind::VisitOpened { site: s, .. } if s == site))
        .collect();
    if openings.is_empty() && !store.sites(None).await?.iter().any(|s| s.id == site) {
        return Err(ExportError::NoSuchSite(site.into()));
    }
    let mut out = Vec::new();
    for opening in openings {
        let t = opening.body.time;
        if from.is_some_and(|f| t < f) || to.is_some_and(|to| t > to) {
            continue;
        }
        out.push(export_visit(store, key, &opening).await?);
    }
    Ok(out)
}

/// Export the visit that `opening` (its stored `visit_opened` event) starts.
pub async fn export_visit<S: Store>(
    store: &S,
    key: &SigningKey,
    opening: &Event,
) -> Result<VisitExport, ExportError> {
    let visit = opening.body.visit_id.ok_or_else(|| ExportError::Incomplete {
        visit: Uuid::nil(),
        detail: format!("visit_opened event {} names no visit", opening.body.id),
    })?;
    let incomplete = |detail: String| ExportError::Incomplete { visit, detail };
    let log_id = opening.body.log_id;
    let log = log_id.to_string();
    let head = store
        .log_head(&log)
        .await?
        .ok_or_else(|| incomplete(format!("the server holds no checkpoint of log {log_id}")))?;
    let start = opening.body.seq;
    // Read the log from the opening until the visit closes (or the server's head).
    let mut run: Vec<Event> = Vec::new();
    let mut end = 0; // index after the visit's last event in `run`
    let mut next = start;
    'pages: while next <= head.last_seq {
        let to = head.last_seq.min(next + PAGE - 1);
        let page = store.log_events(&log, next, to).await?;
        if page.len() as u64 != to - next + 1 {
            return Err(incomplete(format!(
                "events {next}..={to} of log {log_id} are not all stored"
            )));
        }
        for e in page {
            if e.body.seq != next {
                return Err(incomplete(format!("event seq {next} of log {log_id} is missing")));
            }
            next += 1;
            let ours = e.body.visit_id == Some(visit);
            let closes = ours && matches!(e.body.kind, EventKind::VisitClosed { .. });
            run.push(e);
            if ours {
                end = run.len();
            }
            if closes {
                break 'pages;
            }
        }
    }
    run.truncate(end);
    let last = run.last().ok_or_else(|| incomplete("no events".into()))?;
    let anchor = if start > 1 {
        let before = store.log_events(&log, start - 1, start - 1).await?;
        let e = before.first().ok_or_else(|| {
            incomplete(format!("event seq {} of log {log_id} is missing", start - 1))
        })?;
        Some((e.body.seq, e.hash()))
    } else {
        None
    };
    // The server holds every event up to here: it countersigns that, now.
    let checkpoint =
        Checkpoint { log_id, last_seq: last.body.seq, last_hash: last.hash() }.sign(key);
    let mut extras = Extras { checkpoint: Some(checkpoint), ..Default::default() };
    vouch(store, visit, &run, &mut extras).await?;
    let audit_err = |source| ExportError::Audit { visit, source };
    let archive =
        audit::build_signed_by_server(visit, &run, anchor, &extras, key).map_err(audit_err)?;
    // Never hand out an export that does not verify.
    let server_key = hex::encode(key.verifying_key().as_bytes());
    let verified = audit::verify(&archive, Some(&server_key)).map_err(audit_err)?;
    Ok(VisitExport { visit_id: visit, log_id, opened: opening.body.time, archive, verified })
}

/// Add the published trust store and the server's verdicts on the bundles `run` used (see the
/// module docs).
async fn vouch<S: Store>(
    store: &S,
    visit: Uuid,
    run: &[Event],
    extras: &mut Extras,
) -> Result<(), ExportError> {
    let Some(published) = store.trust_store().await? else {
        return Ok(());
    };
    let trust = SignedTrustStore::from_value(&published)
        .and_then(|doc| Ok((doc.file_bytes()?, TrustStore::provision(doc)?)));
    let (trust_bytes, trust) = match trust {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(%visit, "audit export without the trust store: the published one is not valid ({e})");
            return Ok(());
        }
    };
    extras.trust_store = Some(trust_bytes);
    let used = audit::bundles_used(run);
    if used.is_empty() {
        return Ok(());
    }
    let catalog = store.catalog().await?;
    for id in used {
        // The newest published revision of the bundle the log names (a re-issued bundle keeps
        // its id and gets a higher bundle_version, which the visit's event names).
        let named = run
            .iter()
            .find_map(|e| match &e.body.kind {
                EventKind::BundleVerified { bundle_id, bundle_version, .. } if *bundle_id == id => {
                    Some(bundle_version.clone())
                }
                _ => None,
            })
            .filter(|v| !v.is_empty());
        let entry = catalog
            .iter()
            .filter(|c| c.bundle_id == id)
            .filter(|c| {
                named.as_ref().is_none_or(|v| {
                    c.manifest.get("bundle_version").map(|b| b.to_string()).as_deref()
                        == Some(v.as_str())
                })
            })
            .max_by_key(|c| c.published_at);
        let Some(entry) = entry else {
            tracing::warn!(%visit, bundle = %id, "audit export without this bundle's verdict: the inventory does not hold it");
            continue;
        };
        let Some(bytes) = store.bundle_bytes(&entry.sha256).await? else {
            tracing::warn!(%visit, bundle = %id, "audit export without this bundle's verdict: its file is not stored");
            continue;
        };
        match verdict(&id, &entry.sha256, &bytes, &trust) {
            Ok(v) => {
                extras.bundle_signatures.push((id.clone(), v.signatures));
                extras.bundles.push((id, v.manifest, v.verdict));
            }
            Err(why) => {
                tracing::warn!(%visit, bundle = %id, "audit export without this bundle's verdict: {why}");
            }
        }
    }
    Ok(())
}

/// What an export carries for one bundle: its manifest bytes, its signatures (JSON) and the
/// server's verdict (JSON).
struct Vouched {
    manifest: Vec<u8>,
    signatures: Vec<u8>,
    verdict: Vec<u8>,
}

/// The server's verdict on a stored bundle file, or why it cannot vouch for it.
fn verdict(id: &str, sha256: &str, bytes: &[u8], trust: &TrustStore) -> Result<Vouched, String> {
    use sha2::{Digest, Sha256};
    if hex::encode(Sha256::digest(bytes)) != sha256 {
        return Err(format!("the stored file does not hash to its SHA-256 {sha256}"));
    }
    let mut reader = bytes;
    let parts = fieldpatch_proto::bundle::read_header_parts(&mut reader, bytes.len() as u64)
        .map_err(|e| e.to_string())?;
    let manifest: serde_json::Value = fieldpatch_proto::canonical::parse_canonical(&parts.manifest)
        .map_err(|e| format!("the manifest is not canonical JSON ({e:?})"))?;
    if manifest.get("bundle_id").and_then(|v| v.as_str()) != Some(id) {
        return Err("the manifest names another bundle".into());
    }
    let signatures: Vec<SignatureEntry> = serde_json::from_slice(&parts.signatures)
        .map_err(|e| format!("the signature block is not a list of signatures: {e}"))?;
    let signers = check_threshold(
        "bundle manifest",
        CONTEXT_MANIFEST,
        &parts.manifest,
        &signatures,
        trust,
        Role::Release,
    )
    .map_err(|e| {
        format!("its release signatures do not hold under the published trust store: {e}")
    })?;
    // The payloads follow the header, in manifest order, each as long and hashing as it says.
    let mut rest = reader;
    let payloads = manifest.get("payloads").and_then(|p| p.as_array()).cloned().unwrap_or_default();
    for p in &payloads {
        let name = p.get("name").and_then(|v| v.as_str()).unwrap_or("?");
        let len = p.get("length").and_then(|v| v.as_u64()).ok_or("a payload without a length")?;
        let len = usize::try_from(len).map_err(|_| "a payload longer than memory".to_string())?;
        if len > rest.len() {
            return Err(format!("payload {name} is cut short"));
        }
        let (this, after) = rest.split_at(len);
        if Some(hex::encode(Sha256::digest(this)).as_str())
            != p.get("sha256").and_then(|v| v.as_str())
        {
            return Err(format!("payload {name} does not hash to the manifest's SHA-256"));
        }
        rest = after;
    }
    if !rest.is_empty() {
        return Err(format!("{} bytes follow the last payload", rest.len()));
    }
    let checks = serde_json::json!([
        {"name": "release signatures", "ok": true, "detail": format!("{} of the release threshold {} under the published trust store version {}", signers.len(), trust.threshold(Role::Release), trust.version())},
        {"name": "payload hashes", "ok": true, "detail": format!("{} payload(s) hash as the manifest says", payloads.len())},
        {"name": "vouched by", "ok": true, "detail": "the inventory server, at export time"},
    ]);
    let verdict = serde_json::json!({
        "valid": true,
        "bundle_id": id,
        "bundle_version": manifest.get("bundle_version"),
        "installs": manifest.get("installs"),
        "signers": signers,
        "rule": null,
        "checks": checks,
        "error": null,
    });
    let signatures = serde_json::to_vec(&signatures).map_err(|e| e.to_string())?;
    let verdict = serde_json::to_vec(&verdict).map_err(|e| e.to_string())?;
    Ok(Vouched { manifest: parts.manifest, signatures, verdict })
}
