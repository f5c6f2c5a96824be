//! Flashing the lab DFU device through the real DFU driver: DFU 1.1 and DfuSe, readback,
//! detach and re-enumeration, and the device's faults.

use fieldpatch_drivers::dfu::protocol::{DfuState, DfuStatus, StatusParseError};
use fieldpatch_drivers::dfu::{
    DfuDevice, DfuError, DfuMode, DfuOptions, DfuseElement, DfuseOptions, DfuseTarget,
    Manifestation, VerifiedBy, list,
};
use fieldpatch_drivers::progress::{NoProgress, Progress, TransferProgress};
use fieldpatch_drivers::usb::{UsbBus, UsbControl};
use fieldpatch_lab::dfu::{LabDfu, LabDfuConfig, LabDfuFaults, LabDfuHandle, LabMode, LabUsbBus};
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn opts() -> DfuOptions {
    DfuOptions {
        control_timeout: Duration::from_millis(500),
        busy_timeout: Duration::from_secs(2),
        manifest_timeout: Duration::from_millis(300),
        reenumerate_timeout: Duration::from_secs(2),
        max_poll: Duration::from_millis(200),
    }
}

fn open(lab: &LabDfu) -> DfuDevice<LabDfuHandle> {
    DfuDevice::open(&lab.bus(), &lab.location(), opts()).unwrap()
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

#[derive(Default)]
struct Recorder {
    phases: Mutex<Vec<String>>,
    transfers: Mutex<Vec<TransferProgress>>,
    notes: Mutex<Vec<String>>,
}

impl Progress for Recorder {
    fn phase(&self, name: &str) {
        self.phases.lock().unwrap().push(name.to_string());
    }
    fn transfer(&self, p: TransferProgress) {
        self.transfers.lock().unwrap().push(p);
    }
    fn note(&self, m: &str) {
        self.notes.lock().unwrap().push(m.to_string());
    }
}

fn dfuse_lab() -> LabDfu {
    LabDfu::new(LabDfuConfig::stm32_dfuse())
}

#[test]
fn lists_the_lab_device_with_its_dfu_interfaces() {
    let lab = dfuse_lab();
    let found = list(&lab.bus()).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].mode, DfuMode::Dfu);
    assert_eq!(found[0].ids.product_id, 0xdf11);
    assert_eq!(found[0].alts.len(), 4);
    let dev = open(&lab);
    let map = dev.alts()[0].memory_map.as_ref().unwrap();
    assert_eq!(map.name, "Internal Flash");
    assert_eq!(map.segments.len(), 3);
    assert_eq!(dev.ids().bcd_device, 0x2200);
}

/// A plain DFU board in DFU mode at `location` with serial number `serial`.
fn plain_board(location: &str, serial: Option<&str>) -> LabDfu {
    let mut cfg = LabDfuConfig::plain_dfu();
    cfg.start_in_runtime = false;
    cfg.location = location.into();
    cfg.serial = serial.map(str::to_string);
    LabDfu::new(cfg)
}

#[test]
fn identical_boards_on_one_bus_are_told_apart_by_their_serial_numbers() {
    let (a, b, bare) =
        (plain_board("3-2", Some("A")), plain_board("3-3", Some("B")), plain_board("3-4", None));
    let bus = LabUsbBus::new([a.clone(), b.clone(), bare.clone()]);
    let found = list(&bus).unwrap();
    let seen: Vec<(&str, u16, u16, Option<&str>)> = found
        .iter()
        .map(|d| (d.location.as_str(), d.ids.vendor_id, d.ids.product_id, d.serial.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            ("3-2", 0x1209, 0x0002, Some("A")),
            ("3-3", 0x1209, 0x0002, Some("B")),
            ("3-4", 0x1209, 0x0002, None)
        ]
    );
    // The serial number the driver reads from each board's descriptors (iSerialNumber, then
    // that string) is the one the listing gives.
    for (board, serial) in [(&a, Some("A")), (&b, Some("B")), (&bare, None)] {
        let mut handle = bus.open(&board.location()).unwrap();
        let read = handle.serial_number(Duration::from_millis(100)).unwrap();
        assert_eq!(read.as_deref(), serial);
        assert_eq!(board.serial().as_deref(), serial);
    }
    // Flashing the board at one location reaches that board only.
    let mut dev = DfuDevice::open(&bus, "3-3", opts()).unwrap();
    let image = pattern(3000, 9);
    dev.download(&image, &NoProgress).unwrap();
    assert_eq!(b.firmware(), image);
    assert_eq!(a.dnload_requests() + bare.dnload_requests(), 0);
    assert!(bus.open("3-9").is_err());
}

#[test]
fn dfuse_multi_element_multi_target_flash_is_read_back_and_leaves() {
    let lab = dfuse_lab();
    let mut dev = open(&lab);
    // Crosses the 16 KiB sector boundary and lands in the 64 KiB sector; a second element in a
    // 128 KiB sector; option bytes on alternate setting 1.
    let a = pattern(20_000, 1);
    let b = pattern(5_001, 2);
    let opt = vec![0xAA, 0x55, 0x00, 0xFF, 0x12, 0x34, 0x56, 0x78];
    let targets = vec![
        DfuseTarget {
            alt_setting: 0,
            elements: vec![
                DfuseElement { address: 0x0800_3000, data: a.clone() },
                DfuseElement { address: 0x0802_0000, data: b.clone() },
            ],
        },
        DfuseTarget {
            alt_setting: 1,
            elements: vec![DfuseElement { address: 0x1FFF_C000, data: opt.clone() }],
        },
    ];
    let rec = Recorder::default();
    let report = dev
        .dfuse_download(&targets, DfuseOptions { mass_erase: false, leave: true }, &rec)
        .unwrap();
    assert_eq!(report.verified_by, VerifiedBy::Readback);
    assert_eq!(report.manifestation, Manifestation::Left);
    assert_eq!(report.bytes, (a.len() + b.len() + opt.len()) as u64);
    assert_eq!(lab.memory(0, 0x0800_3000, a.len()), a);
    assert_eq!(lab.memory(0, 0x0802_0000, b.len()), b);
    assert_eq!(lab.memory(1, 0x1FFF_C000, opt.len()), opt);
    // Bytes around the elements are untouched (erased).
    assert_eq!(lab.memory(0, 0x0800_2FFF, 1), vec![0xFF]);
    let phases = rec.phases.lock().unwrap().clone();
    for p in ["erase", "download", "verify"] {
        assert!(phases.contains(&p.to_string()), "{phases:?}");
    }
    let last =
        rec.transfers.lock().unwrap().iter().rev().find(|t| t.total == report.bytes).copied();
    assert_eq!(last.map(|t| t.done), Some(report.bytes));
    // The device left DFU mode and runs its application.
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(lab.mode(), LabMode::Runtime);
}

#[test]
fn dfuse_mass_erase_then_flash() {
    let lab = dfuse_lab();
    let mut dev = open(&lab);
    let data = pattern(3000, 9);
    let targets = vec![DfuseTarget {
        alt_setting: 0,
        elements: vec![DfuseElement { address: 0x0800_0000, data: data.clone() }],
    }];
    // Pre-existing content elsewhere in flash is wiped by the mass erase.
    dev.dfuse_download(
        &[DfuseTarget {
            alt_setting: 0,
            elements: vec![DfuseElement { address: 0x0804_0000, data: vec![0; 16] }],
        }],
        DfuseOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(lab.memory(0, 0x0804_0000, 16), vec![0; 16]);
    dev.dfuse_download(&targets, DfuseOptions { mass_erase: true, leave: false }, &NoProgress)
        .unwrap();
    assert_eq!(lab.memory(0, 0x0800_0000, data.len()), data);
    assert_eq!(lab.memory(0, 0x0804_0000, 16), vec![0xFF; 16]);
    assert_eq!(lab.mode(), LabMode::Dfu);
}

#[test]
fn writing_unerased_flash_is_caught_by_the_device() {
    // Without an erase the NOR-like memory refuses to program: the driver always erases, so send
    // the raw requests by hand to prove the lab enforces it.
    let lab = dfuse_lab();
    let mut dev = open(&lab);
    let t = |d: Vec<u8>| {
        vec![DfuseTarget {
            alt_setting: 0,
            elements: vec![DfuseElement { address: 0x0800_0000, data: d }],
        }]
    };
    dev.dfuse_download(&t(vec![0x00; 4]), DfuseOptions::default(), &NoProgress).unwrap();
    let s = |request, value| fieldpatch_drivers::usb::Setup {
        request_type: 0x21,
        request,
        value,
        index: 0,
    };
    use fieldpatch_drivers::usb::UsbControl;
    let mut addr = vec![0x21];
    addr.extend_from_slice(&0x0800_0000u32.to_le_bytes());
    dev.usb().control_out(s(1, 0), &addr, Duration::from_secs(1)).unwrap();
    dev.get_status().unwrap();
    dev.get_status().unwrap();
    dev.usb().control_out(s(1, 2), &[0x11; 4], Duration::from_secs(1)).unwrap();
    let st = dev.get_status().unwrap();
    assert_eq!(st.status, DfuStatus::ErrCheckErased);
}

#[test]
fn plain_dfu_detach_reenumerate_download_and_readback() {
    let lab = LabDfu::new(LabDfuConfig::plain_dfu());
    let bus = lab.bus();
    let dev = open(&lab);
    assert_eq!(dev.mode(), DfuMode::Runtime);
    assert_eq!(dev.ids().product_id, 0x0001);
    // bitWillDetach is clear: DETACH, then the host resets the device.
    let mut dev = dev.detach(&bus).unwrap();
    assert_eq!(dev.mode(), DfuMode::Dfu);
    assert_eq!(dev.ids().product_id, 0x0002);
    assert_eq!(lab.resets(), 1);
    let image = pattern(10_000, 3);
    let rec = Recorder::default();
    let report = dev.download(&image, &rec).unwrap();
    assert_eq!(report.verified_by, VerifiedBy::Readback);
    assert_eq!(report.manifestation, Manifestation::BackToIdle);
    assert_eq!(lab.firmware(), image);
    // UPLOAD works on its own too, ending at the short block.
    assert_eq!(dev.upload(1 << 20, &NoProgress).unwrap(), image);
    let phases = rec.phases.lock().unwrap().clone();
    assert_eq!(phases, vec!["download", "verify"]);
}

#[test]
fn dfuse_runtime_device_detaches_itself() {
    let mut cfg = LabDfuConfig::stm32_dfuse();
    cfg.start_in_runtime = true;
    let lab = LabDfu::new(cfg);
    let dev = open(&lab);
    assert_eq!(dev.mode(), DfuMode::Runtime);
    let dev = dev.detach(&lab.bus()).unwrap();
    assert_eq!(dev.mode(), DfuMode::Dfu);
    assert_eq!(dev.ids().product_id, 0xdf11);
    assert_eq!(lab.resets(), 0, "bitWillDetach set: the host must not reset");
}

#[test]
fn non_tolerant_device_without_upload_is_reset_and_status_only() {
    let mut cfg = LabDfuConfig::plain_dfu();
    cfg.attributes = 0x01; // download only, not manifestation tolerant
    cfg.start_in_runtime = false;
    let lab = LabDfu::new(cfg);
    let mut dev = open(&lab);
    let image = pattern(4097, 4);
    let rec = Recorder::default();
    let report = dev.download(&image, &rec).unwrap();
    assert_eq!(report.verified_by, VerifiedBy::StatusOnly);
    assert_eq!(report.manifestation, Manifestation::Reset);
    assert_eq!(lab.firmware(), image);
    assert_eq!(lab.resets(), 1);
    assert!(!rec.notes.lock().unwrap().is_empty());
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["verified_by"], "status_only");
}

#[test]
fn err_verify_at_manifestation_is_reported() {
    let mut cfg = LabDfuConfig::plain_dfu();
    cfg.start_in_runtime = false;
    cfg.faults.verify_error_at_manifest = true;
    let lab = LabDfu::new(cfg);
    let mut dev = open(&lab);
    let err = dev.download(&pattern(2000, 5), &NoProgress).unwrap_err();
    match &err {
        DfuError::Device { op, status, .. } => {
            assert_eq!(*op, "manifestation");
            assert_eq!(*status, DfuStatus::ErrVerify);
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("errVERIFY"), "{err}");
}

#[test]
fn err_address_from_a_protected_page() {
    let mut cfg = LabDfuConfig::stm32_dfuse();
    cfg.faults.protected_address = Some(0x0800_4000);
    let lab = LabDfu::new(cfg);
    let mut dev = open(&lab);
    let t = vec![DfuseTarget {
        alt_setting: 0,
        elements: vec![DfuseElement { address: 0x0800_4000, data: vec![1; 64] }],
    }];
    let err = dev.dfuse_download(&t, DfuseOptions::default(), &NoProgress).unwrap_err();
    assert!(matches!(err, DfuError::Device { status: DfuStatus::ErrAddress, .. }), "{err:?}");
    // The device was cleared and can be used again.
    let ok = vec![DfuseTarget {
        alt_setting: 0,
        elements: vec![DfuseElement { address: 0x0800_0000, data: vec![2; 64] }],
    }];
    dev.dfuse_download(&ok, DfuseOptions::default(), &NoProgress).unwrap();
}

#[test]
fn element_outside_the_memory_map_is_refused_before_any_dnload() {
    let lab = dfuse_lab();
    let mut dev = open(&lab);
    let t = vec![DfuseTarget {
        alt_setting: 0,
        elements: vec![DfuseElement { address: 0x080F_FF00, data: vec![1; 0x200] }],
    }];
    let err = dev.dfuse_download(&t, DfuseOptions::default(), &NoProgress).unwrap_err();
    assert!(matches!(err, DfuError::AddressNotWritable { address: 0x080F_FF00, .. }), "{err:?}");
    assert!(err.to_string().contains("Internal Flash"), "{err}");
    assert_eq!(lab.dnload_requests(), 0);
}

#[test]
fn stall_mid_download_is_an_error_and_the_device_recovers() {
    let mut cfg = LabDfuConfig::plain_dfu();
    cfg.start_in_runtime = false;
    cfg.faults.stall_on_data_dnload = Some(3);
    let lab = LabDfu::new(cfg);
    let mut dev = open(&lab);
    let image = pattern(8 * 1024, 6);
    let err = dev.download(&image, &NoProgress).unwrap_err();
    assert!(matches!(err, DfuError::Device { status: DfuStatus::ErrStalledPkt, .. }), "{err:?}");
    lab.set_faults(LabDfuFaults::default());
    let report = dev.download(&image, &NoProgress).unwrap();
    assert_eq!(report.verified_by, VerifiedBy::Readback);
    assert_eq!(lab.firmware(), image);
}

#[test]
fn a_device_that_never_leaves_manifestation_times_out() {
    let mut cfg = LabDfuConfig::plain_dfu();
    cfg.start_in_runtime = false;
    cfg.faults.never_leave_manifest = true;
    cfg.poll_timeout_ms = 50;
    let lab = LabDfu::new(cfg);
    let mut dev = open(&lab);
    let started = Instant::now();
    let err = dev.download(&pattern(100, 7), &NoProgress).unwrap_err();
    assert!(matches!(err, DfuError::Timeout { op: "manifestation", .. }), "{err:?}");
    // The deadline is honoured, not exceeded by much (generous bound: a correctness check that
    // the wait ends, not a performance figure).
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn poll_timeout_is_honoured_between_status_requests() {
    let mut cfg = LabDfuConfig::plain_dfu();
    cfg.start_in_runtime = false;
    cfg.poll_timeout_ms = 15;
    let lab = LabDfu::new(cfg);
    let mut dev = open(&lab);
    let started = Instant::now();
    dev.download(&pattern(4 * 1024, 8), &NoProgress).unwrap();
    // Four blocks, each busy once for 15 ms, plus manifestation: a lower bound only.
    assert!(started.elapsed() >= Duration::from_millis(4 * 15), "{:?}", started.elapsed());
}

#[test]
fn garbage_status_bytes_are_errors_not_panics() {
    let cases: Vec<(Vec<u8>, StatusParseError)> = vec![
        (vec![0, 0, 0], StatusParseError::Short { got: 3, expected: 6 }),
        (vec![], StatusParseError::Short { got: 0, expected: 6 }),
        (vec![0x42, 0, 0, 0, 2, 0], StatusParseError::UnknownStatus(0x42)),
        (vec![0, 0, 0, 0, 0x63, 0], StatusParseError::UnknownState(0x63)),
    ];
    for (raw, want) in cases {
        let mut cfg = LabDfuConfig::plain_dfu();
        cfg.start_in_runtime = false;
        let lab = LabDfu::new(cfg);
        let mut dev = open(&lab);
        lab.set_faults(LabDfuFaults { raw_status: Some(raw.clone()), ..Default::default() });
        let err = dev.download(&[1, 2, 3], &NoProgress).unwrap_err();
        assert_eq!(err, DfuError::BadStatus { op: "preparing the device", why: want }, "{raw:?}");
    }
}

#[test]
fn a_device_that_does_not_come_back_after_detach_times_out() {
    let mut cfg = LabDfuConfig::plain_dfu();
    cfg.reenumerate_delay = Duration::from_secs(30);
    let lab = LabDfu::new(cfg);
    let mut o = opts();
    o.reenumerate_timeout = Duration::from_millis(150);
    let dev = DfuDevice::open(&lab.bus(), &lab.location(), o).unwrap();
    let err = dev.detach(&lab.bus()).unwrap_err();
    assert!(matches!(err, DfuError::Reenumeration { after: "DETACH", .. }), "{err:?}");
    assert!(err.to_string().contains("BOOT0"), "{err}");
}

#[test]
fn download_in_runtime_mode_is_refused() {
    let lab = LabDfu::new(LabDfuConfig::plain_dfu());
    let mut dev = open(&lab);
    let err = dev.download(&[0; 10], &NoProgress).unwrap_err();
    assert_eq!(err, DfuError::NotInDfuMode { op: "download" });
    assert_eq!(lab.dnload_requests(), 0);
}

#[test]
fn dfuse_upload_reads_memory() {
    let lab = dfuse_lab();
    let mut dev = open(&lab);
    let data = pattern(5000, 11);
    let t = vec![DfuseTarget {
        alt_setting: 0,
        elements: vec![DfuseElement { address: 0x0801_0000, data: data.clone() }],
    }];
    dev.dfuse_download(&t, DfuseOptions::default(), &NoProgress).unwrap();
    assert_eq!(dev.dfuse_upload(0x0801_0000, 5000, &NoProgress).unwrap(), data);
    // Reading unmapped memory is an errADDRESS from the device, not a panic or a hang.
    let err = dev.dfuse_upload(0x0900_0000, 16, &NoProgress).unwrap_err();
    assert!(matches!(err, DfuError::Device { status: DfuStatus::ErrAddress, .. }), "{err:?}");
}

#[test]
fn a_device_stuck_busy_times_out() {
    let mut cfg = LabDfuConfig::plain_dfu();
    cfg.start_in_runtime = false;
    cfg.faults.busy_forever = true;
    cfg.poll_timeout_ms = 20;
    let lab = LabDfu::new(cfg);
    let mut o = opts();
    o.busy_timeout = Duration::from_millis(200);
    let mut dev = DfuDevice::open(&lab.bus(), &lab.location(), o).unwrap();
    let err = dev.download(&pattern(100, 1), &NoProgress).unwrap_err();
    assert!(
        matches!(err, DfuError::Timeout { op: "download", state: DfuState::DfuDnbusy, .. }),
        "{err:?}"
    );
}

#[test]
fn plain_images_are_refused_by_dfuse_devices_and_empty_images_everywhere() {
    let lab = dfuse_lab();
    let mut dev = open(&lab);
    assert_eq!(dev.download(&[1, 2, 3], &NoProgress).unwrap_err(), DfuError::NeedsAddress);
    let empty = vec![DfuseTarget { alt_setting: 0, elements: vec![] }];
    assert_eq!(
        dev.dfuse_download(&empty, DfuseOptions::default(), &NoProgress).unwrap_err(),
        DfuError::EmptyImage
    );
    let mut cfg = LabDfuConfig::plain_dfu();
    cfg.start_in_runtime = false;
    let plain = LabDfu::new(cfg);
    let mut dev = open(&plain);
    assert_eq!(dev.download(&[], &NoProgress).unwrap_err(), DfuError::EmptyImage);
    assert_eq!(lab.dnload_requests() + plain.dnload_requests(), 0);
}

/// The lab's STM32 face is byte-identical to the descriptors of the real STM32F4 ROM bootloader
/// (the same bytes `drivers/tests/dfu_descriptors.rs` decodes).
#[test]
fn lab_stm32_descriptors_match_the_real_bootloader() {
    use fieldpatch_drivers::usb::{UsbBus, UsbControl, get_descriptor};
    const STM32_DEVICE: [u8; 18] = [
        0x12, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x40, 0x83, 0x04, 0x11, 0xDF, 0x00, 0x22, 0x01,
        0x02, 0x03, 0x01,
    ];
    const STM32_CONFIG: [u8; 54] = [
        0x09, 0x02, 0x36, 0x00, 0x01, 0x01, 0x00, 0xC0, 0x32, //
        0x09, 0x04, 0x00, 0x00, 0x00, 0xFE, 0x01, 0x02, 0x04, //
        0x09, 0x04, 0x00, 0x01, 0x00, 0xFE, 0x01, 0x02, 0x05, //
        0x09, 0x04, 0x00, 0x02, 0x00, 0xFE, 0x01, 0x02, 0x06, //
        0x09, 0x04, 0x00, 0x03, 0x00, 0xFE, 0x01, 0x02, 0x07, //
        0x09, 0x21, 0x0B, 0xFF, 0x00, 0x00, 0x08, 0x1A, 0x01,
    ];
    let lab = dfuse_lab();
    let mut h = lab.bus().open(&lab.location()).unwrap();
    let t = Duration::from_secs(1);
    let mut buf = [0u8; 255];
    let n = h.control_in(get_descriptor(0x01, 0, 0), &mut buf, t).unwrap();
    assert_eq!(&buf[..n], &STM32_DEVICE);
    // Hosts read the first 9 bytes, then wTotalLength.
    let n = h.control_in(get_descriptor(0x02, 0, 0), &mut buf[..9], t).unwrap();
    assert_eq!(&buf[..n], &STM32_CONFIG[..9]);
    let n = h.control_in(get_descriptor(0x02, 0, 0), &mut buf[..54], t).unwrap();
    assert_eq!(&buf[..n], &STM32_CONFIG);
    assert_eq!(h.string(4, t).unwrap(), "@Internal Flash  /0x08000000/04*016Kg,01*064Kg,07*128Kg");
    // Language table: en-US only.
    let n = h.control_in(get_descriptor(0x03, 0, 0), &mut buf, t).unwrap();
    assert_eq!(&buf[..n], &[0x04, 0x03, 0x09, 0x04]);
}
