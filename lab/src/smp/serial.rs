//! The simulated device on a real pty, with the line paced at a baud rate (8N1: 10 bits a byte).
//!
//! Threads: a reader that takes bytes off the line at the baud rate and decodes frames into the
//! device's receive buffers (a full set of buffers drops the packet), a worker that processes one
//! buffer at a time, and a writer that puts answers on the line at the baud rate. The threads run
//! for the life of the process (a pty read cannot be interrupted); the pty stays open as long.
//!
//! In serial recovery the bootloader's limits apply: console lines longer than its line buffer
//! are dropped, a frame starts a line, a packet larger than its receive size is dropped, and a
//! packet arriving while one is being processed is lost (one buffer).

use super::{Pacer, SmpDevice};
use crate::pty::{Pty, PtyError};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use crc::{CRC_16_XMODEM, Crc};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::mpsc;

const CRC16: Crc<u16> = Crc::<u16>::new(&CRC_16_XMODEM);

/// A device served on a pty.
#[derive(Debug)]
pub struct SerialServer {
    path: PathBuf,
    _pty: std::sync::Arc<Pty>,
}

impl SerialServer {
    /// The pty path a client opens.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

/// Serve `device` on a new pty at `baud` (8N1).
pub fn serve_pty(device: SmpDevice, baud: u32) -> Result<SerialServer, PtyError> {
    let pty = std::sync::Arc::new(Pty::open()?);
    let mut rx = pty.controller_clone().map_err(PtyError::Name)?;
    let mut tx = pty.controller_clone().map_err(PtyError::Name)?;
    let bytes_per_sec = f64::from(baud) / 10.0;
    let (buf_tx, buf_rx) = mpsc::sync_channel::<Vec<u8>>(device.config().buf_count.max(1));
    let (wire_tx, wire_rx) = mpsc::channel::<Vec<u8>>();
    let max_packet = device.config().buf_size;
    let inflight = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let busy = inflight.clone();

    let dev = device.clone();
    let keep = pty.clone();
    std::thread::spawn(move || {
        let _pty = keep;
        let mut pacer = Pacer::new(bytes_per_sec);
        let mut decoder = Decoder::default();
        let mut buf = [0u8; 64];
        loop {
            let n = match rx.read(&mut buf) {
                Ok(0) | Err(_) => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                }
                Ok(n) => n,
            };
            pacer.consume(n);
            let in_recovery = dev.serial_recovery();
            decoder.recovery_line_limit = in_recovery.as_ref().map(|r| r.max_line_len);
            for packet in decoder.push(&buf[..n]) {
                // The length and CRC share the receive buffer with the packet.
                let (limit, buffers) =
                    in_recovery.as_ref().map_or((max_packet, usize::MAX), |r| (r.receive_size, 1));
                if packet.len() + 4 > limit
                    || busy.load(std::sync::atomic::Ordering::SeqCst) >= buffers
                    || !dev.accept_rx()
                {
                    continue;
                }
                if buf_tx.try_send(packet).is_ok() {
                    busy.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
    });

    let dev = device.clone();
    let replies = wire_tx.clone();
    std::thread::spawn(move || {
        while let Ok(packet) = buf_rx.recv() {
            let outcome = dev.handle(&packet);
            inflight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            if let Some(reply) = outcome.reply {
                for frame in dev.outgoing(encode(&reply)) {
                    if replies.send(frame).is_err() {
                        return;
                    }
                }
            }
        }
    });

    if let Some(every) = device.config().console_log_every {
        let dev = device.clone();
        let noise = wire_tx;
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let mut boots = dev.boots();
            loop {
                std::thread::sleep(every);
                if dev.in_serial_recovery() {
                    // The bootloader does not log on its recovery console.
                    continue;
                }
                let mut line = Vec::new();
                if dev.boots() != boots {
                    boots = dev.boots();
                    line.extend_from_slice(b"*** Booting Zephyr OS build v3.7.0 ***\r\n");
                }
                let t = started.elapsed();
                line.extend_from_slice(
                    format!(
                        "[{:02}:{:02}:{:02}.{:03},000] <inf> app: heartbeat\r\n",
                        t.as_secs() / 3600,
                        t.as_secs() / 60 % 60,
                        t.as_secs() % 60,
                        t.subsec_millis()
                    )
                    .as_bytes(),
                );
                if noise.send(line).is_err() {
                    return;
                }
            }
        });
    }

    std::thread::spawn(move || {
        let mut pacer = Pacer::new(bytes_per_sec);
        while let Ok(wire) = wire_rx.recv() {
            for piece in wire.chunks(32) {
                if tx.write_all(piece).is_err() {
                    break;
                }
                pacer.consume(piece.len());
            }
        }
    });

    Ok(SerialServer { path: pty.path().to_path_buf(), _pty: pty })
}

/// Zephyr's console framing: 124 base64 characters per line.
pub fn encode(packet: &[u8]) -> Vec<u8> {
    let mut raw = ((packet.len() + 2) as u16).to_be_bytes().to_vec();
    raw.extend_from_slice(packet);
    raw.extend_from_slice(&CRC16.checksum(packet).to_be_bytes());
    let text = STANDARD.encode(raw);
    let mut out = Vec::new();
    for (i, line) in text.as_bytes().chunks(124).enumerate() {
        out.extend_from_slice(if i == 0 { &[6, 9] } else { &[4, 20] });
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out
}

/// Frame decoder of the simulated device: concatenates the base64 of a packet's lines.
#[derive(Debug, Default)]
pub struct Decoder {
    line: Vec<u8>,
    text: Vec<u8>,
    active: bool,
    /// Serial recovery's console: lines of more than this many bytes (newline included) are
    /// dropped, and a frame marker must start the line.
    pub recovery_line_limit: Option<usize>,
}

impl Decoder {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                if self.line.len() < 1024 {
                    self.line.push(b);
                }
                continue;
            }
            let line = std::mem::take(&mut self.line);
            let pos = match self.recovery_line_limit {
                Some(limit) if line.len() + 1 > limit => continue,
                Some(_) if line.starts_with(&[6, 9]) || line.starts_with(&[4, 20]) => Some(0),
                Some(_) => None,
                None => line.windows(2).rposition(|w| w == [6, 9] || w == [4, 20]),
            };
            let Some(pos) = pos else {
                continue;
            };
            if line[pos] == 6 {
                self.text.clear();
                self.active = true;
            } else if !self.active {
                continue;
            }
            self.text.extend(line[pos + 2..].iter().filter(|c| !c.is_ascii_whitespace()));
            if !self.text.len().is_multiple_of(4) {
                continue;
            }
            let Ok(raw) = STANDARD.decode(&self.text) else {
                self.active = false;
                continue;
            };
            if raw.len() < 4 {
                continue;
            }
            let want = u16::from_be_bytes([raw[0], raw[1]]) as usize;
            if raw.len() - 2 < want {
                continue;
            }
            self.active = false;
            if raw.len() - 2 != want || want < 2 {
                continue;
            }
            let (packet, crc) = raw[2..].split_at(want - 2);
            if CRC16.checksum(packet).to_be_bytes() == crc {
                out.push(packet.to_vec());
            }
        }
        out
    }
}
