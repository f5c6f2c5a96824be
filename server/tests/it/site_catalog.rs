//! Per-site catalogs, on SQLite and PostgreSQL: a bundle published to some sites reaches only the
//! technicians assigned to one of them (pull and download); bundles for every site reach
//! everyone; a signed catalog listing names each bundle with the sites it was published to.

use crate::both_backends;
use crate::common::{AnyStore, Backend, TestServer};
use chrono::{Duration, Utc};
use fieldpatch_proto::wire::{CatalogEntry, PullResponse};
use fieldpatch_server::Store;
use fieldpatch_server::publish::{publish_listing, publish_trust_store};
use fieldpatch_testkit::trust::{TrustDocs, listed, listed_for};

async fn publish(server: &TestServer, id: &str, bytes: &[u8], sites: &[&str]) -> String {
    let l = listed(id, bytes);
    let entry = CatalogEntry {
        bundle_id: id.into(),
        version: "1".into(),
        manifest: serde_json::json!({"bundle_id": id, "bundle_version": 1}),
        sha256: l.sha256.clone(),
        size: l.size,
        published_at: Utc::now(),
    };
    let sites: Vec<String> = sites.iter().map(|s| s.to_string()).collect();
    let r = match &server.app {
        AnyStore::Sqlite(a) => a.store.publish_bundle_to(&entry, bytes, &sites).await,
        AnyStore::Postgres(a) => a.store.publish_bundle_to(&entry, bytes, &sites).await,
    };
    r.unwrap();
    l.sha256
}

async fn pull(server: &TestServer, token: &str) -> PullResponse {
    reqwest::Client::new()
        .get(server.url("/v1/pull"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn pull_catalog(server: &TestServer, token: &str) -> Vec<String> {
    pull(server, token).await.catalog.into_iter().map(|e| e.bundle_id).collect()
}

async fn download(server: &TestServer, token: &str, sha256: &str) -> u16 {
    reqwest::Client::new()
        .get(server.url(&format!("/v1/catalog/{sha256}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

both_backends!(a_bundle_published_to_some_sites_reaches_only_their_technicians);
async fn a_bundle_published_to_some_sites_reaches_only_their_technicians(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.seed().await; // sites s1 and s2
    let alice = server.technician("alice").await;
    let bob = server.technician("bob").await;
    let carol = server.technician("carol").await;
    server.assign("alice", "s1").await;
    server.assign("bob", "s2").await;
    server.assign("carol", "s1").await;
    server.assign("carol", "s2").await;
    let everyone = publish(&server, "everyone", b"for every site", &[]).await;
    let north = publish(&server, "north", b"for s1 only", &["s1"]).await;
    let both = publish(&server, "both", b"for s1 and s2", &["s1", "s2"]).await;

    assert_eq!(pull_catalog(&server, &alice.token).await, ["both", "everyone", "north"]);
    assert_eq!(pull_catalog(&server, &bob.token).await, ["both", "everyone"]);
    assert_eq!(pull_catalog(&server, &carol.token).await, ["both", "everyone", "north"]);
    // Downloads follow the catalog; another site's bundle answers like a missing one.
    assert_eq!(download(&server, &alice.token, &north).await, 200);
    assert_eq!(download(&server, &bob.token, &north).await, 404);
    assert_eq!(download(&server, &bob.token, &both).await, 200);
    assert_eq!(download(&server, &bob.token, &everyone).await, 200);
    assert_eq!(download(&server, &server.admin_token, &north).await, 200);
    // Unassigning takes the bundle away with the site.
    let r = reqwest::Client::new()
        .delete(server.url("/v1/admin/assignments/alice/s1"))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert_eq!(pull_catalog(&server, &alice.token).await, ["everyone"]);
    assert_eq!(download(&server, &alice.token, &north).await, 404);

    // A site that does not exist: refused, nothing published.
    let l = listed("nowhere", b"x");
    let entry = CatalogEntry {
        bundle_id: "nowhere".into(),
        version: "1".into(),
        manifest: serde_json::json!({}),
        sha256: l.sha256.clone(),
        size: l.size,
        published_at: Utc::now(),
    };
    let sites = vec!["s404".to_string()];
    let e = match &server.app {
        AnyStore::Sqlite(a) => a.store.publish_bundle_to(&entry, b"x", &sites).await,
        AnyStore::Postgres(a) => a.store.publish_bundle_to(&entry, b"x", &sites).await,
    }
    .unwrap_err()
    .to_string();
    assert!(e.contains("site \"s404\" does not exist"), "{e}");
    assert_eq!(download(&server, &server.admin_token, &l.sha256).await, 404);

    // The signed listing: bundles for every site only; then every laptop receives what it names.
    let docs = TrustDocs::new();
    let soon = Utc::now() + Duration::days(7);
    let publish_doc = |doc: serde_json::Value, trust: bool| {
        let bytes = serde_json::to_vec(&doc).unwrap();
        let app = &server.app;
        async move {
            let r = match (app, trust) {
                (AnyStore::Sqlite(a), true) => {
                    publish_trust_store(&a.store, &bytes, Utc::now()).await.map(|_| ())
                }
                (AnyStore::Postgres(a), true) => {
                    publish_trust_store(&a.store, &bytes, Utc::now()).await.map(|_| ())
                }
                (AnyStore::Sqlite(a), false) => {
                    publish_listing(&a.store, &bytes, Utc::now()).await.map(|_| ())
                }
                (AnyStore::Postgres(a), false) => {
                    publish_listing(&a.store, &bytes, Utc::now()).await.map(|_| ())
                }
            };
            r.map_err(|e| (e.code(), e.to_string()))
        }
    };
    publish_doc(serde_json::to_value(docs.store(1, true, None, &[])).unwrap(), true).await.unwrap();
    // A listing must name each bundle for the sites it was published to: not wider, not
    // narrower, not "every site" for a restricted one.
    let everyone_l = listed("everyone", b"for every site");
    let refused = [
        vec![everyone_l.clone(), listed("north", b"for s1 only")],
        vec![everyone_l.clone(), listed_for("north", b"for s1 only", &["s1", "s2"])],
        vec![everyone_l.clone(), listed_for("both", b"for s1 and s2", &["s1"])],
        vec![listed_for("everyone", b"for every site", &["s2"])],
    ];
    for (n, bundles) in refused.into_iter().enumerate() {
        let wrong = docs.listing(1, 1, soon, bundles);
        let (code, message) =
            publish_doc(serde_json::to_value(&wrong).unwrap(), false).await.unwrap_err();
        assert_eq!(code, "listed_bundle_sites_differ", "case {n}: {message}");
        assert!(message.contains("published to"), "{message}");
    }
    let sited = docs.listing(
        2,
        1,
        soon,
        vec![
            everyone_l,
            listed_for("north", b"for s1 only", &["s1"]),
            listed_for("both", b"for s1 and s2", &["s2", "s1"]),
        ],
    );
    publish_doc(serde_json::to_value(&sited).unwrap(), false).await.unwrap();
    // Every technician gets the one listing; each pull carries every bundle it lists for one of
    // the technician's sites (bob, at s2 only, has no "north", which is listed for s1 only).
    for (who, token) in [("alice", &alice.token), ("bob", &bob.token), ("carol", &carol.token)] {
        let answer = pull(&server, token).await;
        assert_eq!(answer.catalog_listing, Some(serde_json::to_value(&sited).unwrap()), "{who}");
        let assigned: Vec<&str> = answer.sites.iter().map(|s| s.id.as_str()).collect();
        for l in sited.listing.bundles.iter().filter(|l| l.reaches(&assigned)) {
            assert!(
                answer.catalog.iter().any(|e| e.sha256 == l.sha256),
                "{who} lacks {}",
                l.bundle_id
            );
        }
    }
}
