//! DFU files: a firmware payload followed by the 16-byte DFU suffix (USB DFU 1.1, appendix B),
//! optionally an ST DfuSe container (UM0391) inside.
//!
//! Layout of the suffix (the last 16 bytes, little-endian):
//!
//! | offset | field          | notes                                              |
//! |-------:|----------------|----------------------------------------------------|
//! | 0      | bcdDevice      | 0xFFFF = any                                       |
//! | 2      | idProduct      | 0xFFFF = any                                       |
//! | 4      | idVendor       | 0xFFFF = any                                       |
//! | 6      | bcdDFU         | 0x0100 / 0x0110 plain DFU, 0x011A DfuSe            |
//! | 8      | ucDfuSignature | the bytes `U F D`                                  |
//! | 11     | bLength        | 16 (dfu-util accepts larger, vendor-extended ones) |
//! | 12     | dwCRC          | CRC-32 of every byte before dwCRC                  |
//!
//! `dwCRC` is computed as `dfu-util` does: the reflected CRC-32 (polynomial 0xEDB88320) with initial
//! value 0xFFFFFFFF and **no final XOR**, i.e. the bitwise complement of the usual CRC-32. Files
//! made by `dfu-suffix` and `dfuse-pack` are accepted unchanged.
//!
//! The file is checked before anything else happens: a bad signature, length or CRC is an error,
//! and [`DfuFile::check_device`] refuses a file whose suffix names another vendor/product than the
//! connected device, before any byte is downloaded. `bcdDevice` is reported but not enforced
//! (dfu-util does not enforce it either, and vendors use it for the firmware version).
//!
//! This module only reads files; the bytes sent to the device are built by the DFU driver.

use fieldpatch_drivers::dfu::{
    DfuDevice, DfuError, DfuseElement, DfuseOptions, DfuseTarget, DownloadReport,
};
use fieldpatch_drivers::progress::Progress;
use fieldpatch_drivers::usb::UsbControl;
use serde::Serialize;

/// Length of the standard DFU suffix.
pub const SUFFIX_LEN: usize = 16;
/// `bcdDFU` of ST DfuSe files.
pub const BCD_DFUSE: u16 = 0x011A;
/// The wildcard value of the suffix's `idVendor`, `idProduct` and `bcdDevice`.
pub const WILDCARD: u16 = 0xFFFF;

const DFUSE_PREFIX_LEN: usize = 11;
const DFUSE_TARGET_PREFIX_LEN: usize = 274;
const DFUSE_ELEMENT_HEADER_LEN: usize = 8;

/// The CRC-32 that `dfu-util` writes into `dwCRC` (complement of the standard CRC-32).
pub fn dfu_crc32(bytes: &[u8]) -> u32 {
    !crc32fast::hash(bytes)
}

/// What went wrong reading a DFU file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DfuFileError {
    #[error(
        "the file is {len} bytes, too short for a DFU suffix (16 bytes): it is not a DFU file; add a suffix with `dfu-suffix -v VID -p PID -a FILE`"
    )]
    TooShort { len: usize },
    #[error(
        "no DFU suffix signature (expected \"UFD\" 11 bytes from the end): this is not a DFU file; add a suffix with `dfu-suffix -a FILE` or flash it as a raw binary"
    )]
    NoSignature,
    #[error(
        "DFU suffix length {length} is invalid (must be at least 16 and at most the file size {file_len}): the file is damaged"
    )]
    BadSuffixLength { length: u8, file_len: usize },
    #[error(
        "DFU file CRC mismatch: suffix says {stored:#010x}, contents give {computed:#010x}; the file is damaged or was edited after the suffix was added: get a fresh copy"
    )]
    BadCrc { stored: u32, computed: u32 },
    #[error(
        "the suffix says DfuSe (bcdDFU 0x011A) but the payload does not start with the \"DfuSe\" prefix: the file is damaged"
    )]
    MissingDfusePrefix,
    #[error("malformed DfuSe container: {what}; the file is damaged or not made by a DfuSe tool")]
    BadDfuse { what: String },
    #[error(
        "this DFU file is for USB device {file_vid:04x}:{file_pid:04x} but the connected device is {dev_vid:04x}:{dev_pid:04x}; refusing to flash it: pick the file built for this device"
    )]
    DeviceMismatch { file_vid: u16, file_pid: u16, dev_vid: u16, dev_pid: u16 },
}

/// The decoded DFU suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DfuSuffix {
    pub bcd_device: u16,
    pub id_product: u16,
    pub id_vendor: u16,
    pub bcd_dfu: u16,
    /// `bLength`: bytes of suffix at the end of the file (16 for standard files).
    pub length: u8,
    pub crc: u32,
}

/// One contiguous block of a DfuSe target, to be written at `address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DfuseFileElement {
    pub address: u32,
    pub data: Vec<u8>,
}

/// One DfuSe target: the elements for one alternate setting (memory) of the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DfuseFileTarget {
    pub alt_setting: u8,
    /// `szTargetName`, if `bTargetNamed` is set.
    pub name: Option<String>,
    pub elements: Vec<DfuseFileElement>,
}

/// What a DFU file carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DfuPayload {
    /// A plain DFU 1.x image, downloaded as-is.
    Raw(Vec<u8>),
    /// A DfuSe container: targets with addressed elements.
    Dfuse(Vec<DfuseFileTarget>),
}

/// A parsed, CRC-checked DFU file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DfuFile {
    pub suffix: DfuSuffix,
    pub payload: DfuPayload,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl DfuSuffix {
    /// Read and check the suffix of `file` (signature, length, CRC).
    pub fn parse(file: &[u8]) -> Result<Self, DfuFileError> {
        if file.len() < SUFFIX_LEN {
            return Err(DfuFileError::TooShort { len: file.len() });
        }
        let s = &file[file.len() - SUFFIX_LEN..];
        if &s[8..11] != b"UFD" {
            return Err(DfuFileError::NoSignature);
        }
        let length = s[11];
        if (length as usize) < SUFFIX_LEN || length as usize > file.len() {
            return Err(DfuFileError::BadSuffixLength { length, file_len: file.len() });
        }
        let stored = le32(s, 12);
        let computed = dfu_crc32(&file[..file.len() - 4]);
        if stored != computed {
            return Err(DfuFileError::BadCrc { stored, computed });
        }
        Ok(Self {
            bcd_device: le16(s, 0),
            id_product: le16(s, 2),
            id_vendor: le16(s, 4),
            bcd_dfu: le16(s, 6),
            length,
            crc: stored,
        })
    }

    /// The suffix bytes for `payload` (the inverse of [`DfuSuffix::parse`]; `length`/`crc` ignored).
    pub fn append_to(&self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(payload.len() + SUFFIX_LEN);
        out.extend_from_slice(payload);
        out.extend_from_slice(&self.bcd_device.to_le_bytes());
        out.extend_from_slice(&self.id_product.to_le_bytes());
        out.extend_from_slice(&self.id_vendor.to_le_bytes());
        out.extend_from_slice(&self.bcd_dfu.to_le_bytes());
        out.extend_from_slice(b"UFD");
        out.push(SUFFIX_LEN as u8);
        let crc = dfu_crc32(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }
}

impl DfuFile {
    /// Parse a whole DFU file: suffix first (CRC over everything), then the payload.
    pub fn parse(file: &[u8]) -> Result<Self, DfuFileError> {
        let suffix = DfuSuffix::parse(file)?;
        let body = &file[..file.len() - suffix.length as usize];
        let payload = if suffix.bcd_dfu == BCD_DFUSE {
            if !body.starts_with(b"DfuSe") {
                return Err(DfuFileError::MissingDfusePrefix);
            }
            DfuPayload::Dfuse(parse_dfuse(body, suffix.length as usize)?)
        } else {
            DfuPayload::Raw(body.to_vec())
        };
        Ok(Self { suffix, payload })
    }

    /// Refuse the file unless its suffix matches the device (`0xFFFF` in the file matches anything).
    pub fn check_device(&self, vendor_id: u16, product_id: u16) -> Result<(), DfuFileError> {
        let s = &self.suffix;
        let vid_ok = s.id_vendor == WILDCARD || s.id_vendor == vendor_id;
        let pid_ok = s.id_product == WILDCARD || s.id_product == product_id;
        if vid_ok && pid_ok {
            Ok(())
        } else {
            Err(DfuFileError::DeviceMismatch {
                file_vid: s.id_vendor,
                file_pid: s.id_product,
                dev_vid: vendor_id,
                dev_pid: product_id,
            })
        }
    }

    /// Total payload bytes that will be written to the device.
    pub fn image_len(&self) -> u64 {
        match &self.payload {
            DfuPayload::Raw(b) => b.len() as u64,
            DfuPayload::Dfuse(targets) => {
                targets.iter().flat_map(|t| &t.elements).map(|e| e.data.len() as u64).sum()
            }
        }
    }

    /// The DfuSe targets in the driver's terms (empty for a plain DFU file).
    pub fn dfuse_targets(&self) -> Vec<DfuseTarget> {
        match &self.payload {
            DfuPayload::Raw(_) => Vec::new(),
            DfuPayload::Dfuse(targets) => targets
                .iter()
                .map(|t| DfuseTarget {
                    alt_setting: t.alt_setting,
                    elements: t
                        .elements
                        .iter()
                        .map(|e| DfuseElement { address: e.address, data: e.data.clone() })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// Why a DFU file could not be flashed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DfuFlashError {
    #[error(transparent)]
    File(#[from] DfuFileError),
    #[error(transparent)]
    Device(#[from] DfuError),
}

/// Flash a checked DFU file: refuse it unless its suffix matches the device's VID/PID (before any
/// byte is sent), then hand the payload to the driver (plain DFU download, or DfuSe targets).
pub fn download<D: UsbControl>(
    device: &mut DfuDevice<D>,
    file: &DfuFile,
    options: DfuseOptions,
    progress: &dyn Progress,
) -> Result<DownloadReport, DfuFlashError> {
    let ids = device.ids();
    file.check_device(ids.vendor_id, ids.product_id)?;
    let report = match &file.payload {
        DfuPayload::Raw(image) => device.download(image, progress)?,
        DfuPayload::Dfuse(_) => device.dfuse_download(&file.dfuse_targets(), options, progress)?,
    };
    Ok(report)
}

fn bad(what: impl Into<String>) -> DfuFileError {
    DfuFileError::BadDfuse { what: what.into() }
}

fn parse_dfuse(body: &[u8], suffix_len: usize) -> Result<Vec<DfuseFileTarget>, DfuFileError> {
    if body.len() < DFUSE_PREFIX_LEN {
        return Err(bad(format!("prefix is {} bytes, expected 11", body.len())));
    }
    let version = body[5];
    if version != 0x01 {
        return Err(bad(format!("prefix version {version:#04x}, expected 0x01")));
    }
    // DFUImageSize: `dfuse-pack` (and ST's tools) count the whole file including the suffix;
    // some writers leave the suffix out. Both are accepted.
    let image_size = le32(body, 6) as usize;
    if image_size != body.len() && image_size != body.len() + suffix_len {
        return Err(bad(format!(
            "prefix says the image is {image_size} bytes but the file has {} bytes (+{suffix_len} suffix)",
            body.len()
        )));
    }
    let n_targets = body[10];
    let mut at = DFUSE_PREFIX_LEN;
    let mut targets = Vec::with_capacity(n_targets as usize);
    for t in 0..n_targets {
        let head = body
            .get(at..at + DFUSE_TARGET_PREFIX_LEN)
            .ok_or_else(|| bad(format!("target {t} header runs past the end of the file")))?;
        if &head[..6] != b"Target" {
            return Err(bad(format!("target {t} does not start with \"Target\"")));
        }
        let alt_setting = head[6];
        let named = le32(head, 7) != 0;
        let name_bytes = &head[11..11 + 255];
        let name = named.then(|| {
            let end = name_bytes.iter().position(|&b| b == 0).unwrap_or(name_bytes.len());
            String::from_utf8_lossy(&name_bytes[..end]).into_owned()
        });
        let target_size = le32(head, 266) as usize;
        let n_elements = le32(head, 270);
        at += DFUSE_TARGET_PREFIX_LEN;
        let target_end = at
            .checked_add(target_size)
            .filter(|&e| e <= body.len())
            .ok_or_else(|| bad(format!("target {t} size {target_size} runs past the end")))?;
        let mut elements = Vec::new();
        for e in 0..n_elements {
            let eh = body
                .get(at..at + DFUSE_ELEMENT_HEADER_LEN)
                .filter(|_| at + DFUSE_ELEMENT_HEADER_LEN <= target_end)
                .ok_or_else(|| {
                    bad(format!("target {t} element {e} header runs past the target"))
                })?;
            let address = le32(eh, 0);
            let size = le32(eh, 4) as usize;
            at += DFUSE_ELEMENT_HEADER_LEN;
            let data = at
                .checked_add(size)
                .filter(|&end| end <= target_end)
                .map(|end| &body[at..end])
                .ok_or_else(|| {
                    bad(format!("target {t} element {e} ({size} bytes) runs past the target"))
                })?;
            if (address as u64) + (size as u64) > (u32::MAX as u64) + 1 {
                return Err(bad(format!(
                    "target {t} element {e} at {address:#010x} + {size} bytes wraps the address space"
                )));
            }
            elements.push(DfuseFileElement { address, data: data.to_vec() });
            at += size;
        }
        if at != target_end {
            return Err(bad(format!(
                "target {t} says {target_size} bytes but its elements cover {}",
                target_size as isize - (target_end - at) as isize
            )));
        }
        targets.push(DfuseFileTarget { alt_setting, name, elements });
    }
    if at != body.len() {
        return Err(bad(format!("{} unexpected bytes after the last target", body.len() - at)));
    }
    Ok(targets)
}

/// Build a DfuSe file (prefix, targets, suffix) the way `dfuse-pack` does. Used by the lab and
/// tests to make files; the output round-trips through [`DfuFile::parse`].
pub fn build_dfuse(targets: &[DfuseFileTarget], vendor_id: u16, product_id: u16) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(b"DfuSe");
    body.push(0x01);
    body.extend_from_slice(&[0; 4]); // image size, patched below
    body.push(targets.len() as u8);
    for t in targets {
        body.extend_from_slice(b"Target");
        body.push(t.alt_setting);
        body.extend_from_slice(&(t.name.is_some() as u32).to_le_bytes());
        let mut name = [0u8; 255];
        if let Some(n) = &t.name {
            let b = n.as_bytes();
            let len = b.len().min(254);
            name[..len].copy_from_slice(&b[..len]);
        }
        body.extend_from_slice(&name);
        let size: usize = t.elements.iter().map(|e| DFUSE_ELEMENT_HEADER_LEN + e.data.len()).sum();
        body.extend_from_slice(&(size as u32).to_le_bytes());
        body.extend_from_slice(&(t.elements.len() as u32).to_le_bytes());
        for e in &t.elements {
            body.extend_from_slice(&e.address.to_le_bytes());
            body.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
            body.extend_from_slice(&e.data);
        }
    }
    let total = (body.len() + SUFFIX_LEN) as u32;
    body[6..10].copy_from_slice(&total.to_le_bytes());
    let suffix = DfuSuffix {
        bcd_device: WILDCARD,
        id_product: product_id,
        id_vendor: vendor_id,
        bcd_dfu: BCD_DFUSE,
        length: SUFFIX_LEN as u8,
        crc: 0,
    };
    suffix.append_to(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_is_the_complement_of_crc32() {
        // CRC-32 ("123456789") = 0xCBF43926; dfu-util stores its complement.
        assert_eq!(dfu_crc32(b"123456789"), !0xCBF4_3926);
    }

    #[test]
    fn truncated_dfuse_headers_are_errors_not_panics() {
        let t = DfuseFileTarget {
            alt_setting: 0,
            name: None,
            elements: vec![DfuseFileElement { address: 0x0800_0000, data: vec![1; 40] }],
        };
        let good = build_dfuse(&[t], 0x0483, 0xdf11);
        let body_len = good.len() - SUFFIX_LEN;
        for cut in 0..body_len {
            let mut body = good[..cut].to_vec();
            if body.len() >= 10 {
                let n = (body.len() + SUFFIX_LEN) as u32;
                body[6..10].copy_from_slice(&n.to_le_bytes());
            }
            let suffix = DfuSuffix::parse(&good).unwrap();
            let file = suffix.append_to(&body);
            assert!(DfuFile::parse(&file).is_err(), "cut at {cut} parsed");
        }
    }
}
