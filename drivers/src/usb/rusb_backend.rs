//! The real USB backend: libusb through `rusb`. Deliberately thin — it moves bytes and maps
//! errors; descriptor decoding and every protocol decision live elsewhere.

use super::descriptor::{AltSetting, FunctionalDescriptor};
use super::{
    Os, Setup, UsbBus, UsbControl, UsbDeviceEntry, UsbDeviceIds, UsbError, permission_fix,
};
use std::time::Duration;

impl From<rusb::Error> for UsbError {
    fn from(e: rusb::Error) -> Self {
        map_error(e, Os::current(), None)
    }
}

/// Map a libusb error to a [`UsbError`]; `Access` becomes the permission error with the fix for
/// `os` (device ids, when known, make the fix exact).
pub fn map_error(e: rusb::Error, os: Os, ids: Option<UsbDeviceIds>) -> UsbError {
    match e {
        rusb::Error::Access => UsbError::Permission { fix: permission_fix(os, ids) },
        rusb::Error::NoDevice => UsbError::Disconnected,
        rusb::Error::NotFound => UsbError::NotFound,
        rusb::Error::Timeout => UsbError::Timeout,
        rusb::Error::Pipe => UsbError::Stall,
        rusb::Error::Busy => UsbError::Busy,
        other => UsbError::Other(other.to_string()),
    }
}

/// The system's USB buses.
#[derive(Debug, Default, Clone, Copy)]
pub struct RusbBus;

/// An opened device.
#[derive(Debug)]
pub struct RusbDevice {
    handle: rusb::DeviceHandle<rusb::GlobalContext>,
    ids: UsbDeviceIds,
    claimed: Option<u8>,
}

fn location(d: &rusb::Device<rusb::GlobalContext>) -> String {
    let ports = d.port_numbers().unwrap_or_default();
    if ports.is_empty() {
        format!("{}-addr{}", d.bus_number(), d.address())
    } else {
        let ports: Vec<String> = ports.iter().map(u8::to_string).collect();
        format!("{}-{}", d.bus_number(), ports.join("."))
    }
}

/// rusb decodes bcdDevice into decimal digits; put the BCD back together.
fn bcd(v: rusb::Version) -> u16 {
    let major = v.major() as u16;
    (major / 10) << 12
        | (major % 10) << 8
        | (v.minor() as u16 & 0xF) << 4
        | (v.sub_minor() as u16 & 0xF)
}

fn ids(dd: &rusb::DeviceDescriptor) -> UsbDeviceIds {
    UsbDeviceIds {
        vendor_id: dd.vendor_id(),
        product_id: dd.product_id(),
        bcd_device: bcd(dd.device_version()),
    }
}

/// How long reading one device's serial number for a listing may take.
const SERIAL_TIMEOUT: Duration = Duration::from_millis(200);

/// The serial number of `d`, or `None` when it has none or it cannot be read (the device refused
/// to be opened or to answer): a listing never fails because of it. On Linux the kernel's copy in
/// sysfs is read first, which needs no permission to open the device.
fn serial_number(
    d: &rusb::Device<rusb::GlobalContext>,
    dd: &rusb::DeviceDescriptor,
) -> Option<String> {
    dd.serial_number_string_index()?;
    #[cfg(target_os = "linux")]
    if let Some(s) = sysfs_serial(d) {
        return Some(s).filter(|s| !s.is_empty());
    }
    let handle = d.open().ok()?;
    let mut dev = RusbDevice { handle, ids: ids(dd), claimed: None };
    dev.serial_number(SERIAL_TIMEOUT).ok().flatten().filter(|s| !s.is_empty())
}

/// `/sys/bus/usb/devices/<bus>-<ports>/serial`: the serial number the kernel read at enumeration.
#[cfg(target_os = "linux")]
fn sysfs_serial(d: &rusb::Device<rusb::GlobalContext>) -> Option<String> {
    if d.port_numbers().ok()?.is_empty() {
        return None;
    }
    let text = std::fs::read_to_string(format!("/sys/bus/usb/devices/{}/serial", location(d)));
    Some(text.ok()?.trim_end_matches(['\n', '\0']).to_string())
}

fn entry(d: &rusb::Device<rusb::GlobalContext>) -> Result<UsbDeviceEntry, rusb::Error> {
    let dd = d.device_descriptor()?;
    let mut interfaces = Vec::new();
    if let Ok(cfg) = d.active_config_descriptor().or_else(|_| d.config_descriptor(0)) {
        for iface in cfg.interfaces() {
            for alt in iface.descriptors() {
                interfaces.push(AltSetting {
                    interface: alt.interface_number(),
                    alt_setting: alt.setting_number(),
                    class: alt.class_code(),
                    subclass: alt.sub_class_code(),
                    protocol: alt.protocol_code(),
                    string_index: alt.description_string_index().unwrap_or(0),
                    dfu: FunctionalDescriptor::find_in(alt.extra()).ok().flatten(),
                });
            }
        }
    }
    Ok(UsbDeviceEntry {
        location: location(d),
        ids: ids(&dd),
        serial: serial_number(d, &dd),
        interfaces,
    })
}

impl UsbBus for RusbBus {
    type Device = RusbDevice;

    fn list(&self) -> Result<Vec<UsbDeviceEntry>, UsbError> {
        let devices = match rusb::devices() {
            Ok(d) => d,
            // No USB subsystem at all (containers, CI): nothing attached.
            Err(rusb::Error::NotFound | rusb::Error::NotSupported) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        // A device that vanishes between listing and reading its descriptors is skipped.
        Ok(devices.iter().filter_map(|d| entry(&d).ok()).collect())
    }

    fn open(&self, location_wanted: &str) -> Result<RusbDevice, UsbError> {
        let devices = rusb::devices()?;
        let d =
            devices.iter().find(|d| location(d) == location_wanted).ok_or(UsbError::NotFound)?;
        let ids = ids(&d.device_descriptor()?);
        let handle = d.open().map_err(|e| map_error(e, Os::current(), Some(ids)))?;
        // Only Linux supports this; elsewhere it fails harmlessly.
        let _ = handle.set_auto_detach_kernel_driver(true);
        Ok(RusbDevice { handle, ids, claimed: None })
    }

    fn is_shared(&self) -> bool {
        true
    }
}

impl RusbDevice {
    fn map(&self, e: rusb::Error) -> UsbError {
        map_error(e, Os::current(), Some(self.ids))
    }
}

impl UsbControl for RusbDevice {
    fn control_in(&mut self, s: Setup, buf: &mut [u8], t: Duration) -> Result<usize, UsbError> {
        self.handle
            .read_control(s.request_type, s.request, s.value, s.index, buf, t)
            .map_err(|e| self.map(e))
    }

    fn control_out(&mut self, s: Setup, data: &[u8], t: Duration) -> Result<usize, UsbError> {
        self.handle
            .write_control(s.request_type, s.request, s.value, s.index, data, t)
            .map_err(|e| self.map(e))
    }

    fn select_interface(&mut self, interface: u8, alt_setting: u8) -> Result<(), UsbError> {
        if self.claimed != Some(interface) {
            self.handle.claim_interface(interface).map_err(|e| self.map(e))?;
            self.claimed = Some(interface);
        }
        self.handle.set_alternate_setting(interface, alt_setting).map_err(|e| self.map(e))
    }

    fn reset(&mut self) -> Result<(), UsbError> {
        match self.handle.reset() {
            // libusb reports a device that re-enumerated during the reset as "not found".
            Err(rusb::Error::NotFound) => Err(UsbError::Disconnected),
            other => other.map_err(|e| self.map(e)),
        }
    }
}
