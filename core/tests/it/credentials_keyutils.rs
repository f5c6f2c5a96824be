//! Credentials in the Linux kernel keyring (keyutils), the fallback where no session bus exists.
//! The backend is forced, so this runs with or without a bus; `keyctl` checks independently that
//! the values really are in the kernel's user keyring.

use fieldpatch_core::credentials::{
    Backend, BackendChoice, CredentialError, CredentialName, Credentials, Secret,
};
use fieldpatch_core::store::Store;
use std::process::Command;

async fn open() -> (tempfile::TempDir, Credentials) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).await.unwrap();
    let service = format!("fieldpatch-test-{}", uuid::Uuid::new_v4().simple());
    let creds = Credentials::open_with(&store, BackendChoice::Keyutils, &service)
        .await
        .unwrap_or_else(|e| panic!("the kernel keyring must be usable here: {e}"));
    assert_eq!(creds.backend(), Backend::Keyutils);
    (dir, creds)
}

/// `keyctl` (keyutils): find the key in the user keyring and print its payload.
fn keyctl_read(service: &str, name: &str) -> Option<String> {
    let desc = format!("{service}:{name}");
    let found = Command::new("keyctl").args(["search", "@u", "user", &desc]).output().unwrap();
    if !found.status.success() {
        return None;
    }
    let id = String::from_utf8(found.stdout).unwrap().trim().to_string();
    let out = Command::new("keyctl").args(["pipe", &id]).output().unwrap();
    out.status.success().then(|| String::from_utf8(out.stdout).unwrap())
}

#[tokio::test]
async fn credentials_round_trip_through_the_kernel_keyring() {
    let (_d, creds) = open().await;
    let name: CredentialName = "site/depot-1/cam-9/token".parse().unwrap();
    let value = format!("tok-{}", uuid::Uuid::new_v4());
    creds.set(&name, &Secret::new(value.clone())).await.unwrap();
    assert_eq!(creds.get(&name).await.unwrap().expose(), value);
    assert_eq!(keyctl_read(creds.service(), "site/depot-1/cam-9/token").as_deref(), Some(&*value));
    creds.set(&name, &Secret::new("v2")).await.unwrap();
    assert_eq!(creds.get(&name).await.unwrap().expose(), "v2");
    let listed = creds.list().await.unwrap();
    assert_eq!(
        listed.iter().map(|l| (&*l.name, &*l.backend)).collect::<Vec<_>>(),
        [("site/depot-1/cam-9/token", "keyutils")]
    );
    assert!(creds.delete(&name).await.unwrap());
    assert!(keyctl_read(creds.service(), "site/depot-1/cam-9/token").is_none());
    assert!(matches!(creds.get(&name).await, Err(CredentialError::NotFound { .. })));
}

#[tokio::test]
async fn a_value_set_by_one_process_is_read_by_another() {
    let (_d, creds) = open().await;
    let name = CredentialName::SyncToken;
    // Stored by a different process (keyctl), read by us: the user keyring is shared.
    let desc = format!("{}:sync-token", creds.service());
    let st =
        Command::new("keyctl").args(["add", "user", &desc, "from-keyctl", "@u"]).output().unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    assert_eq!(creds.get(&name).await.unwrap().expose(), "from-keyctl");
    creds.delete(&name).await.unwrap();
}

#[tokio::test]
async fn the_technician_key_is_kept_in_the_kernel_keyring() {
    let (_d, creds) = open().await;
    let k = creds.technician_key().await.unwrap();
    assert_eq!(creds.technician_key().await.unwrap().to_bytes(), k.to_bytes());
    assert_eq!(keyctl_read(creds.service(), "technician-key").unwrap(), hex::encode(k.to_bytes()));
    creds.delete(&CredentialName::TechnicianKey).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_uses_agree_on_one_technician_key() {
    let dir = tempfile::tempdir().unwrap();
    let service = format!("fieldpatch-test-{}", uuid::Uuid::new_v4().simple());
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(8));
    let mut handles = Vec::new();
    for _ in 0..8 {
        let store = Store::open_in(dir.path()).await.unwrap();
        let creds =
            Credentials::open_with(&store, BackendChoice::Keyutils, &service).await.unwrap();
        let barrier = barrier.clone();
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            creds.technician_key().await.unwrap().to_bytes()
        }));
    }
    let mut keys = Vec::new();
    for h in handles {
        keys.push(h.await.unwrap());
    }
    assert!(keys.windows(2).all(|w| w[0] == w[1]), "two technician keys were minted");
    let store = Store::open_in(dir.path()).await.unwrap();
    let creds = Credentials::open_with(&store, BackendChoice::Keyutils, &service).await.unwrap();
    assert_eq!(creds.technician_key().await.unwrap().to_bytes(), keys[0]);
    assert_eq!(creds.list().await.unwrap()[0].name, "technician-key");
    creds.delete(&CredentialName::TechnicianKey).await.unwrap();
}
