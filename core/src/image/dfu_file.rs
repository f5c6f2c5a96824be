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
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

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
/// The end of the 32-bit address space.
const FOUR_GIB: u64 = 1 << 32;

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

impl DfuSuffix {
    /// Read and check the suffix of `file` (signature, length, CRC).
    pub fn parse(file: &[u8]) -> Result<Self, DfuFileError> {
        let too_short = || DfuFileError::TooShort { len: file.len() };
        // dwCRC, and the bytes it covers: all before it, the suffix's first 12 among them.
        let (covered, &crc) = file.split_last_chunk::<4>().ok_or_else(too_short)?;
        let (_, &[dev0, dev1, pid0, pid1, vid0, vid1, dfu0, dfu1, sig @ .., length]) =
            covered.split_last_chunk::<{ SUFFIX_LEN - 4 }>().ok_or_else(too_short)?;
        if &sig != b"UFD" {
            return Err(DfuFileError::NoSignature);
        }
        if usize::from(length) < SUFFIX_LEN || usize::from(length) > file.len() {
            return Err(DfuFileError::BadSuffixLength { length, file_len: file.len() });
        }
        let stored = u32::from_le_bytes(crc);
        let computed = dfu_crc32(covered);
        if stored != computed {
            return Err(DfuFileError::BadCrc { stored, computed });
        }
        Ok(Self {
            bcd_device: u16::from_le_bytes([dev0, dev1]),
            id_product: u16::from_le_bytes([pid0, pid1]),
            id_vendor: u16::from_le_bytes([vid0, vid1]),
            bcd_dfu: u16::from_le_bytes([dfu0, dfu1]),
            length,
            crc: stored,
        })
    }

    /// The suffix bytes for `payload` (the inverse of [`DfuSuffix::parse`]; `length`/`crc` ignored).
    pub fn append_to(&self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(payload.len().saturating_add(SUFFIX_LEN));
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
        let suffix_len = usize::from(suffix.length);
        // `DfuSuffix::parse` checked that the suffix fits the file.
        let body =
            file.len().checked_sub(suffix_len).and_then(|n| file.get(..n)).ok_or(
                DfuFileError::BadSuffixLength { length: suffix.length, file_len: file.len() },
            )?;
        let payload = if suffix.bcd_dfu == BCD_DFUSE {
            if !body.starts_with(b"DfuSe") {
                return Err(DfuFileError::MissingDfusePrefix);
            }
            DfuPayload::Dfuse(parse_dfuse(body, suffix_len)?)
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
    let Some((&[_, _, _, _, _, version, s0, s1, s2, s3, n_targets], mut rest)) =
        body.split_first_chunk::<DFUSE_PREFIX_LEN>()
    else {
        return Err(bad(format!("prefix is {} bytes, expected 11", body.len())));
    };
    if version != 0x01 {
        return Err(bad(format!("prefix version {version:#04x}, expected 0x01")));
    }
    // DFUImageSize: `dfuse-pack` (and ST's tools) count the whole file including the suffix;
    // some writers leave the suffix out. Both are accepted.
    let image_size = u64::from(u32::from_le_bytes([s0, s1, s2, s3]));
    let body_len = body.len() as u64;
    if image_size != body_len && image_size != body_len.saturating_add(suffix_len as u64) {
        return Err(bad(format!(
            "prefix says the image is {image_size} bytes but the file has {} bytes (+{suffix_len} suffix)",
            body.len()
        )));
    }
    let mut targets = Vec::with_capacity(usize::from(n_targets));
    for t in 0..n_targets {
        let Some((head, after_head)) = rest.split_first_chunk::<DFUSE_TARGET_PREFIX_LEN>() else {
            return Err(bad(format!("target {t} header runs past the end of the file")));
        };
        // Constant ranges of an array: the compiler checks them.
        if head[..6] != *b"Target" {
            return Err(bad(format!("target {t} does not start with \"Target\"")));
        }
        let alt_setting = head[6];
        let named = u32::from_le_bytes([head[7], head[8], head[9], head[10]]) != 0;
        let name_bytes = &head[11..11 + 255];
        let name = named.then(|| {
            let name = name_bytes.split(|&b| b == 0).next().unwrap_or_default();
            String::from_utf8_lossy(name).into_owned()
        });
        let target_size = u32::from_le_bytes([head[266], head[267], head[268], head[269]]);
        let n_elements = u32::from_le_bytes([head[270], head[271], head[272], head[273]]);
        let Some((target, after_target)) =
            usize::try_from(target_size).ok().and_then(|size| after_head.split_at_checked(size))
        else {
            return Err(bad(format!("target {t} size {target_size} runs past the end")));
        };
        let mut elements = Vec::new();
        let mut left = target;
        for e in 0..n_elements {
            let Some((&[a0, a1, a2, a3, s0, s1, s2, s3], after_header)) =
                left.split_first_chunk::<DFUSE_ELEMENT_HEADER_LEN>()
            else {
                return Err(bad(format!("target {t} element {e} header runs past the target")));
            };
            let address = u32::from_le_bytes([a0, a1, a2, a3]);
            let size = u32::from_le_bytes([s0, s1, s2, s3]);
            let Some((data, after_data)) =
                usize::try_from(size).ok().and_then(|size| after_header.split_at_checked(size))
            else {
                return Err(bad(format!(
                    "target {t} element {e} ({size} bytes) runs past the target"
                )));
            };
            if u64::from(address).saturating_add(u64::from(size)) > FOUR_GIB {
                return Err(bad(format!(
                    "target {t} element {e} at {address:#010x} + {size} bytes wraps the address space"
                )));
            }
            elements.push(DfuseFileElement { address, data: data.to_vec() });
            left = after_data;
        }
        if !left.is_empty() {
            return Err(bad(format!(
                "target {t} says {target_size} bytes but its elements cover {}",
                // `left` is a tail of `target`.
                target.len().saturating_sub(left.len())
            )));
        }
        targets.push(DfuseFileTarget { alt_setting, name, elements });
        rest = after_target;
    }
    if !rest.is_empty() {
        return Err(bad(format!("{} unexpected bytes after the last target", rest.len())));
    }
    Ok(targets)
}

/// Build a DfuSe file (prefix, targets, suffix) the way `dfuse-pack` does. Used by the lab and
/// tests to make files; the output round-trips through [`DfuFile::parse`]. A container the format
/// cannot hold (more than 255 targets, a size past 4 GiB) gets its count or size saturated, which
/// [`DfuFile::parse`] refuses.
pub fn build_dfuse(targets: &[DfuseFileTarget], vendor_id: u16, product_id: u16) -> Vec<u8> {
    let le32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    let mut body = Vec::new();
    for t in targets {
        body.extend_from_slice(b"Target");
        body.push(t.alt_setting);
        body.extend_from_slice(&u32::from(t.name.is_some()).to_le_bytes());
        let mut name = [0u8; 255];
        if let Some(n) = &t.name {
            // At most 254 bytes: the name stays NUL-terminated.
            name.iter_mut().zip(n.bytes().take(254)).for_each(|(to, from)| *to = from);
        }
        body.extend_from_slice(&name);
        let size = t.elements.iter().fold(0usize, |sum, e| {
            sum.saturating_add(DFUSE_ELEMENT_HEADER_LEN).saturating_add(e.data.len())
        });
        body.extend_from_slice(&le32(size));
        body.extend_from_slice(&le32(t.elements.len()));
        for e in &t.elements {
            body.extend_from_slice(&e.address.to_le_bytes());
            body.extend_from_slice(&le32(e.data.len()));
            body.extend_from_slice(&e.data);
        }
    }
    let total = body.len().saturating_add(DFUSE_PREFIX_LEN).saturating_add(SUFFIX_LEN);
    let mut file = Vec::with_capacity(total);
    file.extend_from_slice(b"DfuSe");
    file.push(0x01);
    file.extend_from_slice(&le32(total));
    file.push(u8::try_from(targets.len()).unwrap_or(u8::MAX));
    file.extend_from_slice(&body);
    let suffix = DfuSuffix {
        bcd_device: WILDCARD,
        id_product: product_id,
        id_vendor: vendor_id,
        bcd_dfu: BCD_DFUSE,
        length: SUFFIX_LEN as u8,
        crc: 0,
    };
    suffix.append_to(&file)
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
