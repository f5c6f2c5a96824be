//! Secrets never reach disk: a full visit with credentials from the real Secret Service, then every
//! file in the data directory (store, WAL, shared memory) is searched for the secret values.

use fieldpatch_core::credentials::{
    BackendChoice, CredentialKind, CredentialName, Credentials, Secret,
};
use fieldpatch_core::store::Store;
use fieldpatch_core::visitlog::{EventKind, NewEvent, VisitLog};
use std::path::Path;

fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(path.display().to_string());
                }
            }
        }
    }
    hits
}

fn all_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn a_full_visit_with_credentials_leaves_no_secret_in_the_data_directory() {
    assert!(
        std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some(),
        "this test needs the real Secret Service but DBUS_SESSION_BUS_ADDRESS is not set: run it \
         through scripts/test (dbus-run-session with an unlocked gnome-keyring)"
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).await.unwrap();
    let service = format!("fieldpatch-test-{}", uuid::Uuid::new_v4().simple());
    let creds =
        Credentials::open_with(&store, BackendChoice::SecretService, &service).await.unwrap();

    let password = format!("dev-pw-{}", uuid::Uuid::new_v4().simple());
    let psk = format!("site-psk-{}", uuid::Uuid::new_v4().simple());
    let token = format!("sync-tok-{}", uuid::Uuid::new_v4().simple());
    let dev_name =
        CredentialName::Device { device: "dev-42".into(), kind: CredentialKind::Password };
    let site_name = CredentialName::SiteModel {
        site: "plant-7".into(),
        model: "gw-100".into(),
        kind: CredentialKind::Psk,
    };
    creds.set(&dev_name, &Secret::new(password.clone())).await.unwrap();
    creds.set(&site_name, &Secret::new(psk.clone())).await.unwrap();
    creds.set(&CredentialName::SyncToken, &Secret::new(token.clone())).await.unwrap();

    let key = creds.technician_key().await.unwrap();
    let key_hex = hex::encode(key.to_bytes());
    let log = VisitLog::open(&store, key).await.unwrap();
    let (visit, _) = log.open_visit("plant-7", Some("wo-9")).await.unwrap();
    for dev in ["dev-42", "dev-43"] {
        let used =
            creds.device_secret(dev, Some(("plant-7", "gw-100")), CredentialKind::Password).await;
        let psk_used = creds
            .device_secret(dev, Some(("plant-7", "gw-100")), CredentialKind::Psk)
            .await
            .unwrap();
        assert_eq!(psk_used.expose(), psk);
        if dev == "dev-42" {
            assert_eq!(used.unwrap().expose(), password);
        } else {
            // A missing credential is an error naming what to set, never a value.
            let err = used.unwrap_err().to_string();
            assert!(err.contains("device/dev-43/password"), "{err}");
        }
        for kind in [
            EventKind::DeviceDiscovered {
                transport: "udp".into(),
                address: "127.0.0.1:1337".into(),
                via: Some("udp-probe".into()),
                matched_by: None,
            },
            EventKind::FlashStarted {
                bundle_id: Some("b".into()),
                from_version: Some("1.0.0".into()),
                to_version: Some("1.1.0".into()),
                image_sha256: "aa".repeat(32),
                bytes: 1000,
            },
            EventKind::ProgressCheckpoint { bytes_done: 500, bytes_total: 1000 },
            EventKind::HealthCheck { passed: true, detail: "login ok".into() },
            EventKind::Confirmed { version: Some("1.1.0".into()), image_sha256: "aa".repeat(32) },
        ] {
            log.append(NewEvent::new(kind).visit(visit).device(dev)).await.unwrap();
        }
    }
    assert_eq!(creds.sync_token().await.unwrap().unwrap().expose(), token);
    log.close_visit(visit, 2, 0).await.unwrap();
    assert!(store.verify_log(log.log_id()).await.unwrap().is_ok());
    let names: Vec<String> = creds.list().await.unwrap().into_iter().map(|l| l.name).collect();
    assert!(names.contains(&"device/dev-42/password".to_string()), "{names:?}");

    // While the store is open its WAL and shared-memory files exist: search them too.
    let files = all_files(dir.path());
    assert!(files.iter().any(|f| f.ends_with("-wal")), "{files:?}");
    assert!(files.iter().any(|f| f.ends_with("-shm")), "{files:?}");
    let secrets = [&password, &psk, &token, &key_hex];
    for s in secrets {
        assert_eq!(files_containing(dir.path(), s.as_bytes()), Vec::<String>::new(), "{s:.8}...");
    }
    // The raw key bytes either.
    let raw_key = hex::decode(&key_hex).unwrap();
    assert_eq!(files_containing(dir.path(), &raw_key), Vec::<String>::new());
    // Sanity: the search does find what is there (the names and the events).
    assert!(!files_containing(dir.path(), b"device/dev-42/password").is_empty());

    for n in [&dev_name, &site_name, &CredentialName::SyncToken, &CredentialName::TechnicianKey] {
        creds.delete(n).await.unwrap();
    }
    drop(log);
    store.close().await;
    for s in secrets {
        assert_eq!(files_containing(dir.path(), s.as_bytes()), Vec::<String>::new());
    }
}
