//! The 8-byte SMP header (big-endian), shared by every transport.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use super::SmpError;

/// Size of the SMP header in bytes.
pub const HEADER_LEN: usize = 8;

/// Management group: OS.
pub const GROUP_OS: u16 = 0;
/// Management group: image.
pub const GROUP_IMAGE: u16 = 1;

/// SMP operation (the low 3 bits of the first header byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read = 0,
    ReadRsp = 1,
    Write = 2,
    WriteRsp = 3,
}

impl Op {
    fn from_bits(bits: u8) -> Option<Op> {
        match bits {
            0 => Some(Op::Read),
            1 => Some(Op::ReadRsp),
            2 => Some(Op::Write),
            3 => Some(Op::WriteRsp),
            _ => None,
        }
    }

    /// The response op for a request op.
    pub fn response(self) -> Op {
        match self {
            Op::Read | Op::ReadRsp => Op::ReadRsp,
            Op::Write | Op::WriteRsp => Op::WriteRsp,
        }
    }
}

/// A decoded SMP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub op: Op,
    /// Protocol version: 0 (SMP v1) or 1 (SMP v2).
    pub version: u8,
    pub flags: u8,
    /// Length of the CBOR body that follows the header.
    pub len: u16,
    pub group: u16,
    pub seq: u8,
    pub id: u8,
}

impl Header {
    /// A v2 request header.
    pub fn request(op: Op, group: u16, id: u8, seq: u8, len: u16) -> Header {
        Header { op, version: 1, flags: 0, len, group, seq, id }
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let g = self.group.to_be_bytes();
        let l = self.len.to_be_bytes();
        [
            (self.op as u8) | ((self.version & 0x3) << 3),
            self.flags,
            l[0],
            l[1],
            g[0],
            g[1],
            self.seq,
            self.id,
        ]
    }

    pub fn parse(bytes: &[u8]) -> Result<Header, SmpError> {
        Header::split(bytes).map(|(header, _)| header)
    }

    /// The header of a packet and the bytes after it (the body, not checked against `len`).
    pub fn split(bytes: &[u8]) -> Result<(Header, &[u8]), SmpError> {
        let Some((&[b0, flags, l0, l1, g0, g1, seq, id], body)) =
            bytes.split_first_chunk::<HEADER_LEN>()
        else {
            return Err(SmpError::Malformed(format!(
                "packet of {} bytes is shorter than the 8-byte SMP header",
                bytes.len()
            )));
        };
        let op = Op::from_bits(b0 & 0x7)
            .ok_or_else(|| SmpError::Malformed(format!("unknown SMP operation {}", b0 & 0x7)))?;
        let header = Header {
            op,
            version: (b0 >> 3) & 0x3,
            flags,
            len: u16::from_be_bytes([l0, l1]),
            group: u16::from_be_bytes([g0, g1]),
            seq,
            id,
        };
        Ok((header, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_with_v2_bits() {
        let h = Header::request(Op::Write, GROUP_IMAGE, 1, 0x42, 300);
        let b = h.to_bytes();
        assert_eq!(b, [0x0a, 0, 0x01, 0x2c, 0, 1, 0x42, 1]);
        assert_eq!(Header::parse(&b).unwrap(), h);
    }

    #[test]
    fn short_or_unknown_op_is_an_error() {
        assert!(matches!(Header::parse(&[0; 7]), Err(SmpError::Malformed(_))));
        assert!(matches!(Header::parse(&[7, 0, 0, 0, 0, 0, 0, 0]), Err(SmpError::Malformed(_))));
    }
}
