//! SMP over UDP: one packet per datagram, port 1337 by default.

use super::{Link, TransportError};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;
use tokio::net::UdpSocket;

/// The SMP UDP port Zephyr listens on by default.
pub const DEFAULT_PORT: u16 = 1337;

/// A UDP socket connected to one device.
#[derive(Debug)]
pub struct UdpLink {
    socket: UdpSocket,
    peer: SocketAddr,
    buf: Vec<u8>,
}

/// Parse `HOST` or `HOST:PORT` (port defaults to 1337).
pub fn parse_addr(spec: &str) -> Result<SocketAddr, TransportError> {
    let bad = || TransportError::Address(spec.to_string());
    if let Ok(addr) = spec.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = spec.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    let with_port = if spec.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        spec.to_string()
    } else {
        format!("{spec}:{DEFAULT_PORT}")
    };
    with_port.to_socket_addrs().map_err(|_| bad())?.next().ok_or_else(bad)
}

impl UdpLink {
    /// Bind an ephemeral local port and connect it to `peer`.
    pub async fn connect(peer: SocketAddr) -> Result<Self, TransportError> {
        let err = |source| TransportError::Udp { addr: peer.to_string(), source };
        let local: SocketAddr =
            if peer.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
        let socket = UdpSocket::bind(local).await.map_err(err)?;
        socket.connect(peer).await.map_err(err)?;
        Ok(UdpLink { socket, peer, buf: vec![0u8; 65536] })
    }

    /// The device address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }
}

impl Link for UdpLink {
    fn packet_budget(&self, buf_size: usize) -> usize {
        buf_size
    }

    async fn send(&mut self, packet: &[u8]) -> Result<(), TransportError> {
        if packet.len() > 65507 {
            return Err(TransportError::TooLarge { len: packet.len(), max: 65507 });
        }
        self.socket
            .send(packet)
            .await
            .map(|_| ())
            .map_err(|source| TransportError::Udp { addr: self.peer.to_string(), source })
    }

    async fn recv(&mut self, timeout: Duration) -> Result<Vec<u8>, TransportError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.recv(&mut self.buf)).await {
                Err(_) => return Err(TransportError::Timeout(timeout)),
                Ok(Ok(n)) => return Ok(self.buf[..n].to_vec()),
                // ICMP port unreachable surfaces as ConnectionRefused: the device is not
                // listening (yet, e.g. while it reboots); keep waiting until the deadline.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(Err(source)) => {
                    return Err(TransportError::Udp { addr: self.peer.to_string(), source });
                }
            }
        }
    }

    fn drain(&mut self) {
        while self.socket.try_recv(&mut self.buf).is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_default_to_port_1337() {
        assert_eq!(parse_addr("127.0.0.1").unwrap(), "127.0.0.1:1337".parse().unwrap());
        assert_eq!(parse_addr("127.0.0.1:9").unwrap(), "127.0.0.1:9".parse().unwrap());
        assert_eq!(parse_addr("localhost").unwrap().port(), 1337);
        assert!(matches!(parse_addr("no such host!"), Err(TransportError::Address(_))));
    }
}
