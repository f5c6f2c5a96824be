//! Decoding of USB descriptors: device, configuration (interfaces and the DFU functional
//! descriptor inside it), string, and the ST DfuSe memory-map string of an alternate setting.
//!
//! Every parser takes untrusted bytes and returns an error on anything short or inconsistent; none
//! of them panics or indexes past the input.

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
        if b.len() < 7 {
            return Err(DescriptorError::TooShort { what: WHAT, got: b.len(), expected: 7 });
        }
        if b[1] != DT_DFU_FUNCTIONAL {
            return Err(DescriptorError::WrongType { what: WHAT, got: b[1], expected: 0x21 });
        }
        let dfu_version =
            if b[0] >= 9 && b.len() >= 9 { u16::from_le_bytes([b[7], b[8]]) } else { 0x0100 };
        Ok(Self {
            attributes: b[2],
            detach_timeout_ms: u16::from_le_bytes([b[3], b[4]]),
            transfer_size: u16::from_le_bytes([b[5], b[6]]),
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
    let mut at = 0;
    while at < b.len() {
        let length = b[at];
        let end = at + length as usize;
        if length < 2 || end > b.len() {
            return Err(DescriptorError::BadLength { offset: at, length });
        }
        out.push(&b[at..end]);
        at = end;
    }
    Ok(out)
}

/// Decode a device descriptor into the device's identity.
pub fn parse_device_descriptor(b: &[u8]) -> Result<super::UsbDeviceIds, DescriptorError> {
    const WHAT: &str = "device descriptor";
    if b.len() < 18 {
        return Err(DescriptorError::TooShort { what: WHAT, got: b.len(), expected: 18 });
    }
    if b[1] != super::DT_DEVICE {
        return Err(DescriptorError::WrongType { what: WHAT, got: b[1], expected: 0x01 });
    }
    Ok(super::UsbDeviceIds {
        vendor_id: u16::from_le_bytes([b[8], b[9]]),
        product_id: u16::from_le_bytes([b[10], b[11]]),
        bcd_device: u16::from_le_bytes([b[12], b[13]]),
    })
}

/// The string index of the device's serial number (`iSerialNumber`) in a device descriptor;
/// `None` when the device has no serial number (index 0).
pub fn parse_serial_number_index(b: &[u8]) -> Result<Option<u8>, DescriptorError> {
    parse_device_descriptor(b)?;
    Ok(Some(b[16]).filter(|&i| i != 0))
}

/// Decode a whole configuration descriptor (as returned by GET_DESCRIPTOR with `wTotalLength`)
/// into its interface alternate settings, each with the DFU functional descriptor that follows it.
pub fn parse_config_descriptor(b: &[u8]) -> Result<Vec<AltSetting>, DescriptorError> {
    const WHAT: &str = "configuration descriptor";
    if b.len() < 9 {
        return Err(DescriptorError::TooShort { what: WHAT, got: b.len(), expected: 9 });
    }
    if b[1] != super::DT_CONFIG {
        return Err(DescriptorError::WrongType { what: WHAT, got: b[1], expected: 0x02 });
    }
    let total = u16::from_le_bytes([b[2], b[3]]) as usize;
    if b.len() < total {
        return Err(DescriptorError::TooShort { what: WHAT, got: b.len(), expected: total });
    }
    let mut alts: Vec<AltSetting> = Vec::new();
    for d in walk(&b[..total])? {
        match d[1] {
            0x04 => {
                if d.len() < 9 {
                    return Err(DescriptorError::TooShort {
                        what: "interface descriptor",
                        got: d.len(),
                        expected: 9,
                    });
                }
                alts.push(AltSetting {
                    interface: d[2],
                    alt_setting: d[3],
                    class: d[5],
                    subclass: d[6],
                    protocol: d[7],
                    string_index: d[8],
                    dfu: None,
                });
            }
            DT_DFU_FUNCTIONAL => {
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
    if b.len() < 2 {
        return Err(DescriptorError::TooShort { what: WHAT, got: b.len(), expected: 2 });
    }
    if b[1] != super::DT_STRING {
        return Err(DescriptorError::WrongType { what: WHAT, got: b[1], expected: 0x03 });
    }
    // bLength counts the 2-byte header; a smaller one is corrupt, not an empty string.
    if b[0] < 2 {
        return Err(DescriptorError::BadLength { offset: 0, length: b[0] });
    }
    let len = (b[0] as usize).min(b.len());
    let units: Vec<u16> =
        b[2..len].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
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
        self.start as u64 + self.pages as u64 * self.page_size as u64
    }
    pub fn contains(&self, address: u32) -> bool {
        (self.start as u64..self.end()).contains(&(address as u64))
    }
}

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
            let mut start = u32::from_str_radix(hex, 16)
                .map_err(|_| bad(format!("address {addr:?} is not hexadecimal")))?;
            let list = parts.next().ok_or_else(|| bad(format!("no sectors after {addr}")))?;
            for item in list.split(',') {
                let item = item.trim_start();
                let (count, rest) =
                    item.split_once('*').ok_or_else(|| bad(format!("{item:?} lacks '*'")))?;
                let pages: u32 =
                    count.trim().parse().map_err(|_| bad(format!("bad page count {count:?}")))?;
                let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                let size: u32 = rest[..digits]
                    .parse()
                    .map_err(|_| bad(format!("bad page size in {item:?}")))?;
                let mut tail = rest[digits..].bytes();
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
                if !(b'a'..=b'g').contains(&kind) {
                    return Err(bad(format!("page type {:?} is not a..g", kind as char)));
                }
                let bits = kind - b'a' + 1;
                let page_size = size
                    .checked_mul(factor)
                    .ok_or_else(|| bad(format!("size overflow in {item:?}")))?;
                let seg = MemorySegment {
                    start,
                    pages,
                    page_size,
                    readable: bits & 1 != 0,
                    erasable: bits & 2 != 0,
                    writable: bits & 4 != 0,
                };
                if seg.end() > u32::MAX as u64 + 1 {
                    return Err(bad(format!("{item:?} runs past 4 GiB")));
                }
                start = seg.end() as u32;
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
        let idx = (address - s.start) / s.page_size.max(1);
        Some((s.start + idx * s.page_size, s.page_size))
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
}
