//! The trust store in force for jobs that send bytes to a device: once a sync pinned a store,
//! a store file named for a job must be that store or a rotation signed by its root keys; a
//! hand-made store, an older one or a same-version store with other contents is refused, and a
//! catalog loaded against it is never verified. Without a pinned store the named file is the
//! anchor (a laptop provisioned for offline sessions), and with neither there is no trust store.

use fieldpatch_core::Fieldpatch;
use fieldpatch_core::flash::connect::{DriverConnector, SystemUsb};
use fieldpatch_testkit::trust::TrustDocs;
use std::path::Path;
use std::sync::Arc;

fn write(path: &Path, doc: &fieldpatch_core::bundle::SignedTrustStore) {
    std::fs::write(path, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
}

#[tokio::test]
async fn a_job_trusts_only_the_pinned_store_or_its_signed_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let fp = Fieldpatch::open_in(
        &dir.path().join("laptop"),
        Arc::new(DriverConnector { usb: SystemUsb }),
    )
    .await
    .unwrap();
    let docs = TrustDocs::new();
    let (v1, v2_path, hand_path, older_path) = (
        dir.path().join("v1.json"),
        dir.path().join("v2.json"),
        dir.path().join("hand.json"),
        dir.path().join("same-version.json"),
    );
    write(&v1, &docs.store(1, false, None, &[]));

    // Nothing pinned, nothing named: no trust store. Nothing pinned, a file named: it anchors.
    assert_eq!(fp.trust_store(None).await.unwrap_err().code(), "no_trust_store");
    assert_eq!(fp.trust_store(Some(&v1)).await.unwrap().version(), 1);

    // Pin version 1, as a first sync does.
    let pinned = fp.sync_local().await.unwrap().trust_path();
    std::fs::copy(&v1, &pinned).unwrap();
    assert_eq!(fp.trust_store(None).await.unwrap().version(), 1);
    assert_eq!(fp.trust_store(Some(&v1)).await.unwrap().version(), 1);

    // A rotation to version 2 with a new root, signed by the pinned root too: accepted.
    let next = TrustDocs::new();
    write(&v2_path, &next.store(2, false, None, &[&docs.root]));
    assert_eq!(fp.trust_store(Some(&v2_path)).await.unwrap().version(), 2);

    // A store made by someone else (its own root only), even at a higher version: refused.
    write(&hand_path, &TrustDocs::new().store(5, false, None, &[]));
    let e = fp.trust_store(Some(&hand_path)).await.unwrap_err();
    assert_eq!(e.code(), "trust_store_not_in_force", "{e}");
    assert!(e.to_string().contains("root"), "{e}");
    // The same version with other contents (here: a catalog key added) is refused too.
    write(&older_path, &docs.store(1, true, None, &[]));
    let e = fp.trust_store(Some(&older_path)).await.unwrap_err();
    assert_eq!(e.code(), "trust_store_not_in_force");
    assert!(e.to_string().contains("different contents"), "{e}");

    // Loading a catalog against the hand-made store fails before any bundle is looked at.
    let catalog_dir = dir.path().join("catalog");
    std::fs::create_dir_all(&catalog_dir).unwrap();
    let e = fp.load_catalog(&catalog_dir, &hand_path).await.unwrap_err();
    assert_eq!(e.code(), "trust_store_not_in_force");
}
