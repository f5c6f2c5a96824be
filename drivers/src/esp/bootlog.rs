//! What an ESP-IDF device prints on UART0 after a reset, read for a bounded time and split into
//! boots.
//!
//! After a reset the ROM prints its banner and reset reason (`rst:0x1 (POWERON_RESET),boot:0x13
//! (SPI_FAST_FLASH_BOOT)`), the second-stage bootloader its partition table and the slot it
//! starts (`I (279) boot: Loaded app from partition at offset 0x10000`), and the application its
//! descriptor (`I (319) cpu_start: App version:      1.3.0`; `app_init:` instead of `cpu_start:`
//! from ESP-IDF 5.1). An application that crashes prints a panic (`Guru Meditation Error`,
//! `abort() was called`, `assert failed:`) and `Rebooting...`, and the ROM's reset line starts
//! the next boot, in which a bootloader with rollback enabled may start another slot.
//!
//! [`BootLog`] keeps, per boot, the reset line, the offset loaded, the version reported, the
//! first crash line and the lines themselves (bounded: [`MAX_LINES`] per boot, [`MAX_LINE`]
//! characters per line, colour codes removed). [`listen`] reads the port until the line has been
//! quiet for [`Listen::quiet`] after the device printed something, until [`Listen::deadline`],
//! or until [`Listen::max_bytes`]; nothing the device prints can make it panic or grow without
//! bound. A crash later than `quiet` after the device's last line is not seen.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use super::EspError;
use super::port::{EspPort, ROM_BAUD};
use crate::transport::TransportError;
use std::time::{Duration, Instant};

/// Lines kept per boot (the first ones; a crash line is kept beyond them).
pub const MAX_LINES: usize = 200;
/// Characters kept per line.
pub const MAX_LINE: usize = 300;
/// Boots kept (a boot loop adds one per crash).
pub const MAX_BOOTS: usize = 16;

/// How long and how to listen after a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    /// The console's baud rate (ESP-IDF's default is 115200).
    pub console_baud: u32,
    /// Stop once the line has been quiet this long after the device printed something.
    pub quiet: Duration,
    /// Stop after this long in any case.
    pub deadline: Duration,
    /// Stop after this many bytes.
    pub max_bytes: usize,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            console_baud: ROM_BAUD,
            quiet: Duration::from_secs(2),
            deadline: Duration::from_secs(15),
            max_bytes: 256 * 1024,
        }
    }
}

/// One boot: from a ROM reset line (or the start of listening) to the next.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Boot {
    /// The ROM's reset line, where it was seen.
    pub reset: Option<String>,
    /// The flash offset the second-stage bootloader loaded the application from.
    pub loaded: Option<u32>,
    /// The version the application reported.
    pub version: Option<String>,
    /// The first line of a panic, abort or reboot.
    pub crash: Option<String>,
    /// The boot's lines as printed (bounded).
    pub lines: Vec<String>,
}

/// A boot log split into boots.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BootLog {
    pub boots: Vec<Boot>,
    /// Bytes received.
    pub bytes: usize,
    #[serde(skip)]
    partial: Vec<u8>,
}

const CRASH_MARKS: [&str; 7] = [
    "Guru Meditation Error",
    "abort() was called",
    "assert failed:",
    "Stack smashing protect failure",
    "stack overflow in task",
    "Brownout detector was triggered",
    "Rebooting...",
];

impl BootLog {
    /// Parse a whole log at once.
    pub fn parse(text: &[u8]) -> BootLog {
        let mut log = BootLog::default();
        log.push(text);
        log.finish();
        log
    }

    /// Feed received bytes; complete lines are taken in.
    pub fn push(&mut self, bytes: &[u8]) {
        // A count compared with a byte bound: it stops at usize::MAX rather than wrap.
        self.bytes = self.bytes.saturating_add(bytes.len());
        for &b in bytes {
            if b == b'\n' {
                let line = std::mem::take(&mut self.partial);
                self.line(&line);
            } else if self.partial.len() < MAX_LINE * 4 {
                self.partial.push(b);
            }
        }
    }

    /// Take in a last line that did not end with a newline.
    pub fn finish(&mut self) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(&line);
        }
    }

    fn line(&mut self, raw: &[u8]) {
        let text = clean(raw);
        if text.is_empty() {
            return;
        }
        let trimmed = text.trim_start();
        // The ROM's banner (ESP32: `ets Jun  8 2016`, newer chips: `ESP-ROM:`) and its reset
        // line start a boot; so does a second application load without them.
        let banner = trimmed.starts_with("ets ") || trimmed.starts_with("ESP-ROM:");
        let reset = trimmed.starts_with("rst:");
        let loaded = loaded_offset(&text);
        let new_boot = match self.boots.last() {
            None => true,
            Some(b) => {
                banner && !b.lines.is_empty()
                    || reset && (b.reset.is_some() || b.loaded.is_some())
                    || loaded.is_some() && b.loaded.is_some()
            }
        };
        if new_boot {
            if self.boots.len() >= MAX_BOOTS {
                return;
            }
            self.boots.push(Boot::default());
        }
        let Some(boot) = self.boots.last_mut() else { return };
        if reset && boot.reset.is_none() {
            boot.reset = Some(text.clone());
        }
        if let Some(at) = loaded {
            boot.loaded = Some(at);
        }
        if let Some(v) = app_version(&text)
            && boot.version.is_none()
        {
            boot.version = Some(v);
        }
        let first_crash = boot.crash.is_none() && CRASH_MARKS.iter().any(|m| text.contains(m));
        if first_crash {
            boot.crash = Some(text.clone());
        }
        if boot.lines.len() < MAX_LINES || first_crash {
            boot.lines.push(text);
        }
    }

    /// The last `n` lines printed, across boots.
    pub fn tail(&self, n: usize) -> Vec<&str> {
        let all: Vec<&str> =
            self.boots.iter().flat_map(|b| b.lines.iter().map(String::as_str)).collect();
        let skip = all.len().saturating_sub(n);
        all.into_iter().skip(skip).collect()
    }
}

/// Printable text of one line: colour codes and control characters removed, bounded.
fn clean(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... letter
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        if c.is_control() && c != '\t' {
            continue;
        }
        if out.chars().count() >= MAX_LINE {
            break;
        }
        out.push(c);
    }
    out.trim_end().to_string()
}

fn loaded_offset(line: &str) -> Option<u32> {
    let (_, rest) = line.split_once("Loaded app from partition at offset ")?;
    let hex = rest.trim().trim_start_matches("0x").trim_start_matches("0X");
    let digits: String = hex.chars().take_while(char::is_ascii_hexdigit).collect();
    u32::from_str_radix(&digits, 16).ok()
}

fn app_version(line: &str) -> Option<String> {
    let (tag, rest) = line.split_once("App version:")?;
    if !(tag.contains("cpu_start") || tag.contains("app_init")) {
        return None;
    }
    let v = rest.trim();
    (!v.is_empty()).then(|| v.to_string())
}

/// Read what the device prints until the line is quiet, the deadline passes or the byte bound
/// is reached (see [`Listen`]).
pub async fn listen<P: EspPort>(port: &mut P, opts: &Listen) -> Result<BootLog, EspError> {
    let mut log = BootLog::default();
    let start = Instant::now();
    loop {
        let left = opts.deadline.saturating_sub(start.elapsed());
        if left.is_zero() || log.bytes >= opts.max_bytes {
            break;
        }
        let wait = if log.bytes == 0 { left } else { left.min(opts.quiet) };
        match port.recv_raw(wait).await {
            Ok(bytes) => log.push(&bytes),
            Err(TransportError::Timeout(_)) => {
                if log.bytes > 0 {
                    break;
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    log.finish();
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEALTHY: &str = "ets Jun  8 2016 00:22:57\r\n\r\nrst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n\
        \x1b[0;32mI (29) boot: ESP-IDF v5.1.2 2nd stage bootloader\x1b[0m\r\n\
        I (279) boot: Loaded app from partition at offset 0x110000\r\n\
        I (319) cpu_start: App version:      1.3.0\r\n\
        I (400) main_task: Calling app_main()\r\n";

    #[test]
    fn a_healthy_boot_names_the_slot_and_the_version() {
        let log = BootLog::parse(HEALTHY.as_bytes());
        assert_eq!(log.boots.len(), 1, "{log:#?}");
        let b = &log.boots[0];
        assert_eq!(b.loaded, Some(0x110000));
        assert_eq!(b.version.as_deref(), Some("1.3.0"));
        assert!(b.reset.as_deref().unwrap().contains("POWERON_RESET"));
        assert_eq!(b.crash, None);
        assert!(b.lines.iter().any(|l| l == "I (29) boot: ESP-IDF v5.1.2 2nd stage bootloader"));
    }

    #[test]
    fn a_crash_and_the_fallback_boot_are_two_boots() {
        let text = format!(
            "{HEALTHY}Guru Meditation Error: Core  0 panic'ed (LoadProhibited). Exception was unhandled.\r\n\
             Rebooting...\r\nets Jun  8 2016 00:22:57\r\n\r\nrst:0xc (SW_CPU_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n\
             I (279) boot: Loaded app from partition at offset 0x10000\r\n\
             I (20) app_init: App version:      1.2.0\r\n"
        );
        let log = BootLog::parse(text.as_bytes());
        assert_eq!(log.boots.len(), 2, "{log:#?}");
        assert!(log.boots[0].crash.as_deref().unwrap().contains("Guru Meditation"));
        assert_eq!(log.boots[1].loaded, Some(0x10000));
        assert_eq!(log.boots[1].version.as_deref(), Some("1.2.0"));
        assert_eq!(log.boots[1].crash, None);
        assert_eq!(log.tail(1), vec!["I (20) app_init: App version:      1.2.0"]);
    }

    #[test]
    fn garbage_is_bounded_and_never_panics() {
        let mut x: u32 = 99;
        let mut log = BootLog::default();
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let chunk: Vec<u8> = (0..(x % 700)).map(|i| (x >> (i % 24)) as u8).collect();
            log.push(&chunk);
            log.push(b"rst:0x1\nI (1) boot: Loaded app from partition at offset 0xZZ\n");
        }
        log.finish();
        assert!(log.boots.len() <= MAX_BOOTS);
        assert!(log.boots.iter().all(|b| b.lines.len() <= MAX_LINES + 1));
        assert!(log.boots.iter().flat_map(|b| &b.lines).all(|l| l.chars().count() <= MAX_LINE));
    }
}
