//! The simulated ESP32 on a real pty: one thread reads the line, decodes SLIP frames, lets the
//! device answer and writes the answers back (SLIP-framed), then applies a baud change. With
//! [`super::EspConfig::paced`] both directions are paced at the current baud rate (8N1).
//!
//! The thread runs for the life of the process (a pty read cannot be interrupted); the pty stays
//! open as long.

use super::EspDevice;
use crate::pty::{Pty, PtyError};
use crate::smp::Pacer;
use fieldpatch_drivers::esp::slip::{self, SlipDecoder};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest frame the simulated ROM accepts (a 16 KiB block plus its header, escaped).
const MAX_FRAME: usize = 0x4000 + 64;

/// A device served on a pty.
#[derive(Debug)]
pub struct EspServer {
    path: PathBuf,
    pty: Arc<Pty>,
}

impl EspServer {
    /// The pty path a client opens.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reset the device into download mode (BOOT held, EN pressed): the ROM's banner appears on
    /// the line.
    pub fn enter_download_mode(&self, device: &EspDevice) {
        let banner = device.enter_download_mode();
        let _ = self.pty.controller().write_all(&banner);
    }
}

/// Serve `device` on a new pty.
pub fn serve_pty(device: EspDevice) -> Result<EspServer, PtyError> {
    let pty = Arc::new(Pty::open()?);
    let mut rx = pty.controller_clone().map_err(PtyError::Name)?;
    let mut tx = pty.controller_clone().map_err(PtyError::Name)?;
    let paced = device.lock().config.paced;
    let keep = pty.clone();
    std::thread::Builder::new()
        .name("esp-lab".into())
        .spawn(move || {
            let _pty = keep;
            let rate = |baud: u32| f64::from(baud.max(300)) / 10.0;
            let mut rx_pacer = Pacer::new(rate(device.baud()));
            let mut tx_pacer = Pacer::new(rate(device.baud()));
            let mut decoder = SlipDecoder::new(MAX_FRAME);
            let mut buf = [0u8; 4096];
            loop {
                let n = match rx.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        continue;
                    }
                    Ok(n) => n,
                };
                if paced {
                    rx_pacer.consume(n);
                }
                for frame in decoder.push(&buf[..n]) {
                    // A frame the line garbled is lost, as on the real UART.
                    let Ok(frame) = frame else { continue };
                    let outcome = device.handle(&frame);
                    for reply in &outcome.replies {
                        let wire = slip::encode(reply);
                        for piece in wire.chunks(64) {
                            if tx.write_all(piece).is_err() {
                                break;
                            }
                            if paced {
                                tx_pacer.consume(piece.len());
                            }
                        }
                    }
                    if !outcome.text.is_empty() {
                        let _ = tx.write_all(&outcome.text);
                    }
                    if let Some(baud) = outcome.baud_after {
                        rx_pacer = Pacer::new(rate(baud));
                        tx_pacer = Pacer::new(rate(baud));
                    }
                }
            }
        })
        .map_err(PtyError::Open)?;
    let path = pty.path().to_path_buf();
    Ok(EspServer { path, pty })
}
