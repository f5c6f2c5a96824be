//! The serial port under the ROM loader: SLIP packets over a [`Link`], plus what the ROM loader
//! needs beyond packets: the DTR/RTS lines (reset and boot-mode strapping) and the baud rate.
//!
//! [`EspSerial`] is the real port (`serialport`, a reader thread feeding tokio, like
//! [`crate::transport::SerialLink`] but with SLIP framing instead of the SMP console framing).

use super::slip::{self, SlipDecoder, SlipError};
use crate::transport::{Link, TransportError};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// The ROM loader's initial baud rate (it also auto-bauds on SYNC).
pub const ROM_BAUD: u32 = 115_200;

/// Largest packet accepted from a device (responses are small; READ_FLASH_SLOW returns 64 bytes).
const MAX_RX_PACKET: usize = 4096;

/// A packet link to an ESP ROM loader that can also drive the modem lines and change speed.
pub trait EspPort: Link {
    /// Set DTR (wired to GPIO0/BOOT through a transistor on classic boards).
    fn set_dtr(&mut self, level: bool) -> std::io::Result<()>;
    /// Set RTS (wired to EN/reset on classic boards).
    fn set_rts(&mut self, level: bool) -> std::io::Result<()>;
    /// Change the host side's baud rate.
    fn set_baud(&mut self, baud: u32) -> Result<(), TransportError>;
    /// The host side's baud rate.
    fn baud(&self) -> u32;
    /// The next bytes the line delivered, unframed (console text such as a boot log), waiting
    /// at most `timeout` for them ([`TransportError::Timeout`] when none came).
    fn recv_raw(
        &mut self,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, TransportError>> + Send;
}

/// A serial port speaking SLIP to an ESP ROM loader.
pub struct EspSerial {
    port: Arc<Mutex<Box<dyn serialport::SerialPort>>>,
    rx: mpsc::UnboundedReceiver<std::io::Result<Vec<u8>>>,
    decoder: SlipDecoder,
    ready: VecDeque<Result<Vec<u8>, SlipError>>,
    _reader: crate::transport::serial::ReaderThread,
    name: String,
    baud: u32,
}

impl std::fmt::Debug for EspSerial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EspSerial").field("port", &self.name).field("baud", &self.baud).finish()
    }
}

impl EspSerial {
    /// Open `path` at `baud` 8N1 without flow control. The modem lines are left as the OS set
    /// them; the reset sequence (see [`super::reset`]) drives them.
    pub fn open(path: &str, baud: u32) -> Result<Self, TransportError> {
        let open_err = |source| TransportError::OpenSerial { port: path.to_string(), source };
        let port = serialport::new(path, baud)
            .data_bits(serialport::DataBits::Eight)
            .parity(serialport::Parity::None)
            .stop_bits(serialport::StopBits::One)
            .flow_control(serialport::FlowControl::None)
            .timeout(Duration::from_millis(20))
            .open()
            .map_err(open_err)?;
        let _ = port.clear(serialport::ClearBuffer::All);
        let reader = port.try_clone().map_err(open_err)?;
        let (rx, reader) =
            crate::transport::serial::spawn_reader(reader, format!("esp-rx {path}"))?;
        Ok(EspSerial {
            port: Arc::new(Mutex::new(port)),
            rx,
            decoder: SlipDecoder::new(MAX_RX_PACKET),
            ready: VecDeque::new(),
            _reader: reader,
            name: path.to_string(),
            baud: baud.max(1),
        })
    }

    /// The port's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn with_port<T>(
        &self,
        f: impl FnOnce(&mut Box<dyn serialport::SerialPort>) -> serialport::Result<T>,
    ) -> std::io::Result<T> {
        let mut port =
            self.port.lock().map_err(|_| std::io::Error::other("serial port lock poisoned"))?;
        f(&mut port).map_err(std::io::Error::from)
    }
}

impl Link for EspSerial {
    fn packet_budget(&self, buf_size: usize) -> usize {
        buf_size
    }

    fn wire_time(&self, bytes: usize) -> Duration {
        // 8N1, and SLIP escapes at most double a byte: count the worst case plus delimiters.
        Duration::from_secs_f64((bytes * 2 + 2) as f64 * 10.0 / f64::from(self.baud))
    }

    async fn send(&mut self, packet: &[u8]) -> Result<(), TransportError> {
        let wire = slip::encode(packet);
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
        while let Ok(Ok(_)) = self.rx.try_recv() {}
        self.decoder.reset();
        self.ready.clear();
    }
}

impl EspPort for EspSerial {
    fn set_dtr(&mut self, level: bool) -> std::io::Result<()> {
        self.with_port(|p| p.write_data_terminal_ready(level))
    }

    fn set_rts(&mut self, level: bool) -> std::io::Result<()> {
        self.with_port(|p| p.write_request_to_send(level))
    }

    fn set_baud(&mut self, baud: u32) -> Result<(), TransportError> {
        self.with_port(|p| p.set_baud_rate(baud)).map_err(TransportError::SerialIo)?;
        self.baud = baud.max(1);
        Ok(())
    }

    fn baud(&self) -> u32 {
        self.baud
    }

    async fn recv_raw(&mut self, timeout: Duration) -> Result<Vec<u8>, TransportError> {
        // Text bypasses the SLIP decoder; a half frame it held is of no use any more.
        self.decoder.reset();
        self.ready.clear();
        match tokio::time::timeout(timeout, self.rx.recv()).await {
            Err(_) => Err(TransportError::Timeout(timeout)),
            Ok(None) => Err(TransportError::Closed),
            Ok(Some(Err(e))) => Err(TransportError::SerialIo(e)),
            Ok(Some(Ok(bytes))) => Ok(bytes),
        }
    }
}
