//! Minimal MCUboot image handling for the simulated device: build test images (header, payload,
//! SHA-256 TLV) and read the version and hash back, independently of the product's own parser.

use sha2::{Digest, Sha256};

pub const IMAGE_MAGIC: u32 = 0x96f3_b83d;
const HEADER_SIZE: usize = 32;
const TLV_INFO_MAGIC: u16 = 0x6907;
const TLV_PROT_INFO_MAGIC: u16 = 0x6908;
const TLV_SHA256: u8 = 0x10;

/// An MCUboot image version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u8,
    pub minor: u8,
    pub revision: u16,
    pub build: u32,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.revision)?;
        if self.build != 0 {
            write!(f, ".{}", self.build)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Version {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('.').collect();
        let bad = || format!("bad version {s:?}: use MAJOR.MINOR.REVISION[.BUILD]");
        if !(3..=4).contains(&parts.len()) {
            return Err(bad());
        }
        Ok(Version {
            major: parts[0].parse().map_err(|_| bad())?,
            minor: parts[1].parse().map_err(|_| bad())?,
            revision: parts[2].parse().map_err(|_| bad())?,
            build: parts.get(3).map(|b| b.parse()).transpose().map_err(|_| bad())?.unwrap_or(0),
        })
    }
}

/// What the device learns from an image in a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub version: Version,
    /// The SHA-256 TLV (what SMP reports as the image hash).
    pub hash: [u8; 32],
    /// Whether the TLV matches the hash of header and payload (MCUboot's boot-time check).
    pub valid: bool,
}

/// Build an unsigned MCUboot image: 32-byte header, payload, TLV area with the SHA-256 TLV.
pub fn build_image(version: Version, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_SIZE + payload.len() + 40);
    out.extend_from_slice(&IMAGE_MAGIC.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // load address
    out.extend_from_slice(&(HEADER_SIZE as u16).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes()); // protected TLV size
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // flags
    out.push(version.major);
    out.push(version.minor);
    out.extend_from_slice(&version.revision.to_le_bytes());
    out.extend_from_slice(&version.build.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // pad
    out.extend_from_slice(payload);
    let hash = Sha256::digest(&out);
    out.extend_from_slice(&TLV_INFO_MAGIC.to_le_bytes());
    out.extend_from_slice(&(4u16 + 4 + 32).to_le_bytes());
    out.push(TLV_SHA256);
    out.push(0);
    out.extend_from_slice(&32u16.to_le_bytes());
    out.extend_from_slice(&hash);
    out
}

/// A deterministic test payload of `len` bytes (differs per `seed`).
pub fn test_payload(len: usize, seed: u8) -> Vec<u8> {
    let mut x = 0x9e37_79b9u32 ^ u32::from(seed).wrapping_mul(0x0101_0101);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn u16le(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32le(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The version from an image header (enough of it is in the first upload chunk).
pub fn header_version(b: &[u8]) -> Option<Version> {
    if u32le(b, 0)? != IMAGE_MAGIC {
        return None;
    }
    Some(Version {
        major: *b.get(20)?,
        minor: *b.get(21)?,
        revision: u16le(b, 22)?,
        build: u32le(b, 24)?,
    })
}

/// Parse an image: `None` unless the header and a SHA-256 TLV are present.
pub fn parse(b: &[u8]) -> Option<ImageInfo> {
    let version = header_version(b)?;
    let hdr_size = u16le(b, 8)? as usize;
    let prot_size = u16le(b, 10)? as usize;
    let img_size = u32le(b, 12)? as usize;
    let body_end = hdr_size.checked_add(img_size)?;
    let mut at = body_end;
    if prot_size > 0 {
        if u16le(b, at)? != TLV_PROT_INFO_MAGIC {
            return None;
        }
        at = at.checked_add(prot_size)?;
    }
    if u16le(b, at)? != TLV_INFO_MAGIC {
        return None;
    }
    let end = at.checked_add(u16le(b, at + 2)? as usize)?;
    at += 4;
    while at + 4 <= end {
        let kind = *b.get(at)?;
        let len = u16le(b, at + 2)? as usize;
        let value = b.get(at + 4..at + 4 + len)?;
        if kind == TLV_SHA256 && len == 32 {
            let hash: [u8; 32] = value.try_into().ok()?;
            let computed: [u8; 32] = Sha256::digest(b.get(..body_end + prot_size)?).into();
            return Some(ImageInfo { version, hash, valid: computed == hash });
        }
        at += 4 + len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_images_parse_back() {
        let v: Version = "1.2.3".parse().unwrap();
        let img = build_image(v, &test_payload(1000, 1));
        let info = parse(&img).unwrap();
        assert_eq!(info.version, v);
        assert!(info.valid);
        assert_eq!(info.version.to_string(), "1.2.3");
        let mut bad = img.clone();
        bad[100] ^= 1;
        assert!(!parse(&bad).unwrap().valid);
        assert!(parse(&img[..500]).is_none());
        assert!(parse(b"not an image at all, no magic").is_none());
        assert_eq!("1.2.3.4".parse::<Version>().unwrap().to_string(), "1.2.3.4");
        assert!("1.x".parse::<Version>().is_err());
    }
}
