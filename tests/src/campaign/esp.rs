//! The ESP family: an ESP32 in its ROM serial bootloader (the lab module on a pty, reached
//! through a port whose DTR/RTS drive EN and GPIO0, so the classic auto-reset and the boot-log
//! health check run as on a dev board).
//!
//! Each run draws the module's layout: two OTA slots (the old application in `ota_0` or `ota_1`,
//! OTA data selecting it) with the bundle `lab-meter-1.3.0` (partition table and application:
//! the application goes to the slot the device does not run), or the factory layout with the
//! bundle `lab-meter-factory-1.3.0` (a new second-stage bootloader, the table and the application,
//! written in place). Its bootloader is drawn with or without rollback
//! (`CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE`), except where the fault fixes it.
//!
//! The checks, adapted from the other families:
//! - **bootable**: a boot from the module's flash (simulated on a copy, as ESP-IDF's bootloader
//!   picks the slot) starts the old or the new application, byte for byte. Where none starts,
//!   the run failed and said so, and the module waits in its ROM loader (a failed in-place
//!   write) or restarts over exactly the verified new application that crashes at boot (no
//!   rollback in its bootloader); the ROM loader, in mask ROM, takes a new write in both cases.
//!   A module with OTA slots must always boot: its running slot is never written.
//! - **honest success**: a module reported patched (or unverified with the version) runs, since
//!   the reset that checked its health, the slot holding exactly the verified new application.

use super::{Draw, Fault};
use fieldpatch_core::flash::connect::esp_options;
use fieldpatch_core::flash::esp::EspTarget;
use fieldpatch_core::flash::{FlashTarget, TargetError};
use fieldpatch_core::plan::{DeviceAddress, DeviceRecord, EspReset};
use fieldpatch_core::session::DeviceStatus;
use fieldpatch_lab::esp::serial::{EspServer, serve_pty};
use fieldpatch_lab::esp::{EspConfig, EspDevice, EspFaults};
use std::time::Duration;

/// Flash offsets of the layouts (ESP-IDF's defaults).
const BOOTLOADER: u32 = 0x1000;
const TABLE: u32 = 0x8000;
const OTA_DATA: u32 = 0xD000;
const OTA_0: u32 = 0x10000;
const OTA_1: u32 = 0x110000;
const FACTORY: u32 = 0x10000;
/// The module's flash size.
const FLASH_SIZE: u32 = 4 * 1024 * 1024;
/// Bytes of application code in each image (about 20 blocks of the ROM's 1 KiB FLASH_DATA).
const APP_LEN: usize = 20_000;
/// How long the boot log is read after the line went quiet (the lab prints a boot at once).
const BOOT_QUIET: Duration = Duration::from_millis(400);

/// What every ESP run flashes and starts from.
#[derive(Debug)]
pub struct EspRelease {
    /// The module's bootloader, and the newer one the factory bundle brings.
    bootloader: Vec<u8>,
    new_bootloader: Vec<u8>,
    ota_table: Vec<u8>,
    factory_table: Vec<u8>,
    /// The application the module runs (1.2.0) and the one the bundles install (1.3.0).
    old_app: Vec<u8>,
    new_app: Vec<u8>,
}

/// The bundles' payloads `(bundle id, model, [(name, bytes, offset)])`.
pub type EspBundle = (&'static str, &'static str, Vec<(&'static str, Vec<u8>, u32)>);

impl EspRelease {
    /// The images; `sha256` gives the SHA-256 ESP-IDF appends to each.
    pub fn make(sha256: &dyn Fn(&[u8]) -> [u8; 32]) -> EspRelease {
        let table = |entries: &[(u8, u8, u32, u32, &str)]| partition_table(entries);
        EspRelease {
            bootloader: image(0x3FFF_0000, &bytes(3_000, 77), sha256),
            new_bootloader: image(0x3FFF_0000, &bytes(3_200, 78), sha256),
            ota_table: table(&[
                (1, 2, 0x9000, 0x4000, "nvs"),
                (1, 0, OTA_DATA, 0x2000, "otadata"),
                (1, 1, 0xF000, 0x1000, "phy_init"),
                (0, 0x10, OTA_0, 0x100000, "ota_0"),
                (0, 0x11, OTA_1, 0x100000, "ota_1"),
            ]),
            factory_table: table(&[
                (1, 2, 0x9000, 0x6000, "nvs"),
                (1, 1, 0xF000, 0x1000, "phy_init"),
                (0, 0, FACTORY, 0x100000, "factory"),
            ]),
            old_app: app("1.2.0", 1, sha256),
            new_app: app(NEW_VERSION, 2, sha256),
        }
    }

    /// The two bundles: OTA (table and application) and factory (bootloader, table, application).
    pub fn bundles(&self) -> [EspBundle; 2] {
        [
            (
                "lab-meter-1.3.0",
                "meter",
                vec![
                    ("partitions.bin", self.ota_table.clone(), TABLE),
                    ("app.bin", self.new_app.clone(), OTA_0),
                ],
            ),
            (
                "lab-meter-factory-1.3.0",
                "meter-factory",
                vec![
                    ("bootloader.bin", self.new_bootloader.clone(), BOOTLOADER),
                    ("partitions.bin", self.factory_table.clone(), TABLE),
                    ("app.bin", self.new_app.clone(), FACTORY),
                ],
            ),
        ]
    }
}

/// The version the bundles install (and the crash fault's application reports).
const NEW_VERSION: &str = "1.3.0";

/// The module's partition layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Two OTA slots; the old application runs from this one.
    Ota { running: u32 },
    /// A factory application, written in place.
    Factory,
}

/// One run's module.
#[derive(Debug)]
pub struct EspRun {
    device: EspDevice,
    server: EspServer,
    layout: Layout,
    rollback: bool,
    faults: EspFaults,
    pub record: DeviceRecord,
    /// What was drawn.
    pub detail: String,
}

impl EspRun {
    /// A module that left the factory with the old application, on a new pty; its faults are
    /// drawn now and set by [`EspRun::arm`].
    pub fn start(release: &EspRelease, fault: Fault, draw: &mut Draw) -> Result<EspRun, String> {
        let layout = match draw.range(0, 3) {
            0 => Layout::Factory,
            1 => Layout::Ota { running: OTA_0 },
            _ => Layout::Ota { running: OTA_1 },
        };
        let rollback = match fault {
            Fault::CrashAtBootRollback => true,
            Fault::CrashAtBoot => false,
            _ => draw.range(0, 2) == 1,
        };
        let config = EspConfig { flash_size: FLASH_SIZE, rollback, ..EspConfig::default() };
        let device = EspDevice::new(config).map_err(|e| e.to_string())?;
        device.preload(BOOTLOADER, &release.bootloader);
        let model = match layout {
            Layout::Factory => {
                device.preload(TABLE, &release.factory_table);
                device.preload(FACTORY, &release.old_app);
                "meter-factory"
            }
            Layout::Ota { running } => {
                device.preload(TABLE, &release.ota_table);
                device.preload(running, &release.old_app);
                // Sequence 1 boots ota_0, 2 boots ota_1; state VALID.
                let seq = if running == OTA_0 { 1 } else { 2 };
                device.preload(OTA_DATA, &ota_entry(seq, 2));
                "meter"
            }
        };
        // It runs its application until the technician's laptop resets it into the loader.
        let _ = device.boot_app();
        if device.running().is_none() {
            return Err("the lab module does not boot its old application".into());
        }
        let server = serve_pty(device.clone()).map_err(|e| e.to_string())?;
        let address = DeviceAddress::Esp {
            port: server.path().display().to_string(),
            baud: Some(460_800),
            reset: EspReset::Classic,
            chip: Some("esp32".into()),
        };
        let mut record = fieldpatch_testkit::site::record("dev", "Lab", model, address);
        record.identity.firmware_version = Some("1.2.0".parse().map_err(|e| format!("{e}"))?);
        // FLASH_DATA sequence numbers start at 0 for each region written.
        let blocks = (release.new_app.len() / 1024) as u64 + 1;
        let mut faults = EspFaults::default();
        let mut what = match fault {
            Fault::DropFrames => {
                faults.drop_frames = draw.range(1, 4) as u32;
                faults.drop_at_seq = match draw.range(0, 4) {
                    0 => None,
                    _ => Some(draw.range(0, blocks) as u32),
                };
                match faults.drop_at_seq {
                    Some(s) => format!("{} frames lost from FLASH_DATA #{s}", faults.drop_frames),
                    None => format!("the next {} frames lost", faults.drop_frames),
                }
            }
            Fault::BadChecksum => {
                faults.bad_checksum_blocks = draw.range(1, 4) as u32;
                faults.bad_checksum_at_seq = draw.range(0, blocks) as u32;
                format!(
                    "{} blocks from #{} arrive with a bad checksum",
                    faults.bad_checksum_blocks, faults.bad_checksum_at_seq
                )
            }
            Fault::FlashWriteFail => {
                let at = draw.range(0, blocks) as u32;
                faults.flash_write_fail_at_seq = Some(at);
                format!("the flash never keeps block #{at}")
            }
            Fault::CorruptFlash => {
                let at = draw.range(0, blocks) as u32;
                faults.corrupt_at_seq = Some(at);
                format!("block #{at} kept with one bit flipped, unnoticed by the ROM")
            }
            Fault::Stall => {
                // Reading the partition table and OTA data through the SPI registers takes a few
                // hundred commands, the upload some tens more.
                let after = draw.range(0, 700) as u32;
                faults.stall_after = Some(after);
                format!("silent after {after} more commands")
            }
            Fault::CrashAtBootRollback | Fault::CrashAtBoot => {
                faults.crash_version = Some(NEW_VERSION.into());
                format!("{NEW_VERSION} crashes at boot")
            }
            _ => String::new(),
        };
        let shape = match layout {
            Layout::Factory => "factory layout".to_string(),
            Layout::Ota { running } => format!("OTA, running {}", slot_name(running)),
        };
        let boot = if rollback { "rollback" } else { "no rollback" };
        what = if what.is_empty() {
            format!("{shape}, {boot}")
        } else {
            format!("{shape}, {boot}; {what}")
        };
        Ok(EspRun { device, server, layout, rollback, faults, record, detail: what })
    }

    /// Set the drawn faults (after identification, so they hit the flash).
    pub fn arm(&self) {
        self.device.set_faults(self.faults.clone());
    }

    /// A connector part: open the module through its wired port, as the address says, with
    /// the boot log read until the line is quiet for [`BOOT_QUIET`].
    pub async fn open(&self, record: &DeviceRecord) -> Result<Box<dyn FlashTarget>, TargetError> {
        let Some(mut opts) = esp_options(&record.address) else {
            return Err(TargetError::reported("not an ESP address"));
        };
        opts.boot_quiet = BOOT_QUIET;
        let port = self.server.open_wired().map_err(|e| TargetError::Open {
            address: record.address.to_string(),
            reason: e.to_string(),
            transient: e.is_transient(),
        })?;
        Ok(Box::new(EspTarget::connect(port, record.address.to_string(), opts).await?))
    }

    /// The port the record names.
    pub fn port(&self) -> String {
        self.server.path().display().to_string()
    }

    /// Invariants 1 and 2 for the module.
    pub fn check(
        &self,
        release: &EspRelease,
        status: Option<&DeviceStatus>,
        violations: &mut Vec<String>,
    ) {
        let reported =
            matches!(status, Some(DeviceStatus::Patched { .. } | DeviceStatus::Unverified { .. }));
        let failed =
            matches!(status, Some(DeviceStatus::Failed { .. } | DeviceStatus::RolledBack { .. }));
        let holds = |at: u32, image: &[u8]| self.device.flash(at, image.len()) == image;
        // Honest success: the reset that checked its health left the new application running.
        if reported {
            match self.device.running() {
                Some(at) if holds(at, &release.new_app) => {}
                Some(at) => violations.push(format!(
                    "honest success: reported {status:?}, but the module runs {} at {at:#x}",
                    if holds(at, &release.old_app) { "the old application" } else { "other bytes" }
                )),
                None => violations.push(format!(
                    "honest success: reported {status:?}, but the module runs no application (in its loader: {})",
                    self.device.in_loader()
                )),
            }
        }
        // Bootable: what a reset from flash starts now (on a copy, so the module is untouched).
        let mut copy = self.device.flash(0, FLASH_SIZE as usize);
        let crash = self.faults.crash_version.as_deref();
        let boot = fieldpatch_lab::esp::boot::boot(&mut copy, self.rollback, crash);
        match boot.running {
            Some(at) if holds(at, &release.old_app) || holds(at, &release.new_app) => {}
            Some(at) => violations.push(format!(
                "bootable: the module boots an application at {at:#x} that is neither the old nor the new one"
            )),
            None => {
                let log = String::from_utf8_lossy(&boot.text);
                let tail: String =
                    log.lines().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect();
                // A bootloader rolls back only between OTA slots: an application written over
                // the factory slot that crashes keeps restarting, rollback or not.
                let no_way_back = !self.rollback || matches!(self.layout, Layout::Factory);
                let crash_loop = crash.is_some()
                    && no_way_back
                    && [OTA_0, OTA_1, FACTORY].iter().any(|&at| holds(at, &release.new_app));
                if let Layout::Ota { .. } = self.layout
                    && !crash_loop
                {
                    violations.push(format!(
                        "bootable: a module with OTA slots boots nothing (its running slot was written?): {tail}"
                    ));
                } else if !failed {
                    violations.push(format!(
                        "bootable: the module boots nothing, and the session says {status:?}: {tail}"
                    ));
                } else if !self.device.in_loader() && !crash_loop {
                    violations.push(format!(
                        "bootable: the module boots nothing and is not in its ROM loader: {tail}"
                    ));
                }
            }
        }
    }
}

fn slot_name(at: u32) -> &'static str {
    if at == OTA_0 { "ota_0" } else { "ota_1" }
}

/// One OTA data entry: sequence, state, the CRC-32 of the sequence.
fn ota_entry(seq: u32, state: u32) -> Vec<u8> {
    let mut e = seq.to_le_bytes().to_vec();
    e.extend_from_slice(&[0xFF; 20]);
    e.extend_from_slice(&state.to_le_bytes());
    e.extend_from_slice(&fieldpatch_core::image::esp::ota_seq_crc(seq).to_le_bytes());
    e
}

/// Deterministic filler bytes.
fn bytes(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 11) as u8
        })
        .collect()
}

/// An ESP32 image: one segment of `data` loaded at `load`, the XOR checksum and the appended
/// SHA-256.
fn image(load: u32, data: &[u8], sha256: &dyn Fn(&[u8]) -> [u8; 32]) -> Vec<u8> {
    let mut img = vec![0xE9, 1, 2, 0x20];
    img.extend_from_slice(&0x4008_0000u32.to_le_bytes());
    img.extend_from_slice(&[0xEE, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0, 0, 0, 1]);
    let mut data = data.to_vec();
    data.resize(data.len().div_ceil(4) * 4, 0);
    img.extend_from_slice(&load.to_le_bytes());
    img.extend_from_slice(&(data.len() as u32).to_le_bytes());
    img.extend_from_slice(&data);
    while (img.len() + 1) % 16 != 0 {
        img.push(0);
    }
    img.push(data.iter().fold(0xEF, |a, b| a ^ b));
    let sha = sha256(&img);
    img.extend_from_slice(&sha);
    img
}

/// An ESP-IDF application reporting `version` in its `esp_app_desc_t`.
fn app(version: &str, seed: u32, sha256: &dyn Fn(&[u8]) -> [u8; 32]) -> Vec<u8> {
    let mut desc = vec![0u8; 256];
    desc[..4].copy_from_slice(&0xABCD_5432u32.to_le_bytes());
    desc[16..16 + version.len()].copy_from_slice(version.as_bytes());
    desc[48..53].copy_from_slice(b"meter");
    desc[112..118].copy_from_slice(b"v5.1.2");
    desc.extend(bytes(APP_LEN, seed));
    image(0x3F40_0020, &desc, sha256)
}

/// An ESP-IDF partition table of `(type, subtype, offset, size, name)` entries (without the
/// optional MD5 entry), padded with 0xFF to its 0xC00 bytes.
fn partition_table(entries: &[(u8, u8, u32, u32, &str)]) -> Vec<u8> {
    let mut t = Vec::new();
    for (ty, sub, offset, size, name) in entries {
        t.extend_from_slice(&[0xAA, 0x50, *ty, *sub]);
        t.extend_from_slice(&offset.to_le_bytes());
        t.extend_from_slice(&size.to_le_bytes());
        let mut n = name.as_bytes().to_vec();
        n.resize(16, 0);
        t.extend_from_slice(&n);
        t.extend_from_slice(&0u32.to_le_bytes());
    }
    t.resize(0xC00, 0xFF);
    t
}
