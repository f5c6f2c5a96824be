//! ESP32-family devices in their ROM serial bootloader as flash targets.
//!
//! The ROM loader writes flash in place: there is no trial boot and no revert, which the pipeline
//! records before the upload ([`FlashTarget::no_rollback`]). What makes it safe to try is that a
//! failed or interrupted write leaves the device in its ROM loader (in ROM, it cannot be
//! overwritten), from which it can be written again.
//!
//! The check on the device replaces the SMP hash report: after the write the device computes the
//! MD5 of the region (SPI_FLASH_MD5) and the driver compares it with the MD5 of exactly the bytes
//! sent, which are the verified bytes ([`EspLoader::write_verified`]); only then does the upload
//! report the verified SHA-256 as read back ([`HashCheck::Readback`]). An ESP application image
//! (first byte 0xE9) is parsed again here and its chip id compared with the chip the ROM reports
//! before a byte is sent.
//!
//! After the check the device is reset into its application (EN pulsed through RTS, or the ROM
//! told to run the user code where the adapter has no reset lines). The ROM loader cannot see the
//! application, so what the application does is not claimed: the reconnect says so and the
//! pipeline records the flash as booted but not checkable ([`FlashTarget::reset_into_upload`]).
//!
//! A bundle's `esp` payloads (bootloader, partition table, application, data) each have their
//! flash offset in the signed manifest. The catalog hands the pipeline the application as the
//! image and the rest as an [`EspPlacement`]; [`FlashTarget::place`] checks the whole layout
//! against the chip and flash size the ROM reports (and each payload's bytes against its verified
//! hash) before anything is sent, and the upload writes every payload at its offset, each checked
//! with the device's MD5, the application last, in one connection to the loader.
//!
//! Where the bundle's partition table has OTA slots, the slot that boots is decided by the OTA
//! data, which the ROM loader cannot read. The application must go to the slot that will boot:
//! with the OTA data in the bundle, the slot it names; without it, the slot an erased OTA data
//! boots (factory, else `ota_0`), and then the device's OTA data must be erased, which the
//! device's MD5 of that region shows before anything is written. Otherwise the bundle is refused:
//! writing a slot that does not boot would report a flash the device never runs.

use super::{DeviceState, FlashTarget, HashCheck, TargetError, UploadReport, VerifiedImage};
use crate::image::esp::{EspChip, EspImage, EspLayout};
use crate::progress::{Progress, TransferProgress};
use async_trait::async_trait;
use fieldpatch_drivers::esp::{
    Chip, ConnectOptions, EspError, EspLoader, EspPort, EspSerial, ROM_BAUD,
};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// One verified payload written at its flash offset besides the application.
#[derive(Debug, Clone)]
pub struct PlacedPayload {
    pub name: String,
    pub offset: u32,
    pub bytes: Arc<[u8]>,
    /// SHA-256 of `bytes`, as the signed manifest states it.
    pub sha256: [u8; 32],
}

/// Where a bundle's ESP application goes and what is written with it.
#[derive(Debug, Clone)]
pub struct EspPlacement {
    /// The bundle's checked layout (every payload, the application included).
    pub layout: EspLayout,
    /// Flash offset of the application (the pipeline's image).
    pub offset: u32,
    /// The other payloads, sorted by offset, written before the application.
    pub others: Vec<PlacedPayload>,
}

/// Reports each payload's transfer as part of the whole write.
struct Whole<'a> {
    inner: &'a dyn Progress,
    base: u64,
    total: u64,
}

impl Progress for Whole<'_> {
    fn phase(&self, name: &str) {
        self.inner.phase(name)
    }
    fn transfer(&self, p: TransferProgress) {
        self.inner.transfer(TransferProgress {
            done: self.base + p.done,
            total: self.total,
            elapsed: p.elapsed,
        })
    }
    fn note(&self, message: &str) {
        self.inner.note(message)
    }
}

/// What to write where, and how to talk to the loader.
#[derive(Debug, Clone, Copy)]
pub struct EspTargetOptions {
    pub connect: ConnectOptions,
    /// Flash offset of the image (0x10000 for the factory app partition of the default table).
    pub offset: u32,
    /// The device's flash size, told to the ROM (SPI_SET_PARAMS) and checked before writing;
    /// `None`: read from the flash's JEDEC id.
    pub flash_size: Option<u32>,
    /// The chip the device record names; another chip is refused before anything is written.
    pub expected_chip: Option<Chip>,
    /// Switch the line to this rate before the upload (CHANGE_BAUDRATE).
    pub upload_baud: Option<u32>,
}

impl Default for EspTargetOptions {
    fn default() -> Self {
        EspTargetOptions {
            connect: ConnectOptions::default(),
            offset: 0x10000,
            flash_size: None,
            expected_chip: None,
            upload_baud: None,
        }
    }
}

/// One ESP device in its ROM loader.
#[derive(Debug)]
pub struct EspTarget<P: EspPort> {
    loader: Option<EspLoader<P>>,
    what: String,
    chip: Chip,
    mac: Option<[u8; 6]>,
    flash_size: Option<u32>,
    opts: EspTargetOptions,
    /// SHA-256 of what this target wrote and the device's MD5 confirmed.
    written: Option<Vec<u8>>,
    reset_into_app: bool,
    /// Payloads written before the application (from [`FlashTarget::place`]).
    others: Vec<PlacedPayload>,
    /// The device's OTA data region (offset, length) that must be erased for the application's
    /// slot to boot, checked before the upload.
    ota_erased: Option<(u32, u32, String)>,
}

impl EspTarget<EspSerial> {
    /// Open the serial port at `path` and connect to the ROM loader behind it.
    pub async fn open_serial(
        path: &str,
        opts: EspTargetOptions,
    ) -> Result<EspTarget<EspSerial>, TargetError> {
        let port = EspSerial::open(path, ROM_BAUD)
            .map_err(|e| TargetError::Esp(EspError::Transport(e)))?;
        EspTarget::connect(port, format!("ESP ROM loader on {path}"), opts).await
    }
}

impl<P: EspPort> EspTarget<P> {
    /// Sync with the ROM loader on `port`, detect the chip (refusing another than the expected
    /// one) and attach its SPI flash.
    pub async fn connect(
        port: P,
        what: impl Into<String>,
        opts: EspTargetOptions,
    ) -> Result<EspTarget<P>, TargetError> {
        let mut loader = EspLoader::connect(port, opts.connect).await?;
        let info = loader.detect_chip().await?;
        if let Some(expected) = opts.expected_chip
            && expected != info.chip
        {
            return Err(TargetError::reported(format!(
                "the device is an {}, its record says {expected}: check the port and the record",
                info.chip
            )));
        }
        loader.spi_attach().await?;
        // The record's flash size, else the flash's own (its JEDEC id), where the chip's SPI
        // registers are known.
        let flash_size = match opts.flash_size {
            Some(size) => Some(size),
            None => match loader.flash_id().await {
                Ok(id) => id.size,
                Err(EspError::Unsupported { .. }) => None,
                Err(e) => return Err(e.into()),
            },
        };
        if let Some(size) = flash_size {
            loader.spi_set_params(size).await?;
        }
        Ok(EspTarget {
            loader: Some(loader),
            what: what.into(),
            chip: info.chip,
            mac: info.mac,
            flash_size,
            opts,
            written: None,
            reset_into_app: false,
            others: Vec::new(),
            ota_erased: None,
        })
    }

    /// The chip the ROM reported.
    pub fn chip(&self) -> Chip {
        self.chip
    }

    /// The flash size in use: the record's, else the one the flash reported.
    pub fn flash_size(&self) -> Option<u32> {
        self.flash_size
    }

    /// The base MAC address, where the driver knows where the chip keeps it.
    pub fn mac(&self) -> Option<[u8; 6]> {
        self.mac
    }

    /// The flash offset a bare image is written at (a bundle's manifest decides for its own).
    pub fn set_offset(&mut self, offset: u32) {
        self.opts.offset = offset;
    }

    /// Leave the ROM loader: reset the device into its application.
    pub async fn run_app(&mut self) -> Result<(), TargetError> {
        if let Some(mut loader) = self.loader.take() {
            loader.run_app().await?;
            self.reset_into_app = true;
        }
        Ok(())
    }

    fn loader(&mut self) -> Result<&mut EspLoader<P>, TargetError> {
        self.loader.as_mut().ok_or_else(|| {
            TargetError::reported(
                "the device left its ROM loader for its application: reset it into download mode (hold BOOT, press EN) and connect again",
            )
        })
    }

    /// Refuse an ESP application image built for another chip, before anything is sent.
    fn check_image(&self, image: &[u8]) -> Result<(), TargetError> {
        if image.first() != Some(&0xE9) {
            return Ok(());
        }
        let parsed = EspImage::parse(image).map_err(|e| {
            TargetError::reported(format!("the ESP image does not parse: {e}; nothing was sent"))
        })?;
        let want = self.chip.image_chip_id();
        if want != Some(parsed.chip_id) {
            return Err(TargetError::reported(format!(
                "the image is built for chip id {} but the device is an {} (chip id {}); nothing was sent",
                parsed.chip_id,
                self.chip,
                want.map(|w| w.to_string()).unwrap_or_else(|| "none".into())
            )));
        }
        if let Some(size) = self.flash_size
            && parsed.flash_size_bytes > u64::from(size)
        {
            return Err(TargetError::reported(format!(
                "the image's header declares {} bytes of flash but the device has {size}; nothing was sent",
                parsed.flash_size_bytes
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl<P: EspPort + 'static> FlashTarget for EspTarget<P> {
    fn describe(&self) -> String {
        format!("{} ({})", self.what, self.chip)
    }

    async fn state(&mut self) -> Result<DeviceState, TargetError> {
        // The loader answers (the chip is read again); it cannot say what the flash runs, only
        // what this target wrote and checked through it.
        let info = self.loader()?.detect_chip().await?;
        if info.chip != self.chip {
            return Err(TargetError::reported(format!(
                "the device now reports an {}, it was an {}",
                info.chip, self.chip
            )));
        }
        Ok(DeviceState {
            running_version: None,
            running_hash: self.written.clone(),
            confirmed: false,
        })
    }

    async fn upload(
        &mut self,
        image: &[u8],
        progress: &dyn Progress,
    ) -> Result<UploadReport, TargetError> {
        self.check_image(image)?;
        let (offset, baud) = (self.opts.offset, self.opts.upload_baud);
        let others = self.others.clone();
        for p in &others {
            let sha: [u8; 32] = Sha256::digest(&p.bytes).into();
            if sha != p.sha256 {
                return Err(TargetError::reported(format!(
                    "payload {} does not hash to its verified SHA-256; nothing more was sent",
                    p.name
                )));
            }
        }
        let total = others.iter().map(|p| p.bytes.len() as u64).sum::<u64>() + image.len() as u64;
        let ota_erased = self.ota_erased.clone();
        let loader = self.loader()?;
        if let Some((at, len, slot)) = ota_erased {
            let erased: [u8; 16] = md5::Md5::digest(vec![0xFFu8; len as usize]).into();
            if loader.flash_md5(at, len).await? != erased {
                return Err(TargetError::reported(format!(
                    "the device's OTA data at {at:#x} is not erased, so it may start another slot than {slot}, where this bundle puts the application, and the ROM loader cannot read which; nothing was sent: release the bundle with its OTA data (ota_data_initial.bin) at {at:#x}"
                )));
            }
        }
        if let Some(baud) = baud
            && loader.port().baud() != baud
        {
            loader.change_baud(baud).await?;
        }
        // The device hashes each region it wrote; the driver compares it with the MD5 of these
        // very bytes, so a match means the flash holds the verified payloads.
        let mut base = 0;
        for p in &others {
            let whole = Whole { inner: progress, base, total };
            loader.write_verified(p.offset, &p.bytes, &whole).await?;
            base += p.bytes.len() as u64;
        }
        let whole = Whole { inner: progress, base, total };
        loader.write_verified(offset, image, &whole).await?;
        let sha: [u8; 32] = Sha256::digest(image).into();
        self.written = Some(sha.to_vec());
        Ok(UploadReport { device_hash: Some(sha.to_vec()), check: HashCheck::Readback })
    }

    async fn reconnect(&mut self, _timeout: Duration) -> Result<DeviceState, TargetError> {
        if let Some(mut loader) = self.loader.take() {
            loader.run_app().await?;
            self.reset_into_app = true;
        }
        Err(TargetError::reported(
            "the device now runs its application, which does not answer the ROM loader protocol",
        ))
    }

    fn unchecked_boot(&self) -> Option<String> {
        let mut what: Vec<String> =
            self.others.iter().map(|p| format!("{} at {:#x}", p.name, p.offset)).collect();
        what.push(format!("the application at {:#x}", self.opts.offset));
        Some(format!(
            "written ({}), each region checked with the device's MD5, and the device reset into its application; the ESP ROM loader cannot see the application",
            what.join(", ")
        ))
    }

    fn place(&mut self, image: &VerifiedImage) -> Result<(), TargetError> {
        let Some(placement) = image.esp.as_deref() else { return Ok(()) };
        let chip =
            self.chip.image_chip_id().and_then(EspChip::from_image_chip_id).ok_or_else(|| {
                TargetError::reported(format!(
                    "the device is an {}, which ESP bundles cannot target",
                    self.chip
                ))
            })?;
        // Without the flash's size (a chip whose SPI registers are not known) only the chip is
        // checked here; the ROM refuses a write past the end of its flash.
        let device = crate::image::esp::EspTarget {
            chip,
            flash_size_bytes: self.flash_size.map_or(u64::MAX, u64::from),
        };
        placement.layout.check_target(&device).map_err(|e| {
            TargetError::reported(format!(
                "the bundle's ESP layout does not fit {}: {e}",
                self.describe()
            ))
        })?;
        for p in &placement.others {
            let sha: [u8; 32] = Sha256::digest(&p.bytes).into();
            if sha != p.sha256 {
                return Err(TargetError::reported(format!(
                    "payload {} does not hash to its verified SHA-256",
                    p.name
                )));
            }
        }
        self.ota_erased = boot_check(placement)?;
        self.opts.offset = placement.offset;
        self.others = placement.others.clone();
        Ok(())
    }

    fn no_rollback(&self) -> Option<String> {
        Some(format!(
            "{}: the ESP ROM loader writes flash in place, with no trial boot and no revert; a failed or interrupted write leaves the device in its ROM loader, from which it can be written again (recoverable). The write is checked with the device's MD5 of the region before the device is reset into the application",
            self.describe()
        ))
    }

    async fn release(&mut self) -> Result<(), TargetError> {
        // Opening reset the device into its ROM loader: identification leaves it running its
        // application again. A device without reset lines was put into its loader by hand (a
        // boot button) and stays there for the flash that follows.
        if self.opts.connect.reset == fieldpatch_drivers::esp::ResetMode::NoReset {
            return Ok(());
        }
        self.run_app().await
    }

    fn reset_into_upload(&self) -> bool {
        self.reset_into_app
    }
}

/// Whether the application of `placement` goes to the slot the bootloader will start (see the
/// module docs): `Ok(Some(region))` when that holds only if the device's OTA data region is
/// erased, `Ok(None)` when the bundle settles it (or has no OTA partition table), an error when
/// the application would not be started.
fn boot_check(placement: &EspPlacement) -> Result<Option<(u32, u32, String)>, TargetError> {
    let Some(table) = placement.layout.partition_table() else { return Ok(None) };
    let Some(otadata) = table.ota_data().filter(|_| table.has_ota()) else { return Ok(None) };
    let slot = table.at_offset(placement.offset).map(|p| p.name.clone()).ok_or_else(|| {
        TargetError::reported(format!(
            "the application at {:#x} starts no partition of the bundle's table",
            placement.offset
        ))
    })?;
    let carried = placement.others.iter().find(|p| p.offset == otadata.offset);
    let ota = match carried {
        Some(p) => Some(crate::image::esp::OtaData::parse(&p.bytes).map_err(|e| {
            TargetError::reported(format!("the bundle's OTA data {} does not parse: {e}", p.name))
        })?),
        None => None,
    };
    let boots = table.boot_partition(ota.as_ref()).map(|p| p.name.clone()).unwrap_or_default();
    if boots != slot {
        return Err(TargetError::reported(format!(
            "the bundle puts the application in {slot}, but with {} the bootloader starts {boots}: the application would never run",
            if carried.is_some() { "the bundle's OTA data" } else { "erased OTA data" }
        )));
    }
    Ok(carried.is_none().then_some((otadata.offset, otadata.size, slot)))
}
