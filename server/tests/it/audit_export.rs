//! The server's site-visit audit export, on SQLite and on PostgreSQL: every visit of a site that a
//! technician pushed comes out as one archive in the laptop's format, its manifest signed by the
//! server key, and the proto verifier accepts it; a changed byte, another pinned server key or a
//! manifest claiming the technician signed it are refused. The admin API route serves the same.

use crate::both_backends;
use crate::common::{AnyStore, Backend, TestServer};
use chrono::{DateTime, Duration, Utc};
use fieldpatch_proto::audit::{self, AuditError};
use fieldpatch_proto::event::{Event, EventKind};
use fieldpatch_proto::model::DeviceIdentity;
use fieldpatch_proto::wire::{PushAck, PushRequest};
use fieldpatch_server::export::{self, ExportError, VisitExport};
use fieldpatch_testkit::chain::Chain;
use uuid::Uuid;

async fn push(server: &TestServer, token: &str, events: &[Event]) -> PushAck {
    let r = reqwest::Client::new()
        .post(server.url("/v1/push"))
        .bearer_auth(token)
        .json(&PushRequest { events: events.to_vec() })
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.json().await.unwrap()
}

async fn export_site(
    server: &TestServer,
    site: &str,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<Vec<VisitExport>, ExportError> {
    let from = from.map(|f| export::parse_bound(f, false).unwrap());
    let to = to.map(|t| export::parse_bound(t, true).unwrap());
    match &server.app {
        AnyStore::Sqlite(a) => export::export_site(&a.store, &a.key, site, from, to).await,
        AnyStore::Postgres(a) => export::export_site(&a.store, &a.key, site, from, to).await,
    }
}

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// One log: before it a note; visit 1 at s1 (patched, rolled back, missing), closed; a note;
/// a visit at s2; visit 3 at s1, still open.
fn visits(key: &ed25519_dalek::SigningKey) -> (Vec<Event>, [Uuid; 3]) {
    let ids = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
    let mut log = Vec::new();
    let mut c = Chain::new(key).at(t("2026-11-20T08:00:00Z"), Duration::minutes(1));
    log.push(c.event(None, EventKind::LogStarted { previous: None, why: "nothing_known".into() }));
    let mut c = c.visit(Some(ids[0]));
    let img = "ab".repeat(32);
    log.extend(c.events([
        (None, EventKind::VisitOpened { site: "s1".into(), work_order: Some("w1".into()) }),
        (
            Some("d1"),
            EventKind::DeviceIdentified {
                identity: DeviceIdentity {
                    firmware_version: Some("1.3.0".parse().unwrap()),
                    ..Default::default()
                },
            },
        ),
        (
            Some("d1"),
            EventKind::FlashStarted {
                bundle_id: Some("gw-1.4.0".into()),
                from_version: Some("1.3.0".into()),
                to_version: Some("1.4.0".into()),
                image_sha256: img.clone(),
                bytes: 1000,
            },
        ),
        (
            Some("d1"),
            EventKind::Confirmed { version: Some("1.4.0".into()), image_sha256: img.clone() },
        ),
        (Some("d2"), EventKind::RolledBack { reason: "health check failed".into() }),
        (Some("d3"), EventKind::DeviceMissing { searched: "site s1 (serial, net)".into() }),
        (None, EventKind::VisitClosed { patched: 1, not_patched: 2 }),
    ]));
    let mut c = c.visit(None);
    log.push(c.event(None, EventKind::Note { text: "driving to plant 2".into() }));
    let mut c = c.visit(Some(ids[1]));
    log.extend(c.events([
        (None, EventKind::VisitOpened { site: "s2".into(), work_order: None }),
        (Some("d9"), EventKind::DeviceNotPatched { reason: "customer asked to wait".into() }),
        (None, EventKind::VisitClosed { patched: 0, not_patched: 1 }),
    ]));
    let mut c = c.visit(Some(ids[2])).at(t("2026-11-25T09:00:00Z"), Duration::minutes(1));
    log.extend(c.events([
        (None, EventKind::VisitOpened { site: "s1".into(), work_order: None }),
        (Some("d1"), EventKind::DeviceNotPatched { reason: "already at 1.4.0".into() }),
    ]));
    (log, ids)
}

/// `archive` with one bit changed in the last byte of the first `needle`.
fn flip(archive: &[u8], needle: &str) -> Vec<u8> {
    let at = needle.len() - 1
        + archive
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .unwrap_or_else(|| panic!("{needle:?} is in the archive"));
    let mut bad = archive.to_vec();
    bad[at] ^= 0x01;
    bad
}

/// The files of a plain tar (ustar headers, as `audit::pack` writes them).
fn tar_files(tar: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 512 <= tar.len() && tar[at] != 0 {
        let h = &tar[at..at + 512];
        let name = String::from_utf8(h[..100].split(|b| *b == 0).next().unwrap().to_vec()).unwrap();
        let size_text = std::str::from_utf8(&h[124..136]).unwrap();
        let size =
            usize::from_str_radix(size_text.trim_matches(|c: char| c == '\0' || c == ' '), 8)
                .unwrap();
        out.push((name, tar[at + 512..at + 512 + size].to_vec()));
        at += 512 + size.div_ceil(512) * 512;
    }
    out
}

both_backends!(every_visit_of_a_site_exports_signed_by_the_server_and_verifies);
async fn every_visit_of_a_site_exports_signed_by_the_server_and_verifies(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.seed().await;
    let alice = server.technician("alice").await;
    server.assign("alice", "s1").await;
    server.assign("alice", "s2").await;
    let (log, [v1, v2, v3]) = visits(&alice.key);
    let ack = push(&server, &alice.token, &log).await;
    assert_eq!(ack.stored.len(), log.len(), "{ack:?}");

    let all = export_site(&server, "s1", None, None).await.unwrap();
    assert_eq!(all.iter().map(|v| v.visit_id).collect::<Vec<_>>(), [v1, v3]);
    let tech = hex::encode(alice.key.verifying_key().as_bytes());
    for v in &all {
        let ok = audit::verify(&v.archive, Some(&server.server_key)).unwrap();
        assert_eq!(ok.visit_id, v.visit_id);
        assert_eq!(ok.technician_key, tech);
        assert_eq!(ok.manifest_server_key.as_deref(), Some(server.server_key.as_str()));
        assert_eq!(ok.checkpoint_server_key.as_deref(), Some(server.server_key.as_str()));
        // Without a pinned key the verifier takes the key the manifest names.
        assert_eq!(audit::verify(&v.archive, None).unwrap(), ok);
        assert!(v.file_name().ends_with(".fieldpatch-audit.tar"));
    }
    // Visit 1: seq 2..=8 (the visit ends at its visit_closed), anchored on seq 1.
    let first = audit::verify(&all[0].archive, None).unwrap();
    assert_eq!((first.events, first.devices), (7, 3));
    assert_eq!(first.fingerprint, log[7].hash());
    let files = audit::unpack(&all[0].archive).unwrap();
    let csv = String::from_utf8(files.iter().find(|(n, _)| n == "devices.csv").unwrap().1.clone())
        .unwrap();
    for needle in ["d1,1.3.0,1.4.0", "patched", "rolled_back", "health check failed", "missing"] {
        assert!(csv.contains(needle), "{needle} in {csv}");
    }
    let html = String::from_utf8(files.iter().find(|(n, _)| n == "report.html").unwrap().1.clone())
        .unwrap();
    assert!(html.contains(&format!("manifest signed by server key {}", server.server_key)));
    let events = &files.iter().find(|(n, _)| n == "events.jsonl").unwrap().1;
    assert_eq!(events.iter().filter(|b| **b == b'\n').count(), 7);
    // Visit 3 is still open: up to its last event the server holds.
    let third = audit::verify(&all[1].archive, None).unwrap();
    assert_eq!((third.events, third.devices), (2, 1));
    assert_eq!(third.fingerprint, log.last().unwrap().hash());

    // Dates bound when the visit was opened; other sites and unknown sites.
    let later = export_site(&server, "s1", Some("2026-11-21"), None).await.unwrap();
    assert_eq!(later.iter().map(|v| v.visit_id).collect::<Vec<_>>(), [v3]);
    let earlier = export_site(&server, "s1", None, Some("2026-11-20")).await.unwrap();
    assert_eq!(earlier.iter().map(|v| v.visit_id).collect::<Vec<_>>(), [v1]);
    let s2 = export_site(&server, "s2", None, None).await.unwrap();
    assert_eq!(s2.iter().map(|v| v.visit_id).collect::<Vec<_>>(), [v2]);
    assert!(export_site(&server, "s1", Some("2026-12-01"), None).await.unwrap().is_empty());
    assert!(matches!(
        export_site(&server, "nowhere", None, None).await,
        Err(ExportError::NoSuchSite(_))
    ));
    assert!(matches!(export::parse_bound("next tuesday", false), Err(ExportError::Invalid(_))));

    // The admin API serves the same archives, byte for byte (the same checkpoint signature:
    // ed25519 is deterministic), in one tar; technicians may not.
    let r = reqwest::Client::new()
        .get(server.url("/v1/admin/sites/s1/audit-export?from=2026-11-20&to=2026-11-30"))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-tar");
    let served = tar_files(&r.bytes().await.unwrap());
    assert_eq!(served, all.iter().map(|v| (v.file_name(), v.archive.clone())).collect::<Vec<_>>());
    for (path, status) in [
        ("/v1/admin/sites/nowhere/audit-export", 404),
        ("/v1/admin/sites/s1/audit-export?from=yesterday", 400),
    ] {
        let r = reqwest::Client::new()
            .get(server.url(path))
            .bearer_auth(&server.admin_token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{path}");
    }
    let r = reqwest::Client::new()
        .get(server.url("/v1/admin/sites/s1/audit-export"))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

both_backends!(a_changed_byte_of_a_server_export_is_refused);
async fn a_changed_byte_of_a_server_export_is_refused(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.seed().await;
    let alice = server.technician("alice").await;
    server.assign("alice", "s1").await;
    server.assign("alice", "s2").await;
    let (log, _) = visits(&alice.key);
    push(&server, &alice.token, &log).await;
    let all = export_site(&server, "s1", None, Some("2026-11-20")).await.unwrap();
    let good = &all[0].archive;
    let key = Some(server.server_key.as_str());
    audit::verify(good, key).unwrap();

    // A signed event: its signature no longer matches (checked against the technician's key).
    let e = audit::verify(&flip(good, "health"), key).unwrap_err();
    assert!(matches!(e, AuditError::Chain(_)), "{e}");
    // A CSV cell.
    let e = audit::verify(&flip(good, ",rolled_back,h"), key).unwrap_err();
    assert!(matches!(e, AuditError::NotBacked { ref file, .. } if file == "devices.csv"), "{e}");
    // The manifest (the server key it names), the PDF and the checkpoint.
    let manifest_key = format!("\"signed_by_server_key\":\"{}", server.server_key);
    let e = audit::verify(&flip(good, &manifest_key), None).unwrap_err();
    assert!(matches!(e, AuditError::ManifestSignature(_) | AuditError::Manifest(_)), "{e}");
    let e = audit::verify(&flip(good, "%PDF-1.4\n%"), key).unwrap_err();
    assert!(matches!(e, AuditError::NotBacked { ref file, .. } if file == "report.pdf"), "{e}");
    let checkpoint_hash = format!("\"last_hash\":\"{}", &log[7].hash()[..4]);
    let e = audit::verify(&flip(good, &checkpoint_hash), key).unwrap_err();
    assert!(matches!(e, AuditError::Checkpoint(_)), "{e}");

    // Another pinned server key: the manifest is not by it.
    let other = hex::encode(fieldpatch_testkit::chain::random_key().verifying_key().as_bytes());
    let e = audit::verify(good, Some(&other)).unwrap_err();
    assert!(matches!(e, AuditError::ManifestSignature(_)), "{e}");
    assert!(e.to_string().contains("inventory server key"), "{e}");

    // A server export whose manifest drops the server-key field claims the technician signed
    // it: the server's signature is not the technician's.
    let mut files = audit::unpack(good).unwrap();
    for (name, bytes) in &mut files {
        if name == "manifest.json" {
            let text = String::from_utf8(bytes.clone()).unwrap();
            let cut = format!(",\"signed_by_server_key\":\"{}\"", server.server_key);
            assert!(text.contains(&cut));
            *bytes = text.replace(&cut, "").into_bytes();
        }
    }
    let e = audit::verify(&audit::pack(&files).unwrap(), None).unwrap_err();
    assert!(matches!(e, AuditError::ManifestSignature(_)), "{e}");
}

/// A bundle file of one payload, its manifest signed by `signer` (proto's layout; the server
/// never builds the laptop's bundle writer).
fn bundle(id: &str, payload: &[u8], signer: &ed25519_dalek::SigningKey) -> Vec<u8> {
    use fieldpatch_proto::{bundle, canonical, signature};
    use sha2::Digest;
    let manifest = canonical::to_canonical(&serde_json::json!({
        "bundle_id": id,
        "bundle_version": 1,
        "installs": "1.4.0",
        "payloads": [{
            "name": "app.bin",
            "format": "mcuboot",
            "length": payload.len(),
            "sha256": hex::encode(sha2::Sha256::digest(payload)),
        }],
    }))
    .unwrap();
    let sig = signature::sign(signature::CONTEXT_MANIFEST, &manifest, signer);
    let sigs = canonical::to_canonical_of(&vec![sig]).unwrap();
    let mut b = bundle::MAGIC.to_vec();
    b.extend(bundle::FORMAT_VERSION.to_le_bytes());
    b.extend((manifest.len() as u32).to_le_bytes());
    b.extend(&manifest);
    b.extend((sigs.len() as u32).to_le_bytes());
    b.extend(&sigs);
    b.extend(payload);
    b
}

both_backends!(a_server_export_vouches_for_the_bundles_it_can_prove_under_its_trust_store);
async fn a_server_export_vouches_for_the_bundles_it_can_prove_under_its_trust_store(
    backend: Backend,
) {
    use fieldpatch_proto::trust::{Role, TrustStoreBody, TrustedKey};
    use fieldpatch_proto::wire::CatalogEntry;
    use fieldpatch_server::Store;
    let server = TestServer::start(backend).await;
    server.seed().await;
    let alice = server.technician("alice").await;
    server.assign("alice", "s1").await;
    // The published trust store: a root key and one release key, thresholds 1.
    let (root, release) =
        (fieldpatch_testkit::chain::random_key(), fieldpatch_testkit::chain::random_key());
    // A trust store naming the root key and the release key (revoked or not), thresholds 1,
    // signed by the root and published.
    let publish_store = |version: u64, release_revoked: bool| {
        let mut release_key =
            TrustedKey::new(&release.verifying_key(), vec![Role::Release], "release");
        release_key.revoked = release_revoked;
        let store = TrustStoreBody {
            version,
            keys: vec![
                TrustedKey::new(&root.verifying_key(), vec![Role::Root], "root"),
                release_key,
            ],
            thresholds: std::collections::BTreeMap::from([(Role::Root, 1), (Role::Release, 1)]),
            offline_grace_days: None,
            expires: None,
            vendor_certificates: Vec::new(),
        }
        .sign(&[&root]);
        let server = &server;
        async move {
            let doc = serde_json::to_value(&store).unwrap();
            server.admin_json(reqwest::Method::PUT, "/v1/admin/trust-store", doc).await;
            store
        }
    };
    let store = publish_store(1, false).await;
    // Visit 1 flashed gw-1.4.0, signed by the release key and published.
    let (log, [v1, _, _]) = visits(&alice.key);
    let bytes = bundle("gw-1.4.0", b"payload of gw-1.4.0", &release);
    let entry = CatalogEntry {
        bundle_id: "gw-1.4.0".into(),
        version: "1.4.0".into(),
        manifest: serde_json::json!({"bundle_id": "gw-1.4.0", "bundle_version": 1}),
        sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
        size: bytes.len() as u64,
        published_at: chrono::Utc::now(),
    };
    match &server.app {
        AnyStore::Sqlite(a) => a.store.publish_bundle(&entry, &bytes).await.unwrap(),
        AnyStore::Postgres(a) => a.store.publish_bundle(&entry, &bytes).await.unwrap(),
    }
    let ack = push(&server, &alice.token, &log).await;
    assert_eq!(ack.stored.len(), log.len(), "{ack:?}");

    let all = export_site(&server, "s1", None, None).await.unwrap();
    let first = all.iter().find(|v| v.visit_id == v1).unwrap();
    let ok = audit::verify(&first.archive, Some(&server.server_key)).unwrap();
    let files = audit::unpack(&first.archive).unwrap();
    let file = |name: &str| files.iter().find(|(n, _)| n == name).map(|(_, b)| b.clone());
    let trust = file("trust_store.json").expect("the published trust store is in the export");
    assert_eq!(trust, store.file_bytes().unwrap(), "the bytes a laptop pins");
    assert_eq!(
        ok.trust_store_sha256.as_deref(),
        Some(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&trust)).as_str())
    );
    let verdict: serde_json::Value =
        serde_json::from_slice(&file("bundles/gw-1.4.0.verdict.json").unwrap()).unwrap();
    assert_eq!(verdict["valid"], true, "{verdict}");
    let release_id = fieldpatch_proto::signature::key_id(&release.verifying_key());
    assert_eq!(verdict["signers"], serde_json::json!([release_id]), "{verdict}");
    assert!(file("bundles/gw-1.4.0.signatures.json").is_some());
    assert!(file("bundles/gw-1.4.0.manifest.json").is_some());
    // The visits that name no bundle carry the trust store only.
    let third = all.iter().find(|v| v.visit_id != v1).unwrap();
    let third_files = audit::unpack(&third.archive).unwrap();
    assert!(third_files.iter().any(|(n, _)| n == "trust_store.json"));
    assert!(!third_files.iter().any(|(n, _)| n.starts_with("bundles/")));

    // The release key is revoked by a rotation: the server can no longer vouch for the bundle,
    // so a new export leaves its verdict out (the events still name it) and still verifies.
    let rotated = publish_store(2, true).await;
    let again = export_site(&server, "s1", None, None).await.unwrap();
    let first = again.iter().find(|v| v.visit_id == v1).unwrap();
    audit::verify(&first.archive, Some(&server.server_key)).unwrap();
    let files = audit::unpack(&first.archive).unwrap();
    let trust = files.iter().find(|(n, _)| n == "trust_store.json").unwrap();
    assert_eq!(trust.1, rotated.file_bytes().unwrap());
    assert!(!files.iter().any(|(n, _)| n.starts_with("bundles/")), "a revoked signer vouched");
}
