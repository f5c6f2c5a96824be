//! The flash pipeline for one device.
//!
//! ```text
//! verify again -> state -> upload (progress, checkpoints) -> hash check -> test boot
//!     -> reconnect + health check -> confirm            (healthy)
//!                                 -> revert + reconnect  (unhealthy or not back in time)
//! ```
//!
//! Design decisions:
//!
//! * **Verified bytes are the sent bytes.** The pipeline takes a [`VerifiedImage`] (bytes held in
//!   memory after bundle verification), hashes them again before the first byte is sent, and never
//!   confirms an image whose device-reported hash (or readback hash) differs from the verified one.
//! * **Every state change is bracketed by visit-log events**: `flash_started` before the upload,
//!   `image_uploaded` after; `test_boot_requested` before the reset, `health_check` after;
//!   `confirmed` or `rolled_back` after the final change. A failure at any stage is a `failed` event
//!   naming the stage.
//! * **Devices are behind a trait.** [`FlashTarget`] is what a driver adapter implements (SMP over
//!   serial or UDP, USB DFU). Optional capabilities (test boot) are default methods, so a device
//!   without them still flashes, and the log says what could not be checked.
//! * **Resumable.** A device that already runs the target image confirmed is left alone; one that
//!   runs it in test mode goes straight to the health check. Uploads resume where the driver can.

pub mod connect;
pub mod dfu;
pub mod esp;
pub mod smp;
pub mod swupdate;

use crate::model::Version;
use crate::progress::{Progress, TransferProgress};
use crate::visitlog::EventKind;
use async_trait::async_trait;
use fieldpatch_drivers::swupdate::SwupdateError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a device reports about itself between steps.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeviceState {
    /// Version of the running image.
    pub running_version: Option<Version>,
    /// Hash of the running image as the device reports it (MCUboot: the SHA-256 TLV).
    pub running_hash: Option<Vec<u8>>,
    /// Whether the running image is confirmed (will still run after the next reset).
    pub confirmed: bool,
    /// The hash of an image waiting for its test boot at the next reset (MCUboot's pending
    /// secondary slot), if the device has one.
    pub pending_hash: Option<Vec<u8>>,
}

/// How the uploaded image was checked on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashCheck {
    /// The device reported the hash of the image it received.
    DeviceReported,
    /// The image was read back and hashed.
    Readback,
    /// The device only reported a good status; the bytes were not checked.
    StatusOnly,
}

/// What an upload left on the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadReport {
    /// The hash the device reported, or of the readback; `None` for [`HashCheck::StatusOnly`].
    pub device_hash: Option<Vec<u8>>,
    pub check: HashCheck,
}

/// A device operation failed. Driver errors keep their type, so the pipeline can tell a link that
/// dropped (try again) from a device that refused (stop).
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// An SMP (MCUmgr) device or its link.
    #[error(transparent)]
    Smp(#[from] fieldpatch_drivers::smp::SmpError),
    /// A USB DFU device.
    #[error(transparent)]
    Dfu(#[from] fieldpatch_drivers::dfu::DfuError),
    /// An SWUpdate gateway's web server (no error of it carries a credential).
    #[error(transparent)]
    Swupdate(#[from] fieldpatch_drivers::swupdate::SwupdateError),
    /// An ESP ROM serial bootloader or its link.
    #[error(transparent)]
    Esp(#[from] fieldpatch_drivers::esp::EspError),
    /// A DFU file that does not fit the device it was meant for.
    #[error(transparent)]
    DfuFile(#[from] crate::image::dfu_file::DfuFileError),
    /// The device could not be opened at its address.
    #[error("{address}: {reason}")]
    Open { address: String, reason: String, transient: bool },
    /// A USB address that names no attached device, or several.
    #[error(transparent)]
    UsbSelect(#[from] connect::UsbSelectError),
    /// The device answered, but what it reported breaks a rule of the pipeline (for example it
    /// lists no running image); `transient` says whether asking again may help.
    #[error("{0}")]
    Reported(String, bool),
    #[error("device did not answer within {0:?}")]
    Timeout(Duration),
    /// The device came back after the reset, and what it showed fails the health check;
    /// `device_rollback`: where the device's own bootloader went back to by itself, if it did
    /// (not Fieldpatch's doing).
    #[error("{reason}")]
    Unhealthy { reason: String, device_rollback: Option<String> },
    #[error("the device does not support {0}")]
    Unsupported(&'static str),
}

impl TargetError {
    /// What the device reported that breaks a rule; asking again will not change it.
    pub fn reported(message: impl Into<String>) -> Self {
        TargetError::Reported(message.into(), false)
    }

    /// What the device reported now, which may be different on the next try.
    pub fn reported_transient(message: impl Into<String>) -> Self {
        TargetError::Reported(message.into(), true)
    }

    /// Whether trying the same operation again may succeed: the driver decides for its errors.
    pub fn is_retryable(&self) -> bool {
        match self {
            TargetError::Smp(e) => e.is_transient(),
            TargetError::Dfu(e) => e.is_transient(),
            TargetError::Swupdate(e) => e.is_transient(),
            TargetError::Esp(e) => e.is_transient(),
            TargetError::DfuFile(_) | TargetError::Unsupported(_) => false,
            TargetError::Open { transient, .. } => *transient,
            TargetError::UsbSelect(e) => e.is_transient(),
            TargetError::Reported(_, transient) => *transient,
            TargetError::Timeout(_) => true,
            TargetError::Unhealthy { .. } => false,
        }
    }

    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            TargetError::Smp(e) => e.code(),
            TargetError::Dfu(e) => e.code(),
            TargetError::Swupdate(e) => e.code(),
            TargetError::Esp(e) => e.code(),
            TargetError::DfuFile(_) => "dfu_file",
            TargetError::Open { .. } => "device_unreachable",
            TargetError::UsbSelect(e) => e.code(),
            TargetError::Reported(..) => "device_state",
            TargetError::Timeout(_) => "device_timeout",
            TargetError::Unhealthy { .. } => "device_unhealthy",
            TargetError::Unsupported(_) => "unsupported",
        }
    }
}

/// A device that can be flashed. Implemented by driver adapters; optional capabilities default to
/// "unsupported".
#[async_trait]
pub trait FlashTarget: Send {
    /// Short human description (transport and address).
    fn describe(&self) -> String;
    /// Read the device's current state.
    async fn state(&mut self) -> Result<DeviceState, TargetError>;
    /// Send the image (resuming where the device allows) and report how it was checked.
    async fn upload(
        &mut self,
        image: &[u8],
        progress: &dyn Progress,
    ) -> Result<UploadReport, TargetError>;
    /// Whether the device can boot a new image once on trial ([`FlashTarget::test_boot`]).
    fn supports_test_boot(&self) -> bool {
        false
    }
    /// Mark the uploaded image for a single trial boot and reset the device.
    async fn test_boot(&mut self, _image_hash: &[u8]) -> Result<(), TargetError> {
        Err(TargetError::Unsupported("test boot"))
    }
    /// Make the running image permanent.
    async fn confirm(&mut self, _image_hash: &[u8]) -> Result<(), TargetError> {
        Err(TargetError::Unsupported("confirm"))
    }
    /// Go back to the previous image (for MCUboot: reset without confirming).
    async fn revert(&mut self) -> Result<(), TargetError> {
        Err(TargetError::Unsupported("revert"))
    }
    /// Wait for the device to come back after a reset and read its state.
    async fn reconnect(&mut self, timeout: Duration) -> Result<DeviceState, TargetError>;
    /// Why this device, as it is now, can neither test-boot nor roll back a new image (recorded
    /// in the visit log before the upload); `None` when nothing needs saying.
    /// What this target's health check established, when it checks more (or other) than the
    /// device reporting the new image: recorded with the passed health check.
    fn health_detail(&self) -> Option<String> {
        None
    }

    fn no_rollback(&self) -> Option<String> {
        None
    }
    /// What answered when the state was last read ([`FlashTarget::state`]), for targets that
    /// can tell (MCUboot: the application or serial recovery); `None` otherwise.
    fn device_mode(&self) -> Option<crate::model::DeviceMode> {
        None
    }
    /// Hand the device back as it was found after a look that sends nothing (identification):
    /// a device that opening put into its ROM loader is reset into its application.
    async fn release(&mut self) -> Result<(), TargetError> {
        Ok(())
    }

    /// Whether the last [`FlashTarget::reconnect`] reset the device out of its bootloader into
    /// the image just written and checked (MCUboot serial recovery): silence after that means
    /// only that the application does not answer, so its boot cannot be checked.
    fn reset_into_upload(&self) -> bool {
        false
    }
    /// After [`FlashTarget::reset_into_upload`], what was done and why the boot cannot be
    /// checked, in the target's own words (recorded with the unverified outcome); `None`: an
    /// MCUboot bootloader booted the slot and the application does not answer SMP.
    fn unchecked_boot(&self) -> Option<String> {
        None
    }
    /// Take what a verified image says about where it goes on the device (ESP: its flash offset,
    /// the other payloads of its bundle and their layout, checked against the device) before the
    /// upload. An error refuses the image before anything is sent. Targets that place an image
    /// themselves ignore it.
    fn place(&mut self, _image: &VerifiedImage) -> Result<(), TargetError> {
        Ok(())
    }
}

/// Bytes that passed bundle verification, with what the device must report for them.
#[derive(Debug, Clone)]
pub struct VerifiedImage {
    pub bundle_id: Option<String>,
    pub from: Option<Version>,
    pub to: Version,
    pub bytes: Arc<[u8]>,
    /// SHA-256 of `bytes`, as verified against the signed manifest.
    pub sha256: [u8; 32],
    /// The hash the device reports for this image once received (MCUboot: the image's SHA-256
    /// TLV; readback devices: `sha256`).
    pub device_hash: Vec<u8>,
    /// Where the bytes go and what is written with them, for devices written at flash offsets
    /// (ESP ROM loader); `None` for devices that place an image themselves.
    pub esp: Option<Arc<esp::EspPlacement>>,
}

/// A place visit-log events go (the local store's appender).
#[async_trait]
pub trait EventSink: Send + Sync {
    async fn record(&self, device: &str, kind: EventKind) -> Result<(), SinkError>;
}

/// The visit log could not be written: nothing further may be done to the device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot write the visit log ({0}); the device was left as it is")]
pub struct SinkError(pub String);

/// A custom health check run after the test boot (beyond "answers and runs the new image").
pub type HealthFn = Arc<dyn Fn(&DeviceState) -> Result<(), String> + Send + Sync>;

/// Tuning for one flash.
#[derive(Clone)]
pub struct FlashOptions {
    /// How long a device may take to come back after a reset.
    pub reconnect_timeout: Duration,
    /// Upload attempts after the first, for retryable errors.
    pub upload_retries: u32,
    /// Optional custom health check.
    pub health: Option<HealthFn>,
}

impl std::fmt::Debug for FlashOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlashOptions")
            .field("reconnect_timeout", &self.reconnect_timeout)
            .field("upload_retries", &self.upload_retries)
            .field("health", &self.health.as_ref().map(|_| "custom"))
            .finish()
    }
}

impl Default for FlashOptions {
    fn default() -> Self {
        Self { reconnect_timeout: Duration::from_secs(30), upload_retries: 3, health: None }
    }
}

/// Where a flash stopped. Serialized as the words the visit log has always used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FlashStage {
    /// The bytes about to be sent did not match the verified manifest.
    #[serde(rename = "verify")]
    Verify,
    /// The device could not be opened.
    #[serde(rename = "open")]
    Open,
    /// The device's state could not be read before the upload.
    #[serde(rename = "identify")]
    Identify,
    #[serde(rename = "upload")]
    Upload,
    /// The device reported (or read back) another hash than the verified one.
    #[serde(rename = "hash check")]
    HashCheck,
    #[serde(rename = "test boot")]
    TestBoot,
    #[serde(rename = "reconnect")]
    Reconnect,
    #[serde(rename = "health check")]
    HealthCheck,
    #[serde(rename = "confirm")]
    Confirm,
    #[serde(rename = "roll back")]
    RollBack,
    /// The canary did not stay healthy through its soak.
    #[serde(rename = "soak")]
    Soak,
}

impl FlashStage {
    /// The stage as the visit log names it.
    pub fn as_str(self) -> &'static str {
        match self {
            FlashStage::Verify => "verify",
            FlashStage::Open => "open",
            FlashStage::Identify => "identify",
            FlashStage::Upload => "upload",
            FlashStage::HashCheck => "hash check",
            FlashStage::TestBoot => "test boot",
            FlashStage::Reconnect => "reconnect",
            FlashStage::HealthCheck => "health check",
            FlashStage::Confirm => "confirm",
            FlashStage::RollBack => "roll back",
            FlashStage::Soak => "soak",
        }
    }
}

impl std::fmt::Display for FlashStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a flash ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum FlashOutcome {
    /// The new image runs and is confirmed.
    Confirmed { version: Version },
    /// The device already ran the target image, confirmed; nothing was sent.
    AlreadyDone { version: Version },
    /// The new image was not healthy; the device went back to its previous image.
    RolledBack { reason: String },
    /// The device accepted the image and answers, but it can neither report nor read back what
    /// it holds (a status-only DFU device): recorded as unverified, never as confirmed.
    Unverified { version: Version },
    /// The flash stopped at `stage`; see `reason`. The device runs its previous image unless the
    /// reason says otherwise.
    Failed { stage: FlashStage, reason: String },
}

impl FlashOutcome {
    pub fn is_success(&self) -> bool {
        matches!(self, FlashOutcome::Confirmed { .. } | FlashOutcome::AlreadyDone { .. })
    }
}

/// Forwards progress and turns quarter marks into checkpoint events.
struct Checkpoints<'a> {
    inner: &'a dyn Progress,
    next_quarter: Mutex<u8>,
    tx: tokio::sync::mpsc::UnboundedSender<TransferProgress>,
}

impl Progress for Checkpoints<'_> {
    fn phase(&self, name: &str) {
        self.inner.phase(name)
    }
    fn transfer(&self, p: TransferProgress) {
        self.inner.transfer(p);
        // Checkpoints at 25 %, 50 % and 75 %; the end is the `image_uploaded` event.
        let mut next = self.next_quarter.lock().unwrap_or_else(|e| e.into_inner());
        while *next < 4 && p.fraction() >= f64::from(*next) / 4.0 {
            let _ = self.tx.send(p);
            *next += 1;
        }
    }
    fn note(&self, message: &str) {
        self.inner.note(message)
    }
}

fn hex(b: &[u8]) -> String {
    hex::encode(b)
}

/// Flash one verified image onto one device. Returns how it ended; `Err` only when the visit log
/// cannot be written (and then nothing more is done to the device).
pub async fn flash(
    device_id: &str,
    target: &mut dyn FlashTarget,
    image: &VerifiedImage,
    sink: &dyn EventSink,
    progress: &dyn Progress,
    opts: &FlashOptions,
) -> Result<FlashOutcome, SinkError> {
    let rec = |kind: EventKind| sink.record(device_id, kind);
    let failed = |stage: FlashStage, reason: String| async move {
        rec(EventKind::Failed { stage: stage.as_str().to_string(), reason: reason.clone() })
            .await?;
        Ok::<_, SinkError>(FlashOutcome::Failed { stage, reason })
    };
    let sha_hex = hex(&image.sha256);

    // 1. The bytes about to be sent are the bytes that were verified.
    let actual: [u8; 32] = Sha256::digest(&image.bytes).into();
    if actual != image.sha256 {
        return failed(
            FlashStage::Verify,
            format!(
                "image bytes hash to {} but the verified manifest says {sha_hex}; nothing was sent",
                hex(&actual)
            ),
        )
        .await;
    }

    // 2. Where is the device now?
    progress.phase("identify");
    let before = match target.state().await {
        Ok(s) => s,
        Err(e) => return failed(FlashStage::Identify, format!("{}: {e}", target.describe())).await,
    };
    let runs_target = before.running_hash.as_deref() == Some(image.device_hash.as_slice());
    if runs_target && before.confirmed {
        rec(EventKind::Note {
            text: format!(
                "already runs {} (image {}), confirmed; nothing sent",
                image.to,
                hex(&image.device_hash)
            ),
        })
        .await?;
        // The outcome, as for a flash that ends here: an earlier attempt may have ended in
        // `failed` (an answer lost after the device had confirmed), and the log's last word
        // on the device must be what it runs.
        rec(EventKind::Confirmed {
            version: Some(image.to.to_string()),
            image_sha256: sha_hex.clone(),
        })
        .await?;
        return Ok(FlashOutcome::AlreadyDone { version: image.to });
    }

    // An earlier attempt's test-boot request reached the device but its answer did not come
    // back: the verified image waits for its test boot, and its slot takes no new upload.
    let test_pending =
        !runs_target && before.pending_hash.as_deref() == Some(image.device_hash.as_slice());
    if test_pending {
        rec(EventKind::Note {
            text: format!(
                "the device already holds image {} ({}) for a test boot (an earlier request's answer was lost); booting it",
                hex(&image.device_hash),
                image.to
            ),
        })
        .await?;
        rec(EventKind::TestBootRequested { image_sha256: hex(&image.device_hash) }).await?;
        progress.phase("test boot");
        if let Err(e) = target.test_boot(&image.device_hash).await {
            return failed(FlashStage::TestBoot, e.to_string()).await;
        }
    } else if !runs_target {
        // 3. Upload, with checkpoints in the log.
        rec(EventKind::FlashStarted {
            bundle_id: image.bundle_id.clone(),
            from_version: before.running_version.map(|v| v.to_string()),
            to_version: Some(image.to.to_string()),
            image_sha256: sha_hex.clone(),
            bytes: image.bytes.len() as u64,
        })
        .await?;
        if let Err(e) = target.place(image) {
            return failed(FlashStage::Verify, format!("{e}; nothing was sent")).await;
        }
        if let Some(why) = target.no_rollback() {
            rec(EventKind::Note { text: why }).await?;
        }
        progress.phase("upload");
        let mut attempt = 0;
        let report = loop {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let tracker = Checkpoints { inner: progress, next_quarter: Mutex::new(1), tx };
            let upload = async {
                let r = target.upload(&image.bytes, &tracker).await;
                drop(tracker);
                r
            };
            let record = async {
                while let Some(p) = rx.recv().await {
                    rec(EventKind::ProgressCheckpoint { bytes_done: p.done, bytes_total: p.total })
                        .await?;
                }
                Ok::<_, SinkError>(())
            };
            let (result, recorded) = tokio::join!(upload, record);
            recorded?;
            match result {
                Ok(r) => break r,
                Err(e) if e.is_retryable() && attempt < opts.upload_retries => {
                    attempt += 1;
                    progress.note(&format!(
                        "upload interrupted ({e}); resuming, attempt {}",
                        attempt + 1
                    ));
                    rec(EventKind::Note { text: format!("upload interrupted: {e}; resuming") })
                        .await?;
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                Err(e) => return failed(FlashStage::Upload, e.to_string()).await,
            }
        };
        rec(EventKind::ImageUploaded {
            image_sha256: sha_hex.clone(),
            device_reported_hash: report.device_hash.as_deref().map(hex),
        })
        .await?;

        // 4. The device has what was verified.
        match (report.check, &report.device_hash) {
            (HashCheck::StatusOnly, _) => {
                rec(EventKind::Note {
                    text:
                        "device cannot report or read back the image: only its status was checked"
                            .into(),
                })
                .await?;
            }
            (_, Some(h)) if *h == image.device_hash => {}
            (_, got) => {
                return failed(
                    FlashStage::HashCheck,
                    format!(
                        "device reports image hash {} but the verified image has {}; the image was not activated",
                        got.as_deref().map(hex).unwrap_or_else(|| "nothing".into()),
                        hex(&image.device_hash)
                    ),
                )
                .await;
            }
        }

        if !target.supports_test_boot() {
            // DFU-style devices manifest the image themselves; check it came back as expected.
            progress.phase("reconnect");
            let after = match target.reconnect(opts.reconnect_timeout).await {
                Ok(s) => s,
                // The device showed itself unhealthy; where its own bootloader went back to the
                // previous image, that is its rollback, recorded as such.
                Err(TargetError::Unhealthy { reason, device_rollback }) => {
                    rec(EventKind::HealthCheck { passed: false, detail: reason.clone() }).await?;
                    return match device_rollback {
                        Some(back) => {
                            let reason = format!("{reason}; {back}");
                            rec(EventKind::RolledBack { reason: reason.clone() }).await?;
                            Ok(FlashOutcome::RolledBack { reason })
                        }
                        None => failed(FlashStage::HealthCheck, reason).await,
                    };
                }
                // The bootloader listed the verified image and booted it; the application does
                // not speak SMP, so there is nothing to health-check: say so, claim nothing.
                Err(e) if target.reset_into_upload() => {
                    let what = target.unchecked_boot().unwrap_or_else(|| {
                        "written to the slot the bootloader boots, its hash checked, and the device reset into it; the application does not answer SMP".into()
                    });
                    rec(EventKind::Note {
                        text: format!(
                            "image {sha_hex} ({}) {what} ({e}), so whether it booted cannot be checked: booted, not checkable; unverified, not confirmed",
                            image.to
                        ),
                    })
                    .await?;
                    return Ok(FlashOutcome::Unverified { version: image.to });
                }
                Err(e @ TargetError::Swupdate(SwupdateError::Unhealthy { .. })) => {
                    let why = e.to_string();
                    rec(EventKind::HealthCheck { passed: false, detail: why.clone() }).await?;
                    return failed(
                        FlashStage::HealthCheck,
                        format!("{why}; this device cannot be rolled back by Fieldpatch: check it on site, or reflash the previous image"),
                    )
                    .await;
                }
                Err(e) => return failed(FlashStage::Reconnect, e.to_string()).await,
            };
            if report.check == HashCheck::StatusOnly {
                let detail = "device answers; it cannot report or read back its image".to_string();
                rec(EventKind::HealthCheck { passed: true, detail }).await?;
                rec(EventKind::Note {
                    text: format!(
                        "image {sha_hex} ({}) written and accepted by the device, which cannot report or read it back: unverified, not confirmed",
                        image.to
                    ),
                })
                .await?;
                return Ok(FlashOutcome::Unverified { version: image.to });
            }
            return match health(&after, image, opts) {
                Ok(()) => {
                    let detail = target.health_detail().unwrap_or_else(|| health_detail(&after));
                    rec(EventKind::HealthCheck { passed: true, detail }).await?;
                    rec(EventKind::Confirmed {
                        version: Some(image.to.to_string()),
                        image_sha256: sha_hex,
                    })
                    .await?;
                    Ok(FlashOutcome::Confirmed { version: image.to })
                }
                Err(why) => {
                    rec(EventKind::HealthCheck { passed: false, detail: why.clone() }).await?;
                    failed(FlashStage::HealthCheck, format!("{why}; this device cannot roll back by itself: reflash the previous image")).await
                }
            };
        }

        // 5. Trial boot.
        rec(EventKind::TestBootRequested { image_sha256: hex(&image.device_hash) }).await?;
        progress.phase("test boot");
        if let Err(e) = target.test_boot(&image.device_hash).await {
            return failed(FlashStage::TestBoot, e.to_string()).await;
        }
    }

    // 6. Health check, then confirm or roll back.
    progress.phase("health check");
    let verdict = match target.reconnect(opts.reconnect_timeout).await {
        Ok(after) => health(&after, image, opts).map(|()| after),
        Err(e) => Err(format!("device did not come back healthy: {e}")),
    };
    match verdict {
        Ok(after) => {
            rec(EventKind::HealthCheck { passed: true, detail: health_detail(&after) }).await?;
            progress.phase("confirm");
            if let Err(e) = target.confirm(&image.device_hash).await {
                // Unconfirmed, the device reverts at its next reset: say so.
                return failed(
                    FlashStage::Confirm,
                    format!("{e}; the device will revert to its previous image at the next reset"),
                )
                .await;
            }
            rec(EventKind::Confirmed {
                version: Some(image.to.to_string()),
                image_sha256: sha_hex,
            })
            .await?;
            Ok(FlashOutcome::Confirmed { version: image.to })
        }
        Err(why) => {
            rec(EventKind::HealthCheck { passed: false, detail: why.clone() }).await?;
            progress.phase("roll back");
            let back = match target.revert().await {
                Ok(()) => target.reconnect(opts.reconnect_timeout).await,
                Err(e) => Err(e),
            };
            match back {
                Ok(s) if s.running_hash.as_deref() != Some(image.device_hash.as_slice()) => {
                    let reason = format!(
                        "{why}; reverted to {}",
                        s.running_version
                            .map(|v| v.to_string())
                            .unwrap_or_else(|| "the previous image".into())
                    );
                    rec(EventKind::RolledBack { reason: reason.clone() }).await?;
                    Ok(FlashOutcome::RolledBack { reason })
                }
                Ok(_) => {
                    failed(
                        FlashStage::RollBack,
                        format!("{why}; the device still runs the new image after the revert"),
                    )
                    .await
                }
                Err(e) => failed(FlashStage::RollBack, format!("{why}; revert failed: {e}")).await,
            }
        }
    }
}

fn health(state: &DeviceState, image: &VerifiedImage, opts: &FlashOptions) -> Result<(), String> {
    if state.running_hash.as_deref() != Some(image.device_hash.as_slice()) {
        return Err(format!(
            "device runs image {} instead of the new {}",
            state.running_hash.as_deref().map(hex).unwrap_or_else(|| "(unknown)".into()),
            hex(&image.device_hash)
        ));
    }
    if let Some(v) = state.running_version
        && v != image.to
    {
        return Err(format!("device reports version {v}, expected {}", image.to));
    }
    if let Some(check) = &opts.health {
        check(state)?;
    }
    Ok(())
}

fn health_detail(s: &DeviceState) -> String {
    format!(
        "device answers and runs {} (image {})",
        s.running_version.map(|v| v.to_string()).unwrap_or_else(|| "an unknown version".into()),
        s.running_hash.as_deref().map(hex).unwrap_or_default()
    )
}

#[cfg(any(test, feature = "test-utils"))]
pub mod fake;

#[cfg(test)]
mod tests {
    use super::fake::{FakeDevice, MemorySink};
    use super::*;
    use crate::progress::NoProgress;

    fn image(bytes: &[u8], to: &str) -> VerifiedImage {
        let sha: [u8; 32] = Sha256::digest(bytes).into();
        VerifiedImage {
            bundle_id: Some("b1".into()),
            from: None,
            to: to.parse().unwrap(),
            bytes: bytes.into(),
            sha256: sha,
            device_hash: sha.to_vec(),
            esp: None,
        }
    }

    async fn run(dev: &FakeDevice, img: &VerifiedImage) -> (FlashOutcome, Vec<String>) {
        let sink = MemorySink::default();
        let mut target = dev.open();
        let out = flash("d1", &mut target, img, &sink, &NoProgress, &FlashOptions::default())
            .await
            .unwrap();
        (out, sink.tags())
    }

    /// A USB DFU-like device: no test boot, no hash report, no readback (status only).
    struct StatusOnlyDevice {
        uploads: u32,
    }

    #[async_trait]
    impl FlashTarget for StatusOnlyDevice {
        fn describe(&self) -> String {
            "status-only device".into()
        }
        async fn state(&mut self) -> Result<DeviceState, TargetError> {
            Ok(DeviceState {
                running_version: None,
                running_hash: None,
                confirmed: true,
                pending_hash: None,
            })
        }
        async fn upload(
            &mut self,
            _image: &[u8],
            _progress: &dyn Progress,
        ) -> Result<UploadReport, TargetError> {
            self.uploads += 1;
            Ok(UploadReport { device_hash: None, check: HashCheck::StatusOnly })
        }
        async fn reconnect(&mut self, _timeout: Duration) -> Result<DeviceState, TargetError> {
            self.state().await
        }
    }

    #[tokio::test]
    async fn an_image_the_device_cannot_check_is_recorded_unverified_never_confirmed() {
        let img = image(&[9u8; 2048], "3.1.0");
        let sink = MemorySink::default();
        let mut dev = StatusOnlyDevice { uploads: 0 };
        let out = flash("g1", &mut dev, &img, &sink, &NoProgress, &FlashOptions::default())
            .await
            .unwrap();
        assert_eq!(out, FlashOutcome::Unverified { version: "3.1.0".parse().unwrap() });
        assert!(!out.is_success());
        assert_eq!(dev.uploads, 1);
        let tags = sink.tags();
        assert!(!tags.iter().any(|t| t == "confirmed"), "{tags:?}");
        let notes: Vec<String> = sink
            .0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, k)| match k {
                EventKind::Note { text } => Some(text.clone()),
                _ => None,
            })
            .collect();
        assert!(notes.iter().any(|n| n.contains("unverified, not confirmed")), "{notes:?}");
    }

    #[tokio::test]
    async fn healthy_image_is_uploaded_test_booted_checked_and_confirmed() {
        let dev = FakeDevice::new("1.0.0");
        let img = image(&[7u8; 4096], "2.0.0");
        let (out, tags) = run(&dev, &img).await;
        assert_eq!(out, FlashOutcome::Confirmed { version: "2.0.0".parse().unwrap() });
        assert_eq!(
            tags,
            [
                "flash_started",
                "progress_checkpoint",
                "progress_checkpoint",
                "progress_checkpoint",
                "image_uploaded",
                "test_boot_requested",
                "health_check",
                "confirmed"
            ]
        );
        let s = dev.snapshot();
        assert_eq!(s.running_version.unwrap().to_string(), "2.0.0");
        assert!(s.confirmed);
        // Flashing again sends nothing, and the log's last word on the device is its outcome.
        let (again, tags) = run(&dev, &img).await;
        assert!(matches!(again, FlashOutcome::AlreadyDone { .. }));
        assert_eq!(tags, ["note", "confirmed"]);
        assert_eq!(dev.uploads(), 1);
    }

    #[tokio::test]
    async fn a_test_boot_whose_answer_was_lost_is_booted_on_the_retry_not_uploaded_again() {
        let dev = FakeDevice::new("1.0.0");
        dev.set_lose_test_boot_answers(1);
        let img = image(&[5u8; 4096], "2.0.0");
        let (first, _) = run(&dev, &img).await;
        assert!(
            matches!(first, FlashOutcome::Failed { stage: FlashStage::TestBoot, .. }),
            "{first:?}"
        );
        // The image waits for its test boot: the slot takes no new upload, so the retry boots it.
        assert_eq!(dev.snapshot().pending_hash.as_deref(), Some(img.device_hash.as_slice()));
        let (again, tags) = run(&dev, &img).await;
        assert_eq!(again, FlashOutcome::Confirmed { version: "2.0.0".parse().unwrap() });
        assert_eq!(tags, ["note", "test_boot_requested", "health_check", "confirmed"]);
        assert_eq!(dev.uploads(), 1);
        let s = dev.snapshot();
        assert!(s.confirmed && s.running_version.unwrap().to_string() == "2.0.0", "{s:?}");
    }

    #[tokio::test]
    async fn image_that_does_not_boot_is_rolled_back() {
        let dev = FakeDevice::new("1.0.0");
        dev.set_fail_boot(true);
        let (out, tags) = run(&dev, &image(&[1u8; 1000], "2.0.0")).await;
        assert!(
            matches!(out, FlashOutcome::RolledBack { ref reason } if reason.contains("reverted to 1.0.0")),
            "{out:?}"
        );
        assert_eq!(tags.last().unwrap(), "rolled_back");
        assert!(tags.contains(&"health_check".to_string()));
        assert_eq!(dev.snapshot().running_version.unwrap().to_string(), "1.0.0");
    }

    #[tokio::test]
    async fn custom_health_check_failure_rolls_back() {
        let dev = FakeDevice::new("1.0.0");
        let sink = MemorySink::default();
        let opts = FlashOptions {
            health: Some(Arc::new(|_: &DeviceState| Err("sensor reads nothing".to_string()))),
            ..Default::default()
        };
        let mut t = dev.open();
        let out = flash("d1", &mut t, &image(&[2u8; 500], "2.0.0"), &sink, &NoProgress, &opts)
            .await
            .unwrap();
        assert!(
            matches!(out, FlashOutcome::RolledBack { ref reason } if reason.contains("sensor reads nothing"))
        );
        // Reverted: the previous image runs again, confirmed.
        let after = dev.snapshot();
        assert_eq!(after.running_version.unwrap().to_string(), "1.0.0");
        assert!(after.confirmed);
    }

    #[tokio::test]
    async fn bytes_that_differ_from_the_verified_hash_are_never_sent() {
        let dev = FakeDevice::new("1.0.0");
        let mut img = image(&[3u8; 100], "2.0.0");
        img.bytes = vec![4u8; 100].into();
        let (out, tags) = run(&dev, &img).await;
        assert!(
            matches!(out, FlashOutcome::Failed { ref stage, .. } if *stage == FlashStage::Verify)
        );
        assert_eq!(tags, ["failed"]);
        assert_eq!(dev.uploads(), 0);
    }

    #[tokio::test]
    async fn a_wrong_device_reported_hash_stops_before_test_boot() {
        let dev = FakeDevice::new("1.0.0");
        dev.set_corrupt_upload(true);
        let (out, tags) = run(&dev, &image(&[5u8; 100], "2.0.0")).await;
        assert!(
            matches!(out, FlashOutcome::Failed { ref stage, .. } if *stage == FlashStage::HashCheck),
            "{out:?}"
        );
        assert!(!tags.contains(&"test_boot_requested".to_string()));
        assert_eq!(dev.snapshot().running_version.unwrap().to_string(), "1.0.0");
    }

    #[tokio::test]
    async fn interrupted_upload_resumes() {
        let dev = FakeDevice::new("1.0.0");
        dev.set_interrupt_uploads(2);
        let (out, tags) = run(&dev, &image(&[6u8; 2048], "2.0.0")).await;
        assert!(out.is_success(), "{out:?}");
        assert_eq!(tags.iter().filter(|t| *t == "note").count(), 2);
    }
}
