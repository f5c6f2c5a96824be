//! Rollback approvals: a signed statement that one exact downgrade of one kind of device is allowed.

use super::BundleError;
use super::canonical::{self, CanonicalIssue};
use super::manifest::version_text;
use super::signature::{self, CONTEXT_ROLLBACK, SignatureEntry};
use super::trust::{Role, TrustStore};
use crate::model::Version;
use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

/// The signed content: which devices, from which version to which version, why, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackApproval {
    pub vendor: String,
    pub model: String,
    #[serde(with = "version_text")]
    pub from: Version,
    #[serde(with = "version_text")]
    pub to: Version,
    /// The bundle that performs the downgrade.
    pub bundle_id: String,
    pub reason: String,
    pub expires: DateTime<Utc>,
}

/// An approval with its rollback-role signatures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRollbackApproval {
    pub approval: RollbackApproval,
    pub signatures: Vec<SignatureEntry>,
}

impl RollbackApproval {
    pub fn canonical_bytes(&self) -> Vec<u8> {
        canonical::to_canonical_of(self).unwrap_or_default()
    }

    /// Sign with each of `keys` (rollback approvers).
    pub fn sign(self, keys: &[&SigningKey]) -> SignedRollbackApproval {
        let bytes = self.canonical_bytes();
        let mut signatures = Vec::new();
        for k in keys {
            signature::upsert(&mut signatures, signature::sign(CONTEXT_ROLLBACK, &bytes, k));
        }
        SignedRollbackApproval { approval: self, signatures }
    }
}

impl SignedRollbackApproval {
    /// Parse from JSON, refusing duplicate keys.
    pub fn from_json(bytes: &[u8]) -> Result<Self, BundleError> {
        match canonical::parse_strict(bytes) {
            Ok(_) => {}
            Err(CanonicalIssue::DuplicateKey(key)) => {
                return Err(BundleError::DuplicateKey {
                    document: "rollback approval".into(),
                    key,
                });
            }
            Err(e) => {
                return Err(BundleError::InvalidRollbackApproval { reason: format!("{e:?}") });
            }
        }
        serde_json::from_slice(bytes)
            .map_err(|e| BundleError::InvalidRollbackApproval { reason: e.to_string() })
    }

    /// Add (or replace) `key`'s signature: a second approver co-signs the same approval.
    pub fn cosign(&mut self, key: &SigningKey) {
        let entry = signature::sign(CONTEXT_ROLLBACK, &self.approval.canonical_bytes(), key);
        signature::upsert(&mut self.signatures, entry);
    }

    /// Check the signatures reach the rollback threshold and the approval has not expired.
    pub fn verify(
        &self,
        trust: &TrustStore,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, BundleError> {
        let signers = signature::check_threshold(
            "rollback approval",
            CONTEXT_ROLLBACK,
            &self.approval.canonical_bytes(),
            &self.signatures,
            trust,
            Role::Rollback,
        )?;
        if now > self.approval.expires {
            return Err(BundleError::InvalidRollbackApproval {
                reason: format!(
                    "it expired at {}; ask the rollback approvers for a new one",
                    self.approval.expires.to_rfc3339()
                ),
            });
        }
        Ok(signers)
    }

    /// Does this approval name exactly this downgrade?
    pub fn names(
        &self,
        vendor: &str,
        model: &str,
        from: Version,
        to: Version,
        bundle_id: &str,
    ) -> bool {
        let a = &self.approval;
        a.vendor == vendor
            && a.model == model
            && a.from == from
            && a.to == to
            && a.bundle_id == bundle_id
    }
}
