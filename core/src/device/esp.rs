//! Jobs on one ESP32-family device in its ROM serial bootloader, at an `esp:` address: what the
//! loader says about the chip, a signed bundle installed through the session's gate, or a bare
//! image the technician allows explicitly.
//!
//! The ROM loader cannot report what the application runs, so a bundle is gated with the
//! inventory's record (as for USB DFU devices, see [`Fieldpatch::inventory_device`]); the write is
//! checked with the device's MD5 of every region and the outcome is unverified, never confirmed.
//! Connecting may reset the device into its loader (the address's `reset`); `info` resets it back
//! into its application afterwards, and says so in the visit log.

use super::Gate;
use crate::fieldpatch::{Error, Fieldpatch};
use crate::flash::connect::open_esp;
use crate::flash::esp::EspTarget;
use crate::flash::{FlashOptions, FlashOutcome, FlashStage, FlashTarget, TargetError};
use crate::plan::{DeviceAddress, DeviceRecord, EspReset};
use crate::progress::Progress;
use crate::visitlog::EventKind;
use fieldpatch_drivers::esp::EspSerial;
use sha2::{Digest, Sha256};
use std::path::Path;

/// Where a bare application image goes when the command names no offset: the factory (or first
/// OTA) application partition of ESP-IDF's default partition tables.
pub const DEFAULT_APP_OFFSET: u32 = 0x10000;

/// What the ROM loader says about the device, and what Fieldpatch can do with it in this mode.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EspInfo {
    /// The address as given (`esp:PORT...`).
    pub address: String,
    /// The chip's name, as esptool prints it (`ESP32`, `ESP32-C3`).
    pub chip: String,
    /// The base MAC address (`24:0a:c4:...`), where the chip's eFuse layout is known.
    pub mac: Option<String>,
    /// The SPI flash size in bytes, from its JEDEC id.
    pub flash_size: Option<u32>,
    /// How the adapter's lines were used to reach the loader (`classic`, `usb-jtag`, `none`).
    pub reset: String,
    /// Whether the device was reset back into its application afterwards.
    pub returned_to_app: bool,
    /// What the mode allows.
    pub allows: Vec<String>,
}

/// What a bare image upload did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EspUpload {
    pub address: String,
    pub chip: String,
    pub offset: u32,
    pub bytes: u64,
    /// SHA-256 of the bytes sent, whose MD5 the device confirmed over the written region.
    pub sha256: String,
    /// The device was reset into its application; the ROM loader cannot check that it booted.
    pub reset_into_app: bool,
}

fn allows() -> Vec<String> {
    [
        "write flash at an offset (FLASH_BEGIN/DATA/END), each region checked with the device's MD5 (SPI_FLASH_MD5)",
        "no trial boot and no revert: the ROM loader writes in place; a failed write leaves the device in its ROM loader, from which it can be written again",
        "the application's version cannot be read: a bundle is gated with the inventory's record and ends unverified, never confirmed",
    ]
    .map(String::from)
    .to_vec()
}

impl Fieldpatch {
    async fn open_esp_at(&self, address: &DeviceAddress) -> Result<EspTarget<EspSerial>, Error> {
        if !matches!(address, DeviceAddress::Esp { .. }) {
            return Err(Error::WrongAddress(format!(
                "{address} is not an ESP address: write esp:PORT[@BAUD][?reset=classic|usb-jtag|none]"
            )));
        }
        Ok(open_esp(address).await?)
    }

    /// Connect to the ROM loader at `address` and read the chip, its MAC and flash size. When
    /// the address resets the device into its loader, it is reset back into its application
    /// afterwards (recorded as a device command).
    pub async fn esp_info(&self, address: &DeviceAddress) -> Result<EspInfo, Error> {
        let mut target = self.open_esp_at(address).await?;
        let reset = match address {
            DeviceAddress::Esp { reset, .. } => *reset,
            _ => EspReset::None,
        };
        let mut info = EspInfo {
            address: address.to_string(),
            chip: target.chip().name().to_string(),
            mac: target
                .mac()
                .map(|m| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")),
            flash_size: target.flash_size(),
            reset: reset.as_str().to_string(),
            returned_to_app: false,
            allows: allows(),
        };
        if reset != EspReset::None {
            let name = address.to_string();
            let kind = EventKind::DeviceCommand { command: "reset".into(), image_sha256: None };
            self.record(Some(&name), kind).await?;
            let result = target.run_app().await;
            let (ok, detail) = match &result {
                Ok(()) => (true, "reset into its application".to_string()),
                Err(e) => (false, e.to_string()),
            };
            let kind = EventKind::DeviceCommandResult { command: "reset".into(), ok, detail };
            self.record(Some(&name), kind).await?;
            result?;
            info.returned_to_app = true;
        }
        Ok(info)
    }

    /// Install the signed bundle in `bundle` on the ESP device at `record.address` through the
    /// same gate and pipeline as a session. The ROM loader cannot say what the application runs,
    /// so the planner decides with the inventory `record` (vendor, model, hardware revision and
    /// the version it runs) whether the bundle applies; a refusal is recorded and the device is
    /// not even opened. Otherwise every `esp` payload is written at its manifest offset (the
    /// layout checked against the chip and flash the ROM reports first), checked with the device's
    /// MD5, and the device is reset into its application: unverified, never confirmed.
    pub async fn esp_install(
        &self,
        record: DeviceRecord,
        bundle: &Path,
        trust: &Path,
        progress: &dyn Progress,
        options: &FlashOptions,
    ) -> Result<FlashOutcome, Error> {
        if !matches!(record.address, DeviceAddress::Esp { .. }) {
            return Err(Error::WrongAddress(format!(
                "{} is not an ESP address: install on {} with the command for its transport",
                record.address, record.id
            )));
        }
        let image = match self.gate_bundle(bundle, trust, &record).await? {
            Gate::UpToDate { version } => return Ok(FlashOutcome::AlreadyDone { version }),
            Gate::Flash { image } => image,
        };
        let mut target = match self.open_esp_at(&record.address).await {
            Ok(t) => t,
            Err(e) => {
                let reason = format!("cannot open {}: {e}", record.address);
                let kind = EventKind::Failed { stage: FlashStage::Open.to_string(), reason };
                self.record(Some(&record.id), kind).await?;
                return Err(e);
            }
        };
        self.flash_cleared(&record, &mut target, &image, progress, options).await
    }

    /// Write the bare image in `file` at `offset` (an application image's chip id is checked
    /// against the chip first). The file must be one the technician allows explicitly
    /// (`allow_unverified`, recorded in the visit log); a signed bundle is refused here, it goes
    /// through [`Fieldpatch::esp_install`]. The write is checked with the device's MD5, then the
    /// device is reset into its application; nothing is claimed about its boot.
    pub async fn esp_upload(
        &self,
        address: &DeviceAddress,
        file: &Path,
        offset: u32,
        allow_unverified: bool,
        progress: &dyn Progress,
    ) -> Result<EspUpload, Error> {
        if crate::bundle::container::looks_like_bundle(file) {
            return Err(Error::Invalid(format!(
                "{} is a patch bundle: install it with the device's inventory id (`fieldpatch device --esp PORT image upload --device ID --trust FILE`), so the planner checks it applies",
                file.display()
            )));
        }
        if !allow_unverified {
            return Err(Error::Invalid(format!(
                "{} is not a signed bundle: an ESP image Fieldpatch cannot verify is sent only with --allow-unverified (recorded in the visit log)",
                file.display()
            )));
        }
        let cleared = self.clear(file, None, allow_unverified).await?;
        let mut target = self.open_esp_at(address).await?;
        target.set_offset(offset);
        let name = address.to_string();
        self.record_clearance(&name, &cleared, file).await?;
        let sha = hex::encode(Sha256::digest(&cleared.bytes));
        let kind = EventKind::FlashStarted {
            bundle_id: None,
            from_version: None,
            to_version: None,
            image_sha256: sha.clone(),
            bytes: cleared.bytes.len() as u64,
        };
        self.record(Some(&name), kind).await?;
        if let Some(text) = target.no_rollback() {
            self.record(Some(&name), EventKind::Note { text }).await?;
        }
        let report = match target.upload(&cleared.bytes, progress).await {
            Ok(r) => r,
            Err(e) => {
                let kind = EventKind::Failed {
                    stage: FlashStage::Upload.to_string(),
                    reason: e.to_string(),
                };
                self.record(Some(&name), kind).await?;
                return Err(e.into());
            }
        };
        let kind = EventKind::ImageUploaded {
            image_sha256: sha.clone(),
            device_reported_hash: report.device_hash.as_deref().map(hex::encode),
        };
        self.record(Some(&name), kind).await?;
        let reset = target.run_app().await;
        let text = match &reset {
            Ok(()) => format!(
                "{} ({sha}) {}: booted, not checkable; unverified, not confirmed",
                file.display(),
                target.unchecked_boot().unwrap_or_default()
            ),
            Err(e) => format!(
                "{} ({sha}) written at {offset:#x} and checked with the device's MD5; resetting into the application failed ({e}): reset the device by hand",
                file.display()
            ),
        };
        self.record(Some(&name), EventKind::Note { text }).await?;
        reset.map_err(|e: TargetError| Error::from(e))?;
        Ok(EspUpload {
            address: name,
            chip: target.chip().name().to_string(),
            offset,
            bytes: cleared.bytes.len() as u64,
            sha256: sha,
            reset_into_app: true,
        })
    }
}
