//! USB DFU 1.1 and ST DfuSe flashing over the [`crate::usb`] seam.
//!
//! [`DfuDevice`] drives one DFU interface: DETACH from run-time mode and wait for the device to
//! re-enumerate in DFU mode, DNLOAD in `wTransferSize` blocks honouring `bwPollTimeout`,
//! GETSTATUS / CLRSTATUS / GETSTATE / ABORT, manifestation (tolerant devices return to dfuIDLE,
//! non-tolerant ones wait for a reset), UPLOAD for readback; and the DfuSe extensions: set address
//! pointer, page and mass erase, element-by-element download and readback (one set-address per
//! element, its blocks placed by their block number), leave.
//!
//! ## Why not `dfu-core`
//!
//! The `dfu-core` crate was evaluated and not used: it has no UPLOAD (so no readback
//! verification), no ABORT/CLRSTATUS recovery, no DfuSe mass erase, downloads one contiguous
//! range per call rather than DfuSe elements on several alternate settings, waits for
//! manifestation without a deadline of its own, and picks DfuSe solely from `bcdDFUVersion`. The
//! state machine is small; owning it lets every wait carry a deadline and every device answer be
//! checked.
//!
//! ## Waiting
//!
//! Every control transfer has [`DfuOptions::control_timeout`]. Busy polling sleeps
//! `bwPollTimeout` (capped by [`DfuOptions::max_poll`] and by the remaining deadline) between
//! GETSTATUS requests, and gives up with [`DfuError::Timeout`] after
//! [`DfuOptions::busy_timeout`] (download/erase) or [`DfuOptions::manifest_timeout`].
//!
//! ## Verification
//!
//! After a download the image is read back with UPLOAD when the device can upload
//! (`bitCanUpload`; for plain DFU also `bitManifestationTolerant`, since a non-tolerant device
//! leaves DFU mode) and compared by SHA-256. Otherwise only the device's status vouches for the
//! image and the report says [`VerifiedBy::StatusOnly`], so the caller records that.

pub mod protocol;

use crate::progress::{Progress, TransferProgress};
use crate::usb::descriptor::{AltSetting, DescriptorError, FunctionalDescriptor, MemoryMap};
use crate::usb::{Setup, UsbBus, UsbControl, UsbDeviceIds, UsbError};
use protocol::*;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Timeouts for one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DfuOptions {
    /// One control transfer.
    pub control_timeout: Duration,
    /// How long a block write or an erase may keep the device busy.
    pub busy_timeout: Duration,
    /// How long manifestation may take.
    pub manifest_timeout: Duration,
    /// How long to wait for the device to come back after DETACH or a reset.
    pub reenumerate_timeout: Duration,
    /// Upper bound on a single `bwPollTimeout` sleep (a device may claim up to 4.6 hours).
    pub max_poll: Duration,
}

impl Default for DfuOptions {
    fn default() -> Self {
        Self {
            control_timeout: Duration::from_secs(5),
            busy_timeout: Duration::from_secs(30),
            manifest_timeout: Duration::from_secs(30),
            reenumerate_timeout: Duration::from_secs(10),
            max_poll: Duration::from_secs(5),
        }
    }
}

/// A DFU failure, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DfuError {
    #[error("{op}: {source}")]
    Usb { op: &'static str, source: UsbError },
    #[error("no USB device at {location}; list devices again (it may have been unplugged)")]
    NoDevice { location: String },
    #[error(
        "the USB device at {location} has no DFU interface (class 0xFE, subclass 0x01); is it in bootloader mode?"
    )]
    NoDfuInterface { location: String },
    #[error(
        "the DFU interface has no functional descriptor (0x21): the device is not DFU compliant"
    )]
    NoFunctionalDescriptor,
    #[error("the device has no DFU alternate setting {alt}; choose one of {available:?}")]
    NoSuchAlt { alt: u8, available: Vec<u8> },
    #[error("{op} needs the device in DFU mode but it is in run-time mode; detach it first")]
    NotInDfuMode { op: &'static str },
    #[error(
        "the device at {location} did not come back in DFU mode within {waited:?} after {after}; replug it or put it into its bootloader by hand (BOOT0 pin / button)"
    )]
    Reenumeration { location: String, after: &'static str, waited: Duration },
    #[error(
        "the device reported {status} (state {state}) during {op}; the image was not accepted — check that the file is for this device and memory, then retry"
    )]
    Device { op: &'static str, status: DfuStatus, state: DfuState },
    #[error("the device sent an invalid status during {op}: {why}; reset the device and retry")]
    BadStatus { op: &'static str, why: StatusParseError },
    #[error(
        "the device is in state {state} during {op}, expected {expected}; reset the device and retry"
    )]
    UnexpectedState { op: &'static str, state: DfuState, expected: &'static str },
    #[error(
        "{op} did not finish within {waited:?} (device still in {state}); power-cycle the device and retry"
    )]
    Timeout { op: &'static str, state: DfuState, waited: Duration },
    #[error("the image is empty: nothing to download")]
    EmptyImage,
    #[error(
        "this is a DfuSe device: a plain image has no addresses; build a DfuSe file (e.g. `dfuse-pack -b 0x08000000:fw.bin fw.dfu`) or give the start address"
    )]
    NeedsAddress,
    #[error("the device does not support download (bitCanDnload is clear)")]
    CannotDownload,
    #[error("the device does not support upload (bitCanUpload is clear)")]
    CannotUpload,
    #[error(
        "this is not a DfuSe device (bcdDFUVersion {version:#06x}); flash a plain DFU image instead"
    )]
    NotDfuse { version: u16 },
    #[error("alternate setting {alt} has no DfuSe memory map string; cannot place addressed data")]
    NoMemoryMap { alt: u8 },
    #[error(
        "{len} bytes at {address:#010x} do not fit writable memory of \"{memory}\" ({segments}); the image is for another device or memory"
    )]
    AddressNotWritable { address: u32, len: usize, memory: String, segments: String },
    #[error(
        "readback verification failed at {address:#010x}: wrote SHA-256 {expected}, read back {actual}; the device image is bad: flash again"
    )]
    VerifyMismatch { address: u32, expected: String, actual: String },
    #[error("the device's descriptors are malformed: {0}")]
    Descriptor(#[from] DescriptorError),
}

impl DfuError {
    /// Whether the same operation may succeed when tried again (a USB transfer that failed, a
    /// device that stalled or was slow to come back), as opposed to a device or an image that is
    /// wrong for the job.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            DfuError::Usb { .. }
                | DfuError::Reenumeration { .. }
                | DfuError::Timeout { .. }
                | DfuError::BadStatus { .. }
                | DfuError::UnexpectedState { .. }
                | DfuError::VerifyMismatch { .. }
        )
    }

    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            DfuError::Usb { .. } => "usb_io",
            DfuError::NoDevice { .. } => "usb_no_device",
            DfuError::NoDfuInterface { .. } | DfuError::NoFunctionalDescriptor => "not_dfu",
            DfuError::NoSuchAlt { .. } => "dfu_no_alt",
            DfuError::NotInDfuMode { .. } => "dfu_runtime_mode",
            DfuError::Reenumeration { .. } => "dfu_not_back",
            DfuError::Device { .. } => "device_refused",
            DfuError::BadStatus { .. } | DfuError::UnexpectedState { .. } => "dfu_bad_state",
            DfuError::Timeout { .. } => "device_timeout",
            DfuError::EmptyImage => "empty_image",
            DfuError::NeedsAddress | DfuError::NotDfuse { .. } => "dfu_wrong_format",
            DfuError::CannotDownload | DfuError::CannotUpload => "unsupported",
            DfuError::NoMemoryMap { .. } | DfuError::AddressNotWritable { .. } => {
                "dfu_wrong_memory"
            }
            DfuError::VerifyMismatch { .. } => "readback_mismatch",
            DfuError::Descriptor(_) => "bad_descriptor",
        }
    }
}

fn usb(op: &'static str) -> impl FnOnce(UsbError) -> DfuError {
    move |source| DfuError::Usb { op, source }
}

/// Run-time or DFU mode (the interface's `bInterfaceProtocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DfuMode {
    Runtime,
    Dfu,
}

/// One DFU alternate setting with its name and, for DfuSe, its memory map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DfuAlt {
    pub setting: AltSetting,
    /// The interface string (`iInterface`), if the device has one and gave it.
    pub name: Option<String>,
    pub memory_map: Option<MemoryMap>,
}

/// A DFU-capable device as listed on a bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DfuDeviceInfo {
    pub location: String,
    pub ids: UsbDeviceIds,
    /// The serial number, as the bus listing gives it (`None`: the device has none, or did not
    /// give it); it tells identical devices apart.
    pub serial: Option<String>,
    pub mode: DfuMode,
    pub functional: Option<FunctionalDescriptor>,
    pub alts: Vec<AltSetting>,
}

/// What a DFU device says about itself beyond the bus listing: its identity strings and, per DFU
/// alternate setting, the interface name and (DfuSe) memory map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DfuDescription {
    /// `iManufacturer`, when the device has one and gave it.
    pub manufacturer: Option<String>,
    /// `iProduct`, when the device has one and gave it.
    pub product: Option<String>,
    pub alts: Vec<DfuAlt>,
}

/// Read `device`'s identity strings and its DFU alternate settings' names and memory maps.
/// Only standard GET_DESCRIPTOR requests are sent: no interface is claimed and no DFU request is
/// made, so the device's state does not change. A string the device refuses is left out.
pub fn describe<B: UsbBus>(
    bus: &B,
    device: &DfuDeviceInfo,
    timeout: Duration,
) -> Result<DfuDescription, DfuError> {
    let mut dev = bus.open(&device.location).map_err(usb("opening the USB device"))?;
    let mut head = [0u8; 18];
    let n = dev
        .control_in(crate::usb::get_descriptor(1, 0, 0), &mut head, timeout)
        .map_err(usb("reading the device descriptor"))?;
    let index = |i: usize| if n == 18 && head[1] == 1 { head[i] } else { 0 };
    let mut text = |i: u8| match i {
        0 => None,
        i => dev.string(i, timeout).ok().map(|t| t.trim_end_matches('\0').to_string()),
    };
    let manufacturer = text(index(14));
    let product = text(index(15));
    let dfuse = device.functional.is_some_and(|f| f.is_dfuse());
    let mut alts = Vec::new();
    for setting in device.alts.iter().filter(|a| a.is_dfu()) {
        let name = text(setting.string_index);
        // A malformed map is shown as the name alone: describing never fails on it.
        let memory_map = match (&name, dfuse) {
            (Some(n), true) => MemoryMap::parse(n).ok().flatten(),
            _ => None,
        };
        alts.push(DfuAlt { setting: setting.clone(), name, memory_map });
    }
    Ok(DfuDescription { manufacturer, product, alts })
}

/// Every device on `bus` with a DFU interface (run-time or DFU mode), with the serial number the
/// bus listing gives. Opens no device for DFU requests; a device that does not give its serial
/// number is listed without it.
pub fn list<B: UsbBus>(bus: &B) -> Result<Vec<DfuDeviceInfo>, DfuError> {
    let entries = bus.list().map_err(usb("listing USB devices"))?;
    Ok(entries
        .into_iter()
        .filter_map(|e| {
            let alts: Vec<AltSetting> = e.interfaces.into_iter().filter(|a| a.is_dfu()).collect();
            let mode = if alts.iter().any(|a| a.is_dfu_mode()) {
                DfuMode::Dfu
            } else if alts.iter().any(|a| a.is_dfu_runtime()) {
                DfuMode::Runtime
            } else {
                return None;
            };
            let functional = alts.iter().find_map(|a| a.dfu);
            Some(DfuDeviceInfo {
                location: e.location,
                ids: e.ids,
                serial: e.serial,
                mode,
                functional,
                alts,
            })
        })
        .collect())
}

/// How a download was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifiedBy {
    /// Read back with UPLOAD; the SHA-256 matched.
    Readback,
    /// The device cannot upload: only its status said the download succeeded.
    StatusOnly,
}

/// The outcome of a successful download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DownloadReport {
    /// The device's identity (in DFU mode).
    pub ids: UsbDeviceIds,
    pub bytes: u64,
    /// SHA-256 (hex) of the bytes sent, in order.
    pub sha256: String,
    pub verified_by: VerifiedBy,
    /// How manifestation ended (plain DFU), or that the device left DFU mode (DfuSe with leave).
    pub manifestation: Manifestation,
}

/// How the device finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Manifestation {
    /// Manifestation-tolerant device back in dfuIDLE.
    BackToIdle,
    /// Non-tolerant device: reset issued (or the device reset itself) to run the new firmware.
    Reset,
    /// DfuSe: the device was told to leave DFU mode and run the firmware.
    Left,
    /// DfuSe without leave: the device stays in DFU mode.
    StayedInDfu,
}

/// One addressed block of a DfuSe image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DfuseElement {
    pub address: u32,
    pub data: Vec<u8>,
}

/// The elements for one alternate setting (memory) of a DfuSe device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DfuseTarget {
    pub alt_setting: u8,
    pub elements: Vec<DfuseElement>,
}

/// DfuSe download choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DfuseOptions {
    /// Erase the whole device first instead of the pages the image touches.
    pub mass_erase: bool,
    /// Leave DFU mode and start the firmware afterwards.
    pub leave: bool,
}

/// One opened DFU interface.
#[derive(Debug)]
pub struct DfuDevice<D: UsbControl> {
    dev: D,
    location: String,
    ids: UsbDeviceIds,
    mode: DfuMode,
    functional: FunctionalDescriptor,
    interface: u8,
    alt: u8,
    alts: Vec<DfuAlt>,
    opts: DfuOptions,
}

struct Clock<'a> {
    progress: &'a dyn Progress,
    start: Instant,
    total: u64,
}

impl Clock<'_> {
    fn report(&self, done: u64) {
        self.progress.transfer(TransferProgress {
            done,
            total: self.total,
            elapsed: self.start.elapsed(),
        });
    }
}

impl<D: UsbControl> DfuDevice<D> {
    /// Open the DFU interface of the device at `location` (DFU mode preferred over run-time),
    /// reading its alternate settings' strings and DfuSe memory maps.
    pub fn open<B: UsbBus<Device = D>>(
        bus: &B,
        location: &str,
        opts: DfuOptions,
    ) -> Result<Self, DfuError> {
        let info = list(bus)?.into_iter().find(|d| d.location == location).ok_or_else(|| {
            let any = bus.list().map(|l| l.iter().any(|e| e.location == location));
            if matches!(any, Ok(true)) {
                DfuError::NoDfuInterface { location: location.to_string() }
            } else {
                DfuError::NoDevice { location: location.to_string() }
            }
        })?;
        let functional = info.functional.ok_or(DfuError::NoFunctionalDescriptor)?;
        let want = match info.mode {
            DfuMode::Dfu => AltSetting::is_dfu_mode,
            DfuMode::Runtime => AltSetting::is_dfu_runtime,
        };
        let settings: Vec<AltSetting> = info.alts.into_iter().filter(want).collect();
        let first = settings
            .first()
            .cloned()
            .ok_or_else(|| DfuError::NoDfuInterface { location: location.to_string() })?;
        let mut dev = bus.open(location).map_err(usb("opening the USB device"))?;
        let ids =
            dev.device_ids(opts.control_timeout).map_err(usb("reading the device descriptor"))?;
        let mut alts = Vec::with_capacity(settings.len());
        for setting in settings {
            // Some devices stall string requests; a missing name is not fatal.
            let name = match setting.string_index {
                0 => None,
                i => dev.string(i, opts.control_timeout).ok(),
            };
            let memory_map = match (&name, functional.is_dfuse()) {
                (Some(n), true) => MemoryMap::parse(n)?,
                _ => None,
            };
            alts.push(DfuAlt { setting, name, memory_map });
        }
        dev.select_interface(first.interface, first.alt_setting)
            .map_err(usb("claiming the DFU interface"))?;
        Ok(Self {
            dev,
            location: location.to_string(),
            ids,
            mode: info.mode,
            functional,
            interface: first.interface,
            alt: first.alt_setting,
            alts,
            opts,
        })
    }

    pub fn ids(&self) -> UsbDeviceIds {
        self.ids
    }
    pub fn location(&self) -> &str {
        &self.location
    }
    pub fn mode(&self) -> DfuMode {
        self.mode
    }
    pub fn functional(&self) -> FunctionalDescriptor {
        self.functional
    }
    pub fn alts(&self) -> &[DfuAlt] {
        &self.alts
    }
    /// The USB handle, for callers that need a raw request.
    pub fn usb(&mut self) -> &mut D {
        &mut self.dev
    }

    /// Select another alternate setting of the DFU interface.
    pub fn select_alt(&mut self, alt: u8) -> Result<(), DfuError> {
        if !self.alts.iter().any(|a| a.setting.alt_setting == alt) {
            return Err(DfuError::NoSuchAlt {
                alt,
                available: self.alts.iter().map(|a| a.setting.alt_setting).collect(),
            });
        }
        self.dev
            .select_interface(self.interface, alt)
            .map_err(usb("selecting the alternate setting"))?;
        self.alt = alt;
        Ok(())
    }

    fn setup(&self, request_type: u8, request: u8, value: u16) -> Setup {
        Setup { request_type, request, value, index: self.interface as u16 }
    }

    fn out(
        &mut self,
        op: &'static str,
        request: u8,
        value: u16,
        data: &[u8],
    ) -> Result<(), DfuError> {
        let s = self.setup(REQ_OUT, request, value);
        let n = self.dev.control_out(s, data, self.opts.control_timeout).map_err(usb(op))?;
        if n != data.len() {
            return Err(DfuError::Usb {
                op,
                source: UsbError::Short { got: n, expected: data.len() },
            });
        }
        Ok(())
    }

    fn need_dfu_mode(&self, op: &'static str) -> Result<(), DfuError> {
        if self.mode == DfuMode::Dfu { Ok(()) } else { Err(DfuError::NotInDfuMode { op }) }
    }

    /// GETSTATUS.
    pub fn get_status(&mut self) -> Result<StatusResponse, DfuError> {
        self.status("GETSTATUS")
    }

    fn status(&mut self, op: &'static str) -> Result<StatusResponse, DfuError> {
        let s = self.setup(REQ_IN, GETSTATUS, 0);
        let mut buf = [0u8; StatusResponse::LEN];
        let n = self.dev.control_in(s, &mut buf, self.opts.control_timeout).map_err(usb(op))?;
        StatusResponse::parse(&buf[..n]).map_err(|why| DfuError::BadStatus { op, why })
    }

    /// GETSTATE.
    pub fn get_state(&mut self) -> Result<DfuState, DfuError> {
        const OP: &str = "GETSTATE";
        let s = self.setup(REQ_IN, GETSTATE, 0);
        let mut buf = [0u8; 1];
        let n = self.dev.control_in(s, &mut buf, self.opts.control_timeout).map_err(usb(OP))?;
        if n < 1 {
            return Err(DfuError::BadStatus {
                op: OP,
                why: StatusParseError::Short { got: n, expected: 1 },
            });
        }
        DfuState::from_u8(buf[0])
            .ok_or(DfuError::BadStatus { op: OP, why: StatusParseError::UnknownState(buf[0]) })
    }

    /// CLRSTATUS (leaves dfuERROR for dfuIDLE).
    pub fn clear_status(&mut self) -> Result<(), DfuError> {
        self.out("CLRSTATUS", CLRSTATUS, 0, &[])
    }

    /// ABORT (back to dfuIDLE from the idle states of download and upload).
    pub fn abort(&mut self) -> Result<(), DfuError> {
        self.out("ABORT", ABORT, 0, &[])
    }

    /// Bring the device to dfuIDLE: CLRSTATUS out of dfuERROR, ABORT out of the idle states.
    pub fn ensure_idle(&mut self) -> Result<(), DfuError> {
        const OP: &str = "preparing the device";
        self.need_dfu_mode(OP)?;
        for _ in 0..3 {
            let st = self.status(OP)?;
            match st.state {
                DfuState::DfuIdle => return Ok(()),
                DfuState::DfuError => self.clear_status()?,
                DfuState::DfuDnloadIdle
                | DfuState::DfuUploadIdle
                | DfuState::DfuDnloadSync
                | DfuState::DfuManifestSync => self.abort()?,
                state => {
                    return Err(DfuError::UnexpectedState { op: OP, state, expected: "dfuIDLE" });
                }
            }
        }
        let state = self.status(OP)?.state;
        if state == DfuState::DfuIdle {
            Ok(())
        } else {
            Err(DfuError::UnexpectedState { op: OP, state, expected: "dfuIDLE" })
        }
    }

    /// Sleep `bwPollTimeout`, capped by `max_poll` and the deadline (at least 1 ms).
    fn poll_sleep(&self, st: &StatusResponse, deadline: Instant) {
        let wanted = Duration::from_millis(st.poll_timeout_ms as u64).min(self.opts.max_poll);
        let left = deadline.saturating_duration_since(Instant::now());
        std::thread::sleep(wanted.min(left).max(Duration::from_millis(1)));
    }

    /// The device's error status as a [`DfuError`], after trying to clear it for the next attempt.
    fn device_error(&mut self, op: &'static str, st: StatusResponse) -> DfuError {
        let _ = self.clear_status();
        DfuError::Device { op, status: st.status, state: st.state }
    }

    /// After a DNLOAD request: poll GETSTATUS until dfuDNLOAD-IDLE.
    fn wait_dnload_idle(&mut self, op: &'static str) -> Result<(), DfuError> {
        let started = Instant::now();
        let deadline = started + self.opts.busy_timeout;
        loop {
            let st = self.status(op)?;
            if st.status != DfuStatus::Ok || st.state == DfuState::DfuError {
                return Err(self.device_error(op, st));
            }
            match st.state {
                DfuState::DfuDnloadIdle => return Ok(()),
                DfuState::DfuDnbusy | DfuState::DfuDnloadSync => {
                    if Instant::now() >= deadline {
                        return Err(DfuError::Timeout {
                            op,
                            state: st.state,
                            waited: started.elapsed(),
                        });
                    }
                    self.poll_sleep(&st, deadline);
                }
                state => {
                    return Err(DfuError::UnexpectedState {
                        op,
                        state,
                        expected: "dfuDNLOAD-IDLE",
                    });
                }
            }
        }
    }

    /// DNLOAD one block and wait until the device has taken it. A stalled request is reported
    /// with the device's status when it has one.
    fn dnload(&mut self, op: &'static str, block: u16, data: &[u8]) -> Result<(), DfuError> {
        if let Err(e) = self.out(op, DNLOAD, block, data) {
            if let Ok(st) = self.status(op)
                && (st.state == DfuState::DfuError || st.status != DfuStatus::Ok)
            {
                return Err(self.device_error(op, st));
            }
            return Err(e);
        }
        self.wait_dnload_idle(op)
    }

    /// Run-time mode to DFU mode: DETACH, a USB reset unless the device detaches itself
    /// (`bitWillDetach`), then wait for the device to re-enumerate at the same location with a
    /// DFU-mode interface, and open it. A device already in DFU mode is returned unchanged.
    pub fn detach<B: UsbBus<Device = D>>(self, bus: &B) -> Result<Self, DfuError> {
        if self.mode == DfuMode::Dfu {
            return Ok(self);
        }
        let Self { mut dev, location, functional, interface, opts, .. } = self;
        let s = Setup {
            request_type: REQ_OUT,
            request: DETACH,
            value: functional.detach_timeout_ms,
            index: interface as u16,
        };
        match dev.control_out(s, &[], opts.control_timeout) {
            // A device may drop off the bus before it acknowledges DETACH.
            Ok(_) | Err(UsbError::Disconnected) => {}
            Err(e) => return Err(DfuError::Usb { op: "DETACH", source: e }),
        }
        if !functional.will_detach() {
            match dev.reset() {
                Ok(()) | Err(UsbError::Disconnected | UsbError::NotFound) => {}
                Err(e) => return Err(DfuError::Usb { op: "USB reset after DETACH", source: e }),
            }
        }
        drop(dev);
        Self::wait_for_dfu_mode(bus, &location, opts, "DETACH")
    }

    fn wait_for_dfu_mode<B: UsbBus<Device = D>>(
        bus: &B,
        location: &str,
        opts: DfuOptions,
        after: &'static str,
    ) -> Result<Self, DfuError> {
        let started = Instant::now();
        loop {
            // A bus that errors while the device re-enumerates is retried until the deadline.
            if let Ok(devices) = list(bus)
                && devices.iter().any(|d| d.location == location && d.mode == DfuMode::Dfu)
            {
                return Self::open(bus, location, opts);
            }
            if started.elapsed() >= opts.reenumerate_timeout {
                return Err(DfuError::Reenumeration {
                    location: location.to_string(),
                    after,
                    waited: started.elapsed(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn transfer_size(&self) -> usize {
        (self.functional.transfer_size as usize).max(1)
    }

    /// Plain DFU 1.1 download of `image`, manifestation, and readback verification where the
    /// device allows it.
    pub fn download(
        &mut self,
        image: &[u8],
        progress: &dyn Progress,
    ) -> Result<DownloadReport, DfuError> {
        self.need_dfu_mode("download")?;
        if !self.functional.can_download() {
            return Err(DfuError::CannotDownload);
        }
        if self.functional.is_dfuse() {
            // DNLOAD block 0 is a command to a DfuSe device, not data.
            return Err(DfuError::NeedsAddress);
        }
        if image.is_empty() {
            return Err(DfuError::EmptyImage);
        }
        self.ensure_idle()?;
        progress.phase("download");
        let clock = Clock { progress, start: Instant::now(), total: image.len() as u64 };
        clock.report(0);
        let xfer = self.transfer_size();
        let mut done = 0u64;
        for (i, chunk) in image.chunks(xfer).enumerate() {
            self.dnload("download", i as u16, chunk)?;
            done += chunk.len() as u64;
            clock.report(done);
        }
        let last_block = image.len().div_ceil(xfer) as u16;
        let manifestation = self.manifest(last_block)?;
        let sha256 = hex::encode(Sha256::digest(image));
        let verified_by =
            if self.functional.can_upload() && manifestation == Manifestation::BackToIdle {
                progress.phase("verify");
                let back = self.upload(image.len(), progress)?;
                let actual = hex::encode(Sha256::digest(&back));
                if actual != sha256 {
                    return Err(DfuError::VerifyMismatch { address: 0, expected: sha256, actual });
                }
                VerifiedBy::Readback
            } else {
                progress.note("the device cannot read its image back: only its status was checked");
                VerifiedBy::StatusOnly
            };
        Ok(DownloadReport {
            ids: self.ids,
            bytes: image.len() as u64,
            sha256,
            verified_by,
            manifestation,
        })
    }

    /// The zero-length DNLOAD that ends a download, then wait for manifestation to finish.
    fn manifest(&mut self, block: u16) -> Result<Manifestation, DfuError> {
        const OP: &str = "manifestation";
        self.out(OP, DNLOAD, block, &[])?;
        let tolerant = self.functional.manifestation_tolerant();
        let started = Instant::now();
        let deadline = started + self.opts.manifest_timeout;
        loop {
            let st = match self.status(OP) {
                Ok(st) => st,
                // A non-tolerant device may reset into its new firmware without answering.
                Err(DfuError::Usb { source: UsbError::Disconnected | UsbError::Stall, .. })
                    if !tolerant =>
                {
                    return Ok(Manifestation::Reset);
                }
                Err(e) => return Err(e),
            };
            if st.status != DfuStatus::Ok || st.state == DfuState::DfuError {
                return Err(self.device_error(OP, st));
            }
            match st.state {
                DfuState::DfuIdle => return Ok(Manifestation::BackToIdle),
                DfuState::DfuManifestWaitReset => {
                    match self.dev.reset() {
                        Ok(()) | Err(UsbError::Disconnected | UsbError::NotFound) => {}
                        Err(e) => {
                            return Err(DfuError::Usb {
                                op: "USB reset after manifestation",
                                source: e,
                            });
                        }
                    }
                    return Ok(Manifestation::Reset);
                }
                DfuState::DfuManifestSync | DfuState::DfuManifest => {
                    if Instant::now() >= deadline {
                        return Err(DfuError::Timeout {
                            op: OP,
                            state: st.state,
                            waited: started.elapsed(),
                        });
                    }
                    self.poll_sleep(&st, deadline);
                }
                state => {
                    return Err(DfuError::UnexpectedState {
                        op: OP,
                        state,
                        expected: "dfuMANIFEST",
                    });
                }
            }
        }
    }

    /// Plain DFU UPLOAD of up to `len` bytes from the start of the device's image.
    pub fn upload(&mut self, len: usize, progress: &dyn Progress) -> Result<Vec<u8>, DfuError> {
        const OP: &str = "upload";
        self.need_dfu_mode(OP)?;
        if !self.functional.can_upload() {
            return Err(DfuError::CannotUpload);
        }
        self.ensure_idle()?;
        let clock = Clock { progress, start: Instant::now(), total: len as u64 };
        let xfer = self.transfer_size();
        let mut out = Vec::with_capacity(len);
        let mut block: u16 = 0;
        while out.len() < len {
            let mut buf = vec![0u8; xfer];
            let s = self.setup(REQ_IN, UPLOAD, block);
            let n = self.dev.control_in(s, &mut buf, self.opts.control_timeout).map_err(usb(OP))?;
            out.extend_from_slice(&buf[..n]);
            clock.report(out.len().min(len) as u64);
            if n < xfer {
                // A short block ends the upload; the device is back in dfuIDLE.
                out.truncate(len);
                return Ok(out);
            }
            block = block.wrapping_add(1);
        }
        out.truncate(len);
        self.abort()?;
        Ok(out)
    }

    fn dfuse_check(&self) -> Result<(), DfuError> {
        if self.functional.is_dfuse() {
            Ok(())
        } else {
            Err(DfuError::NotDfuse { version: self.functional.dfu_version })
        }
    }

    fn memory_map(&self, alt: u8) -> Result<MemoryMap, DfuError> {
        self.alts
            .iter()
            .find(|a| a.setting.alt_setting == alt)
            .ok_or_else(|| DfuError::NoSuchAlt {
                alt,
                available: self.alts.iter().map(|a| a.setting.alt_setting).collect(),
            })?
            .memory_map
            .clone()
            .ok_or(DfuError::NoMemoryMap { alt })
    }

    /// A DfuSe command (DNLOAD block 0), executed on the next GETSTATUS.
    fn dfuse_command(
        &mut self,
        op: &'static str,
        command: u8,
        address: Option<u32>,
    ) -> Result<(), DfuError> {
        let mut b = vec![command];
        if let Some(a) = address {
            b.extend_from_slice(&a.to_le_bytes());
        }
        self.dnload(op, 0, &b)
    }

    /// DfuSe mass erase of the current alternate setting's memory.
    pub fn dfuse_mass_erase(&mut self) -> Result<(), DfuError> {
        self.need_dfu_mode("mass erase")?;
        self.dfuse_check()?;
        self.ensure_idle()?;
        self.dfuse_command("mass erase", DFUSE_ERASE, None)
    }

    /// DfuSe read of `len` bytes at `address` from the current alternate setting.
    pub fn dfuse_upload(
        &mut self,
        address: u32,
        len: usize,
        progress: &dyn Progress,
    ) -> Result<Vec<u8>, DfuError> {
        const OP: &str = "upload";
        self.need_dfu_mode(OP)?;
        self.dfuse_check()?;
        if !self.functional.can_upload() {
            return Err(DfuError::CannotUpload);
        }
        self.ensure_idle()?;
        let clock = Clock { progress, start: Instant::now(), total: len as u64 };
        let xfer = self.transfer_size();
        let mut out = Vec::with_capacity(len);
        // One set-address, then consecutive blocks from 2 (each read at the pointer plus
        // (block - 2) x wTransferSize, as dfu-util reads): a set-address waits the device's poll
        // timeout, a block does not. The address is set again before the block number would wrap.
        let mut block = u16::MAX;
        while out.len() < len {
            let want = xfer.min(len - out.len());
            if block == u16::MAX {
                let at = address.wrapping_add(out.len() as u32);
                self.dfuse_command(OP, DFUSE_SET_ADDRESS, Some(at))?;
                self.abort()?;
                block = 2;
            }
            let mut buf = vec![0u8; want];
            let s = self.setup(REQ_IN, UPLOAD, block);
            let n = self.dev.control_in(s, &mut buf, self.opts.control_timeout).map_err(usb(OP))?;
            if n < want {
                if let Ok(st) = self.status(OP)
                    && st.state == DfuState::DfuError
                {
                    return Err(self.device_error(OP, st));
                }
                return Err(DfuError::Usb {
                    op: OP,
                    source: UsbError::Short { got: n, expected: want },
                });
            }
            out.extend_from_slice(&buf[..n]);
            clock.report(out.len() as u64);
            block += 1;
            if block == u16::MAX {
                // dfuUPLOAD-IDLE accepts no DNLOAD (the next set-address): back to dfuIDLE.
                self.abort()?;
            }
        }
        // Back to dfuIDLE for whatever comes next.
        self.abort()?;
        Ok(out)
    }

    /// Check that every element lies in writable memory of its target before any request.
    fn dfuse_plan(&self, targets: &[DfuseTarget]) -> Result<Vec<MemoryMap>, DfuError> {
        let mut maps = Vec::with_capacity(targets.len());
        for t in targets {
            let map = self.memory_map(t.alt_setting)?;
            for e in &t.elements {
                let end = e.address as u64 + e.data.len() as u64;
                let mut at = e.address as u64;
                while at < end {
                    let seg = map.segment(at as u32).filter(|s| s.writable);
                    let Some(seg) = seg else {
                        let segments: Vec<String> = map
                            .segments
                            .iter()
                            .map(|s| {
                                format!(
                                    "{:#010x}..{:#010x}{}",
                                    s.start,
                                    s.end(),
                                    if s.writable { "" } else { " read-only" }
                                )
                            })
                            .collect();
                        return Err(DfuError::AddressNotWritable {
                            address: e.address,
                            len: e.data.len(),
                            memory: map.name.clone(),
                            segments: segments.join(", "),
                        });
                    };
                    at = seg.end();
                }
            }
            maps.push(map);
        }
        Ok(maps)
    }

    /// DfuSe download: per target (alternate setting) erase the touched pages (or mass erase),
    /// write every element in `wTransferSize` blocks addressed by block number after one
    /// set-address, read it back where possible, and optionally leave DFU mode.
    pub fn dfuse_download(
        &mut self,
        targets: &[DfuseTarget],
        options: DfuseOptions,
        progress: &dyn Progress,
    ) -> Result<DownloadReport, DfuError> {
        self.need_dfu_mode("download")?;
        self.dfuse_check()?;
        if !self.functional.can_download() {
            return Err(DfuError::CannotDownload);
        }
        if targets.iter().all(|t| t.elements.iter().all(|e| e.data.is_empty())) {
            return Err(DfuError::EmptyImage);
        }
        let maps = self.dfuse_plan(targets)?;
        let total: u64 =
            targets.iter().flat_map(|t| &t.elements).map(|e| e.data.len() as u64).sum();
        let mut sent = Sha256::new();
        let xfer = self.transfer_size();

        for (ti, (t, map)) in targets.iter().zip(&maps).enumerate() {
            self.select_alt(t.alt_setting)?;
            self.ensure_idle()?;
            progress.phase("erase");
            if options.mass_erase && ti == 0 {
                self.dfuse_command("mass erase", DFUSE_ERASE, None)?;
            } else if !options.mass_erase {
                let mut pages = BTreeSet::new();
                for e in &t.elements {
                    let end = e.address as u64 + e.data.len() as u64;
                    let mut at = e.address as u64;
                    while at < end {
                        let Some((page, size)) = map.page(at as u32) else { break };
                        if map.segment(page).is_some_and(|s| s.erasable) {
                            pages.insert(page);
                        }
                        at = page as u64 + size.max(1) as u64;
                    }
                }
                let clock = Clock { progress, start: Instant::now(), total: pages.len() as u64 };
                for (i, page) in pages.iter().enumerate() {
                    self.dfuse_command("page erase", DFUSE_ERASE, Some(*page))?;
                    clock.report(i as u64 + 1);
                }
            }
        }

        progress.phase("download");
        let clock = Clock { progress, start: Instant::now(), total };
        clock.report(0);
        let mut done = 0u64;
        for t in targets {
            self.select_alt(t.alt_setting)?;
            self.ensure_idle()?;
            for e in &t.elements {
                sent.update(&e.data);
                // One set-address per element, then consecutive blocks from 2: the device writes
                // block n at the pointer plus (n - 2) x wTransferSize (ST UM0424, AN3156). Every
                // set-address costs a poll timeout like a block does, so one per block would
                // double the time. The address is set again before the block number would wrap.
                let mut block = u16::MAX;
                for (i, chunk) in e.data.chunks(xfer).enumerate() {
                    if block == u16::MAX {
                        let at = e.address.wrapping_add((i * xfer) as u32);
                        self.dfuse_command("set address", DFUSE_SET_ADDRESS, Some(at))?;
                        block = 2;
                    }
                    self.dnload("download", block, chunk)?;
                    block += 1;
                    done += chunk.len() as u64;
                    clock.report(done);
                }
            }
        }
        let sha256 = hex::encode(sent.finalize());

        let verified_by = if self.functional.can_upload() {
            progress.phase("verify");
            let mut back = Sha256::new();
            for t in targets {
                self.select_alt(t.alt_setting)?;
                for e in &t.elements {
                    let data = self.dfuse_upload(e.address, e.data.len(), progress)?;
                    if data != e.data {
                        return Err(DfuError::VerifyMismatch {
                            address: e.address,
                            expected: hex::encode(Sha256::digest(&e.data)),
                            actual: hex::encode(Sha256::digest(&data)),
                        });
                    }
                    back.update(&data);
                }
            }
            let actual = hex::encode(back.finalize());
            if actual != sha256 {
                return Err(DfuError::VerifyMismatch { address: 0, expected: sha256, actual });
            }
            VerifiedBy::Readback
        } else {
            progress.note("the device cannot read its memory back: only its status was checked");
            VerifiedBy::StatusOnly
        };

        let manifestation = if options.leave {
            let start = targets
                .first()
                .and_then(|t| t.elements.first().map(|e| (t.alt_setting, e.address)));
            self.dfuse_leave(start)?;
            Manifestation::Left
        } else {
            Manifestation::StayedInDfu
        };
        Ok(DownloadReport { ids: self.ids, bytes: total, sha256, verified_by, manifestation })
    }

    /// Leave DFU mode: set the address pointer to the start address (if given), then a
    /// zero-length DNLOAD; the device manifests and jumps to the firmware, usually without
    /// answering further requests.
    pub fn dfuse_leave(&mut self, start: Option<(u8, u32)>) -> Result<(), DfuError> {
        const OP: &str = "leave";
        self.need_dfu_mode(OP)?;
        self.dfuse_check()?;
        if let Some((alt, address)) = start {
            self.select_alt(alt)?;
            self.ensure_idle()?;
            self.dfuse_command(OP, DFUSE_SET_ADDRESS, Some(address))?;
        } else {
            self.ensure_idle()?;
        }
        self.out(OP, DNLOAD, 2, &[])?;
        match self.status(OP) {
            Ok(st) if st.state == DfuState::DfuError || st.status != DfuStatus::Ok => {
                Err(self.device_error(OP, st))
            }
            Ok(_) | Err(DfuError::Usb { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
