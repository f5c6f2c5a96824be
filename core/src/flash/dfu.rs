//! USB DFU devices as flash targets.
//!
//! The payload is a DFU file (with its suffix, plain DFU 1.1 or DfuSe). It is parsed and its
//! VID/PID checked against the device before any DNLOAD, then downloaded through the driver; when
//! the device can UPLOAD, the image is read back and compared. DFU devices boot what they receive:
//! there is no trial boot to revert, so the pipeline reports failures as such.
//!
//! The DFU driver is blocking; each operation runs on tokio's blocking pool and streams progress
//! back through a channel.

use super::{DeviceState, FlashTarget, HashCheck, TargetError, UploadReport};
use crate::image::dfu_file::{self, DfuFile, DfuFlashError};
use crate::progress::{Progress, TransferProgress};
use async_trait::async_trait;
use fieldpatch_drivers::dfu::{DfuDevice, DfuOptions, DfuseOptions, VerifiedBy};
use fieldpatch_drivers::usb::UsbBus;
use sha2::{Digest, Sha256};
use std::time::Duration;

/// A DFU device on a USB bus (the real one, or the lab's).
#[derive(Debug)]
pub struct DfuTarget<B> {
    bus: B,
    location: String,
    options: DfuOptions,
    /// Hash of the DFU file whose payload the device holds, once read back (or status-checked).
    holds: Option<Vec<u8>>,
}

impl<B> DfuTarget<B> {
    pub fn new(bus: B, location: impl Into<String>) -> Self {
        Self { bus, location: location.into(), options: DfuOptions::default(), holds: None }
    }
}

struct ChannelProgress(tokio::sync::mpsc::UnboundedSender<TransferProgress>);

impl Progress for ChannelProgress {
    fn transfer(&self, p: TransferProgress) {
        let _ = self.0.send(p);
    }
}

/// Run a blocking USB job off the async runtime, forwarding its transfer progress to `progress`
/// as it goes. A job that cannot finish (it panicked, or the runtime is shutting down) is a
/// transient error.
pub(crate) async fn blocking_with_progress<T: Send + 'static>(
    progress: &dyn Progress,
    job: impl FnOnce(&dyn Progress) -> Result<T, TargetError> + Send + 'static,
) -> Result<T, TargetError> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut job = tokio::task::spawn_blocking(move || job(&ChannelProgress(tx)));
    let done = loop {
        tokio::select! {
            Some(p) = rx.recv() => progress.transfer(p),
            done = &mut job => break done.map_err(join_err)?,
        }
    };
    while let Ok(p) = rx.try_recv() {
        progress.transfer(p);
    }
    done
}

/// A blocking DFU job that could not finish (it panicked or the runtime is shutting down).
fn join_err(e: tokio::task::JoinError) -> TargetError {
    TargetError::reported_transient(format!("the USB worker stopped: {e}"))
}

impl From<DfuFlashError> for TargetError {
    fn from(e: DfuFlashError) -> Self {
        match e {
            DfuFlashError::File(e) => TargetError::DfuFile(e),
            DfuFlashError::Device(e) => TargetError::Dfu(e),
        }
    }
}

#[async_trait]
impl<B> FlashTarget for DfuTarget<B>
where
    B: UsbBus + Clone + Send + Sync + 'static,
    B::Device: 'static,
{
    fn describe(&self) -> String {
        format!("USB DFU device at {}", self.location)
    }

    async fn state(&mut self) -> Result<DeviceState, TargetError> {
        let (bus, loc, opts) = (self.bus.clone(), self.location.clone(), self.options);
        tokio::task::spawn_blocking(move || DfuDevice::open(&bus, &loc, opts).map(|_| ()))
            .await
            .map_err(join_err)??;
        // A DFU device cannot say what it runs: only what this connection verified it holds.
        Ok(DeviceState {
            running_version: None,
            running_hash: self.holds.clone(),
            confirmed: true,
            pending_hash: None,
        })
    }

    async fn upload(
        &mut self,
        image: &[u8],
        progress: &dyn Progress,
    ) -> Result<UploadReport, TargetError> {
        let file = DfuFile::parse(image)?;
        let file_hash = Sha256::digest(image).to_vec();
        let (bus, loc, opts) = (self.bus.clone(), self.location.clone(), self.options);
        let report = blocking_with_progress(progress, move |p| {
            let mut dev = DfuDevice::open(&bus, &loc, opts)?;
            let options = DfuseOptions { mass_erase: false, leave: true };
            Ok(dfu_file::download(&mut dev, &file, options, p)?)
        })
        .await?;
        let check = match report.verified_by {
            VerifiedBy::Readback => HashCheck::Readback,
            VerifiedBy::StatusOnly => HashCheck::StatusOnly,
        };
        // Only a readback proves what the device holds: the driver compared it with exactly the
        // payload of this (verified) file. A status-only device holds "something it accepted".
        let device_hash = (check == HashCheck::Readback).then_some(file_hash);
        self.holds = device_hash.clone();
        Ok(UploadReport { device_hash, check })
    }

    async fn reconnect(&mut self, timeout: Duration) -> Result<DeviceState, TargetError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.state().await {
                Ok(s) => return Ok(s),
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(_) => return Err(TargetError::Timeout(timeout)),
            }
        }
    }
}
