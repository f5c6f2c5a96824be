//! The `/v1` sync API's request and response bodies, shared by the server and the client.
//!
//! The server countersigns what it accepted as a [`Checkpoint`]: `(log_id, last_seq, last_hash)`.
//! Its canonical bytes are a fixed domain-separation prefix followed by compact JSON, so a
//! checkpoint signature can never be confused with an event signature. Checkpoints carry no time,
//! so the acknowledgement of a replayed batch is byte-for-byte the same as the first one.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use crate::event::Event;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Prefix of the bytes the server signs for a checkpoint.
pub const CHECKPOINT_DOMAIN: &[u8] = b"fieldpatch-checkpoint-v1\n";

/// Most events the server takes in one push.
pub const MAX_PUSH_EVENTS: usize = 5000;

/// `POST /v1/push` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PushRequest {
    pub events: Vec<Event>,
}

/// What the server holds of one visit log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    pub log_id: Uuid,
    pub last_seq: u64,
    pub last_hash: String,
}

impl Checkpoint {
    /// The bytes the server signs.
    #[allow(
        clippy::expect_used,
        reason = "a uuid, a number and a string: serde_json cannot fail on them"
    )]
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = CHECKPOINT_DOMAIN.to_vec();
        out.extend(serde_json::to_vec(self).expect("a checkpoint always serializes"));
        out
    }

    /// Countersign with the server's key.
    pub fn sign(self, key: &SigningKey) -> SignedCheckpoint {
        let signature = hex::encode(key.sign(&self.canonical_bytes()).to_bytes());
        SignedCheckpoint {
            checkpoint: self,
            server_key: hex::encode(key.verifying_key().as_bytes()),
            signature,
        }
    }
}

/// A checkpoint countersigned by the server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignedCheckpoint {
    #[serde(flatten)]
    pub checkpoint: Checkpoint,
    /// Hex of the server's ed25519 public key.
    pub server_key: String,
    /// Hex ed25519 signature over [`Checkpoint::canonical_bytes`].
    pub signature: String,
}

/// Why a countersigned checkpoint does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error(
        "checkpoint for log {0} is signed by an unexpected server key; check the server address, or re-pin the server key if it was rotated"
    )]
    WrongKey(Uuid),
    #[error("checkpoint for log {0} has a malformed signature or key")]
    Malformed(Uuid),
    #[error("checkpoint for log {0}: the server's signature does not match its content")]
    BadSignature(Uuid),
}

impl SignedCheckpoint {
    /// Verify against the expected server key (hex).
    pub fn verify(&self, expected_server_key: &str) -> Result<(), CheckpointError> {
        let log = self.checkpoint.log_id;
        if !self.server_key.eq_ignore_ascii_case(expected_server_key) {
            return Err(CheckpointError::WrongKey(log));
        }
        let key = parse_key(&self.server_key).ok_or(CheckpointError::Malformed(log))?;
        let sig = hex::decode(&self.signature)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .map(|b| Signature::from_bytes(&b))
            .ok_or(CheckpointError::Malformed(log))?;
        key.verify(&self.checkpoint.canonical_bytes(), &sig)
            .map_err(|_| CheckpointError::BadSignature(log))
    }
}

/// Parse a hex ed25519 public key.
pub fn parse_key(hex_key: &str) -> Option<VerifyingKey> {
    hex::decode(hex_key)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
}

/// Whether the same event pushed again later could be accepted.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProblemClass {
    /// Push again later (e.g. earlier events of the log have not arrived yet).
    Retryable,
    /// The server will never accept this event as it is.
    Rejected,
}

/// One event the server did not store, and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventProblem {
    pub id: Uuid,
    pub log_id: Uuid,
    pub seq: u64,
    /// Stable machine-readable code: `gap`, `foreign_signer`, `foreign_log`, `bad_signature`,
    /// `broken_chain`, `conflict`, `duplicate_id`, `after_rejected`, `after_gap`, `invalid`;
    /// in `not_applied`: `device_not_assigned`.
    pub code: String,
    /// What was wrong, for the technician.
    pub reason: String,
}

/// `POST /v1/push` response. Replaying a batch returns the same acknowledgement.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct PushAck {
    /// Events the server holds (stored by this push or an earlier one), in request order.
    pub stored: Vec<Uuid>,
    pub retryable: Vec<EventProblem>,
    pub rejected: Vec<EventProblem>,
    /// The server's countersigned head of every log named in the batch that it holds events of.
    pub checkpoints: Vec<SignedCheckpoint>,
    /// Events stored (the log stays whole) but not applied to the inventory, with the reason:
    /// for example about a device at a site not assigned to the technician.
    #[serde(default)]
    pub not_applied: Vec<EventProblem>,
}

/// A site in the inventory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Site {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub address: Option<String>,
}

/// A device in the inventory, with what the inventory has learnt from visit logs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Device {
    pub id: String,
    pub site_id: String,
    #[serde(default)]
    pub vendor: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub hardware_revision: Option<String>,
    #[serde(default)]
    pub serial_number: Option<String>,
    /// The firmware version this device should run.
    #[serde(default)]
    pub approved_version: Option<String>,
    /// The firmware version last confirmed on the device.
    #[serde(default)]
    pub current_firmware: Option<String>,
    #[serde(default)]
    pub last_visit: Option<DateTime<Utc>>,
    /// Failed and rolled-back updates recorded for this device.
    #[serde(default)]
    pub failures: u64,
    #[serde(default)]
    pub last_failure: Option<String>,
    /// The technician's reason when the device was last planned but not patched.
    #[serde(default)]
    pub not_patched_reason: Option<String>,
}

/// A planned visit: which devices of a site to patch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkOrder {
    pub id: String,
    pub site_id: String,
    pub title: String,
    /// Planned date (free text, usually `YYYY-MM-DD`).
    #[serde(default)]
    pub planned_for: Option<String>,
    /// Inventory device ids to patch to their approved version.
    pub devices: Vec<String>,
}

/// A bundle published to the patch catalog. The bundle file is fetched separately by `sha256`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CatalogEntry {
    pub bundle_id: String,
    pub version: String,
    /// The bundle's manifest as published.
    pub manifest: serde_json::Value,
    /// SHA-256 of the bundle file, hex.
    pub sha256: String,
    pub size: u64,
    pub published_at: DateTime<Utc>,
}

/// `GET /v1/pull` response: what the technician needs for the next trip.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PullResponse {
    pub server_time: DateTime<Utc>,
    /// Hex of the server's checkpoint key.
    pub server_key: String,
    pub technician_id: String,
    pub sites: Vec<Site>,
    pub devices: Vec<Device>,
    pub work_orders: Vec<WorkOrder>,
    pub catalog: Vec<CatalogEntry>,
    /// The trust store document as published, if any.
    pub trust_store: Option<serde_json::Value>,
    /// The signed catalog listing as published, if any ([`crate::listing`]): required by laptops
    /// whose trust store names catalog keys.
    #[serde(default)]
    pub catalog_listing: Option<serde_json::Value>,
    /// Credentials of devices at the assigned sites, sealed to the technician's key. The sync
    /// client takes them out before the rest is handed to the local store.
    #[serde(default)]
    pub credentials: Vec<crate::sealed::SealedCredential>,
}

/// A device planned for a visit that is not at its approved version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlannedNotPatched {
    pub work_order_id: String,
    pub device: Device,
}

/// Error body of every non-2xx API answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiErrorBody {
    pub code: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_verify_only_with_their_key_and_content() {
        let key = SigningKey::generate(&mut rand::rng());
        let other = SigningKey::generate(&mut rand::rng());
        let log_id = Uuid::now_v7();
        let cp = Checkpoint { log_id, last_seq: 4, last_hash: "ab".repeat(32) }.sign(&key);
        let pinned = hex::encode(key.verifying_key().as_bytes());
        cp.verify(&pinned).unwrap();
        assert_eq!(
            cp.verify(&hex::encode(other.verifying_key().as_bytes())),
            Err(CheckpointError::WrongKey(log_id))
        );
        let mut edited = cp.clone();
        edited.checkpoint.last_seq = 5;
        assert_eq!(edited.verify(&pinned), Err(CheckpointError::BadSignature(log_id)));
        // Deterministic: the same checkpoint signs to the same bytes.
        let again = Checkpoint { log_id, last_seq: 4, last_hash: "ab".repeat(32) }.sign(&key);
        assert_eq!(again, cp);
    }
}
