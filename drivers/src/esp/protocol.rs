//! The ROM loader's packets: requests (`0x00`, opcode, length, checksum, data) and responses
//! (`0x01`, opcode, length, value, data ending in status bytes), the opcodes, the XOR block
//! checksum and the ROM's error codes.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

/// Initial value of the FLASH_DATA / MEM_DATA block checksum.
pub const CHECKSUM_SEED: u8 = 0xEF;

/// Block size of an uncompressed flash download through the ROM loader.
pub const FLASH_WRITE_SIZE: usize = 0x400;

/// Flash sector size: the unit the ROM erases.
pub const FLASH_SECTOR_SIZE: u32 = 0x1000;

/// The payload of SYNC: `07 07 12 20` then 32 times `0x55` (also the ROM's baud detection).
pub fn sync_payload() -> Vec<u8> {
    let mut data = vec![0x07, 0x07, 0x12, 0x20];
    data.extend_from_slice(&[0x55; 32]);
    data
}

/// The checksum of a data block: `0xEF` XOR every byte, sent in the request's checksum field.
pub fn checksum(data: &[u8]) -> u32 {
    u32::from(data.iter().fold(CHECKSUM_SEED, |acc, b| acc ^ b))
}

/// The loader's commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Command {
    FlashBegin = 0x02,
    FlashData = 0x03,
    FlashEnd = 0x04,
    MemBegin = 0x05,
    MemEnd = 0x06,
    MemData = 0x07,
    Sync = 0x08,
    WriteReg = 0x09,
    ReadReg = 0x0A,
    SpiSetParams = 0x0B,
    SpiAttach = 0x0D,
    ReadFlashSlow = 0x0E,
    ChangeBaudrate = 0x0F,
    FlashDeflBegin = 0x10,
    FlashDeflData = 0x11,
    FlashDeflEnd = 0x12,
    SpiFlashMd5 = 0x13,
    GetSecurityInfo = 0x14,
}

impl Command {
    /// Every command, for lookups by opcode.
    pub const ALL: [Command; 18] = [
        Command::FlashBegin,
        Command::FlashData,
        Command::FlashEnd,
        Command::MemBegin,
        Command::MemEnd,
        Command::MemData,
        Command::Sync,
        Command::WriteReg,
        Command::ReadReg,
        Command::SpiSetParams,
        Command::SpiAttach,
        Command::ReadFlashSlow,
        Command::ChangeBaudrate,
        Command::FlashDeflBegin,
        Command::FlashDeflData,
        Command::FlashDeflEnd,
        Command::SpiFlashMd5,
        Command::GetSecurityInfo,
    ];

    /// The command with opcode `op`, if it is one.
    pub fn from_op(op: u8) -> Option<Command> {
        Command::ALL.into_iter().find(|c| *c as u8 == op)
    }

    /// The opcode.
    pub fn op(self) -> u8 {
        self as u8
    }

    /// The name esptool and Espressif's documentation use.
    pub fn name(self) -> &'static str {
        match self {
            Command::FlashBegin => "FLASH_BEGIN",
            Command::FlashData => "FLASH_DATA",
            Command::FlashEnd => "FLASH_END",
            Command::MemBegin => "MEM_BEGIN",
            Command::MemEnd => "MEM_END",
            Command::MemData => "MEM_DATA",
            Command::Sync => "SYNC",
            Command::WriteReg => "WRITE_REG",
            Command::ReadReg => "READ_REG",
            Command::SpiSetParams => "SPI_SET_PARAMS",
            Command::SpiAttach => "SPI_ATTACH",
            Command::ReadFlashSlow => "READ_FLASH_SLOW",
            Command::ChangeBaudrate => "CHANGE_BAUDRATE",
            Command::FlashDeflBegin => "FLASH_DEFL_BEGIN",
            Command::FlashDeflData => "FLASH_DEFL_DATA",
            Command::FlashDeflEnd => "FLASH_DEFL_END",
            Command::SpiFlashMd5 => "SPI_FLASH_MD5",
            Command::GetSecurityInfo => "GET_SECURITY_INFO",
        }
    }
}

/// Build a request packet (before SLIP framing).
pub fn encode_request(op: u8, data: &[u8], checksum: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len().saturating_add(8));
    out.push(0x00);
    out.push(op);
    out.extend_from_slice(&(data.len().min(u16::MAX as usize) as u16).to_le_bytes());
    out.extend_from_slice(&checksum.to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// A request as a device reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub op: u8,
    pub checksum: u32,
    pub data: Vec<u8>,
}

/// Why a packet is not a well-formed request or response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet of {0} bytes is shorter than the 8-byte header")]
    Short(usize),
    #[error("packet direction byte is 0x{0:02X}, expected 0x{1:02X}")]
    Direction(u8, u8),
    #[error("packet says {declared} data bytes but carries {actual}")]
    Length { declared: usize, actual: usize },
}

/// Parse a request packet (the device side).
pub fn parse_request(packet: &[u8]) -> Result<Request, PacketError> {
    let (op, word, data) = split(packet, 0x00)?;
    Ok(Request { op, checksum: word, data: data.to_vec() })
}

/// A response packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub op: u8,
    /// READ_REG's register value; the ROM sends other values for other commands.
    pub value: u32,
    /// Response data, status bytes included.
    pub data: Vec<u8>,
}

/// Build a response packet (the device side).
pub fn encode_response(op: u8, value: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len().saturating_add(8));
    out.push(0x01);
    out.push(op);
    out.extend_from_slice(&(data.len().min(u16::MAX as usize) as u16).to_le_bytes());
    out.extend_from_slice(&value.to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// Parse a response packet.
pub fn parse_response(packet: &[u8]) -> Result<Response, PacketError> {
    let (op, value, data) = split(packet, 0x01)?;
    Ok(Response { op, value, data: data.to_vec() })
}

/// The opcode, the value or checksum word and the declared data of a packet (bytes after the
/// declared length are ignored).
fn split(packet: &[u8], direction: u8) -> Result<(u8, u32, &[u8]), PacketError> {
    let Some((&[dir, op, l0, l1, w0, w1, w2, w3], rest)) = packet.split_first_chunk::<8>() else {
        return Err(PacketError::Short(packet.len()));
    };
    if dir != direction {
        return Err(PacketError::Direction(dir, direction));
    }
    let len = usize::from(u16::from_le_bytes([l0, l1]));
    let Some(data) = rest.get(..len) else {
        return Err(PacketError::Length { declared: len, actual: rest.len() });
    };
    Ok((op, u32::from_le_bytes([w0, w1, w2, w3]), data))
}

/// The status of a response: `Ok(data before the status)` or the ROM's error code.
///
/// The status bytes follow `resp_data_len` bytes of data: `00 00` is success, `01 CODE` a failure.
/// The ESP32 family's ROM sends two more reserved bytes, the ESP8266 ROM and the flasher stub do
/// not; they are ignored either way.
pub fn status(data: &[u8], resp_data_len: usize) -> Result<&[u8], StatusError> {
    if let Some((body, rest)) = data.split_at_checked(resp_data_len)
        && let [failed, code, ..] = *rest
    {
        return if failed != 0 { Err(StatusError::Rom(code)) } else { Ok(body) };
    }
    // A failure carries no data: its status comes first.
    if let [failed, code, ..] = *data
        && failed != 0
    {
        return Err(StatusError::Rom(code));
    }
    // Only a `resp_data_len` within 2 of usize::MAX saturates; no slice is that long anyway.
    Err(StatusError::Short { len: data.len(), needed: resp_data_len.saturating_add(2) })
}

/// A response's status was a failure or missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusError {
    /// The ROM's error code.
    Rom(u8),
    /// The response had fewer bytes than data plus status.
    Short { len: usize, needed: usize },
}

/// ROM loader error codes (the byte after a failure status).
pub mod rom_error {
    pub const INVALID_PARAMETER: u8 = 0x01;
    pub const MALLOC_FAILED: u8 = 0x02;
    pub const SEND_FAILED: u8 = 0x03;
    pub const RECEIVE_FAILED: u8 = 0x04;
    /// Also the answer to a command the ROM does not know.
    pub const INVALID_MESSAGE: u8 = 0x05;
    pub const FAILED_TO_ACT: u8 = 0x06;
    pub const CHECKSUM: u8 = 0x07;
    pub const FLASH_WRITE: u8 = 0x08;
    pub const FLASH_READ: u8 = 0x09;
    pub const FLASH_READ_LENGTH: u8 = 0x0A;
    pub const DEFLATE: u8 = 0x0B;
    pub const DEFLATE_ADLER32: u8 = 0x0C;
    pub const DEFLATE_PARAMETER: u8 = 0x0D;
    pub const RAM_SIZE: u8 = 0x0E;
    pub const RAM_ADDRESS: u8 = 0x0F;
}

/// What a ROM error code means, in Espressif's words.
pub fn rom_error_meaning(code: u8) -> &'static str {
    use rom_error::*;
    match code {
        0x00 => "undefined error",
        INVALID_PARAMETER => "the input parameter is invalid",
        MALLOC_FAILED => "failed to allocate memory",
        SEND_FAILED => "failed to send out a message",
        RECEIVE_FAILED => "failed to receive a message",
        INVALID_MESSAGE => {
            "the format of the received message is invalid (or the command is not supported by this ROM)"
        }
        FAILED_TO_ACT => "the message was understood but running it failed",
        CHECKSUM => "checksum error: the data block arrived corrupted",
        FLASH_WRITE => {
            "flash write error: the data read back from flash differed from what was written"
        }
        FLASH_READ => "flash read error: the SPI read failed",
        FLASH_READ_LENGTH => "flash read length error",
        DEFLATE => "deflate error",
        DEFLATE_ADLER32 => "deflate Adler-32 error",
        DEFLATE_PARAMETER => "deflate parameter error",
        RAM_SIZE => "invalid RAM binary size",
        RAM_ADDRESS => "invalid RAM binary address",
        0x64 => "invalid parameter",
        0x65 => "invalid format",
        0x66 => "description too long",
        0x67 => "bad encoding description",
        0x69 => "insufficient storage",
        _ => "unknown error code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_xor_from_0xef() {
        assert_eq!(checksum(&[]), 0xEF);
        assert_eq!(checksum(&[0xEF]), 0);
        assert_eq!(checksum(&[0x01, 0x02, 0x04]), 0xEF ^ 0x07);
    }

    #[test]
    fn request_and_response_round_trip() {
        let req = encode_request(Command::FlashData.op(), &[1, 2, 3], 0xEC);
        assert_eq!(req, [0, 3, 3, 0, 0xEC, 0, 0, 0, 1, 2, 3]);
        assert_eq!(
            parse_request(&req).unwrap(),
            Request { op: 3, checksum: 0xEC, data: vec![1, 2, 3] }
        );
        let resp = encode_response(0x0A, 0x00F0_1D83, &[0, 0, 0, 0]);
        let r = parse_response(&resp).unwrap();
        assert_eq!((r.op, r.value, r.data.len()), (0x0A, 0x00F0_1D83, 4));
        assert_eq!(status(&r.data, 0), Ok(&[][..]));
    }

    #[test]
    fn malformed_packets_are_errors() {
        assert_eq!(parse_response(&[1, 2, 3]), Err(PacketError::Short(3)));
        assert_eq!(parse_response(&[0; 8]), Err(PacketError::Direction(0, 1)));
        assert_eq!(
            parse_response(&[1, 8, 9, 0, 0, 0, 0, 0, 1]),
            Err(PacketError::Length { declared: 9, actual: 1 })
        );
    }

    #[test]
    fn status_bytes_follow_the_data() {
        let mut md5 = b"0123456789abcdef0123456789abcdef".to_vec();
        md5.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(status(&md5, 32).unwrap().len(), 32);
        assert_eq!(status(&[1, 0x07, 0, 0], 0), Err(StatusError::Rom(0x07)));
        // A failure carries no data, so its status comes first even when data was expected.
        assert_eq!(status(&[1, 0x05, 0, 0], 32), Err(StatusError::Rom(0x05)));
        assert_eq!(status(&[0], 0), Err(StatusError::Short { len: 1, needed: 2 }));
        assert_eq!(Command::from_op(0x13), Some(Command::SpiFlashMd5));
        assert_eq!(Command::from_op(0xAA), None);
    }
}
