//! Trust stores and catalog listings from untrusted bytes: malformed, oversized, repeated,
//! mutated or hostile input is refused with a stable code and never panics; the rules both sides
//! apply (threshold of the catalog role, trust-store version, expiry, versions that only move
//! forward) hold; and stores without the new optional fields keep their signed bytes.

use chrono::{Duration, TimeZone, Utc};
use ed25519_dalek::SigningKey;
use fieldpatch_proto::listing::{CatalogListing, ListedBundle, SignedCatalogListing};
use fieldpatch_proto::signature::key_id;
use fieldpatch_proto::trust::{
    Role, SignedTrustStore, TrustError, TrustStore, TrustStoreBody, TrustedKey,
};
use std::collections::BTreeMap;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// Root `key(1)`, catalog keys `key(2)` and `key(3)` (threshold `catalog_threshold`), a revoked
/// catalog key `key(4)`.
fn store(version: u64, catalog_threshold: u32) -> TrustStore {
    let mut revoked = TrustedKey::new(&key(4).verifying_key(), vec![Role::Catalog], "lost");
    revoked.revoked = true;
    let body = TrustStoreBody {
        version,
        keys: vec![
            TrustedKey::new(&key(1).verifying_key(), vec![Role::Root], "root"),
            TrustedKey::new(&key(2).verifying_key(), vec![Role::Catalog], "catalog a"),
            TrustedKey::new(&key(3).verifying_key(), vec![Role::Catalog], "catalog b"),
            revoked,
        ],
        thresholds: BTreeMap::from([(Role::Catalog, catalog_threshold)]),
        offline_grace_days: None,
        expires: None,
        vendor_certificates: Vec::new(),
    };
    TrustStore::provision(body.sign(&[&key(1)])).unwrap()
}

fn bundle(n: u8) -> ListedBundle {
    ListedBundle {
        bundle_id: format!("bundle-{n}"),
        bundle_version: 1,
        sha256: format!("{n:02x}").repeat(32),
        size: 100 + u64::from(n),
        sites: Vec::new(),
    }
}

fn listing(version: u64, trust_version: u64, signers: &[&SigningKey]) -> SignedCatalogListing {
    CatalogListing {
        version,
        expires: Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap(),
        trust_store_version: trust_version,
        bundles: vec![bundle(1), bundle(2)],
    }
    .sign(signers)
}

/// Inputs no parser may panic on.
fn hostile_inputs() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = [
        "",
        "null",
        "[]",
        "{",
        "}",
        "\"store\"",
        "{} {}",
        "{\"store\":null,\"signatures\":null}",
        "{\"listing\":null,\"signatures\":[]}",
        "{\"store\":{\"version\":-1,\"keys\":[],\"thresholds\":{}},\"signatures\":[]}",
        "{\"store\":{\"version\":1e400,\"keys\":[],\"thresholds\":{}},\"signatures\":[]}",
        "{\"store\":{\"version\":18446744073709551616,\"keys\":[],\"thresholds\":{}},\"signatures\":[]}",
        "{\"store\":{\"version\":1,\"keys\":[],\"thresholds\":{\"wizard\":1}},\"signatures\":[]}",
        "{\"store\":{\"version\":1,\"keys\":[],\"thresholds\":{\"root\":4294967296}},\"signatures\":[]}",
        "{\"store\":{\"version\":1,\"keys\":[],\"thresholds\":{},\"expires\":\"yesterday\"},\"signatures\":[]}",
        "{\"store\":{\"version\":1,\"keys\":[{\"id\":\"x\",\"public_key\":\"zz\",\"roles\":[\"root\"],\"label\":\"\"}],\"thresholds\":{}},\"signatures\":[]}",
        "{\"listing\":{\"version\":1,\"expires\":\"2030-01-01T00:00:00Z\",\"trust_store_version\":1,\"bundles\":[{\"bundle_id\":\"a\",\"bundle_version\":-3,\"sha256\":\"\",\"size\":0}]},\"signatures\":[]}",
        "\u{feff}{}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    v.push(b"[".repeat(100_000));
    v.push(b"{\"a\":".repeat(50_000));
    v.push(vec![0xff, 0xfe, 0x00, 0x7b]);
    v
}

#[test]
fn malformed_documents_are_refused_with_a_code_and_never_panic() {
    for input in hostile_inputs() {
        let shown = String::from_utf8_lossy(&input[..input.len().min(60)]).into_owned();
        let e = TrustStore::from_json(&input).unwrap_err();
        assert!(!e.code().is_empty() && !e.to_string().is_empty(), "{shown}");
        if let Ok(doc) = SignedTrustStore::from_json(&input) {
            assert!(TrustStore::provision(doc).is_err(), "{shown}");
        }
        let e = SignedCatalogListing::from_json(&input).unwrap_err();
        assert!(!e.code().is_empty() && !e.to_string().is_empty(), "{shown}");
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&input) {
            if let Ok(doc) = SignedTrustStore::from_value(&value) {
                assert!(TrustStore::provision(doc).is_err(), "{shown}");
            }
            assert!(SignedCatalogListing::from_value(&value).is_err(), "{shown}");
        }
    }
    // Times at the edge of what can be written: parsed or refused, never a panic, and an expiry
    // far away is simply not reached.
    for expires in ["+999999-12-31T23:59:59Z", "9999-12-31T23:59:59+23:59", "0000-01-01T00:00:00Z"]
    {
        let doc = format!(
            "{{\"listing\":{{\"version\":1,\"expires\":\"{expires}\",\"trust_store_version\":1,\"bundles\":[]}},\"signatures\":[]}}"
        );
        if let Ok(l) = SignedCatalogListing::from_json(doc.as_bytes()) {
            let _ = l.check_current(Utc::now());
            assert_eq!(l.verify(&store(1, 1)).unwrap_err().code(), "unsigned");
        }
    }
}

#[test]
fn oversized_repeated_and_unknown_content_is_refused_by_name() {
    let doc = serde_json::to_vec(store(1, 1).document()).unwrap();
    let mut big = doc.clone();
    big.resize(5 << 20, b' ');
    assert_eq!(SignedTrustStore::from_json(&big).unwrap_err().code(), "length_too_large");
    let mut huge = serde_json::to_vec(&listing(1, 1, &[&key(2)])).unwrap();
    huge.resize(17 << 20, b' ');
    assert_eq!(SignedCatalogListing::from_json(&huge).unwrap_err().code(), "length_too_large");

    // A repeated key could hide what was signed.
    let text = String::from_utf8(doc).unwrap();
    let repeated = text.replacen("\"version\":1", "\"version\":1,\"version\":2", 1);
    assert_ne!(repeated, text);
    let e = SignedTrustStore::from_json(repeated.as_bytes()).unwrap_err();
    assert!(matches!(&e, TrustError::DuplicateKey { key, .. } if key == "version"), "{e}");

    // Fields nobody signed up for.
    let extra = text.replacen("\"version\":1", "\"version\":1,\"mirror\":\"evil\"", 1);
    assert_eq!(
        SignedTrustStore::from_json(extra.as_bytes()).unwrap_err().code(),
        "invalid_trust_store"
    );
    let l = serde_json::to_string(&listing(1, 1, &[&key(2)])).unwrap();
    let extra = l.replacen("\"version\":1", "\"version\":1,\"note\":1", 1);
    assert_eq!(
        SignedCatalogListing::from_json(extra.as_bytes()).unwrap_err().code(),
        "invalid_catalog_listing"
    );
}

#[test]
fn listing_shapes_are_checked_before_anything_else() {
    let ok = listing(1, 1, &[&key(2)]);
    let bytes = serde_json::to_vec(&ok).unwrap();
    assert_eq!(SignedCatalogListing::from_json(&bytes).unwrap(), ok);

    let shape = |edit: &dyn Fn(&mut SignedCatalogListing)| {
        let mut l = ok.clone();
        edit(&mut l);
        let e = SignedCatalogListing::from_json(&serde_json::to_vec(&l).unwrap()).unwrap_err();
        assert_eq!(e.code(), "invalid_catalog_listing", "{e}");
        e.to_string()
    };
    assert!(shape(&|l| l.listing.bundles[0].sha256 = "AB".repeat(32)).contains("lowercase hex"));
    assert!(shape(&|l| l.listing.bundles[0].sha256 = "ab".repeat(31)).contains("64"));
    assert!(
        shape(&|l| l.listing.bundles[1].sha256 = l.listing.bundles[0].sha256.clone())
            .contains("listed twice")
    );
    assert!(shape(&|l| l.listing.bundles[0].bundle_id.clear()).contains("bundle id"));
    assert!(shape(&|l| l.listing.bundles[0].bundle_id = "x".repeat(300)).contains("bundle id"));
    let site = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(shape(&|l| l.listing.bundles[0].sites = site(&["s2", "s1"])).contains("sorted"));
    assert!(shape(&|l| l.listing.bundles[0].sites = site(&["s1", "s1"])).contains("once"));
    assert!(shape(&|l| l.listing.bundles[0].sites = site(&[""])).contains("site id"));
    let long = "s".repeat(300);
    assert!(shape(&|l| l.listing.bundles[0].sites = site(&[long.as_str()])).contains("site id"));
    let many = shape(&|l| {
        let s = l.signatures[0].clone();
        l.signatures = vec![s; 65];
    });
    assert!(many.contains("signatures"), "{many}");
    let mut too_many_keys = store(1, 1).document().clone();
    too_many_keys.signatures = vec![too_many_keys.signatures[0].clone(); 65];
    assert_eq!(TrustStore::provision(too_many_keys).unwrap_err().code(), "invalid_trust_store");
}

#[test]
fn mutated_documents_never_panic_and_never_verify() {
    let trust = store(3, 1);
    let good_store = serde_json::to_vec_pretty(trust.document()).unwrap();
    let good_listing = serde_json::to_vec_pretty(&listing(9, 3, &[&key(2)])).unwrap();
    assert!(SignedCatalogListing::from_json(&good_listing).unwrap().verify(&trust).is_ok());
    // A small deterministic generator: flip, drop and duplicate bytes.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..3000 {
        let base = if round % 2 == 0 { &good_store } else { &good_listing };
        let mut m = base.clone();
        let at = (next() as usize) % m.len();
        match next() % 3 {
            0 => m[at] ^= 1 << (next() % 8),
            1 => {
                m.remove(at);
            }
            _ => {
                let b = m[at];
                m.insert(at, b);
            }
        }
        if m == *base {
            continue;
        }
        // Whatever parses with other signed content must not verify (formatting and the
        // spelling of signature hex are not signed content).
        if let Ok(doc) = SignedTrustStore::from_json(&m)
            && doc.store != trust.document().store
        {
            assert!(TrustStore::provision(doc).is_err(), "round {round}");
        }
        if let Ok(doc) = SignedCatalogListing::from_json(&m)
            && doc.listing != listing(9, 3, &[&key(2)]).listing
        {
            assert!(doc.verify(&trust).is_err(), "round {round}");
        }
    }
}

#[test]
fn a_listing_holds_only_with_the_catalog_threshold_of_the_store_in_force() {
    let trust = store(3, 1);
    assert!(trust.requires_listing());
    assert_eq!(
        listing(1, 3, &[&key(2)]).verify(&trust).unwrap(),
        vec![key_id(&key(2).verifying_key())]
    );

    let code = |l: SignedCatalogListing, t: &TrustStore| l.verify(t).unwrap_err().code();
    assert_eq!(code(listing(1, 2, &[&key(2)]), &trust), "catalog_listing_trust_version");
    assert_eq!(code(listing(1, 3, &[]), &trust), "unsigned");
    assert_eq!(code(listing(1, 3, &[&key(1)]), &trust), "key_lacks_role");
    assert_eq!(code(listing(1, 3, &[&key(4)]), &trust), "revoked_key");
    assert_eq!(code(listing(1, 3, &[&key(9)]), &trust), "unknown_key");
    let mut tampered = listing(1, 3, &[&key(2)]);
    tampered.listing.bundles.pop();
    assert_eq!(code(tampered, &trust), "bad_signature");
    let two = store(3, 2);
    assert_eq!(code(listing(1, 3, &[&key(2)]), &two), "threshold_not_met");
    assert!(listing(1, 3, &[&key(2), &key(3)]).verify(&two).is_ok());

    // A store without catalog keys vouches for no listing (and requires none).
    let plain = TrustStore::provision(
        TrustStoreBody {
            version: 3,
            keys: vec![TrustedKey::new(&key(1).verifying_key(), vec![Role::Root], "root")],
            thresholds: BTreeMap::new(),
            offline_grace_days: None,
            expires: None,
            vendor_certificates: Vec::new(),
        }
        .sign(&[&key(1)]),
    )
    .unwrap();
    assert!(!plain.requires_listing());
    assert_eq!(code(listing(1, 3, &[&key(2)]), &plain), "no_catalog_keys");
}

#[test]
fn listings_expire_and_only_move_forward() {
    let l = listing(7, 3, &[&key(2)]);
    let expires = l.listing.expires;
    assert!(l.check_current(expires).is_ok());
    let e = l.check_current(expires + Duration::seconds(1)).unwrap_err();
    assert_eq!(e.code(), "catalog_listing_expired");
    assert!(e.to_string().contains("the catalog listing expired on 2030-01-01"), "{e}");

    assert!(l.check_successor(None).is_ok());
    assert!(l.check_successor(Some(&l.clone())).is_ok(), "the same listing again");
    assert!(l.check_successor(Some(&listing(6, 3, &[&key(2)]))).is_ok());
    let e = l.check_successor(Some(&listing(8, 3, &[&key(2)]))).unwrap_err();
    assert_eq!(e, TrustError::ListingRollback { current: 8, offered: 7 });
    let mut other = l.clone();
    other.listing.bundles.pop();
    other.signatures.clear();
    other.cosign(&key(2));
    assert_eq!(
        other.check_successor(Some(&l)).unwrap_err().code(),
        "catalog_listing_conflict",
        "the same version with other content"
    );
}

#[test]
fn stores_without_the_new_fields_keep_their_signed_bytes() {
    let root = key(1);
    let body = TrustStoreBody {
        version: 1,
        keys: vec![TrustedKey::new(&root.verifying_key(), vec![Role::Root], "root")],
        thresholds: BTreeMap::from([(Role::Root, 1)]),
        offline_grace_days: None,
        expires: None,
        vendor_certificates: Vec::new(),
    };
    let want = format!(
        "{{\"keys\":[{{\"id\":\"{}\",\"label\":\"root\",\"public_key\":\"{}\",\"revoked\":false,\"roles\":[\"root\"]}}],\"thresholds\":{{\"root\":1}},\"version\":1}}",
        key_id(&root.verifying_key()),
        hex::encode(root.verifying_key().as_bytes())
    );
    assert_eq!(String::from_utf8(body.canonical_bytes()).unwrap(), want);

    // With an expiry it is part of what the root signs, and an expired store says so.
    let expires = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
    let dated = TrustStoreBody { expires: Some(expires), ..body.clone() };
    assert!(
        String::from_utf8(dated.canonical_bytes())
            .unwrap()
            .contains("\"expires\":\"2026-06-01T00:00:00Z\"")
    );
    let mut signed = dated.sign(&[&root]);
    let store = TrustStore::provision(signed.clone()).unwrap();
    assert!(store.check_current(expires).is_ok());
    let e = store.check_current(expires + Duration::days(1)).unwrap_err();
    assert!(e.to_string().starts_with("the trust store expired on 2026-06-01"), "{e}");
    signed.store.expires = Some(expires + Duration::days(365));
    assert_eq!(TrustStore::provision(signed).unwrap_err().code(), "bad_signature");
}

#[test]
fn bundles_for_every_site_keep_their_signed_bytes_and_restricted_ones_sign_their_sites() {
    let everywhere = CatalogListing {
        version: 1,
        expires: Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap(),
        trust_store_version: 1,
        bundles: vec![bundle(1)],
    };
    let text = String::from_utf8(everywhere.canonical_bytes()).unwrap();
    assert!(!text.contains("sites"), "{text}");
    let mut restricted = everywhere.clone();
    restricted.bundles[0].sites = vec!["north".into(), "south".into()];
    let text = String::from_utf8(restricted.canonical_bytes()).unwrap();
    assert!(text.contains("\"sites\":[\"north\",\"south\"]"), "{text}");

    // The sites are signed: a server cannot widen a bundle to another site.
    let trust = store(1, 1);
    let mut signed = restricted.clone().sign(&[&key(2)]);
    assert!(signed.verify(&trust).is_ok());
    signed.listing.bundles[0].sites.push("west".into());
    assert_eq!(signed.verify(&trust).unwrap_err().code(), "bad_signature");
    signed.listing.bundles[0].sites.clear();
    assert_eq!(signed.verify(&trust).unwrap_err().code(), "bad_signature");

    let b = &restricted.bundles[0];
    assert!(b.is_for_site(Some("north")) && !b.is_for_site(Some("west")));
    assert!(!b.is_for_site(None), "a visit naming no site uses only bundles for every site");
    assert!(b.reaches(&["west", "south"]) && !b.reaches(&["west"]) && !b.reaches(&[]));
    assert!(bundle(1).is_for_site(None) && bundle(1).reaches(&[]));
    assert_eq!(b.sites_text(), "sites north, south");
}

#[test]
fn roles_include_catalog_everywhere_they_are_named() {
    assert!(Role::ALL.contains(&Role::Catalog));
    for role in Role::ALL {
        assert_eq!(role.to_string().parse::<Role>().unwrap(), role);
        let json = serde_json::to_string(&role).unwrap();
        assert_eq!(json, format!("\"{role}\""));
    }
    let e = "wizard".parse::<Role>().unwrap_err();
    assert!(e.contains("catalog") && e.contains("vendor_image"), "{e}");
}

/// A self-signed certificate made by `openssl`, PEM.
fn openssl_certificate(cn: &str) -> String {
    let dir = std::env::temp_dir().join(format!("fp-proto-cert-{}-{cn}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"])
        .args(["-days", "2", "-subj", &format!("/CN={cn}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs (scripts/setup installs it)");
    assert!(status.success());
    let pem = std::fs::read_to_string(&cert).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    pem
}

#[test]
fn vendor_certificates_are_named_by_their_fingerprint_and_checked() {
    use fieldpatch_proto::trust::{VendorCertificate, certificate_id};
    let pem = openssl_certificate("vendor-a");
    // The id is the SHA-256 of the DER bytes, as `openssl x509 -fingerprint -sha256` prints it.
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(pem.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    let printed = String::from_utf8(out.stdout).unwrap();
    let fingerprint = printed.trim().rsplit('=').next().unwrap().replace(':', "").to_lowercase();
    assert_eq!(certificate_id(&pem).unwrap(), fingerprint);

    let body = |certs: Vec<VendorCertificate>| TrustStoreBody {
        version: 1,
        keys: vec![TrustedKey::new(&key(1).verifying_key(), vec![Role::Root], "root")],
        thresholds: BTreeMap::new(),
        offline_grace_days: None,
        expires: None,
        vendor_certificates: certs,
    };
    let good = VendorCertificate::new(&pem, "Vendor A").unwrap();
    let store = TrustStore::provision(body(vec![good.clone()]).sign(&[&key(1)])).unwrap();
    assert_eq!(store.vendor_certificates(), [&good]);
    // The certificate is part of what the root keys sign.
    let mut doc = store.document().clone();
    doc.store.vendor_certificates[0].label = "Someone".into();
    assert_eq!(TrustStore::provision(doc).unwrap_err().code(), "bad_signature");

    // Refused: an id that is not the certificate's, a repeated certificate, and PEM that is not
    // exactly one certificate.
    let wrong_id = VendorCertificate { id: "00".repeat(32), ..good.clone() };
    let other = openssl_certificate("vendor-b");
    for (name, certs) in [
        ("wrong id", vec![wrong_id]),
        ("twice", vec![good.clone(), good.clone()]),
        ("two blocks", vec![VendorCertificate { pem: format!("{pem}{other}"), ..good.clone() }]),
        ("not base64", vec![VendorCertificate { pem: pem.replace('A', "*"), ..good.clone() }]),
    ] {
        let e = TrustStore::provision(body(certs).sign(&[&key(1)])).unwrap_err();
        assert_eq!(e.code(), "invalid_trust_store", "{name}: {e}");
    }
    assert!(
        VendorCertificate::new("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----", "x")
            .is_err()
    );
    assert!(VendorCertificate::new(&"A".repeat(20_000), "x").is_err());
    // A revoked certificate stays listed and is no anchor.
    let revoked = VendorCertificate { revoked: true, ..good };
    let store = TrustStore::provision(body(vec![revoked]).sign(&[&key(1)])).unwrap();
    assert!(store.vendor_certificates().is_empty());
}
