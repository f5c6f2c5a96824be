//! The patch bundle file's layout, which the laptop (that verifies and flashes bundles) and the
//! inventory server (that stores them, and vouches for them in its audit exports) both read:
//!
//! ```text
//! offset  size  field
//! 0       8     magic "FPBUNDLE"
//! 8       4     format version (u32 little-endian) = 1
//! 12      4     manifest length M (u32 LE), at most MAX_MANIFEST_LEN
//! 16      M     manifest: canonical JSON
//! 16+M    4     signature block length S (u32 LE), at most MAX_SIGNATURES_LEN
//! 20+M    S     signature block: canonical JSON array of {key_id, signature}
//! 20+M+S  ...   payloads, concatenated in manifest order, exactly as long as the manifest says
//! ```
//!
//! [`read_header_parts`] splits the header off a reader and says nothing of what it means: the
//! manifest's schema, the signatures and the payloads are checked by the reader's caller.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::io::Read;

/// The first bytes of every bundle.
pub const MAGIC: &[u8; 8] = b"FPBUNDLE";
/// The only format version there is.
pub const FORMAT_VERSION: u32 = 1;
/// Largest manifest a bundle may carry.
pub const MAX_MANIFEST_LEN: u64 = 1 << 20;
/// Largest signature block a bundle may carry.
pub const MAX_SIGNATURES_LEN: u64 = 64 << 10;

/// A bundle's header, split but not interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderParts {
    /// The manifest's exact bytes (what the release signatures cover).
    pub manifest: Vec<u8>,
    /// The signature block's exact bytes.
    pub signatures: Vec<u8>,
    /// Bytes before the first payload.
    pub header_len: u64,
}

/// Why a bundle's header cannot be split off.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("not a patch bundle (bad magic)")]
    BadMagic,
    #[error(
        "bundle format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedFormatVersion { found: u32, supported: u32 },
    #[error("the bundle is truncated: the {what} needs {needed} bytes, {available} remain")]
    Truncated { what: String, needed: u64, available: u64 },
    #[error("the {field} is {value} bytes, more than the limit of {limit}")]
    LengthTooLarge { field: String, value: u64, limit: u64 },
    #[error("reading the {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Split the header off `r`, positioned at the start of a bundle of `file_len` bytes; `r` is
/// left at the first payload.
pub fn read_header_parts<R: Read>(r: &mut R, file_len: u64) -> Result<HeaderParts, HeaderError> {
    let mut remaining = file_len;
    if file_len < MAGIC.len() as u64 {
        return Err(HeaderError::BadMagic);
    }
    let mut magic = [0u8; 8];
    read_counted(r, &mut magic, "magic", &mut remaining)?;
    if &magic != MAGIC {
        return Err(HeaderError::BadMagic);
    }
    let mut v = [0u8; 4];
    read_counted(r, &mut v, "format version", &mut remaining)?;
    let version = u32::from_le_bytes(v);
    if version != FORMAT_VERSION {
        return Err(HeaderError::UnsupportedFormatVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let manifest = read_field(r, "manifest", MAX_MANIFEST_LEN, &mut remaining)?;
    let signatures = read_field(r, "signature block", MAX_SIGNATURES_LEN, &mut remaining)?;
    // `remaining` only ever went down from `file_len`.
    Ok(HeaderParts { manifest, signatures, header_len: file_len.saturating_sub(remaining) })
}

/// A length-prefixed field of at most `limit` bytes.
fn read_field<R: Read>(
    r: &mut R,
    what: &str,
    limit: u64,
    remaining: &mut u64,
) -> Result<Vec<u8>, HeaderError> {
    let mut b = [0u8; 4];
    read_counted(r, &mut b, &format!("{what} length"), remaining)?;
    let len = u64::from(u32::from_le_bytes(b));
    if len > limit {
        return Err(HeaderError::LengthTooLarge { field: what.into(), value: len, limit });
    }
    if len > *remaining {
        return Err(HeaderError::Truncated {
            what: what.into(),
            needed: len,
            available: *remaining,
        });
    }
    let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
    read_counted(r, &mut bytes, what, remaining)?;
    Ok(bytes)
}

fn read_counted<R: Read>(
    r: &mut R,
    buf: &mut [u8],
    what: &str,
    remaining: &mut u64,
) -> Result<(), HeaderError> {
    let need = buf.len() as u64;
    let Some(left) = remaining.checked_sub(need) else {
        return Err(HeaderError::Truncated {
            what: what.into(),
            needed: need,
            available: *remaining,
        });
    };
    r.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            HeaderError::Truncated { what: what.into(), needed: need, available: 0 }
        } else {
            HeaderError::Io { what: what.into(), source: e }
        }
    })?;
    *remaining = left;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(manifest: &[u8], sigs: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend(FORMAT_VERSION.to_le_bytes());
        b.extend((manifest.len() as u32).to_le_bytes());
        b.extend(manifest);
        b.extend((sigs.len() as u32).to_le_bytes());
        b.extend(sigs);
        b.extend(payload);
        b
    }

    #[test]
    fn the_header_splits_into_its_fields_and_the_reader_stops_at_the_payloads() {
        let b = bundle(b"{\"m\":1}", b"[]", b"PAYLOAD");
        let mut r = &b[..];
        let parts = read_header_parts(&mut r, b.len() as u64).unwrap();
        assert_eq!(parts.manifest, b"{\"m\":1}");
        assert_eq!(parts.signatures, b"[]");
        assert_eq!(parts.header_len, (b.len() - 7) as u64);
        assert_eq!(r, b"PAYLOAD");
    }

    #[test]
    fn damaged_headers_are_named() {
        let good = bundle(b"{}", b"[]", b"");
        let err = |b: &[u8]| read_header_parts(&mut &b[..], b.len() as u64).unwrap_err();
        assert!(matches!(err(b"FPBUND"), HeaderError::BadMagic));
        assert!(matches!(err(b"NOTABUNDLE......"), HeaderError::BadMagic));
        let mut v2 = good.clone();
        v2[8] = 2;
        assert!(matches!(err(&v2), HeaderError::UnsupportedFormatVersion { found: 2, .. }));
        let mut huge = good.clone();
        huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(err(&huge), HeaderError::LengthTooLarge { .. }));
        let cut = &good[..good.len() - 1];
        assert!(matches!(err(cut), HeaderError::Truncated { .. }));
    }
}
