//! The smallest WebSocket client (RFC 6455) SWUpdate's status channel needs: an HTTP/1.1 upgrade
//! (with a digest `Authorization` header when the daemon asks for one), unmasked text frames from
//! the server, masked pongs and close from the client. Frames are bounded; anything malformed is an
//! error, never a panic.

use base64::Engine as _;
use std::hash::{BuildHasher, Hasher};
use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest message accepted from the daemon (its own are below 5 KiB).
pub const MAX_MESSAGE: usize = 64 * 1024;
const MAX_HEADER: usize = 8 * 1024;

/// What the upgrade answered.
#[derive(Debug)]
pub enum Upgrade {
    Open(WebSocket),
    /// The server answered with this HTTP status instead of 101.
    Status(u16),
}

/// An open WebSocket on a plain TCP stream.
#[derive(Debug)]
pub struct WebSocket {
    stream: TcpStream,
    buf: Vec<u8>,
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    for chunk in out.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(chunk.as_ptr() as usize);
        let v = h.finish().to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    out
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

impl WebSocket {
    /// Upgrades a fresh connection at `path` on `host` (the `Host` header value).
    pub async fn upgrade(
        mut stream: TcpStream,
        host: &str,
        path: &str,
        authorization: Option<&str>,
    ) -> io::Result<Upgrade> {
        let key = base64::engine::general_purpose::STANDARD.encode(random_bytes::<16>());
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        );
        if let Some(a) = authorization {
            req.push_str("Authorization: ");
            req.push_str(a);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await?;
        let mut buf = Vec::with_capacity(1024);
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEADER {
                return Err(invalid("the WebSocket upgrade answer has an oversized header"));
            }
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the daemon closed the connection during the WebSocket upgrade",
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]);
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| invalid("the WebSocket upgrade answer is not HTTP"))?;
        if status != 101 {
            return Ok(Upgrade::Status(status));
        }
        let rest = buf.split_off(end);
        Ok(Upgrade::Open(WebSocket { stream, buf: rest }))
    }

    async fn fill(&mut self, n: usize) -> io::Result<()> {
        while self.buf.len() < n {
            let mut chunk = [0u8; 4096];
            let got = self.stream.read(&mut chunk).await?;
            if got == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the daemon closed the status channel",
                ));
            }
            self.buf.extend_from_slice(&chunk[..got]);
        }
        Ok(())
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mask = random_bytes::<4>();
        let mut frame = vec![0x80 | opcode];
        if payload.len() < 126 {
            frame.push(0x80 | payload.len() as u8);
        } else {
            return Err(invalid("control payload too long"));
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await
    }

    /// The next text message; `None` when the server closed the channel.
    pub async fn next_text(&mut self) -> io::Result<Option<String>> {
        let mut message: Vec<u8> = Vec::new();
        loop {
            self.fill(2).await?;
            let (b0, b1) = (self.buf[0], self.buf[1]);
            let fin = b0 & 0x80 != 0;
            let opcode = b0 & 0x0f;
            let masked = b1 & 0x80 != 0;
            let mut header = 2usize;
            let len = match b1 & 0x7f {
                126 => {
                    self.fill(4).await?;
                    header = 4;
                    u16::from_be_bytes([self.buf[2], self.buf[3]]) as u64
                }
                127 => {
                    self.fill(10).await?;
                    header = 10;
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&self.buf[2..10]);
                    u64::from_be_bytes(b)
                }
                n => n as u64,
            };
            if len > MAX_MESSAGE as u64 || message.len() as u64 + len > MAX_MESSAGE as u64 {
                return Err(invalid("the daemon sent an oversized status message"));
            }
            let mask_len = if masked { 4 } else { 0 };
            let total = header + mask_len + len as usize;
            self.fill(total).await?;
            let mut payload: Vec<u8> = self.buf[header + mask_len..total].to_vec();
            if masked {
                let key = [
                    self.buf[header],
                    self.buf[header + 1],
                    self.buf[header + 2],
                    self.buf[header + 3],
                ];
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= key[i % 4];
                }
            }
            self.buf.drain(..total);
            match opcode {
                0x8 => {
                    let _ = self.send(0x8, &[]).await;
                    return Ok(None);
                }
                0x9 => {
                    if payload.len() < 126 {
                        self.send(0xA, &payload).await?;
                    }
                }
                0xA => {}
                0x0..=0x2 => {
                    message.extend_from_slice(&payload);
                    if fin {
                        return Ok(Some(String::from_utf8_lossy(&message).into_owned()));
                    }
                }
                _ => return Err(invalid("the daemon sent an unknown WebSocket opcode")),
            }
        }
    }

    /// Says goodbye (best effort).
    pub async fn close(mut self) {
        let _ = self.send(0x8, &[]).await;
        let _ = self.stream.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair(server_bytes: Vec<u8>) -> (io::Result<Upgrade>, Vec<u8>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = vec![0u8; 2048];
            let n = s.read(&mut req).await.unwrap();
            s.write_all(&server_bytes).await.unwrap();
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(
                std::time::Duration::from_millis(300),
                s.read_to_end(&mut rest),
            )
            .await;
            let mut all = req[..n].to_vec();
            all.extend(rest);
            all
        });
        let c = TcpStream::connect(addr).await.unwrap();
        let up = WebSocket::upgrade(c, "h", "/ws", Some("Digest x")).await;
        let up = match up {
            Ok(Upgrade::Open(mut ws)) => {
                let mut texts = Vec::new();
                while let Ok(Some(t)) = ws.next_text().await {
                    texts.push(t);
                }
                assert_eq!(texts, vec!["hello".to_string(), "split!".to_string()]);
                Ok(Upgrade::Status(101))
            }
            other => other,
        };
        (up, server.await.unwrap())
    }

    #[tokio::test]
    async fn reads_frames_answers_pings_and_refuses_junk() {
        let mut bytes = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
        bytes.extend([0x81, 5]);
        bytes.extend(b"hello");
        bytes.extend([0x89, 2, b'p', b'g']);
        bytes.extend([0x01, 3]);
        bytes.extend(b"spl");
        bytes.extend([0x80, 3]);
        bytes.extend(b"it!");
        bytes.extend([0x88, 0]);
        let (up, seen) = pair(bytes).await;
        assert!(matches!(up, Ok(Upgrade::Status(101))));
        let head = String::from_utf8_lossy(&seen);
        assert!(head.starts_with("GET /ws HTTP/1.1\r\n"));
        assert!(head.contains("Authorization: Digest x\r\n"));
        // The pong: masked, opcode 0xA, 2 bytes.
        let i = seen.windows(2).position(|w| w == [0x8A, 0x82]).expect("a masked pong");
        let key = &seen[i + 2..i + 6];
        assert_eq!([seen[i + 6] ^ key[0], seen[i + 7] ^ key[1]], *b"pg");

        let (up, _) = pair(b"HTTP/1.1 401 Unauthorized\r\n\r\n".to_vec()).await;
        assert!(matches!(up, Ok(Upgrade::Status(401))));
        let (up, _) = pair(b"garbage without end".to_vec()).await;
        assert!(up.is_err());
    }

    #[tokio::test]
    async fn oversized_and_truncated_frames_are_errors() {
        for tail in
            [vec![0x81, 127, 0xff, 0, 0, 0, 0, 0, 0, 0], vec![0x81, 10, b'a'], vec![0x83, 0]]
        {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            tokio::spawn(async move {
                let (mut s, _) = l.accept().await.unwrap();
                let mut req = vec![0u8; 2048];
                let _ = s.read(&mut req).await;
                let mut b = b"HTTP/1.1 101 OK\r\n\r\n".to_vec();
                b.extend(tail);
                s.write_all(&b).await.unwrap();
            });
            let c = TcpStream::connect(addr).await.unwrap();
            let Upgrade::Open(mut ws) = WebSocket::upgrade(c, "h", "/", None).await.unwrap() else {
                panic!("upgrade")
            };
            assert!(ws.next_text().await.is_err());
        }
    }
}
