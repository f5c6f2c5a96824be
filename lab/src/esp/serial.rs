//! The simulated ESP32 on a real pty: one thread reads the line, decodes SLIP frames, lets the
//! device answer and writes the answers back (SLIP-framed), then applies a baud change. With
//! [`super::EspConfig::paced`] both directions are paced at the current baud rate (8N1).
//!
//! The thread runs for the life of the process (a pty read cannot be interrupted); the pty stays
//! open as long.
//!
//! A pty has no modem lines. [`EspServer::open_wired`] opens the pty with a [`WiredPort`]: a
//! [`EspSerial`] whose DTR and RTS drive the module's EN and GPIO0 through the classic
//! auto-reset circuit of a USB-UART bridge (two transistors: EN low while RTS is asserted and DTR
//! is not, GPIO0 low while DTR is asserted and RTS is not; EN's RC delay lets the chip out of
//! reset only once the lines have settled), so the reset sequences of
//! [`fieldpatch_drivers::esp::reset`] reset the simulated chip into its loader or its
//! application, and what the chip prints then appears on the line.

use super::EspDevice;
use crate::pty::{Pty, PtyError};
use crate::smp::Pacer;
use fieldpatch_drivers::esp::slip::{self, SlipDecoder};
use fieldpatch_drivers::esp::{EspPort, EspSerial, ROM_BAUD};
use fieldpatch_drivers::transport::{Link, TransportError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Largest frame the simulated ROM accepts (a 16 KiB block plus its header, escaped).
const MAX_FRAME: usize = 0x4000 + 64;

/// A device served on a pty.
#[derive(Debug)]
pub struct EspServer {
    path: PathBuf,
    pty: Arc<Pty>,
    device: EspDevice,
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

    /// Open the pty as a port whose DTR/RTS are wired to the module (see the module docs).
    pub fn open_wired(&self) -> Result<WiredPort, TransportError> {
        let serial = EspSerial::open(&self.path.to_string_lossy(), ROM_BAUD)?;
        Ok(WiredPort {
            serial,
            device: self.device.clone(),
            pty: self.pty.clone(),
            dtr: false,
            rts: false,
            releasing: false,
        })
    }
}

/// A serial port to the lab module with the classic auto-reset circuit (see the module docs).
pub struct WiredPort {
    serial: EspSerial,
    device: EspDevice,
    pty: Arc<Pty>,
    dtr: bool,
    rts: bool,
    /// EN went high and the chip has yet to leave reset ([`WiredPort::settle`]).
    releasing: bool,
}

impl std::fmt::Debug for WiredPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WiredPort").field("serial", &self.serial).finish()
    }
}

impl WiredPort {
    /// EN and GPIO0 levels (true: high) for the lines' state.
    fn pins(dtr: bool, rts: bool) -> (bool, bool) {
        (!rts || dtr, !dtr || rts)
    }

    fn lines(&mut self, dtr: bool, rts: bool) {
        let (en_before, _) = Self::pins(self.dtr, self.rts);
        let (en, _) = Self::pins(dtr, rts);
        self.dtr = dtr;
        self.rts = rts;
        if en_before && !en {
            self.device.hold();
            self.releasing = false;
        } else if !en_before && en {
            self.releasing = true;
        } else {
            self.settle();
        }
    }

    /// EN has an RC delay: the chip leaves reset once the lines have settled (at the next line
    /// change or use of the port), sampling GPIO0 then, not in the instant both lines pass
    /// through the same level.
    fn settle(&mut self) {
        if std::mem::take(&mut self.releasing) {
            let (_, gpio0) = Self::pins(self.dtr, self.rts);
            let text = self.device.release(!gpio0);
            let _ = self.pty.controller().write_all(&text);
        }
    }
}

impl Link for WiredPort {
    fn packet_budget(&self, buf_size: usize) -> usize {
        self.serial.packet_budget(buf_size)
    }
    async fn send(&mut self, packet: &[u8]) -> Result<(), TransportError> {
        self.settle();
        self.serial.send(packet).await
    }
    async fn recv(&mut self, timeout: Duration) -> Result<Vec<u8>, TransportError> {
        self.settle();
        self.serial.recv(timeout).await
    }
    fn drain(&mut self) {
        self.serial.drain()
    }
    fn wire_time(&self, bytes: usize) -> Duration {
        self.serial.wire_time(bytes)
    }
}

impl EspPort for WiredPort {
    fn set_dtr(&mut self, level: bool) -> std::io::Result<()> {
        self.lines(level, self.rts);
        Ok(())
    }
    fn set_rts(&mut self, level: bool) -> std::io::Result<()> {
        self.lines(self.dtr, level);
        Ok(())
    }
    fn set_baud(&mut self, baud: u32) -> Result<(), TransportError> {
        self.settle();
        self.serial.set_baud(baud)
    }
    fn baud(&self) -> u32 {
        self.serial.baud()
    }
    async fn recv_raw(&mut self, timeout: Duration) -> Result<Vec<u8>, TransportError> {
        self.settle();
        self.serial.recv_raw(timeout).await
    }
}

/// Serve `device` on a new pty.
pub fn serve_pty(device: EspDevice) -> Result<EspServer, PtyError> {
    let pty = Arc::new(Pty::open()?);
    let mut rx = pty.controller_clone().map_err(PtyError::Name)?;
    let mut tx = pty.controller_clone().map_err(PtyError::Name)?;
    let paced = device.lock().config.paced;
    let keep = pty.clone();
    let served = device.clone();
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
    Ok(EspServer { path, pty, device: served })
}
