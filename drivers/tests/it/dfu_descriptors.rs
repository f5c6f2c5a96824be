//! The USB layer without a bus: descriptors of a real STM32F4 ROM bootloader (as `lsusb -v`
//! shows them, here as raw bytes), DfuSe memory maps, GETSTATUS decoding, libusb error mapping
//! and enumeration on a machine without USB.

use fieldpatch_drivers::dfu::protocol::{DfuState, DfuStatus, StatusParseError, StatusResponse};
use fieldpatch_drivers::usb::descriptor::{
    DescriptorError, FunctionalDescriptor, MemoryMap, parse_config_descriptor,
    parse_device_descriptor, parse_serial_number_index, parse_string_descriptor,
};
use fieldpatch_drivers::usb::rusb_backend::{RusbBus, map_error};
use fieldpatch_drivers::usb::{Os, UsbBus, UsbDeviceIds, UsbError};

/// Device descriptor of the STM32F405/407 system-memory bootloader ("STM32  BOOTLOADER").
const STM32_DEVICE: [u8; 18] = [
    0x12, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x40, 0x83, 0x04, 0x11, 0xDF, 0x00, 0x22, 0x01, 0x02,
    0x03, 0x01,
];

/// Its configuration descriptor: one interface, four DFU-mode alternate settings (flash, option
/// bytes, OTP, device feature; iInterface 4..7) and the DFU functional descriptor (will detach,
/// upload, download, not manifestation tolerant; detach 255 ms; 2048-byte transfers; DfuSe 1.1a).
const STM32_CONFIG: [u8; 54] = [
    0x09, 0x02, 0x36, 0x00, 0x01, 0x01, 0x00, 0xC0, 0x32, //
    0x09, 0x04, 0x00, 0x00, 0x00, 0xFE, 0x01, 0x02, 0x04, //
    0x09, 0x04, 0x00, 0x01, 0x00, 0xFE, 0x01, 0x02, 0x05, //
    0x09, 0x04, 0x00, 0x02, 0x00, 0xFE, 0x01, 0x02, 0x06, //
    0x09, 0x04, 0x00, 0x03, 0x00, 0xFE, 0x01, 0x02, 0x07, //
    0x09, 0x21, 0x0B, 0xFF, 0x00, 0x00, 0x08, 0x1A, 0x01,
];

const STM32_ALT_STRINGS: [&str; 4] = [
    "@Internal Flash  /0x08000000/04*016Kg,01*064Kg,07*128Kg",
    "@Option Bytes  /0x1FFFC000/01*016 e",
    "@OTP Memory /0x1FFF7800/01*512 e,01*016 e",
    "@Device Feature/0xFFFF0000/01*004 e",
];

/// A composite device in run-time mode: a CDC ACM function plus a DFU run-time interface with a
/// DFU 1.0 style 7-byte functional descriptor.
const RUNTIME_CONFIG: [u8; 46] = [
    0x09, 0x02, 0x2E, 0x00, 0x02, 0x01, 0x00, 0x80, 0xFA, //
    0x09, 0x04, 0x00, 0x00, 0x01, 0x02, 0x02, 0x01, 0x00, //
    0x05, 0x24, 0x00, 0x10, 0x01, // CDC header
    0x07, 0x05, 0x81, 0x03, 0x08, 0x00, 0x10, // interrupt endpoint
    0x09, 0x04, 0x01, 0x00, 0x00, 0xFE, 0x01, 0x01, 0x00, //
    0x07, 0x21, 0x09, 0xE8, 0x03, 0x00, 0x04,
];

fn string_descriptor(s: &str) -> Vec<u8> {
    let units: Vec<u16> = s.encode_utf16().collect();
    let mut d = vec![2 + 2 * units.len() as u8, 0x03];
    for u in units {
        d.extend_from_slice(&u.to_le_bytes());
    }
    d
}

#[test]
fn stm32_bootloader_device_descriptor() {
    let ids = parse_device_descriptor(&STM32_DEVICE).unwrap();
    assert_eq!(ids, UsbDeviceIds { vendor_id: 0x0483, product_id: 0xdf11, bcd_device: 0x2200 });
}

#[test]
fn stm32_bootloader_configuration_descriptor() {
    let alts = parse_config_descriptor(&STM32_CONFIG).unwrap();
    assert_eq!(alts.len(), 4);
    for (i, a) in alts.iter().enumerate() {
        assert_eq!((a.interface, a.alt_setting), (0, i as u8));
        assert!(a.is_dfu_mode() && !a.is_dfu_runtime());
        assert_eq!(a.string_index, 4 + i as u8);
        let f = a.dfu.unwrap();
        assert_eq!(f.attributes, 0x0B);
        assert_eq!(f.detach_timeout_ms, 255);
        assert_eq!(f.transfer_size, 2048);
        assert_eq!(f.dfu_version, 0x011A);
        assert!(f.can_download() && f.can_upload() && f.will_detach());
        assert!(!f.manifestation_tolerant());
        assert!(f.is_dfuse());
    }
}

#[test]
fn runtime_interface_among_other_functions() {
    let alts = parse_config_descriptor(&RUNTIME_CONFIG).unwrap();
    assert_eq!(alts.len(), 2);
    assert!(!alts[0].is_dfu());
    assert_eq!(alts[0].dfu, None);
    assert!(alts[1].is_dfu_runtime());
    let f = alts[1].dfu.unwrap();
    assert_eq!((f.attributes, f.detach_timeout_ms, f.transfer_size), (0x09, 1000, 1024));
    assert_eq!(f.dfu_version, 0x0100, "7-byte DFU 1.0 descriptor");
    // What libusb hands over as the interface's extra bytes.
    assert_eq!(FunctionalDescriptor::find_in(&RUNTIME_CONFIG[39..]).unwrap(), Some(f));
    assert_eq!(FunctionalDescriptor::find_in(&[]).unwrap(), None);
}

#[test]
fn stm32_memory_maps() {
    let flash = MemoryMap::parse(STM32_ALT_STRINGS[0]).unwrap().unwrap();
    assert_eq!(flash.name, "Internal Flash");
    let s = &flash.segments;
    assert_eq!(s.len(), 3);
    assert_eq!((s[0].start, s[0].pages, s[0].page_size), (0x0800_0000, 4, 16 * 1024));
    assert_eq!((s[1].start, s[1].pages, s[1].page_size), (0x0801_0000, 1, 64 * 1024));
    assert_eq!((s[2].start, s[2].pages, s[2].page_size), (0x0802_0000, 7, 128 * 1024));
    assert_eq!(s[2].end(), 0x0810_0000);
    assert!(s.iter().all(|s| s.readable && s.erasable && s.writable));
    assert_eq!(flash.page(0x0801_2345), Some((0x0801_0000, 64 * 1024)));
    assert_eq!(flash.page(0x0800_7FFF), Some((0x0800_4000, 16 * 1024)));
    assert_eq!(flash.page(0x0810_0000), None);

    let opt = MemoryMap::parse(STM32_ALT_STRINGS[1]).unwrap().unwrap();
    assert_eq!(opt.segments.len(), 1);
    let o = opt.segments[0];
    assert_eq!((o.start, o.pages, o.page_size), (0x1FFF_C000, 1, 16));
    assert!(o.readable && o.writable && !o.erasable);

    let otp = MemoryMap::parse(STM32_ALT_STRINGS[2]).unwrap().unwrap();
    assert_eq!(otp.segments.len(), 2);
    assert_eq!((otp.segments[0].page_size, otp.segments[1].start), (512, 0x1FFF_7A00));

    let feature = MemoryMap::parse(STM32_ALT_STRINGS[3]).unwrap().unwrap();
    assert_eq!(feature.segments[0].end(), 0xFFFF_0004);
}

#[test]
fn the_serial_number_string_index_comes_from_the_device_descriptor() {
    // The STM32 bootloader names its serial number in string 3.
    assert_eq!(parse_serial_number_index(&STM32_DEVICE).unwrap(), Some(3));
    let mut none = STM32_DEVICE;
    none[16] = 0;
    assert_eq!(parse_serial_number_index(&none).unwrap(), None, "iSerialNumber 0: no serial");
    assert!(parse_serial_number_index(&STM32_DEVICE[..17]).is_err(), "truncated");
}

#[test]
fn string_descriptors_round_trip_utf16() {
    for s in STM32_ALT_STRINGS {
        assert_eq!(parse_string_descriptor(&string_descriptor(s)).unwrap(), s);
    }
    assert!(parse_string_descriptor(&[0x04, 0x03, 0x00, 0xD8]).is_err(), "lone surrogate");
    assert!(parse_string_descriptor(&[0x02]).is_err());
}

#[test]
fn malformed_memory_maps_are_errors() {
    assert_eq!(MemoryMap::parse("Application").unwrap(), None);
    for bad in [
        "@Flash",
        "@Flash /08000000/04*016Kg",
        "@Flash /0x08000000",
        "@Flash /0x08000000/04016Kg",
        "@Flash /0x08000000/04*016Kz",
        "@Flash /0x08000000/xx*016Kg",
        "@Flash /0xFFFFFFFF/02*001Mg",
    ] {
        assert!(
            matches!(MemoryMap::parse(bad), Err(DescriptorError::BadMemoryMap { .. })),
            "{bad}"
        );
    }
}

#[test]
fn truncated_or_corrupt_descriptors_never_panic() {
    for n in 0..STM32_CONFIG.len() {
        let mut cut = STM32_CONFIG[..n].to_vec();
        if cut.len() >= 4 {
            cut[2..4].copy_from_slice(&(n as u16).to_le_bytes());
        }
        let _ = parse_config_descriptor(&cut);
    }
    // bLength 0 must not loop forever.
    let mut zero = STM32_CONFIG;
    zero[9] = 0;
    assert!(matches!(
        parse_config_descriptor(&zero),
        Err(DescriptorError::BadLength { offset: 9, .. })
    ));
    // wTotalLength larger than what arrived.
    assert!(parse_config_descriptor(&STM32_CONFIG[..40]).is_err());
    for n in 0..18 {
        assert!(parse_device_descriptor(&STM32_DEVICE[..n]).is_err());
    }
    for b in 0..=255u8 {
        let _ = FunctionalDescriptor::parse(&[b, 0x21, b, b, b, b, b, b, b][..(b as usize % 10)]);
    }
}

#[test]
fn getstatus_answers_are_decoded_strictly() {
    let st = StatusResponse::parse(&[0x00, 0x10, 0x27, 0x01, 0x04, 0x00]).unwrap();
    assert_eq!(st.status, DfuStatus::Ok);
    assert_eq!(st.poll_timeout_ms, 0x01_2710);
    assert_eq!(st.state, DfuState::DfuDnbusy);
    let st = StatusResponse::parse(&[0x07, 0, 0, 0, 0x0A, 0]).unwrap();
    assert_eq!((st.status, st.state), (DfuStatus::ErrVerify, DfuState::DfuError));
    assert_eq!(
        StatusResponse::parse(&[0, 0, 0, 0, 2]),
        Err(StatusParseError::Short { got: 5, expected: 6 })
    );
    assert_eq!(
        StatusResponse::parse(&[0x10, 0, 0, 0, 2, 0]),
        Err(StatusParseError::UnknownStatus(0x10))
    );
    assert_eq!(
        StatusResponse::parse(&[0, 0, 0, 0, 11, 0]),
        Err(StatusParseError::UnknownState(11))
    );
    for a in 0..=255u8 {
        for b in [0u8, 2, 10, 11, 255] {
            let _ = StatusResponse::parse(&[a, 0xFF, 0xFF, 0xFF, b, a]);
        }
    }
}

#[test]
fn permission_errors_say_how_to_fix_them_per_os() {
    let ids = Some(UsbDeviceIds { vendor_id: 0x0483, product_id: 0xdf11, bcd_device: 0x2200 });
    let fix = |os| match map_error(rusb::Error::Access, os, ids) {
        UsbError::Permission { fix } => fix,
        other => panic!("{other:?}"),
    };
    let linux = fix(Os::Linux);
    assert!(linux.contains("udev"), "{linux}");
    assert!(linux.contains("ATTRS{idVendor}==\"0483\"") && linux.contains("\"df11\""), "{linux}");
    let windows = fix(Os::Windows);
    assert!(windows.contains("Zadig") && windows.contains("WinUSB"), "{windows}");
    let mac = fix(Os::MacOs);
    assert!(mac.contains("no driver or permission"), "{mac}");
    // The conversion used by the backend picks the running OS.
    let native = UsbError::from(rusb::Error::Access);
    assert!(native.to_string().starts_with("no permission to open the USB device"), "{native}");
    if cfg!(target_os = "linux") {
        assert!(native.to_string().contains("udev"));
    }
}

#[test]
fn other_libusb_errors_map_to_actionable_kinds() {
    assert_eq!(UsbError::from(rusb::Error::Pipe), UsbError::Stall);
    assert_eq!(UsbError::from(rusb::Error::NoDevice), UsbError::Disconnected);
    assert_eq!(UsbError::from(rusb::Error::Timeout), UsbError::Timeout);
    assert_eq!(UsbError::from(rusb::Error::Busy), UsbError::Busy);
    assert_eq!(UsbError::from(rusb::Error::NotFound), UsbError::NotFound);
    assert!(matches!(UsbError::from(rusb::Error::Overflow), UsbError::Other(_)));
}

#[test]
fn enumeration_without_a_usb_bus_is_a_clean_empty_list() {
    let devices = RusbBus.list().unwrap();
    let dfu = fieldpatch_drivers::dfu::list(&RusbBus).unwrap();
    if !std::path::Path::new("/dev/bus/usb").exists() && cfg!(target_os = "linux") {
        assert!(devices.is_empty(), "{devices:?}");
        assert!(dfu.is_empty());
        assert_eq!(RusbBus.open("1-1").unwrap_err(), UsbError::NotFound);
    }
    assert!(dfu.iter().all(|d| d.alts.iter().all(|a| a.is_dfu())));
}
