//! SMP (MCUmgr) devices with MCUboot as flash targets, over serial or UDP.
//!
//! MCUboot semantics carry the pipeline: the image goes to the secondary slot, the device reports
//! its SHA-256 TLV, a *test* mark plus a reset boots it once, and only a confirm makes it
//! permanent; a reset without confirming reverts to the previous image.
//!
//! A device in MCUboot's serial recovery (the bootloader answering SMP, see
//! [`fieldpatch_drivers::smp::SmpMode`]) has no test boot and no revert: the upload overwrites
//! the primary slot, the hash the device then lists is checked like any other, and only then is
//! the device reset into the application, which is waited for and health-checked where it speaks
//! SMP; where it does not, the flash ends unverified, booted but not checkable
//! ([`FlashTarget::reset_into_upload`]). The pipeline records that no rollback is possible
//! ([`FlashTarget::no_rollback`]).

use super::{DeviceState, FlashTarget, HashCheck, TargetError, UploadReport};
use crate::model::{DeviceMode, Version};
use crate::progress::Progress;
use async_trait::async_trait;
use fieldpatch_drivers::smp::{AfterUpload, ImageSlotState, SmpClient, SmpMode, UploadOptions};
use fieldpatch_drivers::transport::Link;
use std::time::Duration;

/// How long a device keeps answering after it accepted a reset (Zephyr resets
/// `CONFIG_MCUMGR_GRP_OS_RESET_MS`, 250 ms by default, after its reply): state read before this
/// would describe the image that is about to go away.
pub const RESET_SETTLE: Duration = Duration::from_millis(750);

/// An SMP device on one link.
#[derive(Debug)]
pub struct SmpTarget<L: Link> {
    client: SmpClient<L>,
    what: String,
    /// The device answered from MCUboot's serial recovery when its state was read.
    recovery: bool,
    /// An image was written in serial recovery: the next reconnect resets into it first.
    reset_pending: bool,
    /// The state was read at least once, so `recovery` tells the mode.
    state_read: bool,
    /// The last reconnect reset the device out of serial recovery into the uploaded image.
    reset_into_upload: bool,
}

impl<L: Link> SmpTarget<L> {
    pub fn new(link: L, what: impl Into<String>) -> Self {
        Self::from_client(SmpClient::new(link), what)
    }

    /// A target over a client already talking to the device.
    pub fn from_client(client: SmpClient<L>, what: impl Into<String>) -> Self {
        Self {
            client,
            what: what.into(),
            recovery: false,
            reset_pending: false,
            state_read: false,
            reset_into_upload: false,
        }
    }

    /// Whether the device was in serial recovery when its state was last read.
    pub fn in_serial_recovery(&self) -> bool {
        self.recovery
    }
}

/// What a device in serial recovery holds: the image its bootloader will boot (slot 0 of image
/// 0), which is not running and not "confirmed" in MCUboot's sense.
fn in_recovery(states: &[ImageSlotState]) -> DeviceState {
    let primary = states.iter().find(|s| s.image == 0 && s.slot == 0);
    DeviceState {
        running_version: primary.and_then(|p| parse_version(&p.version)),
        running_hash: None,
        confirmed: false,
        pending_hash: None,
    }
}

fn dev_err(e: fieldpatch_drivers::smp::SmpError) -> TargetError {
    TargetError::Smp(e)
}

/// The running image of image 0, as [`DeviceState`].
fn running(states: &[ImageSlotState]) -> Result<DeviceState, TargetError> {
    let active = states
        .iter()
        .find(|s| s.image == 0 && s.active)
        .ok_or_else(|| TargetError::reported_transient("the device lists no active image"))?;
    Ok(DeviceState {
        running_version: parse_version(&active.version),
        running_hash: Some(active.hash.clone()),
        confirmed: active.confirmed || active.permanent,
        pending_hash: states
            .iter()
            .find(|s| s.image == 0 && !s.active && s.pending && !s.permanent)
            .map(|s| s.hash.clone()),
    })
}

/// MCUmgr reports `major.minor.revision` with an optional `.build`.
fn parse_version(text: &str) -> Option<Version> {
    let parts: Vec<&str> = text.split('.').collect();
    match parts.as_slice() {
        [a, b, c, d] => format!("{a}.{b}.{c}+{d}").parse().ok(),
        _ => text.parse().ok(),
    }
}

#[async_trait]
impl<L: Link + 'static> FlashTarget for SmpTarget<L> {
    fn describe(&self) -> String {
        self.what.clone()
    }

    async fn state(&mut self) -> Result<DeviceState, TargetError> {
        let states = self.client.image_list().await.map_err(dev_err)?;
        if states.iter().any(|s| s.active) {
            self.recovery = false;
            self.state_read = true;
            return running(&states);
        }
        // Nothing runs: ask what answers (an application with no active image is an error).
        let id = self.client.identify().await.map_err(dev_err)?;
        self.recovery = id.mode == SmpMode::SerialRecovery;
        self.state_read = true;
        if self.recovery { Ok(in_recovery(&id.images)) } else { running(&id.images) }
    }

    async fn upload(
        &mut self,
        image: &[u8],
        progress: &dyn Progress,
    ) -> Result<UploadReport, TargetError> {
        let (_, states) = self
            .client
            .upload_image(image, None, AfterUpload::Nothing, UploadOptions::default(), progress)
            .await
            .map_err(dev_err)?;
        let mode = self.client.mode().unwrap_or(SmpMode::Application);
        self.recovery = mode == SmpMode::SerialRecovery;
        self.reset_pending = self.recovery;
        let slot = states.iter().find(|s| s.image == 0 && s.slot == mode.upload_slot());
        Ok(UploadReport {
            device_hash: slot.map(|s| s.hash.clone()),
            check: HashCheck::DeviceReported,
        })
    }

    fn supports_test_boot(&self) -> bool {
        !self.recovery
    }

    fn no_rollback(&self) -> Option<String> {
        self.recovery.then(|| {
            "the device is in MCUboot serial recovery: the upload overwrites the image it boots; there is no test boot and no rollback in this mode".to_string()
        })
    }

    fn device_mode(&self) -> Option<DeviceMode> {
        self.state_read.then_some(if self.recovery {
            DeviceMode::SerialRecovery
        } else {
            DeviceMode::Application
        })
    }

    async fn test_boot(&mut self, image_hash: &[u8]) -> Result<(), TargetError> {
        self.client.image_test(image_hash).await.map_err(dev_err)?;
        self.client.reset().await.map_err(dev_err)?;
        tokio::time::sleep(RESET_SETTLE).await;
        Ok(())
    }

    async fn confirm(&mut self, image_hash: &[u8]) -> Result<(), TargetError> {
        self.client.image_confirm(Some(image_hash)).await.map_err(dev_err)?;
        let s = self.state().await?;
        if !s.confirmed || s.running_hash.as_deref() != Some(image_hash) {
            return Err(TargetError::reported_transient(
                "the device did not report the image as confirmed",
            ));
        }
        Ok(())
    }

    async fn revert(&mut self) -> Result<(), TargetError> {
        // An unconfirmed test image is dropped by MCUboot at the next reset.
        self.client.reset().await.map_err(dev_err)?;
        tokio::time::sleep(RESET_SETTLE).await;
        Ok(())
    }

    fn reset_into_upload(&self) -> bool {
        self.reset_into_upload
    }

    async fn reconnect(&mut self, timeout: Duration) -> Result<DeviceState, TargetError> {
        self.reset_into_upload = false;
        if self.reset_pending {
            // Leave serial recovery: the bootloader boots the image just written and checked.
            self.client.reset().await.map_err(dev_err)?;
            self.reset_pending = false;
            self.recovery = false;
            self.reset_into_upload = true;
            tokio::time::sleep(RESET_SETTLE).await;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = None;
        while tokio::time::Instant::now() < deadline {
            // One listing (with the client's own retries) may not outlast the timeout.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.client.image_list()).await {
                Ok(Ok(states)) => return running(&states),
                Ok(Err(e)) => last = Some(e),
                Err(_) => break,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(match last {
            Some(e) => TargetError::Smp(e),
            None => TargetError::Timeout(timeout),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mcumgr_versions_parse() {
        assert_eq!(super::parse_version("1.2.3").unwrap().to_string(), "1.2.3");
        assert_eq!(super::parse_version("1.2.3.4").unwrap().to_string(), "1.2.3+4");
        assert!(super::parse_version("x").is_none());
    }
}
