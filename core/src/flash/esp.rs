//! ESP32-family devices in their ROM serial bootloader as flash targets.
//!
//! The ROM loader writes flash in place: it has no trial boot and no revert of its own. What
//! makes a write safe to try is that a failed or interrupted one leaves the device in its ROM
//! loader (in ROM, it cannot be overwritten), from which it can be written again.
//!
//! The check on the device replaces the SMP hash report: after the write the device computes the
//! MD5 of the region (SPI_FLASH_MD5) and the driver compares it with the MD5 of exactly the bytes
//! sent, which are the verified bytes ([`EspLoader::write_verified`]); only then does the upload
//! report the verified SHA-256 as read back ([`HashCheck::Readback`]). An ESP application image
//! (first byte 0xE9) is parsed again here and its chip id compared with the chip the ROM reports
//! before a byte is sent.
//!
//! A bundle's `esp` payloads (bootloader, partition table, application, data) each have their
//! flash offset in the signed manifest. The catalog hands the pipeline the application as the
//! image and the rest as an [`EspPlacement`]; [`FlashTarget::place`] checks the whole layout
//! against the chip and flash size the ROM reports (and each payload's bytes against its verified
//! hash) before anything is sent, and the upload writes every payload at its offset, each checked
//! with the device's MD5, in one connection to the loader. A payload the device already holds
//! (its MD5 of the region matches) is not written again.
//!
//! ## Which slot
//!
//! [`FlashTarget::state`] reads the device's partition table (at 0x8000, up to its end marker),
//! its OTA data (both `esp_ota_select_entry_t`) and whether each application partition holds an
//! image, through [`EspLoader::read_flash`] (the flash's READ command run through the SPI
//! registers). [`FlashTarget::place`] then decides, with the bundle's table, else the device's:
//!
//! - **No OTA slots** (no table, or one without OTA data and two `ota_N`): the application is
//!   written in place at its manifest offset. A failed write leaves the device in its ROM loader
//!   (recoverable); no rollback is claimed.
//! - **Update**: the device runs this very table (the bundle carries none, or the same
//!   partitions) and the slot its OTA data boots holds an image. That slot is the running one, by
//!   ESP-IDF's rule: the valid entry (sequence set, CRC-32 of the sequence right, state neither
//!   INVALID nor ABORTED) with the highest sequence boots `ota_[(seq - 1) % slots]`; no valid
//!   entry boots the factory application, else `ota_0`. The application goes into the *next*
//!   slot (`ota_0` when the factory application runs), whatever slot its manifest offset names
//!   (ESP-IDF applications run from any OTA slot), then one OTA data entry selects it, written as
//!   `esp_ota_set_boot_partition` writes it: into the sector after the active entry's (the first
//!   without one), sequence the smallest `(slot + 1) % slots + k * slots` not below the active
//!   one (the highest plus one for the next slot), state NEW, its CRC; each checked with the
//!   device's MD5. The running slot is never written, and until the OTA data is written the
//!   device still boots it. Rollback is then the device's own: a bootloader built with rollback
//!   starts the NEW slot once and falls back to the previous one unless the application marks
//!   itself valid. Fieldpatch records that, and claims no rollback of its own. A bundle that
//!   carries OTA data (`ota_data_initial.bin`) does not get it written over a running device's:
//!   the new slot is selected instead, and the log says so.
//! - **Provision**: the bundle brings another table than the device's, or nothing runs yet.
//!   The application goes to the slot its manifest offset names; the bundle's OTA data, when it
//!   carries some, must boot that slot (else the bundle is refused: the application would never
//!   run); without it, OTA data selecting that slot is written (a factory slot: erased OTA data).
//!   There is nothing to fall back to: no rollback is claimed.
//!
//! ## Health
//!
//! After the write the device is reset into its application and its boot log read
//! ([`EspLoader::boot_and_listen`], [`fieldpatch_drivers::esp::bootlog`]) for at most the
//! pipeline's reconnect time, until the line has been quiet for [`EspTargetOptions::boot_quiet`].
//! The check passes only when the first boot loaded the application from the slot it was written
//! to and did not crash, and, when the image carries an `esp_app_desc_t`, reported its version;
//! otherwise the flash fails with what the device printed quoted
//! ([`TargetError::Unhealthy`]), and where the device's own bootloader then started the previous
//! slot, that is recorded as the device's rollback. The reset mode "none" has no EN line: the
//! device cannot be reset from here, so the health is not checked and the outcome says the
//! technician must power-cycle it (the ROM is only asked to run the user code).

use super::{DeviceState, FlashTarget, HashCheck, TargetError, UploadReport, VerifiedImage};
use crate::image::esp::{
    EspChip, EspImage, EspImageError, EspLayout, OtaData, Partition, PartitionTable, ota_seq_crc,
};
use crate::progress::{Progress, TransferProgress};
use async_trait::async_trait;
use fieldpatch_drivers::esp::{
    BootLog, Chip, ConnectOptions, EspError, EspLoader, EspPort, EspSerial, Listen, ROM_BAUD,
    ResetMode, SPI_READ_MAX,
};
use md5::Md5;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// Where ESP-IDF keeps the partition table, and its largest size.
const TABLE_OFFSET: u32 = 0x8000;
const TABLE_MAX: usize = 0xC00;
/// The second OTA data entry sits one sector after the first.
const SECTOR: u32 = 0x1000;
/// `esp_ota_img_states_t`: NEW, and "undefined" (what ESP-IDF writes without rollback).
const OTA_STATE_NEW: u32 = 0;
const OTA_STATE_UNDEFINED: u32 = u32::MAX;

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
    /// The application's console baud rate, at which its boot log is read.
    pub console_baud: u32,
    /// The boot log is read until the line has been quiet this long (a crash later than this
    /// after the device's last line is not seen).
    pub boot_quiet: Duration,
}

impl Default for EspTargetOptions {
    fn default() -> Self {
        EspTargetOptions {
            connect: ConnectOptions::default(),
            offset: 0x10000,
            flash_size: None,
            expected_chip: None,
            upload_baud: None,
            console_baud: ROM_BAUD,
            boot_quiet: Duration::from_secs(2),
        }
    }
}

/// What the device's flash held before anything was written ([`FlashTarget::state`]).
#[derive(Debug, Clone, Default)]
struct DeviceFlash {
    /// Its partition table, when one parses at 0x8000.
    table: Option<PartitionTable>,
    /// Its OTA data, where the table has an OTA data partition.
    ota: Option<OtaData>,
    /// Offsets of the application partitions that hold an image (first byte 0xE9).
    holds_app: Vec<u32>,
    /// Why the flash could not be read.
    unreadable: Option<String>,
}

/// Where the application goes (see the module docs).
#[derive(Debug, Clone)]
enum SlotPlan {
    /// No OTA slots: at the manifest offset, in place.
    InPlace,
    /// The device runs `running`; the application goes to `target`, then `entry` is written at
    /// `entry_at` to select it.
    Update {
        running: Partition,
        target: Partition,
        otadata_at: u32,
        entry_at: u32,
        entry: Vec<u8>,
        seq: u32,
    },
    /// Nothing to fall back to: the application goes to `slot`; `otadata` (when the bundle
    /// carries none) is written at `otadata_at` to select it.
    Provision { slot: Partition, otadata_at: u32, otadata: Option<Vec<u8>> },
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
    /// The device's flash as [`FlashTarget::state`] read it.
    device: Option<DeviceFlash>,
    plan: SlotPlan,
    /// What [`FlashTarget::place`] decided that the log should say.
    placed_note: Option<String>,
    /// The version in the written application's descriptor.
    expected_version: Option<String>,
    /// What the passed health check established.
    health: Option<String>,
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
            device: None,
            plan: SlotPlan::InPlace,
            placed_note: None,
            expected_version: None,
            health: None,
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
    fn check_image(&self, image: &[u8]) -> Result<Option<EspImage>, TargetError> {
        if image.first() != Some(&0xE9) {
            return Ok(None);
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
        Ok(Some(parsed))
    }

    /// Read the device's partition table, OTA data and which application partitions hold an
    /// image (see the module docs).
    async fn read_device_flash(&mut self) -> Result<DeviceFlash, EspError> {
        let loader = self.loader.as_mut().ok_or(EspError::Unsupported {
            command: "reading flash after the device left its ROM loader",
        })?;
        let mut bytes = Vec::new();
        let table = loop {
            let at = TABLE_OFFSET + bytes.len() as u32;
            bytes.extend(loader.read_flash(at, SPI_READ_MAX).await?);
            match PartitionTable::parse(&bytes) {
                Ok(t) if t.partitions.is_empty() => break None,
                Ok(t) => break Some(t),
                Err(EspImageError::Truncated { .. }) if bytes.len() < TABLE_MAX => {}
                Err(_) => break None,
            }
        };
        let mut dev = DeviceFlash { table, ..DeviceFlash::default() };
        let Some(table) = dev.table.clone() else { return Ok(dev) };
        if let Some(od) = table.ota_data() {
            let mut raw = vec![0xFFu8; SECTOR as usize + 32];
            raw[..32].copy_from_slice(&loader.read_flash(od.offset, 32).await?);
            raw[SECTOR as usize..]
                .copy_from_slice(&loader.read_flash(od.offset + SECTOR, 32).await?);
            dev.ota = OtaData::parse(&raw).ok();
        }
        for p in table.app_partitions() {
            if loader.read_flash(p.offset, 4).await?.first() == Some(&0xE9) {
                dev.holds_app.push(p.offset);
            }
        }
        Ok(dev)
    }

    /// Decide where the application goes (see the module docs).
    fn plan(&self, placement: &EspPlacement) -> Result<(SlotPlan, Option<String>), TargetError> {
        let dev = self.device.clone().unwrap_or_default();
        let carried_table = placement.layout.partition_table();
        let Some(table) = carried_table.or(dev.table.as_ref()).filter(|t| t.has_ota()) else {
            return Ok((SlotPlan::InPlace, None));
        };
        let whose = if carried_table.is_some() { "the bundle's" } else { "the device's" };
        let Some(otadata) = table.ota_data() else { return Ok((SlotPlan::InPlace, None)) };
        let slot = table.at_offset(placement.offset).filter(|p| p.is_app()).ok_or_else(|| {
            TargetError::reported(format!(
                "the application at {:#x} starts no application partition of {whose} partition table",
                placement.offset
            ))
        })?;
        if let Some(why) = &dev.unreadable {
            return Err(TargetError::reported(format!(
                "the device's partition table and OTA data could not be read ({why}), so the slot it runs is unknown"
            )));
        }
        let carried_ota = placement.others.iter().find(|p| p.offset == otadata.offset);
        let same_table = dev.table.as_ref().is_some_and(|t| t.partitions == table.partitions);
        let running = same_table
            .then(|| table.boot_partition(dev.ota.as_ref()))
            .flatten()
            .filter(|p| dev.holds_app.contains(&p.offset));
        if let Some(running) = running {
            let slots = table.ota_slots();
            let target = table.next_update_slot(dev.ota.as_ref()).ok_or_else(|| {
                TargetError::reported("the partition table has no OTA slot to update")
            })?;
            let index = slots.iter().position(|p| p.name == target.name).unwrap_or(0) as u64;
            let (sector, seq) = next_entry(dev.ota.as_ref(), index, slots.len() as u64)?;
            let mut entry = Vec::with_capacity(32);
            entry.extend_from_slice(&seq.to_le_bytes());
            entry.extend_from_slice(&[0xFF; 20]);
            entry.extend_from_slice(&OTA_STATE_NEW.to_le_bytes());
            entry.extend_from_slice(&ota_seq_crc(seq).to_le_bytes());
            let note = carried_ota.map(|p| {
                format!(
                    "the bundle's OTA data {} is not written: the device runs {}, and new OTA data selects {} instead",
                    p.name, running.name, target.name
                )
            });
            let plan = SlotPlan::Update {
                running: running.clone(),
                target: target.clone(),
                otadata_at: otadata.offset,
                entry_at: otadata.offset + sector * SECTOR,
                entry,
                seq,
            };
            return Ok((plan, note));
        }
        // Provision: the manifest's slot, selected by the bundle's OTA data or by new OTA data.
        if !(slot.is_factory() || slot.ota_slot().is_some()) {
            return Err(TargetError::reported(format!(
                "the application at {:#x} is in {}, which the bootloader never starts",
                slot.offset, slot.name
            )));
        }
        let otadata_bytes = match carried_ota {
            Some(p) => {
                let ota = OtaData::parse(&p.bytes).map_err(|e| {
                    TargetError::reported(format!(
                        "the bundle's OTA data {} does not parse: {e}",
                        p.name
                    ))
                })?;
                let boots =
                    table.boot_partition(Some(&ota)).map(|p| p.name.clone()).unwrap_or_default();
                if boots != slot.name {
                    return Err(TargetError::reported(format!(
                        "the bundle puts the application in {}, but with the bundle's OTA data the bootloader starts {boots}: the application would never run",
                        slot.name
                    )));
                }
                None
            }
            None => {
                let mut data = vec![0xFFu8; otadata.size.max(2 * SECTOR) as usize];
                if let Some(n) = slot.ota_slot() {
                    let seq = u32::from(n) + 1;
                    data[..4].copy_from_slice(&seq.to_le_bytes());
                    data[24..28].copy_from_slice(&OTA_STATE_UNDEFINED.to_le_bytes());
                    data[28..32].copy_from_slice(&ota_seq_crc(seq).to_le_bytes());
                }
                Some(data)
            }
        };
        let plan = SlotPlan::Provision {
            slot: slot.clone(),
            otadata_at: otadata.offset,
            otadata: otadata_bytes,
        };
        Ok((plan, None))
    }

    /// The application's offset and partition under the plan.
    fn app_slot(&self) -> (u32, Option<&Partition>) {
        match &self.plan {
            SlotPlan::InPlace => (self.opts.offset, None),
            SlotPlan::Update { target, .. } => (target.offset, Some(target)),
            SlotPlan::Provision { slot, .. } => (slot.offset, Some(slot)),
        }
    }

    /// Judge the boot log read after the reset (see the module docs).
    fn judge(&mut self, log: &BootLog) -> Result<(), TargetError> {
        let (offset, part) = self.app_slot();
        let slot =
            part.map_or_else(|| format!("{offset:#x}"), |p| format!("{} at {offset:#x}", p.name));
        let quote = |n: usize| {
            let tail = log.tail(n);
            if tail.is_empty() {
                format!(
                    "the device printed nothing (is this port its UART0 console, at {} baud?)",
                    self.opts.console_baud
                )
            } else {
                format!("the device printed: \"{}\"", tail.join(" | "))
            }
        };
        let unhealthy = |reason: String| TargetError::Unhealthy { reason, device_rollback: None };
        let Some(first) = log.boots.iter().position(|b| b.loaded.is_some()) else {
            return Err(unhealthy(format!(
                "after the reset no application was loaded (no \"Loaded app from partition\" line): {}",
                quote(8)
            )));
        };
        let boot = &log.boots[first];
        let previous = match &self.plan {
            SlotPlan::Update { running, .. } => Some(running.clone()),
            _ => None,
        };
        // Where the device went by itself after the new application failed.
        let fell_back = |from: usize| {
            let prev = previous.as_ref()?;
            let b = log.boots[from..]
                .iter()
                .find(|b| b.loaded == Some(prev.offset) && b.crash.is_none())?;
            Some(format!(
                "the device's own bootloader went back to {} at {:#x}{}: a rollback by the device, not by Fieldpatch; the new application stays in {slot}, not selected",
                prev.name,
                prev.offset,
                b.version
                    .as_deref()
                    .map(|v| format!(", which reports version {v}"))
                    .unwrap_or_default()
            ))
        };
        if boot.loaded != Some(offset) {
            let loaded = boot.loaded.unwrap_or_default();
            let reason = format!(
                "after the reset the bootloader loaded the application at {loaded:#x}, not the new one in {slot}: {}",
                quote(8)
            );
            return Err(TargetError::Unhealthy { reason, device_rollback: fell_back(first) });
        }
        let restarted = log.boots.get(first + 1).and_then(|b| b.reset.clone());
        if let Some(crash) = boot.crash.clone().or(restarted) {
            let back = fell_back(first + 1);
            let reason = format!(
                "the new application in {slot} crashed at boot (\"{crash}\"){}: {}",
                if back.is_none() && log.boots.len() > first + 1 {
                    " and the device keeps restarting; reset it into download mode and write the previous image (recoverable from the ROM loader)"
                } else {
                    ""
                },
                quote(12)
            );
            return Err(TargetError::Unhealthy { reason, device_rollback: back });
        }
        if let Some(want) = &self.expected_version
            && boot.version.as_deref() != Some(want.as_str())
        {
            return Err(unhealthy(format!(
                "the application in {slot} reports version {}, but the image written carries {want}: {}",
                boot.version.as_deref().unwrap_or("(none)"),
                quote(8)
            )));
        }
        let rollback = match &self.plan {
            SlotPlan::Update { running, .. } => format!(
                "; rollback is the device's own: its bootloader, if built with rollback, goes back to {} unless the application marks itself valid",
                running.name
            ),
            _ => String::new(),
        };
        self.health = Some(format!(
            "boot log: the bootloader loaded the application from {slot}{} and no crash followed within {:?}{rollback}",
            boot.version
                .as_deref()
                .map(|v| format!(", which reports version {v}"))
                .unwrap_or_default(),
            self.opts.boot_quiet
        ));
        Ok(())
    }
}

/// The OTA data entry ESP-IDF's `esp_ota_set_boot_partition` writes to select slot `index` of
/// `slots`: its sector (the one after the active entry's, the first without one) and sequence.
fn next_entry(ota: Option<&OtaData>, index: u64, slots: u64) -> Result<(u32, u32), TargetError> {
    let active = ota.and_then(|o| {
        o.entries.iter().enumerate().filter(|(_, e)| e.is_valid()).max_by_key(|(_, e)| e.seq)
    });
    let Some((i, e)) = active else { return Ok((0, index as u32 + 1)) };
    let base = (index + 1) % slots.max(1);
    let seq = u64::from(e.seq);
    let k = if seq <= base { 0 } else { (seq - base).div_ceil(slots.max(1)) };
    let next = base + k * slots;
    if next >= u64::from(u32::MAX) {
        return Err(TargetError::reported(
            "the device's OTA sequence number is exhausted: erase its OTA data and provision it again",
        ));
    }
    Ok((1 - i as u32, next as u32))
}

fn md5_of(bytes: &[u8]) -> [u8; 16] {
    let pad = bytes.len().div_ceil(4) * 4 - bytes.len();
    let mut h = Md5::new();
    h.update(bytes);
    h.update(&[0xFFu8; 3][..pad]);
    h.finalize().into()
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
        if self.device.is_none() {
            let dev = match self.read_device_flash().await {
                Ok(dev) => dev,
                Err(e) => DeviceFlash { unreadable: Some(e.to_string()), ..DeviceFlash::default() },
            };
            self.device = Some(dev);
        }
        Ok(DeviceState {
            running_version: None,
            running_hash: self.written.clone(),
            confirmed: false,
            pending_hash: None,
        })
    }

    async fn upload(
        &mut self,
        image: &[u8],
        progress: &dyn Progress,
    ) -> Result<UploadReport, TargetError> {
        let parsed = self.check_image(image)?;
        self.expected_version = parsed.and_then(|p| p.app_desc).map(|d| d.version);
        let baud = self.opts.upload_baud;
        let (offset, part) = self.app_slot();
        if let Some(p) = part
            && image.len() as u64 > u64::from(p.size)
        {
            return Err(TargetError::reported(format!(
                "the application ({} bytes) does not fit {} ({} bytes); nothing was sent",
                image.len(),
                p.name,
                p.size
            )));
        }
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
        // Written after the application: the OTA data that selects it.
        let select: Option<(u32, Vec<u8>)> = match &self.plan {
            SlotPlan::InPlace => None,
            SlotPlan::Update { entry_at, entry, .. } => Some((*entry_at, entry.clone())),
            SlotPlan::Provision { otadata_at, otadata, .. } => {
                otadata.clone().map(|d| (*otadata_at, d))
            }
        };
        let total = others.iter().map(|p| p.bytes.len() as u64).sum::<u64>()
            + image.len() as u64
            + select.as_ref().map_or(0, |(_, d)| d.len() as u64);
        let loader = self.loader()?;
        if let Some(baud) = baud
            && loader.port().baud() != baud
        {
            loader.change_baud(baud).await?;
        }
        // The device hashes each region it wrote; the driver compares it with the MD5 of these
        // very bytes, so a match means the flash holds the verified payloads.
        let mut base = 0;
        for p in &others {
            let len = p.bytes.len().div_ceil(4) * 4;
            if loader.flash_md5(p.offset, len as u32).await? == md5_of(&p.bytes) {
                progress.note(&format!("{} at {:#x} is already on the device", p.name, p.offset));
            } else {
                let whole = Whole { inner: progress, base, total };
                loader.write_verified(p.offset, &p.bytes, &whole).await?;
            }
            base += p.bytes.len() as u64;
        }
        let whole = Whole { inner: progress, base, total };
        loader.write_verified(offset, image, &whole).await?;
        base += image.len() as u64;
        if let Some((at, data)) = select {
            let whole = Whole { inner: progress, base, total };
            loader.write_verified(at, &data, &whole).await?;
        }
        let sha: [u8; 32] = Sha256::digest(image).into();
        self.written = Some(sha.to_vec());
        Ok(UploadReport { device_hash: Some(sha.to_vec()), check: HashCheck::Readback })
    }

    async fn reconnect(&mut self, timeout: Duration) -> Result<DeviceState, TargetError> {
        let Some(mut loader) = self.loader.take() else {
            return Err(TargetError::reported(
                "the device already left its ROM loader: reset it into download mode and connect again",
            ));
        };
        if self.opts.connect.reset == ResetMode::NoReset {
            // No EN line: the ROM is asked to run the user code, which is no reset.
            loader.run_app().await?;
            self.reset_into_app = true;
            return Err(TargetError::reported("reset mode none: no EN line to reset the device"));
        }
        let listen = Listen {
            console_baud: self.opts.console_baud,
            quiet: self.opts.boot_quiet,
            deadline: timeout,
            ..Listen::default()
        };
        let log = loader.boot_and_listen(&listen).await;
        self.reset_into_app = true;
        self.judge(&log?)?;
        Ok(DeviceState {
            running_version: None,
            running_hash: self.written.clone(),
            confirmed: true,
            pending_hash: None,
        })
    }

    fn health_detail(&self) -> Option<String> {
        self.health.clone()
    }

    fn unchecked_boot(&self) -> Option<String> {
        let mut what: Vec<String> =
            self.others.iter().map(|p| format!("{} at {:#x}", p.name, p.offset)).collect();
        let (offset, part) = self.app_slot();
        what.push(match part {
            Some(p) => format!("the application in {} at {offset:#x}", p.name),
            None => format!("the application at {offset:#x}"),
        });
        let how = if self.opts.connect.reset == ResetMode::NoReset {
            "and the ROM asked to run the user code; health not checked: the ESP ROM loader cannot see the application, and reset mode none drives no EN line, so the device could not be reset into its application from here: the technician must power-cycle it (BOOT released) and check that it starts"
        } else {
            "and the device reset into its application, whose boot was not checked (the ESP ROM loader cannot see the application, and its boot log was not read)"
        };
        Some(format!(
            "written ({}), each region checked with the device's MD5, {how}",
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
        let (plan, note) = self.plan(placement)?;
        self.others = match &plan {
            // A running device's OTA data is never replaced by the bundle's.
            SlotPlan::Update { otadata_at, .. } => {
                placement.others.iter().filter(|p| p.offset != *otadata_at).cloned().collect()
            }
            _ => placement.others.clone(),
        };
        self.opts.offset = placement.offset;
        self.plan = plan;
        self.placed_note = note;
        Ok(())
    }

    fn no_rollback(&self) -> Option<String> {
        let who = self.describe();
        let text = match &self.plan {
            SlotPlan::Update { running, target, seq, .. } => format!(
                "{who}: the device runs {} ({:#x}); the application goes to {} ({:#x}), the running slot untouched, then new OTA data (sequence {seq}, state NEW) selects it, each checked with the device's MD5. Rollback is the device's own, not Fieldpatch's: its bootloader, if built with rollback, starts the new slot once and goes back to {} unless the application marks itself valid. A failed or interrupted write leaves the device in its ROM loader (recoverable), with {} still selected until the OTA data is written{}",
                running.name,
                running.offset,
                target.name,
                target.offset,
                running.name,
                running.name,
                self.placed_note.as_deref().map(|n| format!("; {n}")).unwrap_or_default()
            ),
            SlotPlan::Provision { slot, .. } => format!(
                "{who}: the device runs no application in this partition layout yet (a new layout, or nothing in the slot that boots), so there is nothing to fall back to: the application goes to {} ({:#x}), selected by OTA data; no trial boot and no revert. A failed or interrupted write leaves the device in its ROM loader, from which it can be written again (recoverable). Each region is checked with the device's MD5 before the device is reset into the application",
                slot.name, slot.offset
            ),
            SlotPlan::InPlace => format!(
                "{who}: the ESP ROM loader writes flash in place, with no trial boot and no revert; a failed or interrupted write leaves the device in its ROM loader, from which it can be written again (recoverable). The write is checked with the device's MD5 of the region before the device is reset into the application"
            ),
        };
        Some(text)
    }

    async fn release(&mut self) -> Result<(), TargetError> {
        // Opening reset the device into its ROM loader: identification leaves it running its
        // application again. A device without reset lines was put into its loader by hand (a
        // boot button) and stays there for the flash that follows.
        if self.opts.connect.reset == ResetMode::NoReset {
            return Ok(());
        }
        self.run_app().await
    }

    fn reset_into_upload(&self) -> bool {
        self.reset_into_app
    }
}
