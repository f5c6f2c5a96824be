//! Credentials in the OS keyring, and only there.
//!
//! The technician's signing key, the sync token and device credentials (per device, or per site
//! and model: passwords, PSKs, tokens) are stored under service `fieldpatch` (override:
//! `FIELDPATCH_KEYRING_SERVICE`, used to keep separate profiles and test runs apart).
//!
//! Design decisions:
//!
//! * **Backend chosen at run time.** On Linux the Secret Service (gnome-keyring, KeePassXC, ...)
//!   is used when a D-Bus session bus answers; otherwise the kernel keyutils store (the user
//!   keyring: in memory, lost at reboot). `FIELDPATCH_KEYRING=secret-service|keyutils` forces one.
//!   macOS and Windows use their native stores. When nothing works the error says what to install.
//! * **The choice is remembered** in the store. A later automatic choice insists on the same
//!   backend and fails with advice if it is unavailable, instead of silently switching keyrings
//!   (which would lose the technician key and start a new visit log).
//! * **Values never leave [`Secret`].** It zeroizes its memory on drop and its `Debug` prints
//!   `<redacted>`; error messages carry credential *names* only, never values (keyring errors are
//!   re-described, not forwarded, because some carry the raw bytes).
//! * **Names are indexed in the store.** Keyrings cannot always enumerate (keyutils cannot search
//!   by service), so `set`/`delete` keep a names-only index in the local store for `list`.
//! * **The signing key is generated on first use** and kept in the keyring as hex; it is never
//!   written to disk.

use crate::store::{Store, StoreError};
use ed25519_dalek::SigningKey;
use keyring_core::api::CredentialStoreApi;
use serde::Serialize;
use std::fmt;
use std::str::FromStr;
use zeroize::Zeroizing;

/// Keyring service name all Fieldpatch credentials are stored under.
pub const SERVICE: &str = "fieldpatch";
/// Environment variable overriding the keyring service name.
pub const SERVICE_ENV: &str = "FIELDPATCH_KEYRING_SERVICE";
/// Environment variable forcing a backend: `secret-service`, `keyutils` or `auto` (default).
pub const BACKEND_ENV: &str = "FIELDPATCH_KEYRING";
/// Store fact naming the backend this laptop's credentials were last kept in.
const BACKEND_META: &str = "credentials.backend";

/// A secret value. Zeroized on drop; never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(Zeroizing::new(value.into()))
    }
    /// The value. Call only where it is handed to a device or the server.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret::new(s)
    }
}

/// Which credential store holds the values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// The freedesktop Secret Service over D-Bus (gnome-keyring, KeePassXC, KWallet).
    SecretService,
    /// The Linux kernel key retention service (session keyring; lost at logout or reboot).
    Keyutils,
    /// The platform store (macOS Keychain, Windows Credential Manager).
    Platform,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::SecretService => "secret-service",
            Backend::Keyutils => "keyutils",
            Backend::Platform => "platform",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a device credential is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    Password,
    Psk,
    Token,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Password => "password",
            CredentialKind::Psk => "psk",
            CredentialKind::Token => "token",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        match s {
            "password" => Some(CredentialKind::Password),
            "psk" => Some(CredentialKind::Psk),
            "token" => Some(CredentialKind::Token),
            _ => None,
        }
    }
}

/// The name of a credential. Written as `technician-key`, `sync-token`,
/// `device/<device>/<kind>` or `site/<site>/<model>/<kind>` (kind: password, psk, token).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CredentialName {
    /// The technician's ed25519 signing key (hex).
    TechnicianKey,
    /// The token for the inventory server's sync API.
    SyncToken,
    /// A credential of one device.
    Device { device: String, kind: CredentialKind },
    /// A credential shared by every device of one model at one site.
    SiteModel { site: String, model: String, kind: CredentialKind },
    /// A release engineer's bundle-signing key (hex), by the name they give it.
    SigningKey { name: String },
    /// Not a secret: the last head of the technician's visit log the server acknowledged from
    /// one data directory (`dir` names the directory), kept here because the keyring outlives a
    /// wiped data directory. See [`crate::visitlog::continuity`].
    LogHead { dir: String },
}

impl fmt::Display for CredentialName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialName::TechnicianKey => f.write_str("technician-key"),
            CredentialName::SyncToken => f.write_str("sync-token"),
            CredentialName::Device { device, kind } => {
                write!(f, "device/{device}/{}", kind.as_str())
            }
            CredentialName::SiteModel { site, model, kind } => {
                write!(f, "site/{site}/{model}/{}", kind.as_str())
            }
            CredentialName::SigningKey { name } => write!(f, "signing-key/{name}"),
            CredentialName::LogHead { dir } => write!(f, "log-head/{dir}"),
        }
    }
}

impl Serialize for CredentialName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for CredentialName {
    type Err = CredentialError;
    fn from_str(s: &str) -> Result<Self, CredentialError> {
        let bad = || CredentialError::InvalidName(s.chars().take(80).collect());
        let part_ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 128
                && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:@+".contains(c))
        };
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            ["technician-key"] => Ok(CredentialName::TechnicianKey),
            ["sync-token"] => Ok(CredentialName::SyncToken),
            ["device", device, kind] if part_ok(device) => Ok(CredentialName::Device {
                device: device.to_string(),
                kind: CredentialKind::parse(kind).ok_or_else(bad)?,
            }),
            ["site", site, model, kind] if part_ok(site) && part_ok(model) => {
                Ok(CredentialName::SiteModel {
                    site: site.to_string(),
                    model: model.to_string(),
                    kind: CredentialKind::parse(kind).ok_or_else(bad)?,
                })
            }
            ["signing-key", name] if part_ok(name) => {
                Ok(CredentialName::SigningKey { name: name.to_string() })
            }
            ["log-head", dir] if part_ok(dir) => {
                Ok(CredentialName::LogHead { dir: dir.to_string() })
            }
            _ => Err(bad()),
        }
    }
}

/// Errors of the credential store. Never contain a secret value.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "no OS keyring is available: {detail}. Install and unlock a Secret Service provider \
         (Debian/Ubuntu: `apt install gnome-keyring dbus-user-session`, then log in to a desktop \
         session or run inside `dbus-run-session` with `gnome-keyring-daemon --unlock`), or make the \
         kernel keyring usable (`apt install keyutils`; check `keyctl show @s`). \
         Set {BACKEND_ENV}=secret-service or keyutils to choose one."
    )]
    NoBackend { detail: String },
    #[error(
        "the Secret Service is not available: {detail}. Start a D-Bus session with an unlocked \
         keyring (gnome-keyring or KeePassXC; Debian/Ubuntu: `apt install gnome-keyring \
         dbus-user-session`), or set {BACKEND_ENV}=keyutils to use the kernel keyring"
    )]
    SecretServiceUnavailable { detail: String },
    #[error(
        "the kernel keyring (keyutils) is not available: {detail}. Check `keyctl show @s` \
         (Debian/Ubuntu: `apt install keyutils`), or set {BACKEND_ENV}=secret-service"
    )]
    KeyutilsUnavailable { detail: String },
    #[error(
        "this laptop keeps its credentials in the {backend} keyring, which is not available now: \
         {detail}. Start or unlock it, or set {BACKEND_ENV} to use another keyring (credentials, \
         including the technician key, then have to be set up again there)"
    )]
    RememberedBackendUnavailable { backend: Backend, detail: String },
    #[error(
        "{BACKEND_ENV}={0:?} is not a known keyring backend; use secret-service, keyutils or auto"
    )]
    UnknownBackend(String),
    #[error(
        "{0:?} is not a credential name; use technician-key, sync-token, device/<device>/<kind> or \
         site/<site>/<model>/<kind> with kind password, psk or token (letters, digits and -_.:@+)"
    )]
    InvalidName(String),
    #[error(
        "no credential {name} in the {backend} keyring; add it with `fieldpatch credentials set {name}`"
    )]
    NotFound { name: String, backend: Backend },
    #[error(
        "no credential for device {device} ({kind}): set device/{device}/{kind} or site/<site>/<model>/{kind}"
    )]
    NoDeviceCredential { device: String, kind: &'static str },
    #[error("refusing to store an empty secret for {0}")]
    Empty(String),
    #[error("the {backend} keyring failed to {op} {name}: {detail}")]
    Keyring { backend: Backend, op: &'static str, name: String, detail: String },
    #[error(
        "the stored technician key is not a valid ed25519 key; delete it with `fieldpatch credentials delete technician-key` (a new key starts a new visit log)"
    )]
    BadTechnicianKey,
    #[error(
        "the keyring entry {0} is not an ed25519 signing key (store one with `fieldpatch keys generate --keyring NAME`)"
    )]
    BadSigningKey(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("keyring worker failed: {0}")]
    Worker(String),
}

impl CredentialError {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            CredentialError::NoBackend { .. }
            | CredentialError::SecretServiceUnavailable { .. }
            | CredentialError::KeyutilsUnavailable { .. }
            | CredentialError::RememberedBackendUnavailable { .. }
            | CredentialError::UnknownBackend(_) => "keyring_unavailable",
            CredentialError::InvalidName(_) => "credential_name",
            CredentialError::NotFound { .. } | CredentialError::NoDeviceCredential { .. } => {
                "credential_missing"
            }
            CredentialError::Empty(_) => "credential_empty",
            CredentialError::Keyring { .. } | CredentialError::Worker(_) => "keyring",
            CredentialError::BadTechnicianKey | CredentialError::BadSigningKey(_) => "bad_key",
            CredentialError::Store(e) => e.code(),
        }
    }
}

/// A credential the store knows by name (never its value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ts_rs::TS)]
pub struct CredentialListing {
    pub name: String,
    pub backend: String,
    pub updated_at: String,
}

/// The credential store: a keyring backend plus the names-only index in the local store.
#[derive(Debug, Clone)]
pub struct Credentials {
    store: Store,
    backend: Backend,
    service: String,
}

/// Describe a keyring error without ever including stored bytes.
fn describe(e: &keyring_core::Error) -> String {
    match e {
        keyring_core::Error::PlatformFailure(inner) => format!("platform failure: {inner}"),
        keyring_core::Error::NoStorageAccess(inner) => format!("no access to the store: {inner}"),
        keyring_core::Error::NoEntry => "no such entry".into(),
        keyring_core::Error::BadEncoding(_) => "the stored value is not UTF-8".into(),
        keyring_core::Error::TooLong(attr, max) => format!("{attr} is longer than {max}"),
        keyring_core::Error::Invalid(attr, why) => format!("invalid {attr}: {why}"),
        keyring_core::Error::Ambiguous(items) => format!("{} matching entries", items.len()),
        _ => "unexpected keyring error".into(),
    }
}

fn service_name() -> String {
    std::env::var(SERVICE_ENV).ok().filter(|s| !s.is_empty()).unwrap_or_else(|| SERVICE.into())
}

fn entry(
    backend: Backend,
    service: &str,
    user: &str,
) -> Result<keyring_core::Entry, keyring_core::Error> {
    match backend {
        // A connection per operation, like every call of keyring 3 made. Items carry the
        // attributes keyring 3 searched by (`service`, `username`, `target` = `default`) and live in
        // the default collection, so what an earlier version stored is still found.
        #[cfg(target_os = "linux")]
        Backend::SecretService => dbus_secret_service_keyring_store::Store::new()?.build(
            service,
            user,
            Some(&std::collections::HashMap::from([("target", "default")])),
        ),
        #[cfg(target_os = "linux")]
        Backend::Keyutils => Ok(keyring_core::Entry::new_with_credential(std::sync::Arc::new(
            kernel::UserKeyringCredential::new(service, user)?,
        ))),
        _ => platform_entry(service, user),
    }
}

/// The platform store: the login keychain (macOS), the Credential Manager (Windows).
#[cfg(target_os = "macos")]
fn platform_entry(service: &str, user: &str) -> Result<keyring_core::Entry, keyring_core::Error> {
    apple_native_keyring_store::keychain::Store::new()?.build(service, user, None)
}

/// The platform store: the login keychain (macOS), the Credential Manager (Windows).
#[cfg(target_os = "windows")]
fn platform_entry(service: &str, user: &str) -> Result<keyring_core::Entry, keyring_core::Error> {
    windows_native_keyring_store::Store::new()?.build(service, user, None)
}

/// No platform store here: Linux uses the Secret Service or keyutils.
#[cfg(not(any(target_os = "macos", target_os = "windows")))]
fn platform_entry(_: &str, _: &str) -> Result<keyring_core::Entry, keyring_core::Error> {
    Err(keyring_core::Error::NoDefaultStore)
}

/// Check a backend answers: reading a name that does not exist must say "no entry".
fn probe(backend: Backend, service: &str) -> Result<(), String> {
    #[cfg(target_os = "linux")]
    if backend == Backend::SecretService && std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none() {
        return Err("DBUS_SESSION_BUS_ADDRESS is not set (no D-Bus session bus)".into());
    }
    let e = entry(backend, service, "fieldpatch-probe").map_err(|e| describe(&e))?;
    match e.get_password() {
        Ok(_) | Err(keyring_core::Error::NoEntry) => Ok(()),
        Err(e) => Err(describe(&e)),
    }
}

/// Which backend to use: forced, or the first that answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// Secret Service if a session bus answers, else kernel keyutils (Linux); the platform store
    /// elsewhere.
    Auto,
    SecretService,
    Keyutils,
}

impl BackendChoice {
    /// Read `FIELDPATCH_KEYRING` (`auto` when unset).
    pub fn from_env() -> Result<BackendChoice, CredentialError> {
        match std::env::var(BACKEND_ENV).unwrap_or_default().as_str() {
            "" | "auto" => Ok(BackendChoice::Auto),
            "secret-service" => Ok(BackendChoice::SecretService),
            "keyutils" => Ok(BackendChoice::Keyutils),
            other => Err(CredentialError::UnknownBackend(other.into())),
        }
    }
}

/// Pick the backend: the forced one if it answers, else the first that answers.
fn choose_backend(choice: BackendChoice, service: &str) -> Result<Backend, CredentialError> {
    if !cfg!(target_os = "linux") {
        return match choice {
            BackendChoice::Auto => Ok(Backend::Platform),
            BackendChoice::SecretService => {
                Err(CredentialError::UnknownBackend("secret-service".into()))
            }
            BackendChoice::Keyutils => Err(CredentialError::UnknownBackend("keyutils".into())),
        };
    }
    match choice {
        BackendChoice::SecretService => probe(Backend::SecretService, service)
            .map(|()| Backend::SecretService)
            .map_err(|detail| CredentialError::SecretServiceUnavailable { detail }),
        BackendChoice::Keyutils => probe(Backend::Keyutils, service)
            .map(|()| Backend::Keyutils)
            .map_err(|detail| CredentialError::KeyutilsUnavailable { detail }),
        BackendChoice::Auto => match probe(Backend::SecretService, service) {
            Ok(()) => Ok(Backend::SecretService),
            Err(ss) => match probe(Backend::Keyutils, service) {
                Ok(()) => Ok(Backend::Keyutils),
                Err(ku) => Err(CredentialError::NoBackend {
                    detail: format!("Secret Service: {ss}; kernel keyutils: {ku}"),
                }),
            },
        },
    }
}

impl Credentials {
    /// Open the credential store: backend from `FIELDPATCH_KEYRING` (default: the first that
    /// answers), service from `FIELDPATCH_KEYRING_SERVICE` (default `fieldpatch`).
    pub async fn open(store: &Store) -> Result<Credentials, CredentialError> {
        Credentials::open_with(store, BackendChoice::from_env()?, &service_name()).await
    }

    /// Open the credential store with an explicit backend choice and keyring service name.
    pub async fn open_with(
        store: &Store,
        choice: BackendChoice,
        service: &str,
    ) -> Result<Credentials, CredentialError> {
        let service = service.to_string();
        let remembered = store.meta(BACKEND_META).await?;
        let pinned = match (choice, remembered.as_deref()) {
            (BackendChoice::Auto, Some("secret-service")) => Some(Backend::SecretService),
            (BackendChoice::Auto, Some("keyutils")) => Some(Backend::Keyutils),
            _ => None,
        };
        let svc = service.clone();
        let backend = tokio::task::spawn_blocking(move || match pinned {
            Some(backend) => probe(backend, &svc).map(|()| backend).map_err(|detail| {
                CredentialError::RememberedBackendUnavailable { backend, detail }
            }),
            None => choose_backend(choice, &svc),
        })
        .await
        .map_err(|e| CredentialError::Worker(e.to_string()))??;
        if remembered.as_deref() != Some(backend.as_str()) {
            store.set_meta(BACKEND_META, backend.as_str()).await?;
        }
        Ok(Credentials { store: store.clone(), backend, service })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The keyring service name in use.
    pub fn service(&self) -> &str {
        &self.service
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Backend, &str) -> T + Send + 'static,
    ) -> Result<T, CredentialError> {
        let (backend, service) = (self.backend, self.service.clone());
        tokio::task::spawn_blocking(move || f(backend, &service))
            .await
            .map_err(|e| CredentialError::Worker(e.to_string()))
    }

    /// Store a secret under `name` (replacing any previous value) and index the name.
    pub async fn set(&self, name: &CredentialName, secret: &Secret) -> Result<(), CredentialError> {
        let user = name.to_string();
        if secret.is_empty() {
            return Err(CredentialError::Empty(user));
        }
        let value = secret.clone();
        let u = user.clone();
        self.blocking(move |backend, service| {
            let fail = |e: keyring_core::Error| CredentialError::Keyring {
                backend,
                op: "store",
                name: u.clone(),
                detail: describe(&e),
            };
            entry(backend, service, &u).map_err(fail)?.set_password(value.expose()).map_err(fail)
        })
        .await??;
        self.store.index_credential_name(&user, self.backend.as_str()).await?;
        Ok(())
    }

    /// Read the secret stored under `name`.
    pub async fn get(&self, name: &CredentialName) -> Result<Secret, CredentialError> {
        let user = name.to_string();
        self.blocking(move |backend, service| {
            let fail = |e: keyring_core::Error| match e {
                keyring_core::Error::NoEntry => {
                    CredentialError::NotFound { name: user.clone(), backend }
                }
                e => CredentialError::Keyring {
                    backend,
                    op: "read",
                    name: user.clone(),
                    detail: describe(&e),
                },
            };
            let value =
                entry(backend, service, &user).map_err(fail)?.get_password().map_err(fail)?;
            Ok(Secret::new(value))
        })
        .await?
    }

    /// Read a secret if it exists.
    pub async fn get_optional(
        &self,
        name: &CredentialName,
    ) -> Result<Option<Secret>, CredentialError> {
        match self.get(name).await {
            Ok(s) => Ok(Some(s)),
            Err(CredentialError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Delete `name` from the keyring and the index. Returns whether the keyring held it.
    pub async fn delete(&self, name: &CredentialName) -> Result<bool, CredentialError> {
        let user = name.to_string();
        let u = user.clone();
        let existed = self
            .blocking(move |backend, service| {
                let fail = |e: keyring_core::Error| CredentialError::Keyring {
                    backend,
                    op: "delete",
                    name: u.clone(),
                    detail: describe(&e),
                };
                match entry(backend, service, &u).map_err(fail)?.delete_credential() {
                    Ok(()) => Ok(true),
                    Err(keyring_core::Error::NoEntry) => Ok(false),
                    Err(e) => Err(fail(e)),
                }
            })
            .await??;
        let indexed = self.store.unindex_credential_name(&user).await?;
        Ok(existed || indexed)
    }

    /// Names of the credentials set through Fieldpatch on this laptop (never values).
    pub async fn list(&self) -> Result<Vec<CredentialListing>, CredentialError> {
        Ok(self
            .store
            .credential_names()
            .await?
            .into_iter()
            .map(|(name, backend, updated_at)| CredentialListing { name, backend, updated_at })
            .collect())
    }

    /// A device's credential of `kind`: the per-device one if set, else the one for its site and
    /// model.
    pub async fn device_secret(
        &self,
        device: &str,
        site_model: Option<(&str, &str)>,
        kind: CredentialKind,
    ) -> Result<Secret, CredentialError> {
        let own = CredentialName::Device { device: device.into(), kind };
        if let Some(s) = self.get_optional(&own).await? {
            return Ok(s);
        }
        if let Some((site, model)) = site_model {
            let shared = CredentialName::SiteModel { site: site.into(), model: model.into(), kind };
            if let Some(s) = self.get_optional(&shared).await? {
                return Ok(s);
            }
        }
        Err(CredentialError::NoDeviceCredential { device: device.into(), kind: kind.as_str() })
    }

    /// The sync token, if one was provisioned.
    pub async fn sync_token(&self) -> Result<Option<Secret>, CredentialError> {
        self.get_optional(&CredentialName::SyncToken).await
    }

    /// A bundle-signing key kept in the keyring under `signing-key/NAME`.
    pub async fn signing_key(&self, name: &str) -> Result<SigningKey, CredentialError> {
        let name = CredentialName::SigningKey { name: name.to_string() };
        let secret = self.get(&name).await?;
        key_from_hex(&secret).map_err(|_| CredentialError::BadSigningKey(name.to_string()))
    }

    /// Keep a bundle-signing key in the keyring under `signing-key/NAME`.
    pub async fn store_signing_key(
        &self,
        name: &str,
        key: &SigningKey,
    ) -> Result<(), CredentialError> {
        let name = CredentialName::SigningKey { name: name.to_string() };
        self.set(&name, &Secret::new(hex::encode(key.to_bytes()))).await
    }

    /// The technician's signing key, generated and stored in the keyring on first use.
    pub async fn technician_key(&self) -> Result<SigningKey, CredentialError> {
        if let Some(s) = self.get_optional(&CredentialName::TechnicianKey).await? {
            return key_from_hex(&s);
        }
        // Two processes starting at once must not mint two keys: hold the store's write lock
        // while checking again and generating.
        let mut lock =
            self.store.pool().begin_with("BEGIN IMMEDIATE").await.map_err(StoreError::Sql)?;
        sqlx::query("INSERT INTO meta (key, value) VALUES ('credentials.key_lock', '') ON CONFLICT(key) DO NOTHING")
            .execute(&mut *lock)
            .await
            .map_err(StoreError::Sql)?;
        if let Some(s) = self.get_optional(&CredentialName::TechnicianKey).await? {
            lock.rollback().await.map_err(StoreError::Sql)?;
            return key_from_hex(&s);
        }
        let key = SigningKey::generate(&mut rand::rand_core::UnwrapErr(rand::rngs::SysRng));
        let hex_key = Secret::new(hex::encode(key.to_bytes()));
        let user = CredentialName::TechnicianKey.to_string();
        self.blocking(move |backend, service| {
            let fail = |e: keyring_core::Error| CredentialError::Keyring {
                backend,
                op: "store",
                name: user.clone(),
                detail: describe(&e),
            };
            entry(backend, service, &user)
                .map_err(fail)?
                .set_password(hex_key.expose())
                .map_err(fail)
        })
        .await??;
        sqlx::query(
            "INSERT INTO credential_names (name, backend, updated_at) VALUES (?, ?, ?)
             ON CONFLICT(name) DO UPDATE SET backend = excluded.backend, updated_at = excluded.updated_at",
        )
        .bind(CredentialName::TechnicianKey.to_string())
        .bind(self.backend.as_str())
        .bind(self.store.now_text())
        .execute(&mut *lock)
        .await
        .map_err(StoreError::Sql)?;
        lock.commit().await.map_err(StoreError::Sql)?;
        Ok(key)
    }
}

fn key_from_hex(s: &Secret) -> Result<SigningKey, CredentialError> {
    let bytes =
        Zeroizing::new(hex::decode(s.expose()).map_err(|_| CredentialError::BadTechnicianKey)?);
    let arr: [u8; 32] =
        bytes.as_slice().try_into().map_err(|_| CredentialError::BadTechnicianKey)?;
    Ok(SigningKey::from_bytes(&Zeroizing::new(arr)))
}

/// Kernel keyutils in the *user* keyring (`@u`).
///
/// The keyring ecosystem's keyutils store adds keys to the session keyring and links them to the
/// persistent keyring; a process without its own session keyring (a CLI started from a service, a
/// test harness) then gets a fresh anonymous session keyring per process and cannot find what the
/// previous process stored. The user keyring is shared by every process of the user for as long as
/// the user has processes, which is what a CLI and an app on one laptop need. Keys get user
/// permissions (not only possessor permissions) so a process that does not possess `@u` through its
/// session keyring can still read them; other users cannot.
#[cfg(target_os = "linux")]
mod kernel {
    use keyring_core::api::{Credential, CredentialApi};
    use keyring_core::error::{Error, Result};
    use linux_keyutils::{KeyError, KeyPermissionsBuilder, KeyRing, KeyRingIdentifier, Permission};
    use std::sync::Arc;

    #[derive(Debug, Clone)]
    pub(super) struct UserKeyringCredential {
        ring: KeyRing,
        service: String,
        user: String,
        description: String,
    }

    fn platform(e: KeyError) -> Error {
        match e {
            KeyError::KeyDoesNotExist | KeyError::KeyRevoked | KeyError::KeyExpired => {
                Error::NoEntry
            }
            KeyError::AccessDenied | KeyError::PermissionDenied => {
                Error::NoStorageAccess(Box::new(e))
            }
            other => Error::PlatformFailure(Box::new(other)),
        }
    }

    impl UserKeyringCredential {
        pub(super) fn new(service: &str, user: &str) -> Result<Self> {
            let ring = KeyRing::from_special_id(KeyRingIdentifier::User, true).map_err(platform)?;
            Ok(UserKeyringCredential {
                ring,
                service: service.to_string(),
                user: user.to_string(),
                description: format!("{service}:{user}"),
            })
        }
    }

    impl CredentialApi for UserKeyringCredential {
        fn set_secret(&self, secret: &[u8]) -> Result<()> {
            if secret.is_empty() {
                return Err(Error::Invalid("secret".into(), "cannot be empty".into()));
            }
            let key = self.ring.add_key(&self.description, secret).map_err(platform)?;
            let perms = KeyPermissionsBuilder::builder()
                .posessor(Permission::ALL)
                .user(
                    Permission::VIEW
                        | Permission::READ
                        | Permission::WRITE
                        | Permission::SEARCH
                        | Permission::SETATTR,
                )
                .build();
            key.set_perms(perms).map_err(platform)
        }

        fn get_secret(&self) -> Result<Vec<u8>> {
            let key = self.ring.search(&self.description).map_err(platform)?;
            key.read_to_vec().map_err(platform)
        }

        fn delete_credential(&self) -> Result<()> {
            let key = self.ring.search(&self.description).map_err(platform)?;
            key.invalidate().map_err(platform)?;
            // Invalidated keys are garbage-collected asynchronously; unlinking hides it at once.
            let _ = self.ring.unlink_key(key);
            Ok(())
        }

        /// This credential names one key by its description; it is its own wrapper.
        fn get_credential(&self) -> Result<Option<Arc<Credential>>> {
            self.ring.search(&self.description).map_err(platform)?;
            Ok(None)
        }

        fn get_specifiers(&self) -> Option<(String, String)> {
            Some((self.service.clone(), self.user.clone()))
        }

        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }
}
