//! SWUpdate images (`.swu`), checked on the laptop before a byte is sent to a gateway:
//!
//! - the archive: `cpio` newc (`070701`) or crc (`070702`, whose per-member byte sum is checked),
//!   read from the file with bounded headers and member counts; `sw-description` must come first,
//!   its signature `sw-description.sig` second;
//! - `sw-description` in its libconfig form (a bounded parser for the subset SWUpdate uses:
//!   groups, lists, arrays, strings, numbers, booleans, comments) or its JSON form, into the version,
//!   the hardware-compatibility list and every artifact (`images`, `files`, `scripts`) with its
//!   `filename` and `sha256`, directly under `software` or under `software.<board>`;
//! - the vendor's CMS signature over `sw-description`, verified with OpenSSL as SWUpdate does
//!   (detached, binary, the signer chaining to a vendor certificate, purpose emailProtection);
//! - the device's hardware revision in the compatibility list (exact entries; `#RE:` regular
//!   expressions are refused as not checkable here), and each artifact's SHA-256 against the bytes
//!   in the archive, plus the SHA-256 of the whole file, which the upload hashes again as it
//!   streams.
//!
//! Nothing here panics on hostile input: every malformed byte is a [`SwuError`].
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509, X509PurposeId};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// At most this many archive members.
pub const MAX_MEMBERS: usize = 256;
/// At most this long a member name.
pub const MAX_NAME: u64 = 1024;
/// At most this large `sw-description` and its signature.
pub const MAX_DESCRIPTION: u64 = 1024 * 1024;
const MAX_DEPTH: usize = 32;

/// What is wrong with a `.swu`.
#[derive(Debug, thiserror::Error)]
pub enum SwuError {
    #[error("cannot read the image: {0}")]
    Io(String),
    #[error("not a SWUpdate image: {0}")]
    Archive(String),
    #[error("sw-description is malformed: {0}")]
    Description(String),
    #[error("the image is not signed (no sw-description.sig)")]
    Unsigned,
    #[error("the image's signature does not verify against the vendor certificate: {0}")]
    BadSignature(String),
    #[error("the vendor certificate cannot be used: {0}")]
    VendorCertificate(String),
    #[error("the image is for hardware {supported:?}, not this device's revision `{device}`")]
    Hardware { device: String, supported: Vec<String> },
    #[error("`{0}` is named in sw-description but is not in the archive")]
    MissingArtifact(String),
    #[error("`{0}` has no sha256 in sw-description, so it cannot be checked")]
    NoHash(String),
    #[error("`{name}` does not match its sha256 in sw-description (the image was altered)")]
    HashMismatch { name: String },
    #[error("`{name}` fails its cpio checksum (the archive is corrupt)")]
    ArchiveChecksum { name: String },
}

impl SwuError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            SwuError::Io(_) => "swu_unreadable",
            SwuError::Archive(_) => "swu_malformed",
            SwuError::Description(_) => "swu_description_malformed",
            SwuError::Unsigned => "swu_unsigned",
            SwuError::BadSignature(_) => "swu_bad_signature",
            SwuError::VendorCertificate(_) => "swu_vendor_certificate",
            SwuError::Hardware { .. } => "swu_wrong_hardware",
            SwuError::MissingArtifact(_) => "swu_missing_artifact",
            SwuError::NoHash(_) => "swu_no_hash",
            SwuError::HashMismatch { .. } => "swu_hash_mismatch",
            SwuError::ArchiveChecksum { .. } => "swu_archive_checksum",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// cpio

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// Where its data starts in the file.
    pub offset: u64,
    pub size: u64,
    /// The crc format's byte sum (`None` in newc archives).
    pub checksum: Option<u32>,
}

/// Bytes of a cpio newc/crc member header: a 6-byte magic and 13 fields of 8 hex digits.
const CPIO_HEADER: u64 = 110;

fn hex_field(f: &[u8; 8]) -> Result<u32, SwuError> {
    let s =
        std::str::from_utf8(f).map_err(|_| SwuError::Archive("a header is not ASCII".into()))?;
    u32::from_str_radix(s, 16).map_err(|_| SwuError::Archive(format!("bad header field `{s}`")))
}

/// Lists the members of a cpio newc/crc archive without reading their data.
pub fn members<R: Read + Seek>(r: &mut R, file_len: u64) -> Result<Vec<Member>, SwuError> {
    let io = |e: std::io::Error| SwuError::Io(e.to_string());
    let past_end =
        |what: String| SwuError::Archive(format!("{what} runs past the end of the file"));
    let mut out = Vec::new();
    // Every header starts 4-aligned from the start of the archive, and so does every member's
    // data: aligning the end of the name or the data gives the same padding as cpio's.
    let mut pos = 0u64;
    loop {
        if out.len() > MAX_MEMBERS {
            return Err(SwuError::Archive(format!("more than {MAX_MEMBERS} members")));
        }
        let Some(header_end) = pos.checked_add(CPIO_HEADER).filter(|&end| end <= file_len) else {
            return Err(SwuError::Archive("truncated: no cpio trailer".into()));
        };
        r.seek(SeekFrom::Start(pos)).map_err(io)?;
        let mut magic = [0u8; 6];
        let mut fields = [[0u8; 8]; 13];
        r.read_exact(&mut magic).map_err(io)?;
        r.read_exact(fields.as_flattened_mut()).map_err(io)?;
        let crc = match &magic {
            b"070701" => false,
            b"070702" => true,
            _ => return Err(SwuError::Archive("not a cpio newc/crc archive".into())),
        };
        // ino, mode, uid, gid, nlink, mtime, then these; devmajor to rdevminor are not needed.
        let [.., filesize, _, _, _, _, namesize, check] = fields;
        let size = u64::from(hex_field(&filesize)?);
        let namesize = u64::from(hex_field(&namesize)?);
        let check = hex_field(&check)?;
        let bad_name = || SwuError::Archive(format!("member name of {namesize} bytes"));
        if namesize == 0 || namesize > MAX_NAME {
            return Err(bad_name());
        }
        let Some(name_end) = header_end.checked_add(namesize).filter(|&end| end <= file_len) else {
            return Err(SwuError::Archive("truncated member name".into()));
        };
        let mut name = vec![0u8; usize::try_from(namesize).map_err(|_| bad_name())?];
        r.read_exact(&mut name).map_err(io)?;
        if name.pop() != Some(0) {
            return Err(SwuError::Archive("member name is not NUL-terminated".into()));
        }
        let name = String::from_utf8(name)
            .map_err(|_| SwuError::Archive("member name is not UTF-8".into()))?;
        let offset =
            name_end.checked_next_multiple_of(4).ok_or_else(|| past_end(format!("`{name}`")))?;
        if name == "TRAILER!!!" {
            return Ok(out);
        }
        let end = offset
            .checked_add(size)
            .filter(|e| *e <= file_len)
            .ok_or_else(|| past_end(format!("member `{name}`")))?;
        out.push(Member { name, offset, size, checksum: crc.then_some(check) });
        pos = end.checked_next_multiple_of(4).ok_or_else(|| past_end("the archive".into()))?;
    }
}

fn read_member<R: Read + Seek>(r: &mut R, m: &Member, max: u64) -> Result<Vec<u8>, SwuError> {
    if m.size > max {
        return Err(SwuError::Archive(format!("`{}` is larger than {max} bytes", m.name)));
    }
    let io = |e: std::io::Error| SwuError::Io(e.to_string());
    r.seek(SeekFrom::Start(m.offset)).map_err(io)?;
    let mut buf = vec![0u8; m.size as usize];
    r.read_exact(&mut buf).map_err(io)?;
    check_sum(m, &buf)?;
    Ok(buf)
}

fn check_sum(m: &Member, data: &[u8]) -> Result<(), SwuError> {
    if let Some(want) = m.checksum {
        let got = data.iter().fold(0u32, |a, b| a.wrapping_add(u32::from(*b)));
        if got != want {
            return Err(SwuError::ArchiveChecksum { name: m.name.clone() });
        }
    }
    Ok(())
}

/// Streams a member through SHA-256 (and the crc byte sum).
fn hash_member<R: Read + Seek>(r: &mut R, m: &Member) -> Result<[u8; 32], SwuError> {
    const CHUNK: usize = 64 * 1024;
    let io = |e: std::io::Error| SwuError::Io(e.to_string());
    r.seek(SeekFrom::Start(m.offset)).map_err(io)?;
    let mut left = m.size;
    let mut h = Sha256::new();
    let mut sum = 0u32;
    let mut buf = Vec::with_capacity(CHUNK);
    while left > 0 {
        buf.resize(usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK)), 0);
        r.read_exact(&mut buf).map_err(io)?;
        h.update(&buf);
        sum = buf.iter().fold(sum, |a, b| a.wrapping_add(u32::from(*b)));
        // The buffer holds at most `left` bytes.
        left = left.saturating_sub(buf.len() as u64);
    }
    if m.checksum.is_some_and(|c| c != sum) {
        return Err(SwuError::ArchiveChecksum { name: m.name.clone() });
    }
    Ok(h.finalize().into())
}

// ---------------------------------------------------------------------------------------------
// sw-description

/// A libconfig (or JSON) value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Group(Vec<(String, Value)>),
    List(Vec<Value>),
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Value {
    fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Group(g) => g.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

struct Parser<'a> {
    /// The whole text (for line numbers in errors).
    s: &'a [u8],
    /// What is left to read.
    rest: &'a [u8],
}

impl<'a> Parser<'a> {
    fn err(&self, what: &str) -> SwuError {
        // `rest` is a tail of `s`: what was read is the rest of it.
        let read = self.s.len().saturating_sub(self.rest.len());
        let line = self.s.iter().take(read).filter(|b| **b == b'\n').count().saturating_add(1);
        SwuError::Description(format!("{what} (line {line})"))
    }

    /// Steps over `n` bytes (to the end if fewer are left).
    fn advance(&mut self, n: usize) {
        self.rest = self.rest.get(n..).unwrap_or_default();
    }

    /// The next byte, consumed.
    fn next_byte(&mut self) -> Option<u8> {
        let (&c, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(c)
    }

    /// The bytes from here while `f` holds for them, consumed.
    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        let n = self.rest.iter().take_while(|&&c| f(c)).count();
        let (taken, rest) = self.rest.split_at_checked(n).unwrap_or((self.rest, &[]));
        self.rest = rest;
        taken
    }

    fn skip(&mut self) {
        loop {
            self.rest = self.rest.trim_ascii_start();
            if self.rest.starts_with(b"#") || self.rest.starts_with(b"//") {
                self.take_while(|c| c != b'\n');
            } else if let Some(comment) = self.rest.strip_prefix(b"/*") {
                self.rest = match comment.windows(2).position(|w| w == b"*/") {
                    Some(p) => comment.get(p..).and_then(|c| c.strip_prefix(b"*/")),
                    None => None,
                }
                .unwrap_or_default();
            } else {
                return;
            }
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip();
        self.rest.first().copied()
    }

    fn name(&mut self) -> Result<String, SwuError> {
        self.skip();
        let name = self.take_while(|c| c.is_ascii_alphanumeric() || b"-_*".contains(&c));
        if name.is_empty() {
            return Err(self.err("expected a setting name"));
        }
        Ok(String::from_utf8_lossy(name).into_owned())
    }

    /// Settings until `end` (None: end of input).
    fn settings(
        &mut self,
        end: Option<u8>,
        depth: usize,
    ) -> Result<Vec<(String, Value)>, SwuError> {
        let mut out = Vec::new();
        loop {
            match (self.peek(), end) {
                (None, None) => return Ok(out),
                (None, Some(_)) => return Err(self.err("unexpected end of sw-description")),
                (Some(c), Some(e)) if c == e => {
                    self.advance(1);
                    return Ok(out);
                }
                _ => {}
            }
            let name = self.name()?;
            match self.peek() {
                Some(b'=') | Some(b':') => self.advance(1),
                _ => return Err(self.err(&format!("expected `=` after `{name}`"))),
            }
            let v = self.value(depth.saturating_add(1))?;
            out.push((name, v));
            if matches!(self.peek(), Some(b';') | Some(b',')) {
                self.advance(1);
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, SwuError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        match self.peek() {
            None => Err(self.err("expected a value")),
            Some(b'{') => {
                self.advance(1);
                Ok(Value::Group(self.settings(Some(b'}'), depth)?))
            }
            Some(open @ (b'(' | b'[')) => {
                self.advance(1);
                let close = if open == b'(' { b')' } else { b']' };
                let mut items = Vec::new();
                loop {
                    if self.peek() == Some(close) {
                        self.advance(1);
                        return Ok(Value::List(items));
                    }
                    items.push(self.value(depth.saturating_add(1))?);
                    match self.peek() {
                        Some(b',') => self.advance(1),
                        Some(c) if c == close => {}
                        _ => return Err(self.err("expected `,` or the end of a list")),
                    }
                }
            }
            Some(b'"') => {
                let mut out = Vec::new();
                while self.peek() == Some(b'"') {
                    self.advance(1);
                    loop {
                        let Some(c) = self.next_byte() else {
                            return Err(self.err("unterminated string"));
                        };
                        match c {
                            b'"' => break,
                            b'\\' => {
                                let Some(e) = self.next_byte() else {
                                    return Err(self.err("unterminated string"));
                                };
                                out.push(match e {
                                    b'n' => b'\n',
                                    b't' => b'\t',
                                    b'r' => b'\r',
                                    b'f' => 0x0c,
                                    other => other,
                                });
                            }
                            c => out.push(c),
                        }
                    }
                }
                String::from_utf8(out)
                    .map(Value::Str)
                    .map_err(|_| self.err("a string is not UTF-8"))
            }
            Some(_) => {
                let word = self.take_while(|c| c.is_ascii_alphanumeric() || b"+-.".contains(&c));
                let word = std::str::from_utf8(word).unwrap_or("");
                let lower = word.to_ascii_lowercase();
                let trimmed = lower.trim_end_matches('l');
                if lower == "true" || lower == "false" {
                    Ok(Value::Bool(lower == "true"))
                } else if let Some(h) = trimmed.strip_prefix("0x") {
                    i64::from_str_radix(h, 16).map(Value::Int).map_err(|_| self.err("bad number"))
                } else if let Ok(n) = trimmed.parse::<i64>() {
                    Ok(Value::Int(n))
                } else if let Ok(f) = lower.parse::<f64>() {
                    Ok(Value::Float(f))
                } else {
                    Err(self.err("expected a value"))
                }
            }
        }
    }
}

/// Parses libconfig text into its top-level group.
pub fn parse_libconfig(text: &[u8]) -> Result<Value, SwuError> {
    let mut p = Parser { s: text, rest: text };
    Ok(Value::Group(p.settings(None, 0)?))
}

fn from_json(v: serde_json::Value, depth: usize) -> Result<Value, SwuError> {
    if depth > MAX_DEPTH {
        return Err(SwuError::Description("nested too deeply".into()));
    }
    Ok(match v {
        serde_json::Value::Object(m) => Value::Group(
            m.into_iter()
                .map(|(k, v)| Ok((k, from_json(v, depth.saturating_add(1))?)))
                .collect::<Result<_, SwuError>>()?,
        ),
        serde_json::Value::Array(a) => {
            let depth = depth.saturating_add(1);
            Value::List(a.into_iter().map(|v| from_json(v, depth)).collect::<Result<_, _>>()?)
        }
        serde_json::Value::String(s) => Value::Str(s),
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(0.0)),
        },
        serde_json::Value::Null => Value::List(Vec::new()),
    })
}

/// One artifact `sw-description` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub filename: String,
    pub sha256: Option<[u8; 32]>,
    /// `type` (handler), if given.
    pub handler: Option<String>,
}

/// What `sw-description` says, for one board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    pub version: Option<String>,
    pub hardware_compatibility: Vec<String>,
    pub artifacts: Vec<Artifact>,
}

/// Reads `sw-description` (libconfig or JSON) for `board` (the device's board name, used when
/// the description has a per-board section).
pub fn parse_description(text: &[u8], board: Option<&str>) -> Result<Description, SwuError> {
    let first = text.iter().find(|b| !b.is_ascii_whitespace());
    let root = if first == Some(&b'{') {
        let v: serde_json::Value = serde_json::from_slice(text)
            .map_err(|e| SwuError::Description(format!("JSON: {e}")))?;
        from_json(v, 0)?
    } else {
        parse_libconfig(text)?
    };
    let software = root
        .get("software")
        .ok_or_else(|| SwuError::Description("no `software` section".into()))?;
    let has_content = |v: &Value| ["images", "files", "scripts"].iter().any(|k| v.get(k).is_some());
    let section = if has_content(software) {
        software
    } else if let Some(b) = board.and_then(|b| software.get(b)).filter(|v| has_content(v)) {
        b
    } else {
        return Err(SwuError::Description(match board {
            Some(b) => format!("no images directly under `software` nor under `software.{b}`"),
            None => {
                "no images directly under `software` (per-board sections need the board)".into()
            }
        }));
    };
    let version = section
        .get("version")
        .or_else(|| software.get("version"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let hardware_compatibility = match section
        .get("hardware-compatibility")
        .or_else(|| software.get("hardware-compatibility"))
    {
        None => Vec::new(),
        Some(Value::List(l)) => l
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    SwuError::Description("hardware-compatibility holds a non-string".into())
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(SwuError::Description("hardware-compatibility is not a list".into()));
        }
    };
    let mut artifacts = Vec::new();
    for key in ["images", "files", "scripts"] {
        let Some(list) = section.get(key) else { continue };
        let Value::List(items) = list else {
            return Err(SwuError::Description(format!("`{key}` is not a list")));
        };
        for item in items {
            let Some(filename) = item.get("filename").and_then(Value::as_str) else {
                // Entries without a file (e.g. a script given inline) carry no bytes to check.
                continue;
            };
            let sha256 = match item.get("sha256") {
                None => None,
                Some(v) => {
                    let s = v.as_str().unwrap_or("");
                    let mut h = [0u8; 32];
                    hex::decode_to_slice(s, &mut h).map_err(|_| {
                        SwuError::Description(format!("`{filename}` has a malformed sha256"))
                    })?;
                    Some(h)
                }
            };
            let handler = item.get("type").and_then(Value::as_str).map(str::to_string);
            artifacts.push(Artifact { filename: filename.to_string(), sha256, handler });
        }
    }
    if artifacts.is_empty() {
        return Err(SwuError::Description("no artifact with a filename".into()));
    }
    Ok(Description { version, hardware_compatibility, artifacts })
}

// ---------------------------------------------------------------------------------------------
// the whole check

/// The device the image must fit.
#[derive(Debug, Clone)]
pub struct SwuTarget {
    /// The board name (SWUpdate's `-H BOARD:REV`), for per-board sections.
    pub board: Option<String>,
    /// The hardware revision that must be in the compatibility list.
    pub hardware_revision: String,
}

/// A `.swu` that passed every check.
#[derive(Debug, Clone)]
pub struct VerifiedSwu {
    pub description: Description,
    pub members: Vec<Member>,
    /// SHA-256 of the whole file as verified; the upload hashes what it sends again.
    pub file_sha256: [u8; 32],
    pub file_len: u64,
}

/// Verifies a CMS (DER) signature over `content` against the vendor certificates (PEM, one or
/// more), as SWUpdate does.
pub fn verify_signature(content: &[u8], sig_der: &[u8], vendor_pem: &[u8]) -> Result<(), SwuError> {
    let vendor = |e: openssl::error::ErrorStack| SwuError::VendorCertificate(e.to_string());
    let certs = X509::stack_from_pem(vendor_pem).map_err(vendor)?;
    if certs.is_empty() {
        return Err(SwuError::VendorCertificate("no certificate in the PEM".into()));
    }
    let mut store = X509StoreBuilder::new().map_err(vendor)?;
    let mut stack = Stack::new().map_err(vendor)?;
    for c in certs {
        store.add_cert(c.clone()).map_err(vendor)?;
        stack.push(c).map_err(vendor)?;
    }
    store.set_purpose(X509PurposeId::SMIME_SIGN).map_err(vendor)?;
    let store = store.build();
    let bad = |e: openssl::error::ErrorStack| {
        let reason = e.errors().first().and_then(|e| e.reason()).unwrap_or("verification failed");
        SwuError::BadSignature(reason.to_string())
    };
    let mut cms = CmsContentInfo::from_der(sig_der).map_err(bad)?;
    cms.verify(Some(&stack), Some(&store), Some(content), None, CMSOptions::BINARY).map_err(bad)
}

/// The unrevoked vendor certificates of `trust`, as one PEM bundle for [`verify_signature`];
/// `None` when the store carries none.
pub fn trusted_vendor_pem(trust: &fieldpatch_proto::trust::TrustStore) -> Option<Vec<u8>> {
    let certs = trust.vendor_certificates();
    if certs.is_empty() {
        return None;
    }
    Some(certs.iter().flat_map(|c| c.pem.as_bytes().iter().copied().chain([b'\n'])).collect())
}

/// Checks the `.swu` at `path`: archive, signature (against `vendor_pem`; without it the
/// signature is only required to be present), hardware, hashes.
pub fn verify_file(
    path: &Path,
    vendor_pem: Option<&[u8]>,
    target: &SwuTarget,
) -> Result<VerifiedSwu, SwuError> {
    let io = |e: std::io::Error| SwuError::Io(e.to_string());
    let mut f = std::fs::File::open(path).map_err(io)?;
    let file_len = f.metadata().map_err(io)?.len();
    verify_reader(&mut f, file_len, vendor_pem, Some(target))
}

/// The checks of [`verify_file`] on a `.swu` held in memory (a bundle payload). Without
/// `vendor_pem` the CMS signature is only required to be present (the trust store carries no
/// X.509 certificates: the bundle's release signatures vouch for these bytes, and the gateway
/// verifies the CMS signature with its own key); without `target` the hardware compatibility list
/// is only required to be non-empty.
pub fn verify_bytes(
    bytes: &[u8],
    vendor_pem: Option<&[u8]>,
    target: Option<&SwuTarget>,
) -> Result<VerifiedSwu, SwuError> {
    verify_reader(&mut std::io::Cursor::new(bytes), bytes.len() as u64, vendor_pem, target)
}

fn verify_reader<R: Read + Seek>(
    f: &mut R,
    file_len: u64,
    vendor_pem: Option<&[u8]>,
    target: Option<&SwuTarget>,
) -> Result<VerifiedSwu, SwuError> {
    let io = |e: std::io::Error| SwuError::Io(e.to_string());
    let mut f = f;
    let members = members(&mut f, file_len)?;
    let desc_m = members
        .first()
        .filter(|m| m.name == "sw-description")
        .ok_or_else(|| SwuError::Archive("the first member is not sw-description".into()))?;
    let desc_bytes = read_member(&mut f, desc_m, MAX_DESCRIPTION)?;
    let sig_m =
        members.get(1).filter(|m| m.name == "sw-description.sig").ok_or(SwuError::Unsigned)?;
    let sig = read_member(&mut f, sig_m, MAX_DESCRIPTION)?;
    if let Some(vendor_pem) = vendor_pem {
        verify_signature(&desc_bytes, &sig, vendor_pem)?;
    } else if sig.is_empty() {
        return Err(SwuError::Unsigned);
    }
    let board = target.and_then(|t| t.board.as_deref());
    let description = parse_description(&desc_bytes, board)?;
    let fits = match target {
        Some(t) => description.hardware_compatibility.contains(&t.hardware_revision),
        None => true,
    };
    if description.hardware_compatibility.is_empty() || !fits {
        return Err(SwuError::Hardware {
            device: target.map_or_else(|| "(any)".into(), |t| t.hardware_revision.clone()),
            supported: description.hardware_compatibility.clone(),
        });
    }
    for a in &description.artifacts {
        let want = a.sha256.ok_or_else(|| SwuError::NoHash(a.filename.clone()))?;
        let m = members
            .iter()
            .find(|m| m.name == a.filename)
            .ok_or_else(|| SwuError::MissingArtifact(a.filename.clone()))?;
        if hash_member(&mut f, m)? != want {
            return Err(SwuError::HashMismatch { name: a.filename.clone() });
        }
    }
    f.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        let read =
            buf.get(..n).ok_or_else(|| SwuError::Io(format!("a read returned {n} bytes")))?;
        h.update(read);
    }
    Ok(VerifiedSwu { description, members, file_sha256: h.finalize().into(), file_len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn entry(out: &mut Vec<u8>, magic: &str, name: &str, data: &[u8]) {
        let sum = data.iter().fold(0u32, |a, b| a.wrapping_add(*b as u32));
        let check = if magic == "070702" { sum } else { 0 };
        let name = format!("{name}\0");
        let fields =
            [0, 0o100644, 0, 0, 1, 0, data.len() as u32, 0, 0, 0, 0, name.len() as u32, check];
        out.extend(magic.as_bytes());
        for f in fields {
            out.extend(format!("{f:08X}").as_bytes());
        }
        out.extend(name.as_bytes());
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out.extend(data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }

    fn archive(magic: &str, items: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, d) in items {
            entry(&mut out, magic, n, d);
        }
        entry(&mut out, magic, "TRAILER!!!", b"");
        out
    }

    fn list(bytes: &[u8]) -> Result<Vec<Member>, SwuError> {
        members(&mut Cursor::new(bytes), bytes.len() as u64)
    }

    #[test]
    fn cpio_newc_and_crc() {
        for magic in ["070701", "070702"] {
            let a = archive(magic, &[("sw-description", b"abc"), ("img", b"12345")]);
            let m = list(&a).unwrap();
            assert_eq!(m.len(), 2);
            assert_eq!(m[1].name, "img");
            assert_eq!(&a[m[1].offset as usize..][..5], b"12345");
            assert_eq!(read_member(&mut Cursor::new(&a), &m[1], 10).unwrap(), b"12345");
            assert_eq!(m[0].checksum.is_some(), magic == "070702");
        }
    }

    #[test]
    fn cpio_crc_mismatch_is_caught() {
        let mut a = archive("070702", &[("img", b"12345")]);
        let m = list(&a).unwrap();
        a[m[0].offset as usize] = b'9';
        let e = read_member(&mut Cursor::new(&a), &m[0], 10).unwrap_err();
        assert_eq!(e.code(), "swu_archive_checksum");
        let e = hash_member(&mut Cursor::new(&a), &m[0]).unwrap_err();
        assert_eq!(e.code(), "swu_archive_checksum");
    }

    #[test]
    fn truncated_and_garbage_archives_are_errors() {
        let a = archive("070702", &[("sw-description", b"abcdefgh"), ("img", &[7u8; 100])]);
        // The last 3 bytes are the trailer name's padding, which a reader need not see.
        assert!(list(&a[..a.len() - 3]).is_ok());
        for cut in 0..a.len() - 3 {
            let e = list(&a[..cut]).expect_err("a truncated archive");
            assert!(matches!(e, SwuError::Archive(_)), "cut {cut}: {e}");
        }
        let mut seed = 0x1234_5678u32;
        for len in [0usize, 1, 109, 110, 111, 500, 4096] {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (seed >> 16) as u8
                })
                .collect();
            assert!(list(&junk).is_err());
            let mut hdr = b"070702".to_vec();
            hdr.extend(&junk);
            let _ = list(&hdr);
        }
        // A header claiming a huge member.
        let mut big = Vec::new();
        big.extend(b"070702");
        for f in [0u32, 0, 0, 0, 1, 0, 0xFFFF_FFFF, 0, 0, 0, 0, 4, 0] {
            big.extend(format!("{f:08X}").as_bytes());
        }
        big.extend(b"abc\0");
        assert!(list(&big).is_err());
        // A non-hex size field.
        let mut bad = a.clone();
        bad[54..62].copy_from_slice(b"zzzzzzzz");
        assert!(list(&bad).is_err());
    }

    const LIBCONFIG: &str = r#"
/* a comment */
software =
{
    version = "1.2.0";   // trailing
    hardware-compatibility = [ "1.0", "1.1" ];
    images: (
    {
        filename = "rootfs.img";
        type = "raw";
        device = "/dev/mmcblk0p2";
        sha256 = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        compressed = false;
        offset = 0x100;
    }
    );
    scripts: ( { filename = "post.sh"; type = "shellscript"; } );
}
"#;

    #[test]
    fn libconfig_description() {
        let d = parse_description(LIBCONFIG.as_bytes(), None).unwrap();
        assert_eq!(d.version.as_deref(), Some("1.2.0"));
        assert_eq!(d.hardware_compatibility, ["1.0", "1.1"]);
        assert_eq!(d.artifacts.len(), 2);
        assert_eq!(d.artifacts[0].filename, "rootfs.img");
        assert_eq!(d.artifacts[0].sha256.unwrap()[1], 0x11);
        assert_eq!(d.artifacts[1].sha256, None);
    }

    #[test]
    fn board_sections_and_json() {
        let text = r#"software = { version = "3"; gw100 = { hardware-compatibility = ["2"];
            images: ( { filename = "a"; sha256 = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"; } ); }; }"#;
        assert!(parse_description(text.as_bytes(), None).is_err());
        let d = parse_description(text.as_bytes(), Some("gw100")).unwrap();
        assert_eq!(
            (d.version.as_deref(), d.hardware_compatibility.as_slice()),
            (Some("3"), &["2".to_string()][..])
        );
        let json = r#"{ "software": { "version": "0.1.0", "gw100": {
            "hardware-compatibility": ["1.0"], "images": [ { "filename": "u.img", "type": "raw" } ] } } }"#;
        let d = parse_description(json.as_bytes(), Some("gw100")).unwrap();
        assert_eq!(d.version.as_deref(), Some("0.1.0"));
        assert_eq!(d.artifacts[0].filename, "u.img");
    }

    #[test]
    fn malformed_descriptions_are_errors() {
        for bad in [
            "",
            "software",
            "software = {",
            "software = { images: ( { filename = \"a\"; } ",
            "software = { version = \"unterminated; }",
            "software = { images: ( { filename = \"a\"; sha256 = \"zz\"; } ); }",
            "software = { hardware-compatibility = \"1.0\"; images: ( { filename = \"a\"; } ); }",
            "software = { images: 5; }",
            "= = =",
            "{ not json",
        ] {
            assert!(parse_description(bad.as_bytes(), None).is_err(), "{bad}");
        }
        let deep = "software = ".to_string() + &"(".repeat(10_000);
        assert!(parse_description(deep.as_bytes(), None).is_err());
        for cut in 0..LIBCONFIG.len() {
            let _ = parse_description(&LIBCONFIG.as_bytes()[..cut], None);
        }
    }
}
