//! ESP application/bootloader images, ESP-IDF partition tables and OTA data on arbitrary bytes:
//! errors only, never a panic; what parses stays within the input.
//!
//! Each input is also tried with its XOR checksum (and appended SHA-256, when the header asks
//! for one) made right, so the fuzzer gets past the checksums to the segments and descriptor,
//! and as a partition table with a correct MD5 entry.
#![no_main]

use fieldpatch_core::image::esp::{
    CHECKSUM_SEED, EspChip, EspImage, EspTarget, HEADER_LEN, MAX_SEGMENTS, OtaData,
    PARTITION_ENTRY_LEN, PARTITION_MD5_MAGIC, PartitionTable, SEGMENT_HEADER_LEN, checksum,
    inspect_payload, layout_of,
};
use libfuzzer_sys::fuzz_target;
use md5::{Digest as _, Md5};
use sha2::Sha256;

/// `bytes` with the checksum byte (and SHA-256) that make the image's integrity checks pass, when
/// its segments fit.
fn fix_up(bytes: &[u8]) -> Option<Vec<u8>> {
    let count = usize::from(*bytes.get(1)?);
    if bytes.len() < HEADER_LEN || count == 0 || count > MAX_SEGMENTS {
        return None;
    }
    let mut pos = HEADER_LEN;
    let mut sum = CHECKSUM_SEED;
    for _ in 0..count {
        let len = bytes.get(pos + 4..pos + 8)?;
        let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
        let start = pos + SEGMENT_HEADER_LEN;
        sum = checksum(bytes.get(start..start.checked_add(len)?)?, sum);
        pos = start + len;
    }
    let at = pos + (15 - pos % 16);
    let mut out = bytes.get(..at)?.to_vec();
    out.push(sum);
    if bytes[23] == 1 {
        let hash = Sha256::digest(&out);
        out.extend_from_slice(&hash);
    }
    out.extend_from_slice(bytes.get(out.len()..).unwrap_or_default());
    Some(out)
}

fn check_image(bytes: &[u8]) {
    let Ok(image) = EspImage::parse(bytes) else { return };
    assert!(image.image_len <= bytes.len());
    assert_eq!(image.image_len + image.trailing_len, bytes.len());
    for s in &image.segments {
        assert!(s.data_offset() + s.length as usize <= image.image_len);
    }
    let _ = image.describe();
    let _ = image.flash_freq_name();
    for chip in EspChip::ALL {
        let target = EspTarget { chip, flash_size_bytes: 4 << 20 };
        let ok = image.check_target(&target).is_ok();
        assert!(!ok || image.chip == Some(chip));
    }
    for rev in [0, 1, 100, 301, u16::MAX] {
        let _ = image.check_chip_revision(rev);
    }
    for offset in [0x0, 0x1000, 0x2000, 0x1_0000, 0x2_0000] {
        if let Ok(p) = inspect_payload("app", bytes, Some(offset)) {
            let _ = p.describe();
            if let Ok(layout) = layout_of([("app", bytes, Some(offset))]) {
                let _ = layout.describe();
            }
        }
    }
}

fn check_table(bytes: &[u8], ota: Option<&OtaData>) {
    let Ok(table) = PartitionTable::parse(bytes) else { return };
    for (i, p) in table.partitions.iter().enumerate() {
        assert!(table.partitions[i + 1..].iter().all(|q| q.name != p.name));
        assert!(p.end() <= fieldpatch_core::image::esp::MAX_FLASH_BYTES);
    }
    if let Some(boot) = table.boot_partition(ota) {
        assert!(boot.is_app());
    }
    if let Some(next) = table.next_update_slot(ota) {
        assert!(next.ota_slot().is_some());
    }
    let _ = table.ota_data();
    let _ = table.has_ota();
    if let Ok(layout) = layout_of([("table", bytes, Some(0x8000))]) {
        let _ = layout.describe();
    }
}

fuzz_target!(|data: &[u8]| {
    check_image(data);
    if let Some(fixed) = fix_up(data) {
        check_image(&fixed);
    }
    let ota = OtaData::parse(data).ok();
    if let Some(o) = &ota {
        if let Some(active) = o.active() {
            assert!(active.is_valid());
        }
    }
    check_table(data, ota.as_ref());
    // The same entries with the MD5 entry right after them.
    let entries = data.len() / PARTITION_ENTRY_LEN * PARTITION_ENTRY_LEN;
    let mut table = data[..entries.min(0xB00)].to_vec();
    let digest = Md5::digest(&table);
    table.extend_from_slice(&PARTITION_MD5_MAGIC);
    table.extend_from_slice(&[0xFF; 14]);
    table.extend_from_slice(&digest);
    table.extend_from_slice(&[0xFF; PARTITION_ENTRY_LEN]);
    check_table(&table, ota.as_ref());
});
