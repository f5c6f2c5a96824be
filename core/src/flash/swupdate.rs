//! Embedded Linux gateways updated by SWUpdate's web server, as flash targets.
//!
//! The payload is a `.swu` from a verified bundle. Before a byte is sent it is checked again on
//! the laptop ([`crate::image::swu::verify_bytes`]: archive, a signed `sw-description`, the
//! device's hardware revision from its record in the compatibility list, every artifact's
//! sha256); the gateway then checks the CMS signature with its own vendor key and every artifact's
//! sha256 before it reports success on its WebSocket.
//!
//! The password is the device's keyring credential (its record's `credential`, else
//! `device/<id>/password`), read when the target is opened ([`KeyringConnector`]) and held only
//! as [`DigestCredentials`] for this target; a missing one is a per-device error naming the
//! credential. It never reaches an event, an error or the store.
//!
//! What Fieldpatch cannot do here is said, not claimed ([`FlashTarget::no_rollback`]): there is
//! no trial boot and no revert over this interface, whatever A/B fallback the gateway has is its
//! own, and the daemon cannot say what the device runs. "Confirmed" means the daemon installed
//! exactly the verified `.swu` (the hashes it checked are the ones Fieldpatch verified, and the
//! upload hashed the bytes again as they left) and answers afterwards.

use super::{DeviceState, FlashTarget, HashCheck, TargetError, UploadReport};
use crate::credentials::{CredentialName, Credentials};
use crate::image::swu::{SwuTarget, verify_bytes};
use crate::plan::{DeviceAddress, DeviceRecord, SWUPDATE_DEFAULT_USER};
use crate::progress::Progress;
use crate::session::Connector;
use crate::session::lock::{LockError, RunnerLock};
use async_trait::async_trait;
use fieldpatch_drivers::dfu::{DfuDescription, DfuDeviceInfo, DfuseOptions, DownloadReport};
use fieldpatch_drivers::swupdate::{DigestCredentials, SwupdateClient, Timeouts};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// The keyring credential an SWUpdate gateway without a `credential` in its record uses.
pub fn default_credential(device: &str) -> String {
    format!("device/{device}/password")
}

/// The credential `device` needs: its record's, else [`default_credential`].
pub fn credential_name(device: &DeviceRecord) -> String {
    device.credential.clone().unwrap_or_else(|| default_credential(&device.id))
}

/// One SWUpdate gateway.
#[derive(Debug)]
pub struct SwupdateTarget {
    client: SwupdateClient,
    credentials: Option<DigestCredentials>,
    /// What the image must fit (the device's hardware revision), when the record knows it.
    fits: Option<SwuTarget>,
    /// SHA-256 of the `.swu` this target installed and the daemon accepted.
    installed: Option<Vec<u8>>,
    /// The device's own health URL (its record's `health_url`), which must answer 2xx after an
    /// install.
    health_url: Option<String>,
    /// What the restart request after the install did (for the health check's record).
    restart: Option<String>,
}

impl SwupdateTarget {
    /// A target for the daemon at `url`, with the credentials for its digest authentication.
    pub fn new(
        url: &str,
        credentials: Option<DigestCredentials>,
        fits: Option<SwuTarget>,
        timeouts: Timeouts,
    ) -> Result<SwupdateTarget, TargetError> {
        let client = SwupdateClient::new(url, timeouts)?;
        Ok(SwupdateTarget {
            client,
            credentials,
            fits,
            installed: None,
            health_url: None,
            restart: None,
        })
    }

    /// Require `url` (a health endpoint of the device's own) to answer HTTP 2xx after an
    /// install before the device counts as healthy.
    pub fn with_health_url(mut self, url: Option<String>) -> SwupdateTarget {
        self.health_url = url;
        self
    }

    /// Open `device` (an SWUpdate address) with its password from `credentials`; a missing
    /// credential is refused here, before anything is sent.
    pub async fn open(
        device: &DeviceRecord,
        credentials: Option<&Credentials>,
        timeouts: Timeouts,
    ) -> Result<SwupdateTarget, TargetError> {
        let DeviceAddress::Swupdate { url, user } = &device.address else {
            return Err(TargetError::Unsupported("SWUpdate at a non-SWUpdate address"));
        };
        let name = credential_name(device);
        let refuse = |reason: String| TargetError::Open {
            address: device.address.to_string(),
            reason,
            transient: false,
        };
        let Some(keyring) = credentials else {
            return Err(refuse(format!("credential `{name}` is needed, but no keyring is open")));
        };
        let parsed: CredentialName = name.parse().map_err(|_| {
            refuse(format!("`{name}` is not a credential name: fix the device's record"))
        })?;
        let secret = keyring.get_optional(&parsed).await.map_err(|e| refuse(e.to_string()))?;
        let Some(secret) = secret else {
            return Err(refuse(format!(
                "credential `{name}` is not in this laptop's keyring: sync, or add it with `fieldpatch credentials set`"
            )));
        };
        let user = user.as_deref().unwrap_or(SWUPDATE_DEFAULT_USER);
        let creds = DigestCredentials::new(user, secret.expose());
        drop(secret);
        let fits = device
            .identity
            .hardware_revision
            .clone()
            .map(|hardware_revision| SwuTarget { board: None, hardware_revision });
        Ok(SwupdateTarget::new(url, Some(creds), fits, timeouts)?
            .with_health_url(device.health_url.clone()))
    }
}

#[async_trait]
impl FlashTarget for SwupdateTarget {
    fn describe(&self) -> String {
        format!("SWUpdate gateway at {}", self.client.url())
    }

    async fn state(&mut self) -> Result<DeviceState, TargetError> {
        // The daemon answers (with these credentials); it cannot say what the device runs, only
        // what this target installed through it.
        self.client.authenticate(self.credentials.as_ref()).await?;
        Ok(DeviceState {
            running_version: None,
            running_hash: self.installed.clone(),
            confirmed: true,
            pending_hash: None,
        })
    }

    async fn upload(
        &mut self,
        image: &[u8],
        progress: &dyn Progress,
    ) -> Result<UploadReport, TargetError> {
        // Checked again on the laptop, against this device, before the first byte leaves.
        let swu = verify_bytes(image, None, self.fits.as_ref())
            .map_err(|e| TargetError::reported(format!("the .swu does not fit: {e}")))?;
        // One copy of the image for the upload's lifetime; the driver sends slices of it.
        let bytes = image.to_vec();
        let report = self
            .client
            .install_bytes("update.swu", bytes, self.credentials.as_ref(), progress)
            .await?;
        let verified: [u8; 32] = Sha256::digest(image).into();
        if report.sha256 != verified || report.sha256 != swu.file_sha256 {
            return Err(TargetError::reported(format!(
                "the bytes sent hash to {} but the verified image is {}",
                hex::encode(report.sha256),
                hex::encode(verified)
            )));
        }
        for m in &report.messages {
            progress.note(m);
        }
        // The daemon reported success after checking every artifact against the sha256 in the
        // sw-description that was verified here: it holds exactly these bytes' contents.
        self.installed = Some(report.sha256.to_vec());
        // Ask the gateway to restart into the new software (SWUpdate's `/restart`, which runs the
        // device's post-update command), as its web interface does after an install. A gateway
        // whose web server offers none reboots by its own policy; that is said, not hidden.
        progress.phase("restart");
        // The install has succeeded whatever this answers: a refused or failed request is
        // recorded with the health check, which then decides.
        self.restart = Some(match self.client.restart(self.credentials.as_ref()).await {
            Ok(()) => "restart requested".to_string(),
            Err(e @ fieldpatch_drivers::swupdate::SwupdateError::Protocol { .. }) => {
                format!("no restart requested ({e}): the gateway restarts by its own policy")
            }
            Err(e) => format!("the restart request failed ({e})"),
        });
        Ok(UploadReport {
            device_hash: Some(report.sha256.to_vec()),
            check: HashCheck::DeviceReported,
        })
    }

    async fn reconnect(&mut self, timeout: Duration) -> Result<DeviceState, TargetError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let state = loop {
            match self.state().await {
                Ok(s) => break s,
                Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) if e.is_retryable() => return Err(TargetError::Timeout(timeout)),
                Err(e) => return Err(e),
            }
        };
        // The device's own health endpoint, until it answers 2xx or the time is up (a gateway
        // that restarts into the new software takes a while to serve again).
        if let Some(url) = self.health_url.clone() {
            self.client.await_healthy(&url, deadline, Duration::from_millis(200)).await?;
        }
        Ok(state)
    }

    fn health_detail(&self) -> Option<String> {
        Some(match &self.health_url {
            Some(url) => format!(
                "the SWUpdate daemon installed the verified .swu ({}) and answers again, and the device's health check {url} answered 2xx",
                self.restart.as_deref().unwrap_or("no restart requested")
            ),
            None => format!(
                "the SWUpdate daemon installed the verified .swu ({}) and answers again (no health URL in the device's record)",
                self.restart.as_deref().unwrap_or("no restart requested")
            ),
        })
    }

    fn no_rollback(&self) -> Option<String> {
        Some(format!(
            "{}: SWUpdate offers no trial boot or revert to Fieldpatch; any A/B fallback is the gateway's own and is not claimed. The daemon checks the CMS signature and every artifact's sha256 before it reports success; it cannot report what the device runs, so the health check is that it answers after the install{}",
            self.describe(),
            match &self.health_url {
                Some(url) => format!(" and that the device's health URL {url} answers 2xx"),
                None => String::new(),
            }
        ))
    }
}

/// A connector that opens SWUpdate gateways with their password from the OS keyring, read when
/// the device is opened, and hands every other device and job to `inner`.
#[derive(Clone)]
pub struct KeyringConnector {
    inner: Arc<dyn Connector>,
    credentials: Option<Credentials>,
    timeouts: Timeouts,
}

impl std::fmt::Debug for KeyringConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyringConnector")
            .field("keyring", &self.credentials.as_ref().map(|c| c.backend()))
            .finish_non_exhaustive()
    }
}

impl KeyringConnector {
    pub fn new(inner: Arc<dyn Connector>, credentials: Option<Credentials>) -> KeyringConnector {
        KeyringConnector { inner, credentials, timeouts: Timeouts::default() }
    }
}

#[async_trait]
impl Connector for KeyringConnector {
    async fn open(&self, device: &DeviceRecord) -> Result<Box<dyn FlashTarget>, TargetError> {
        if matches!(device.address, DeviceAddress::Swupdate { .. }) {
            let target =
                SwupdateTarget::open(device, self.credentials.as_ref(), self.timeouts).await?;
            return Ok(Box::new(target));
        }
        self.inner.open(device).await
    }

    fn hold(&self, device: &DeviceRecord) -> Result<Option<RunnerLock>, LockError> {
        self.inner.hold(device)
    }

    fn dfu_devices(&self) -> Result<Vec<DfuDeviceInfo>, TargetError> {
        self.inner.dfu_devices()
    }

    fn dfu_describe(&self, device: &DfuDeviceInfo) -> Result<DfuDescription, TargetError> {
        self.inner.dfu_describe(device)
    }

    fn dfu_download(
        &self,
        location: &str,
        file: &crate::image::dfu_file::DfuFile,
        options: DfuseOptions,
        progress: &dyn Progress,
    ) -> Result<DownloadReport, TargetError> {
        self.inner.dfu_download(location, file, options, progress)
    }
}
