//! The audit export format: a visit exported with and without a server checkpoint verifies, and
//! changing one byte of an event, a CSV cell, the manifest, the PDF or the checkpoint is refused
//! with the specific reason; malformed archives are errors, never panics.

use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use fieldpatch_proto::audit::{self, AuditError, Extras};
use fieldpatch_proto::model::DeviceIdentity;
use fieldpatch_proto::wire::Checkpoint;
use fieldpatch_proto::{Event, EventKind, GENESIS_HASH, TimeSource, UnsignedEvent};
use uuid::Uuid;

struct Visit {
    key: SigningKey,
    visit: Uuid,
    /// The whole log: one event before the visit, the visit, one note after it.
    log: Vec<Event>,
}

fn visit() -> Visit {
    let key = SigningKey::from_bytes(&[7; 32]);
    let log_id = Uuid::from_u128(11);
    let visit = Uuid::from_u128(12);
    let kinds: Vec<(Option<Uuid>, Option<&str>, EventKind)> = vec![
        (None, None, EventKind::LogStarted { previous: None, why: "nothing_known".into() }),
        (
            Some(visit),
            None,
            EventKind::VisitOpened { site: "S-1".into(), work_order: Some("WO-9".into()) },
        ),
        (
            Some(visit),
            Some("d1"),
            EventKind::DeviceIdentified {
                identity: DeviceIdentity {
                    firmware_version: Some("1.0.0".parse().unwrap()),
                    ..Default::default()
                },
            },
        ),
        (
            Some(visit),
            Some("d1"),
            EventKind::BundleVerified {
                bundle_id: "sensor-2.0.0".into(),
                bundle_version: "2.0.0".into(),
                rule: "threshold".into(),
            },
        ),
        (
            Some(visit),
            Some("d1"),
            EventKind::FlashStarted {
                bundle_id: Some("sensor-2.0.0".into()),
                from_version: Some("1.0.0".into()),
                to_version: Some("2.0.0".into()),
                image_sha256: "aa".repeat(32),
                bytes: 100,
            },
        ),
        (
            Some(visit),
            Some("d1"),
            EventKind::Confirmed { version: Some("2.0.0".into()), image_sha256: "aa".repeat(32) },
        ),
        (
            Some(visit),
            Some("d2"),
            EventKind::FlashStarted {
                bundle_id: Some("sensor-2.0.0".into()),
                from_version: Some("1.0.0".into()),
                to_version: Some("2.0.0".into()),
                image_sha256: "aa".repeat(32),
                bytes: 100,
            },
        ),
        (Some(visit), Some("d2"), EventKind::RolledBack { reason: "health check failed".into() }),
        (
            Some(visit),
            Some("d3"),
            EventKind::DeviceMissing { searched: "site S-1 (serial, net)".into() },
        ),
        (Some(visit), None, EventKind::VisitClosed { patched: 1, not_patched: 2 }),
        (None, None, EventKind::Note { text: "after the visit".into() }),
    ];
    let mut prev = GENESIS_HASH.to_string();
    let mut log = Vec::new();
    for (i, (visit_id, device, kind)) in kinds.into_iter().enumerate() {
        let e = UnsignedEvent {
            id: Uuid::from_u128(100 + i as u128),
            log_id,
            seq: i as u64 + 1,
            time: DateTime::<Utc>::from_timestamp(1_800_000_000 + i as i64 * 60, 0).unwrap(),
            time_source: TimeSource::SystemClock,
            signer: hex::encode(key.verifying_key().as_bytes()),
            visit_id,
            device: device.map(str::to_string),
            prev_hash: prev.clone(),
            kind,
        }
        .sign(&key);
        prev = e.hash();
        log.push(e);
    }
    Visit { key, visit, log }
}

fn server_key() -> SigningKey {
    SigningKey::from_bytes(&[9; 32])
}

/// The visit (seq 2..=10) anchored on seq 1; with a checkpoint, up to seq 11.
fn export(v: &Visit, synced: bool) -> Vec<u8> {
    let anchor = Some((1, v.log[0].hash()));
    let mut extras = Extras { trust_store: Some(b"{\"trust\":1}".to_vec()), ..Default::default() };
    let events = if synced {
        let last = v.log.last().unwrap();
        extras.checkpoint = Some(
            Checkpoint {
                log_id: last.body.log_id,
                last_seq: last.body.seq,
                last_hash: last.hash(),
            }
            .sign(&server_key()),
        );
        &v.log[1..]
    } else {
        &v.log[1..10]
    };
    audit::build(v.visit, events, anchor, &extras, &v.key).unwrap()
}

fn edit(archive: &[u8], name: &str, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut files = audit::unpack(archive).unwrap();
    let (_, bytes) = files.iter_mut().find(|(n, _)| n == name).unwrap();
    f(bytes);
    audit::pack(&files).unwrap()
}

fn file(archive: &[u8], name: &str) -> String {
    let files = audit::unpack(archive).unwrap();
    String::from_utf8_lossy(&files.iter().find(|(n, _)| n == name).unwrap().1).into_owned()
}

fn replace_once(bytes: &mut [u8], from: &str, to: &str) {
    assert_eq!(from.len(), to.len(), "one byte, not a length change");
    let at = bytes
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .unwrap_or_else(|| panic!("{from:?} not in {}", String::from_utf8_lossy(bytes)));
    bytes[at..at + to.len()].copy_from_slice(to.as_bytes());
}

#[test]
fn an_export_before_sync_verifies_without_a_checkpoint_and_says_so() {
    let v = visit();
    let archive = export(&v, false);
    let ok = audit::verify(&archive, None).unwrap();
    assert_eq!(ok.checkpoint_server_key, None);
    assert_eq!((ok.events, ok.devices), (9, 3));
    assert_eq!(ok.fingerprint, v.log[9].hash());
    let report = file(&archive, "report.html");
    assert!(report.contains("none (exported before sync)"), "{report}");
    let csv = file(&archive, "devices.csv");
    assert!(csv.starts_with("device,before_version,after_version,"), "{csv}");
    assert!(csv.contains("d1,1.0.0,2.0.0,"), "{csv}");
    assert!(csv.contains(",rolled_back,health check failed,"), "{csv}");
    assert!(csv.contains(",missing,\"not found (site S-1 (serial, net))\","), "{csv}");
    // The same input gives the same bytes.
    assert_eq!(archive, export(&v, false));
}

#[test]
fn a_synced_export_carries_the_countersigned_checkpoint() {
    let v = visit();
    let archive = export(&v, true);
    let pinned = hex::encode(server_key().verifying_key().as_bytes());
    let ok = audit::verify(&archive, Some(&pinned)).unwrap();
    assert_eq!(ok.checkpoint_server_key.as_deref(), Some(pinned.as_str()));
    assert_eq!(ok.events, 10);
    let other = hex::encode(SigningKey::from_bytes(&[1; 32]).verifying_key().as_bytes());
    assert_eq!(audit::verify(&archive, Some(&other)).unwrap_err().code(), "audit_checkpoint");
}

fn refused(archive: &[u8]) -> AuditError {
    audit::verify(archive, None).unwrap_err()
}

#[test]
fn one_changed_byte_anywhere_is_refused_with_its_reason() {
    let v = visit();
    let synced = export(&v, true);

    let e = refused(&edit(&synced, "events.jsonl", |b| {
        replace_once(b, "health check failed", "health check fai1ed")
    }));
    assert_eq!(e.code(), "audit_chain", "{e}");
    assert!(e.to_string().contains("seq 8"), "{e}");

    let e = refused(&edit(&synced, "devices.csv", |b| {
        replace_once(b, "d1,1.0.0,2.0.0", "d1,1.0.0,2.0.1")
    }));
    assert_eq!(e.code(), "audit_not_backed", "{e}");
    assert!(e.to_string().contains("devices.csv") && e.to_string().contains("line 2"), "{e}");

    let e =
        refused(&edit(&synced, "report.pdf", |b| replace_once(b, "rolled_back", "rolled_bacc")));
    assert_eq!(e.code(), "audit_not_backed", "{e}");
    assert!(e.to_string().contains("report.pdf"), "{e}");

    let e =
        refused(&edit(&synced, "report.html", |b| replace_once(b, "<td>d2</td>", "<td>d4</td>")));
    assert!(e.to_string().contains("report.html"), "{e}");

    let e = refused(&edit(&synced, "checkpoint.json", |b| {
        replace_once(b, "\"last_seq\":11", "\"last_seq\":12")
    }));
    assert_eq!(e.code(), "audit_checkpoint", "{e}");

    // The manifest's listed hash of the trust store, one hex digit changed.
    let e = refused(&edit(&synced, "manifest.json", |b| {
        let text = String::from_utf8(b.clone()).unwrap();
        let at = text.find("\"trust_store_sha256\":\"").unwrap() + 22;
        let c = if b[at] == b'0' { b'1' } else { b'0' };
        b[at] = c;
    }));
    assert_eq!(e.code(), "audit_manifest_signature", "{e}");

    let e = refused(&edit(&synced, "trust_store.json", |b| replace_once(b, "1", "2")));
    assert_eq!(e.code(), "audit_file_hash", "{e}");
    assert!(e.to_string().contains("trust_store.json"), "{e}");

    // Dropping the checkpoint from a synced export leaves events nothing vouches for.
    let mut files = audit::unpack(&synced).unwrap();
    files.retain(|(n, _)| n != "checkpoint.json");
    let e = refused(&audit::pack(&files).unwrap());
    assert_eq!(e.code(), "audit_chain", "{e}");
}

#[test]
fn malformed_archives_are_errors_not_panics() {
    let v = visit();
    let archive = export(&v, false);
    assert_eq!(refused(b"not a tar at all, just some text").code(), "audit_archive");
    for cut in [0, 100, 512, archive.len() / 2, archive.len() - 1536] {
        let _ = refused(&archive[..cut]);
    }
    let mut files = audit::unpack(&archive).unwrap();
    files.push(("extra.txt".into(), b"x".to_vec()));
    assert_eq!(refused(&audit::pack(&files).unwrap()).code(), "audit_archive");
    let mut files = audit::unpack(&archive).unwrap();
    files.retain(|(n, _)| n != "report.pdf");
    assert_eq!(refused(&audit::pack(&files).unwrap()).code(), "audit_missing_file");
    let garbage = edit(&archive, "events.jsonl", |b| b.splice(0..1, *b"X").for_each(drop));
    assert_eq!(refused(&garbage).code(), "audit_event");
}

#[test]
fn the_pdf_is_plain_pdf_1_4_with_helvetica_text() {
    let archive = export(&visit(), false);
    let pdf = file(&archive, "report.pdf");
    assert!(pdf.starts_with("%PDF-1.4"), "{pdf}");
    assert!(pdf.contains("/BaseFont /Helvetica"));
    assert!(pdf.contains("(d2: rolled_back \\(1.0.0 -> 1.0.0\\) bundle sensor-2.0.0 ; reason: health check failed) Tj"), "{pdf}");
    assert!(pdf.trim_end().ends_with("%%EOF"));
}
