//! The simulated device on a UDP socket (one SMP packet per datagram) with added latency and loss.
//!
//! The added round-trip time is split evenly between the two directions; loss applies to each
//! datagram in each direction independently (deterministic pseudo-random, seeded).

use super::SmpDevice;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Link conditions of the simulated network.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetConditions {
    /// Added round-trip time.
    pub added_rtt: Duration,
    /// Probability in `0.0..1.0` that a datagram is lost (each direction).
    pub loss: f64,
    /// Seed for the loss pattern.
    pub seed: u64,
}

/// A device served on UDP; stops when dropped.
#[derive(Debug)]
pub struct UdpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl UdpServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Rng(u64);

impl Rng {
    fn chance(&mut self, p: f64) -> bool {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        p > 0.0 && ((self.0 >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// Serve `device` on `bind` (use port 0 for a free port) under `net` conditions.
pub fn serve_udp(
    device: SmpDevice,
    bind: SocketAddr,
    net: NetConditions,
) -> std::io::Result<UdpServer> {
    let socket = UdpSocket::bind(bind)?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let addr = socket.local_addr()?;
    let send_socket = socket.try_clone()?;
    let stop = Arc::new(AtomicBool::new(false));
    let half = net.added_rtt / 2;
    let (in_tx, in_rx) = mpsc::channel::<(Instant, Vec<u8>, SocketAddr)>();
    let (buf_tx, buf_rx) = mpsc::sync_channel::<(Vec<u8>, SocketAddr)>(device.config().buf_count);
    let (out_tx, out_rx) = mpsc::channel::<(Instant, Vec<u8>, SocketAddr)>();
    let max_packet = device.config().buf_size;

    let stop_rx = stop.clone();
    std::thread::spawn(move || {
        let mut rng = Rng(net.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut buf = vec![0u8; 65536];
        while !stop_rx.load(Ordering::Relaxed) {
            if let Ok((n, from)) = socket.recv_from(&mut buf)
                && !rng.chance(net.loss)
                && in_tx.send((Instant::now() + half, buf[..n].to_vec(), from)).is_err()
            {
                return;
            }
        }
    });

    let dev = device.clone();
    std::thread::spawn(move || {
        while let Ok((due, packet, from)) = in_rx.recv() {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if packet.len() <= max_packet && dev.accept_rx() {
                let _ = buf_tx.try_send((packet, from));
            }
        }
    });

    let dev = device.clone();
    std::thread::spawn(move || {
        while let Ok((packet, from)) = buf_rx.recv() {
            if let Some(reply) = dev.handle(&packet).reply {
                for frame in dev.outgoing(reply) {
                    if out_tx.send((Instant::now() + half, frame, from)).is_err() {
                        return;
                    }
                }
            }
        }
    });

    std::thread::spawn(move || {
        let mut rng = Rng(net.seed.wrapping_mul(0xd1b5_4a32_d192_ed03) | 1);
        while let Ok((due, reply, to)) = out_rx.recv() {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if !rng.chance(net.loss) {
                let _ = send_socket.send_to(&reply, to);
            }
        }
    });

    Ok(UdpServer { addr, stop })
}
