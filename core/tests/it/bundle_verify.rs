//! Bundles that should be accepted, and the rules that accept them: thresholds, offline grace,
//! rotation and revocation, rollback approvals, creating and signing files on disk.

use fieldpatch_core::bundle::*;
use fieldpatch_core::model::{DeviceIdentity, Version};
use fieldpatch_testkit::catalog::{BundleKit, id, key, t};

const A: &[u8] = b"application image bytes";

fn device(fw: Version) -> DeviceIdentity {
    DeviceIdentity {
        vendor: Some("Acme".into()),
        model: Some("S-100".into()),
        hardware_revision: Some("3".into()),
        serial_number: None,
        firmware_version: Some(fw),
        image_hash: None,
        mode: None,
    }
}

#[test]
fn a_valid_bundle_verifies_with_a_verdict_that_names_the_rule_and_signers() {
    let kit = BundleKit::new();
    let m = kit.manifest(&[("app.bin", A)]);
    let path = kit.write("ok.fpb", &kit.good(&m, &[A]));
    let v = verify_file(&path, &kit.trust, &kit.policy()).unwrap();
    assert!(v.valid);
    assert_eq!(v.rule, Some(AcceptRule::Valid { expires: t(2026, 6, 1) }));
    let mut want = vec![id(&kit.release[0]), id(&kit.release[1])];
    want.sort();
    assert_eq!(v.signers, want);
    let names: Vec<_> = v.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["container", "manifest", "signatures", "evidence", "validity_period", "payload:app.bin"]
    );
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["rule"]["rule"], "valid");
    assert_eq!(json["valid"], true);

    let vb = VerifiedBundle::open(&path, &kit.trust, &kit.policy()).unwrap();
    assert_eq!(vb.payload("app.bin").unwrap().bytes(), A);
    assert_eq!(vb.manifest(), &m);
}

#[test]
fn a_rejection_verdict_records_the_failed_check_and_error_code() {
    let kit = BundleKit::new();
    let m = kit.manifest(&[("app.bin", A)]);
    let mut b = kit.good(&m, &[A]);
    let n = b.len() - 1;
    b[n] ^= 1;
    let path = kit.write("bad.fpb", &b);
    let r = verify_file(&path, &kit.trust, &kit.policy()).unwrap_err();
    assert!(!r.verdict.valid);
    let last = r.verdict.checks.last().unwrap();
    assert_eq!((last.name.as_str(), last.ok), ("payload:app.bin", false));
    assert_eq!(r.verdict.error.as_ref().unwrap().code, "payload_hash_mismatch");
    assert!(r.to_string().contains("download it again"), "{r}");
}

#[test]
fn offline_grace_accepts_an_expired_bundle_only_within_the_rule() {
    let kit = BundleKit::new();
    let path = kit.write("g.fpb", &kit.good(&kit.manifest(&[("app.bin", A)]), &[A]));
    let grace = |last, now| VerifyPolicy {
        now,
        offline_grace: Some(OfflineGrace {
            last_online_verification: last,
            grace: chrono::Duration::days(14),
        }),
    };
    // Verified online before expiry, now 10 days past expiry: allowed under grace, and it says so.
    let v = verify_file(&path, &kit.trust, &grace(t(2026, 5, 25), t(2026, 6, 11))).unwrap();
    assert_eq!(
        v.rule,
        Some(AcceptRule::OfflineGrace {
            expired_at: t(2026, 6, 1),
            grace_until: t(2026, 6, 15),
            last_online_verification: t(2026, 5, 25),
        })
    );
    // Already expired when last seen online: no grace.
    let e = verify_file(&path, &kit.trust, &grace(t(2026, 6, 2), t(2026, 6, 3))).unwrap_err();
    assert!(matches!(e.error, BundleError::Expired { .. }), "{e}");
    // Past the grace period.
    let e = verify_file(&path, &kit.trust, &grace(t(2026, 5, 25), t(2026, 6, 16))).unwrap_err();
    assert!(matches!(e.error, BundleError::Expired { .. }), "{e}");
}

#[test]
fn rotation_needs_old_and_new_root_thresholds_and_revocation_takes_effect() {
    let kit = BundleKit::new();
    let m = kit.manifest(&[("app.bin", A)]);
    let path = kit.write("r.fpb", &kit.good(&m, &[A]));
    verify_file(&path, &kit.trust, &kit.policy()).unwrap();

    // Version 2: root[2] replaced by a new root, release[1] revoked.
    let new_root = key(4);
    let roots2 = vec![kit.roots[0].clone(), kit.roots[1].clone(), new_root.clone()];
    let mut body = BundleKit::body(2, &roots2, &kit.release, &kit.rollback, &kit.revoked);
    let rel1 = id(&kit.release[1]);
    body.keys.iter_mut().find(|k| k.id == rel1).unwrap().revoked = true;

    // Only one old root: refused.
    let one = body.clone().sign(&[&kit.roots[0], &new_root]);
    let e = kit.trust.rotate(one).unwrap_err();
    assert!(matches!(e, BundleError::ThresholdNotMet { .. }), "{e}");
    // Same version again: refused.
    let same = BundleKit::body(1, &roots2, &kit.release, &kit.rollback, &kit.revoked).sign(&[
        &kit.roots[0],
        &kit.roots[1],
        &new_root,
    ]);
    assert!(matches!(kit.trust.rotate(same).unwrap_err(), BundleError::TrustStoreRollback { .. }));
    // Two old roots (one of them leaving) plus the new one: accepted.
    let ok = body.clone().sign(&[&kit.roots[1], &kit.roots[2], &new_root]);
    let trust2 = kit.trust.rotate(ok).unwrap();
    assert_eq!(trust2.version(), 2);

    // The bundle signed by release[1] is now refused as revoked.
    let e = verify_file(&path, &trust2, &kit.policy()).unwrap_err();
    assert!(matches!(e.error, BundleError::RevokedKey { .. }), "{e}");
    // Re-signed by release[0] and release[2] it verifies.
    let mut m2 = m.clone();
    m2.evidence.approvers = vec![id(&kit.release[0]), id(&kit.release[2])];
    let mb = m2.canonical_bytes().unwrap();
    let p2 = kit.write("r2.fpb", &kit.raw(&mb, &[&kit.release[0], &kit.release[2]], &[A]));
    verify_file(&p2, &trust2, &kit.policy()).unwrap();

    // The store round-trips through JSON and loads again.
    let json = serde_json::to_vec(trust2.document()).unwrap();
    assert_eq!(TrustStore::from_json(&json).unwrap().version(), 2);
    // A store whose root signatures do not reach its threshold is refused at load.
    let weak = BundleKit::body(1, &kit.roots, &kit.release, &kit.rollback, &kit.revoked)
        .sign(&[&kit.roots[0]]);
    let e = TrustStore::from_json(&serde_json::to_vec(&weak).unwrap()).unwrap_err();
    assert!(matches!(e, BundleError::ThresholdNotMet { .. }), "{e}");
}

#[test]
fn a_downgrade_passes_only_with_a_valid_approval_naming_it_exactly() {
    let kit = BundleKit::new();
    let mut m = kit.manifest(&[("app.bin", A)]);
    m.installs = Version::new(1, 5, 0, 0);
    let from = Version::new(2, 0, 0, 0);
    let approval = |to, expires| RollbackApproval {
        vendor: "Acme".into(),
        model: "S-100".into(),
        from,
        to,
        bundle_id: m.bundle_id.clone(),
        reason: "2.0.0 bricks units with sensor rev C".into(),
        expires,
    };
    let good = approval(m.installs, t(2026, 12, 1)).sign(&[&kit.rollback[0], &kit.rollback[1]]);
    let c = check_target(&m, &device(from), &kit.trust, std::slice::from_ref(&good), t(2026, 3, 1))
        .unwrap();
    assert!(c.downgrade);
    assert_eq!(c.rollback_approved_by.len(), 2);
    // The approval survives JSON.
    let json = serde_json::to_vec(&good).unwrap();
    assert_eq!(SignedRollbackApproval::from_json(&json).unwrap(), good);

    let one = approval(m.installs, t(2026, 12, 1)).sign(&[&kit.rollback[0]]);
    let e = check_target(&m, &device(from), &kit.trust, &[one], t(2026, 3, 1)).unwrap_err();
    assert!(matches!(e, BundleError::ThresholdNotMet { .. }), "{e}");

    let expired = approval(m.installs, t(2026, 2, 1)).sign(&[&kit.rollback[0], &kit.rollback[1]]);
    let e = check_target(&m, &device(from), &kit.trust, &[expired], t(2026, 3, 1)).unwrap_err();
    assert!(matches!(e, BundleError::InvalidRollbackApproval { .. }), "{e}");

    // Tampering with the approved target version breaks the signature.
    let mut forged = good.clone();
    forged.approval.to = Version::new(1, 0, 0, 0);
    m.installs = Version::new(1, 0, 0, 0);
    let e = check_target(&m, &device(from), &kit.trust, &[forged], t(2026, 3, 1)).unwrap_err();
    assert!(matches!(e, BundleError::BadSignature { .. }), "{e}");

    // An upgrade needs no approval; missing identity fields are named.
    m.installs = Version::new(2, 1, 0, 0);
    assert!(!check_target(&m, &device(from), &kit.trust, &[], t(2026, 3, 1)).unwrap().downgrade);
    let mut d = device(from);
    d.hardware_revision = None;
    let e = check_target(&m, &d, &kit.trust, &[], t(2026, 3, 1)).unwrap_err();
    assert!(matches!(e, BundleError::DeviceIdentityIncomplete { .. }), "{e}");
}

#[test]
fn create_then_sign_on_disk_produces_a_bundle_that_verifies() {
    let kit = BundleKit::new();
    let dir = kit.dir.path();
    let app = dir.join("app.bin");
    std::fs::write(&app, vec![7u8; 3 * 1024 * 1024 + 5]).unwrap();
    let entry = container::payload_entry("app.bin", PayloadFormat::Raw, &app).unwrap();
    let mut m = kit.manifest(&[]);
    m.payloads = vec![entry];
    let out = dir.join("made.fpb");
    create_bundle(&m, std::slice::from_ref(&app), &out).unwrap();
    let e = verify_file(&out, &kit.trust, &kit.policy()).unwrap_err();
    assert!(matches!(e.error, BundleError::Unsigned { .. }), "{e}");

    for k in [&kit.release[0], &kit.release[1]] {
        let pem = dir.join(format!("{}.pem", id(k)));
        write_key(k, &pem);
        sign_bundle_file(&out, &KeySource::File(pem).load().unwrap()).unwrap();
    }
    // Signing again with the same key replaces, not duplicates.
    sign_bundle_file(&out, &kit.release[0]).unwrap();
    let info = inspect_file(&out).unwrap();
    assert_eq!(info.signatures.len(), 2);
    assert_eq!(info.manifest, m);
    let v = verify_file(&out, &kit.trust, &kit.policy()).unwrap();
    assert!(v.valid);

    // A payload file that changed since the manifest was made is refused at creation.
    std::fs::write(&app, b"other").unwrap();
    let e = create_bundle(&m, &[app], &dir.join("x.fpb")).unwrap_err();
    assert!(matches!(e, BundleError::PayloadLengthMismatch { .. }), "{e}");
    assert!(!dir.join("x.fpb").exists());
}

#[test]
fn generated_key_files_are_private_and_world_readable_ones_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k.pem");
    let (kid, public) = generate_key_file(&p).unwrap();
    assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    let k = KeySource::File(p.clone()).load().unwrap();
    assert_eq!(id(&k), kid);
    assert_eq!(hex::encode(k.verifying_key().as_bytes()), public);
    assert!(generate_key_file(&p).is_err(), "an existing key file must not be overwritten");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = KeySource::File(p).load().unwrap_err();
    assert!(e.to_string().contains("chmod 600"), "{e}");
}

fn write_key(k: &ed25519_dalek::SigningKey, path: &std::path::Path) {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    use std::os::unix::fs::OpenOptionsExt;
    let pem = k.to_pkcs8_pem(Default::default()).unwrap();
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).unwrap();
    std::io::Write::write_all(&mut f, pem.as_bytes()).unwrap();
}

#[test]
fn payloads_too_large_to_hold_are_refused_for_flashing_but_verify_streaming() {
    let kit = BundleKit::new();
    let big = vec![0xa5u8; (64 << 20) + 1];
    let m = kit.manifest(&[("big.bin", &big)]);
    let path = kit.write("big.fpb", &kit.good(&m, &[&big]));
    drop(big);
    assert!(verify_file(&path, &kit.trust, &kit.policy()).unwrap().valid);
    let e = VerifiedBundle::open(&path, &kit.trust, &kit.policy()).unwrap_err();
    assert!(matches!(e.error, BundleError::PayloadTooLarge { .. }), "{e}");
}

#[test]
fn hardware_revision_ranges_compare_versions_numerically_and_letters_as_text() {
    let r = RevisionRange { min: Some("2".into()), max: Some("3.1".into()) };
    assert!(r.contains("2") && r.contains("2.10") && r.contains("3.1"));
    assert!(!r.contains("1.9") && !r.contains("3.2") && !r.contains("10"));
    let letters = RevisionRange { min: Some("B".into()), max: None };
    assert!(letters.contains("B") && letters.contains("C") && !letters.contains("A"));
}

#[test]
fn a_dfu_payload_must_be_a_valid_dfu_file() {
    let kit = BundleKit::new();
    let not_dfu = vec![0x11u8; 300];
    let mut m = kit.manifest(&[("fw.dfu", &not_dfu)]);
    m.payloads[0].format = PayloadFormat::Dfu;
    let path = kit.write("bad-dfu.fpb", &kit.good(&m, &[&not_dfu]));
    let r = verify_file(&path, &kit.trust, &kit.policy()).unwrap_err();
    assert_eq!(r.error.code(), "dfu_image", "{}", r.error);

    let dfu = fieldpatch_core::image::dfu_file::DfuSuffix {
        bcd_device: 0xFFFF,
        id_product: 0xdf11,
        id_vendor: 0x0483,
        bcd_dfu: 0x0110,
        length: 16,
        crc: 0,
    }
    .append_to(&[0x22u8; 300]);
    let mut m = kit.manifest(&[("fw.dfu", &dfu)]);
    m.payloads[0].format = PayloadFormat::Dfu;
    let path = kit.write("good-dfu.fpb", &kit.good(&m, &[&dfu]));
    let v = verify_file(&path, &kit.trust, &kit.policy()).unwrap();
    let check = v.checks.iter().find(|c| c.name == "image:fw.dfu").unwrap();
    assert!(check.ok && check.detail.contains("0483:df11"), "{check:?}");
}
