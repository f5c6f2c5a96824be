//! USB device access behind a small seam.
//!
//! Everything a USB protocol driver needs is two traits:
//!
//! * [`UsbBus`] lists devices (identity, location and interface descriptors, read without opening
//!   the device, and the serial number where the device or the OS gives it) and opens one by its
//!   location;
//! * [`UsbControl`] is an opened device: control transfers on endpoint 0, selecting an interface's
//!   alternate setting, and a port reset.
//!
//! The real implementation is [`rusb_backend`] (libusb through `rusb`), kept thin on purpose: every
//! standard request (device, configuration and string descriptors) goes through
//! [`UsbControl::control_in`] and is decoded by [`descriptor`], so the same decoding runs against
//! real hardware, captured descriptor bytes and the in-process lab device (`fieldpatch-lab`), which
//! implements both traits without any bus. Re-enumeration (a device that resets into another mode)
//! is expressed as "the handle reports [`UsbError::Disconnected`], a device appears again at the
//! same [`UsbDeviceEntry::location`]".

pub mod descriptor;
pub mod rusb_backend;

use descriptor::{AltSetting, DescriptorError};
use serde::Serialize;
use std::fmt;
use std::time::Duration;

/// `bmRequestType`: device-to-host, standard, device.
pub const REQ_IN_STANDARD_DEVICE: u8 = 0x80;
/// Standard request GET_DESCRIPTOR.
pub const GET_DESCRIPTOR: u8 = 0x06;
/// Descriptor types.
pub const DT_DEVICE: u8 = 0x01;
pub const DT_CONFIG: u8 = 0x02;
pub const DT_STRING: u8 = 0x03;
/// US English, the language every DFU device offers.
pub const LANG_EN_US: u16 = 0x0409;

/// The identity a device reports in its device descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct UsbDeviceIds {
    pub vendor_id: u16,
    pub product_id: u16,
    pub bcd_device: u16,
}

impl fmt::Display for UsbDeviceIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:04x} (bcdDevice {:04x})",
            self.vendor_id, self.product_id, self.bcd_device
        )
    }
}

/// One device on a bus, as listed without opening it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsbDeviceEntry {
    /// Stable physical location (`bus-port.port...`); survives re-enumeration.
    pub location: String,
    pub ids: UsbDeviceIds,
    /// The serial number (`iSerialNumber` string), which tells identical devices (same VID:PID)
    /// apart. `None` when the device has none, or refused to give it (no permission to open it,
    /// busy, a stall): a listing never fails because of it.
    pub serial: Option<String>,
    /// Every interface alternate setting of the active configuration.
    pub interfaces: Vec<AltSetting>,
}

/// The 8-byte setup packet of a control transfer, minus `wLength` (the buffer's length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    pub request_type: u8,
    pub request: u8,
    pub value: u16,
    pub index: u16,
}

/// The operating system a permission fix is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Os {
    Linux,
    Windows,
    MacOs,
    Other,
}

impl Os {
    /// The OS this binary was built for.
    pub const fn current() -> Self {
        if cfg!(target_os = "linux") {
            Os::Linux
        } else if cfg!(target_os = "windows") {
            Os::Windows
        } else if cfg!(target_os = "macos") {
            Os::MacOs
        } else {
            Os::Other
        }
    }
}

/// How to get access to a USB device on `os` (device ids, if known, make the Linux rule exact).
pub fn permission_fix(os: Os, ids: Option<UsbDeviceIds>) -> String {
    match os {
        Os::Linux => {
            let (vid, pid) = ids
                .map(|i| (format!("{:04x}", i.vendor_id), format!("{:04x}", i.product_id)))
                .unwrap_or_else(|| ("VVVV".into(), "PPPP".into()));
            format!(
                "add a udev rule: write `SUBSYSTEM==\"usb\", ATTRS{{idVendor}}==\"{vid}\", ATTRS{{idProduct}}==\"{pid}\", MODE=\"0660\", TAG+=\"uaccess\"` to /etc/udev/rules.d/60-fieldpatch-dfu.rules, run `sudo udevadm control --reload-rules && sudo udevadm trigger`, then unplug and replug the device (installing Debian's dfu-util package adds rules for common DFU devices)"
            )
        }
        Os::Windows => "install the WinUSB driver for the device with Zadig (https://zadig.akeo.ie): Options > List All Devices, select the device (once in run-time mode and again in DFU mode, it enumerates twice), choose WinUSB and press Replace Driver; close any vendor tool that holds the device".into(),
        Os::MacOs => "macOS needs no driver or permission for DFU devices: another program holds the device; close vendor tools (e.g. STM32CubeProgrammer) and retry".into(),
        Os::Other => "give your user read/write access to the USB device node and retry".into(),
    }
}

/// A USB-level failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsbError {
    #[error("no permission to open the USB device: {fix}")]
    Permission { fix: String },
    #[error("the USB device disconnected (unplugged, or it reset itself); reconnect and retry")]
    Disconnected,
    #[error("the USB device was not found; check the cable and that it is powered")]
    NotFound,
    #[error("the USB device did not answer in time; replug it and retry")]
    Timeout,
    #[error(
        "the USB device stalled the request (it refused it in its current state); reset the device and retry"
    )]
    Stall,
    #[error("the USB device or interface is in use by another program; close it and retry")]
    Busy,
    #[error("the USB device sent {got} bytes where {expected} were expected")]
    Short { got: usize, expected: usize },
    #[error("the USB device sent a malformed descriptor: {0}")]
    Descriptor(#[from] DescriptorError),
    #[error("USB error: {0}")]
    Other(String),
}

/// An opened USB device: control transfers and interface selection.
pub trait UsbControl: Send {
    /// Device-to-host control transfer; returns the bytes received into `buf`.
    fn control_in(
        &mut self,
        setup: Setup,
        buf: &mut [u8],
        timeout: Duration,
    ) -> Result<usize, UsbError>;
    /// Host-to-device control transfer of `data`; returns the bytes sent.
    fn control_out(
        &mut self,
        setup: Setup,
        data: &[u8],
        timeout: Duration,
    ) -> Result<usize, UsbError>;
    /// Claim `interface` and select its `alt_setting`.
    fn select_interface(&mut self, interface: u8, alt_setting: u8) -> Result<(), UsbError>;
    /// USB port reset. A device that re-enumerates answers later requests on this handle with
    /// [`UsbError::Disconnected`].
    fn reset(&mut self) -> Result<(), UsbError>;

    /// GET_DESCRIPTOR(device), decoded.
    fn device_ids(&mut self, timeout: Duration) -> Result<UsbDeviceIds, UsbError> {
        let mut buf = [0u8; 18];
        let n = self.control_in(get_descriptor(DT_DEVICE, 0, 0), &mut buf, timeout)?;
        Ok(descriptor::parse_device_descriptor(&buf[..n])?)
    }

    /// GET_DESCRIPTOR(configuration 0), the whole hierarchy, decoded.
    fn config_interfaces(&mut self, timeout: Duration) -> Result<Vec<AltSetting>, UsbError> {
        let mut head = [0u8; 9];
        let n = self.control_in(get_descriptor(DT_CONFIG, 0, 0), &mut head, timeout)?;
        if n < 4 {
            return Err(UsbError::Short { got: n, expected: 9 });
        }
        let total = u16::from_le_bytes([head[2], head[3]]) as usize;
        let mut buf = vec![0u8; total.max(9)];
        let n = self.control_in(get_descriptor(DT_CONFIG, 0, 0), &mut buf, timeout)?;
        Ok(descriptor::parse_config_descriptor(&buf[..n])?)
    }

    /// The device's serial number: GET_DESCRIPTOR(device) for `iSerialNumber`, then that string
    /// (trailing NULs removed). `Ok(None)` when the device has no serial number.
    fn serial_number(&mut self, timeout: Duration) -> Result<Option<String>, UsbError> {
        let mut buf = [0u8; 18];
        let n = self.control_in(get_descriptor(DT_DEVICE, 0, 0), &mut buf, timeout)?;
        let Some(index) = descriptor::parse_serial_number_index(&buf[..n])? else {
            return Ok(None);
        };
        let text = self.string(index, timeout)?;
        Ok(Some(text.trim_end_matches('\0').to_string()))
    }

    /// GET_DESCRIPTOR(string `index`, en-US), decoded from UTF-16LE.
    fn string(&mut self, index: u8, timeout: Duration) -> Result<String, UsbError> {
        let mut buf = [0u8; 255];
        let n = self.control_in(get_descriptor(DT_STRING, index, LANG_EN_US), &mut buf, timeout)?;
        Ok(descriptor::parse_string_descriptor(&buf[..n])?)
    }
}

/// The setup packet of GET_DESCRIPTOR.
pub fn get_descriptor(kind: u8, index: u8, lang: u16) -> Setup {
    Setup {
        request_type: REQ_IN_STANDARD_DEVICE,
        request: GET_DESCRIPTOR,
        value: (kind as u16) << 8 | index as u16,
        index: lang,
    }
}

/// A bus: list devices, open one by location.
pub trait UsbBus {
    type Device: UsbControl;
    /// Every device currently attached (an empty list when there is no bus or no device).
    fn list(&self) -> Result<Vec<UsbDeviceEntry>, UsbError>;
    /// Open the device at `location`.
    fn open(&self, location: &str) -> Result<Self::Device, UsbError>;
    /// Whether the bus is this computer's (shared by every process on it), as opposed to one
    /// that lives inside this process (a simulated bus).
    fn is_shared(&self) -> bool {
        false
    }
}
