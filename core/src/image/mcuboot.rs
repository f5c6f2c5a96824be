//! MCUboot images: header, protected and unprotected TLV areas, SHA-256 and ED25519 checks.
//!
//! Layout (little-endian, as `imgtool` writes by default):
//!
//! ```text
//! header (ih_hdr_size bytes, 32 used)   magic 0x96f3b83d, load addr, hdr size, protected TLV size,
//!                                       image size, flags, version (u8 u8 u16 u32)
//! image  (ih_img_size bytes)
//! protected TLV area   (optional)       info {0x6908, total} then TLVs; total == ih_protect_tlv_size
//! unprotected TLV area                  info {0x6907, total} then TLVs
//! ```
//!
//! Each TLV is `{type: u16, len: u16, value}`. The SHA-256 TLV (0x10) covers header, image and
//! protected TLVs; it is the image hash devices report over SMP. The ED25519 TLV (0x24) signs that
//! digest, or, in "pure" mode (marked by a SIG_PURE TLV, 0x25, as `imgtool sign --pure` makes),
//! the covered bytes themselves. The signing key is named by KEYHASH (0x01: SHA-256 of the key's
//! DER SubjectPublicKeyInfo) or carried whole in PUBKEY (0x02). Only protected TLVs are trusted for
//! dependencies (0x40) and other metadata, because unprotected ones are not signed; a metadata TLV
//! in the unprotected area is refused.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use crate::model::Version;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::Serialize;
use sha2::{Digest, Sha256, Sha384, Sha512};

pub const IMAGE_MAGIC: u32 = 0x96f3_b83d;
pub const TLV_INFO_MAGIC: u16 = 0x6907;
pub const TLV_PROT_INFO_MAGIC: u16 = 0x6908;
pub const HEADER_LEN: usize = 32;

pub const TLV_KEYHASH: u16 = 0x01;
pub const TLV_PUBKEY: u16 = 0x02;
pub const TLV_SHA256: u16 = 0x10;
pub const TLV_SHA384: u16 = 0x11;
pub const TLV_SHA512: u16 = 0x12;
pub const TLV_ED25519: u16 = 0x24;
pub const TLV_SIG_PURE: u16 = 0x25;
pub const TLV_DEPENDENCY: u16 = 0x40;
pub const TLV_SEC_CNT: u16 = 0x50;
pub const TLV_BOOT_RECORD: u16 = 0x60;

/// Header flag: the image is encrypted.
pub const IMAGE_F_ENCRYPTED_AES128: u32 = 0x04;

/// DER prefix of an ed25519 SubjectPublicKeyInfo (followed by the 32 raw key bytes).
const ED25519_SPKI_PREFIX: [u8; 12] =
    [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// What is wrong with an MCUboot image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum McubootError {
    #[error(
        "image is {len} bytes, shorter than the 32-byte MCUboot header: it is not an MCUboot image"
    )]
    TooShort { len: usize },
    #[error(
        "header magic is {found:#010x}, not 0x96f3b83d: this is not an MCUboot image (or it is big-endian, which is not supported)"
    )]
    BadMagic { found: u32 },
    #[error("header size {hdr_size} is smaller than the 32-byte header: the image is corrupt")]
    HeaderSizeTooSmall { hdr_size: u16 },
    #[error(
        "the header says the {what} ends at byte {end} but the file is {len} bytes: the image is truncated"
    )]
    Truncated { what: String, end: u64, len: usize },
    #[error(
        "expected TLV info magic {expected:#06x} at offset {offset}, found {found:#06x}: the TLV area is corrupt"
    )]
    BadTlvInfoMagic { offset: usize, expected: u16, found: u16 },
    #[error(
        "the header declares {header} bytes of protected TLVs but the area says {area}: the image is corrupt"
    )]
    ProtectedSizeMismatch { header: u16, area: u16 },
    #[error("TLV at offset {offset} runs past the end of its area: the TLV area is corrupt")]
    TlvOverrun { offset: usize },
    #[error("TLV {kind:#06x} appears {count} times; it may appear once")]
    DuplicateTlv { kind: u16, count: usize },
    #[error(
        "TLV {kind:#06x} is in the unprotected (unsigned) area, where it cannot be trusted: re-sign the image so it is protected"
    )]
    UnprotectedMetadata { kind: u16 },
    #[error("TLV {kind:#06x} is {len} bytes, expected {expected}")]
    TlvLength { kind: u16, len: usize, expected: usize },
    #[error("image has no SHA-256/384/512 TLV: sign it with imgtool")]
    MissingHash,
    #[error(
        "image hash does not match its TLV (TLV {expected}, computed {actual}): the image was corrupted or altered after signing"
    )]
    HashMismatch { expected: String, actual: String },
    #[error(
        "image carries no ED25519 signature TLV: it must be signed with the vendor's ed25519 key"
    )]
    MissingSignature,
    #[error(
        "image is signed by a key (hash {keyhash}) that is not a known vendor key: add the vendor's image key to the trust store"
    )]
    UnknownKey { keyhash: String },
    #[error(
        "the image's ED25519 signature does not verify with the vendor key: the image was altered or signed by someone else"
    )]
    BadSignature,
}

/// Which digest an image's hash TLV holds (imgtool uses SHA-256 by default, SHA-512 for
/// ed25519 in pure mode or with `--sha 512`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashAlg {
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlg {
    fn of_tlv(kind: u16) -> Option<HashAlg> {
        match kind {
            TLV_SHA256 => Some(HashAlg::Sha256),
            TLV_SHA384 => Some(HashAlg::Sha384),
            TLV_SHA512 => Some(HashAlg::Sha512),
            _ => None,
        }
    }
    fn of_len(len: usize) -> Option<HashAlg> {
        match len {
            32 => Some(HashAlg::Sha256),
            48 => Some(HashAlg::Sha384),
            64 => Some(HashAlg::Sha512),
            _ => None,
        }
    }
    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }
    /// Digest of the concatenation of `parts`.
    pub fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            d.finalize().to_vec()
        }
        match self {
            HashAlg::Sha256 => run::<Sha256>(parts),
            HashAlg::Sha384 => run::<Sha384>(parts),
            HashAlg::Sha512 => run::<Sha512>(parts),
        }
    }
}

/// The fixed MCUboot image header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ImageHeader {
    pub load_addr: u32,
    pub hdr_size: u16,
    pub protect_tlv_size: u16,
    pub img_size: u32,
    pub flags: u32,
    pub version: Version,
}

/// One TLV: its type, where its value sits in the image, and whether it is protected (signed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tlv {
    pub kind: u16,
    pub offset: usize,
    pub len: usize,
    pub protected: bool,
}

/// An image dependency: image `image_id` must be at least `min_version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Dependency {
    pub image_id: u8,
    pub flags: u8,
    pub min_version: Version,
}

/// A parsed MCUboot image, borrowing its bytes.
#[derive(Debug, Clone)]
pub struct McubootImage<'a> {
    pub header: ImageHeader,
    pub tlvs: Vec<Tlv>,
    bytes: &'a [u8],
    /// Header, image and protected TLVs: what the hash and signature cover.
    covered: &'a [u8],
    /// The image without header and TLVs.
    body: &'a [u8],
    /// Where the TLV areas end (anything after is slot padding).
    end: usize,
}

/// What `fieldpatch` shows about an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageSummary {
    pub header: ImageHeader,
    pub image_hash: Option<String>,
    pub hash_algorithm: Option<HashAlg>,
    pub pure_signature: bool,
    pub signed: bool,
    pub keyhash: Option<String>,
    pub dependencies: Vec<Dependency>,
    pub tlvs: Vec<Tlv>,
}

impl ImageHeader {
    /// Decode the fixed 32-byte header; returns its magic beside it. (Constant indices into an
    /// array: the compiler checks them.)
    fn decode(h: &[u8; HEADER_LEN]) -> (u32, ImageHeader) {
        let header = ImageHeader {
            load_addr: u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
            hdr_size: u16::from_le_bytes([h[8], h[9]]),
            protect_tlv_size: u16::from_le_bytes([h[10], h[11]]),
            img_size: u32::from_le_bytes([h[12], h[13], h[14], h[15]]),
            flags: u32::from_le_bytes([h[16], h[17], h[18], h[19]]),
            version: version_of([h[20], h[21], h[22], h[23], h[24], h[25], h[26], h[27]]),
        };
        (u32::from_le_bytes([h[0], h[1], h[2], h[3]]), header)
    }
}

/// An MCUboot version: major, minor, revision (u16), build number (u32).
fn version_of([major, minor, r0, r1, b0, b1, b2, b3]: [u8; 8]) -> Version {
    Version::new(major, minor, u16::from_le_bytes([r0, r1]), u32::from_le_bytes([b0, b1, b2, b3]))
}

/// Where `n` bytes from `off` end, for an error message (as u64, where no file offset overflows).
fn end_of(off: usize, n: usize) -> u64 {
    (off as u64).saturating_add(n as u64)
}

/// Digest of an ed25519 key's DER SubjectPublicKeyInfo: what imgtool puts in KEYHASH (with the
/// image's hash algorithm).
pub fn ed25519_keyhash(key: &VerifyingKey, alg: HashAlg) -> Vec<u8> {
    alg.digest(&[&ED25519_SPKI_PREFIX, key.as_bytes()])
}

impl<'a> McubootImage<'a> {
    /// Parse header and TLV areas. Checks structure only; see [`Self::verify_hash`] and
    /// [`Self::verify_ed25519`].
    pub fn parse(bytes: &'a [u8]) -> Result<Self, McubootError> {
        let len = bytes.len();
        let Some(fixed) = bytes.first_chunk::<HEADER_LEN>() else {
            return Err(McubootError::TooShort { len });
        };
        let (magic, header) = ImageHeader::decode(fixed);
        if magic != IMAGE_MAGIC {
            return Err(McubootError::BadMagic { found: magic });
        }
        let hdr_size = usize::from(header.hdr_size);
        if hdr_size < HEADER_LEN {
            return Err(McubootError::HeaderSizeTooSmall { hdr_size: header.hdr_size });
        }
        let truncated =
            |what: &str, end: u64| McubootError::Truncated { what: what.into(), end, len };
        // A u16 and a u32: their sum fits a u64.
        let image_end = u64::from(header.hdr_size).saturating_add(u64::from(header.img_size));
        let Some((body, off)) = usize::try_from(header.img_size)
            .ok()
            .and_then(|n| hdr_size.checked_add(n))
            .and_then(|end| Some((bytes.get(hdr_size..end)?, end)))
        else {
            return Err(truncated("image", image_end));
        };
        let mut tlvs = Vec::new();
        let prot = usize::from(header.protect_tlv_size);
        let covered_len = if prot > 0 {
            let Some(prot_end) = off.checked_add(prot).filter(|&end| end <= len) else {
                return Err(truncated("protected TLV area", end_of(off, prot)));
            };
            let (total, _) = Self::area(bytes, off, TLV_PROT_INFO_MAGIC, true, &mut tlvs)?;
            if total != header.protect_tlv_size {
                return Err(McubootError::ProtectedSizeMismatch {
                    header: header.protect_tlv_size,
                    area: total,
                });
            }
            prot_end
        } else {
            off
        };
        let Some((covered, rest)) = bytes.split_at_checked(covered_len) else {
            return Err(truncated("protected TLV area", end_of(covered_len, 0)));
        };
        let Some(&[m0, m1, t0, t1]) = rest.first_chunk::<4>() else {
            return Err(truncated("TLV area", end_of(covered_len, 4)));
        };
        if prot == 0 && u16::from_le_bytes([m0, m1]) == TLV_PROT_INFO_MAGIC {
            return Err(McubootError::ProtectedSizeMismatch {
                header: 0,
                area: u16::from_le_bytes([t0, t1]),
            });
        }
        let (_, end) = Self::area(bytes, covered_len, TLV_INFO_MAGIC, false, &mut tlvs)?;
        let img = McubootImage { header, tlvs, bytes, covered, body, end };
        for kind in [TLV_SHA256, TLV_ED25519, TLV_KEYHASH, TLV_PUBKEY, TLV_SIG_PURE, TLV_SEC_CNT] {
            let count = img.tlvs.iter().filter(|t| t.kind == kind).count();
            if count > 1 {
                return Err(McubootError::DuplicateTlv { kind, count });
            }
        }
        let hashes: Vec<_> =
            img.tlvs.iter().filter(|t| HashAlg::of_tlv(t.kind).is_some()).collect();
        if let Some(second) = hashes.get(1) {
            return Err(McubootError::DuplicateTlv { kind: second.kind, count: hashes.len() });
        }
        for t in &img.tlvs {
            if !t.protected && matches!(t.kind, TLV_DEPENDENCY | TLV_SEC_CNT | TLV_BOOT_RECORD) {
                return Err(McubootError::UnprotectedMetadata { kind: t.kind });
            }
            if t.kind == TLV_DEPENDENCY && t.len != 12 {
                return Err(McubootError::TlvLength { kind: t.kind, len: t.len, expected: 12 });
            }
        }
        Ok(img)
    }

    /// Parse one TLV area at `off`; returns its total length (info header included) and where
    /// it ends.
    fn area(
        bytes: &[u8],
        off: usize,
        magic: u16,
        protected: bool,
        tlvs: &mut Vec<Tlv>,
    ) -> Result<(u16, usize), McubootError> {
        let len = bytes.len();
        let Some(&[m0, m1, t0, t1]) = bytes.get(off..).and_then(|b| b.first_chunk::<4>()) else {
            return Err(McubootError::Truncated {
                what: "TLV info".into(),
                end: end_of(off, 4),
                len,
            });
        };
        let found = u16::from_le_bytes([m0, m1]);
        if found != magic {
            return Err(McubootError::BadTlvInfoMagic { offset: off, expected: magic, found });
        }
        let total = u16::from_le_bytes([t0, t1]);
        if total < 4 {
            return Err(McubootError::TlvOverrun { offset: off });
        }
        let area_len = usize::from(total);
        let Some(end) = off.checked_add(area_len).filter(|&end| end <= len) else {
            return Err(McubootError::Truncated {
                what: "TLV area".into(),
                end: end_of(off, area_len),
                len,
            });
        };
        // Every position below is at most `end`, so no sum of them overflows.
        let overrun = |offset| McubootError::TlvOverrun { offset };
        let mut p = off.checked_add(4).ok_or(overrun(off))?;
        while p < end {
            let Some((&[k0, k1, l0, l1], after)) =
                bytes.get(p..end).and_then(|b| b.split_first_chunk::<4>())
            else {
                return Err(overrun(p));
            };
            let tlen = usize::from(u16::from_le_bytes([l0, l1]));
            if tlen > after.len() {
                return Err(overrun(p));
            }
            let value = p.checked_add(4).ok_or(overrun(p))?;
            tlvs.push(Tlv {
                kind: u16::from_le_bytes([k0, k1]),
                offset: value,
                len: tlen,
                protected,
            });
            p = value.checked_add(tlen).ok_or(overrun(p))?;
        }
        Ok((total, end))
    }

    /// The value bytes of `t` (`None` for a TLV that lies outside the image).
    fn value(&self, t: &Tlv) -> Option<&'a [u8]> {
        self.bytes.get(t.offset..)?.get(..t.len)
    }

    /// The value bytes of the first TLV of `kind`.
    pub fn tlv(&self, kind: u16) -> Option<&'a [u8]> {
        self.tlvs.iter().find(|t| t.kind == kind).and_then(|t| self.value(t))
    }

    /// Signed in pure mode (signature over the covered bytes, not their digest)?
    pub fn is_pure(&self) -> bool {
        self.tlv(TLV_SIG_PURE).is_some()
    }

    /// The bytes the hash and signature cover: header, image, protected TLVs.
    pub fn covered(&self) -> &'a [u8] {
        self.covered
    }

    /// The image body (without header and TLVs).
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// Total bytes of header, image and TLV areas (anything after is padding).
    pub fn total_len(&self) -> usize {
        self.end
    }

    /// The hash TLV (SHA-256, -384 or -512) and its algorithm.
    pub fn hash_tlv(&self) -> Option<(HashAlg, &'a [u8])> {
        self.tlvs.iter().find_map(|t| Some((HashAlg::of_tlv(t.kind)?, self.value(t)?)))
    }

    /// The hash TLV value: the image hash devices report (SHA-256 unless signed otherwise).
    pub fn image_hash(&self) -> Option<Vec<u8>> {
        self.hash_tlv().map(|(_, v)| v.to_vec())
    }

    /// Dependencies (protected DEPENDENCY TLVs).
    pub fn dependencies(&self) -> Vec<Dependency> {
        self.tlvs
            .iter()
            .filter(|t| t.kind == TLV_DEPENDENCY && t.protected)
            .filter_map(|t| {
                let [image_id, flags, _, _, version @ ..] =
                    <[u8; 12]>::try_from(self.value(t)?).ok()?;
                Some(Dependency { image_id, flags, min_version: version_of(version) })
            })
            .collect()
    }

    /// Compute the digest over the covered bytes and check it against the hash TLV. Returns the
    /// image hash. The TLV is required.
    pub fn verify_hash(&self) -> Result<Vec<u8>, McubootError> {
        let (alg, tlv) = self.hash_tlv().ok_or(McubootError::MissingHash)?;
        if tlv.len() != alg.digest_len() {
            let kind =
                self.tlvs.iter().find(|t| HashAlg::of_tlv(t.kind).is_some()).map_or(0, |t| t.kind);
            return Err(McubootError::TlvLength {
                kind,
                len: tlv.len(),
                expected: alg.digest_len(),
            });
        }
        let actual = alg.digest(&[self.covered()]);
        if actual != tlv {
            return Err(McubootError::HashMismatch {
                expected: hex::encode(tlv),
                actual: hex::encode(actual),
            });
        }
        Ok(actual)
    }

    /// Verify the ED25519 TLV with one of `keys` (chosen by KEYHASH or PUBKEY when present).
    /// In hash mode the SHA-256 TLV is checked first and the signature covers the digest; in pure
    /// mode the signature covers the header, image and protected TLVs. Returns the key that verified.
    pub fn verify_ed25519(&self, keys: &[VerifyingKey]) -> Result<VerifyingKey, McubootError> {
        let sig = self.tlv(TLV_ED25519).ok_or(McubootError::MissingSignature)?;
        let sig: [u8; 64] = sig.try_into().map_err(|_| McubootError::TlvLength {
            kind: TLV_ED25519,
            len: sig.len(),
            expected: 64,
        })?;
        let sig = Signature::from_bytes(&sig);
        let candidates: Vec<VerifyingKey> = if let Some(kh) = self.tlv(TLV_KEYHASH) {
            let alg = HashAlg::of_len(kh.len()).ok_or(McubootError::TlvLength {
                kind: TLV_KEYHASH,
                len: kh.len(),
                expected: 32,
            })?;
            let found: Vec<_> =
                keys.iter().filter(|k| ed25519_keyhash(k, alg) == kh).copied().collect();
            if found.is_empty() {
                return Err(McubootError::UnknownKey { keyhash: hex::encode(kh) });
            }
            found
        } else if let Some(pk) = self.tlv(TLV_PUBKEY) {
            let found: Vec<_> = keys
                .iter()
                .filter(|k| pk.strip_prefix(&ED25519_SPKI_PREFIX) == Some(k.as_bytes().as_slice()))
                .copied()
                .collect();
            if found.is_empty() {
                return Err(McubootError::UnknownKey { keyhash: hex::encode(Sha256::digest(pk)) });
            }
            found
        } else {
            keys.to_vec()
        };
        let digest;
        let message: &[u8] = if self.is_pure() {
            if self.hash_tlv().is_some() {
                self.verify_hash()?;
            }
            self.covered()
        } else {
            digest = self.verify_hash()?;
            &digest
        };
        candidates
            .into_iter()
            .find(|k| k.verify_strict(message, &sig).is_ok())
            .ok_or(McubootError::BadSignature)
    }

    /// A serializable description of the image.
    pub fn summary(&self) -> ImageSummary {
        ImageSummary {
            header: self.header,
            image_hash: self.image_hash().map(hex::encode),
            hash_algorithm: self.hash_tlv().map(|(a, _)| a),
            pure_signature: self.is_pure(),
            signed: self.tlv(TLV_ED25519).is_some(),
            keyhash: self.tlv(TLV_KEYHASH).map(hex::encode),
            dependencies: self.dependencies(),
            tlvs: self.tlvs.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Build a minimal unsigned image with a SHA-256 TLV by hand.
    fn image(body: &[u8], protected: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut prot = Vec::new();
        if !protected.is_empty() {
            prot.extend_from_slice(&TLV_PROT_INFO_MAGIC.to_le_bytes());
            prot.extend_from_slice(&[0, 0]); // the area's total, set below
            for (k, v) in protected {
                prot.extend_from_slice(&k.to_le_bytes());
                prot.extend_from_slice(&(v.len() as u16).to_le_bytes());
                prot.extend_from_slice(v);
            }
            let total = (prot.len() as u16).to_le_bytes();
            prot[2..4].copy_from_slice(&total);
        }
        let prot_size = prot.len();
        let mut b = Vec::new();
        b.extend_from_slice(&IMAGE_MAGIC.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&32u16.to_le_bytes());
        b.extend_from_slice(&(prot_size as u16).to_le_bytes());
        b.extend_from_slice(&(body.len() as u32).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&[1, 2, 3, 0, 4, 0, 0, 0]);
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(body);
        b.extend_from_slice(&prot);
        let digest = Sha256::digest(&b);
        b.extend_from_slice(&TLV_INFO_MAGIC.to_le_bytes());
        b.extend_from_slice(&(4u16 + 4 + 32).to_le_bytes());
        b.extend_from_slice(&TLV_SHA256.to_le_bytes());
        b.extend_from_slice(&32u16.to_le_bytes());
        b.extend_from_slice(&digest);
        b
    }

    #[test]
    fn hand_built_image_parses_and_its_hash_checks() {
        let dep = vec![1, 0, 0, 0, 2, 1, 5, 0, 0, 0, 0, 0];
        let b = image(b"hello firmware", &[(TLV_DEPENDENCY, dep)]);
        let img = McubootImage::parse(&b).unwrap();
        assert_eq!(img.header.version, Version::new(1, 2, 3, 4));
        assert_eq!(img.body(), b"hello firmware");
        assert_eq!(img.verify_hash().unwrap(), img.image_hash().unwrap());
        assert_eq!(
            img.dependencies(),
            vec![Dependency { image_id: 1, flags: 0, min_version: Version::new(2, 1, 5, 0) }]
        );
        assert_eq!(img.total_len(), b.len());
        assert_eq!(img.verify_ed25519(&[]).unwrap_err(), McubootError::MissingSignature);
        let mut t = b.clone();
        t[33] ^= 1;
        let img = McubootImage::parse(&t).unwrap();
        assert!(matches!(img.verify_hash(), Err(McubootError::HashMismatch { .. })));
    }

    #[test]
    fn every_prefix_of_an_image_is_rejected_without_panic() {
        let b = image(b"0123456789", &[(TLV_SEC_CNT, vec![1, 0, 0, 0])]);
        for n in 0..b.len() {
            assert!(McubootImage::parse(&b[..n]).is_err(), "prefix {n} accepted");
        }
    }
}
