//! SLIP framing (RFC 1055) as the ESP ROM loader uses it: every packet starts and ends with
//! `0xC0`; inside, `0xC0` is sent as `0xDB 0xDC` and `0xDB` as `0xDB 0xDD`.
//!
//! The decoder is fed whatever the line delivers: boot messages, noise, half frames. Bytes outside
//! a frame are ignored, a frame longer than the decoder's limit is dropped (and reported once), and
//! a bad escape sequence makes the frame an error; nothing a device sends can make it panic or grow
//! without bound.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

/// Frame delimiter.
pub const END: u8 = 0xC0;
/// Escape byte.
pub const ESC: u8 = 0xDB;
/// Escaped `END`.
pub const ESC_END: u8 = 0xDC;
/// Escaped `ESC`.
pub const ESC_ESC: u8 = 0xDD;

/// A frame that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlipError {
    #[error("SLIP frame longer than {max} bytes was dropped (line noise or a wrong baud rate?)")]
    TooLong { max: usize },
    #[error("SLIP frame has an invalid escape sequence 0xDB 0x{0:02X} (line noise?)")]
    BadEscape(u8),
}

/// Wrap `packet` in a SLIP frame.
pub fn encode(packet: &[u8]) -> Vec<u8> {
    // A capacity hint: one escape per 16 bytes guessed, plus the two delimiters.
    let mut out =
        Vec::with_capacity(packet.len().saturating_add(packet.len() / 16).saturating_add(2));
    out.push(END);
    for &b in packet {
        match b {
            END => out.extend_from_slice(&[ESC, ESC_END]),
            ESC => out.extend_from_slice(&[ESC, ESC_ESC]),
            b => out.push(b),
        }
    }
    out.push(END);
    out
}

/// Streaming SLIP decoder with a bounded frame buffer.
#[derive(Debug)]
pub struct SlipDecoder {
    max: usize,
    buf: Vec<u8>,
    in_frame: bool,
    escape: bool,
    error: Option<SlipError>,
}

impl SlipDecoder {
    /// A decoder that accepts frames of at most `max` decoded bytes.
    pub fn new(max: usize) -> SlipDecoder {
        SlipDecoder { max, buf: Vec::new(), in_frame: false, escape: false, error: None }
    }

    /// Feed received bytes; returns the frames (or frame errors) they completed, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Result<Vec<u8>, SlipError>> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == END {
                if self.in_frame && (!self.buf.is_empty() || self.error.is_some()) {
                    let frame = std::mem::take(&mut self.buf);
                    out.push(match self.error.take() {
                        Some(e) => Err(e),
                        None => Ok(frame),
                    });
                    self.in_frame = false;
                } else {
                    // A start delimiter (or two delimiters back to back).
                    self.in_frame = true;
                }
                self.escape = false;
                continue;
            }
            if !self.in_frame {
                continue;
            }
            let byte = if self.escape {
                self.escape = false;
                match b {
                    ESC_END => END,
                    ESC_ESC => ESC,
                    other => {
                        if self.error.is_none() {
                            self.error = Some(SlipError::BadEscape(other));
                        }
                        continue;
                    }
                }
            } else if b == ESC {
                self.escape = true;
                continue;
            } else {
                b
            };
            if self.error.is_some() {
                continue;
            }
            if self.buf.len() >= self.max {
                self.error = Some(SlipError::TooLong { max: self.max });
                self.buf = Vec::new();
                continue;
            }
            self.buf.push(byte);
        }
        out
    }

    /// Forget any partial frame (after a baud change or a reset).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.in_frame = false;
        self.escape = false;
        self.error = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_escapes_delimiters() {
        let packet = [0x00, END, 0x01, ESC, ESC_END, ESC_ESC, 0xff];
        let wire = encode(&packet);
        assert_eq!(
            wire,
            [END, 0x00, ESC, ESC_END, 0x01, ESC, ESC_ESC, ESC_END, ESC_ESC, 0xff, END]
        );
        let mut d = SlipDecoder::new(64);
        assert_eq!(d.push(&wire), vec![Ok(packet.to_vec())]);
    }

    #[test]
    fn noise_between_frames_and_split_reads() {
        let a = encode(b"first");
        let b = encode(&[END, ESC]);
        let mut stream =
            b"ets Jun  8 2016 00:22:57\r\nrst:0x1 (POWERON_RESET),boot:0x3 (DOWNLOAD_BOOT)\r\n"
                .to_vec();
        stream.extend_from_slice(&a);
        stream.extend_from_slice(b"\x00\x55garbage");
        stream.extend_from_slice(&b);
        let mut d = SlipDecoder::new(64);
        let mut got = Vec::new();
        for chunk in stream.chunks(3) {
            got.extend(d.push(chunk));
        }
        assert_eq!(got, vec![Ok(b"first".to_vec()), Ok(vec![END, ESC])]);
    }

    #[test]
    fn back_to_back_delimiters_make_no_empty_frames() {
        let mut d = SlipDecoder::new(16);
        assert_eq!(
            d.push(&[END, END, END, 1, 2, END, END, 3, END]),
            vec![Ok(vec![1, 2]), Ok(vec![3])]
        );
    }

    #[test]
    fn oversized_and_badly_escaped_frames_are_errors_and_the_next_frame_decodes() {
        let mut d = SlipDecoder::new(4);
        let mut stream = vec![END, 1, 2, 3, 4, 5, 6, END];
        stream.extend_from_slice(&[END, ESC, 0x42, 7, END]);
        stream.extend_from_slice(&encode(&[9, 9]));
        let got = d.push(&stream);
        assert_eq!(
            got,
            vec![
                Err(SlipError::TooLong { max: 4 }),
                Err(SlipError::BadEscape(0x42)),
                Ok(vec![9, 9])
            ]
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_stay_bounded() {
        let mut d = SlipDecoder::new(32);
        let mut x: u32 = 0x1234_5678;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let b = [(x & 0xff) as u8, (x >> 8) as u8 | 0xc0, (x >> 16) as u8];
            for f in d.push(&b).into_iter().flatten() {
                assert!(f.len() <= 32);
            }
            assert!(d.buf.len() <= 32);
        }
    }
}
