//! Credentials in the real Secret Service (gnome-keyring in the D-Bus session that scripts/test
//! starts). Each test uses its own keyring service name so runs never see each other's items.
//! `secret-tool` (libsecret) checks independently that the items really are in the Secret Service.

use fieldpatch_core::credentials::{
    Backend, BackendChoice, CredentialError, CredentialKind, CredentialName, Credentials, Secret,
};
use fieldpatch_core::store::Store;
use std::process::Command;

fn require_session_bus() {
    assert!(
        std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some(),
        "this test needs the real Secret Service but DBUS_SESSION_BUS_ADDRESS is not set: run it \
         through scripts/test, or inside `dbus-run-session` with `gnome-keyring-daemon --unlock \
         --components=secrets` (see the team brief)"
    );
}

async fn open() -> (tempfile::TempDir, Store, Credentials) {
    require_session_bus();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).await.unwrap();
    let service = format!("fieldpatch-test-{}", uuid::Uuid::new_v4().simple());
    let creds = Credentials::open_with(&store, BackendChoice::SecretService, &service)
        .await
        .unwrap_or_else(|e| panic!("the Secret Service must be usable here: {e}"));
    (dir, store, creds)
}

/// Read an item with libsecret's CLI: an independent look into the Secret Service.
fn secret_tool_lookup(service: &str, name: &str) -> Option<String> {
    let out = Command::new("secret-tool")
        .args(["lookup", "service", service, "username", name])
        .output()
        .expect("secret-tool (libsecret-tools) is installed by scripts/setup");
    out.status.success().then(|| String::from_utf8(out.stdout).unwrap())
}

#[tokio::test]
async fn auto_picks_the_secret_service_when_a_session_bus_answers() {
    require_session_bus();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).await.unwrap();
    let creds =
        Credentials::open_with(&store, BackendChoice::Auto, "fieldpatch-test-auto").await.unwrap();
    assert_eq!(creds.backend(), Backend::SecretService);
}

#[tokio::test]
async fn device_credentials_round_trip_through_the_secret_service() {
    let (_d, _store, creds) = open().await;
    let name: CredentialName = "device/dev-17/password".parse().unwrap();
    let value = format!("pw-{}", uuid::Uuid::new_v4());
    creds.set(&name, &Secret::new(value.clone())).await.unwrap();
    assert_eq!(creds.get(&name).await.unwrap().expose(), value);
    assert_eq!(
        secret_tool_lookup(creds.service(), "device/dev-17/password").as_deref(),
        Some(&*value)
    );

    // Replacing keeps one item with the new value.
    creds.set(&name, &Secret::new("second")).await.unwrap();
    assert_eq!(creds.get(&name).await.unwrap().expose(), "second");

    let listed = creds.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "device/dev-17/password");
    assert_eq!(listed[0].backend, "secret-service");

    assert!(creds.delete(&name).await.unwrap());
    assert!(secret_tool_lookup(creds.service(), "device/dev-17/password").is_none());
    let err = creds.get(&name).await.unwrap_err();
    assert!(matches!(err, CredentialError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("fieldpatch credentials set device/dev-17/password"), "{err}");
    assert!(creds.list().await.unwrap().is_empty());
    assert!(!creds.delete(&name).await.unwrap(), "deleting twice reports nothing deleted");
}

#[tokio::test]
async fn a_device_falls_back_to_its_site_and_model_credential() {
    let (_d, _store, creds) = open().await;
    let shared: CredentialName = "site/plant-3/gw-100/psk".parse().unwrap();
    creds.set(&shared, &Secret::new("shared-psk")).await.unwrap();
    let s = creds
        .device_secret("dev-1", Some(("plant-3", "gw-100")), CredentialKind::Psk)
        .await
        .unwrap();
    assert_eq!(s.expose(), "shared-psk");
    let own = CredentialName::Device { device: "dev-1".into(), kind: CredentialKind::Psk };
    creds.set(&own, &Secret::new("own-psk")).await.unwrap();
    let s = creds
        .device_secret("dev-1", Some(("plant-3", "gw-100")), CredentialKind::Psk)
        .await
        .unwrap();
    assert_eq!(s.expose(), "own-psk");
    let err = creds.device_secret("dev-2", None, CredentialKind::Token).await.unwrap_err();
    assert!(err.to_string().contains("device/dev-2/token"), "{err}");
    creds.delete(&shared).await.unwrap();
    creds.delete(&own).await.unwrap();
}

#[tokio::test]
async fn the_technician_key_is_generated_once_and_kept_in_the_keyring() {
    let (_d, store, creds) = open().await;
    let k1 = creds.technician_key().await.unwrap();
    let k2 = creds.technician_key().await.unwrap();
    assert_eq!(k1.to_bytes(), k2.to_bytes(), "the second call reads the stored key");
    let stored = secret_tool_lookup(creds.service(), "technician-key").unwrap();
    assert_eq!(stored, hex::encode(k1.to_bytes()));
    // The store knows the name, never the value.
    creds.delete(&CredentialName::TechnicianKey).await.unwrap();
    let db = std::fs::read(store.path()).unwrap();
    assert!(!contains(&db, stored.as_bytes()));
    assert!(!contains(&db, &k1.to_bytes()));
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn sync_token_is_absent_until_provisioned() {
    let (_d, _store, creds) = open().await;
    assert!(creds.sync_token().await.unwrap().is_none());
    creds.set(&CredentialName::SyncToken, &Secret::new("tok-1")).await.unwrap();
    assert_eq!(creds.sync_token().await.unwrap().unwrap().expose(), "tok-1");
    creds.delete(&CredentialName::SyncToken).await.unwrap();
}

#[tokio::test]
async fn secrets_are_never_printed_and_bad_names_are_refused() {
    let s = Secret::new("hunter2");
    assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
    for bad in ["", "device/x", "device//password", "device/a b/password", "device/x/pin", "foo"] {
        let err = bad.parse::<CredentialName>().unwrap_err();
        assert!(err.to_string().contains("not a credential name"), "{bad}: {err}");
    }
    let (_d, _store, creds) = open().await;
    let err = creds.set(&CredentialName::SyncToken, &Secret::new("")).await.unwrap_err();
    assert!(matches!(err, CredentialError::Empty(_)), "{err}");
}
