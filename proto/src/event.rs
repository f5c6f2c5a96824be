//! The visit-log event envelope, its canonical bytes, signatures and the hash chain.
//!
//! Canonical bytes are the compact JSON serialization of [`UnsignedEvent`] (fields in declaration
//! order; object payloads are sorted maps), so the laptop and the server compute them identically.
//! The signature is ed25519 over those bytes. An event's hash is SHA-256 over the canonical bytes
//! followed by the 64 signature bytes, and the next event names it in `prev_hash`; the first event
//! of a log names [`GENESIS_HASH`].
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use crate::model::DeviceIdentity;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// `prev_hash` of the first event in a log.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Where an event's time came from, so an auditor can weigh it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeSource {
    /// The laptop's clock, never synchronised since the last sync.
    SystemClock,
    /// The laptop's clock, checked against the server's at the last sync.
    ServerChecked,
    /// Reported by the device.
    Device,
}

/// The head of a visit log: its last event, as `(log_id, seq, hash)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LogHeadRef {
    pub log_id: Uuid,
    pub seq: u64,
    /// [`Event::hash`] of the event at `seq`.
    pub hash: String,
}

/// What happened. Serialized with a `kind` tag in snake_case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// The first event (seq 1) of a log: the head of the technician's earlier logs this log
    /// continues, as far as the laptop knew when it started it, so the server can tell a log that
    /// carries on from one that was cut or restarted. `previous` is `None` when the laptop knew of
    /// no earlier log. `why` says where `previous` came from (free text for auditors; the laptop
    /// writes `keyring`: the last head the server acknowledged, kept in the OS keyring, which
    /// outlives a wiped data directory; `nothing_known`; or `keyring_record_unreadable`).
    LogStarted {
        previous: Option<LogHeadRef>,
        why: String,
    },
    VisitOpened {
        site: String,
        work_order: Option<String>,
    },
    VisitClosed {
        patched: u32,
        not_patched: u32,
    },
    DeviceDiscovered {
        transport: String,
        address: String,
        /// How discovery found it (`serial`, `usb`, `mdns`, `udp-probe`); absent in events
        /// written before discovery recorded it (so their bytes are unchanged).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        via: Option<String>,
        /// Which inventory key matched it to the event's `device` (`serial_number`,
        /// `only_of_its_model`); absent when the device is unknown to the inventory.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        matched_by: Option<String>,
    },
    /// An inventory device of the site or work order that discovery did not find (`device` is
    /// its inventory id); the visit close-out needs a reason for it.
    DeviceMissing {
        /// What was searched (`work order WO-1`, `site S`) and how (`serial, usb, net`).
        searched: String,
    },
    DeviceIdentified {
        identity: DeviceIdentity,
    },
    /// A device in the work order that was not patched, and why (the technician's reason).
    DeviceNotPatched {
        reason: String,
    },
    BundleVerified {
        bundle_id: String,
        bundle_version: String,
        rule: String,
    },
    BundleRefused {
        bundle_id: String,
        reason: String,
    },
    /// A bare image flashed without a verified signature because the technician said so.
    UnverifiedImageAllowed {
        image_sha256: String,
        reason: String,
    },
    FlashStarted {
        bundle_id: Option<String>,
        from_version: Option<String>,
        to_version: Option<String>,
        image_sha256: String,
        bytes: u64,
    },
    ProgressCheckpoint {
        bytes_done: u64,
        bytes_total: u64,
    },
    ImageUploaded {
        image_sha256: String,
        device_reported_hash: Option<String>,
    },
    TestBootRequested {
        image_sha256: String,
    },
    HealthCheck {
        passed: bool,
        detail: String,
    },
    Confirmed {
        version: Option<String>,
        image_sha256: String,
    },
    RolledBack {
        reason: String,
    },
    Failed {
        stage: String,
        reason: String,
    },
    Note {
        text: String,
    },
    /// A technician's command that changes a device's state (`image_test`, `image_confirm`,
    /// `reset`, ...), recorded before it is sent.
    DeviceCommand {
        command: String,
        image_sha256: Option<String>,
    },
    /// What the device answered to that command, recorded after it.
    DeviceCommandResult {
        command: String,
        ok: bool,
        detail: String,
    },
}

/// Every kind's tag, in declaration order (the server's OpenAPI document lists the same).
pub const KIND_TAGS: &[&str] = &[
    "log_started",
    "visit_opened",
    "visit_closed",
    "device_discovered",
    "device_missing",
    "device_identified",
    "device_not_patched",
    "bundle_verified",
    "bundle_refused",
    "unverified_image_allowed",
    "flash_started",
    "progress_checkpoint",
    "image_uploaded",
    "test_boot_requested",
    "health_check",
    "confirmed",
    "rolled_back",
    "failed",
    "note",
    "device_command",
    "device_command_result",
];

impl EventKind {
    /// The snake_case tag of this kind (as serialized).
    pub fn tag(&self) -> &'static str {
        match self {
            EventKind::LogStarted { .. } => "log_started",
            EventKind::VisitOpened { .. } => "visit_opened",
            EventKind::VisitClosed { .. } => "visit_closed",
            EventKind::DeviceDiscovered { .. } => "device_discovered",
            EventKind::DeviceIdentified { .. } => "device_identified",
            EventKind::DeviceMissing { .. } => "device_missing",
            EventKind::DeviceNotPatched { .. } => "device_not_patched",
            EventKind::BundleVerified { .. } => "bundle_verified",
            EventKind::BundleRefused { .. } => "bundle_refused",
            EventKind::UnverifiedImageAllowed { .. } => "unverified_image_allowed",
            EventKind::FlashStarted { .. } => "flash_started",
            EventKind::ProgressCheckpoint { .. } => "progress_checkpoint",
            EventKind::ImageUploaded { .. } => "image_uploaded",
            EventKind::TestBootRequested { .. } => "test_boot_requested",
            EventKind::HealthCheck { .. } => "health_check",
            EventKind::Confirmed { .. } => "confirmed",
            EventKind::RolledBack { .. } => "rolled_back",
            EventKind::Failed { .. } => "failed",
            EventKind::Note { .. } => "note",
            EventKind::DeviceCommand { .. } => "device_command",
            EventKind::DeviceCommandResult { .. } => "device_command_result",
        }
    }
}

/// Everything in an event except its signature: the signed content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnsignedEvent {
    pub id: Uuid,
    pub log_id: Uuid,
    /// 1 for the first event of a log, then +1 each.
    pub seq: u64,
    pub time: DateTime<Utc>,
    pub time_source: TimeSource,
    /// Hex of the technician's ed25519 public key (32 bytes).
    pub signer: String,
    pub visit_id: Option<Uuid>,
    /// The device this event is about (inventory device id or serial number), if any.
    pub device: Option<String>,
    pub prev_hash: String,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// A signed visit-log event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(flatten)]
    pub body: UnsignedEvent,
    /// Hex ed25519 signature over [`UnsignedEvent::canonical_bytes`].
    pub signature: String,
}

impl UnsignedEvent {
    /// The bytes that are signed and hashed.
    #[allow(
        clippy::expect_used,
        reason = "uuids, numbers, strings, a timestamp and struct variants: serde_json cannot fail on them"
    )]
    pub fn canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an event always serializes")
    }

    /// Sign with the technician's key. `signer` must be that key's public half.
    pub fn sign(self, key: &SigningKey) -> Event {
        let sig = key.sign(&self.canonical_bytes());
        Event { body: self, signature: hex::encode(sig.to_bytes()) }
    }
}

/// Why an event or a chain of events does not verify. Names the first bad event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("event seq {seq} ({id}): signer {signer:?} is not a valid ed25519 public key")]
    BadSigner { seq: u64, id: Uuid, signer: String },
    #[error("event seq {seq} ({id}): signature is malformed")]
    MalformedSignature { seq: u64, id: Uuid },
    #[error("event seq {seq} ({id}): signature does not match its content (edited after signing)")]
    BadSignature { seq: u64, id: Uuid },
    #[error(
        "event seq {seq} ({id}): expected sequence number {expected} (an event was removed, inserted or reordered)"
    )]
    Sequence { seq: u64, id: Uuid, expected: u64 },
    #[error(
        "event seq {seq} ({id}): prev_hash does not match the previous event (an event was removed, inserted, reordered or edited)"
    )]
    BrokenLink { seq: u64, id: Uuid },
    #[error("event seq {seq} ({id}): belongs to log {found}, not {expected}")]
    WrongLog { seq: u64, id: Uuid, expected: Uuid, found: Uuid },
    #[error(
        "event seq {seq} ({id}): follows an event numbered {}, the last sequence number a log can have",
        u64::MAX
    )]
    SequenceExhausted { seq: u64, id: Uuid },
}

impl Event {
    /// SHA-256 over canonical bytes and signature, hex: what the next event's `prev_hash` names.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.body.canonical_bytes());
        h.update(hex::decode(&self.signature).unwrap_or_default());
        hex::encode(h.finalize())
    }

    /// Check the signature against the event's own `signer`.
    pub fn verify_signature(&self) -> Result<(), ChainError> {
        let (seq, id) = (self.body.seq, self.body.id);
        let key = hex::decode(&self.body.signer)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .and_then(|b| VerifyingKey::from_bytes(&b).ok())
            .ok_or_else(|| ChainError::BadSigner { seq, id, signer: self.body.signer.clone() })?;
        let sig = hex::decode(&self.signature)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .map(|b| Signature::from_bytes(&b))
            .ok_or(ChainError::MalformedSignature { seq, id })?;
        key.verify(&self.body.canonical_bytes(), &sig)
            .map_err(|_| ChainError::BadSignature { seq, id })
    }
}

/// Verify a contiguous run of events of one log. `prev` is the `(seq, hash)` of the event before
/// the first one given, or `None` when the run starts the log (seq 1, genesis hash).
pub fn verify_chain(events: &[Event], prev: Option<(u64, String)>) -> Result<(), ChainError> {
    // `None`: the event before was numbered `u64::MAX`, and nothing can follow it.
    let (mut expected_seq, mut expected_hash) = match prev {
        Some((seq, hash)) => (seq.checked_add(1), hash),
        None => (Some(1), GENESIS_HASH.to_string()),
    };
    let log_id = events.first().map(|e| e.body.log_id);
    for e in events {
        let (seq, id) = (e.body.seq, e.body.id);
        if Some(e.body.log_id) != log_id {
            return Err(ChainError::WrongLog {
                seq,
                id,
                expected: log_id.unwrap_or_default(),
                found: e.body.log_id,
            });
        }
        e.verify_signature()?;
        let Some(expected) = expected_seq else {
            return Err(ChainError::SequenceExhausted { seq, id });
        };
        if seq != expected {
            return Err(ChainError::Sequence { seq, id, expected });
        }
        if e.body.prev_hash != expected_hash {
            return Err(ChainError::BrokenLink { seq, id });
        }
        expected_seq = seq.checked_add(1);
        expected_hash = e.hash();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> (SigningKey, Vec<Event>) {
        let key = SigningKey::generate(&mut rand::rng());
        let log_id = Uuid::now_v7();
        let mut prev = GENESIS_HASH.to_string();
        let mut out = Vec::new();
        for seq in 1..=n {
            let e = UnsignedEvent {
                id: Uuid::now_v7(),
                log_id,
                seq,
                time: Utc::now(),
                time_source: TimeSource::SystemClock,
                signer: hex::encode(key.verifying_key().as_bytes()),
                visit_id: None,
                device: Some("dev-1".into()),
                prev_hash: prev.clone(),
                kind: EventKind::Note { text: format!("note {seq}") },
            }
            .sign(&key);
            prev = e.hash();
            out.push(e);
        }
        (key, out)
    }

    #[test]
    fn a_signed_chain_verifies_and_round_trips_through_json() {
        let (_, events) = chain(5);
        verify_chain(&events, None).unwrap();
        let json = serde_json::to_string(&events).unwrap();
        assert!(json.contains("\"kind\":\"note\""), "{json}");
        let back: Vec<Event> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, events);
        verify_chain(&back, None).unwrap();
        verify_chain(&events[2..], Some((2, events[1].hash()))).unwrap();
    }

    #[test]
    fn nothing_follows_the_last_sequence_number() {
        let (_, events) = chain(2);
        let after_max = verify_chain(&events[1..], Some((u64::MAX, events[0].hash())));
        assert!(matches!(after_max, Err(ChainError::SequenceExhausted { seq: 2, .. })));
        let after_max_minus_one =
            verify_chain(&events[1..], Some((u64::MAX - 1, events[0].hash())));
        assert!(matches!(
            after_max_minus_one,
            Err(ChainError::Sequence { expected: u64::MAX, .. })
        ));
    }

    #[test]
    fn kind_tags_name_every_kind_the_parser_knows() {
        // serde names every variant it knows when it meets one it does not.
        let err = serde_json::from_str::<EventKind>(r#"{"kind":"no_such_kind"}"#)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        let expected = err.split("expected one of ").nth(1).unwrap_or_default();
        let known: Vec<&str> = expected
            .split(", ")
            .map(|t| t.split(" at line").next().unwrap_or(t).trim_matches('`'))
            .collect();
        assert_eq!(known, KIND_TAGS, "{err}");
    }

    #[test]
    fn log_started_has_a_fixed_shape_and_older_kinds_keep_their_bytes() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let body = |kind| UnsignedEvent {
            id: Uuid::from_u128(1),
            log_id: Uuid::from_u128(2),
            seq: 1,
            time: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            time_source: TimeSource::SystemClock,
            signer: hex::encode(key.verifying_key().as_bytes()),
            visit_id: None,
            device: None,
            prev_hash: GENESIS_HASH.into(),
            kind,
        };
        let head = |kind| {
            let b = body(kind);
            let text = String::from_utf8(b.canonical_bytes()).unwrap();
            text[text.find("\"prev_hash\"").unwrap()..].to_string()
        };
        let previous = LogHeadRef { log_id: Uuid::from_u128(3), seq: 7, hash: "ab".repeat(32) };
        assert_eq!(
            head(EventKind::LogStarted { previous: Some(previous.clone()), why: "keyring".into() }),
            format!(
                "\"prev_hash\":\"{GENESIS_HASH}\",\"kind\":\"log_started\",\"previous\":{{\"log_id\":\"00000000-0000-0000-0000-000000000003\",\"seq\":7,\"hash\":\"{}\"}},\"why\":\"keyring\"}}",
                "ab".repeat(32)
            )
        );
        assert_eq!(
            head(EventKind::LogStarted { previous: None, why: "nothing_known".into() }),
            format!(
                "\"prev_hash\":\"{GENESIS_HASH}\",\"kind\":\"log_started\",\"previous\":null,\"why\":\"nothing_known\"}}"
            )
        );
        // An event of an older kind signed before log_started existed still verifies.
        assert_eq!(
            head(EventKind::Note { text: "n".into() }),
            format!("\"prev_hash\":\"{GENESIS_HASH}\",\"kind\":\"note\",\"text\":\"n\"}}")
        );
        let started = body(EventKind::LogStarted { previous: Some(previous), why: "x".into() });
        let signed = started.sign(&key);
        let back: Event = serde_json::from_str(&serde_json::to_string(&signed).unwrap()).unwrap();
        assert_eq!(back, signed);
        verify_chain(&[back], None).unwrap();
    }

    #[test]
    fn edits_removals_reorders_and_insertions_name_the_first_bad_event() {
        let (key, events) = chain(5);
        let mut edited = events.clone();
        edited[2].body.kind = EventKind::Note { text: "changed".into() };
        assert_eq!(
            verify_chain(&edited, None),
            Err(ChainError::BadSignature { seq: 3, id: events[2].body.id })
        );

        let mut removed = events.clone();
        removed.remove(1);
        assert!(matches!(verify_chain(&removed, None), Err(ChainError::Sequence { seq: 3, .. })));

        let mut reordered = events.clone();
        reordered.swap(1, 2);
        assert!(matches!(verify_chain(&reordered, None), Err(ChainError::Sequence { seq: 3, .. })));

        // A re-signed replacement with the right seq still breaks the hash link.
        let mut inserted = events.clone();
        let mut forged = events[3].body.clone();
        forged.kind = EventKind::Note { text: "forged".into() };
        forged.prev_hash = GENESIS_HASH.into();
        inserted[3] = forged.sign(&key);
        assert!(matches!(
            verify_chain(&inserted, None),
            Err(ChainError::BrokenLink { seq: 4, .. })
        ));
    }
}
