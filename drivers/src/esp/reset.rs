//! Reset sequences over the DTR/RTS lines, as Espressif's boards wire them and esptool drives them.
//!
//! On a classic dev board (USB-UART bridge), RTS drives EN (reset, active low through a
//! transistor) and DTR drives GPIO0 (BOOT); holding GPIO0 low while EN rises enters the ROM
//! loader. Chips with the built-in USB-Serial/JTAG peripheral interpret the same lines in their
//! own way and need the sequence that passes through (1,1) instead of (0,0). Adapters without
//! those lines (or a pseudo-terminal) use [`ResetMode::NoReset`]: the technician holds BOOT and
//! presses EN, and the loader only syncs.

use super::EspError;
use super::port::EspPort;
use std::time::Duration;

/// How to get the chip into (and out of) its ROM loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ResetMode {
    /// USB-UART bridge with the auto-reset circuit (RTS = EN, DTR = GPIO0).
    Classic,
    /// The chip's own USB-Serial/JTAG peripheral (ESP32-C3, -S3, -C6, ...).
    UsbSerialJtag,
    /// Leave the lines alone: the device is already in download mode.
    NoReset,
}

impl ResetMode {
    /// The name used in messages and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ResetMode::Classic => "classic",
            ResetMode::UsbSerialJtag => "usb-serial-jtag",
            ResetMode::NoReset => "no-reset",
        }
    }
}

/// How long EN is held low in the classic sequence, and how long GPIO0 is held after EN rises.
const RESET_HOLD: Duration = Duration::from_millis(100);
const BOOT_HOLD: Duration = Duration::from_millis(50);

fn line<P: EspPort>(
    port: &mut P,
    mode: ResetMode,
    dtr: Option<bool>,
    rts: Option<bool>,
) -> Result<(), EspError> {
    let map = |source: std::io::Error| {
        if no_modem_lines(&source) {
            EspError::LinesUnsupported { mode: mode.name(), source }
        } else {
            EspError::Transport(crate::transport::TransportError::SerialIo(source))
        }
    };
    if let Some(level) = dtr {
        port.set_dtr(level).map_err(map)?;
    }
    if let Some(level) = rts {
        port.set_rts(level).map_err(map)?;
    }
    Ok(())
}

/// Whether a modem-line error means the port has no such lines (ENOTTY, EINVAL: ptys, some USB
/// ROM-loader interfaces). `serialport` passes the OS error on as text only, so its wording is
/// matched too.
fn no_modem_lines(e: &std::io::Error) -> bool {
    if let Some(code) = e.raw_os_error() {
        return code == 25 || code == 22;
    }
    let text = e.to_string().to_ascii_lowercase();
    ["not a typewriter", "inappropriate ioctl", "invalid argument"].iter().any(|t| text.contains(t))
}

/// Reset the chip into its ROM loader with `mode` (nothing for [`ResetMode::NoReset`]).
pub async fn enter_loader<P: EspPort>(port: &mut P, mode: ResetMode) -> Result<(), EspError> {
    match mode {
        ResetMode::NoReset => Ok(()),
        ResetMode::Classic => {
            line(port, mode, Some(false), Some(true))?; // IO0 high, EN low: in reset
            tokio::time::sleep(RESET_HOLD).await;
            line(port, mode, Some(true), Some(false))?; // IO0 low, EN high: boots into the loader
            tokio::time::sleep(BOOT_HOLD).await;
            line(port, mode, Some(false), None) // IO0 released
        }
        ResetMode::UsbSerialJtag => {
            line(port, mode, Some(false), Some(false))?; // idle
            tokio::time::sleep(RESET_HOLD).await;
            line(port, mode, Some(true), Some(false))?; // IO0 low
            tokio::time::sleep(RESET_HOLD).await;
            line(port, mode, None, Some(true))?; // reset, passing through (1,1)
            line(port, mode, Some(false), Some(true))?;
            tokio::time::sleep(RESET_HOLD).await;
            line(port, mode, Some(false), Some(false)) // out of reset
        }
    }
}

/// Pulse EN (RTS) to restart the chip into its application.
pub async fn hard_reset<P: EspPort>(port: &mut P, mode: ResetMode) -> Result<(), EspError> {
    line(port, mode, None, Some(true))?;
    if mode == ResetMode::UsbSerialJtag {
        tokio::time::sleep(Duration::from_millis(200)).await;
        line(port, mode, None, Some(false))?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    } else {
        tokio::time::sleep(RESET_HOLD).await;
        line(port, mode, None, Some(false))?;
    }
    Ok(())
}
