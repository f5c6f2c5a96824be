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
//! Not included (the server does not know them as they were on site): the trust store in force
//! on the laptop and the bundles' verdicts. Every export is verified before it is handed out.

use crate::store::{Store, StoreError};
use chrono::{DateTime, NaiveDate, Utc};
use ed25519_dalek::SigningKey;
use fieldpatch_proto::audit::{self, AuditError, Extras, Verified};
use fieldpatch_proto::event::{Event, EventKind};
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
    let t = if end_of_day {
        day.and_hms_nano_opt(23, 59, 59, 999_999_999)
    } else {
        day.and_hms_opt(0, 0, 0)
    };
    Ok(t.expect("a valid time of day").and_utc())
}

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
    let extras = Extras { checkpoint: Some(checkpoint), ..Default::default() };
    let audit_err = |source| ExportError::Audit { visit, source };
    let archive =
        audit::build_signed_by_server(visit, &run, anchor, &extras, key).map_err(audit_err)?;
    // Never hand out an export that does not verify.
    let server_key = hex::encode(key.verifying_key().as_bytes());
    let verified = audit::verify(&archive, Some(&server_key)).map_err(audit_err)?;
    Ok(VisitExport { visit_id: visit, log_id, opened: opening.body.time, archive, verified })
}
