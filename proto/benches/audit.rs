//! Audit export figures: build and verify the archive of one visit of 1,000 devices and 100,000
//! signed events (goal: each under 5 s), and the archive's size.
//! Run: `cargo bench -p fieldpatch-proto --bench audit`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap fails the run

use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use fieldpatch_proto::audit::{self, Extras};
use fieldpatch_proto::{Event, EventKind, GENESIS_HASH, TimeSource, UnsignedEvent};
use std::time::Instant;
use uuid::Uuid;

const DEVICES: usize = 1_000;
const EVENTS: usize = 100_000;

fn main() {
    let key = SigningKey::from_bytes(&[1; 32]);
    let signer = hex::encode(key.verifying_key().as_bytes());
    let (log_id, visit) = (Uuid::now_v7(), Uuid::now_v7());
    let per_device = (EVENTS - 2) / DEVICES;
    let mut kinds = vec![(None, EventKind::VisitOpened { site: "S".into(), work_order: None })];
    for d in 0..DEVICES {
        let dev = Some(format!("dev-{d:04}"));
        kinds.push((
            dev.clone(),
            EventKind::FlashStarted {
                bundle_id: Some("b-2.0.0".into()),
                from_version: Some("1.0.0".into()),
                to_version: Some("2.0.0".into()),
                image_sha256: "ab".repeat(32),
                bytes: 1 << 20,
            },
        ));
        for i in 0..per_device - 2 {
            let kind =
                EventKind::ProgressCheckpoint { bytes_done: i as u64 * 4096, bytes_total: 1 << 20 };
            kinds.push((dev.clone(), kind));
        }
        let last = if d % 10 == 0 {
            EventKind::RolledBack { reason: "health check failed".into() }
        } else {
            EventKind::Confirmed { version: Some("2.0.0".into()), image_sha256: "ab".repeat(32) }
        };
        kinds.push((dev, last));
    }
    kinds.push((None, EventKind::VisitClosed { patched: 900, not_patched: 100 }));
    let t = Instant::now();
    let mut prev = GENESIS_HASH.to_string();
    let mut events: Vec<Event> = Vec::with_capacity(kinds.len());
    for (i, (device, kind)) in kinds.into_iter().enumerate() {
        let e = UnsignedEvent {
            id: Uuid::now_v7(),
            log_id,
            seq: i as u64 + 2,
            time: DateTime::<Utc>::from_timestamp(1_800_000_000 + i as i64, 0).unwrap(),
            time_source: TimeSource::SystemClock,
            signer: signer.clone(),
            visit_id: Some(visit),
            device,
            prev_hash: prev,
            kind,
        }
        .sign(&key);
        prev = e.hash();
        events.push(e);
    }
    println!("signed {} events in {:.2?} (setup)", events.len(), t.elapsed());
    let anchor = Some((1, events[0].body.prev_hash.clone()));

    let t = Instant::now();
    let archive = audit::build(visit, &events, anchor, &Extras::default(), &key).unwrap();
    let built = t.elapsed();
    let t = Instant::now();
    let ok = audit::verify(&archive, None).unwrap();
    let verified = t.elapsed();
    assert_eq!((ok.events, ok.devices), (events.len(), DEVICES));
    for (name, d) in [("build the archive", built), ("verify the archive offline", verified)] {
        println!(
            "FIGURE {}",
            serde_json::json!({
                "group": format!("Audit export ({DEVICES} devices, {} events)", events.len()),
                "name": name, "value": d.as_secs_f64(), "unit": "s", "runs": 1,
                "limit": 5.0, "better": "lower", "goal": "under 5 s",
            })
        );
    }
    println!(
        "audit export of {DEVICES} devices, {} events: build {built:.2?}, verify {verified:.2?} (goal: each under 5 s), archive {:.1} MiB",
        events.len(),
        archive.len() as f64 / (1024.0 * 1024.0)
    );
}
