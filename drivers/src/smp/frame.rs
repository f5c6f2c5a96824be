//! SMP over a serial console, framed exactly as Zephyr's mcumgr console transport does it.
//!
//! A packet is `len (u16 BE, counts the SMP bytes plus the CRC) + SMP bytes + CRC-16/XMODEM (BE,
//! over the SMP bytes)`, base64-encoded and cut into lines of at most 127 bytes: `0x06 0x09` starts
//! the first line of a packet, `0x04 0x14` every continuation, each line ends with `\n`. With 124
//! base64 characters per line, a line carries 93 packet bytes.
//!
//! The decoder is fed raw bytes as they arrive. Anything that is not a frame (boot banners, log
//! lines from the device's console) is skipped. Base64 is decoded over the concatenated text of a
//! packet's lines, so it accepts senders that cut lines at any multiple of 4 characters (smpclient
//! uses 120, Zephyr 124).
//!
//! The decoder and the response parsers are fuzzed by `drivers/fuzz` (from `drivers/`:
//! `cargo +nightly fuzz run smp_frame_decoder`, `cargo +nightly fuzz run smp_response_parser`).
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use crc::{CRC_16_XMODEM, Crc};

/// Longest line on the wire, marker and newline included.
pub const MAX_FRAME: usize = 127;
/// Base64 characters per full line.
pub const B64_PER_FRAME: usize = 124;
/// Packet bytes carried by one full line.
pub const BYTES_PER_FRAME: usize = B64_PER_FRAME / 4 * 3;
/// First-frame marker.
pub const START: [u8; 2] = [0x06, 0x09];
/// Continuation-frame marker.
pub const CONTINUE: [u8; 2] = [0x04, 0x14];

const CRC16: Crc<u16> = Crc::<u16>::new(&CRC_16_XMODEM);

/// CRC-16/XMODEM as used by the framing.
pub fn crc16(data: &[u8]) -> u16 {
    CRC16.checksum(data)
}

/// Something that arrived on the console and looked like a frame but was not a valid packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("serial frame is not valid base64 (corrupted bytes on the line)")]
    Base64,
    #[error(
        "serial packet CRC mismatch: packet says {expected:#06x}, computed {computed:#06x} (corrupted bytes on the line)"
    )]
    Crc { expected: u16, computed: u16 },
    #[error(
        "serial packet announces {len} bytes, more than the {max}-byte limit (corrupted length or wrong device)"
    )]
    Oversized { len: usize, max: usize },
    #[error("serial packet length field says {announced} bytes but {actual} arrived")]
    Length { announced: usize, actual: usize },
    #[error("continuation frame without a start frame (a start frame was lost)")]
    StrayContinuation,
}

/// Longest packet the length field can announce: it counts the SMP bytes and the CRC in a u16.
pub const MAX_PACKET: usize = u16::MAX as usize - 2;

/// Encode one SMP packet into console frames (all lines concatenated).
///
/// `packet` is at most [`MAX_PACKET`] bytes (the serial link refuses longer ones before they get
/// here); a longer one is framed with its length field at 65,535, which no receiver takes for a
/// whole packet, never with a length cut to its low 16 bits.
pub fn encode(packet: &[u8]) -> Vec<u8> {
    let len_field = u16::try_from(packet.len().saturating_add(2)).unwrap_or(u16::MAX);
    let mut raw = Vec::with_capacity(packet.len().saturating_add(4));
    raw.extend_from_slice(&len_field.to_be_bytes());
    raw.extend_from_slice(packet);
    raw.extend_from_slice(&crc16(packet).to_be_bytes());
    let text = STANDARD.encode(&raw);
    let mut out = Vec::with_capacity(wire_len(packet.len()));
    for (i, line) in text.as_bytes().chunks(B64_PER_FRAME).enumerate() {
        out.extend_from_slice(if i == 0 { &START } else { &CONTINUE });
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out
}

/// Bytes on the wire for a packet of `packet_len` SMP bytes.
pub fn wire_len(packet_len: usize) -> usize {
    // Saturates only far past any packet the length field can announce.
    let text = base64_len(packet_len.saturating_add(4));
    text.saturating_add(text.div_ceil(B64_PER_FRAME).saturating_mul(3))
}

/// Characters of padded base64 for `bytes` bytes (saturating at `usize::MAX`).
fn base64_len(bytes: usize) -> usize {
    bytes.div_ceil(3).saturating_mul(4)
}

/// Incremental decoder for console frames; never panics on any input.
#[derive(Debug)]
pub struct FrameDecoder {
    line: Vec<u8>,
    text: Vec<u8>,
    in_packet: bool,
    max_packet: usize,
}

impl FrameDecoder {
    /// A decoder that rejects packets longer than `max_packet` SMP bytes.
    pub fn new(max_packet: usize) -> Self {
        FrameDecoder { line: Vec::new(), text: Vec::new(), in_packet: false, max_packet }
    }

    /// Feed bytes; returns the packets (or framing errors) completed by them, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Result<Vec<u8>, FrameError>> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                let line = std::mem::take(&mut self.line);
                if let Some(r) = self.line_done(&line) {
                    out.push(r);
                }
            } else if self.line.len() < 4 * MAX_FRAME {
                self.line.push(b);
            } else {
                // An endless line is console noise; keep only a possible marker at its end.
                self.line.clear();
                self.line.push(b);
            }
        }
        out
    }

    fn line_done(&mut self, line: &[u8]) -> Option<Result<Vec<u8>, FrameError>> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        // The markers are control bytes that never occur in text, so a frame may follow noise
        // that was not terminated by a newline.
        let pos = line.windows(2).rposition(|w| w == START || w == CONTINUE)?;
        let (marker, body) = line.get(pos..)?.split_first_chunk::<2>()?;
        if *marker == START {
            self.text.clear();
            self.in_packet = true;
        } else if !self.in_packet {
            return Some(Err(FrameError::StrayContinuation));
        }
        if !body.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=')) {
            self.reset();
            return Some(Err(FrameError::Base64));
        }
        self.text.extend_from_slice(body);
        if self.text.len() > base64_len(self.max_packet.saturating_add(4)).saturating_add(4) {
            let max = self.max_packet;
            self.reset();
            return Some(Err(FrameError::Oversized { len: usize::MAX, max }));
        }
        if !self.text.len().is_multiple_of(4) {
            return None;
        }
        let raw = match STANDARD.decode(&self.text) {
            Ok(raw) => raw,
            Err(_) => {
                self.reset();
                return Some(Err(FrameError::Base64));
            }
        };
        let (len_field, rest) = raw.split_first_chunk::<2>()?;
        let announced = usize::from(u16::from_be_bytes(*len_field));
        if announced > self.max_packet.saturating_add(2) {
            self.reset();
            return Some(Err(FrameError::Oversized { len: announced, max: self.max_packet }));
        }
        let have = rest.len();
        if have < announced {
            return None;
        }
        self.reset();
        let length_error = FrameError::Length { announced, actual: have };
        if have > announced {
            return Some(Err(length_error));
        }
        // Shorter than its own CRC (`announced` below 2).
        let Some((packet, crc)) = rest.split_last_chunk::<2>() else {
            return Some(Err(length_error));
        };
        let expected = u16::from_be_bytes(*crc);
        let computed = crc16(packet);
        if expected != computed {
            return Some(Err(FrameError::Crc { expected, computed }));
        }
        Some(Ok(packet.to_vec()))
    }

    fn reset(&mut self) {
        self.text.clear();
        self.in_packet = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Vec<Result<Vec<u8>, FrameError>> {
        FrameDecoder::new(4096).push(bytes)
    }

    #[test]
    fn matches_smpclient_reference_encoding() {
        // From smp.packet.encode(b"Hello, world!") in the smp Python package.
        assert_eq!(encode(b"Hello, world!"), b"\x06\tAA9IZWxsbywgd29ybGQhet4=\n");
    }

    #[test]
    fn long_packets_use_127_byte_frames_and_round_trip() {
        let packet: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let wire = encode(&packet);
        assert_eq!(wire.len(), wire_len(packet.len()));
        let lines: Vec<&[u8]> = wire.split_inclusive(|&b| b == b'\n').collect();
        assert!(lines.iter().all(|l| l.len() <= MAX_FRAME));
        assert_eq!(lines[0].len(), MAX_FRAME);
        assert_eq!(&lines[0][..2], &START);
        assert!(lines[1..].iter().all(|l| l[..2] == CONTINUE));
        assert_eq!(decode_all(&wire), vec![Ok(packet)]);
    }

    #[test]
    fn accepts_120_char_lines_and_byte_by_byte_input() {
        let packet = vec![0xa5u8; 400];
        let mut raw = ((packet.len() + 2) as u16).to_be_bytes().to_vec();
        raw.extend_from_slice(&packet);
        raw.extend_from_slice(&crc16(&packet).to_be_bytes());
        let text = STANDARD.encode(&raw);
        let mut wire = Vec::new();
        for (i, l) in text.as_bytes().chunks(120).enumerate() {
            wire.extend_from_slice(if i == 0 { &START } else { &CONTINUE });
            wire.extend_from_slice(l);
            wire.push(b'\n');
        }
        let mut d = FrameDecoder::new(4096);
        let mut got = Vec::new();
        for b in &wire {
            got.extend(d.push(std::slice::from_ref(b)));
        }
        assert_eq!(got, vec![Ok(packet)]);
    }

    #[test]
    fn console_noise_between_frames_is_skipped() {
        let mut wire = b"*** Booting Zephyr OS ***\r\n[00:00:01] <inf> app: hello\n".to_vec();
        wire.extend(encode(b"first"));
        wire.extend_from_slice(b"log line without newline ");
        wire.extend(encode(b"second"));
        assert_eq!(decode_all(&wire), vec![Ok(b"first".to_vec()), Ok(b"second".to_vec())]);
    }

    #[test]
    fn bad_crc_is_reported_and_the_next_packet_still_decodes() {
        let mut bad = encode(b"payload-bytes");
        bad[5] = if bad[5] == b'A' { b'B' } else { b'A' };
        bad.extend(encode(b"ok"));
        let got = decode_all(&bad);
        assert!(matches!(got[0], Err(FrameError::Crc { .. })), "{got:?}");
        assert_eq!(got[1], Ok(b"ok".to_vec()));
    }

    #[test]
    fn oversized_length_and_garbage_are_errors() {
        let mut raw = 60000u16.to_be_bytes().to_vec();
        raw.extend_from_slice(&[0; 10]);
        let mut wire = START.to_vec();
        wire.extend_from_slice(STANDARD.encode(&raw).as_bytes());
        wire.push(b'\n');
        assert!(matches!(decode_all(&wire)[0], Err(FrameError::Oversized { .. })));
        assert_eq!(decode_all(b"\x06\x09!!!!\n"), vec![Err(FrameError::Base64)]);
        assert_eq!(decode_all(b"\x04\x14AAAA\n"), vec![Err(FrameError::StrayContinuation)]);
        // A length shorter than what arrived.
        let mut raw = 3u16.to_be_bytes().to_vec();
        raw.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7]);
        let mut wire = START.to_vec();
        wire.extend_from_slice(STANDARD.encode(&raw).as_bytes());
        wire.push(b'\n');
        assert!(matches!(decode_all(&wire)[0], Err(FrameError::Length { .. })));
    }
}
