//! Check 7 of the audit verifier: the bundle verdicts included in an export are re-checked
//! against the included trust store, and re-proved when the manifests' release signatures are
//! included; a verdict the trust store does not back is refused with the bundle named.

use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use fieldpatch_proto::audit::{self, AuditError, Extras};
use fieldpatch_proto::signature::{self, CONTEXT_MANIFEST, SignatureEntry};
use fieldpatch_proto::trust::{Role, TrustStoreBody, TrustedKey};
use fieldpatch_proto::{Event, EventKind, GENESIS_HASH, TimeSource, UnsignedEvent};
use std::collections::BTreeMap;
use uuid::Uuid;

const ID: &str = "gw-1.4.0";

struct Kit {
    tech: SigningKey,
    visit: Uuid,
    events: Vec<Event>,
    release: [SigningKey; 3],
    trust: Vec<u8>,
    manifest: Vec<u8>,
}

fn kit() -> Kit {
    let tech = SigningKey::from_bytes(&[3; 32]);
    let visit = Uuid::from_u128(5);
    let mut prev = GENESIS_HASH.to_string();
    let mut events = Vec::new();
    let kinds = [
        (None, EventKind::VisitOpened { site: "S".into(), work_order: None }),
        (
            Some("d1"),
            EventKind::BundleVerified {
                bundle_id: ID.into(),
                bundle_version: "1".into(),
                rule: "threshold".into(),
            },
        ),
        (None, EventKind::VisitClosed { patched: 0, not_patched: 0 }),
    ];
    for (i, (device, kind)) in kinds.into_iter().enumerate() {
        let e = UnsignedEvent {
            id: Uuid::from_u128(50 + i as u128),
            log_id: Uuid::from_u128(4),
            seq: i as u64 + 1,
            time: DateTime::<Utc>::from_timestamp(1_800_000_000 + i as i64, 0).unwrap(),
            time_source: TimeSource::SystemClock,
            signer: hex::encode(tech.verifying_key().as_bytes()),
            visit_id: Some(visit),
            device: device.map(str::to_string),
            prev_hash: prev.clone(),
            kind,
        }
        .sign(&tech);
        prev = e.hash();
        events.push(e);
    }
    let root = SigningKey::from_bytes(&[20; 32]);
    let release = [21, 22, 23].map(|b| SigningKey::from_bytes(&[b; 32]));
    let mut keys = vec![TrustedKey::new(&root.verifying_key(), vec![Role::Root], "root")];
    keys.push(TrustedKey::new(&release[0].verifying_key(), vec![Role::Release], "r1"));
    keys.push(TrustedKey::new(&release[1].verifying_key(), vec![Role::Release], "r2"));
    // The third key may only sign rollbacks.
    keys.push(TrustedKey::new(&release[2].verifying_key(), vec![Role::Rollback], "rb"));
    let body = TrustStoreBody {
        version: 1,
        keys,
        thresholds: BTreeMap::from([(Role::Release, 2)]),
        offline_grace_days: None,
        expires: None,
        vendor_certificates: Vec::new(),
    };
    let trust = serde_json::to_vec(&body.sign(&[&root])).unwrap();
    let manifest = fieldpatch_proto::canonical::to_canonical_of(
        &serde_json::json!({"bundle_id": ID, "installs": "1.4.0"}),
    )
    .unwrap();
    Kit { tech, visit, events, release, trust, manifest }
}

fn id(k: &SigningKey) -> String {
    signature::key_id(&k.verifying_key())
}

fn sigs(manifest: &[u8], by: &[&SigningKey]) -> Vec<u8> {
    let list: Vec<SignatureEntry> =
        by.iter().map(|k| signature::sign(CONTEXT_MANIFEST, manifest, k)).collect();
    serde_json::to_vec(&list).unwrap()
}

fn verdict(valid: bool, signers: &[&SigningKey]) -> Vec<u8> {
    let mut ids: Vec<String> = signers.iter().map(|k| id(k)).collect();
    ids.sort();
    serde_json::to_vec(&serde_json::json!({"valid": valid, "bundle_id": ID, "signers": ids}))
        .unwrap()
}

fn archive(
    k: &Kit,
    trust: bool,
    verdict: Vec<u8>,
    signatures: Option<Vec<u8>>,
) -> Result<audit::Verified, AuditError> {
    let extras = Extras {
        trust_store: trust.then(|| k.trust.clone()),
        bundles: vec![(ID.into(), k.manifest.clone(), verdict)],
        bundle_signatures: signatures.map(|s| vec![(ID.to_string(), s)]).unwrap_or_default(),
        ..Default::default()
    };
    let bytes = audit::build(k.visit, &k.events, None, &extras, &k.tech).unwrap();
    audit::verify(&bytes, None)
}

fn bundle_error(r: Result<audit::Verified, AuditError>, says: &str) {
    match r {
        Err(e @ AuditError::Bundle { .. }) => {
            assert!(e.to_string().contains(ID), "{e}");
            assert!(e.to_string().contains(says), "{e} should say {says:?}");
            assert_eq!(e.code(), "audit_bundle");
        }
        other => panic!("expected a bundle error saying {says:?}, got {other:?}"),
    }
}

#[test]
fn a_verdict_is_re_proved_from_the_release_signatures_and_the_trust_store() {
    let k = kit();
    let [r1, r2, rb] = &k.release;
    archive(&k, true, verdict(true, &[r1, r2]), Some(sigs(&k.manifest, &[r1, r2]))).unwrap();
    // Without the signatures the verdict's signers are checked against the store.
    archive(&k, true, verdict(true, &[r1, r2]), None).unwrap();

    // One signature short of the threshold, in the verdict or in the signatures.
    bundle_error(archive(&k, true, verdict(true, &[r1]), None), "threshold is 2");
    bundle_error(
        archive(&k, true, verdict(true, &[r1, r2]), Some(sigs(&k.manifest, &[r1]))),
        "do not verify",
    );
    // Signatures over other bytes, or by a key without the release role.
    bundle_error(
        archive(&k, true, verdict(true, &[r1, r2]), Some(sigs(b"{\"other\":1}", &[r1, r2]))),
        "do not verify",
    );
    bundle_error(
        archive(&k, true, verdict(true, &[r1, r2]), Some(sigs(&k.manifest, &[r1, r2, rb]))),
        "do not verify",
    );
    bundle_error(archive(&k, true, verdict(true, &[r1, rb]), None), "release role");
    // A signer the store does not know, a verdict that says invalid, no trust store.
    let stranger = SigningKey::from_bytes(&[99; 32]);
    bundle_error(archive(&k, true, verdict(true, &[r1, &stranger]), None), "not in the trust");
    bundle_error(archive(&k, true, verdict(false, &[r1, r2]), None), "does not say valid");
    bundle_error(archive(&k, false, verdict(true, &[r1, r2]), None), "trust store in force");
}

#[test]
fn an_invalid_trust_store_is_refused_when_bundles_need_it() {
    let mut k = kit();
    let [r1, r2, _] = &k.release;
    let v = verdict(true, &[r1, r2]);
    k.trust = br#"{"store":{"version":1,"keys":[],"thresholds":{}},"signatures":[]}"#.to_vec();
    match archive(&k, true, v, None) {
        Err(e @ AuditError::FileHash { .. }) => {
            assert!(e.to_string().contains("not a valid trust store"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}
