//! A pty that talks garbage: what a port with the wrong device, a noisy line or the wrong baud
//! rate looks like to a prober.
//!
//! Design decisions:
//! - Bytes flow continuously at a line rate whether or not anyone listens, as a UART transmits;
//!   the controller end is non-blocking, so when the subordinate's input queue is full the bytes
//!   are lost (like a UART with nobody reading) and the writer never blocks.
//! - The stream is seeded pseudo-random bytes, with now and then a line that starts like an SMP
//!   frame (`0x06 0x09`, base64-looking text, newline) but never carries a valid one, so both a
//!   prober's "nothing decodable" and "corrupted frame" paths are exercised.
//! - The writer thread stops when the [`GarbagePty`] is dropped.

use crate::pty::{Pty, PtyError};
use crate::smp::Pacer;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A pty emitting garbage until dropped.
#[derive(Debug)]
pub struct GarbagePty {
    pty: Arc<Pty>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
}

impl GarbagePty {
    /// The path a client opens.
    pub fn path(&self) -> &Path {
        self.pty.path()
    }

    /// The pty itself (for example to watch whether it was opened).
    pub fn pty(&self) -> &Pty {
        &self.pty
    }

    /// Bytes put on the line so far (including those lost because nobody read them).
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for GarbagePty {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Start a garbage pty sending `baud / 10` bytes a second (8N1), from `seed`, with now and then
/// a line that looks like the start of an SMP frame.
pub fn serve_garbage(baud: u32, seed: u64) -> Result<GarbagePty, PtyError> {
    serve_garbage_with(baud, seed, true)
}

/// Start a garbage pty; `frame_like`: mix in lines that look like the start of an SMP frame
/// (without them, an SMP reader finds nothing it could even try to decode).
pub fn serve_garbage_with(baud: u32, seed: u64, frame_like: bool) -> Result<GarbagePty, PtyError> {
    let pty = Arc::new(Pty::open()?);
    let mut tx = pty.controller_clone().map_err(PtyError::Configure)?;
    set_nonblocking(&tx)?;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let (stop_w, sent_w, keep) = (stop.clone(), sent.clone(), pty.clone());
    std::thread::Builder::new()
        .name("lab-garbage".into())
        .spawn(move || {
            let _pty = keep;
            let mut rng = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut pacer = Pacer::new(f64::from(baud.max(10)) / 10.0);
            const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            while !stop_w.load(Ordering::Relaxed) {
                let mut chunk = Vec::with_capacity(64);
                if frame_like && rng.next().is_multiple_of(8) {
                    // Looks like the start of an SMP frame; the CRC will not match.
                    chunk.extend_from_slice(&[0x06, 0x09]);
                    for _ in 0..40 {
                        chunk.push(B64[(rng.next() % 64) as usize]);
                    }
                    chunk.push(b'\n');
                } else {
                    while chunk.len() < 64 {
                        // Without frame-like lines, no SMP frame marker either.
                        chunk.extend(rng.next().to_le_bytes().map(|b| {
                            if !frame_like && (b == 0x06 || b == 0x04) { b | 0x80 } else { b }
                        }));
                    }
                }
                // A full input queue drops the bytes, as a UART with nobody reading does.
                let _ = tx.write(&chunk);
                sent_w.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                pacer.consume(chunk.len());
            }
        })
        .map_err(PtyError::Open)?;
    Ok(GarbagePty { pty, stop, sent })
}

#[cfg(unix)]
fn set_nonblocking(file: &std::fs::File) -> Result<(), PtyError> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = fcntl(file, FcntlArg::F_GETFL).map_err(|e| PtyError::Configure(e.into()))?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(file, FcntlArg::F_SETFL(flags)).map_err(|e| PtyError::Configure(e.into()))?;
    Ok(())
}

#[cfg(not(unix))]
fn set_nonblocking(_file: &std::fs::File) -> Result<(), PtyError> {
    Err(PtyError::Unsupported)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn garbage_flows_without_a_reader_and_reaches_one() {
        use std::io::Read;
        let g = serve_garbage(115_200, 7).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        // Nobody reads: the writer is not stuck.
        let before = g.bytes_sent();
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(g.bytes_sent() > before, "the writer stalled without a reader");
        let mut client = std::fs::File::open(g.path()).unwrap();
        let mut buf = [0u8; 256];
        let n = client.read(&mut buf).unwrap();
        assert!(n > 0);
    }
}
