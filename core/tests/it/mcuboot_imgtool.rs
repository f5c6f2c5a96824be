//! MCUboot images made by MCUboot's own `imgtool` (PyPI): keygen, sign (hash and pure mode),
//! tamper, verify. `imgtool` is installed by `scripts/setup` into the tools venv; without it these
//! tests fail and say how to get it.

use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{SigningKey, VerifyingKey};
use fieldpatch_core::bundle::{self, BundleError, PayloadFormat, Role, TrustStore, TrustedKey};
use fieldpatch_core::image::mcuboot::{
    Dependency, HashAlg, McubootError, McubootImage, ed25519_keyhash,
};
use fieldpatch_core::model::Version;
use fieldpatch_testkit::catalog::BundleKit;
use std::path::{Path, PathBuf};
use std::process::Command;

fn imgtool() -> PathBuf {
    let venv = std::env::var("FIELDPATCH_TOOLS_VENV").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/fieldpatch/venv")
    });
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("imgtool")).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([venv.join("bin/imgtool")]);
    for c in candidates {
        if c.is_file() {
            return c;
        }
    }
    panic!(
        "imgtool (MCUboot's image tool, PyPI) is required for these tests but was not found on PATH \
         or in {}: run scripts/setup (it installs scripts/python-requirements.txt into that venv)",
        venv.display()
    );
}

fn run(args: &[&str], dir: &Path) -> std::process::Output {
    let out = Command::new(imgtool()).args(args).current_dir(dir).output().unwrap();
    assert!(
        out.status.success(),
        "imgtool {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `imgtool verify` as an independent judge: does it accept the file?
fn imgtool_accepts(key: &str, file: &str, dir: &Path) -> bool {
    Command::new(imgtool())
        .args(["verify", "-k", key, file])
        .current_dir(dir)
        .output()
        .unwrap()
        .status
        .success()
}

struct Vendor {
    dir: tempfile::TempDir,
    key: VerifyingKey,
}

fn vendor() -> Vendor {
    let dir = tempfile::tempdir().unwrap();
    run(&["keygen", "-k", "vendor.pem", "-t", "ed25519"], dir.path());
    let pem = std::fs::read_to_string(dir.path().join("vendor.pem")).unwrap();
    let key = SigningKey::from_pkcs8_pem(&pem).unwrap().verifying_key();
    let body: Vec<u8> = (0..6000u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(dir.path().join("fw.bin"), body).unwrap();
    Vendor { dir, key }
}

fn sign(v: &Vendor, out: &str, extra: &[&str]) -> Vec<u8> {
    let mut args = vec![
        "sign",
        "-k",
        "vendor.pem",
        "--header-size",
        "0x200",
        "--pad-header",
        "--align",
        "4",
        "--version",
        "1.2.3+4",
        "--slot-size",
        "0x20000",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["fw.bin", out]);
    run(&args, v.dir.path());
    std::fs::read(v.dir.path().join(out)).unwrap()
}

fn imgtool_digest(v: &Vendor, file: &str) -> String {
    let out = run(&["verify", "-k", "vendor.pem", file], v.dir.path());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix("Image digest: "))
        .unwrap_or_else(|| panic!("no digest in imgtool output: {text}"))
        .trim()
        .to_string()
}

#[test]
fn hash_mode_images_parse_verify_and_report_imgtools_digest() {
    let v = vendor();
    let bytes = sign(&v, "signed.bin", &["-d", "(1, 2.0.0+0)"]);
    let img = McubootImage::parse(&bytes).unwrap();
    assert_eq!(img.header.version, Version::new(1, 2, 3, 4));
    assert_eq!(img.header.hdr_size, 0x200);
    assert_eq!(img.body(), std::fs::read(v.dir.path().join("fw.bin")).unwrap());
    assert!(!img.is_pure());
    assert_eq!(
        img.dependencies(),
        vec![Dependency { image_id: 1, flags: 0, min_version: Version::new(2, 0, 0, 0) }]
    );
    let hash = img.verify_hash().unwrap();
    assert_eq!(hex::encode(&hash), imgtool_digest(&v, "signed.bin"));
    assert_eq!(img.image_hash(), Some(hash));
    assert_eq!(img.summary().keyhash, Some(hex::encode(ed25519_keyhash(&v.key, HashAlg::Sha256))));
    assert_eq!(img.summary().hash_algorithm, Some(HashAlg::Sha256));
    assert_eq!(img.verify_ed25519(&[v.key]).unwrap(), v.key);

    // Flip one body byte: imgtool and Fieldpatch both refuse it.
    let mut t = bytes.clone();
    t[0x200 + 100] ^= 0x01;
    std::fs::write(v.dir.path().join("tampered.bin"), &t).unwrap();
    assert!(!imgtool_accepts("vendor.pem", "tampered.bin", v.dir.path()));
    let img = McubootImage::parse(&t).unwrap();
    assert!(matches!(img.verify_hash(), Err(McubootError::HashMismatch { .. })));
    assert!(matches!(img.verify_ed25519(&[v.key]), Err(McubootError::HashMismatch { .. })));

    // Flip one signature byte (last TLV): hash still fine, signature not.
    let mut t = bytes.clone();
    let img = McubootImage::parse(&bytes).unwrap();
    let sig = img.tlvs.iter().find(|x| x.kind == 0x24).unwrap();
    t[sig.offset + 5] ^= 0x80;
    let img = McubootImage::parse(&t).unwrap();
    img.verify_hash().unwrap();
    assert_eq!(img.verify_ed25519(&[v.key]).unwrap_err(), McubootError::BadSignature);

    // Another vendor's key: named by its key hash as unknown.
    let other = SigningKey::from_bytes(&[9; 32]).verifying_key();
    let img = McubootImage::parse(&bytes).unwrap();
    assert!(matches!(img.verify_ed25519(&[other]), Err(McubootError::UnknownKey { .. })));
}

#[test]
fn pure_mode_images_verify_over_the_image_and_refuse_tampering() {
    let v = vendor();
    let bytes = sign(&v, "pure.bin", &["--pure"]);
    assert!(imgtool_accepts("vendor.pem", "pure.bin", v.dir.path()));
    let img = McubootImage::parse(&bytes).unwrap();
    assert!(img.is_pure());
    // imgtool uses SHA-512 for pure ed25519: the key hash and hash TLV follow.
    assert_eq!(img.summary().hash_algorithm, Some(HashAlg::Sha512));
    assert_eq!(img.summary().keyhash, Some(hex::encode(ed25519_keyhash(&v.key, HashAlg::Sha512))));
    assert_eq!(img.verify_ed25519(&[v.key]).unwrap(), v.key);

    let mut t = bytes.clone();
    t[0x200 + 7] ^= 0x10;
    std::fs::write(v.dir.path().join("pure-tampered.bin"), &t).unwrap();
    assert!(!imgtool_accepts("vendor.pem", "pure-tampered.bin", v.dir.path()));
    let img = McubootImage::parse(&t).unwrap();
    let e = img.verify_ed25519(&[v.key]).unwrap_err();
    assert!(matches!(e, McubootError::BadSignature | McubootError::HashMismatch { .. }), "{e}");

    // The protected area is covered too: change the header version.
    let mut t = bytes.clone();
    t[20] = 9;
    let img = McubootImage::parse(&t).unwrap();
    assert!(img.verify_ed25519(&[v.key]).is_err());
}

#[test]
fn padded_slot_images_parse_and_truncations_are_refused() {
    let v = vendor();
    let bytes = sign(&v, "padded.bin", &["--pad"]);
    assert_eq!(bytes.len(), 0x20000);
    let img = McubootImage::parse(&bytes).unwrap();
    assert!(img.total_len() < bytes.len());
    img.verify_ed25519(&[v.key]).unwrap();
    let end = img.total_len();
    for cut in [0, 10, 31, 0x200, 0x200 + 6000, end - 1] {
        assert!(McubootImage::parse(&bytes[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn a_bundle_carrying_an_imgtool_image_checks_the_vendor_signature() {
    let v = vendor();
    let image = sign(&v, "app.signed.bin", &[]);
    let k = BundleKit::new();
    // A trust store that also knows the vendor's image key.
    let mut body = BundleKit::body(1, &k.roots, &k.release, &k.rollback, &k.revoked);
    body.keys.push(TrustedKey::new(&v.key, vec![Role::VendorImage], "Acme image key"));
    let trust = TrustStore::provision(body.sign(&[&k.roots[0], &k.roots[1]])).unwrap();

    let bundle_for = |bytes: &[u8], name: &str| {
        let mut m = k.manifest(&[("app.signed.bin", bytes)]);
        m.payloads[0].format = PayloadFormat::Mcuboot;
        m.installs = Version::new(1, 2, 3, 4);
        k.write(name, &k.good(&m, &[bytes]))
    };
    let ok = bundle_for(&image, "img.fpb");
    let verdict = bundle::verify_file(&ok, &trust, &k.policy()).unwrap();
    let check = verdict.checks.iter().find(|c| c.name == "image:app.signed.bin").unwrap();
    assert!(check.detail.contains("vendor signature by"), "{}", check.detail);
    let held = bundle::VerifiedBundle::open(&ok, &trust, &k.policy()).unwrap();
    assert_eq!(held.payload("app.signed.bin").unwrap().bytes(), &image[..]);
    assert_eq!(
        held.payload("app.signed.bin").unwrap().device_image_hash(),
        Some(imgtool_digest(&v, "app.signed.bin"))
    );

    // A tampered image re-packed into a properly signed bundle: the bundle digest matches, the
    // vendor's MCUboot signature does not.
    let mut t = image.clone();
    t[0x200 + 1] ^= 1;
    let bad = bundle_for(&t, "img-bad.fpb");
    let e = bundle::verify_file(&bad, &trust, &k.policy()).unwrap_err();
    assert!(
        matches!(e.error, BundleError::Image { source: McubootError::HashMismatch { .. }, .. }),
        "{e}"
    );
}

#[test]
fn a_bare_image_is_cleared_for_a_device_only_by_a_trusted_vendor_signature() {
    use fieldpatch_core::bundle::input::{Clearance, InputError, clear_for_device};
    use fieldpatch_core::bundle::{Role, TrustStore, TrustStoreBody, TrustedKey, VerifyPolicy};
    let v = vendor();
    let img = sign(&v, "signed.bin", &[]);
    let path = v.dir.path().join("signed.bin");
    let root = SigningKey::from_bytes(&[9; 32]);
    let trust_with = |vendor_key: Option<&VerifyingKey>| {
        let mut keys = vec![TrustedKey::new(&root.verifying_key(), vec![Role::Root], "root")];
        if let Some(k) = vendor_key {
            keys.push(TrustedKey::new(k, vec![Role::VendorImage], "vendor"));
        }
        let thresholds = [(Role::Root, 1), (Role::VendorImage, 1)].into_iter().collect();
        TrustStore::provision(
            TrustStoreBody {
                version: 1,
                keys,
                thresholds,
                offline_grace_days: None,
                expires: None,
                vendor_certificates: Vec::new(),
            }
            .sign(&[&root]),
        )
        .unwrap()
    };
    let policy = VerifyPolicy::now();

    let trusted = trust_with(Some(&v.key));
    let cleared = clear_for_device(&path, Some(&trusted), &policy, false).unwrap();
    assert!(matches!(cleared.how, Clearance::VendorSigned { .. }), "{:?}", cleared.how);
    assert_eq!(cleared.bytes, img);
    assert!(cleared.device_hash.is_some());

    // No vendor key in the trust store, or a tampered image: refused unless explicitly allowed.
    let untrusted = trust_with(None);
    let err = clear_for_device(&path, Some(&untrusted), &policy, false).unwrap_err();
    assert!(matches!(err, InputError::Unverified { .. }), "{err}");
    assert!(err.to_string().contains("--allow-unverified"), "{err}");
    let mut bad = img.clone();
    let n = bad.len() / 2;
    bad[n] ^= 1;
    let tampered = v.dir.path().join("tampered.bin");
    std::fs::write(&tampered, &bad).unwrap();
    assert!(clear_for_device(&tampered, Some(&trusted), &policy, false).is_err());
    let allowed = clear_for_device(&tampered, Some(&trusted), &policy, true).unwrap();
    assert_eq!(allowed.how, Clearance::Unverified);
}
