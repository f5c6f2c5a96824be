//! Decoding of USB descriptors: device, configuration (interfaces and the DFU functional
//! descriptor inside it), string, and the ST DfuSe memory-map string of an alternate setting.
//!
//! Every parser takes untrusted bytes and returns an error on anything short or inconsistent; none
//! of them panics or indexes past the input.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use serde::Serialize;

/// Interface class of DFU (application specific) and its subclass.
pub const DFU_CLASS: u8 = 0xFE;
pub const DFU_SUBCLASS: u8 = 0x01;
/// `bInterfaceProtocol` of a DFU interface in run-time mode and in DFU mode.
pub const DFU_PROTOCOL_RUNTIME: u8 = 0x01;
pub const DFU_PROTOCOL_DFU_MODE: u8 = 0x02;
/// Descriptor type of the DFU functional descriptor.
pub const DT_DFU_FUNCTIONAL: u8 = 0x21;

/// A descriptor that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescriptorError {
    #[error("{what} is {got} bytes, expected at least {expected}")]
    TooShort { what: &'static str, got: usize, expected: usize },
    #[error("{what} has descriptor type {got:#04x}, expected {expected:#04x}")]
    WrongType { what: &'static str, got: u8, expected: u8 },
    #[error(
        "descriptor at offset {offset} has bLength {length}, which runs past the end or is < 2"
    )]
    BadLength { offset: usize, length: u8 },
    #[error("string descriptor is not valid UTF-16")]
    BadString,
    #[error("DfuSe memory map {text:?} is malformed: {why}")]
    BadMemoryMap { text: String, why: String },
}

/// The DFU functional descriptor (DFU 1.1 section 4.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FunctionalDescriptor {
    /// `bmAttributes`; see the `can_*`/`will_detach`/`manifestation_tolerant` helpers.
    pub attributes: u8,
    /// `wDetachTimeOut` in milliseconds.
    pub detach_timeout_ms: u16,
    /// `wTransferSize`: the largest DNLOAD/UPLOAD block.
    pub transfer_size: u16,
    /// `bcdDFUVersion` (0x0110 DFU 1.1, 0x011A ST DfuSe). 0x0100 when the descriptor is the
    /// 7-byte DFU 1.0 form without it.
    pub dfu_version: u16,
}

impl FunctionalDescriptor {
    pub fn can_download(&self) -> bool {
        self.attributes & 0x01 != 0
    }
    pub fn can_upload(&self) -> bool {
        self.attributes & 0x02 != 0
    }
    pub fn manifestation_tolerant(&self) -> bool {
        self.attributes & 0x04 != 0
    }
    pub fn will_detach(&self) -> bool {
        self.attributes & 0x08 != 0
    }
    pub fn is_dfuse(&self) -> bool {
        self.dfu_version == 0x011A
    }

    /// Decode one functional descriptor (`bLength` 7 or 9, type 0x21).
    pub fn parse(b: &[u8]) -> Result<Self, DescriptorError> {
        const WHAT: &str = "DFU functional descriptor";
        let Some((&[length, kind, attributes, d0, d1, t0, t1], rest)) = b.split_first_chunk::<7>()
        else {
            return Err(DescriptorError::TooShort { what: WHAT, got: b.len(), expected: 7 });
        };
        if kind != DT_DFU_FUNCTIONAL {
            return Err(DescriptorError::WrongType { what: WHAT, got: kind, expected: 0x21 });
        }
        let dfu_version = match rest.first_chunk::<2>() {
            Some(&version) if length >= 9 => u16::from_le_bytes(version),
            _ => 0x0100,
        };
        Ok(Self {
            attributes,
            detach_timeout_ms: u16::from_le_bytes([d0, d1]),
            transfer_size: u16::from_le_bytes([t0, t1]),
            dfu_version,
        })
    }

    /// Find and decode the functional descriptor in a run of class-specific descriptors (what
    /// libusb calls an interface's "extra" bytes).
    pub fn find_in(extra: &[u8]) -> Result<Option<Self>, DescriptorError> {
        for d in walk(extra)? {
            if d.get(1) == Some(&DT_DFU_FUNCTIONAL) {
                return Self::parse(d).map(Some);
            }
        }
        Ok(None)
    }
}

/// One interface alternate setting of a configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AltSetting {
    pub interface: u8,
    pub alt_setting: u8,
    pub class: u8,
    pub subclass: u8,
    pub protocol: u8,
    /// `iInterface` (0 = no string).
    pub string_index: u8,
    /// The DFU functional descriptor that follows this interface, if any.
    pub dfu: Option<FunctionalDescriptor>,
}

impl AltSetting {
    /// A DFU interface (class 0xFE, subclass 0x01), either mode.
    pub fn is_dfu(&self) -> bool {
        self.class == DFU_CLASS && self.subclass == DFU_SUBCLASS
    }
    pub fn is_dfu_runtime(&self) -> bool {
        self.is_dfu() && self.protocol == DFU_PROTOCOL_RUNTIME
    }
    pub fn is_dfu_mode(&self) -> bool {
        self.is_dfu() && self.protocol == DFU_PROTOCOL_DFU_MODE
    }
}

/// Split a buffer of concatenated descriptors into single descriptors, checking every bLength.
fn walk(b: &[u8]) -> Result<Vec<&[u8]>, DescriptorError> {
    let mut out = Vec::new();
    let mut rest = b;
    while let Some(&length) = rest.first() {
        let Some((d, after)) = rest.split_at_checked(usize::from(length)).filter(|_| length >= 2)
        else {
            // `rest` is a tail of `b`: this is where it starts.
            let offset = b.len().saturating_sub(rest.len());
            return Err(DescriptorError::BadLength { offset, length });
        };
        out.push(d);
        rest = after;
    }
    Ok(out)
}

/// Decode a device descriptor into the device's identity.
pub fn parse_device_descriptor(b: &[u8]) -> Result<super::UsbDeviceIds, DescriptorError> {
    let d = device_descriptor(b)?;
    Ok(super::UsbDeviceIds {
        vendor_id: u16::from_le_bytes([d[8], d[9]]),
        product_id: u16::from_le_bytes([d[10], d[11]]),
        bcd_device: u16::from_le_bytes([d[12], d[13]]),
    })
}

/// The 18 bytes of a device descriptor, its type checked.
fn device_descriptor(b: &[u8]) -> Result<&[u8; 18], DescriptorError> {
    const WHAT: &str = "device descriptor";
    let Some(d) = b.first_chunk::<18>() else {
        return Err(DescriptorError::TooShort { what: WHAT, got: b.len(), expected: 18 });
    };
    if d[1] != super::DT_DEVICE {
        return Err(DescriptorError::WrongType { what: WHAT, got: d[1], expected: 0x01 });
    }
    Ok(d)
}

/// The string index of the device's serial number (`iSerialNumber`) in a device descriptor;
/// `None` when the device has no serial number (index 0).
pub fn parse_serial_number_index(b: &[u8]) -> Result<Option<u8>, DescriptorError> {
    let d = device_descriptor(b)?;
    Ok(Some(d[16]).filter(|&i| i != 0))
}

/// Decode a whole configuration descriptor (as returned by GET_DESCRIPTOR with `wTotalLength`)
/// into its interface alternate settings, each with the DFU functional descriptor that follows it.
pub fn parse_config_descriptor(b: &[u8]) -> Result<Vec<AltSetting>, DescriptorError> {
    const WHAT: &str = "configuration descriptor";
    let Some(&[_, kind, total_lo, total_hi, ..]) = b.first_chunk::<9>() else {
        return Err(DescriptorError::TooShort { what: WHAT, got: b.len(), expected: 9 });
    };
    if kind != super::DT_CONFIG {
        return Err(DescriptorError::WrongType { what: WHAT, got: kind, expected: 0x02 });
    }
    let total = usize::from(u16::from_le_bytes([total_lo, total_hi]));
    let Some(config) = b.get(..total) else {
        return Err(DescriptorError::TooShort { what: WHAT, got: b.len(), expected: total });
    };
    let mut alts: Vec<AltSetting> = Vec::new();
    for d in walk(config)? {
        // `walk` gives descriptors of at least 2 bytes: length and type.
        match d.get(1).copied() {
            Some(0x04) => {
                let Some(
                    &[_, _, interface, alt_setting, _, class, subclass, protocol, string_index],
                ) = d.first_chunk::<9>()
                else {
                    return Err(DescriptorError::TooShort {
                        what: "interface descriptor",
                        got: d.len(),
                        expected: 9,
                    });
                };
                alts.push(AltSetting {
                    interface,
                    alt_setting,
                    class,
                    subclass,
                    protocol,
                    string_index,
                    dfu: None,
                });
            }
            Some(DT_DFU_FUNCTIONAL) => {
                let f = FunctionalDescriptor::parse(d)?;
                // A DFU functional descriptor applies to the interface it follows; devices with
                // several alternate settings often send it once, after the last one.
                if let Some(last) = alts.last() {
                    let iface = last.interface;
                    for a in alts.iter_mut().filter(|a| a.interface == iface && a.is_dfu()) {
                        a.dfu = Some(f);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(alts)
}

/// Decode a string descriptor (UTF-16LE after a 2-byte header).
pub fn parse_string_descriptor(b: &[u8]) -> Result<String, DescriptorError> {
    const WHAT: &str = "string descriptor";
    let Some((&[length, kind], rest)) = b.split_first_chunk::<2>() else {
        return Err(DescriptorError::TooShort { what: WHAT, got: b.len(), expected: 2 });
    };
    if kind != super::DT_STRING {
        return Err(DescriptorError::WrongType { what: WHAT, got: kind, expected: 0x03 });
    }
    // bLength counts the 2-byte header; a smaller one is corrupt, not an empty string.
    let Some(text_len) = length.checked_sub(2) else {
        return Err(DescriptorError::BadLength { offset: 0, length });
    };
    // A bLength past the bytes that arrived: the string is what arrived.
    let text = rest.get(..usize::from(text_len)).unwrap_or(rest);
    let (pairs, _) = text.as_chunks::<2>();
    let units: Vec<u16> = pairs.iter().map(|&c| u16::from_le_bytes(c)).collect();
    String::from_utf16(&units).map_err(|_| DescriptorError::BadString)
}

/// One run of equal pages in a DfuSe memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemorySegment {
    pub start: u32,
    pub pages: u32,
    pub page_size: u32,
    pub readable: bool,
    pub erasable: bool,
    pub writable: bool,
}

impl MemorySegment {
    /// One past the last byte (as u64: a segment may end at 4 GiB).
    pub fn end(&self) -> u64 {
        // Never saturates: u32::MAX + u32::MAX * u32::MAX is below 2^64.
        let len = u64::from(self.pages).saturating_mul(u64::from(self.page_size));
        u64::from(self.start).saturating_add(len)
    }
    pub fn contains(&self, address: u32) -> bool {
        (self.start as u64..self.end()).contains(&(address as u64))
    }
}

/// The end of the 32-bit address space.
const FOUR_GIB: u64 = 1 << 32;

/// A DfuSe alternate setting's memory map, e.g.
/// `@Internal Flash  /0x08000000/04*016Kg,01*064Kg,07*128Kg` (ST UM0424).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryMap {
    pub name: String,
    pub segments: Vec<MemorySegment>,
}

impl MemoryMap {
    /// Parse an interface string; `Ok(None)` if it is not a memory map (does not start with `@`).
    pub fn parse(text: &str) -> Result<Option<Self>, DescriptorError> {
        let Some(rest) = text.strip_prefix('@') else { return Ok(None) };
        let bad = |why: String| DescriptorError::BadMemoryMap { text: text.to_string(), why };
        let mut parts = rest.trim_end_matches(['\0', ' ']).split('/');
        let name = parts.next().unwrap_or_default().trim().to_string();
        let mut segments = Vec::new();
        while let Some(addr) = parts.next() {
            let addr = addr.trim();
            let hex = addr
                .strip_prefix("0x")
                .or_else(|| addr.strip_prefix("0X"))
                .ok_or_else(|| bad(format!("address {addr:?} does not start with 0x")))?;
            // Where the next segment starts (4 GiB after one that ends there).
            let mut next = u32::from_str_radix(hex, 16)
                .map(u64::from)
                .map_err(|_| bad(format!("address {addr:?} is not hexadecimal")))?;
            let list = parts.next().ok_or_else(|| bad(format!("no sectors after {addr}")))?;
            for item in list.split(',') {
                let item = item.trim_start();
                let (count, rest) =
                    item.split_once('*').ok_or_else(|| bad(format!("{item:?} lacks '*'")))?;
                let pages: u32 =
                    count.trim().parse().map_err(|_| bad(format!("bad page count {count:?}")))?;
                let suffix = rest.trim_start_matches(|c: char| c.is_ascii_digit());
                let digits = rest.strip_suffix(suffix).unwrap_or_default();
                let size: u32 =
                    digits.parse().map_err(|_| bad(format!("bad page size in {item:?}")))?;
                let mut tail = suffix.bytes();
                let (mult, kind) = match (tail.next(), tail.next()) {
                    (Some(m @ (b'K' | b'M' | b'B' | b' ')), Some(k)) => (m, k),
                    (Some(k), None) => (b' ', k),
                    _ => return Err(bad(format!("bad page type in {item:?}"))),
                };
                let factor = match mult {
                    b'K' => 1024,
                    b'M' => 1024 * 1024,
                    _ => 1,
                };
                // 'a'..='g' stand for 1..=7: bit 0 readable, bit 1 erasable, bit 2 writable.
                let Some(bits) =
                    (1u8..=7).zip(b'a'..=b'g').find(|&(_, k)| k == kind).map(|(b, _)| b)
                else {
                    return Err(bad(format!("page type {:?} is not a..g", kind as char)));
                };
                let page_size = size
                    .checked_mul(factor)
                    .ok_or_else(|| bad(format!("size overflow in {item:?}")))?;
                let start = u32::try_from(next).map_err(|_| {
                    bad(format!("{item:?} starts at 4 GiB, past the address space"))
                })?;
                let seg = MemorySegment {
                    start,
                    pages,
                    page_size,
                    readable: bits & 1 != 0,
                    erasable: bits & 2 != 0,
                    writable: bits & 4 != 0,
                };
                if seg.end() > FOUR_GIB {
                    return Err(bad(format!("{item:?} runs past 4 GiB")));
                }
                next = seg.end();
                segments.push(seg);
            }
        }
        if segments.is_empty() {
            return Err(bad("no address/sector list".into()));
        }
        Ok(Some(Self { name, segments }))
    }

    /// The segment holding `address`.
    pub fn segment(&self, address: u32) -> Option<&MemorySegment> {
        self.segments.iter().find(|s| s.contains(address))
    }

    /// The start of the page holding `address` and its size.
    pub fn page(&self, address: u32) -> Option<(u32, u32)> {
        let s = self.segment(address)?;
        // A segment holding `address` starts at or before it and has pages of at least one byte.
        let into_page = address.checked_sub(s.start)?.checked_rem(s.page_size)?;
        Some((address.checked_sub(into_page)?, s.page_size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_descriptor_with_a_blength_below_its_header_is_an_error() {
        // Found by the `dfu_descriptors` fuzz target: bLength 0 or 1 made the slice start after
        // its end.
        for b in [&[0x00, 0x03, 0x4F][..], &[0x01, 0x03], &[0x00, 0x03]] {
            assert_eq!(
                parse_string_descriptor(b),
                Err(DescriptorError::BadLength { offset: 0, length: b[0] })
            );
        }
        assert_eq!(parse_string_descriptor(&[0x02, 0x03]).unwrap(), "");
    }

    #[test]
    fn a_segment_after_one_ending_at_4_gib_is_an_error_not_a_wrap_to_0() {
        let map = MemoryMap::parse("@Flash /0xFFFF0000/01*064Kg").unwrap().unwrap();
        assert_eq!(map.segments[0].end(), 1 << 32);
        assert_eq!(map.page(0xFFFF_FFFF), Some((0xFFFF_0000, 0x1_0000)));
        let err = MemoryMap::parse("@Flash /0xFFFF0000/01*064Kg,01*016Kg").unwrap_err();
        assert!(err.to_string().contains("starts at 4 GiB"), "{err}");
        let err = MemoryMap::parse("@Flash /0xFFFF0000/02*064Kg").unwrap_err();
        assert!(err.to_string().contains("runs past 4 GiB"), "{err}");
    }

    #[test]
    fn a_descriptor_running_past_the_configuration_names_its_offset() {
        // Configuration (9 bytes), then an interface descriptor claiming 12 bytes of 9.
        let mut b = vec![9, 0x02, 18, 0, 1, 1, 0, 0x80, 50];
        b.extend_from_slice(&[12, 0x04, 0, 0, 0, 0xFE, 0x01, 0x02, 0]);
        assert_eq!(
            parse_config_descriptor(&b),
            Err(DescriptorError::BadLength { offset: 9, length: 12 })
        );
        b[9] = 9;
        let alts = parse_config_descriptor(&b).unwrap();
        assert!(alts[0].is_dfu_mode());
    }
}
