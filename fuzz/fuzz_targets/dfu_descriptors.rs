//! What a USB DFU device answers (GETSTATUS, device/configuration/string descriptors, DFU
//! functional descriptors, DfuSe memory-map strings) on arbitrary bytes: errors only, never a
//! panic, and what parses describes only bytes that were there.
#![no_main]

use fieldpatch_drivers::dfu::protocol::{DfuState, DfuStatus, StatusResponse};
use fieldpatch_drivers::usb::descriptor::{
    FunctionalDescriptor, MemoryMap, parse_config_descriptor, parse_device_descriptor,
    parse_serial_number_index, parse_string_descriptor,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = StatusResponse::parse(data) {
        assert_eq!(DfuStatus::from_u8(data[0]), Some(s.status));
        assert_eq!(DfuState::from_u8(data[4]), Some(s.state));
        assert!(s.poll_timeout_ms < 1 << 24);
        let _ = (s.status.to_string(), s.state.to_string());
    }
    if let Ok(ids) = parse_device_descriptor(data) {
        assert_eq!(ids.vendor_id, u16::from_le_bytes([data[8], data[9]]));
        let _ = parse_serial_number_index(data).expect("a device descriptor has the index");
    }
    if let Ok(alts) = parse_config_descriptor(data) {
        // Each alternate setting is one 9-byte interface descriptor inside wTotalLength.
        let total = usize::from(u16::from_le_bytes([data[2], data[3]]));
        assert!(alts.len() * 9 <= total);
    }
    let _ = FunctionalDescriptor::parse(data);
    if let Ok(Some(f)) = FunctionalDescriptor::find_in(data) {
        let _ = (f.can_download(), f.can_upload(), f.will_detach(), f.is_dfuse());
    }
    if let Ok(text) = parse_string_descriptor(data) {
        assert!(text.encode_utf16().count() * 2 <= data.len());
        check_map(&text);
    }
    check_map(&String::from_utf8_lossy(data));
});

fn check_map(text: &str) {
    let Ok(Some(map)) = MemoryMap::parse(text) else { return };
    assert!(!map.segments.is_empty());
    for s in &map.segments {
        assert!(s.end() <= u64::from(u32::MAX) + 1);
        let last = s.end().saturating_sub(1).min(u64::from(u32::MAX)) as u32;
        for address in [s.start, s.start.saturating_add(1), last] {
            if let Some((page, size)) = map.page(address) {
                assert!(page <= address);
                assert!(u64::from(address) < u64::from(page) + u64::from(size.max(1)));
            }
        }
    }
}
