//! The ESP ROM serial bootloader (ESP8266, ESP32 family): SLIP-framed commands over a serial
//! port, as esptool speaks them with `--no-stub`.
//!
//! - [`slip`]: the framing, robust to boot messages and noise between frames.
//! - [`protocol`]: request/response packets, opcodes, the XOR-0xEF block checksum, the status
//!   bytes and the ROM's error codes.
//! - [`chip`]: chip detection facts (magic word, chip id).
//! - [`port`]: [`EspPort`], a [`crate::transport::Link`] that also drives DTR/RTS and the baud
//!   rate, and [`EspSerial`], the real serial port.
//! - [`reset`]: the classic auto-reset and USB-Serial/JTAG sequences, and "no reset".
//! - [`loader`]: [`EspLoader`]: connect and sync, detect the chip, SPI attach and parameters,
//!   FLASH_BEGIN/DATA/END, SPI_FLASH_MD5, CHANGE_BAUDRATE, a bounded flash read (the SPI flash's
//!   READ command run through the SPI controller's user-command registers with
//!   READ_REG/WRITE_REG, 64 bytes at a time, as esptool runs RDID), run the application, and
//!   reset into it while listening to its boot log.
//! - [`bootlog`]: what an ESP-IDF device prints on UART0 after a reset (ROM, second-stage
//!   bootloader, application start, panics), read for a bounded time and split into boots.
//!
//! Callers hand in bytes that were already verified; [`EspLoader::write_verified`] has the device
//! hash what it wrote and compares it with the MD5 of exactly those bytes.
//!
//! ## Why not the `espflash` crate
//!
//! `espflash` is a complete flasher, but it does not fit behind Fieldpatch's seams: its
//! `Connection` owns a `serialport` port (plus USB port info to pick a reset strategy) and
//! does blocking I/O, so it cannot run over a [`crate::transport::Link`] (or a lab device's
//! pseudo-terminal driven from async code); it reports through its own progress callbacks; and
//! its flashing path is built around images it converts itself (ELF to app image, optional
//! compression and the RAM stub), where Fieldpatch must send the verified bytes as they are. It
//! also brings a large dependency tree for a protocol of a dozen commands. This module speaks
//! the documented ROM protocol directly, checked against esptool through the lab device.

pub mod bootlog;
pub mod chip;
pub mod loader;
pub mod port;
pub mod protocol;
pub mod reset;
pub mod slip;

pub use bootlog::{Boot, BootLog, Listen};
pub use chip::Chip;
pub use loader::{
    ChipInfo, ConnectOptions, EspLoader, FLASH_READ_MAX, FlashId, SPI_READ_MAX, Timeouts,
};
pub use port::{EspPort, EspSerial, ROM_BAUD};
pub use reset::ResetMode;

use crate::transport::TransportError;
use std::time::Duration;

/// Errors talking to an ESP ROM loader.
#[derive(Debug, thiserror::Error)]
pub enum EspError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(
        "no answer from the ESP ROM loader to SYNC after {attempts} attempt(s) with reset mode \
         {reset}: put the chip in download mode (hold BOOT/GPIO0 low while pressing EN/RESET) or \
         choose the reset mode that fits the adapter, and check the port, cable and power"
    )]
    NoSync { attempts: u32, reset: &'static str },
    #[error(
        "the ESP ROM loader did not answer {command} within {after:?}: the device stalled or left \
         download mode; reset it into download mode and try again"
    )]
    Timeout { command: &'static str, after: Duration },
    #[error("the ESP ROM loader refused {command}: {meaning} (error 0x{code:02X}); {advice}")]
    Rom { command: &'static str, code: u8, meaning: &'static str, advice: &'static str },
    #[error(
        "flash write failed at 0x{address:X}: the flash did not keep the data (read back differed); \
         the device stays in its ROM loader and can be written again; if this repeats, the flash \
         may be worn or write-protected"
    )]
    FlashWrite { address: u32 },
    #[error("this ESP ROM loader does not support {command}")]
    Unsupported { command: &'static str },
    #[error("malformed answer to {command} from the ESP ROM loader: {detail}")]
    Malformed { command: &'static str, detail: String },
    #[error("unknown ESP chip ({detail}): this version of Fieldpatch does not know it")]
    UnknownChip { detail: String },
    #[error(
        "cannot drive DTR/RTS on this port for the {mode} reset ({source}): use the no-reset \
         mode and put the device in download mode by hand (hold BOOT, press EN)"
    )]
    LinesUnsupported { mode: &'static str, source: std::io::Error },
    #[error(
        "flash offset 0x{offset:X} is not on a 4 KiB sector boundary: the ROM erases whole \
         sectors, so the write would erase bytes before it; use a multiple of 0x1000"
    )]
    Unaligned { offset: u32 },
    #[error(
        "{len} bytes at 0x{offset:X} do not fit the device's {flash_size}-byte flash: check the \
         image and offset against the device's flash size"
    )]
    TooLarge { offset: u32, len: usize, flash_size: u32 },
    #[error(
        "flash check failed for {len} bytes at 0x{offset:X}: the device hashes them to MD5 \
         {device}, the bytes sent hash to {expected}; the flash does not hold the verified image, \
         do not boot it: write it again"
    )]
    Md5Mismatch { offset: u32, len: u32, expected: String, device: String },
    #[error("baud rate {0} is outside what the ESP ROM loader can use (9600 to 5000000)")]
    BadBaud(u32),
    #[error("cannot read {len} bytes of flash at 0x{offset:X}: {reason}")]
    FlashRead { offset: u32, len: usize, reason: String },
    #[error(
        "the device cannot be reset into its application from here: reset mode {mode} drives no \
         EN line; power-cycle the device (BOOT released) to start it"
    )]
    NoResetLine { mode: &'static str },
}

impl EspError {
    fn rom(cmd: protocol::Command, code: u8) -> EspError {
        use protocol::rom_error::*;
        let advice = match code {
            CHECKSUM => "a block was corrupted on the line: check the cable or lower the baud rate",
            FLASH_WRITE => {
                "the device stays in its ROM loader and can be written again; if this repeats, \
                 the flash may be worn or write-protected"
            }
            INVALID_MESSAGE => {
                "the ROM did not understand the request: is this the chip and loader expected?"
            }
            INVALID_PARAMETER | FAILED_TO_ACT | FLASH_READ_LENGTH => {
                "check the offset and size against the device's flash"
            }
            _ => "reset the device into download mode and try again",
        };
        EspError::Rom {
            command: cmd.name(),
            code,
            meaning: protocol::rom_error_meaning(code),
            advice,
        }
    }

    /// Whether the same operation may succeed when tried again (a dropped, garbled or stalled
    /// exchange, a block corrupted on the line, a flash that did not match).
    pub fn is_transient(&self) -> bool {
        match self {
            EspError::Transport(e) => e.is_transient(),
            EspError::Timeout { .. } | EspError::NoSync { .. } | EspError::Md5Mismatch { .. } => {
                true
            }
            EspError::Rom { code, .. } => *code == protocol::rom_error::CHECKSUM,
            _ => false,
        }
    }

    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            EspError::Transport(e) => e.code(),
            EspError::NoSync { .. } => "esp_no_sync",
            EspError::Timeout { .. } => "esp_timeout",
            EspError::Rom { .. } => "esp_rom_error",
            EspError::FlashWrite { .. } => "esp_flash_write",
            EspError::Unsupported { .. } => "esp_unsupported",
            EspError::Malformed { .. } => "esp_malformed",
            EspError::UnknownChip { .. } => "esp_unknown_chip",
            EspError::LinesUnsupported { .. } => "esp_reset_lines",
            EspError::Unaligned { .. } => "esp_unaligned",
            EspError::TooLarge { .. } => "esp_too_large",
            EspError::Md5Mismatch { .. } => "esp_md5_mismatch",
            EspError::BadBaud(_) => "esp_bad_baud",
            EspError::FlashRead { .. } => "esp_flash_read",
            EspError::NoResetLine { .. } => "esp_no_reset_line",
        }
    }
}
