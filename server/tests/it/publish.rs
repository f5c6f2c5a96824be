//! Publishing the trust root, on SQLite and PostgreSQL: a trust store is stored only as a valid
//! store or a rotation of the published one, a catalog listing only when the published store's
//! catalog keys signed it for that store, unexpired, newer, naming published bundles. A refusal
//! stores nothing, over the admin API too (422 with the code).

use crate::both_backends;
use crate::common::{AnyStore, Backend, TestServer};
use chrono::{Duration, Utc};
use fieldpatch_proto::wire::{CatalogEntry, PullResponse};
use fieldpatch_server::Store;
use fieldpatch_server::publish::{Published, publish_listing, publish_trust_store};
use fieldpatch_testkit::trust::{TrustDocs, listed};
use reqwest::StatusCode;

/// What the store holds: (trust store, catalog listing).
async fn published(server: &TestServer) -> (Option<serde_json::Value>, Option<serde_json::Value>) {
    match &server.app {
        AnyStore::Sqlite(a) => {
            (a.store.trust_store().await.unwrap(), a.store.catalog_listing().await.unwrap())
        }
        AnyStore::Postgres(a) => {
            (a.store.trust_store().await.unwrap(), a.store.catalog_listing().await.unwrap())
        }
    }
}

async fn trust(server: &TestServer, doc: &impl serde::Serialize) -> Result<Published, String> {
    let bytes = serde_json::to_vec(doc).unwrap();
    let r = match &server.app {
        AnyStore::Sqlite(a) => publish_trust_store(&a.store, &bytes, Utc::now()).await,
        AnyStore::Postgres(a) => publish_trust_store(&a.store, &bytes, Utc::now()).await,
    };
    r.map_err(|e| e.code().to_string())
}

async fn listing(server: &TestServer, doc: &impl serde::Serialize) -> Result<Published, String> {
    let bytes = serde_json::to_vec(doc).unwrap();
    let r = match &server.app {
        AnyStore::Sqlite(a) => publish_listing(&a.store, &bytes, Utc::now()).await,
        AnyStore::Postgres(a) => publish_listing(&a.store, &bytes, Utc::now()).await,
    };
    r.map_err(|e| e.code().to_string())
}

async fn publish_bundle(server: &TestServer, id: &str, bytes: &[u8]) {
    let l = listed(id, bytes);
    let entry = CatalogEntry {
        bundle_id: id.into(),
        version: "1".into(),
        manifest: serde_json::json!({"bundle_id": id, "bundle_version": 1}),
        sha256: l.sha256,
        size: l.size,
        published_at: Utc::now(),
    };
    match &server.app {
        AnyStore::Sqlite(a) => a.store.publish_bundle(&entry, bytes).await.unwrap(),
        AnyStore::Postgres(a) => a.store.publish_bundle(&entry, bytes).await.unwrap(),
    }
}

both_backends!(a_trust_store_is_published_only_as_a_valid_store_or_rotation);
async fn a_trust_store_is_published_only_as_a_valid_store_or_rotation(backend: Backend) {
    let server = TestServer::start(backend).await;
    let docs = TrustDocs::new();

    // Not a trust store at all, or one its own root did not sign: refused, nothing stored.
    assert_eq!(
        trust(&server, &serde_json::json!({"keys": []})).await.unwrap_err(),
        "invalid_trust_store"
    );
    let mut unsigned = docs.store(1, false, None, &[]);
    unsigned.signatures.clear();
    assert_eq!(trust(&server, &unsigned).await.unwrap_err(), "unsigned");
    let stranger = TrustDocs::new();
    let mut forged = docs.store(1, false, None, &[]);
    forged.signatures = stranger.store(1, false, None, &[]).signatures;
    assert_eq!(trust(&server, &forged).await.unwrap_err(), "unsigned");
    let expired = docs.store(1, false, Some(Utc::now() - Duration::days(1)), &[]);
    assert_eq!(trust(&server, &expired).await.unwrap_err(), "trust_store_expired");
    assert_eq!(published(&server).await, (None, None));

    // The first valid store; publishing it again changes nothing.
    let v1 = docs.store(1, false, Some(Utc::now() + Duration::days(90)), &[]);
    let p = trust(&server, &v1).await.unwrap();
    assert_eq!((p.version, p.replaced, p.unchanged), (1, None, false));
    assert!(trust(&server, &v1).await.unwrap().unchanged);
    let stored = serde_json::to_value(&v1).unwrap();
    assert_eq!(published(&server).await.0.as_ref(), Some(&stored));

    // Not rotations of it: another root's higher version, the same version changed, an older
    // version. Each refused with its code; the published store stays.
    assert_eq!(
        trust(&server, &stranger.store(2, false, None, &[])).await.unwrap_err(),
        "invalid_trust_store"
    );
    assert_eq!(
        trust(&server, &docs.store(1, true, None, &[])).await.unwrap_err(),
        "trust_store_rollback"
    );
    assert_eq!(
        trust(&server, &docs.store(0, false, None, &[])).await.unwrap_err(),
        "trust_store_rollback"
    );
    assert_eq!(published(&server).await.0.as_ref(), Some(&stored));

    // A rotation to a new root, signed by the current root and the new one: published. Over the
    // admin API a refusal is a 422 with the code, and nothing changes.
    let next = TrustDocs::new();
    let v2 = next.store(2, true, None, &[&docs.root]);
    assert_eq!(trust(&server, &v2).await.unwrap().replaced, Some(1));
    let r = reqwest::Client::new()
        .put(server.url("/v1/admin/trust-store"))
        .bearer_auth(&server.admin_token)
        .json(&v1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "trust_store_rollback", "{body}");
    assert_eq!(published(&server).await.0, Some(serde_json::to_value(&v2).unwrap()));
}

both_backends!(a_catalog_listing_is_published_only_for_the_trust_store_and_the_catalog);
async fn a_catalog_listing_is_published_only_for_the_trust_store_and_the_catalog(backend: Backend) {
    let server = TestServer::start(backend).await;
    let docs = TrustDocs::new();
    let soon = Utc::now() + Duration::days(7);
    let a = b"bundle a".to_vec();
    let b = b"bundle b".to_vec();

    // No trust store yet, then one without catalog keys: nothing can be checked.
    assert_eq!(
        listing(&server, &docs.listing(1, 1, soon, vec![])).await.unwrap_err(),
        "no_trust_store"
    );
    trust(&server, &docs.store(1, false, None, &[])).await.unwrap();
    assert_eq!(
        listing(&server, &docs.listing(1, 1, soon, vec![])).await.unwrap_err(),
        "no_catalog_keys"
    );
    trust(&server, &docs.store(2, true, None, &[])).await.unwrap();
    publish_bundle(&server, "a", &a).await;

    // Malformed, for another trust-store version, expired, signed by the root instead of the
    // catalog key, naming a bundle that is not published: each refused, nothing stored.
    let malformed = serde_json::json!({"listing": {"version": 1}, "signatures": []});
    assert_eq!(listing(&server, &malformed).await.unwrap_err(), "invalid_catalog_listing");
    let one = vec![listed("a", &a)];
    assert_eq!(
        listing(&server, &docs.listing(1, 1, soon, one.clone())).await.unwrap_err(),
        "catalog_listing_trust_version"
    );
    let past = Utc::now() - Duration::hours(1);
    assert_eq!(
        listing(&server, &docs.listing(1, 2, past, one.clone())).await.unwrap_err(),
        "catalog_listing_expired"
    );
    let by_root = fieldpatch_proto::listing::CatalogListing {
        version: 1,
        expires: soon,
        trust_store_version: 2,
        bundles: one.clone(),
    }
    .sign(&[&docs.root]);
    assert_eq!(listing(&server, &by_root).await.unwrap_err(), "key_lacks_role");
    let with_b = vec![listed("a", &a), listed("b", &b)];
    assert_eq!(
        listing(&server, &docs.listing(1, 2, soon, with_b.clone())).await.unwrap_err(),
        "listed_bundle_missing"
    );
    let mut renamed = one.clone();
    renamed[0].bundle_id = "not-a".into();
    assert_eq!(
        listing(&server, &docs.listing(1, 2, soon, renamed)).await.unwrap_err(),
        "listed_bundle_missing"
    );
    assert_eq!(published(&server).await.1, None);

    // A good listing; the same again changes nothing; an older or equal version is refused.
    let v5 = docs.listing(5, 2, soon, one.clone());
    assert_eq!(listing(&server, &v5).await.unwrap().version, 5);
    assert!(listing(&server, &v5).await.unwrap().unchanged);
    assert_eq!(
        listing(&server, &docs.listing(4, 2, soon, one.clone())).await.unwrap_err(),
        "catalog_listing_not_newer"
    );
    assert_eq!(
        listing(&server, &docs.listing(5, 2, soon, vec![])).await.unwrap_err(),
        "catalog_listing_not_newer"
    );
    publish_bundle(&server, "b", &b).await;
    let v6 = docs.listing(6, 2, soon, with_b);
    assert_eq!(listing(&server, &v6).await.unwrap().replaced, Some(5));

    // The pull carries it, as published.
    let tech = server.technician("alice").await;
    let pull: PullResponse = reqwest::Client::new()
        .get(server.url("/v1/pull"))
        .bearer_auth(&tech.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pull.catalog_listing, Some(serde_json::to_value(&v6).unwrap()));
}
