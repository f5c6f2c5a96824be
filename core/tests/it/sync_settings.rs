//! The facade's sync settings (what the app's settings screen shows) and login (what the app's
//! login does): nothing on a first run; the pinned trust store is shown by version, expiry and
//! root key ids; a login over plain http to another host is refused before anything is stored.
//! (A login that stores a token is tested in the window, under a keyring service of its own: the
//! facade uses the default service, which may hold a developer's real token.)

use chrono::Utc;
use fieldpatch_core::Fieldpatch;
use fieldpatch_core::bundle::Role;
use fieldpatch_core::credentials::Secret;
use fieldpatch_core::flash::connect::{DriverConnector, SystemUsb};
use fieldpatch_testkit::catalog::CatalogBuilder;
use std::sync::Arc;

#[tokio::test]
async fn settings_show_the_trust_store_in_force_and_a_cleartext_login_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fp = Fieldpatch::open_in(
        &dir.path().join("laptop"),
        Arc::new(DriverConnector { usb: SystemUsb }),
    )
    .await
    .unwrap();
    let first = fp.sync_settings().await.unwrap();
    assert_eq!(first.server, None);
    assert_eq!(first.pinned_server_key, None);
    assert_eq!(first.trust, None);

    let refused = fp.sync_login("http://inventory.example.com", &Secret::new("t")).await;
    assert_eq!(refused.unwrap_err().code(), "insecure_server");
    assert_eq!(fp.sync_settings().await.unwrap().server, None, "a refused login stored the server");

    let now = Utc::now();
    let catalog = CatalogBuilder::new()
        .valid(now - chrono::Duration::days(1), now + chrono::Duration::days(30))
        .write(&dir.path().join("release"))
        .unwrap();
    let local = fp.sync_local().await.unwrap();
    std::fs::copy(&catalog.trust_path, local.trust_path()).unwrap();
    let after = fp.sync_settings().await.unwrap();

    assert_eq!(after.server, None);
    let trust = after.trust.as_ref().expect("the pinned trust store is shown");
    assert_eq!(trust.version, catalog.trust.version());
    assert_eq!(trust.expires, catalog.trust.expires().map(|e| e.to_rfc3339()));
    let roots: Vec<String> =
        catalog.trust.keys_with_role(Role::Root).into_iter().map(|(id, _)| id).collect();
    assert!(!roots.is_empty());
    assert_eq!(trust.root_key_ids, roots);
    assert_eq!(after.trust_problem, None);

    std::fs::write(local.trust_path(), b"{\"not\": \"a trust store\"}").unwrap();
    let broken = fp.sync_settings().await.unwrap();
    assert_eq!(broken.trust, None);
    assert!(broken.trust_problem.is_some(), "{broken:?}");
}
