//! What the simulated module does when it is reset into its application (EN released with
//! GPIO0 high): the ROM loads the second-stage bootloader at 0x1000, which reads the partition
//! table at 0x8000 and the OTA data, picks the application slot as ESP-IDF's bootloader does,
//! checks the slot's image and starts it; the application prints its descriptor and runs, or
//! (fault [`super::EspFaults::crash_version`]) panics and reboots. Everything it prints is the
//! boot log ESP-IDF writes on UART0, in ESP-IDF's formats.
//!
//! The slot choice follows ESP-IDF: the valid OTA data entry (sequence set, CRC-32 of the
//! sequence right, state neither INVALID nor ABORTED) with the highest sequence selects
//! `ota_[(seq - 1) % slots]`; without one, the factory application, else `ota_0`. With rollback
//! enabled ([`super::EspConfig::rollback`], `CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE`) an entry in
//! state NEW is set to PENDING_VERIFY as it boots, and one still PENDING_VERIFY at the next boot
//! (the application never marked itself valid) is set to ABORTED, so the previous slot boots:
//! the device's own rollback. A slot whose image does not check is skipped for the next one.
//!
//! An image is checked like the bootloader checks it: magic 0xE9, at most 16 segments inside the
//! partition, the XOR checksum, the appended SHA-256 when the header says so. The application's
//! version is the one in its `esp_app_desc_t` (magic 0xABCD5432 at the start of the first
//! segment's data). The endless boot loop of an application that always crashes is cut after
//! [`MAX_BOOTS`] boots.

use md5::Md5;
use sha2::{Digest, Sha256};

/// Boots simulated after one reset (a crash loop is cut there).
pub const MAX_BOOTS: usize = 4;

const BOOTLOADER_OFFSET: usize = 0x1000;
const TABLE_OFFSET: usize = 0x8000;
const TABLE_MAX: usize = 0xC00;
const SECTOR: usize = 0x1000;
const APP_DESC_MAGIC: u32 = 0xABCD_5432;
/// OTA image states.
const STATE_NEW: u32 = 0;
const STATE_PENDING_VERIFY: u32 = 1;
const STATE_INVALID: u32 = 3;
const STATE_ABORTED: u32 = 4;

/// What one reset led to.
#[derive(Debug, Default)]
pub struct BootRun {
    /// The boot log.
    pub text: Vec<u8>,
    /// The flash offset of the application left running, if one runs.
    pub running: Option<u32>,
    /// Flash ranges the bootloader wrote (OTA states).
    pub writes: Vec<(usize, usize)>,
}

#[derive(Debug, Clone)]
struct Part {
    name: String,
    type_id: u8,
    subtype: u8,
    offset: usize,
    size: usize,
}

struct Clock(u32);

impl Clock {
    fn line(&mut self, out: &mut Vec<u8>, level: char, tag: &str, text: &str) {
        self.0 += 7;
        out.extend_from_slice(format!("{level} ({}) {tag}: {text}\r\n", self.0).as_bytes());
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// CRC-32 of an OTA sequence number as ESP-IDF keeps it (`esp_rom_crc32_le(UINT32_MAX, ...)`).
pub fn ota_crc(seq: u32) -> u32 {
    let mut c: u32 = 0;
    for b in seq.to_le_bytes() {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0xEDB8_8320 } else { c >> 1 };
        }
    }
    !c
}

/// Why an image at `at` does not boot, in ESP-IDF's words; its version when it does.
fn check_image(flash: &[u8], at: usize, limit: usize) -> Result<Option<String>, String> {
    let img = flash.get(at..limit.min(flash.len())).unwrap_or_default();
    if img.first() != Some(&0xE9) {
        return Err(format!("image at 0x{at:x} has invalid magic byte (nothing flashed here?)"));
    }
    let corrupt = || "Image length is invalid or the image is corrupt".to_string();
    let count = img.get(1).copied().unwrap_or(0) as usize;
    if count == 0 || count > 16 {
        return Err(format!("image at 0x{at:x} has invalid segment count {count}"));
    }
    let hash_appended = img.get(23).copied() == Some(1);
    let mut pos = 24;
    let mut sum = 0xEFu8;
    let mut version = None;
    for i in 0..count {
        let len = u32_at(img, pos + 4).ok_or_else(corrupt)? as usize;
        let data = img.get(pos + 8..pos + 8 + len).ok_or_else(corrupt)?;
        if i == 0 && u32_at(data, 0) == Some(APP_DESC_MAGIC) && data.len() >= 48 {
            version = Some(c_string(&data[16..48]));
        }
        sum = data.iter().fold(sum, |a, b| a ^ b);
        pos += 8 + len;
    }
    while (pos + 1) % 16 != 0 {
        pos += 1;
    }
    let stored = *img.get(pos).ok_or_else(corrupt)?;
    if stored != sum {
        return Err(format!("Checksum failed. Calculated 0x{sum:x} read 0x{stored:x}"));
    }
    pos += 1;
    if hash_appended {
        let want = img.get(pos..pos + 32).ok_or_else(corrupt)?;
        if Sha256::digest(&img[..pos])[..] != *want {
            return Err("Image hash failed - image is corrupt".into());
        }
    }
    Ok(version)
}

fn partition_table(flash: &[u8]) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut md5 = Md5::new();
    for i in 0..TABLE_MAX / 32 {
        let at = TABLE_OFFSET + i * 32;
        let Some(e) = flash.get(at..at + 32) else { break };
        if e.iter().all(|&b| b == 0xFF) {
            break;
        }
        if e[..2] == [0xEB, 0xEB] {
            if md5.clone().finalize()[..] != e[16..] {
                return Err("Partition table MD5 mismatch".into());
            }
            continue;
        }
        if e[..2] != [0xAA, 0x50] {
            return Err(format!("partition {i} invalid magic number 0x{:02x}{:02x}", e[1], e[0]));
        }
        md5.update(e);
        parts.push(Part {
            name: c_string(&e[12..28]),
            type_id: e[2],
            subtype: e[3],
            offset: u32_at(e, 4).unwrap_or(0) as usize,
            size: u32_at(e, 8).unwrap_or(0) as usize,
        });
    }
    if parts.is_empty() {
        return Err("partition 0 invalid magic number 0xffff".into());
    }
    Ok(parts)
}

fn usage(p: &Part) -> &'static str {
    match (p.type_id, p.subtype) {
        (0, 0) => "factory app",
        (0, 0x10..=0x1F) => "OTA app",
        (1, 0) => "OTA data",
        (1, 1) => "RF data",
        (1, 2) => "WiFi data",
        _ => "Unknown data",
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    seq: u32,
    state: u32,
    crc: u32,
}

impl Entry {
    fn valid(&self) -> bool {
        self.seq != u32::MAX
            && self.crc == ota_crc(self.seq)
            && self.state != STATE_INVALID
            && self.state != STATE_ABORTED
    }
}

fn set_state(flash: &mut [u8], writes: &mut Vec<(usize, usize)>, entry_at: usize, state: u32) {
    let at = entry_at + 24;
    // A state change only clears bits (NEW -> PENDING_VERIFY -> ABORTED is not monotone in
    // bits, so ESP-IDF rewrites the sector; the simulation writes the word).
    flash[at..at + 4].copy_from_slice(&state.to_le_bytes());
    writes.push((at, at + 4));
}

/// Reset into the application: simulate the ROM, the bootloader and the application, for at
/// most [`MAX_BOOTS`] boots.
pub fn boot(flash: &mut [u8], rollback: bool, crash_version: Option<&str>) -> BootRun {
    let mut run = BootRun::default();
    let mut clock = Clock(20);
    let mut reset = "rst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)";
    for _ in 0..MAX_BOOTS {
        let out = &mut run.text;
        out.extend_from_slice(format!("ets Jun  8 2016 00:22:57\r\n\r\n{reset}\r\n").as_bytes());
        reset = "rst:0xc (SW_CPU_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)";
        if check_image(flash, BOOTLOADER_OFFSET, TABLE_OFFSET).is_err() {
            // The ROM finds no bootloader; a real chip prints this again and again.
            let word = u32_at(flash, BOOTLOADER_OFFSET).unwrap_or(u32::MAX);
            out.extend_from_slice(format!("invalid header: 0x{word:08x}\r\n").as_bytes());
            return run;
        }
        clock.line(out, 'I', "boot", "ESP-IDF v5.1.2 2nd stage bootloader");
        clock.line(out, 'I', "boot", "compile time Jan  1 2024 00:00:00");
        let parts = match partition_table(flash) {
            Ok(p) => p,
            Err(why) => {
                clock.line(out, 'E', "flash_parts", &why);
                clock.line(out, 'E', "boot", "Failed to verify partition table");
                clock.line(out, 'E', "boot", "load partition table error!");
                return run;
            }
        };
        clock.line(out, 'I', "boot", "Partition Table:");
        clock.line(out, 'I', "boot", "## Label            Usage          Type ST Offset   Length");
        for (i, p) in parts.iter().enumerate() {
            let text = format!(
                "{i:2} {:<16} {:<16} {:02x} {:02x} {:08x} {:08x}",
                p.name,
                usage(p),
                p.type_id,
                p.subtype,
                p.offset,
                p.size
            );
            clock.line(out, 'I', "boot", &text);
        }
        clock.line(out, 'I', "boot", "End of partition table");

        let mut slots: Vec<&Part> =
            parts.iter().filter(|p| p.type_id == 0 && (0x10..=0x1F).contains(&p.subtype)).collect();
        slots.sort_by_key(|p| p.subtype);
        let factory = parts.iter().find(|p| p.type_id == 0 && p.subtype == 0);
        let otadata = parts.iter().find(|p| p.type_id == 1 && p.subtype == 0);
        let mut chosen: Option<Part> = None;
        if let Some(od) = otadata
            && !slots.is_empty()
        {
            let read = |flash: &[u8], at: usize| Entry {
                seq: u32_at(flash, at).unwrap_or(u32::MAX),
                state: u32_at(flash, at + 24).unwrap_or(u32::MAX),
                crc: u32_at(flash, at + 28).unwrap_or(0),
            };
            let addrs = [od.offset, od.offset + SECTOR];
            let active = |flash: &[u8]| {
                addrs
                    .iter()
                    .map(|&a| (a, read(flash, a)))
                    .filter(|(_, e)| e.valid())
                    .max_by_key(|(_, e)| e.seq)
            };
            let mut found = active(flash);
            if rollback
                && let Some((at, e)) = found
                && e.state == STATE_PENDING_VERIFY
            {
                let slot = slots[(e.seq.wrapping_sub(1) as usize) % slots.len()];
                clock.line(
                    out,
                    'W',
                    "boot",
                    &format!(
                        "{} was not marked valid by its application (pending verify): aborted, rolling back",
                        slot.name
                    ),
                );
                set_state(flash, &mut run.writes, at, STATE_ABORTED);
                found = active(flash);
            }
            if let Some((at, e)) = found {
                if rollback && e.state == STATE_NEW {
                    set_state(flash, &mut run.writes, at, STATE_PENDING_VERIFY);
                }
                chosen = Some(slots[(e.seq.wrapping_sub(1) as usize) % slots.len()].clone());
            }
        }
        let chosen =
            chosen.or_else(|| factory.cloned()).or_else(|| slots.first().map(|p| (*p).clone()));
        // The chosen slot, then every other application partition, as the bootloader tries them.
        let mut order: Vec<Part> = chosen.into_iter().collect();
        for p in parts.iter().filter(|p| p.type_id == 0) {
            if !order.iter().any(|q| q.offset == p.offset) {
                order.push(p.clone());
            }
        }
        let mut started = None;
        for p in &order {
            match check_image(flash, p.offset, p.offset + p.size) {
                Ok(version) => {
                    started = Some((p.clone(), version));
                    break;
                }
                Err(why) => {
                    clock.line(out, 'E', "esp_image", &why);
                    let what = if p.subtype == 0 {
                        "Factory app partition is not bootable".to_string()
                    } else {
                        format!("OTA app partition slot {} is not bootable", p.subtype & 0x0F)
                    };
                    clock.line(out, 'E', "boot", &what);
                }
            }
        }
        let Some((part, version)) = started else {
            clock.line(out, 'E', "boot", "No bootable app partitions in the partition table");
            return run;
        };
        let loaded = format!("Loaded app from partition at offset 0x{:x}", part.offset);
        clock.line(out, 'I', "boot", &loaded);
        clock.line(out, 'I', "boot", "Disabling RNG early entropy source...");
        clock.line(out, 'I', "cpu_start", "Pro cpu start user code");
        clock.line(out, 'I', "app_init", "Application information:");
        let shown = version.clone().unwrap_or_default();
        clock.line(out, 'I', "app_init", &format!("App version:      {shown}"));
        clock.line(out, 'I', "app_init", "ESP-IDF:          v5.1.2");
        clock.line(out, 'I', "main_task", "Calling app_main()");
        if crash_version.is_some() && version.as_deref() == crash_version {
            out.extend_from_slice(
                b"Guru Meditation Error: Core  0 panic'ed (LoadProhibited). Exception was unhandled.\r\n\r\n\
                  Core  0 register dump:\r\nPC      : 0x400d1f2a  PS      : 0x00060a30  A0      : 0x800d2b1c\r\n\r\n\
                  Backtrace: 0x400d1f27:0x3ffb2560 0x400d2b19:0x3ffb2580\r\n\r\nRebooting...\r\n",
            );
            continue;
        }
        run.running = Some(part.offset as u32);
        return run;
    }
    run
}
