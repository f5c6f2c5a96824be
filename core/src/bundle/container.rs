//! The bundle file format: its layout is [`fieldpatch_proto::bundle`]'s (the inventory server
//! reads it too); this module gives the header its meaning (manifest schema, signature block)
//! and writes and signs bundles.
//!
//! The header (everything before the payloads) is small and bounded, so it is read whole; the
//! payloads are only ever streamed. Signing rewrites the signature block by streaming the payloads
//! into a new file beside the old one and renaming it into place.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use super::BundleError;
use super::canonical::{self, CanonicalIssue};
use super::manifest::{Manifest, PayloadEntry};
use super::signature::{self, CONTEXT_MANIFEST, MAX_SIGNATURES, SignatureEntry};
use ed25519_dalek::SigningKey;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub use fieldpatch_proto::bundle::{FORMAT_VERSION, MAGIC};

/// Whether the file at `path` starts like a patch bundle (only its first bytes are read).
pub fn looks_like_bundle(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 8];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && &head == MAGIC
}
/// Chunk size for streaming payloads.
pub const CHUNK: usize = 1 << 20;

/// The parsed header of a bundle: manifest, its exact bytes, and the signatures.
#[derive(Debug, Clone)]
pub struct Header {
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    pub signatures: Vec<SignatureEntry>,
    /// Bytes before the first payload.
    pub header_len: u64,
}

/// What `bundle inspect` shows: the structure, without any trust decision.
#[derive(Debug, Clone, Serialize)]
pub struct BundleInfo {
    pub format_version: u32,
    pub file_len: u64,
    pub header_len: u64,
    pub manifest: Manifest,
    pub signatures: Vec<SignatureEntry>,
}

impl From<fieldpatch_proto::bundle::HeaderError> for BundleError {
    fn from(e: fieldpatch_proto::bundle::HeaderError) -> Self {
        use fieldpatch_proto::bundle::HeaderError as H;
        match e {
            H::BadMagic => BundleError::BadMagic,
            H::UnsupportedFormatVersion { found, supported } => {
                BundleError::UnsupportedFormatVersion { found, supported }
            }
            H::Truncated { what, needed, available } => {
                BundleError::Truncated { what, needed, available }
            }
            H::LengthTooLarge { field, value, limit } => {
                BundleError::LengthTooLarge { field, value, limit }
            }
            H::Io { what, source } => BundleError::io(format!("reading the {what}"), source),
        }
    }
}

/// Parse a signature block (canonical JSON array).
pub fn parse_signatures(bytes: &[u8]) -> Result<Vec<SignatureEntry>, BundleError> {
    let value = canonical::parse_canonical(bytes).map_err(|e| match e {
        CanonicalIssue::DuplicateKey(key) => {
            BundleError::DuplicateKey { document: "signature block".into(), key }
        }
        CanonicalIssue::NotCanonical | CanonicalIssue::Float => {
            BundleError::NonCanonical { document: "signature block".into() }
        }
        CanonicalIssue::Syntax(reason) => BundleError::InvalidSignatureBlock { reason },
    })?;
    let sigs: Vec<SignatureEntry> = serde_json::from_value(value)
        .map_err(|e| BundleError::InvalidSignatureBlock { reason: e.to_string() })?;
    if sigs.len() > MAX_SIGNATURES {
        return Err(BundleError::LengthTooLarge {
            field: "signature count".into(),
            value: sigs.len() as u64,
            limit: MAX_SIGNATURES as u64,
        });
    }
    Ok(sigs)
}

fn signatures_bytes(sigs: &[SignatureEntry]) -> Vec<u8> {
    canonical::to_canonical_of(&sigs).unwrap_or_default()
}

/// Read and check the header from `r`, positioned at the start of a bundle of `file_len` bytes.
/// Also checks that the payload lengths the manifest declares fill the rest of the file exactly.
pub fn read_header<R: Read>(r: &mut R, file_len: u64) -> Result<Header, BundleError> {
    let parts = fieldpatch_proto::bundle::read_header_parts(r, file_len)?;
    let (manifest_bytes, sig_bytes) = (parts.manifest, parts.signatures);
    let Some(remaining) = file_len.checked_sub(parts.header_len) else {
        return Err(BundleError::Truncated {
            what: "header".into(),
            needed: parts.header_len,
            available: file_len,
        });
    };
    let manifest = Manifest::from_canonical_bytes(&manifest_bytes)?;
    let signatures = parse_signatures(&sig_bytes)?;
    let declared = manifest.payload_total().ok_or_else(|| BundleError::LengthTooLarge {
        field: "total payload length".into(),
        value: u64::MAX,
        limit: file_len,
    })?;
    if declared > remaining {
        return Err(BundleError::Truncated {
            what: "payloads".into(),
            needed: declared,
            available: remaining,
        });
    }
    if declared < remaining {
        return Err(BundleError::PayloadLengthMismatch { declared, actual: remaining });
    }
    Ok(Header { manifest, manifest_bytes, signatures, header_len: parts.header_len })
}

/// Parse a whole bundle held in memory, header only (for fuzzing and small tools).
pub fn parse_header_bytes(bytes: &[u8]) -> Result<Header, BundleError> {
    read_header(&mut &bytes[..], bytes.len() as u64)
}

fn open(path: &Path) -> Result<(File, u64), BundleError> {
    let f = File::open(path)
        .map_err(|e| BundleError::io(format!("opening bundle {}", path.display()), e))?;
    let len = f
        .metadata()
        .map_err(|e| BundleError::io(format!("reading bundle {}", path.display()), e))?
        .len();
    Ok((f, len))
}

/// Open a bundle file and read its header; the returned file is positioned at the first payload.
pub fn open_file(path: &Path) -> Result<(File, u64, Header), BundleError> {
    let (mut f, len) = open(path)?;
    let header = read_header(&mut f, len)?;
    Ok((f, len, header))
}

/// Describe a bundle file's structure (no trust decision, payloads not hashed).
pub fn inspect_file(path: &Path) -> Result<BundleInfo, BundleError> {
    let (_, file_len, h) = open_file(path)?;
    Ok(BundleInfo {
        format_version: FORMAT_VERSION,
        file_len,
        header_len: h.header_len,
        manifest: h.manifest,
        signatures: h.signatures,
    })
}

/// Describe a payload file: its length and SHA-256, streamed.
pub fn payload_entry(
    name: &str,
    format: super::PayloadFormat,
    path: &Path,
) -> Result<PayloadEntry, BundleError> {
    super::manifest::check_payload_name(name)?;
    let mut f = File::open(path)
        .map_err(|e| BundleError::io(format!("opening payload {}", path.display()), e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut length = 0u64;
    loop {
        let read = read_chunk(&mut f, &mut buf, u64::MAX)
            .map_err(|e| BundleError::io(format!("reading payload {}", path.display()), e))?;
        if read.is_empty() {
            break;
        }
        h.update(read);
        // A file holds fewer than u64::MAX bytes.
        length = length.saturating_add(read.len() as u64);
    }
    Ok(PayloadEntry {
        name: name.into(),
        format,
        length,
        sha256: hex::encode(h.finalize()),
        flash_offset: None,
    })
}

fn write_header<W: Write>(
    w: &mut W,
    manifest_bytes: &[u8],
    sigs: &[SignatureEntry],
) -> std::io::Result<()> {
    let sig_bytes = signatures_bytes(sigs);
    w.write_all(MAGIC)?;
    w.write_all(&FORMAT_VERSION.to_le_bytes())?;
    w.write_all(&(manifest_bytes.len() as u32).to_le_bytes())?;
    w.write_all(manifest_bytes)?;
    w.write_all(&(sig_bytes.len() as u32).to_le_bytes())?;
    w.write_all(&sig_bytes)
}

/// Copy exactly `len` bytes from `r` to `w`, hashing them; returns the SHA-256.
fn copy_hashed<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    len: u64,
    buf: &mut [u8],
) -> std::io::Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut left = len;
    while left > 0 {
        let read = read_chunk(r, buf, left)?;
        if read.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "payload ended early",
            ));
        }
        h.update(read);
        w.write_all(read)?;
        // `read_chunk` reads at most `left` bytes.
        left = left.saturating_sub(read.len() as u64);
    }
    Ok(h.finalize().into())
}

/// One `read` from `r` into `buf` of at most `limit` bytes: the bytes read (none at the end of
/// the input). A reader that says it read more than it was given room for is an I/O error.
pub(crate) fn read_chunk<'b, R: Read>(
    r: &mut R,
    buf: &'b mut [u8],
    limit: u64,
) -> std::io::Result<&'b [u8]> {
    let room = usize::try_from(limit).map_or(buf.len(), |l| l.min(buf.len()));
    // `room` is at most `buf.len()`: the empty fallback is never taken.
    let buf = buf.get_mut(..room).unwrap_or_default();
    let n = r.read(buf)?;
    let buf: &'b [u8] = buf;
    buf.get(..n)
        .ok_or_else(|| std::io::Error::other(format!("a read of {room} bytes returned {n}")))
}

fn temp_beside(out: &Path) -> PathBuf {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    out.with_file_name(name)
}

fn finish(tmp: &Path, out: &Path, file: File) -> Result<(), BundleError> {
    file.sync_all().map_err(|e| BundleError::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(tmp, out)
        .map_err(|e| BundleError::io(format!("moving the bundle into {}", out.display()), e))
}

/// Write a new, unsigned bundle to `out` from `manifest` and the payload files (in manifest
/// order). Each payload is re-hashed while it is copied and must match its manifest entry.
pub fn create_bundle(
    manifest: &Manifest,
    payload_files: &[PathBuf],
    out: &Path,
) -> Result<(), BundleError> {
    manifest.validate()?;
    if payload_files.len() != manifest.payloads.len() {
        return Err(BundleError::InvalidManifest {
            reason: format!(
                "{} payload files given for {} manifest payloads",
                payload_files.len(),
                manifest.payloads.len()
            ),
        });
    }
    let manifest_bytes = manifest.canonical_bytes()?;
    let tmp = temp_beside(out);
    let result = (|| {
        let file = File::create(&tmp)
            .map_err(|e| BundleError::io(format!("creating {}", tmp.display()), e))?;
        let mut w = std::io::BufWriter::new(file);
        let werr = |e| BundleError::io(format!("writing {}", tmp.display()), e);
        write_header(&mut w, &manifest_bytes, &[]).map_err(werr)?;
        let mut buf = vec![0u8; CHUNK];
        for (entry, path) in manifest.payloads.iter().zip(payload_files) {
            let mut f = File::open(path)
                .map_err(|e| BundleError::io(format!("opening payload {}", path.display()), e))?;
            let actual_len = f
                .metadata()
                .map_err(|e| BundleError::io(format!("reading payload {}", path.display()), e))?
                .len();
            if actual_len != entry.length {
                return Err(BundleError::PayloadLengthMismatch {
                    declared: entry.length,
                    actual: actual_len,
                });
            }
            let digest = copy_hashed(&mut f, &mut w, entry.length, &mut buf).map_err(werr)?;
            if hex::encode(digest) != entry.sha256 {
                return Err(BundleError::PayloadHashMismatch {
                    name: entry.name.clone(),
                    expected: entry.sha256.clone(),
                    actual: hex::encode(digest),
                });
            }
        }
        let file = w.into_inner().map_err(|e| werr(e.into_error()))?;
        finish(&tmp, out, file)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Add (or replace) `key`'s signature over the manifest of the bundle at `path`, in place.
/// Returns the new signature entry. Payload bytes are copied unchanged.
pub fn sign_bundle_file(path: &Path, key: &SigningKey) -> Result<SignatureEntry, BundleError> {
    let (mut src, _, header) = open_file(path)?;
    let entry = signature::sign(CONTEXT_MANIFEST, &header.manifest_bytes, key);
    let mut sigs = header.signatures.clone();
    signature::upsert(&mut sigs, entry.clone());
    if sigs.len() > MAX_SIGNATURES {
        return Err(BundleError::LengthTooLarge {
            field: "signature count".into(),
            value: sigs.len() as u64,
            limit: MAX_SIGNATURES as u64,
        });
    }
    let tmp = temp_beside(path);
    let result = (|| {
        let file = File::create(&tmp)
            .map_err(|e| BundleError::io(format!("creating {}", tmp.display()), e))?;
        let mut w = std::io::BufWriter::new(file);
        let werr = |e| BundleError::io(format!("writing {}", tmp.display()), e);
        write_header(&mut w, &header.manifest_bytes, &sigs).map_err(werr)?;
        let total = header.manifest.payload_total().unwrap_or(0);
        let copied = std::io::copy(&mut (&mut src).take(total), &mut w).map_err(werr)?;
        if copied != total {
            return Err(BundleError::Truncated {
                what: "payloads".into(),
                needed: total,
                available: copied,
            });
        }
        let file = w.into_inner().map_err(|e| werr(e.into_error()))?;
        finish(&tmp, path, file)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| entry)
}

/// Assemble a bundle in memory from parts, signatures included. For tests and tools that build
/// deliberately odd bundles; no checks are made.
pub fn assemble_raw(manifest_bytes: &[u8], sigs: &[SignatureEntry], payloads: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = write_header(&mut out, manifest_bytes, sigs);
    for p in payloads {
        out.extend_from_slice(p);
    }
    out
}
