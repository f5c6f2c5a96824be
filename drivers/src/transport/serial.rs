//! A serial port carrying SMP console frames, made async for tokio.
//!
//! `serialport` is blocking, so a reader thread feeds received bytes into a channel and writes run
//! on tokio's blocking pool. DTR/RTS are asserted when the port supports it (USB adapters); ptys
//! answer ENOTTY, which is ignored.

use super::{Link, TransportError};
use crate::smp::frame::{self, FrameDecoder};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Default serial speed of Zephyr's mcumgr console.
pub const DEFAULT_BAUD: u32 = 115_200;

/// Largest SMP packet the decoder accepts from a device.
const MAX_RX_PACKET: usize = 16 * 1024;

/// An open serial port speaking the SMP console framing.
pub struct SerialLink {
    port: Arc<Mutex<Box<dyn serialport::SerialPort>>>,
    rx: mpsc::UnboundedReceiver<std::io::Result<Vec<u8>>>,
    decoder: FrameDecoder,
    ready: VecDeque<Result<Vec<u8>, frame::FrameError>>,
    _reader: ReaderThread,
    name: String,
    baud: u32,
}

impl std::fmt::Debug for SerialLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialLink").field("port", &self.name).finish()
    }
}

impl SerialLink {
    /// Open `path` at `baud` 8N1 without flow control.
    pub fn open(path: &str, baud: u32) -> Result<Self, TransportError> {
        let open_err = |source| TransportError::OpenSerial { port: path.to_string(), source };
        let mut port = serialport::new(path, baud)
            .data_bits(serialport::DataBits::Eight)
            .parity(serialport::Parity::None)
            .stop_bits(serialport::StopBits::One)
            .flow_control(serialport::FlowControl::None)
            .timeout(Duration::from_millis(50))
            .open()
            .map_err(open_err)?;
        // Real adapters want DTR/RTS asserted; ptys do not support them (ENOTTY): ignore.
        let _ = port.write_data_terminal_ready(true);
        let _ = port.write_request_to_send(true);
        let _ = port.clear(serialport::ClearBuffer::All);
        let reader = port.try_clone().map_err(open_err)?;
        let (rx, reader) = spawn_reader(reader, format!("serial-rx {path}"))?;
        Ok(SerialLink {
            port: Arc::new(Mutex::new(port)),
            rx,
            decoder: FrameDecoder::new(MAX_RX_PACKET),
            ready: VecDeque::new(),
            _reader: reader,
            name: path.to_string(),
            baud: baud.max(1),
        })
    }
}

impl Link for SerialLink {
    fn packet_budget(&self, buf_size: usize) -> usize {
        // The length field and the CRC share the device's receive buffer.
        buf_size.saturating_sub(4)
    }

    fn fit_packet(&self, budget: usize) -> usize {
        // Round the framed packet (length + SMP + CRC) down to whole 93-byte lines, so no line
        // goes out half empty; small budgets are used as they are.
        let framed = budget + 4;
        if framed >= 4 * frame::BYTES_PER_FRAME {
            framed / frame::BYTES_PER_FRAME * frame::BYTES_PER_FRAME - 4
        } else {
            budget
        }
    }

    fn wire_time(&self, bytes: usize) -> Duration {
        // 8N1: ten bit times per byte, after framing and base64.
        Duration::from_secs_f64(frame::wire_len(bytes) as f64 * 10.0 / f64::from(self.baud))
    }

    async fn send(&mut self, packet: &[u8]) -> Result<(), TransportError> {
        if packet.len() > u16::MAX as usize - 2 {
            return Err(TransportError::TooLarge { len: packet.len(), max: u16::MAX as usize - 2 });
        }
        let wire = frame::encode(packet);
        let port = self.port.clone();
        tokio::task::spawn_blocking(move || {
            let mut port = port.lock().map_err(|_| TransportError::Closed)?;
            port.write_all(&wire).map_err(TransportError::SerialIo)?;
            port.flush().map_err(TransportError::SerialIo)
        })
        .await
        .map_err(|_| TransportError::Closed)?
    }

    async fn recv(&mut self, timeout: Duration) -> Result<Vec<u8>, TransportError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(r) = self.ready.pop_front() {
                return r.map_err(|e| TransportError::BadFrame(e.to_string()));
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => return Err(TransportError::Timeout(timeout)),
                Ok(None) => return Err(TransportError::Closed),
                Ok(Some(Err(e))) => return Err(TransportError::SerialIo(e)),
                Ok(Some(Ok(bytes))) => self.ready.extend(self.decoder.push(&bytes)),
            }
        }
    }

    fn drain(&mut self) {
        while let Ok(Ok(bytes)) = self.rx.try_recv() {
            self.ready.extend(self.decoder.push(&bytes));
        }
        self.ready.clear();
    }
}

/// What a serial port's reader thread hands over: each chunk read, or the error that ended it.
pub(crate) type Chunks = mpsc::UnboundedReceiver<std::io::Result<Vec<u8>>>;

/// The thread that reads a serial port. Dropping it stops the thread and waits for it (at most
/// one read timeout), so the port's last handle is closed when the link is dropped and the port
/// can be opened again at once.
#[derive(Debug)]
pub(crate) struct ReaderThread {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ReaderThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Reads `reader` on a thread of its own (`name`) until the returned [`ReaderThread`] is dropped
/// or the port fails, handing every chunk read to the returned channel; read timeouts only let
/// it look at its stop flag again.
pub(crate) fn spawn_reader(
    mut reader: Box<dyn serialport::SerialPort>,
    name: String,
) -> Result<(Chunks, ReaderThread), TransportError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !flag.load(Ordering::Relaxed) {
                match reader.read(&mut buf) {
                    Ok(0) => {}
                    Ok(n) => {
                        if tx.send(Ok(buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::TimedOut
                                | std::io::ErrorKind::WouldBlock
                                | std::io::ErrorKind::Interrupted
                        ) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
        })
        .map_err(TransportError::SerialIo)?;
    Ok((rx, ReaderThread { stop, handle: Some(handle) }))
}
