//! The site-visit audit export: one tar archive that anyone can verify offline, built by the
//! laptop (`fieldpatch export`) and checked by `fieldpatch audit verify` (and by the server, which
//! depends on this crate only).
//!
//! # The archive (`fieldpatch-audit/v1`)
//!
//! A POSIX tar (ustar) archive of regular files, in this order:
//!
//! | file | what |
//! |---|---|
//! | `events.jsonl` | one signed visit-log event per line ([`Event`] as compact JSON, exactly as signed: body fields then `signature`), a contiguous run of one log from the visit's first event to its last, extended to the server checkpoint's `last_seq` when there is one |
//! | `technician.pub` | the technician's ed25519 public key, hex, then `\n` |
//! | `devices.csv` | one row per device of the visit, derived only from the visit's events ([`device_rows`]) |
//! | `report.html`, `report.pdf` | the human-readable report, derived only from the events and the manifest |
//! | `checkpoint.json` | optional: the server's countersigned [`SignedCheckpoint`] covering the visit |
//! | `trust_store.json` | optional: the trust store in force, byte for byte |
//! | `bundles/<id>.manifest.json`, `bundles/<id>.verdict.json` | optional: the manifests and verdicts of the bundles the visit used |
//! | `bundles/<id>.signatures.json` | optional: the bundle manifest's detached release signatures (JSON list of [`SignatureEntry`]) |
//! | `manifest.json` | canonical JSON [`Manifest`]: visit, log, technician key, chain anchor, every other file's SHA-256 |
//! | `manifest.sig` | JSON [`SignatureEntry`]: the technician's ed25519 signature over [`CONTEXT_AUDIT_MANIFEST`] followed by the bytes of `manifest.json`; in a server export, the inventory server's signature instead (see below) |
//!
//! # Laptop and server exports
//!
//! The laptop (`fieldpatch export`) signs `manifest.sig` with the technician's key. The inventory
//! server (`fieldpatch-server admin export`) holds every pushed event but no technician key: its
//! exports are **signed by the inventory server key X**, named in the manifest's
//! `signed_by_server_key` (absent in laptop exports). A server export always carries a
//! `checkpoint.json` countersigned by that same server key at the end of the run it exports (the
//! server holds every event up to there). Either way the events themselves are checked against the
//! technician key that signed them (`technician_key`): the server can leave events out of an
//! export, but it cannot make or change one.
//!
//! # The checks ([`verify`]), in order; the first that fails is the answer
//!
//! 1. The archive holds only regular files with the names above, each at most [`MAX_FILE`] bytes,
//!    [`MAX_ARCHIVE`] in all, no name twice; `events.jsonl`, `technician.pub`, `devices.csv`,
//!    `report.html`, `report.pdf`, `manifest.json` and `manifest.sig` are present.
//! 2. `manifest.json` is canonical JSON (sorted keys, no whitespace) of a [`Manifest`] whose
//!    `format` is [`FORMAT`]; `technician.pub` names the manifest's `technician_key`;
//!    `manifest.sig` is by the manifest's signer (its key id: the first 8 bytes of SHA-256 over
//!    the raw key, hex) and verifies (ed25519, strict) over [`CONTEXT_AUDIT_MANIFEST`] +
//!    `manifest.json`. The signer is `technician_key`, or, when `signed_by_server_key` is present
//!    (a server export), that inventory server key, which must then be the key the auditor pins
//!    (when one is pinned).
//! 3. Each line of `events.jsonl` parses as an event and serializes back to the same bytes; the
//!    run verifies as a chain (every signature by its `signer`, seq +1 each, `prev_hash` the hash
//!    of the previous event: SHA-256 over the canonical body and the 64 signature bytes), starting
//!    after the manifest's `anchor` (`seq` 0 and the genesis hash: the log's start); every event
//!    is signed by the technician key and belongs to `log_id`; the first event belongs to the visit.
//! 4. With `checkpoint.json`: the server's signature verifies (against the key the auditor pins,
//!    else the key it names), it is for `log_id`, its `last_seq` is at or after the visit's last
//!    event, the run ends exactly at `last_seq` and that event's hash is `last_hash`. Without it,
//!    the run ends at the visit's last event and the export is reported as not synced. A server
//!    export must have it, countersigned by its `signed_by_server_key`.
//! 5. `devices.csv`, `report.html` and `report.pdf` are regenerated from the events (and the
//!    manifest's visit fields) and must equal the archived bytes: every row and line is backed by
//!    signed events.
//! 6. Every file other than `manifest.json` and `manifest.sig` is listed in the manifest with its
//!    SHA-256 and size, and every listed file is present; `trust_store_sha256` is the hash of
//!    `trust_store.json` (both or neither).
//! 7. With bundle manifests: `trust_store.json` is present and is a trust store signed by a
//!    threshold of its own root keys (its expiry is not checked: it is the store that was in
//!    force). Each `bundles/<id>.manifest.json` has its `.verdict.json` (and the reverse), is
//!    canonical JSON naming `bundle_id` `<id>`; the verdict says `valid: true` for `<id>`, and
//!    every signer it names is a trust-store key with the `release` role, not revoked, at least
//!    the release threshold of them. With `bundles/<id>.signatures.json` the signatures are
//!    re-verified (ed25519, strict) over `CONTEXT_MANIFEST` + the manifest bytes against the trust
//!    store, the release threshold is met, and the signers are exactly the verdict's. Without it,
//!    the verdict's signer list is checked against the trust store but not re-proved, and the
//!    bundle's payloads (not in the archive) are never re-checked: the verdict's other checks
//!    (payload hashes, image headers, expiry, rollback rules) are the laptop's word, signed with
//!    the manifest.
//!
//! Exports never hold secrets: everything in them is the signed events (which name credentials
//! at most by name), public keys, and documents that are public by design.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use crate::event::{Event, EventKind, GENESIS_HASH, verify_chain};
use crate::signature::SignatureEntry;
use crate::wire::SignedCheckpoint;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use uuid::Uuid;

/// The archive format named in [`Manifest::format`].
pub const FORMAT: &str = "fieldpatch-audit/v1";
/// Signing context of `manifest.sig`.
pub const CONTEXT_AUDIT_MANIFEST: &[u8] = b"fieldpatch/audit-manifest/v1\0";
/// Largest file the verifier reads from an archive.
pub const MAX_FILE: u64 = 256 * 1024 * 1024;
/// Largest archive the verifier reads.
pub const MAX_ARCHIVE: u64 = 1024 * 1024 * 1024;

const REQUIRED: [&str; 7] = [
    "events.jsonl",
    "technician.pub",
    "devices.csv",
    "report.html",
    "report.pdf",
    "manifest.json",
    "manifest.sig",
];

/// Why an export cannot be built or does not verify. Names the first problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error("not a readable audit archive: {0}")]
    Archive(String),
    #[error("the audit archive lacks {0}: it is incomplete")]
    MissingFile(String),
    #[error("manifest.json is invalid: {0}")]
    Manifest(String),
    #[error("events.jsonl line {line}: {detail}")]
    Event { line: usize, detail: String },
    #[error("the event chain does not verify: {0}")]
    Chain(String),
    #[error("the server checkpoint does not verify: {0}")]
    Checkpoint(String),
    #[error("{file} is not backed by the signed events: {detail}")]
    NotBacked { file: String, detail: String },
    #[error("manifest.sig: {0}")]
    ManifestSignature(String),
    #[error("{file}: {detail}")]
    FileHash { file: String, detail: String },
    #[error("cannot build the export: {0}")]
    Build(String),
    #[error("bundle {id}: {detail}")]
    Bundle { id: String, detail: String },
}

impl AuditError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            AuditError::Archive(_) => "audit_archive",
            AuditError::MissingFile(_) => "audit_missing_file",
            AuditError::Manifest(_) => "audit_manifest",
            AuditError::Event { .. } => "audit_event",
            AuditError::Chain(_) => "audit_chain",
            AuditError::Checkpoint(_) => "audit_checkpoint",
            AuditError::NotBacked { .. } => "audit_not_backed",
            AuditError::ManifestSignature(_) => "audit_manifest_signature",
            AuditError::FileHash { .. } => "audit_file_hash",
            AuditError::Build(_) => "audit_build",
            AuditError::Bundle { .. } => "audit_bundle",
        }
    }
}

/// Where the run of events starts: the event before it (`seq` 0 and the genesis hash when the
/// run starts the log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    pub seq: u64,
    pub hash: String,
}

/// One file listed in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub sha256: String,
    pub bytes: u64,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub visit_id: Uuid,
    pub log_id: Uuid,
    pub technician_key: String,
    pub anchor: Anchor,
    pub trust_store_sha256: Option<String>,
    pub files: Vec<FileEntry>,
    /// Absent in a laptop export (`manifest.sig` is by `technician_key`). Present in an export
    /// made by the inventory server: `manifest.sig` is by this inventory server key (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by_server_key: Option<String>,
}

/// What goes into an export besides the events.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// The server's countersigned checkpoint of the log, when the visit was synced.
    pub checkpoint: Option<SignedCheckpoint>,
    /// The trust store in force, byte for byte.
    pub trust_store: Option<Vec<u8>>,
    /// `(bundle id, manifest bytes, verdict bytes)` of the bundles used.
    pub bundles: Vec<(String, Vec<u8>, Vec<u8>)>,
    /// `(bundle id, signatures JSON)`: the manifests' detached release signatures, when known.
    pub bundle_signatures: Vec<(String, Vec<u8>)>,
}

/// The bundles `events` name as verified or flashed, each once, in the order first named: the
/// bundles whose manifests and verdicts an export carries.
pub fn bundles_used(events: &[Event]) -> Vec<String> {
    let mut used: Vec<String> = Vec::new();
    for e in events {
        let id = match &e.body.kind {
            EventKind::BundleVerified { bundle_id, .. } => Some(bundle_id),
            EventKind::FlashStarted { bundle_id, .. } => bundle_id.as_ref(),
            _ => None,
        };
        if let Some(id) = id
            && !used.contains(id)
        {
            used.push(id.clone());
        }
    }
    used
}

/// What a verified export says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub visit_id: Uuid,
    pub log_id: Uuid,
    pub technician_key: String,
    pub events: usize,
    pub devices: usize,
    /// The server key that countersigned the visit, `None` when exported before sync.
    pub checkpoint_server_key: Option<String>,
    pub trust_store_sha256: Option<String>,
    /// The hash of the visit's last event: the report's verification fingerprint.
    pub fingerprint: String,
    /// `Some(key)`: a server export, its manifest signed by this inventory server key; `None`:
    /// signed by the technician key.
    pub manifest_server_key: Option<String>,
}

/// One row of `devices.csv`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeviceRow {
    pub device: String,
    pub before_version: String,
    pub after_version: String,
    pub image_sha256: String,
    pub device_reported_hash: String,
    pub bundle_id: String,
    pub bundle_version: String,
    pub stages: String,
    pub outcome: String,
    pub reason: String,
    pub first_event: String,
    pub last_event: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn time_text(e: &Event) -> String {
    e.body.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// One row per device named by the visit's events, in order of first appearance. Outcome:
/// `patched` (confirmed), `rolled_back`, `failed`, `not_patched` (with the technician's reason),
/// `missing` (not found on site), else `seen`.
pub fn device_rows(visit: &[&Event]) -> Vec<DeviceRow> {
    let mut order: Vec<String> = Vec::new();
    let mut rows: BTreeMap<String, DeviceRow> = BTreeMap::new();
    for e in visit {
        let Some(d) = &e.body.device else { continue };
        let row = rows.entry(d.clone()).or_insert_with(|| {
            order.push(d.clone());
            DeviceRow {
                device: d.clone(),
                outcome: "seen".into(),
                first_event: time_text(e),
                ..Default::default()
            }
        });
        row.last_event = time_text(e);
        let tag = e.body.kind.tag();
        if !matches!(e.body.kind, EventKind::ProgressCheckpoint { .. })
            && row.stages.split(' ').next_back() != Some(tag)
        {
            if !row.stages.is_empty() {
                row.stages.push(' ');
            }
            row.stages.push_str(tag);
        }
        match &e.body.kind {
            EventKind::DeviceIdentified { identity } => {
                if let Some(v) = &identity.firmware_version
                    && row.before_version.is_empty()
                {
                    row.before_version = v.to_string();
                }
            }
            EventKind::BundleVerified { bundle_id, bundle_version, .. } => {
                row.bundle_id = bundle_id.clone();
                row.bundle_version = bundle_version.clone();
            }
            EventKind::FlashStarted { bundle_id, from_version, image_sha256, .. } => {
                if let Some(b) = bundle_id {
                    row.bundle_id = b.clone();
                }
                if let Some(v) = from_version
                    && row.before_version.is_empty()
                {
                    row.before_version = v.clone();
                }
                row.image_sha256 = image_sha256.clone();
            }
            EventKind::ImageUploaded { device_reported_hash, .. } => {
                row.device_reported_hash = device_reported_hash.clone().unwrap_or_default();
            }
            EventKind::Confirmed { version, .. } => {
                row.outcome = "patched".into();
                row.after_version = version.clone().unwrap_or_default();
                row.reason.clear();
            }
            EventKind::RolledBack { reason } => {
                row.outcome = "rolled_back".into();
                row.reason = reason.clone();
            }
            EventKind::Failed { stage, reason } => {
                row.outcome = "failed".into();
                row.reason = format!("{stage}: {reason}");
            }
            EventKind::DeviceMissing { searched } => {
                row.outcome = "missing".into();
                row.reason = format!("not found ({searched})");
            }
            EventKind::DeviceNotPatched { reason } => {
                if row.outcome != "rolled_back" && row.outcome != "failed" {
                    row.outcome = "not_patched".into();
                    row.reason = reason.clone();
                } else {
                    row.reason = format!("{}; {reason}", row.reason);
                }
            }
            _ => {}
        }
    }
    for row in rows.values_mut() {
        if row.after_version.is_empty() && row.outcome != "patched" {
            row.after_version = row.before_version.clone();
        }
    }
    order.into_iter().filter_map(|d| rows.remove(&d)).collect()
}

/// `devices.csv` for these rows.
pub fn devices_csv(rows: &[DeviceRow]) -> Result<Vec<u8>, AuditError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r).map_err(|e| AuditError::Build(format!("devices.csv: {e}")))?;
    }
    if rows.is_empty() {
        w.write_record([
            "device",
            "before_version",
            "after_version",
            "image_sha256",
            "device_reported_hash",
            "bundle_id",
            "bundle_version",
            "stages",
            "outcome",
            "reason",
            "first_event",
            "last_event",
        ])
        .map_err(|e| AuditError::Build(format!("devices.csv: {e}")))?;
    }
    w.into_inner().map_err(|e| AuditError::Build(format!("devices.csv: {e}")))
}

/// The lines of the human-readable report (the HTML and the PDF say the same).
fn report_lines(
    m: &Manifest,
    visit: &[&Event],
    rows: &[DeviceRow],
    synced: Option<&str>,
) -> Vec<String> {
    let mut site = String::new();
    let mut work_order = String::new();
    let mut opened = String::new();
    let mut closed = String::from("(not closed)");
    for e in visit {
        match &e.body.kind {
            EventKind::VisitOpened { site: s, work_order: w } => {
                site = s.clone();
                work_order = w.clone().unwrap_or_else(|| "-".into());
                opened = time_text(e);
            }
            EventKind::VisitClosed { .. } => closed = time_text(e),
            _ => {}
        }
    }
    let count = |o: &str| rows.iter().filter(|r| r.outcome == o).count();
    let fingerprint = visit.last().map(|e| e.hash()).unwrap_or_default();
    let mut out = vec![
        format!("Fieldpatch site-visit audit report ({FORMAT})"),
        format!("Visit: {}", m.visit_id),
        format!("Site: {site}   Work order: {work_order}"),
        format!("Opened: {opened}   Closed: {closed}"),
        format!("Technician key: {}", m.technician_key),
        format!(
            "Summary: {} devices; patched {}, rolled back {}, failed {}, not patched {}, missing {}, other {}",
            rows.len(),
            count("patched"),
            count("rolled_back"),
            count("failed"),
            count("not_patched"),
            count("missing"),
            count("seen")
        ),
        format!("Events: {} signed events of log {}", visit.len(), m.log_id),
        format!("Verification fingerprint (hash of the visit's last event): {fingerprint}"),
        match synced {
            Some(key) => format!("Server checkpoint: countersigned by server key {key}"),
            None => "Server checkpoint: none (exported before sync)".to_string(),
        },
        match &m.trust_store_sha256 {
            Some(h) => format!("Trust store SHA-256: {h}"),
            None => "Trust store: not included".to_string(),
        },
    ];
    if let Some(key) = &m.signed_by_server_key {
        out.push(format!("Exported by the inventory server: manifest signed by server key {key}"));
    }
    out.extend([String::new(), "Devices:".to_string()]);
    for r in rows {
        out.push(format!(
            "{}: {} ({} -> {}){}{}",
            r.device,
            r.outcome,
            dash(&r.before_version),
            dash(&r.after_version),
            if r.bundle_id.is_empty() {
                String::new()
            } else {
                format!(" bundle {} {}", r.bundle_id, r.bundle_version)
            },
            if r.reason.is_empty() { String::new() } else { format!("; reason: {}", r.reason) },
        ));
    }
    out
}

fn dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn report_html(lines: &[String], rows: &[DeviceRow]) -> Vec<u8> {
    let mut h = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Fieldpatch audit report</title>\n\
         <style>body{font-family:sans-serif;font-size:11pt;margin:1.5em}table{border-collapse:collapse;width:100%}\
         td,th{border:1px solid #888;padding:2px 4px;font-size:9pt;text-align:left;vertical-align:top}\
         tr{page-break-inside:avoid}@media print{body{margin:0}}</style></head><body>\n",
    );
    let split = lines.iter().position(|l| l.is_empty()).unwrap_or(lines.len());
    if let Some(title) = lines.first() {
        h.push_str(&format!("<h1>{}</h1>\n", html_escape(title)));
    }
    for l in lines.iter().take(split).skip(1) {
        h.push_str(&format!("<p>{}</p>\n", html_escape(l)));
    }
    h.push_str("<h2>Devices</h2>\n<table><tr><th>device</th><th>outcome</th><th>before</th><th>after</th><th>bundle</th><th>stages</th><th>reason</th><th>first</th><th>last</th></tr>\n");
    for r in rows {
        let cells = [
            &r.device,
            &r.outcome,
            &r.before_version,
            &r.after_version,
            &format!("{} {}", r.bundle_id, r.bundle_version),
            &r.stages,
            &r.reason,
            &r.first_event,
            &r.last_event,
        ];
        h.push_str("<tr>");
        for c in cells {
            h.push_str(&format!("<td>{}</td>", html_escape(c.trim())));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n</body></html>\n");
    h.into_bytes()
}

/// A minimal PDF 1.4: A4 pages of Helvetica text, one line per report line (long lines wrapped).
fn report_pdf(lines: &[String]) -> Vec<u8> {
    const PER_PAGE: usize = 60;
    const WIDTH: usize = 100;
    let mut wrapped: Vec<String> = Vec::new();
    for l in lines {
        let ascii: String = l
            .chars()
            .map(|c| if c.is_ascii() && !c.is_ascii_control() { c } else { '?' })
            .collect();
        // Greedy word wrap; a word longer than a line (a hash) is cut.
        let mut line = String::new();
        for word in ascii.split(' ') {
            if !line.is_empty() && line.len().saturating_add(1).saturating_add(word.len()) > WIDTH {
                wrapped.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
            while line.len() > WIDTH {
                let rest = line.split_off(WIDTH);
                wrapped.push(std::mem::replace(&mut line, rest));
            }
        }
        wrapped.push(line);
    }
    let pages: Vec<&[String]> = wrapped.chunks(PER_PAGE).collect();
    let mut objects: Vec<String> = Vec::new();
    // 1 catalog, 2 pages, 3 font, then (page, contents) pairs.
    objects.push("<< /Type /Catalog /Pages 2 0 R >>".into());
    // Page objects are 4, 6, 8...; each page's contents follow it (5, 7, 9...).
    let kids: Vec<String> =
        (4usize..).step_by(2).take(pages.len()).map(|n| format!("{n} 0 R")).collect();
    objects.push(format!("<< /Type /Pages /Kids [{}] /Count {} >>", kids.join(" "), pages.len()));
    objects.push(
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>".into(),
    );
    for (page, contents) in pages.iter().zip((5usize..).step_by(2)) {
        objects.push(format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 3 0 R >> >> /Contents {contents} 0 R >>"
        ));
        let mut s = String::from("BT\n/F1 9 Tf\n11 TL\n40 800 Td\n");
        for l in page.iter() {
            let esc = l.replace('\\', "\\\\").replace('(', "\\(").replace(')', "\\)");
            s.push_str(&format!("({esc}) Tj T*\n"));
        }
        s.push_str("ET\n");
        objects.push(format!("<< /Length {} >>\nstream\n{s}endstream", s.len()));
    }
    let mut out = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut offsets = Vec::new();
    for (o, number) in objects.iter().zip(1usize..) {
        offsets.push(out.len());
        out.extend_from_slice(format!("{number} 0 obj\n{o}\nendobj\n").as_bytes());
    }
    // Object 0 (the free list's head) and every object.
    let size = objects.len().saturating_add(1);
    let xref = out.len();
    out.extend_from_slice(format!("xref\n0 {size}\n0000000000 65535 f \n").as_bytes());
    for off in offsets {
        out.extend_from_slice(format!("{off:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!("trailer\n<< /Size {size} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n").as_bytes(),
    );
    out
}

/// The derived files (`devices.csv`, `report.html`, `report.pdf`) of a run of events.
fn derived(
    m: &Manifest,
    events: &[Event],
    synced: Option<&str>,
) -> Result<Vec<(&'static str, Vec<u8>)>, AuditError> {
    let visit: Vec<&Event> =
        events.iter().filter(|e| e.body.visit_id == Some(m.visit_id)).collect();
    let rows = device_rows(&visit);
    let lines = report_lines(m, &visit, &rows, synced);
    Ok(vec![
        ("devices.csv", devices_csv(&rows)?),
        ("report.html", report_html(&lines, &rows)),
        ("report.pdf", report_pdf(&lines)),
    ])
}

fn events_jsonl(events: &[Event]) -> Result<Vec<u8>, AuditError> {
    let mut out = Vec::new();
    for e in events {
        out.extend(serde_json::to_vec(e).map_err(|e| AuditError::Build(e.to_string()))?);
        out.push(b'\n');
    }
    Ok(out)
}

/// Build the archive of visit `visit_id` from `events` (a contiguous run of one log starting at
/// the visit's first event, extended to the checkpoint's seq when given), the event before the
/// run (`None`: the run starts the log) and `extras`, signed with the technician's `key`.
pub fn build(
    visit_id: Uuid,
    events: &[Event],
    anchor: Option<(u64, String)>,
    extras: &Extras,
    key: &SigningKey,
) -> Result<Vec<u8>, AuditError> {
    let technician_key = hex::encode(key.verifying_key().as_bytes());
    build_with(visit_id, events, anchor, extras, technician_key, key, None)
}

/// Build the archive as the inventory server does: like [`build`], but the manifest is signed by
/// the inventory server's `server_key` (named in [`Manifest::signed_by_server_key`]) and the
/// technician key is the one that signed the events. `extras.checkpoint` must be present and
/// countersigned by `server_key`.
pub fn build_signed_by_server(
    visit_id: Uuid,
    events: &[Event],
    anchor: Option<(u64, String)>,
    extras: &Extras,
    server_key: &SigningKey,
) -> Result<Vec<u8>, AuditError> {
    let first =
        events.first().ok_or_else(|| AuditError::Build("the visit has no events".into()))?;
    let server_hex = hex::encode(server_key.verifying_key().as_bytes());
    match &extras.checkpoint {
        Some(c) if c.server_key.eq_ignore_ascii_case(&server_hex) => {}
        _ => {
            return Err(AuditError::Build(
                "a server export needs a checkpoint countersigned by the server key".into(),
            ));
        }
    }
    let technician_key = first.body.signer.clone();
    build_with(visit_id, events, anchor, extras, technician_key, server_key, Some(server_hex))
}

fn build_with(
    visit_id: Uuid,
    events: &[Event],
    anchor: Option<(u64, String)>,
    extras: &Extras,
    technician_key: String,
    key: &SigningKey,
    signed_by_server_key: Option<String>,
) -> Result<Vec<u8>, AuditError> {
    let first =
        events.first().ok_or_else(|| AuditError::Build("the visit has no events".into()))?;
    let anchor = anchor
        .map(|(seq, hash)| Anchor { seq, hash })
        .unwrap_or(Anchor { seq: 0, hash: GENESIS_HASH.into() });
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("events.jsonl".into(), events_jsonl(events)?),
        ("technician.pub".into(), format!("{technician_key}\n").into_bytes()),
    ];
    let mut manifest = Manifest {
        format: FORMAT.into(),
        visit_id,
        log_id: first.body.log_id,
        technician_key,
        anchor,
        trust_store_sha256: extras.trust_store.as_deref().map(sha256_hex),
        files: vec![],
        signed_by_server_key,
    };
    let synced = extras.checkpoint.as_ref().map(|c| c.server_key.clone());
    for (name, bytes) in derived(&manifest, events, synced.as_deref())? {
        files.push((name.into(), bytes));
    }
    if let Some(c) = &extras.checkpoint {
        let json = serde_json::to_vec(c).map_err(|e| AuditError::Build(e.to_string()))?;
        files.push(("checkpoint.json".into(), json));
    }
    if let Some(t) = &extras.trust_store {
        files.push(("trust_store.json".into(), t.clone()));
    }
    for (id, manifest_bytes, verdict) in &extras.bundles {
        if !valid_bundle_id(id) {
            return Err(AuditError::Build(format!("bundle id {id:?} cannot name a file")));
        }
        files.push((format!("bundles/{id}.manifest.json"), manifest_bytes.clone()));
        files.push((format!("bundles/{id}.verdict.json"), verdict.clone()));
        if let Some((_, sigs)) = extras.bundle_signatures.iter().find(|(i, _)| i == id) {
            files.push((format!("bundles/{id}.signatures.json"), sigs.clone()));
        }
    }
    manifest.files = files
        .iter()
        .map(|(name, b)| FileEntry {
            name: name.clone(),
            sha256: sha256_hex(b),
            bytes: b.len() as u64,
        })
        .collect();
    let manifest_bytes = crate::canonical::to_canonical_of(&manifest)
        .map_err(|e| AuditError::Build(format!("manifest: {e:?}")))?;
    let mut msg = CONTEXT_AUDIT_MANIFEST.to_vec();
    msg.extend_from_slice(&manifest_bytes);
    let sig = SignatureEntry {
        key_id: crate::signature::key_id(&key.verifying_key()),
        signature: hex::encode(key.sign(&msg).to_bytes()),
    };
    files.push(("manifest.json".into(), manifest_bytes));
    files.push((
        "manifest.sig".into(),
        serde_json::to_vec(&sig).map_err(|e| AuditError::Build(e.to_string()))?,
    ));
    pack(&files)
}

fn valid_bundle_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !id.starts_with('.')
}

/// Write `files` as a ustar archive (fixed mode and time, so the bytes depend only on content).
pub fn pack(files: &[(String, Vec<u8>)]) -> Result<Vec<u8>, AuditError> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, bytes) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, bytes.as_slice())
            .map_err(|e| AuditError::Build(format!("{name}: {e}")))?;
    }
    b.into_inner().map_err(|e| AuditError::Build(e.to_string()))
}

/// Read the files of an archive, bounded and in order (check 1 of the module docs).
pub fn unpack(archive: &[u8]) -> Result<Vec<(String, Vec<u8>)>, AuditError> {
    if archive.len() as u64 > MAX_ARCHIVE {
        return Err(AuditError::Archive(format!("larger than {MAX_ARCHIVE} bytes")));
    }
    let bad = |e: std::io::Error| AuditError::Archive(e.to_string());
    let mut a = tar::Archive::new(archive);
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in a.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let name = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|_| AuditError::Archive("a file name is not UTF-8".into()))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(AuditError::Archive(format!("{name} is not a regular file")));
        }
        let allowed = REQUIRED.contains(&name.as_str())
            || matches!(name.as_str(), "checkpoint.json" | "trust_store.json")
            || name
                .strip_prefix("bundles/")
                .and_then(|n| {
                    n.strip_suffix(".manifest.json")
                        .or_else(|| n.strip_suffix(".verdict.json"))
                        .or_else(|| n.strip_suffix(".signatures.json"))
                })
                .is_some_and(valid_bundle_id);
        if !allowed {
            return Err(AuditError::Archive(format!("unexpected file {name:?}")));
        }
        if out.iter().any(|(n, _)| *n == name) {
            return Err(AuditError::Archive(format!("{name} appears twice")));
        }
        let size = entry.header().size().map_err(bad)?;
        if size > MAX_FILE {
            return Err(AuditError::Archive(format!("{name} is larger than {MAX_FILE} bytes")));
        }
        // The header's size is only a claim: refuse it before reserving memory for it.
        let left = (archive.len() as u64).saturating_sub(entry.raw_file_position());
        if size > left {
            return Err(AuditError::Archive(format!(
                "{name} claims {size} bytes but only {left} follow its header (the archive is truncated or corrupt)"
            )));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        entry.take(MAX_FILE + 1).read_to_end(&mut bytes).map_err(bad)?;
        out.push((name, bytes));
    }
    for r in REQUIRED {
        if !out.iter().any(|(n, _)| n == r) {
            return Err(AuditError::MissingFile(r.into()));
        }
    }
    Ok(out)
}

fn first_difference(a: &[u8], b: &[u8]) -> String {
    let (a, b) = (String::from_utf8_lossy(a), String::from_utf8_lossy(b));
    let (mut al, mut bl) = (a.lines(), b.lines());
    for n in 1.. {
        match (al.next(), bl.next()) {
            (None, None) => break,
            (x, y) if x == y => continue,
            (x, y) => {
                return format!(
                    "line {n} reads {:?}, the events say {:?}",
                    x.unwrap_or("(nothing)"),
                    y.unwrap_or("(nothing)")
                );
            }
        }
    }
    "the bytes differ from what the events give".into()
}

/// Verify an archive offline (the checks of the module docs, in order). `pinned_server_key`
/// is the server key the auditor trusts for the checkpoint; `None` accepts the key it names.
pub fn verify(archive: &[u8], pinned_server_key: Option<&str>) -> Result<Verified, AuditError> {
    // 1.
    let files = unpack(archive)?;
    let file = |name: &str| files.iter().find(|(n, _)| n == name).map(|(_, b)| b.as_slice());
    let need = |name: &str| file(name).ok_or_else(|| AuditError::MissingFile(name.into()));
    // 2.
    let manifest_bytes = need("manifest.json")?;
    let value = crate::canonical::parse_canonical(manifest_bytes)
        .map_err(|e| AuditError::Manifest(format!("not canonical JSON ({e:?})")))?;
    let m: Manifest =
        serde_json::from_value(value).map_err(|e| AuditError::Manifest(e.to_string()))?;
    if m.format != FORMAT {
        return Err(AuditError::Manifest(format!("format {:?}, expected {FORMAT}", m.format)));
    }
    let tech = crate::wire::parse_key(&m.technician_key)
        .ok_or_else(|| AuditError::Manifest("technician_key is not an ed25519 key".into()))?;
    if need("technician.pub")? != format!("{}\n", m.technician_key).as_bytes() {
        return Err(AuditError::Manifest("technician.pub does not name technician_key".into()));
    }
    // 2b.
    let (signer, signer_name) = match &m.signed_by_server_key {
        None => (tech, "the technician key".to_string()),
        Some(k) => {
            if let Some(p) = pinned_server_key
                && !p.eq_ignore_ascii_case(k)
            {
                return Err(AuditError::ManifestSignature(format!(
                    "signed by the inventory server key {k}, not by the pinned server key {p}"
                )));
            }
            let key = crate::wire::parse_key(k).ok_or_else(|| {
                AuditError::Manifest("signed_by_server_key is not an ed25519 key".into())
            })?;
            (key, format!("the inventory server key {k}"))
        }
    };
    let sig: SignatureEntry = serde_json::from_slice(need("manifest.sig")?)
        .map_err(|e| AuditError::ManifestSignature(format!("unreadable: {e}")))?;
    if sig.key_id != crate::signature::key_id(&signer) {
        return Err(AuditError::ManifestSignature(format!("not by {signer_name}")));
    }
    let raw = hex::decode(&sig.signature)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .ok_or_else(|| AuditError::ManifestSignature("malformed signature".into()))?;
    let mut msg = CONTEXT_AUDIT_MANIFEST.to_vec();
    msg.extend_from_slice(manifest_bytes);
    VerifyingKey::verify_strict(&signer, &msg, &Signature::from_bytes(&raw)).map_err(|_| {
        AuditError::ManifestSignature("does not match manifest.json (edited after signing)".into())
    })?;
    // 3.
    let text = std::str::from_utf8(need("events.jsonl")?)
        .map_err(|_| AuditError::Event { line: 0, detail: "not UTF-8".into() })?;
    let mut events = Vec::new();
    for (line_no, line) in (1usize..).zip(text.split_terminator('\n')) {
        let e: Event = serde_json::from_str(line).map_err(|err| AuditError::Event {
            line: line_no,
            detail: format!("not an event: {err}"),
        })?;
        if serde_json::to_string(&e).ok().as_deref() != Some(line) {
            return Err(AuditError::Event {
                line: line_no,
                detail: "not the exact signed envelope (re-serializes differently)".into(),
            });
        }
        if e.body.signer != m.technician_key {
            return Err(AuditError::Event {
                line: line_no,
                detail: "not signed by the technician key".into(),
            });
        }
        if e.body.log_id != m.log_id {
            return Err(AuditError::Event {
                line: line_no,
                detail: format!("belongs to log {}", e.body.log_id),
            });
        }
        events.push(e);
    }
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Err(AuditError::Event { line: 0, detail: "no events".into() });
    };
    let anchor = (m.anchor.seq > 0).then(|| (m.anchor.seq, m.anchor.hash.clone()));
    if m.anchor.seq == 0 && m.anchor.hash != GENESIS_HASH {
        return Err(AuditError::Chain("anchor seq 0 must name the genesis hash".into()));
    }
    verify_chain(&events, anchor).map_err(|e| AuditError::Chain(e.to_string()))?;
    if first.body.visit_id != Some(m.visit_id) {
        return Err(AuditError::Chain(
            "the run does not start with the visit's first event".into(),
        ));
    }
    // The first event is the visit's, so the search always finds one.
    let last_visit =
        events.iter().rposition(|e| e.body.visit_id == Some(m.visit_id)).unwrap_or_default();
    let last_visit_event = events.get(last_visit).unwrap_or(first);
    let fingerprint = last_visit_event.hash();
    // 4.
    let checkpoint = match file("checkpoint.json") {
        None if m.signed_by_server_key.is_some() => {
            return Err(AuditError::Checkpoint(
                "a server export must carry the server's checkpoint".into(),
            ));
        }
        None => {
            if last_visit.saturating_add(1) != events.len() {
                return Err(AuditError::Chain(
                    "events follow the visit's last event but no server checkpoint needs them"
                        .into(),
                ));
            }
            None
        }
        Some(bytes) => {
            let c: SignedCheckpoint = serde_json::from_slice(bytes)
                .map_err(|e| AuditError::Checkpoint(format!("checkpoint.json: {e}")))?;
            let expected =
                m.signed_by_server_key.as_deref().or(pinned_server_key).unwrap_or(&c.server_key);
            c.verify(expected).map_err(|e| AuditError::Checkpoint(e.to_string()))?;
            let cp = &c.checkpoint;
            if cp.log_id != m.log_id {
                return Err(AuditError::Checkpoint(format!("it is for log {}", cp.log_id)));
            }
            if cp.last_seq < last_visit_event.body.seq {
                return Err(AuditError::Checkpoint(format!(
                    "it covers up to seq {}, before the visit's last event",
                    cp.last_seq
                )));
            }
            if last.body.seq != cp.last_seq || last.hash() != cp.last_hash {
                return Err(AuditError::Checkpoint(format!(
                    "the events do not end at the countersigned head (seq {})",
                    cp.last_seq
                )));
            }
            Some(c.server_key.clone())
        }
    };
    // 5.
    for (name, expected) in derived(&m, &events, checkpoint.as_deref())? {
        let got = need(name)?;
        if got != expected.as_slice() {
            return Err(AuditError::NotBacked {
                file: name.into(),
                detail: first_difference(got, &expected),
            });
        }
    }
    // 6.
    for (name, bytes) in &files {
        if name == "manifest.json" || name == "manifest.sig" {
            continue;
        }
        let entry = m.files.iter().find(|f| f.name == *name).ok_or_else(|| {
            AuditError::FileHash { file: name.clone(), detail: "not listed in the manifest".into() }
        })?;
        if entry.sha256 != sha256_hex(bytes) || entry.bytes != bytes.len() as u64 {
            return Err(AuditError::FileHash {
                file: name.clone(),
                detail: "its SHA-256 is not the one the signed manifest lists".into(),
            });
        }
    }
    for f in &m.files {
        if file(&f.name).is_none() {
            return Err(AuditError::MissingFile(f.name.clone()));
        }
    }
    match (file("trust_store.json"), &m.trust_store_sha256) {
        (None, None) => {}
        (Some(t), Some(h)) if sha256_hex(t) == *h => {}
        _ => {
            return Err(AuditError::FileHash {
                file: "trust_store.json".into(),
                detail: "does not match trust_store_sha256".into(),
            });
        }
    }
    // 7.
    check_bundles(&files)?;
    let devices = csv::Reader::from_reader(need("devices.csv")?).records().count();
    Ok(Verified {
        visit_id: m.visit_id,
        log_id: m.log_id,
        technician_key: m.technician_key,
        events: events.len(),
        devices,
        checkpoint_server_key: checkpoint,
        trust_store_sha256: m.trust_store_sha256,
        fingerprint,
        manifest_server_key: m.signed_by_server_key,
    })
}

/// Check 7 of the module docs: the bundles' verdicts against the included trust store.
fn check_bundles(files: &[(String, Vec<u8>)]) -> Result<(), AuditError> {
    use crate::trust::{Role, TrustStore};
    let file = |name: &str| files.iter().find(|(n, _)| n == name).map(|(_, b)| b.as_slice());
    let ids = |suffix: &str| -> Vec<String> {
        files
            .iter()
            .filter_map(|(n, _)| n.strip_prefix("bundles/")?.strip_suffix(suffix))
            .map(str::to_string)
            .collect()
    };
    let manifests = ids(".manifest.json");
    for (suffix, kind) in [(".verdict.json", "verdict"), (".signatures.json", "signatures")] {
        if let Some(id) = ids(suffix).into_iter().find(|id| !manifests.contains(id)) {
            return Err(AuditError::Bundle {
                id,
                detail: format!("a {kind} without its manifest"),
            });
        }
    }
    let Some(first_manifest) = manifests.first() else {
        return Ok(());
    };
    let bad = |id: &str, detail: String| AuditError::Bundle { id: id.to_string(), detail };
    let trust_bytes = file("trust_store.json").ok_or_else(|| {
        bad(
            first_manifest,
            "bundle verdicts need the trust store in force (trust_store.json)".into(),
        )
    })?;
    let trust = TrustStore::from_json(trust_bytes).map_err(|e| AuditError::FileHash {
        file: "trust_store.json".into(),
        detail: format!("not a valid trust store: {e}"),
    })?;
    let need = trust.threshold(Role::Release);
    for id in &manifests {
        let manifest = file(&format!("bundles/{id}.manifest.json")).unwrap_or_default();
        let value = crate::canonical::parse_canonical(manifest)
            .map_err(|e| bad(id, format!("the manifest is not canonical JSON ({e:?})")))?;
        if value.get("bundle_id").and_then(|v| v.as_str()) != Some(id.as_str()) {
            return Err(bad(id, "the manifest names another bundle".into()));
        }
        let verdict_bytes = file(&format!("bundles/{id}.verdict.json"))
            .ok_or_else(|| bad(id, "the verdict is missing".into()))?;
        let verdict: serde_json::Value = serde_json::from_slice(verdict_bytes)
            .map_err(|e| bad(id, format!("the verdict is not JSON: {e}")))?;
        if verdict.get("valid") != Some(&serde_json::Value::Bool(true)) {
            return Err(bad(id, "the verdict does not say valid".into()));
        }
        if verdict.get("bundle_id").and_then(|v| v.as_str()) != Some(id.as_str()) {
            return Err(bad(id, "the verdict is for another bundle".into()));
        }
        let mut signers: Vec<String> = verdict
            .get("signers")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        signers.sort();
        signers.dedup();
        for s in &signers {
            match trust.lookup(s) {
                None => return Err(bad(id, format!("signer {s} is not in the trust store"))),
                Some((_, _, true)) => {
                    return Err(bad(id, format!("signer {s} is revoked in the trust store")));
                }
                Some((_, roles, false)) if !roles.contains(&Role::Release) => {
                    return Err(bad(id, format!("signer {s} does not hold the release role")));
                }
                Some(_) => {}
            }
        }
        if (signers.len() as u64) < u64::from(need) {
            return Err(bad(
                id,
                format!(
                    "the verdict names {} release signer(s), the threshold is {need}",
                    signers.len()
                ),
            ));
        }
        if let Some(sig_bytes) = file(&format!("bundles/{id}.signatures.json")) {
            let sigs: Vec<SignatureEntry> = serde_json::from_slice(sig_bytes)
                .map_err(|e| bad(id, format!("signatures.json: {e}")))?;
            let proved = crate::signature::check_threshold(
                "bundle manifest",
                crate::signature::CONTEXT_MANIFEST,
                manifest,
                &sigs,
                &trust,
                Role::Release,
            )
            .map_err(|e| bad(id, format!("the release signatures do not verify: {e}")))?;
            if proved != signers {
                return Err(bad(
                    id,
                    "the verdict's signers are not the signatures' signers".into(),
                ));
            }
        }
    }
    Ok(())
}
