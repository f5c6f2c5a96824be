//! The bad-input corpus: malformed or hostile bundles, each refused with its specific error and
//! never a panic.

use fieldpatch_core::bundle::*;
use fieldpatch_core::model::{DeviceIdentity, Version};
use fieldpatch_testkit::catalog::{BundleKit, id, t};

type Outcome = Result<(), BundleError>;

/// Write `bytes` as a bundle and verify it both streaming and into memory; both must agree.
fn verify_bytes(kit: &BundleKit, name: &str, bytes: &[u8], policy: &VerifyPolicy) -> Outcome {
    let path = kit.write(name, bytes);
    let streaming = verify_file(&path, &kit.trust, policy).map(|_| ()).map_err(|r| r.error);
    let held = VerifiedBundle::open(&path, &kit.trust, policy).map(|_| ()).map_err(|r| r.error);
    match (&streaming, &held) {
        (Err(a), Err(b)) => {
            assert_eq!(a.code(), b.code(), "{name}: streaming and in-memory disagree")
        }
        (Ok(()), Ok(())) => {}
        _ => panic!("{name}: streaming {streaming:?} vs in-memory {held:?}"),
    }
    streaming
}

fn device(model: &str, rev: &str, fw: Version) -> DeviceIdentity {
    DeviceIdentity {
        vendor: Some("Acme".into()),
        model: Some(model.into()),
        hardware_revision: Some(rev.into()),
        serial_number: Some("SN1".into()),
        firmware_version: Some(fw),
        image_hash: None,
        mode: None,
    }
}

/// Replace the first occurrence of `from` in `bytes`.
fn replace(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    let s = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(s.contains(from), "{from} not in {s}");
    s.replacen(from, to, 1).into_bytes()
}

fn offset_of(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).unwrap()
}

macro_rules! case {
    ($name:expr, $run:expr, $pat:pat) => {
        (
            $name,
            Box::new($run) as Box<dyn Fn(&BundleKit) -> Outcome>,
            Box::new(|e: &BundleError| matches!(e, $pat)) as Box<dyn Fn(&BundleError) -> bool>,
        )
    };
}

const A: &[u8] = b"application image bytes";
const B: &[u8] = b"network core image";

#[test]
fn every_corpus_case_is_refused_with_its_specific_error() {
    let kit = BundleKit::new();
    let cases = vec![
        case!(
            "flipped byte in a payload",
            |k: &BundleKit| {
                let m = k.manifest(&[("app.bin", A), ("net.bin", B)]);
                let mut b = k.good(&m, &[A, B]);
                let n = b.len() - 3;
                b[n] ^= 0x40;
                verify_bytes(k, "flip.fpb", &b, &k.policy())
            },
            BundleError::PayloadHashMismatch { .. }
        ),
        case!(
            "signature by an unknown key",
            |k: &BundleKit| {
                let m = k.manifest(&[("app.bin", A)]);
                let mb = m.canonical_bytes().unwrap();
                let b = k.raw(&mb, &[&k.release[0], &k.release[1], &k.stranger], &[A]);
                verify_bytes(k, "unknown.fpb", &b, &k.policy())
            },
            BundleError::UnknownKey { .. }
        ),
        case!(
            "signature by a revoked key",
            |k: &BundleKit| {
                let m = k.manifest(&[("app.bin", A)]);
                let mb = m.canonical_bytes().unwrap();
                let b = k.raw(&mb, &[&k.release[0], &k.revoked], &[A]);
                verify_bytes(k, "revoked.fpb", &b, &k.policy())
            },
            BundleError::RevokedKey { .. }
        ),
        case!(
            "threshold not met (1 of 2 release approvers)",
            |k: &BundleKit| {
                let mut m = k.manifest(&[("app.bin", A)]);
                m.evidence.approvers.truncate(1);
                let mb = m.canonical_bytes().unwrap();
                let b = k.raw(&mb, &[&k.release[0]], &[A]);
                verify_bytes(k, "threshold.fpb", &b, &k.policy())
            },
            BundleError::ThresholdNotMet { have: 1, need: 2, .. }
        ),
        case!(
            "the same approver signing twice does not count twice",
            |k: &BundleKit| {
                let mut m = k.manifest(&[("app.bin", A)]);
                m.evidence.approvers.truncate(1);
                let mb = m.canonical_bytes().unwrap();
                let b = k.raw(&mb, &[&k.release[0], &k.release[0]], &[A]);
                verify_bytes(k, "twice.fpb", &b, &k.policy())
            },
            BundleError::ThresholdNotMet { have: 1, .. }
        ),
        case!(
            "expired, online (no grace)",
            |k: &BundleKit| {
                let b = k.good(&k.manifest(&[("app.bin", A)]), &[A]);
                let p = VerifyPolicy { now: t(2026, 7, 1), offline_grace: None };
                verify_bytes(k, "expired.fpb", &b, &p)
            },
            BundleError::Expired { .. }
        ),
        case!(
            "expired past the offline grace",
            |k: &BundleKit| {
                let b = k.good(&k.manifest(&[("app.bin", A)]), &[A]);
                let p = VerifyPolicy {
                    now: t(2026, 7, 1),
                    offline_grace: Some(OfflineGrace {
                        last_online_verification: t(2026, 5, 20),
                        grace: chrono::Duration::days(14),
                    }),
                };
                verify_bytes(k, "grace.fpb", &b, &p)
            },
            BundleError::Expired { .. }
        ),
        case!(
            "created in the future (clock wrong or bundle forged)",
            |k: &BundleKit| {
                let b = k.good(&k.manifest(&[("app.bin", A)]), &[A]);
                let p = VerifyPolicy { now: t(2025, 12, 1), offline_grace: None };
                verify_bytes(k, "future.fpb", &b, &p)
            },
            BundleError::NotYetValid { .. }
        ),
        case!(
            "wrong target model",
            |k: &BundleKit| {
                let m = k.manifest(&[("app.bin", A)]);
                let d = device("S-200", "2", Version::new(2, 0, 0, 0));
                check_target(&m, &d, &k.trust, &[], t(2026, 3, 1)).map(|_| ())
            },
            BundleError::WrongTarget { .. }
        ),
        case!(
            "hardware revision outside the range",
            |k: &BundleKit| {
                let m = k.manifest(&[("app.bin", A)]);
                let d = device("S-100", "3.2", Version::new(2, 0, 0, 0));
                check_target(&m, &d, &k.trust, &[], t(2026, 3, 1)).map(|_| ())
            },
            BundleError::HardwareRevisionOutOfRange { .. }
        ),
        case!(
            "installed version outside applies_to",
            |k: &BundleKit| {
                let m = k.manifest(&[("app.bin", A)]);
                let d = device("S-100", "2", Version::new(0, 9, 0, 0));
                check_target(&m, &d, &k.trust, &[], t(2026, 3, 1)).map(|_| ())
            },
            BundleError::InstalledVersionNotApplicable { .. }
        ),
        case!(
            "downgrade without approval",
            |k: &BundleKit| {
                let mut m = k.manifest(&[("app.bin", A)]);
                m.installs = Version::new(1, 5, 0, 0);
                let d = device("S-100", "2", Version::new(2, 0, 0, 0));
                check_target(&m, &d, &k.trust, &[], t(2026, 3, 1)).map(|_| ())
            },
            BundleError::DowngradeNotApproved { .. }
        ),
        case!(
            "downgrade with an approval for a different version",
            |k: &BundleKit| {
                let mut m = k.manifest(&[("app.bin", A)]);
                m.installs = Version::new(1, 5, 0, 0);
                let a = RollbackApproval {
                    vendor: "Acme".into(),
                    model: "S-100".into(),
                    from: Version::new(2, 0, 0, 0),
                    to: Version::new(1, 4, 0, 0),
                    bundle_id: m.bundle_id.clone(),
                    reason: "field issue".into(),
                    expires: t(2026, 12, 1),
                }
                .sign(&[&k.rollback[0], &k.rollback[1]]);
                let d = device("S-100", "2", Version::new(2, 0, 0, 0));
                check_target(&m, &d, &k.trust, &[a], t(2026, 3, 1)).map(|_| ())
            },
            BundleError::DowngradeNotApproved { .. }
        ),
        case!(
            "downgrade approval signed by release keys, not rollback keys",
            |k: &BundleKit| {
                let mut m = k.manifest(&[("app.bin", A)]);
                m.installs = Version::new(1, 5, 0, 0);
                let a = RollbackApproval {
                    vendor: "Acme".into(),
                    model: "S-100".into(),
                    from: Version::new(2, 0, 0, 0),
                    to: Version::new(1, 5, 0, 0),
                    bundle_id: m.bundle_id.clone(),
                    reason: "field issue".into(),
                    expires: t(2026, 12, 1),
                }
                .sign(&[&k.release[0], &k.release[1]]);
                let d = device("S-100", "2", Version::new(2, 0, 0, 0));
                check_target(&m, &d, &k.trust, &[a], t(2026, 3, 1)).map(|_| ())
            },
            BundleError::KeyLacksRole { .. }
        ),
        case!(
            "truncated inside the payloads",
            |k: &BundleKit| {
                let b = k.good(&k.manifest(&[("app.bin", A)]), &[A]);
                verify_bytes(k, "trunc.fpb", &b[..b.len() - 5], &k.policy())
            },
            BundleError::Truncated { .. }
        ),
        case!(
            "truncated inside the manifest",
            |k: &BundleKit| {
                let b = k.good(&k.manifest(&[("app.bin", A)]), &[A]);
                verify_bytes(k, "trunc2.fpb", &b[..40], &k.policy())
            },
            BundleError::Truncated { .. }
        ),
        case!(
            "empty file",
            |k: &BundleKit| verify_bytes(k, "empty.fpb", b"", &k.policy()),
            BundleError::BadMagic
        ),
        case!(
            "wrong magic",
            |k: &BundleKit| {
                let mut b = k.good(&k.manifest(&[("app.bin", A)]), &[A]);
                b[0] = b'X';
                verify_bytes(k, "magic.fpb", &b, &k.policy())
            },
            BundleError::BadMagic
        ),
        case!(
            "unsupported format version",
            |k: &BundleKit| {
                let mut b = k.good(&k.manifest(&[("app.bin", A)]), &[A]);
                b[8] = 9;
                verify_bytes(k, "version.fpb", &b, &k.policy())
            },
            BundleError::UnsupportedFormatVersion { found: 9, .. }
        ),
        case!(
            "oversized manifest length field",
            |k: &BundleKit| {
                let mut b = k.good(&k.manifest(&[("app.bin", A)]), &[A]);
                b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
                verify_bytes(k, "mlen.fpb", &b, &k.policy())
            },
            BundleError::LengthTooLarge { .. }
        ),
        case!(
            "oversized signature block length field",
            |k: &BundleKit| {
                let m = k.manifest(&[("app.bin", A)]);
                let mb = m.canonical_bytes().unwrap();
                let mut b = k.good(&m, &[A]);
                let at = 16 + mb.len();
                b[at..at + 4].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
                verify_bytes(k, "slen.fpb", &b, &k.policy())
            },
            BundleError::LengthTooLarge { .. }
        ),
        case!(
            "manifest length points past the end of the file",
            |k: &BundleKit| {
                let mut b = k.good(&k.manifest(&[("app.bin", A)]), &[A]);
                let n = b.len() as u32 + 10;
                b[12..16].copy_from_slice(&n.to_le_bytes());
                verify_bytes(k, "mpast.fpb", &b, &k.policy())
            },
            BundleError::Truncated { .. }
        ),
        case!(
            "manifest lies about payload length (declares fewer bytes, signed)",
            |k: &BundleKit| {
                let mut m = k.manifest(&[("app.bin", A)]);
                m.payloads[0].length -= 4;
                let b = k.good(&m, &[A]);
                verify_bytes(k, "lie.fpb", &b, &k.policy())
            },
            BundleError::PayloadLengthMismatch { .. }
        ),
        case!(
            "manifest declares an absurd payload length",
            |k: &BundleKit| {
                let mut m = k.manifest(&[("app.bin", A), ("net.bin", B)]);
                m.payloads[0].length = u64::MAX;
                let b = k.good(&m, &[A, B]);
                verify_bytes(k, "huge.fpb", &b, &k.policy())
            },
            BundleError::LengthTooLarge { .. }
        ),
        case!(
            "payload named with a parent directory",
            |k: &BundleKit| {
                let b = k.good(&k.manifest(&[("../../etc/evil", A)]), &[A]);
                verify_bytes(k, "dotdot.fpb", &b, &k.policy())
            },
            BundleError::UnsafePayloadName { .. }
        ),
        case!(
            "payload named with an absolute path",
            |k: &BundleKit| {
                let b = k.good(&k.manifest(&[("/etc/passwd", A)]), &[A]);
                verify_bytes(k, "abs.fpb", &b, &k.policy())
            },
            BundleError::UnsafePayloadName { .. }
        ),
        case!(
            "payload named with a backslash",
            |k: &BundleKit| {
                let b = k.good(&k.manifest(&[("fw\\app.bin", A)]), &[A]);
                verify_bytes(k, "bslash.fpb", &b, &k.policy())
            },
            BundleError::UnsafePayloadName { .. }
        ),
        case!(
            "payload name with NUL",
            |k: &BundleKit| {
                let b = k.good(&k.manifest(&[("app\0.bin", A)]), &[A]);
                verify_bytes(k, "nul.fpb", &b, &k.policy())
            },
            BundleError::UnsafePayloadName { .. }
        ),
        case!(
            "payload named with a drive letter",
            |k: &BundleKit| {
                let b = k.good(&k.manifest(&[("C:app.bin", A)]), &[A]);
                verify_bytes(k, "drive.fpb", &b, &k.policy())
            },
            BundleError::UnsafePayloadName { .. }
        ),
        case!(
            "two payloads with the same name",
            |k: &BundleKit| {
                let b = k.good(&k.manifest(&[("app.bin", A), ("app.bin", B)]), &[A, B]);
                verify_bytes(k, "dupname.fpb", &b, &k.policy())
            },
            BundleError::DuplicatePayloadName { .. }
        ),
        case!(
            "duplicate key in the manifest",
            |k: &BundleKit| {
                let m = k.manifest(&[("app.bin", A)]);
                let mb = replace(
                    &m.canonical_bytes().unwrap(),
                    r#""bundle_version":1,"#,
                    r#""bundle_version":1,"bundle_version":1,"#,
                );
                let b = k.raw(&mb, &[&k.release[0], &k.release[1]], &[A]);
                verify_bytes(k, "dupkey.fpb", &b, &k.policy())
            },
            BundleError::DuplicateKey { .. }
        ),
        case!(
            "duplicate nested key (second target model) in the manifest",
            |k: &BundleKit| {
                let m = k.manifest(&[("app.bin", A)]);
                let mb = replace(
                    &m.canonical_bytes().unwrap(),
                    r#""model":"S-100","#,
                    r#""model":"S-100","model":"S-200","#,
                );
                let b = k.raw(&mb, &[&k.release[0], &k.release[1]], &[A]);
                verify_bytes(k, "dupkey2.fpb", &b, &k.policy())
            },
            BundleError::DuplicateKey { .. }
        ),
        case!(
            "manifest with whitespace (not canonical)",
            |k: &BundleKit| {
                let m = k.manifest(&[("app.bin", A)]);
                let mb = serde_json::to_vec_pretty(&m).unwrap();
                let b = k.raw(&mb, &[&k.release[0], &k.release[1]], &[A]);
                verify_bytes(k, "pretty.fpb", &b, &k.policy())
            },
            BundleError::NonCanonical { .. }
        ),
        case!(
            "manifest with a float",
            |k: &BundleKit| {
                let m = k.manifest(&[("app.bin", A)]);
                let mb = replace(
                    &m.canonical_bytes().unwrap(),
                    r#""bundle_version":1"#,
                    r#""bundle_version":1.0"#,
                );
                let b = k.raw(&mb, &[&k.release[0], &k.release[1]], &[A]);
                verify_bytes(k, "float.fpb", &b, &k.policy())
            },
            BundleError::NonCanonical { .. }
        ),
        case!(
            "manifest with an unknown field",
            |k: &BundleKit| {
                let m = k.manifest(&[("app.bin", A)]);
                let mb = replace(
                    &m.canonical_bytes().unwrap(),
                    r#"{"applies_to""#,
                    r#"{"allow_all":true,"applies_to""#,
                );
                let b = k.raw(&mb, &[&k.release[0], &k.release[1]], &[A]);
                verify_bytes(k, "unknown-field.fpb", &b, &k.policy())
            },
            BundleError::InvalidManifest { .. }
        ),
        case!(
            "manifest with a malformed CVE id",
            |k: &BundleKit| {
                let mut m = k.manifest(&[("app.bin", A)]);
                m.severity.cves.push("CVE-26-1; rm -rf /".into());
                verify_bytes(k, "cve.fpb", &k.good(&m, &[A]), &k.policy())
            },
            BundleError::InvalidManifest { .. }
        ),
        case!(
            "manifest that is not JSON",
            |k: &BundleKit| {
                let b = k.raw(b"{\"schema\":1", &[&k.release[0]], &[]);
                verify_bytes(k, "notjson.fpb", &b, &k.policy())
            },
            BundleError::InvalidManifest { .. }
        ),
        case!(
            "manifest edited after signing (target model changed)",
            |k: &BundleKit| {
                let m = k.manifest(&[("app.bin", A)]);
                let mb = m.canonical_bytes().unwrap();
                let sigs = k.sign(&mb, &[&k.release[0], &k.release[1]]);
                let edited = replace(&mb, "S-100", "S-200");
                let b = fieldpatch_core::bundle::container::assemble_raw(&edited, &sigs, &[A]);
                verify_bytes(k, "edited.fpb", &b, &k.policy())
            },
            BundleError::BadSignature { .. }
        ),
        case!(
            "signature bytes corrupted",
            |k: &BundleKit| {
                let m = k.manifest(&[("app.bin", A)]);
                let mb = m.canonical_bytes().unwrap();
                let mut b = k.good(&m, &[A]);
                let sig = &k.sign(&mb, &[&k.release[0]])[0].signature;
                let at = offset_of(&b, sig.as_bytes()) + 10;
                b[at] = if b[at] == b'0' { b'1' } else { b'0' };
                verify_bytes(k, "sigflip.fpb", &b, &k.policy())
            },
            BundleError::BadSignature { .. }
        ),
        case!(
            "signed by a rollback key instead of release keys",
            |k: &BundleKit| {
                let m = k.manifest(&[("app.bin", A)]);
                let mb = m.canonical_bytes().unwrap();
                let b = k.raw(&mb, &[&k.release[0], &k.release[1], &k.rollback[0]], &[A]);
                verify_bytes(k, "role.fpb", &b, &k.policy())
            },
            BundleError::KeyLacksRole { .. }
        ),
        case!(
            "unsigned bundle",
            |k: &BundleKit| {
                let m = k.manifest(&[("app.bin", A)]);
                let b = k.raw(&m.canonical_bytes().unwrap(), &[], &[A]);
                verify_bytes(k, "unsigned.fpb", &b, &k.policy())
            },
            BundleError::Unsigned { .. }
        ),
        case!(
            "listed approver did not sign",
            |k: &BundleKit| {
                let mut m = k.manifest(&[("app.bin", A)]);
                m.evidence.approvers.push(id(&k.release[2]));
                let b = k.good(&m, &[A]);
                verify_bytes(k, "approver.fpb", &b, &k.policy())
            },
            BundleError::ApproverDidNotSign { .. }
        ),
        case!(
            "duplicate key in the signature block",
            |k: &BundleKit| {
                let m = k.manifest(&[("app.bin", A)]);
                let mb = m.canonical_bytes().unwrap();
                let sigs = br#"[{"key_id":"00","key_id":"11","signature":"00"}]"#;
                let mut b = Vec::new();
                b.extend_from_slice(b"FPBUNDLE");
                b.extend_from_slice(&1u32.to_le_bytes());
                b.extend_from_slice(&(mb.len() as u32).to_le_bytes());
                b.extend_from_slice(&mb);
                b.extend_from_slice(&(sigs.len() as u32).to_le_bytes());
                b.extend_from_slice(sigs);
                b.extend_from_slice(A);
                verify_bytes(k, "sigdup.fpb", &b, &k.policy())
            },
            BundleError::DuplicateKey { .. }
        ),
    ];
    assert!(cases.len() >= 20, "corpus has {} cases", cases.len());
    let mut failures = Vec::new();
    for (name, run, expected) in &cases {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&kit)));
        match outcome {
            Err(_) => failures.push(format!("{name}: panicked")),
            Ok(Ok(())) => failures.push(format!("{name}: accepted")),
            Ok(Err(e)) if expected(&e) => {
                let msg = e.to_string();
                assert!(msg.len() > 30, "{name}: message too terse: {msg}");
            }
            Ok(Err(e)) => failures.push(format!("{name}: wrong error {} ({e})", e.code())),
        }
    }
    assert!(failures.is_empty(), "corpus failures:\n{}", failures.join("\n"));
}

#[test]
fn the_corpus_baseline_is_accepted() {
    // The corpus cases are mutations of this bundle; it must itself verify, or the cases prove nothing.
    let kit = BundleKit::new();
    let m = kit.manifest(&[("app.bin", A), ("net.bin", B)]);
    verify_bytes(&kit, "good.fpb", &kit.good(&m, &[A, B]), &kit.policy()).unwrap();
    let d = device("S-100", "2", Version::new(2, 0, 0, 0));
    let c = check_target(&m, &d, &kit.trust, &[], t(2026, 3, 1)).unwrap();
    assert!(!c.downgrade);
}

#[test]
fn every_prefix_and_single_byte_flip_of_a_bundle_is_refused_without_panic() {
    let kit = BundleKit::new();
    let m = kit.manifest(&[("app.bin", A)]);
    let good = kit.good(&m, &[A]);
    let path = kit.dir.path().join("mut.fpb");
    for n in 0..good.len() {
        std::fs::write(&path, &good[..n]).unwrap();
        assert!(verify_file(&path, &kit.trust, &kit.policy()).is_err(), "prefix {n}");
    }
    for i in 0..good.len() {
        let mut b = good.clone();
        b[i] ^= 0x01;
        std::fs::write(&path, &b).unwrap();
        assert!(verify_file(&path, &kit.trust, &kit.policy()).is_err(), "flip at {i}");
    }
}
