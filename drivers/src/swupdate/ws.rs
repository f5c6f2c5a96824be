//! The smallest WebSocket client (RFC 6455) SWUpdate's status channel needs: an HTTP/1.1 upgrade
//! (with a digest `Authorization` header when the daemon asks for one), unmasked text frames from
//! the server, masked pongs and close from the client. Frames are bounded; anything malformed is an
//! error, never a panic.
//!
//! The byte-level parts are pure functions over a buffer, which the async client calls and the
//! `swupdate_ws` fuzz target drives: [`parse_upgrade`] reads the upgrade answer's head (status
//! line, `Sec-WebSocket-Accept`), [`decode_frame`] one frame from the front of a buffer, and
//! [`Messages`] puts frames together into messages.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use base64::Engine as _;
use std::hash::{BuildHasher, Hasher};
use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest message accepted from the daemon (its own are below 5 KiB).
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Largest upgrade answer head, its blank line included.
pub const MAX_HEADER: usize = 8 * 1024;

/// What RFC 6455 appends to the client's key before hashing it into `Sec-WebSocket-Accept`.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why the daemon's bytes on the status channel are not a WebSocket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    #[error(
        "the WebSocket upgrade answer has an oversized header (no end within {MAX_HEADER} bytes)"
    )]
    HeaderTooLarge,
    #[error("the WebSocket upgrade answer is not HTTP")]
    NotHttp,
    #[error(
        "the WebSocket upgrade answer has no Sec-WebSocket-Accept header: the server at that \
         address does not speak WebSocket (is it SWUpdate's web server?)"
    )]
    MissingAccept,
    #[error(
        "the WebSocket upgrade answer's Sec-WebSocket-Accept does not match the key sent: \
         something between this computer and the daemon (a proxy?) answered instead of it"
    )]
    BadAccept,
    #[error("the daemon sent an oversized status message (over {MAX_MESSAGE} bytes)")]
    Oversized,
    #[error("the daemon sent an unknown WebSocket opcode {0:#x}")]
    UnknownOpcode(u8),
}

impl From<WsError> for io::Error {
    fn from(e: WsError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// What the upgrade answered.
#[derive(Debug)]
pub enum Upgrade {
    Open(WebSocket),
    /// The server answered with this HTTP status instead of 101.
    Status(u16),
}

/// The upgrade answer's head, read by [`parse_upgrade`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// `101` with the right `Sec-WebSocket-Accept`: frames follow the head.
    Switched,
    /// Another HTTP status (its headers are not checked).
    Status(u16),
}

/// The `Sec-WebSocket-Accept` value a server must answer to the client key `key`.
pub fn accept_key(key: &str) -> String {
    let mut input = key.as_bytes().to_vec();
    input.extend_from_slice(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha1(&input))
}

/// SHA-1 (FIPS 180-4), only for the handshake's accept key, which RFC 6455 defines with it.
#[allow(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    reason = "fixed-size arrays indexed within their loop bounds; the additions are wrapping"
)]
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x6745_2301, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476, 0xC3D2_E1F0];
    let bits = (data.len() as u64).wrapping_mul(8);
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..20 => ((b & c) | (!b & d), 0x5A82_7999),
                20..40 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..60 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t =
                a.rotate_left(5).wrapping_add(f).wrapping_add(e).wrapping_add(k).wrapping_add(*wi);
            (e, d, c, b, a) = (d, c, b.rotate_left(30), a, t);
        }
        for (hi, v) in h.iter_mut().zip([a, b, c, d, e]) {
            *hi = hi.wrapping_add(v);
        }
    }
    let mut out = [0u8; 20];
    for (o, v) in out.chunks_exact_mut(4).zip(h) {
        o.copy_from_slice(&v.to_be_bytes());
    }
    out
}

/// Reads the upgrade answer's head from the front of `buf`, for a request that sent the key
/// `key`: what it says and the length of the head (frames may follow it in `buf`), or `None`
/// when `buf` does not hold the whole head yet.
///
/// The status is the status line's second word. A `101` must carry the `Sec-WebSocket-Accept`
/// that `key` asks for; other statuses are returned as they are. A head (blank line included)
/// over [`MAX_HEADER`] bytes is an error, however the bytes arrived.
pub fn parse_upgrade(buf: &[u8], key: &str) -> Result<Option<(Handshake, usize)>, WsError> {
    let window = buf.get(..MAX_HEADER).unwrap_or(buf);
    let Some(end) = window.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i.saturating_add(4))
    else {
        return if buf.len() >= MAX_HEADER { Err(WsError::HeaderTooLarge) } else { Ok(None) };
    };
    let head = String::from_utf8_lossy(window.get(..end).unwrap_or(window));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or(WsError::NotHttp)?;
    if status != 101 {
        return Ok(Some((Handshake::Status(status), end)));
    }
    let accept = head
        .split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-accept"))
        .map(|(_, value)| value.trim());
    match accept {
        None => Err(WsError::MissingAccept),
        Some(a) if a == accept_key(key) => Ok(Some((Handshake::Switched, end))),
        Some(_) => Err(WsError::BadAccept),
    }
}

/// A frame's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Result<Opcode, WsError> {
        Ok(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            other => return Err(WsError::UnknownOpcode(other)),
        })
    }
}

/// One frame from the server, unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The last frame of its message.
    pub fin: bool,
    pub opcode: Opcode,
    pub payload: Vec<u8>,
}

/// Decodes one frame from the front of `buf`: the frame and the bytes it took, or `None` when
/// `buf` does not hold all of it yet.
///
/// A payload over `limit` bytes is an error as soon as its length is known, before the payload
/// has arrived; an opcode RFC 6455 does not define is an error once the frame is whole. A masked
/// frame (which a server should not send) is unmasked. The reserved bits are ignored.
pub fn decode_frame(buf: &[u8], limit: usize) -> Result<Option<(Frame, usize)>, WsError> {
    let [b0, b1, rest @ ..] = buf else { return Ok(None) };
    let (len, rest) = match b1 & 0x7f {
        126 => match rest.split_first_chunk::<2>() {
            Some((l, rest)) => (u64::from(u16::from_be_bytes(*l)), rest),
            None => return Ok(None),
        },
        127 => match rest.split_first_chunk::<8>() {
            Some((l, rest)) => (u64::from_be_bytes(*l), rest),
            None => return Ok(None),
        },
        n => (u64::from(n), rest),
    };
    let len = match usize::try_from(len) {
        Ok(len) if len <= limit => len,
        _ => return Err(WsError::Oversized),
    };
    let (mask, rest) = if b1 & 0x80 != 0 {
        match rest.split_first_chunk::<4>() {
            Some((m, rest)) => (Some(*m), rest),
            None => return Ok(None),
        }
    } else {
        (None, rest)
    };
    let (Some(payload), Some(after)) = (rest.get(..len), rest.get(len..)) else {
        return Ok(None);
    };
    let opcode = Opcode::from_bits(b0 & 0x0f)?;
    let mut payload = payload.to_vec();
    if let Some(key) = mask {
        for (b, k) in payload.iter_mut().zip(key.iter().cycle()) {
            *b ^= k;
        }
    }
    let used = buf.len().saturating_sub(after.len());
    Ok(Some((Frame { fin: b0 & 0x80 != 0, opcode, payload }, used)))
}

/// What a frame completed, for [`Messages::take`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A whole data message (text or binary), as text (invalid UTF-8 replaced).
    Text(String),
    /// A ping to answer with a pong carrying this payload (one that fits a control frame).
    Ping(Vec<u8>),
    /// The server closed the channel.
    Close,
}

/// Puts the server's frames together into messages of at most [`MAX_MESSAGE`] bytes.
#[derive(Debug, Default)]
pub struct Messages {
    message: Vec<u8>,
}

impl Messages {
    /// The most payload the next frame may carry: what is left of [`MAX_MESSAGE`] after the
    /// fragments of the message so far (the `limit` for [`decode_frame`]).
    pub fn room(&self) -> usize {
        MAX_MESSAGE.saturating_sub(self.message.len())
    }

    /// Takes the next frame: what it completed, if anything. Data frames (continuations
    /// included) add to the message until one has `fin`; pongs and pings too long to echo are
    /// skipped; a frame that does not fit [`room`](Messages::room) is an error.
    pub fn take(&mut self, frame: Frame) -> Result<Option<Event>, WsError> {
        if frame.payload.len() > self.room() {
            return Err(WsError::Oversized);
        }
        Ok(match frame.opcode {
            Opcode::Close => Some(Event::Close),
            Opcode::Ping if frame.payload.len() < 126 => Some(Event::Ping(frame.payload)),
            Opcode::Ping | Opcode::Pong => None,
            Opcode::Continuation | Opcode::Text | Opcode::Binary => {
                self.message.extend_from_slice(&frame.payload);
                if frame.fin {
                    let message = std::mem::take(&mut self.message);
                    Some(Event::Text(String::from_utf8_lossy(&message).into_owned()))
                } else {
                    None
                }
            }
        })
    }
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
        chunk.copy_from_slice(v.get(..chunk.len()).unwrap_or(&v));
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
        let (handshake, end) = loop {
            if let Some(done) = parse_upgrade(&buf, &key)? {
                break done;
            }
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the daemon closed the connection during the WebSocket upgrade",
                ));
            }
            buf.extend_from_slice(chunk.get(..n).unwrap_or(&chunk));
        };
        match handshake {
            Handshake::Status(status) => Ok(Upgrade::Status(status)),
            Handshake::Switched => {
                let rest = buf.split_off(end);
                Ok(Upgrade::Open(WebSocket { stream, buf: rest }))
            }
        }
    }

    /// Reads more of the stream into the buffer.
    async fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        let got = self.stream.read(&mut chunk).await?;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the daemon closed the status channel",
            ));
        }
        self.buf.extend_from_slice(chunk.get(..got).unwrap_or(&chunk));
        Ok(())
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mask = random_bytes::<4>();
        let mut frame = vec![0x80 | opcode];
        match u8::try_from(payload.len()) {
            Ok(len) if len < 126 => frame.push(0x80 | len),
            _ => return Err(invalid("control payload too long")),
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        self.stream.write_all(&frame).await
    }

    /// The next text message; `None` when the server closed the channel.
    pub async fn next_text(&mut self) -> io::Result<Option<String>> {
        let mut messages = Messages::default();
        loop {
            let Some((frame, used)) = decode_frame(&self.buf, messages.room())? else {
                self.fill().await?;
                continue;
            };
            self.buf.drain(..used);
            match messages.take(frame)? {
                Some(Event::Close) => {
                    let _ = self.send(0x8, &[]).await;
                    return Ok(None);
                }
                Some(Event::Ping(payload)) => self.send(0xA, &payload).await?,
                Some(Event::Text(text)) => return Ok(Some(text)),
                None => {}
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
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// RFC 6455, section 1.3: the example key and the accept its server answers.
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(n as u8),
            n if n <= 0xFFFF => {
                out.push(126);
                out.extend((n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend((n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    fn text(s: &str) -> Frame {
        Frame { fin: true, opcode: Opcode::Text, payload: s.as_bytes().to_vec() }
    }

    #[test]
    fn sha1_and_the_accept_key_match_the_published_vectors() {
        let hex = |b: [u8; 20]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(hex(sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(hex(sha1(b"abc")), "a9993e364706816aba3e25717850c26c9cd0d89d");
        // 56 bytes: the length no longer fits the first block.
        assert_eq!(
            hex(sha1(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
        assert_eq!(accept_key(KEY), ACCEPT);
    }

    #[test]
    fn the_upgrade_head_arriving_byte_by_byte_is_read_once_whole() {
        let head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             sec-websocket-ACCEPT:   {ACCEPT} \r\n\r\n"
        );
        let mut bytes = head.as_bytes().to_vec();
        bytes.extend(frame(0x81, b"hi"));
        for n in 0..head.len() {
            assert_eq!(parse_upgrade(&bytes[..n], KEY), Ok(None), "{n} bytes");
        }
        for n in head.len()..=bytes.len() {
            assert_eq!(
                parse_upgrade(&bytes[..n], KEY),
                Ok(Some((Handshake::Switched, head.len()))),
                "{n} bytes"
            );
        }
        let (_, used) = parse_upgrade(&bytes, KEY).unwrap().unwrap();
        assert_eq!(decode_frame(&bytes[used..], MAX_MESSAGE).unwrap().unwrap().0, text("hi"));
    }

    #[test]
    fn a_bad_or_missing_accept_key_is_an_error_and_other_statuses_pass_unchecked() {
        let answer = |accept: &str| format!("HTTP/1.1 101 OK\r\n{accept}\r\n\r\n");
        let wrong = answer(&format!("Sec-WebSocket-Accept: {}", accept_key("another key")));
        assert_eq!(parse_upgrade(wrong.as_bytes(), KEY), Err(WsError::BadAccept));
        let empty = answer("Sec-WebSocket-Accept:");
        assert_eq!(parse_upgrade(empty.as_bytes(), KEY), Err(WsError::BadAccept));
        let none = answer("Upgrade: websocket");
        assert_eq!(parse_upgrade(none.as_bytes(), KEY), Err(WsError::MissingAccept));
        // The accept is a header of its own, not part of another one's value.
        let inside = answer(&format!("X-Note: Sec-WebSocket-Accept: {ACCEPT}"));
        assert_eq!(parse_upgrade(inside.as_bytes(), KEY), Err(WsError::MissingAccept));
        assert_eq!(
            parse_upgrade(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Digest\r\n\r\n", KEY),
            Ok(Some((Handshake::Status(401), 55)))
        );
        assert_eq!(parse_upgrade(b"SSH-2.0-OpenSSH\r\n\r\n", KEY), Err(WsError::NotHttp));
        assert_eq!(parse_upgrade(b"\r\n\r\n", KEY), Err(WsError::NotHttp));
    }

    #[test]
    fn an_upgrade_head_over_the_bound_is_an_error_however_it_arrives() {
        let mut long = b"HTTP/1.1 101 OK\r\nX: ".to_vec();
        long.resize(MAX_HEADER - 1, b'a');
        assert_eq!(parse_upgrade(&long, KEY), Ok(None));
        long.push(b'a');
        assert_eq!(parse_upgrade(&long, KEY), Err(WsError::HeaderTooLarge));
        // Its end arriving in the same read does not make it acceptable.
        long.extend(b"\r\n\r\n");
        assert_eq!(parse_upgrade(&long, KEY), Err(WsError::HeaderTooLarge));
        // A head of exactly the bound is read.
        let mut exact = b"HTTP/1.1 404 Not Found\r\nX: ".to_vec();
        exact.resize(MAX_HEADER - 4, b'a');
        exact.extend(b"\r\n\r\n");
        assert_eq!(parse_upgrade(&exact, KEY), Ok(Some((Handshake::Status(404), MAX_HEADER))));
    }

    #[test]
    fn frames_arriving_byte_by_byte_decode_once_whole() {
        let long = "x".repeat(300);
        let mut wire = frame(0x81, b"hello");
        wire.extend(frame(0x01, long.as_bytes())); // 16-bit length, not final
        wire.extend([0x80, 127, 0, 0, 0, 0, 0, 0, 0, 3, b'e', b'n', b'd']); // 64-bit length
        wire.extend(frame(0x89, b"pg"));
        wire.extend(frame(0x88, b""));
        let expected = [
            text("hello"),
            Frame { fin: false, opcode: Opcode::Text, payload: long.into_bytes() },
            Frame { fin: true, opcode: Opcode::Continuation, payload: b"end".to_vec() },
            Frame { fin: true, opcode: Opcode::Ping, payload: b"pg".to_vec() },
            Frame { fin: true, opcode: Opcode::Close, payload: vec![] },
        ];
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for &b in &wire {
            buf.push(b);
            if let Some((f, used)) = decode_frame(&buf, MAX_MESSAGE).unwrap() {
                assert_eq!(used, buf.len(), "a frame is decoded as soon as its last byte arrives");
                buf.clear();
                got.push(f);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(got, expected);
        // Whole, the same frames come out one after the other.
        let mut rest = &wire[..];
        let mut again = Vec::new();
        while let Some((f, used)) = decode_frame(rest, MAX_MESSAGE).unwrap() {
            again.push(f);
            rest = &rest[used..];
        }
        assert!(rest.is_empty());
        assert_eq!(again, expected);
    }

    #[test]
    fn a_frame_over_the_bound_is_an_error_before_its_payload_arrives() {
        let over = MAX_MESSAGE + 1;
        let mut wire = vec![0x81, 127];
        wire.extend((over as u64).to_be_bytes());
        assert_eq!(decode_frame(&wire[..9], MAX_MESSAGE), Ok(None));
        assert_eq!(decode_frame(&wire, MAX_MESSAGE), Err(WsError::Oversized));
        assert_eq!(
            decode_frame(&[0x81, 127, 0xff, 0, 0, 0, 0, 0, 0, 0], MAX_MESSAGE),
            Err(WsError::Oversized)
        );
        // The bound is the caller's: what is left of the message so far.
        assert_eq!(decode_frame(&[0x81, 126, 0, 200], 199), Err(WsError::Oversized));
        assert_eq!(decode_frame(&[0x81, 126, 0, 200], 200), Ok(None));
        let exact = frame(0x82, &vec![7; MAX_MESSAGE]);
        let (f, used) = decode_frame(&exact, MAX_MESSAGE).unwrap().unwrap();
        assert_eq!((f.payload.len(), used), (MAX_MESSAGE, exact.len()));
    }

    #[test]
    fn a_masked_server_frame_is_unmasked_and_an_unknown_opcode_is_an_error() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut wire = vec![0x81, 0x85];
        wire.extend(key);
        wire.extend(b"Hello".iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
        for n in 0..wire.len() {
            assert_eq!(decode_frame(&wire[..n], MAX_MESSAGE), Ok(None), "{n} bytes");
        }
        assert_eq!(decode_frame(&wire, MAX_MESSAGE), Ok(Some((text("Hello"), wire.len()))));
        assert_eq!(decode_frame(&[0x83, 0], MAX_MESSAGE), Err(WsError::UnknownOpcode(3)));
        assert_eq!(decode_frame(&[0x8B, 1], MAX_MESSAGE), Ok(None));
        assert_eq!(decode_frame(&[0x8B, 1, 0], MAX_MESSAGE), Err(WsError::UnknownOpcode(0xB)));
    }

    #[test]
    fn messages_join_fragments_within_the_bound_and_answer_short_pings() {
        let mut m = Messages::default();
        let part = |fin, opcode, n: usize| Frame { fin, opcode, payload: vec![b'a'; n] };
        assert_eq!(m.take(part(false, Opcode::Text, 3)), Ok(None));
        assert_eq!(m.room(), MAX_MESSAGE - 3);
        assert_eq!(m.take(part(true, Opcode::Ping, 2)), Ok(Some(Event::Ping(b"aa".to_vec()))));
        assert_eq!(m.take(part(true, Opcode::Ping, 126)), Ok(None));
        assert_eq!(m.take(part(true, Opcode::Pong, 1)), Ok(None));
        assert_eq!(
            m.take(part(true, Opcode::Continuation, 2)),
            Ok(Some(Event::Text("aaaaa".into())))
        );
        assert_eq!(m.room(), MAX_MESSAGE);
        // Invalid UTF-8 is replaced, not refused.
        let bad = Frame { fin: true, opcode: Opcode::Binary, payload: vec![b'o', 0xff, b'k'] };
        assert_eq!(m.take(bad), Ok(Some(Event::Text("o\u{fffd}k".into()))));
        // Fragments adding up to more than the bound.
        assert_eq!(m.take(part(false, Opcode::Text, MAX_MESSAGE - 1)), Ok(None));
        assert_eq!(m.room(), 1);
        assert_eq!(decode_frame(&frame(0x80, b"xy"), m.room()), Err(WsError::Oversized));
        assert_eq!(m.take(part(true, Opcode::Continuation, 2)), Err(WsError::Oversized));
        assert_eq!(m.take(part(true, Opcode::Close, 0)), Ok(Some(Event::Close)));
    }

    /// A server that answers the upgrade request with `head` (its `{accept}` replaced by the
    /// accept for the request's key) and then `frames`; gives what it received.
    fn serve(l: TcpListener, head: String, frames: Vec<u8>) -> tokio::task::JoinHandle<Vec<u8>> {
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = vec![0u8; 2048];
            let n = s.read(&mut req).await.unwrap();
            let req = req[..n].to_vec();
            let text = String::from_utf8_lossy(&req);
            let key = text
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap_or_default();
            let mut answer = head.replace("{accept}", &accept_key(key)).into_bytes();
            answer.extend(frames);
            s.write_all(&answer).await.unwrap();
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(
                std::time::Duration::from_millis(300),
                s.read_to_end(&mut rest),
            )
            .await;
            let mut all = req;
            all.extend(rest);
            all
        })
    }

    async fn pair(head: &str, frames: Vec<u8>) -> (io::Result<Upgrade>, Vec<u8>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = serve(l, head.to_string(), frames);
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

    const SWITCHED: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                            Sec-WebSocket-Accept: {accept}\r\n\r\n";

    #[tokio::test]
    async fn reads_frames_answers_pings_and_refuses_junk() {
        let mut bytes = frame(0x81, b"hello");
        bytes.extend(frame(0x89, b"pg"));
        bytes.extend(frame(0x01, b"spl"));
        bytes.extend(frame(0x80, b"it!"));
        bytes.extend(frame(0x88, b""));
        let (up, seen) = pair(SWITCHED, bytes).await;
        assert!(matches!(up, Ok(Upgrade::Status(101))));
        let head = String::from_utf8_lossy(&seen);
        assert!(head.starts_with("GET /ws HTTP/1.1\r\n"));
        assert!(head.contains("Authorization: Digest x\r\n"));
        assert!(head.contains("Sec-WebSocket-Version: 13\r\n"));
        // The pong: masked, opcode 0xA, 2 bytes.
        let i = seen.windows(2).position(|w| w == [0x8A, 0x82]).expect("a masked pong");
        let key = &seen[i + 2..i + 6];
        assert_eq!([seen[i + 6] ^ key[0], seen[i + 7] ^ key[1]], *b"pg");
        // And the close, answered.
        assert!(seen.windows(2).any(|w| w == [0x88, 0x80]), "a masked close");

        let (up, _) = pair("HTTP/1.1 401 Unauthorized\r\n\r\n", vec![]).await;
        assert!(matches!(up, Ok(Upgrade::Status(401))));
        let (up, _) = pair("garbage without end", vec![]).await;
        assert!(up.is_err());
        let (up, _) =
            pair("HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: x{accept}\r\n\r\n", vec![]).await;
        let e = up.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("does not match the key sent"), "{e}");
    }

    #[tokio::test]
    async fn oversized_truncated_and_unknown_frames_are_errors() {
        for tail in
            [vec![0x81, 127, 0xff, 0, 0, 0, 0, 0, 0, 0], vec![0x81, 10, b'a'], vec![0x83, 0]]
        {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let _server = serve(l, SWITCHED.to_string(), tail);
            let c = TcpStream::connect(addr).await.unwrap();
            let Upgrade::Open(mut ws) = WebSocket::upgrade(c, "h", "/", None).await.unwrap() else {
                panic!("upgrade")
            };
            assert!(ws.next_text().await.is_err());
        }
    }
}
