//! Transports that carry whole protocol packets: a serial port (with the SMP console framing) and
//! UDP (one packet per datagram).
//!
//! A [`Link`] owns its framing and its waits; the protocol client above it sees only packets.
//! [`AnyLink`] lets a caller pick the transport at run time without trait objects.

pub mod serial;
pub mod udp;

pub use serial::SerialLink;
pub use udp::UdpLink;

use std::future::Future;
use std::time::Duration;

/// Errors of the transport layer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(
        "cannot open serial port {port}: {source} (check the name, that no other program holds it, and permissions: the user may need to be in the `dialout` group)"
    )]
    OpenSerial { port: String, source: serialport::Error },
    #[error("serial port I/O failed: {0} (was the device unplugged?)")]
    SerialIo(std::io::Error),
    #[error("serial port closed (was the device unplugged?)")]
    Closed,
    #[error("UDP socket error for {addr}: {source}")]
    Udp { addr: String, source: std::io::Error },
    #[error("cannot resolve {0}: use HOST[:PORT], for example 192.168.1.20 or 192.168.1.20:1337")]
    Address(String),
    #[error("packet of {len} bytes is too large for this link (limit {max})")]
    TooLarge { len: usize, max: usize },
    #[error("no packet within {0:?}")]
    Timeout(Duration),
    #[error("a corrupted packet arrived: {0}")]
    BadFrame(String),
}

impl TransportError {
    /// Whether the same operation may succeed when tried again: the link dropped, stalled or
    /// garbled a packet. Opening a port that is wrong, busy or forbidden, a bad address and an
    /// oversized packet stay wrong until someone changes something.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            TransportError::SerialIo(_)
                | TransportError::Closed
                | TransportError::Udp { .. }
                | TransportError::Timeout(_)
                | TransportError::BadFrame(_)
        )
    }

    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            TransportError::OpenSerial { .. } => "serial_open",
            TransportError::SerialIo(_) | TransportError::Closed => "link_dropped",
            TransportError::Udp { .. } => "udp_io",
            TransportError::Address(_) => "bad_address",
            TransportError::TooLarge { .. } => "packet_too_large",
            TransportError::Timeout(_) => "link_timeout",
            TransportError::BadFrame(_) => "bad_frame",
        }
    }
}

/// A packet link to one device.
pub trait Link: Send {
    /// The largest SMP packet the device can take given its receive buffer size.
    fn packet_budget(&self, buf_size: usize) -> usize;

    /// Send one packet.
    fn send(&mut self, packet: &[u8]) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Receive the next packet, waiting at most `timeout`. A packet that arrived corrupted is
    /// reported as [`TransportError::BadFrame`] so the caller can count it and keep waiting.
    fn recv(
        &mut self,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<u8>, TransportError>> + Send;

    /// Discard anything already received (stale answers after a timeout).
    fn drain(&mut self) {}

    /// Tune a packet size to the link: serial fills whole frames where it can.
    fn fit_packet(&self, budget: usize) -> usize {
        budget
    }

    /// How long `bytes` of packets take on the wire (added to timeouts on slow links).
    fn wire_time(&self, _bytes: usize) -> Duration {
        Duration::ZERO
    }
}

/// Either transport, chosen at run time.
#[derive(Debug)]
pub enum AnyLink {
    Serial(SerialLink),
    Udp(UdpLink),
}

impl Link for AnyLink {
    fn packet_budget(&self, buf_size: usize) -> usize {
        match self {
            AnyLink::Serial(l) => l.packet_budget(buf_size),
            AnyLink::Udp(l) => l.packet_budget(buf_size),
        }
    }

    async fn send(&mut self, packet: &[u8]) -> Result<(), TransportError> {
        match self {
            AnyLink::Serial(l) => l.send(packet).await,
            AnyLink::Udp(l) => l.send(packet).await,
        }
    }

    async fn recv(&mut self, timeout: Duration) -> Result<Vec<u8>, TransportError> {
        match self {
            AnyLink::Serial(l) => l.recv(timeout).await,
            AnyLink::Udp(l) => l.recv(timeout).await,
        }
    }

    fn drain(&mut self) {
        match self {
            AnyLink::Serial(l) => l.drain(),
            AnyLink::Udp(l) => l.drain(),
        }
    }

    fn fit_packet(&self, budget: usize) -> usize {
        match self {
            AnyLink::Serial(l) => l.fit_packet(budget),
            AnyLink::Udp(l) => l.fit_packet(budget),
        }
    }

    fn wire_time(&self, bytes: usize) -> Duration {
        match self {
            AnyLink::Serial(l) => l.wire_time(bytes),
            AnyLink::Udp(l) => l.wire_time(bytes),
        }
    }
}
