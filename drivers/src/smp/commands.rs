//! One small type per SMP command: the request encodes itself with [`Command::to_bytes`] and parses
//! its response with [`Command::parse_response`].
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use super::header::{GROUP_IMAGE, GROUP_OS, Header, Op};
use super::{DeviceError, SmpError};
use ciborium::Value;
use serde::Serialize;

/// A request/response pair of the SMP protocol.
pub trait Command {
    const OP: Op;
    const GROUP: u16;
    const ID: u8;
    /// What a successful response decodes to.
    type Response;

    /// The CBOR map of the request body.
    fn body(&self) -> Vec<(Value, Value)>;

    /// Decode the (error-free) response body.
    fn parse_body(map: &[(Value, Value)]) -> Result<Self::Response, SmpError>;

    /// A short name for error messages.
    fn name(&self) -> String;

    /// The whole SMP packet (header and body) for sequence number `seq`; a body longer than the
    /// header's 16-bit length can announce is [`SmpError::RequestTooLarge`].
    fn to_bytes(&self, seq: u8) -> Result<Vec<u8>, SmpError> {
        let mut body = Vec::new();
        #[allow(
            clippy::expect_used,
            reason = "a CBOR value written into a Vec: neither the encoder nor the writer can fail"
        )]
        ciborium::into_writer(&Value::Map(self.body()), &mut body)
            .expect("CBOR encoding into a Vec cannot fail");
        let len = u16::try_from(body.len())
            .map_err(|_| SmpError::RequestTooLarge { what: self.name(), len: body.len() })?;
        let header = Header::request(Self::OP, Self::GROUP, Self::ID, seq, len);
        let mut out = header.to_bytes().to_vec();
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Parse a response packet to this command sent with sequence number `seq`.
    fn parse_response(packet: &[u8], seq: u8) -> Result<Self::Response, SmpError> {
        let (header, body) = Header::split(packet)?;
        if header.op != Self::OP.response() || header.group != Self::GROUP || header.id != Self::ID
        {
            return Err(SmpError::Mismatch(format!(
                "expected op {:?} group {} id {}, got op {:?} group {} id {}",
                Self::OP.response(),
                Self::GROUP,
                Self::ID,
                header.op,
                header.group,
                header.id
            )));
        }
        if header.seq != seq {
            return Err(SmpError::Mismatch(format!(
                "expected sequence number {seq}, got {}",
                header.seq
            )));
        }
        if usize::from(header.len) != body.len() {
            return Err(SmpError::Malformed(format!(
                "header announces a {}-byte body but {} bytes arrived",
                header.len,
                body.len()
            )));
        }
        let map = parse_map(body)?;
        check_error(&map)?;
        Self::parse_body(&map)
    }
}

/// Decode a CBOR body that must be a map.
pub fn parse_map(body: &[u8]) -> Result<Vec<(Value, Value)>, SmpError> {
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let value: Value = ciborium::from_reader(body)
        .map_err(|e| SmpError::Malformed(format!("body is not valid CBOR: {e}")))?;
    match value {
        Value::Map(m) => Ok(m),
        other => Err(SmpError::Shape(format!("body is {} instead of a map", kind(&other)))),
    }
}

/// Turn a v1 `rc` or v2 `err: {group, rc}` into an error.
pub fn check_error(map: &[(Value, Value)]) -> Result<(), SmpError> {
    if let Some(err) = get(map, "err") {
        let Value::Map(err) = err else {
            return Err(SmpError::Shape("`err` is not a map".into()));
        };
        let group = int(err, "group")?.unwrap_or(-1);
        let rc = int(err, "rc")?.unwrap_or(-1);
        if rc != 0 {
            let group = u16::try_from(group).unwrap_or(u16::MAX);
            return Err(SmpError::Device(DeviceError { group: Some(group), rc }));
        }
    }
    if let Some(rc) = int(map, "rc")?
        && rc != 0
    {
        return Err(SmpError::Device(DeviceError { group: None, rc }));
    }
    Ok(())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Integer(_) => "an integer",
        Value::Bytes(_) => "a byte string",
        Value::Float(_) => "a float",
        Value::Text(_) => "a text string",
        Value::Bool(_) => "a boolean",
        Value::Null => "null",
        Value::Tag(..) => "a tagged value",
        Value::Array(_) => "an array",
        Value::Map(_) => "a map",
        _ => "an unknown CBOR value",
    }
}

/// Look up a text key in a CBOR map.
pub fn get<'a>(map: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    map.iter().find(|(k, _)| k.as_text() == Some(key)).map(|(_, v)| v)
}

fn int(map: &[(Value, Value)], key: &str) -> Result<Option<i64>, SmpError> {
    match get(map, key) {
        None => Ok(None),
        Some(Value::Integer(i)) => i64::try_from(i128::from(*i))
            .map(Some)
            .map_err(|_| SmpError::Shape(format!("`{key}` is out of range"))),
        Some(v) => Err(SmpError::Shape(format!("`{key}` is {} instead of an integer", kind(v)))),
    }
}

fn req_uint(map: &[(Value, Value)], key: &str) -> Result<u64, SmpError> {
    let v = int(map, key)?.ok_or_else(|| SmpError::Shape(format!("`{key}` is missing")))?;
    u64::try_from(v).map_err(|_| SmpError::Shape(format!("`{key}` is negative")))
}

fn text(map: &[(Value, Value)], key: &str) -> Result<Option<String>, SmpError> {
    match get(map, key) {
        None => Ok(None),
        Some(Value::Text(s)) => Ok(Some(s.clone())),
        Some(v) => Err(SmpError::Shape(format!("`{key}` is {} instead of text", kind(v)))),
    }
}

fn flag(map: &[(Value, Value)], key: &str) -> Result<bool, SmpError> {
    match get(map, key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(SmpError::Shape(format!("`{key}` is {} instead of a boolean", kind(v)))),
    }
}

fn t(s: &str) -> Value {
    Value::Text(s.to_string())
}

/// OS group, echo: the device returns the text.
#[derive(Debug, Clone)]
pub struct Echo {
    pub text: String,
}

impl Command for Echo {
    const OP: Op = Op::Write;
    const GROUP: u16 = GROUP_OS;
    const ID: u8 = 0;
    type Response = String;
    fn body(&self) -> Vec<(Value, Value)> {
        vec![(t("d"), t(&self.text))]
    }
    fn parse_body(map: &[(Value, Value)]) -> Result<String, SmpError> {
        text(map, "r")?.ok_or_else(|| SmpError::Shape("echo response has no `r`".into()))
    }
    fn name(&self) -> String {
        "echo".into()
    }
}

/// The device's SMP buffer parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Params {
    /// Size of one SMP receive buffer in bytes.
    pub buf_size: u32,
    /// Number of receive buffers (how many requests may be in flight).
    pub buf_count: u32,
}

/// OS group, MCUmgr parameters.
#[derive(Debug, Clone, Copy)]
pub struct McumgrParams;

impl Command for McumgrParams {
    const OP: Op = Op::Read;
    const GROUP: u16 = GROUP_OS;
    const ID: u8 = 6;
    type Response = Params;
    fn body(&self) -> Vec<(Value, Value)> {
        Vec::new()
    }
    fn parse_body(map: &[(Value, Value)]) -> Result<Params, SmpError> {
        let buf_size = req_uint(map, "buf_size")?;
        let buf_count = req_uint(map, "buf_count")?;
        if !(32..=65535).contains(&buf_size) || !(1..=64).contains(&buf_count) {
            return Err(SmpError::Shape(format!(
                "implausible buffer parameters buf_size={buf_size} buf_count={buf_count}"
            )));
        }
        Ok(Params { buf_size: buf_size as u32, buf_count: buf_count as u32 })
    }
    fn name(&self) -> String {
        "MCUmgr parameters".into()
    }
}

/// OS group, OS/application info (`uname`-like text).
#[derive(Debug, Clone)]
pub struct AppInfo {
    /// Format letters as in Zephyr (`a` for all); `None` for the device default.
    pub format: Option<String>,
}

impl Command for AppInfo {
    const OP: Op = Op::Read;
    const GROUP: u16 = GROUP_OS;
    const ID: u8 = 7;
    type Response = String;
    fn body(&self) -> Vec<(Value, Value)> {
        self.format.iter().map(|f| (t("format"), t(f))).collect()
    }
    fn parse_body(map: &[(Value, Value)]) -> Result<String, SmpError> {
        text(map, "output")?.ok_or_else(|| SmpError::Shape("info response has no `output`".into()))
    }
    fn name(&self) -> String {
        "OS/application info".into()
    }
}

/// What the bootloader-info command (OS group, id 8) answers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct BootloaderInfoResponse {
    /// The bootloader's name (`"MCUboot"`), for the query without `query`.
    pub bootloader: Option<String>,
    /// MCUboot's mode number, for `query: "mode"`.
    pub mode: Option<i64>,
}

/// OS group, bootloader info: `query` `None` asks for the bootloader's name, `"mode"` for
/// MCUboot's mode.
#[derive(Debug, Clone)]
pub struct BootloaderInfo {
    pub query: Option<String>,
}

impl Command for BootloaderInfo {
    const OP: Op = Op::Read;
    const GROUP: u16 = GROUP_OS;
    const ID: u8 = 8;
    type Response = BootloaderInfoResponse;
    fn body(&self) -> Vec<(Value, Value)> {
        self.query.iter().map(|q| (t("query"), t(q))).collect()
    }
    fn parse_body(map: &[(Value, Value)]) -> Result<BootloaderInfoResponse, SmpError> {
        Ok(BootloaderInfoResponse { bootloader: text(map, "bootloader")?, mode: int(map, "mode")? })
    }
    fn name(&self) -> String {
        "bootloader info".into()
    }
}

/// OS group, reset.
#[derive(Debug, Clone, Copy)]
pub struct Reset;

impl Command for Reset {
    const OP: Op = Op::Write;
    const GROUP: u16 = GROUP_OS;
    const ID: u8 = 5;
    type Response = ();
    fn body(&self) -> Vec<(Value, Value)> {
        Vec::new()
    }
    fn parse_body(_: &[(Value, Value)]) -> Result<(), SmpError> {
        Ok(())
    }
    fn name(&self) -> String {
        "reset".into()
    }
}

/// The state of one image slot as the device reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageSlotState {
    pub image: u32,
    pub slot: u32,
    pub version: String,
    /// The MCUboot SHA-256 TLV of the image in the slot, hex-encoded in JSON.
    #[serde(serialize_with = "as_hex")]
    pub hash: Vec<u8>,
    pub bootable: bool,
    pub pending: bool,
    pub confirmed: bool,
    pub active: bool,
    pub permanent: bool,
}

fn as_hex<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex_string(v))
}

/// Lower-case hex of bytes.
pub fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_images(map: &[(Value, Value)]) -> Result<Vec<ImageSlotState>, SmpError> {
    let Some(Value::Array(images)) = get(map, "images") else {
        return Err(SmpError::Shape("image state response has no `images` array".into()));
    };
    images
        .iter()
        .map(|v| {
            let Value::Map(m) = v else {
                return Err(SmpError::Shape("an `images` entry is not a map".into()));
            };
            let hash = match get(m, "hash") {
                None => Vec::new(),
                Some(Value::Bytes(b)) => b.clone(),
                Some(other) => {
                    return Err(SmpError::Shape(format!("`hash` is {}", kind(other))));
                }
            };
            Ok(ImageSlotState {
                image: int(m, "image")?.unwrap_or(0).clamp(0, u32::MAX as i64) as u32,
                slot: req_uint(m, "slot")?.min(u32::MAX as u64) as u32,
                version: text(m, "version")?.unwrap_or_default(),
                hash,
                bootable: flag(m, "bootable")?,
                pending: flag(m, "pending")?,
                confirmed: flag(m, "confirmed")?,
                active: flag(m, "active")?,
                permanent: flag(m, "permanent")?,
            })
        })
        .collect()
}

/// Image group, state read.
#[derive(Debug, Clone, Copy)]
pub struct ImageStateRead;

impl Command for ImageStateRead {
    const OP: Op = Op::Read;
    const GROUP: u16 = GROUP_IMAGE;
    const ID: u8 = 0;
    type Response = Vec<ImageSlotState>;
    fn body(&self) -> Vec<(Value, Value)> {
        Vec::new()
    }
    fn parse_body(map: &[(Value, Value)]) -> Result<Vec<ImageSlotState>, SmpError> {
        parse_images(map)
    }
    fn name(&self) -> String {
        "image state read".into()
    }
}

/// Image group, state write: mark an image for test boot, or confirm it.
#[derive(Debug, Clone)]
pub struct ImageStateWrite {
    /// The image hash; `None` with `confirm` confirms the running image.
    pub hash: Option<Vec<u8>>,
    pub confirm: bool,
}

impl Command for ImageStateWrite {
    const OP: Op = Op::Write;
    const GROUP: u16 = GROUP_IMAGE;
    const ID: u8 = 0;
    type Response = Vec<ImageSlotState>;
    fn body(&self) -> Vec<(Value, Value)> {
        let mut m = Vec::new();
        if let Some(h) = &self.hash {
            m.push((t("hash"), Value::Bytes(h.clone())));
        }
        m.push((t("confirm"), Value::Bool(self.confirm)));
        m
    }
    fn parse_body(map: &[(Value, Value)]) -> Result<Vec<ImageSlotState>, SmpError> {
        // Some servers answer a state write with only `rc: 0`.
        if get(map, "images").is_none() { Ok(Vec::new()) } else { parse_images(map) }
    }
    fn name(&self) -> String {
        if self.confirm { "image confirm".into() } else { "image test".into() }
    }
}

/// What the device says after an upload chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadAck {
    /// The offset the device expects next (everything before it is written).
    pub off: u64,
    /// Present on the last chunk of servers that verify the `sha`: whether it matched.
    pub matched: Option<bool>,
}

/// Image group, upload one chunk.
#[derive(Debug, Clone)]
pub struct ImageUpload<'a> {
    pub image: u32,
    pub off: u64,
    pub data: &'a [u8],
    /// Total image length, only in the first chunk.
    pub len: Option<u64>,
    /// SHA-256 of the whole image (identifies the upload for resume), only in the first chunk.
    pub sha: Option<[u8; 32]>,
    /// Only accept images newer than the running one, only in the first chunk.
    pub upgrade: Option<bool>,
}

impl Command for ImageUpload<'_> {
    const OP: Op = Op::Write;
    const GROUP: u16 = GROUP_IMAGE;
    const ID: u8 = 1;
    type Response = UploadAck;
    fn body(&self) -> Vec<(Value, Value)> {
        let mut m = Vec::with_capacity(6);
        if self.off == 0 && self.image != 0 {
            m.push((t("image"), Value::from(self.image)));
        }
        if let Some(len) = self.len {
            m.push((t("len"), Value::from(len)));
        }
        m.push((t("off"), Value::from(self.off)));
        if let Some(sha) = self.sha {
            m.push((t("sha"), Value::Bytes(sha.to_vec())));
        }
        m.push((t("data"), Value::Bytes(self.data.to_vec())));
        if let Some(u) = self.upgrade {
            m.push((t("upgrade"), Value::Bool(u)));
        }
        m
    }
    fn parse_body(map: &[(Value, Value)]) -> Result<UploadAck, SmpError> {
        let off = req_uint(map, "off")?;
        let matched = match get(map, "match") {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(v) => return Err(SmpError::Shape(format!("`match` is {}", kind(v)))),
        };
        Ok(UploadAck { off, matched })
    }
    fn name(&self) -> String {
        format!("image upload at offset {}", self.off)
    }
}

/// Image group, erase the secondary slot.
#[derive(Debug, Clone, Copy)]
pub struct ImageErase {
    pub slot: Option<u32>,
}

impl Command for ImageErase {
    const OP: Op = Op::Write;
    const GROUP: u16 = GROUP_IMAGE;
    const ID: u8 = 5;
    type Response = ();
    fn body(&self) -> Vec<(Value, Value)> {
        self.slot.iter().map(|s| (t("slot"), Value::from(*s))).collect()
    }
    fn parse_body(_: &[(Value, Value)]) -> Result<(), SmpError> {
        Ok(())
    }
    fn name(&self) -> String {
        "image erase".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(op: Op, group: u16, id: u8, seq: u8, body: Value) -> Vec<u8> {
        let mut b = Vec::new();
        ciborium::into_writer(&body, &mut b).unwrap();
        let mut h = Header::request(op, group, id, seq, b.len() as u16);
        h.op = op;
        let mut out = h.to_bytes().to_vec();
        out.extend(b);
        out
    }

    fn map(entries: Vec<(&str, Value)>) -> Value {
        Value::Map(entries.into_iter().map(|(k, v)| (t(k), v)).collect())
    }

    #[test]
    fn echo_request_bytes_and_response() {
        let bytes = Echo { text: "hi".into() }.to_bytes(3).unwrap();
        assert_eq!(&bytes[..8], &[0x0a, 0, 0, 6, 0, 0, 3, 0]);
        assert_eq!(&bytes[8..], &[0xa1, 0x61, b'd', 0x62, b'h', b'i']);
        let rsp = response(Op::WriteRsp, 0, 0, 3, map(vec![("r", t("hi"))]));
        assert_eq!(Echo::parse_response(&rsp, 3).unwrap(), "hi");
    }

    #[test]
    fn a_body_the_header_cannot_announce_is_an_error() {
        // 65,535 bytes of CBOR fit: a 1-byte map header, the key "d" (2), a 3-byte text header.
        let fits = Echo { text: "x".repeat(65_535 - 6) }.to_bytes(1).unwrap();
        assert_eq!(&fits[2..4], &[0xff, 0xff]);
        assert_eq!(fits.len(), 8 + 65_535);
        let err = Echo { text: "x".repeat(65_535 - 5) }.to_bytes(1).unwrap_err();
        assert!(
            matches!(&err, SmpError::RequestTooLarge { what, len: 65_536 } if what == "echo"),
            "{err:?}"
        );
        assert!(!err.is_transient());
    }

    #[test]
    fn wrong_seq_group_or_op_is_a_mismatch() {
        let rsp = response(Op::WriteRsp, 0, 0, 4, map(vec![("r", t("hi"))]));
        assert!(matches!(Echo::parse_response(&rsp, 3), Err(SmpError::Mismatch(_))));
        let rsp = response(Op::ReadRsp, 0, 0, 3, map(vec![("r", t("hi"))]));
        assert!(matches!(Echo::parse_response(&rsp, 3), Err(SmpError::Mismatch(_))));
        let rsp = response(Op::WriteRsp, 1, 0, 3, map(vec![("r", t("hi"))]));
        assert!(matches!(Echo::parse_response(&rsp, 3), Err(SmpError::Mismatch(_))));
    }

    #[test]
    fn both_error_formats_become_device_errors() {
        let v1 = response(Op::WriteRsp, 1, 1, 0, map(vec![("rc", Value::from(6))]));
        let e = ImageUpload::parse_response(&v1, 0).unwrap_err();
        assert!(matches!(&e, SmpError::Device(DeviceError { group: None, rc: 6 })), "{e}");
        assert!(e.to_string().contains("bad state"));
        let v2 = response(
            Op::WriteRsp,
            1,
            1,
            0,
            map(vec![("err", map(vec![("group", Value::from(1)), ("rc", Value::from(9))]))]),
        );
        let e = ImageUpload::parse_response(&v2, 0).unwrap_err();
        assert!(matches!(e, SmpError::Device(DeviceError { group: Some(1), rc: 9 })), "{e}");
        assert!(e.to_string().contains("no free slot"));
        // rc 0 is success.
        let ok = response(
            Op::WriteRsp,
            1,
            1,
            0,
            map(vec![("rc", Value::from(0)), ("off", Value::from(10))]),
        );
        assert_eq!(ImageUpload::parse_response(&ok, 0).unwrap().off, 10);
    }

    #[test]
    fn wrong_shapes_are_clear_errors() {
        let arr = response(Op::ReadRsp, 0, 6, 1, Value::Array(vec![]));
        assert!(matches!(McumgrParams::parse_response(&arr, 1), Err(SmpError::Shape(_))));
        let txt = response(
            Op::ReadRsp,
            0,
            6,
            1,
            map(vec![("buf_size", t("big")), ("buf_count", Value::from(1))]),
        );
        let e = McumgrParams::parse_response(&txt, 1).unwrap_err();
        assert!(e.to_string().contains("buf_size"), "{e}");
        let missing = response(Op::WriteRsp, 1, 1, 1, map(vec![]));
        assert!(ImageUpload::parse_response(&missing, 1).unwrap_err().to_string().contains("off"));
        let bad_images = response(Op::ReadRsp, 1, 0, 1, map(vec![("images", Value::from(3))]));
        assert!(matches!(ImageStateRead::parse_response(&bad_images, 1), Err(SmpError::Shape(_))));
        let mut truncated =
            response(Op::ReadRsp, 1, 0, 1, map(vec![("images", Value::Array(vec![]))]));
        truncated.pop();
        assert!(matches!(
            ImageStateRead::parse_response(&truncated, 1),
            Err(SmpError::Malformed(_))
        ));
        let mut garbage = Header::request(Op::ReadRsp, 1, 0, 1, 2).to_bytes().to_vec();
        garbage.extend([0xff, 0xff]);
        assert!(matches!(ImageStateRead::parse_response(&garbage, 1), Err(SmpError::Malformed(_))));
    }

    #[test]
    fn image_states_parse() {
        let img = map(vec![
            ("slot", Value::from(1)),
            ("version", t("1.2.3")),
            ("hash", Value::Bytes(vec![0xab; 32])),
            ("pending", Value::Bool(true)),
        ]);
        let rsp = response(Op::ReadRsp, 1, 0, 9, map(vec![("images", Value::Array(vec![img]))]));
        let s = ImageStateRead::parse_response(&rsp, 9).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].slot, 1);
        assert!(s[0].pending && !s[0].confirmed);
        assert_eq!(s[0].hash, vec![0xab; 32]);
    }
}
