//! ESP images: application and second-stage bootloader images as `esptool elf2image` writes them
//! and the chips' ROM and ESP-IDF bootloaders read them, ESP-IDF partition tables, and the flash
//! layout of the images one bundle carries, all checked before a byte is sent to a device.
//!
//! Image layout (little-endian):
//!
//! ```text
//! common header (8)      magic 0xE9, segment count, SPI flash mode (QIO 0, QOUT 1, DIO 2, DOUT 3),
//!                        flash size (high nibble: 1 MiB << n) | flash frequency (low nibble),
//!                        entry point u32
//! extended header (16)   WP pin (0xEE: disabled), SPI pin drive strengths (3 bytes, two nibbles
//!                        each: clk/q, d/cs, hd/wp), chip id u16, legacy minimum revision u8,
//!                        minimum and maximum chip revision u16 (major * 100 + minor),
//!                        4 reserved bytes, hash-appended flag (0 or 1)
//! segments               {load address u32, length u32, data}, at most 16
//! padding                up to the last byte of a 16-byte block, which is
//! checksum (1)           the XOR of every segment data byte, seeded with 0xEF
//! SHA-256 (32)           of every byte before it, when the flag is 1
//! ```
//!
//! Bytes after that (padding to a size with `--pad-to-size`, a secure boot signature block) are
//! allowed and counted in [`EspImage::trailing_len`]; the bundle's own SHA-256 covers them. An ESP-IDF
//! application carries its descriptor (`esp_app_desc_t`, magic 0xABCD5432) at the start of its
//! first flash-mapped segment; it is read when present ([`AppDescriptor`]).
//!
//! A partition table is a sector (at 0x8000 unless configured otherwise) of 32-byte entries
//! `{magic 0xAA 0x50, type u8, subtype u8, offset u32, size u32, name [16], flags u32}`, then an
//! MD5 entry (`0xEB 0xEB`, 14 bytes 0xFF, the MD5 of the entries before it) and an end marker of
//! 32 bytes 0xFF, in at most 0xC00 bytes, as ESP-IDF's `gen_esp32part.py` writes it.
//! The OTA data partition ([`OtaData`]) holds two `esp_ota_select_entry_t` one sector apart; the
//! valid one with the higher sequence number names the OTA slot that boots
//! ([`PartitionTable::boot_partition`]), and an update goes to the next slot
//! ([`PartitionTable::next_update_slot`]).
//!
//! In a bundle (payload format `esp`) every payload names its flash offset; [`inspect_payload`]
//! tells a bootloader (an image at the chip's bootloader offset), a partition table, an application
//! image and a data blob apart, and [`check_layout`] checks them together: 4 KiB aligned, no
//! overlaps, one chip, applications 64 KiB aligned and, when the bundle carries a partition table,
//! each application at the start of an application partition and each data blob at the start of a
//! data partition, both fitting. [`EspLayout::check_target`] then checks the chip and flash size
//! of a device.
//!
//! Nothing here panics on malformed bytes: every problem is an [`EspImageError`].
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use md5::Md5;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fmt;

/// First byte of every ESP image.
pub const IMAGE_MAGIC: u8 = 0xE9;
/// Seed of the XOR checksum over segment data.
pub const CHECKSUM_SEED: u8 = 0xEF;
/// Common plus extended header.
pub const HEADER_LEN: usize = 24;
/// Load address and length before each segment's data.
pub const SEGMENT_HEADER_LEN: usize = 8;
/// Most segments an image may have (what esptool and the bootloaders accept).
pub const MAX_SEGMENTS: usize = 16;
/// Largest image parsed (the largest application partition ESP-IDF maps is 16 MiB; twice that
/// leaves room for padding and signature blocks).
pub const MAX_IMAGE_LEN: usize = 32 << 20;
/// The WP pin value that tells the ROM not to use a WP pin.
pub const WP_PIN_DISABLED: u8 = 0xEE;
/// Magic word of an ESP-IDF application descriptor (`esp_app_desc_t`).
pub const APP_DESC_MAGIC: u32 = 0xABCD_5432;
/// Size of `esp_app_desc_t`.
pub const APP_DESC_LEN: usize = 256;
/// Flash sector (the unit of erase): every payload offset is a multiple of it.
pub const FLASH_SECTOR: u32 = 0x1000;
/// Alignment of application images (the flash MMU page ESP-IDF maps applications with).
pub const APP_ALIGN: u32 = 0x1_0000;
/// Largest flash an image header can describe (128 MiB).
pub const MAX_FLASH_BYTES: u64 = 128 << 20;
/// Where ESP-IDF puts the partition table unless configured otherwise.
pub const PARTITION_TABLE_OFFSET: u32 = 0x8000;
/// Most bytes of entries a partition table may have (96 entries; the rest of its sector is for
/// a signature).
pub const PARTITION_TABLE_MAX_LEN: usize = 0xC00;
/// The sector a partition table occupies.
pub const PARTITION_TABLE_SECTOR: usize = 0x1000;
/// First two bytes of a partition entry.
pub const PARTITION_MAGIC: [u8; 2] = [0xAA, 0x50];
/// First two bytes of the MD5 entry.
pub const PARTITION_MD5_MAGIC: [u8; 2] = [0xEB, 0xEB];
/// Size of one partition table entry.
pub const PARTITION_ENTRY_LEN: usize = 32;
/// Partition type: application.
pub const PART_TYPE_APP: u8 = 0x00;
/// Partition type: data.
pub const PART_TYPE_DATA: u8 = 0x01;
/// Application subtype: factory.
pub const PART_SUBTYPE_FACTORY: u8 = 0x00;
/// Application subtypes `ota_0` to `ota_15`.
pub const PART_SUBTYPE_OTA_FIRST: u8 = 0x10;
pub const PART_SUBTYPE_OTA_LAST: u8 = 0x1F;
/// Application subtype: test.
pub const PART_SUBTYPE_TEST: u8 = 0x20;
/// Data subtype: OTA data (which OTA slot boots).
pub const PART_SUBTYPE_OTA_DATA: u8 = 0x00;
/// The size ESP-IDF requires of the OTA data partition.
pub const OTA_DATA_LEN: u32 = 0x2000;

/// What is wrong with an ESP image, partition table or bundle layout, or why it does not fit a
/// device. Each message says what was wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EspImageError {
    #[error(
        "the {what} needs {needed} bytes but only {len} are there: the image is truncated; rebuild it with esptool elf2image"
    )]
    Truncated { what: String, needed: u64, len: usize },
    #[error(
        "the image is {len} bytes, over the {limit} bytes an ESP application image may have: this is not an ESP image"
    )]
    TooLarge { len: usize, limit: usize },
    #[error(
        "the first byte is {found:#04x}, not the ESP image magic 0xe9: this is not an ESP application or bootloader image"
    )]
    BadMagic { found: u8 },
    #[error(
        "the header declares {count} segments; an ESP image has 1 to {limit}: the image is corrupt or not an ESP image"
    )]
    SegmentCount { count: usize, limit: usize },
    #[error(
        "segment {index} (load address {load_address:#010x}) is {length} bytes but only {available} remain: the image is truncated or corrupt"
    )]
    SegmentOverrun { index: usize, load_address: u32, length: u32, available: usize },
    #[error(
        "the header's flash {field} is {raw:#04x}, which no ESP chip knows: the image is corrupt; rebuild it with esptool elf2image"
    )]
    FlashParams { field: &'static str, raw: u8 },
    #[error(
        "the hash-appended flag is {raw:#04x}, not 0 or 1: the extended header is corrupt; rebuild the image"
    )]
    HashFlag { raw: u8 },
    #[error(
        "the image checksum is {stored:#04x} but its segments give {computed:#04x}: the image was corrupted or altered; rebuild or download it again"
    )]
    ChecksumMismatch { stored: u8, computed: u8 },
    #[error(
        "the appended SHA-256 is {stored} but the image hashes to {computed}: the image was corrupted or altered; rebuild or download it again"
    )]
    HashMismatch { stored: String, computed: String },
    #[error("the image is for {image}, but the device is {device}: pick the build for this chip")]
    WrongChip { image: String, device: String },
    #[error(
        "the image's chip id {id} is not a chip Fieldpatch flashes (ESP32, ESP32-S2, ESP32-S3, ESP32-C3, ESP32-C6, ESP32-H2)"
    )]
    UnsupportedChip { id: u16 },
    #[error(
        "the image is built for {image} bytes of flash but the device has {device}: rebuild it with the device's flash size (esptool --flash-size)"
    )]
    FlashTooLarge { image: u64, device: u64 },
    #[error(
        "the device's chip revision v{} is outside the image's range v{}.{} to v{}.{}: pick a build for this chip revision",
        fmt_rev(*.revision), .min / 100, .min % 100, .max / 100, .max % 100
    )]
    ChipRevision { revision: u16, min: u16, max: u16 },
    #[error(
        "the partition table is malformed at byte {offset}: {reason}; regenerate it with gen_esp32part.py"
    )]
    PartitionTable { offset: usize, reason: String },
    #[error(
        "the partition table's MD5 is {stored} but its entries give {computed}: the table was corrupted or altered; regenerate it"
    )]
    PartitionMd5 { stored: String, computed: String },
    #[error(
        "payload {name:?} has no flash offset in the manifest: every ESP payload must say where it is written (flash_offset)"
    )]
    MissingOffset { name: String },
    #[error(
        "payload {name:?} is at flash offset {offset:#x}, which is not a multiple of {align:#x}: fix its flash_offset"
    )]
    Misaligned { name: String, offset: u32, align: u32 },
    #[error(
        "payload {name:?} at {offset:#x} ({length} bytes) runs past the {limit}-byte flash an ESP chip can address: fix its flash_offset"
    )]
    OutOfRange { name: String, offset: u32, length: u64, limit: u64 },
    #[error(
        "payload {name:?} ({start:#x}..{end:#x}) overlaps {other:?} ({other_start:#x}..{other_end:#x}): writing one would erase the other; fix the flash offsets"
    )]
    Overlap { name: String, start: u64, end: u64, other: String, other_start: u64, other_end: u64 },
    #[error(
        "payload {name:?} is for {chip} but {other:?} is for {other_chip}: one bundle flashes one chip"
    )]
    MixedChips { name: String, chip: String, other: String, other_chip: String },
    #[error("payloads {name:?} and {other:?} are both {what}: a bundle carries at most one")]
    Duplicate { name: String, other: String, what: &'static str },
    #[error(
        "application image {name:?} at {offset:#x} {reason}: fix its flash_offset or the partition table"
    )]
    AppPlacement { name: String, offset: u32, reason: String },
    #[error(
        "data payload {name:?} at {offset:#x} {reason}: a data payload must fill the start of a data partition of the bundle's partition table"
    )]
    DataPlacement { name: String, offset: u32, reason: String },
    #[error(
        "payload {name:?} ends at {end:#x}, past the device's {device}-byte flash: pick a bundle for this device's flash size"
    )]
    PastFlashEnd { name: String, end: u64, device: u64 },
    #[error(
        "the bundle's ESP payloads ({names}) hold no bootloader or application image, so the chip they are for is unknown: add the image they belong with"
    )]
    NoImage { names: String },
    #[error(
        "the OTA data is {len} bytes; it needs two 32-byte entries 0x1000 apart (0x1020 bytes): read the whole otadata partition"
    )]
    OtaData { len: usize },
}

fn fmt_rev(r: u16) -> String {
    format!("{}.{}", r / 100, r % 100)
}

impl EspImageError {
    /// A stable machine-readable code (snake_case), for `--json` and the app bridge.
    pub fn code(&self) -> &'static str {
        match self {
            EspImageError::Truncated { .. } | EspImageError::SegmentOverrun { .. } => {
                "esp_image_truncated"
            }
            EspImageError::TooLarge { .. } => "esp_image_too_large",
            EspImageError::BadMagic { .. } => "esp_bad_magic",
            EspImageError::SegmentCount { .. }
            | EspImageError::FlashParams { .. }
            | EspImageError::HashFlag { .. } => "esp_image_malformed",
            EspImageError::ChecksumMismatch { .. } => "esp_checksum_mismatch",
            EspImageError::HashMismatch { .. } => "esp_hash_mismatch",
            EspImageError::WrongChip { .. } => "esp_wrong_chip",
            EspImageError::UnsupportedChip { .. } => "esp_unsupported_chip",
            EspImageError::FlashTooLarge { .. } => "esp_flash_too_large",
            EspImageError::ChipRevision { .. } => "esp_chip_revision",
            EspImageError::PartitionTable { .. } => "esp_partition_table_malformed",
            EspImageError::PartitionMd5 { .. } => "esp_partition_table_md5",
            EspImageError::MissingOffset { .. } => "esp_missing_offset",
            EspImageError::Misaligned { .. } => "esp_misaligned_offset",
            EspImageError::OutOfRange { .. } => "esp_offset_out_of_range",
            EspImageError::Overlap { .. } => "esp_overlap",
            EspImageError::MixedChips { .. } => "esp_mixed_chips",
            EspImageError::Duplicate { .. } => "esp_duplicate_payload",
            EspImageError::AppPlacement { .. } => "esp_app_placement",
            EspImageError::DataPlacement { .. } => "esp_data_placement",
            EspImageError::PastFlashEnd { .. } => "esp_past_flash_end",
            EspImageError::NoImage { .. } => "esp_no_image",
            EspImageError::OtaData { .. } => "esp_ota_data_malformed",
        }
    }
}

/// The ESP chips Fieldpatch flashes, with their image chip ids as esptool defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum EspChip {
    Esp32,
    Esp32S2,
    Esp32S3,
    Esp32C3,
    Esp32C6,
    Esp32H2,
}

impl EspChip {
    pub const ALL: [EspChip; 6] = [
        EspChip::Esp32,
        EspChip::Esp32S2,
        EspChip::Esp32S3,
        EspChip::Esp32C3,
        EspChip::Esp32C6,
        EspChip::Esp32H2,
    ];

    /// The chip id in the image's extended header.
    pub fn image_chip_id(self) -> u16 {
        match self {
            EspChip::Esp32 => 0,
            EspChip::Esp32S2 => 2,
            EspChip::Esp32C3 => 5,
            EspChip::Esp32S3 => 9,
            EspChip::Esp32C6 => 13,
            EspChip::Esp32H2 => 16,
        }
    }

    pub fn from_image_chip_id(id: u16) -> Option<EspChip> {
        EspChip::ALL.into_iter().find(|c| c.image_chip_id() == id)
    }

    /// The chip's name as esptool prints it (`ESP32-S3`).
    pub fn name(self) -> &'static str {
        match self {
            EspChip::Esp32 => "ESP32",
            EspChip::Esp32S2 => "ESP32-S2",
            EspChip::Esp32S3 => "ESP32-S3",
            EspChip::Esp32C3 => "ESP32-C3",
            EspChip::Esp32C6 => "ESP32-C6",
            EspChip::Esp32H2 => "ESP32-H2",
        }
    }

    /// Where the ROM loads the second-stage bootloader from.
    pub fn bootloader_offset(self) -> u32 {
        match self {
            EspChip::Esp32 | EspChip::Esp32S2 => 0x1000,
            _ => 0x0,
        }
    }

    /// esptool's name for a flash frequency nibble on this chip (`40m`), if it has one.
    pub fn flash_freq_name(self, raw: u8) -> Option<&'static str> {
        match (self, raw) {
            (EspChip::Esp32H2, 0xF) => Some("48m"),
            (EspChip::Esp32H2, 0x0) => Some("24m"),
            (EspChip::Esp32H2, 0x1) => Some("16m"),
            (EspChip::Esp32H2, 0x2) => Some("12m"),
            (EspChip::Esp32H2, _) => None,
            // The C6 ROM reads 0 for both 40 and 80 MHz; esptool names it 80m.
            (EspChip::Esp32C6, 0x0) => Some("80m"),
            (EspChip::Esp32C6, 0x2) => Some("20m"),
            (EspChip::Esp32C6, _) => None,
            (_, 0xF) => Some("80m"),
            (_, 0x0) => Some("40m"),
            (_, 0x1) => Some("26m"),
            (_, 0x2) => Some("20m"),
            _ => None,
        }
    }
}

impl fmt::Display for EspChip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for EspChip {
    type Err = String;
    /// `esp32`, `esp32s3`, `ESP32-S3` and the like.
    fn from_str(s: &str) -> Result<Self, String> {
        let norm: String =
            s.chars().filter(|c| *c != '-' && *c != '_').collect::<String>().to_ascii_lowercase();
        EspChip::ALL
            .into_iter()
            .find(|c| c.name().replace('-', "").to_ascii_lowercase() == norm)
            .ok_or_else(|| {
                format!("unknown ESP chip {s:?}: use esp32, esp32s2, esp32s3, esp32c3, esp32c6 or esp32h2")
            })
    }
}

/// How the chip talks to its SPI flash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FlashMode {
    Qio,
    Qout,
    Dio,
    Dout,
}

impl FlashMode {
    fn from_raw(raw: u8) -> Option<FlashMode> {
        match raw {
            0 => Some(FlashMode::Qio),
            1 => Some(FlashMode::Qout),
            2 => Some(FlashMode::Dio),
            3 => Some(FlashMode::Dout),
            _ => None,
        }
    }

    /// The mode as esptool prints it (`QIO`).
    pub fn name(self) -> &'static str {
        match self {
            FlashMode::Qio => "QIO",
            FlashMode::Qout => "QOUT",
            FlashMode::Dio => "DIO",
            FlashMode::Dout => "DOUT",
        }
    }
}

/// SPI flash pin drive strengths from the extended header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct PinDrive {
    pub clk: u8,
    pub q: u8,
    pub d: u8,
    pub cs: u8,
    pub hd: u8,
    pub wp: u8,
}

/// One segment: where it loads and where its data is in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Segment {
    pub load_address: u32,
    pub length: u32,
    /// Offset of the segment's 8-byte header in the image (its data follows).
    pub file_offset: usize,
}

impl Segment {
    /// Where the segment's data starts in the image.
    pub fn data_offset(&self) -> usize {
        // A parsed segment's header lies inside an image of at most MAX_IMAGE_LEN bytes, so this
        // never saturates; a hand-made one past usize::MAX lands past the end of any image.
        self.file_offset.saturating_add(SEGMENT_HEADER_LEN)
    }
}

/// An ESP-IDF application's descriptor (`esp_app_desc_t`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppDescriptor {
    pub secure_version: u32,
    pub version: String,
    pub project_name: String,
    pub compile_time: String,
    pub compile_date: String,
    pub idf_version: String,
    /// SHA-256 of the ELF the image was made from, hex.
    pub elf_sha256: String,
}

/// A parsed ESP image whose checksum and (when appended) SHA-256 have been checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EspImage {
    /// The chip id in the extended header, and the chip it names when it is one Fieldpatch knows.
    pub chip_id: u16,
    pub chip: Option<EspChip>,
    pub flash_mode: FlashMode,
    /// The flash size the image was built for.
    pub flash_size_bytes: u64,
    /// The raw flash frequency nibble; [`EspImage::flash_freq_name`] names it for the chip.
    pub flash_freq: u8,
    /// Entry point (0: not set).
    pub entry_point: u32,
    pub wp_pin: u8,
    pub pin_drive: PinDrive,
    /// Legacy minimum chip revision (major only).
    pub min_rev_legacy: u8,
    /// Minimum and maximum chip revision, major * 100 + minor.
    pub min_chip_rev: u16,
    pub max_chip_rev: u16,
    pub segments: Vec<Segment>,
    /// The stored XOR checksum (equal to the computed one: parsing refuses a mismatch).
    pub checksum: u8,
    /// The header says a SHA-256 is appended; when it is, it was checked.
    pub hash_appended: bool,
    /// The appended SHA-256 (checked), hex.
    pub sha256: Option<String>,
    /// Bytes of the image proper: headers, segments, padding, checksum and the SHA-256.
    pub image_len: usize,
    /// Bytes after the image proper (size padding, a secure boot signature block).
    pub trailing_len: usize,
    pub app_desc: Option<AppDescriptor>,
}

/// The device an image is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EspTarget {
    pub chip: EspChip,
    pub flash_size_bytes: u64,
}

/// Where `n` bytes from `off` end, for an error message (as u64, where no offset in an image of
/// at most MAX_IMAGE_LEN bytes overflows).
fn end_of(off: usize, n: usize) -> u64 {
    (off as u64).saturating_add(n as u64)
}

/// The bytes before the first NUL (all of them without one), as text.
fn c_string(b: &[u8]) -> String {
    let text = b.split(|&c| c == 0).next().unwrap_or(b);
    String::from_utf8_lossy(text).into_owned()
}

/// XOR of `data` into `state` (the ROM's checksum).
pub fn checksum(data: &[u8], state: u8) -> u8 {
    data.iter().fold(state, |s, b| s ^ b)
}

impl EspImage {
    /// Parse an ESP image and check its checksum and appended SHA-256.
    pub fn parse(bytes: &[u8]) -> Result<EspImage, EspImageError> {
        if bytes.len() > MAX_IMAGE_LEN {
            return Err(EspImageError::TooLarge { len: bytes.len(), limit: MAX_IMAGE_LEN });
        }
        let Some(&magic) = bytes.first() else {
            return Err(EspImageError::Truncated {
                what: "image header".into(),
                needed: HEADER_LEN as u64,
                len: 0,
            });
        };
        if magic != IMAGE_MAGIC {
            return Err(EspImageError::BadMagic { found: magic });
        }
        let Some((h, mut rest)) = bytes.split_first_chunk::<HEADER_LEN>() else {
            return Err(EspImageError::Truncated {
                what: "image header".into(),
                needed: HEADER_LEN as u64,
                len: bytes.len(),
            });
        };
        let count = usize::from(h[1]);
        if count == 0 || count > MAX_SEGMENTS {
            return Err(EspImageError::SegmentCount { count, limit: MAX_SEGMENTS });
        }
        let flash_mode = FlashMode::from_raw(h[2])
            .ok_or(EspImageError::FlashParams { field: "mode", raw: h[2] })?;
        let size_nibble = h[3] >> 4;
        if size_nibble > 7 {
            return Err(EspImageError::FlashParams { field: "size", raw: h[3] & 0xF0 });
        }
        let flash_size_bytes = (1u64 << 20) << size_nibble;
        let flash_freq = h[3] & 0x0F;
        let entry_point = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let wp_pin = h[8];
        let pin_drive = PinDrive {
            clk: h[9] & 0x0F,
            q: h[9] >> 4,
            d: h[10] & 0x0F,
            cs: h[10] >> 4,
            hd: h[11] & 0x0F,
            wp: h[11] >> 4,
        };
        let chip_id = u16::from_le_bytes([h[12], h[13]]);
        let min_rev_legacy = h[14];
        let min_chip_rev = u16::from_le_bytes([h[15], h[16]]);
        let max_chip_rev = u16::from_le_bytes([h[17], h[18]]);
        let hash_appended = match h[23] {
            0 => false,
            1 => true,
            raw => return Err(EspImageError::HashFlag { raw }),
        };

        // `pos` is where `rest` starts in `bytes`.
        let mut pos = HEADER_LEN;
        let mut segments = Vec::with_capacity(count);
        let mut sum = CHECKSUM_SEED;
        for index in 0..count {
            let Some((&[a0, a1, a2, a3, l0, l1, l2, l3], after_header)) =
                rest.split_first_chunk::<SEGMENT_HEADER_LEN>()
            else {
                return Err(EspImageError::Truncated {
                    what: format!("header of segment {index}"),
                    needed: end_of(pos, SEGMENT_HEADER_LEN),
                    len: bytes.len(),
                });
            };
            let load_address = u32::from_le_bytes([a0, a1, a2, a3]);
            let length = u32::from_le_bytes([l0, l1, l2, l3]);
            let Some((data, after_data)) =
                usize::try_from(length).ok().and_then(|l| after_header.split_at_checked(l))
            else {
                return Err(EspImageError::SegmentOverrun {
                    index,
                    load_address,
                    length,
                    available: after_header.len(),
                });
            };
            sum = checksum(data, sum);
            segments.push(Segment { load_address, length, file_offset: pos });
            rest = after_data;
            // `rest` is a suffix of `bytes`: exact, never saturates.
            pos = bytes.len().saturating_sub(rest.len());
        }
        // The checksum is the last byte of the 16-byte block `pos` is in.
        let checksum_at = pos | 15;
        let Some((before_checksum, (&stored, after_checksum))) = bytes
            .split_at_checked(checksum_at)
            .and_then(|(before, from)| Some((before, from.split_first()?)))
        else {
            return Err(EspImageError::Truncated {
                what: "checksum".into(),
                needed: end_of(checksum_at, 1),
                len: bytes.len(),
            });
        };
        if stored != sum {
            return Err(EspImageError::ChecksumMismatch { stored, computed: sum });
        }
        let mut trailing = after_checksum;
        let mut sha256 = None;
        if hash_appended {
            let Some((stored_hash, after_hash)) = after_checksum.split_first_chunk::<32>() else {
                return Err(EspImageError::Truncated {
                    what: "appended SHA-256".into(),
                    needed: end_of(checksum_at, 33),
                    len: bytes.len(),
                });
            };
            // Every byte up to and including the checksum.
            let computed =
                Sha256::new().chain_update(before_checksum).chain_update([stored]).finalize();
            if computed.as_slice() != stored_hash {
                return Err(EspImageError::HashMismatch {
                    stored: hex::encode(stored_hash),
                    computed: hex::encode(computed),
                });
            }
            sha256 = Some(hex::encode(computed));
            trailing = after_hash;
        }
        // `trailing` is a suffix of `bytes`: exact, never saturates.
        let image_len = bytes.len().saturating_sub(trailing.len());
        let app_desc = segments.iter().find_map(|s| app_descriptor(bytes, s));
        Ok(EspImage {
            chip_id,
            chip: EspChip::from_image_chip_id(chip_id),
            flash_mode,
            flash_size_bytes,
            flash_freq,
            entry_point,
            wp_pin,
            pin_drive,
            min_rev_legacy,
            min_chip_rev,
            max_chip_rev,
            segments,
            checksum: stored,
            hash_appended,
            sha256,
            image_len,
            trailing_len: trailing.len(),
            app_desc,
        })
    }

    /// esptool's name for the flash frequency (`40m`) on this image's chip, if it has one.
    pub fn flash_freq_name(&self) -> Option<&'static str> {
        self.chip.and_then(|c| c.flash_freq_name(self.flash_freq))
    }

    /// The chip's name, or `chip id N` for a chip Fieldpatch does not know.
    pub fn chip_name(&self) -> String {
        self.chip.map_or_else(|| format!("chip id {}", self.chip_id), |c| c.name().to_string())
    }

    /// Refuse the image for a device of another chip, or with less flash than it was built for.
    pub fn check_target(&self, target: &EspTarget) -> Result<(), EspImageError> {
        if self.chip != Some(target.chip) {
            return Err(EspImageError::WrongChip {
                image: self.chip_name(),
                device: target.chip.name().into(),
            });
        }
        if self.flash_size_bytes > target.flash_size_bytes {
            return Err(EspImageError::FlashTooLarge {
                image: self.flash_size_bytes,
                device: target.flash_size_bytes,
            });
        }
        Ok(())
    }

    /// Refuse the image for a chip revision (major * 100 + minor) outside the image's range, read
    /// as esptool reads it: a maximum of 0 means the image has only the legacy minimum (a major
    /// revision), and 65535 with a zero minimum and a legacy one set means the legacy one applies.
    pub fn check_chip_revision(&self, revision: u16) -> Result<(), EspImageError> {
        let legacy = self.max_chip_rev == 0
            || (self.max_chip_rev == u16::MAX
                && self.min_chip_rev == 0
                && self.min_rev_legacy != 0);
        let (min, max) = if legacy {
            // At most 255 * 100 = 25,500: never saturates.
            (u16::from(self.min_rev_legacy).saturating_mul(100), u16::MAX)
        } else {
            (self.min_chip_rev, self.max_chip_rev)
        };
        if revision < min || revision > max {
            return Err(EspImageError::ChipRevision { revision, min, max });
        }
        Ok(())
    }

    /// One line for a verdict: chip, segments, entry, flash parameters, checks.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} image, {} segment(s), entry {:#010x}, {} {} MiB{}, checksum {:#04x} ok",
            self.chip_name(),
            self.segments.len(),
            self.entry_point,
            self.flash_mode.name(),
            self.flash_size_bytes >> 20,
            self.flash_freq_name().map(|f| format!(" {f}")).unwrap_or_default(),
            self.checksum
        );
        match &self.sha256 {
            Some(h) => s.push_str(&format!(", appended SHA-256 {h} ok")),
            None => s.push_str(", no SHA-256 appended"),
        }
        if let Some(d) = &self.app_desc {
            s.push_str(&format!(", app {:?} version {:?}", d.project_name, d.version));
        }
        s
    }
}

fn app_descriptor(bytes: &[u8], s: &Segment) -> Option<AppDescriptor> {
    if (s.length as usize) < APP_DESC_LEN {
        return None;
    }
    // A fixed-size array: the constant ranges below are checked at compile time.
    let d: &[u8; APP_DESC_LEN] = bytes.get(s.data_offset()..)?.first_chunk()?;
    if u32::from_le_bytes([d[0], d[1], d[2], d[3]]) != APP_DESC_MAGIC {
        return None;
    }
    Some(AppDescriptor {
        secure_version: u32::from_le_bytes([d[4], d[5], d[6], d[7]]),
        version: c_string(&d[16..48]),
        project_name: c_string(&d[48..80]),
        compile_time: c_string(&d[80..96]),
        compile_date: c_string(&d[96..112]),
        idf_version: c_string(&d[112..144]),
        elf_sha256: hex::encode(&d[144..176]),
    })
}

// ---------------------------------------------------------------------------------------------
// Partition tables

/// One partition table entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partition {
    pub name: String,
    /// Partition type (0 app, 1 data, 2 bootloader, 3 partition table, others custom).
    pub type_id: u8,
    pub subtype: u8,
    pub offset: u32,
    pub size: u32,
    /// Flag bits (bit 0 encrypted, bit 1 read-only).
    pub flags: u32,
}

impl Partition {
    pub fn is_app(&self) -> bool {
        self.type_id == PART_TYPE_APP
    }
    pub fn is_data(&self) -> bool {
        self.type_id == PART_TYPE_DATA
    }
    /// The OTA slot number of an `ota_N` application partition.
    pub fn ota_slot(&self) -> Option<u8> {
        self.subtype
            .checked_sub(PART_SUBTYPE_OTA_FIRST)
            .filter(|_| self.is_app() && self.subtype <= PART_SUBTYPE_OTA_LAST)
    }
    pub fn is_factory(&self) -> bool {
        self.is_app() && self.subtype == PART_SUBTYPE_FACTORY
    }
    pub fn is_ota_data(&self) -> bool {
        self.is_data() && self.subtype == PART_SUBTYPE_OTA_DATA
    }
    pub fn encrypted(&self) -> bool {
        self.flags & 1 != 0
    }
    pub fn readonly(&self) -> bool {
        self.flags & 2 != 0
    }
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        // Two u32s: their sum fits a u64.
        u64::from(self.offset).saturating_add(u64::from(self.size))
    }
}

/// A parsed ESP-IDF partition table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionTable {
    pub partitions: Vec<Partition>,
    /// The table carried an MD5 entry, and it matched.
    pub md5_checked: bool,
}

impl PartitionTable {
    /// Parse a partition table: entries until the end marker, the MD5 entry checked when present,
    /// names unique, partitions aligned (applications to 64 KiB, others to 4 KiB) and not
    /// overlapping, at most one OTA data partition (of 0x2000 bytes).
    pub fn parse(bytes: &[u8]) -> Result<PartitionTable, EspImageError> {
        let bad = |offset: usize, reason: String| EspImageError::PartitionTable { offset, reason };
        let mut md5 = Md5::new();
        let mut partitions: Vec<Partition> = Vec::new();
        let mut md5_checked = false;
        // Fixed-size entries: the constant indexes and ranges below are checked at compile time.
        let (entries, _) = bytes.as_chunks::<PARTITION_ENTRY_LEN>();
        let mut entries = entries.iter();
        for at in (0..PARTITION_TABLE_MAX_LEN).step_by(PARTITION_ENTRY_LEN) {
            let Some(e) = entries.next() else {
                return Err(EspImageError::Truncated {
                    what: "partition table (it has no end-of-table marker)".into(),
                    needed: end_of(at, PARTITION_ENTRY_LEN),
                    len: bytes.len(),
                });
            };
            if e.iter().all(|&b| b == 0xFF) {
                return Ok(PartitionTable { partitions, md5_checked });
            }
            if md5_checked {
                return Err(bad(at, "an entry follows the MD5 entry".into()));
            }
            if e[..2] == PARTITION_MD5_MAGIC {
                if e[2..16].iter().any(|&b| b != 0xFF) {
                    return Err(bad(at, "the MD5 entry's padding is not 0xFF".into()));
                }
                let computed = md5.clone().finalize();
                if computed.as_slice() != &e[16..] {
                    return Err(EspImageError::PartitionMd5 {
                        stored: hex::encode(&e[16..]),
                        computed: hex::encode(computed),
                    });
                }
                md5_checked = true;
                continue;
            }
            if e[..2] != PARTITION_MAGIC {
                return Err(bad(at, format!("entry magic is {:02x}{:02x}, not aa50", e[0], e[1])));
            }
            md5.update(e);
            let raw_name = &e[12..28];
            let name_bytes = raw_name.split(|&c| c == 0).next().unwrap_or(raw_name);
            let name = std::str::from_utf8(name_bytes)
                .map_err(|_| bad(at, "the partition name is not UTF-8".into()))?
                .to_string();
            if name.is_empty() {
                return Err(bad(at, "a partition has no name".into()));
            }
            let p = Partition {
                name,
                type_id: e[2],
                subtype: e[3],
                offset: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
                size: u32::from_le_bytes([e[8], e[9], e[10], e[11]]),
                flags: u32::from_le_bytes([e[28], e[29], e[30], e[31]]),
            };
            let align = if p.is_app() { APP_ALIGN } else { FLASH_SECTOR };
            if !p.offset.is_multiple_of(align) {
                return Err(bad(
                    at,
                    format!("partition {:?} at {:#x} is not {align:#x}-aligned", p.name, p.offset),
                ));
            }
            if p.end() > MAX_FLASH_BYTES {
                return Err(bad(at, format!("partition {:?} ends past 128 MiB", p.name)));
            }
            if partitions.iter().any(|q| q.name == p.name) {
                return Err(bad(at, format!("partition name {:?} appears twice", p.name)));
            }
            if let Some(q) = partitions
                .iter()
                .find(|q| u64::from(p.offset) < q.end() && u64::from(q.offset) < p.end())
            {
                return Err(bad(at, format!("partition {:?} overlaps {:?}", p.name, q.name)));
            }
            if p.is_ota_data() {
                if partitions.iter().any(Partition::is_ota_data) {
                    return Err(bad(at, "more than one OTA data partition".into()));
                }
                if p.size != OTA_DATA_LEN {
                    return Err(bad(
                        at,
                        format!("the OTA data partition is {:#x} bytes, not 0x2000", p.size),
                    ));
                }
            }
            partitions.push(p);
        }
        Err(bad(PARTITION_TABLE_MAX_LEN, "no end-of-table marker in the first 0xC00 bytes".into()))
    }

    pub fn find(&self, name: &str) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.name == name)
    }
    /// The OTA data partition (which OTA slot boots), if the table has one.
    pub fn ota_data(&self) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.is_ota_data())
    }
    /// The `ota_N` application partitions, by slot number.
    pub fn ota_slots(&self) -> Vec<&Partition> {
        let mut v: Vec<_> = self.partitions.iter().filter(|p| p.ota_slot().is_some()).collect();
        v.sort_by_key(|p| p.subtype);
        v
    }
    pub fn factory(&self) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.is_factory())
    }
    /// Every application partition (factory, OTA slots, test).
    pub fn app_partitions(&self) -> impl Iterator<Item = &Partition> {
        self.partitions.iter().filter(|p| p.is_app())
    }
    /// The device can update itself over the air: OTA data and at least two OTA slots.
    pub fn has_ota(&self) -> bool {
        self.ota_data().is_some() && self.ota_slots().len() >= 2
    }
    /// The partition that starts at `offset`.
    pub fn at_offset(&self, offset: u32) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.offset == offset)
    }
}

/// One of the two entries of the OTA data partition (`esp_ota_select_entry_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OtaSelectEntry {
    pub seq: u32,
    /// `ESP_OTA_IMG_NEW` 0, `PENDING_VERIFY` 1, `VALID` 2, `INVALID` 3, `ABORTED` 4, undefined
    /// 0xFFFFFFFF.
    pub state: u32,
    pub crc: u32,
}

impl OtaSelectEntry {
    /// What the bootloader reads: a sequence set, not marked invalid or aborted, and its CRC
    /// (CRC-32 of the sequence number, seeded as `esp_rom_crc32_le(UINT32_MAX, ...)`) right.
    pub fn is_valid(&self) -> bool {
        self.seq != u32::MAX
            && self.state != 3
            && self.state != 4
            && self.crc == ota_seq_crc(self.seq)
    }
}

/// The CRC ESP-IDF keeps of an OTA sequence number.
pub fn ota_seq_crc(seq: u32) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(u32::MAX);
    h.update(&seq.to_le_bytes());
    h.finalize()
}

/// The OTA data partition: two entries, one per sector, the valid one with the higher sequence
/// number naming the OTA slot that boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OtaData {
    pub entries: [OtaSelectEntry; 2],
}

impl OtaData {
    /// Parse the OTA data partition's bytes (at least 0x1020).
    pub fn parse(bytes: &[u8]) -> Result<OtaData, EspImageError> {
        // `esp_ota_select_entry_t`: seq u32, label [20], state u32, crc u32.
        let entry = |at: usize| {
            let &[q0, q1, q2, q3, .., t0, t1, t2, t3, c0, c1, c2, c3] =
                bytes.get(at..)?.first_chunk::<32>()?;
            Some(OtaSelectEntry {
                seq: u32::from_le_bytes([q0, q1, q2, q3]),
                state: u32::from_le_bytes([t0, t1, t2, t3]),
                crc: u32::from_le_bytes([c0, c1, c2, c3]),
            })
        };
        match (entry(0), entry(FLASH_SECTOR as usize)) {
            (Some(a), Some(b)) => Ok(OtaData { entries: [a, b] }),
            _ => Err(EspImageError::OtaData { len: bytes.len() }),
        }
    }

    /// The entry the bootloader follows: the valid one with the higher sequence number.
    pub fn active(&self) -> Option<&OtaSelectEntry> {
        self.entries.iter().filter(|e| e.is_valid()).max_by_key(|e| e.seq)
    }
}

impl PartitionTable {
    /// The application partition the bootloader starts: the OTA slot `(seq - 1) % slots` named by
    /// valid OTA data, else the factory partition, else `ota_0`.
    pub fn boot_partition(&self, ota: Option<&OtaData>) -> Option<&Partition> {
        let slots = self.ota_slots();
        // ESP-IDF computes `(seq - 1) % slots` in u32: a sequence number of 0 wraps, as it
        // does on the device.
        if let Some(e) = ota.and_then(OtaData::active)
            && let Some(&slot) = usize::try_from(e.seq.wrapping_sub(1))
                .ok()
                .and_then(|n| n.checked_rem(slots.len()))
                .and_then(|i| slots.get(i))
        {
            return Some(slot);
        }
        self.factory().or_else(|| slots.first().copied())
    }

    /// The OTA slot an update is written to: the one after the slot that boots, or `ota_0` when
    /// the factory partition boots. `None` when the table has no OTA slots (the update replaces
    /// the running application and there is no rollback).
    pub fn next_update_slot(&self, ota: Option<&OtaData>) -> Option<&Partition> {
        let slots = self.ota_slots();
        let boot = self.boot_partition(ota)?;
        // The slot after the booting one, wrapping to the first; the first when no slot boots.
        slots.iter().skip_while(|p| p.name != boot.name).nth(1).or_else(|| slots.first()).copied()
    }
}

// ---------------------------------------------------------------------------------------------
// Bundles

/// What one ESP payload is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EspPayloadKind {
    /// An image at the chip's bootloader offset.
    Bootloader {
        image: EspImage,
    },
    PartitionTable {
        table: PartitionTable,
    },
    /// An application image anywhere else.
    App {
        image: EspImage,
    },
    /// Bytes with no structure of their own (initial OTA data, NVS, a file system).
    Data,
}

/// One ESP payload of a bundle, inspected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EspPayload {
    pub name: String,
    pub offset: u32,
    pub length: u64,
    pub kind: EspPayloadKind,
}

impl EspPayload {
    pub fn end(&self) -> u64 {
        // An end past u64::MAX is past every flash; an inspected payload ends within 128 MiB.
        u64::from(self.offset).saturating_add(self.length)
    }
    pub fn image(&self) -> Option<&EspImage> {
        match &self.kind {
            EspPayloadKind::Bootloader { image } | EspPayloadKind::App { image } => Some(image),
            _ => None,
        }
    }
    /// One line for a verdict.
    pub fn describe(&self) -> String {
        match &self.kind {
            EspPayloadKind::Bootloader { image } => {
                format!("bootloader at {:#x}: {}", self.offset, image.describe())
            }
            EspPayloadKind::App { image } => {
                format!("application at {:#x}: {}", self.offset, image.describe())
            }
            EspPayloadKind::PartitionTable { table } => format!(
                "partition table at {:#x}: {} partition(s), {} OTA slot(s){}, MD5 {}",
                self.offset,
                table.partitions.len(),
                table.ota_slots().len(),
                if table.ota_data().is_some() { " with OTA data" } else { "" },
                if table.md5_checked { "ok" } else { "absent" }
            ),
            EspPayloadKind::Data => format!("data at {:#x}, {} bytes", self.offset, self.length),
        }
    }
}

/// Inspect one ESP payload written at `offset`: an image (a bootloader at its chip's bootloader
/// offset, an application elsewhere; checksum and SHA-256 checked), a partition table, or data.
pub fn inspect_payload(
    name: &str,
    bytes: &[u8],
    offset: Option<u32>,
) -> Result<EspPayload, EspImageError> {
    let offset = offset.ok_or_else(|| EspImageError::MissingOffset { name: name.into() })?;
    if !offset.is_multiple_of(FLASH_SECTOR) {
        return Err(EspImageError::Misaligned { name: name.into(), offset, align: FLASH_SECTOR });
    }
    let length = bytes.len() as u64;
    if u64::from(offset).checked_add(length).is_none_or(|end| end > MAX_FLASH_BYTES) {
        return Err(EspImageError::OutOfRange {
            name: name.into(),
            offset,
            length,
            limit: MAX_FLASH_BYTES,
        });
    }
    let kind = if bytes.first() == Some(&IMAGE_MAGIC) {
        let image = EspImage::parse(bytes)?;
        let chip = image.chip.ok_or(EspImageError::UnsupportedChip { id: image.chip_id })?;
        if offset == chip.bootloader_offset() {
            EspPayloadKind::Bootloader { image }
        } else {
            if !offset.is_multiple_of(APP_ALIGN) {
                return Err(EspImageError::AppPlacement {
                    name: name.into(),
                    offset,
                    reason: format!(
                        "is not {APP_ALIGN:#x}-aligned (applications are mapped in 64 KiB pages; \
                         the {chip} bootloader goes at {:#x})",
                        chip.bootloader_offset()
                    ),
                });
            }
            EspPayloadKind::App { image }
        }
    } else if bytes.get(..2) == Some(&PARTITION_MAGIC[..]) {
        EspPayloadKind::PartitionTable { table: PartitionTable::parse(bytes)? }
    } else {
        EspPayloadKind::Data
    };
    Ok(EspPayload { name: name.into(), offset, length, kind })
}

/// The checked flash layout of a bundle's ESP payloads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EspLayout {
    pub chip: EspChip,
    /// Sorted by flash offset.
    pub payloads: Vec<EspPayload>,
}

impl EspLayout {
    pub fn partition_table(&self) -> Option<&PartitionTable> {
        self.payloads.iter().find_map(|p| match &p.kind {
            EspPayloadKind::PartitionTable { table } => Some(table),
            _ => None,
        })
    }

    /// One past the last byte written.
    pub fn end(&self) -> u64 {
        self.payloads.iter().map(EspPayload::end).max().unwrap_or(0)
    }

    /// Refuse the layout for a device of another chip, with less flash than an image was built
    /// for, or too small to hold every payload.
    pub fn check_target(&self, target: &EspTarget) -> Result<(), EspImageError> {
        for p in &self.payloads {
            if let Some(image) = p.image() {
                image.check_target(target)?;
            }
            if p.end() > target.flash_size_bytes {
                return Err(EspImageError::PastFlashEnd {
                    name: p.name.clone(),
                    end: p.end(),
                    device: target.flash_size_bytes,
                });
            }
        }
        Ok(())
    }

    /// One line for a verdict.
    pub fn describe(&self) -> String {
        let names: Vec<String> = self
            .payloads
            .iter()
            .map(|p| format!("{} at {:#x}..{:#x}", p.name, p.offset, p.end()))
            .collect();
        let mut s = format!(
            "{} flash layout: {} (4 KiB aligned, no overlaps)",
            self.chip,
            names.join(", ")
        );
        if let Some(t) = self.partition_table() {
            let placed: Vec<String> = self
                .payloads
                .iter()
                .filter(|p| matches!(p.kind, EspPayloadKind::App { .. } | EspPayloadKind::Data))
                .filter_map(|p| t.at_offset(p.offset).map(|q| format!("{} in {}", p.name, q.name)))
                .collect();
            if !placed.is_empty() {
                s.push_str(&format!("; {} (per the bundle's partition table)", placed.join(", ")));
            }
        }
        s
    }
}

/// Check a bundle's ESP payloads together: one chip, at most one bootloader and one partition
/// table, no overlaps, and, with a partition table, every application and data payload at the
/// start of a partition of its kind that it fits. Without a partition table a data payload cannot
/// be placed and is refused.
pub fn check_layout(payloads: Vec<EspPayload>) -> Result<EspLayout, EspImageError> {
    let mut payloads = payloads;
    payloads.sort_by_key(|p| p.offset);
    let mut chip: Option<(EspChip, &str)> = None;
    for p in &payloads {
        if let Some(c) = p.image().and_then(|i| i.chip) {
            match chip {
                Some((first, other)) if first != c => {
                    return Err(EspImageError::MixedChips {
                        name: p.name.clone(),
                        chip: c.name().into(),
                        other: other.into(),
                        other_chip: first.name().into(),
                    });
                }
                None => chip = Some((c, &p.name)),
                _ => {}
            }
        }
    }
    for pair in payloads.windows(2) {
        let [a, b] = pair else { continue };
        if a.end() > u64::from(b.offset) {
            return Err(EspImageError::Overlap {
                name: b.name.clone(),
                start: b.offset.into(),
                end: b.end(),
                other: a.name.clone(),
                other_start: a.offset.into(),
                other_end: a.end(),
            });
        }
    }
    for what in ["bootloader", "partition table"] {
        let mut seen: Option<&str> = None;
        for p in &payloads {
            let is = match &p.kind {
                EspPayloadKind::Bootloader { .. } => what == "bootloader",
                EspPayloadKind::PartitionTable { .. } => what == "partition table",
                _ => false,
            };
            if is {
                if let Some(other) = seen {
                    return Err(EspImageError::Duplicate {
                        name: p.name.clone(),
                        other: other.into(),
                        what: if what == "bootloader" { "bootloaders" } else { "partition tables" },
                    });
                }
                seen = Some(&p.name);
            }
        }
    }
    let table = payloads.iter().find_map(|p| match &p.kind {
        EspPayloadKind::PartitionTable { table } => Some((p, table)),
        _ => None,
    });
    if let Some((tp, t)) = table {
        // The table's own sector is not a partition's.
        // A u32 plus 0x1000 fits a u64.
        let sector = u64::from(tp.offset)
            ..u64::from(tp.offset).saturating_add(PARTITION_TABLE_SECTOR as u64);
        if let Some(part) = t.partitions.iter().find(|q| {
            q.type_id <= PART_TYPE_DATA
                && u64::from(q.offset) < sector.end
                && sector.start < q.end()
        }) {
            return Err(EspImageError::PartitionTable {
                offset: 0,
                reason: format!(
                    "partition {:?} ({:#x}..{:#x}) overlaps the table's own sector at {:#x}",
                    part.name,
                    part.offset,
                    part.end(),
                    tp.offset
                ),
            });
        }
    }
    for p in &payloads {
        let app = match &p.kind {
            EspPayloadKind::App { .. } => true,
            EspPayloadKind::Data => false,
            _ => continue,
        };
        let placement = |reason: String| {
            if app {
                EspImageError::AppPlacement { name: p.name.clone(), offset: p.offset, reason }
            } else {
                EspImageError::DataPlacement { name: p.name.clone(), offset: p.offset, reason }
            }
        };
        let Some((tp, t)) = table else {
            if app {
                continue;
            }
            return Err(placement("has no partition table in the bundle to place it".into()));
        };
        let Some(part) = t.at_offset(p.offset) else {
            return Err(placement(format!(
                "is not at the start of any partition of {:?}",
                tp.name
            )));
        };
        if app != part.is_app() {
            return Err(placement(format!(
                "is at partition {:?}, which is a{} partition",
                part.name,
                if part.is_app() { "n application" } else { " data or other non-application" }
            )));
        }
        if p.length > u64::from(part.size) {
            return Err(placement(format!(
                "is {} bytes, larger than partition {:?} ({} bytes)",
                p.length, part.name, part.size
            )));
        }
    }
    let Some((chip, _)) = chip else {
        let names: Vec<&str> = payloads.iter().map(|p| p.name.as_str()).collect();
        return Err(EspImageError::NoImage { names: names.join(", ") });
    };
    Ok(EspLayout { chip, payloads })
}

/// Inspect every `(name, bytes, flash offset)` and check them together ([`inspect_payload`],
/// [`check_layout`]): what the flash pipeline calls on a verified bundle's ESP payloads.
pub fn layout_of<'a>(
    payloads: impl IntoIterator<Item = (&'a str, &'a [u8], Option<u32>)>,
) -> Result<EspLayout, EspImageError> {
    let inspected = payloads
        .into_iter()
        .map(|(name, bytes, offset)| inspect_payload(name, bytes, offset))
        .collect::<Result<Vec<_>, _>>()?;
    check_layout(inspected)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal image: one segment, the checksum, optionally the SHA-256.
    fn image(chip: u16, data: &[u8], hash: bool) -> Vec<u8> {
        let mut v = vec![IMAGE_MAGIC, 1, 0, 0x20];
        v.extend_from_slice(&0x4008_0000u32.to_le_bytes());
        v.extend_from_slice(&[WP_PIN_DISABLED, 0, 0, 0]);
        v.extend_from_slice(&chip.to_le_bytes());
        v.extend_from_slice(&[0, 0, 0, 0xFF, 0xFF, 0, 0, 0, 0, u8::from(hash)]);
        v.extend_from_slice(&0x3FFB_0000u32.to_le_bytes());
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v.extend_from_slice(data);
        while v.len() % 16 != 15 {
            v.push(0);
        }
        v.push(checksum(data, CHECKSUM_SEED));
        if hash {
            let h = Sha256::digest(&v);
            v.extend_from_slice(&h);
        }
        v
    }

    #[test]
    fn a_minimal_image_parses_and_every_truncation_is_an_error() {
        let img = image(0, &[1, 2, 3, 4, 5, 6, 7, 8], true);
        let p = EspImage::parse(&img).unwrap();
        assert_eq!(p.chip, Some(EspChip::Esp32));
        assert_eq!(p.flash_size_bytes, 4 << 20);
        assert_eq!(p.max_chip_rev, 0xFFFF);
        assert_eq!(p.image_len, img.len());
        for n in 0..img.len() {
            assert!(EspImage::parse(&img[..n]).is_err(), "prefix of {n} bytes parsed");
        }
    }

    #[test]
    fn hostile_headers_are_errors_not_panics() {
        let mut img = image(5, &[0xAB; 32], false);
        img[1] = 17;
        assert_eq!(EspImage::parse(&img).unwrap_err().code(), "esp_image_malformed");
        img[1] = 1;
        // A segment length that overflows every sum.
        img[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(EspImage::parse(&img).unwrap_err().code(), "esp_image_truncated");
        let mut img = image(5, &[0xAB; 32], false);
        img[23] = 2;
        assert_eq!(EspImage::parse(&img).unwrap_err().code(), "esp_image_malformed");
        let mut img = image(5, &[0xAB; 32], false);
        img[3] = 0x80;
        assert_eq!(EspImage::parse(&img).unwrap_err().code(), "esp_image_malformed");
        // Every single-byte change of a small image is an error or a parse, never a panic.
        let base = image(9, &[0x5A; 40], true);
        for i in 0..base.len() {
            for b in [0u8, 0xFF, base[i] ^ 1] {
                let mut m = base.clone();
                m[i] = b;
                let _ = EspImage::parse(&m);
            }
        }
    }

    #[test]
    fn chip_names_parse_in_esptool_spellings() {
        for c in EspChip::ALL {
            assert_eq!(c.name().parse::<EspChip>().unwrap(), c);
            assert_eq!(c.name().replace('-', "").to_lowercase().parse::<EspChip>().unwrap(), c);
            assert_eq!(EspChip::from_image_chip_id(c.image_chip_id()), Some(c));
        }
        assert!("esp8266".parse::<EspChip>().is_err());
    }
}
