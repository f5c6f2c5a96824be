//! Opening devices by address: SMP over serial or UDP, USB DFU on a bus (the real one or the
//! lab's), SWUpdate gateways over HTTP (here without credentials; the facade opens them with
//! their keyring password through [`super::swupdate::KeyringConnector`]), ESP devices in their ROM
//! serial bootloader ([`open_esp`]).
//!
//! A USB address names a device by vendor and product id and, optionally, serial number
//! ([`select_usb`]): with a serial number it selects exactly the attached device that reports it;
//! without one it selects the only attached device with those ids, and is refused when several
//! identical devices are attached (the error lists their serial numbers), so a job never goes to
//! whichever board happens to be listed first.

use super::dfu::DfuTarget;
use super::esp::{EspTarget, EspTargetOptions};
use super::smp::SmpTarget;
use super::{FlashTarget, TargetError};
use crate::image::dfu_file::{self, DfuFile};
use crate::plan::{DeviceAddress, DeviceRecord};
use crate::progress::Progress;
use crate::session::Connector;
use crate::session::lock::{LockError, RunnerLock};
use async_trait::async_trait;
use fieldpatch_drivers::dfu::{
    DfuDevice, DfuDeviceInfo, DfuMode, DfuOptions, DfuseOptions, DownloadReport,
};
use fieldpatch_drivers::esp::{ConnectOptions, EspSerial, ROM_BAUD};
use fieldpatch_drivers::transport::{SerialLink, UdpLink, udp::parse_addr};
use fieldpatch_drivers::usb::UsbBus;

/// The USB buses of this computer (libusb).
pub use fieldpatch_drivers::usb::rusb_backend::RusbBus as SystemUsb;

/// Opens devices through the drivers. `usb` is the bus USB DFU devices are looked up on.
#[derive(Debug, Clone)]
pub struct DriverConnector<B> {
    pub usb: B,
}

#[async_trait]
impl<B> Connector for DriverConnector<B>
where
    B: UsbBus + Clone + Send + Sync + 'static,
    B::Device: 'static,
{
    async fn open(&self, device: &DeviceRecord) -> Result<Box<dyn FlashTarget>, TargetError> {
        open_address(&self.usb, &device.address).await
    }

    fn hold(&self, device: &DeviceRecord) -> Result<Option<RunnerLock>, LockError> {
        // A simulated USB bus belongs to one process: nobody else can reach its devices.
        if matches!(device.address, DeviceAddress::Usb { .. }) && !self.usb.is_shared() {
            return Ok(None);
        }
        // An ESP device is its serial port, whatever baud or reset mode an address names.
        if let DeviceAddress::Esp { port, .. } = &device.address {
            return RunnerLock::device(&format!("esp:{port}")).map(Some);
        }
        RunnerLock::device(&device.address.to_string()).map(Some)
    }

    fn dfu_devices(&self) -> Result<Vec<DfuDeviceInfo>, TargetError> {
        dfu_devices(&self.usb)
    }

    fn dfu_describe(
        &self,
        device: &DfuDeviceInfo,
    ) -> Result<fieldpatch_drivers::dfu::DfuDescription, TargetError> {
        Ok(fieldpatch_drivers::dfu::describe(&self.usb, device, DESCRIBE_TIMEOUT)?)
    }

    fn dfu_download(
        &self,
        location: &str,
        file: &DfuFile,
        options: DfuseOptions,
        progress: &dyn Progress,
    ) -> Result<DownloadReport, TargetError> {
        dfu_download(&self.usb, location, file, options, progress)
    }
}

/// How long each descriptor request of [`Connector::dfu_describe`] may take.
const DESCRIBE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// Open the device at `address`.
pub async fn open_address<B>(
    usb: &B,
    address: &DeviceAddress,
) -> Result<Box<dyn FlashTarget>, TargetError>
where
    B: UsbBus + Clone + Send + Sync + 'static,
    B::Device: 'static,
{
    let open_err = |e: &dyn std::fmt::Display, transient: bool| TargetError::Open {
        address: address.to_string(),
        reason: e.to_string(),
        transient,
    };
    match address {
        DeviceAddress::Serial { port, baud } => {
            let link = SerialLink::open(port, *baud).map_err(|e| {
                let transient = e.is_transient();
                open_err(&e, transient)
            })?;
            Ok(Box::new(SmpTarget::new(link, address.to_string())))
        }
        DeviceAddress::Udp { addr } => {
            let peer = parse_addr(addr).map_err(|e| open_err(&e, false))?;
            let link = UdpLink::connect(peer).await.map_err(|e| {
                let transient = e.is_transient();
                open_err(&e, transient)
            })?;
            Ok(Box::new(SmpTarget::new(link, address.to_string())))
        }
        DeviceAddress::Usb { vid, pid, serial } => {
            let devices = fieldpatch_drivers::dfu::list(usb).map_err(|e| open_err(&e, true))?;
            let found = select_usb(&devices, *vid, *pid, serial.as_deref())?;
            Ok(Box::new(DfuTarget::new(usb.clone(), found.location.clone())))
        }
        DeviceAddress::Swupdate { url, .. } => {
            let timeouts = fieldpatch_drivers::swupdate::Timeouts::default();
            Ok(Box::new(super::swupdate::SwupdateTarget::new(url, None, None, timeouts)?))
        }
        DeviceAddress::Esp { .. } => Ok(Box::new(open_esp(address).await?)),
    }
}

/// How often, and how far apart, [`open_esp`] tries a port that will not open.
const OPEN_RETRIES: u32 = 5;
const OPEN_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

/// The driver's options for an ESP address: its reset mode, its chip, the baud rate to switch to
/// for the upload (the ROM loader always starts at 115200).
pub fn esp_options(address: &DeviceAddress) -> Option<EspTargetOptions> {
    let DeviceAddress::Esp { baud, reset, chip, .. } = address else { return None };
    let reset = reset.driver_mode();
    Some(EspTargetOptions {
        connect: ConnectOptions { reset, ..ConnectOptions::default() },
        expected_chip: chip.as_deref().and_then(crate::plan::esp_chip),
        upload_baud: baud.filter(|b| *b != ROM_BAUD),
        ..EspTargetOptions::default()
    })
}

/// Open the ESP device at an `esp:` address: reset it into its ROM loader as the address says,
/// sync, detect the chip (refusing another than the address names) and attach its flash.
pub async fn open_esp(address: &DeviceAddress) -> Result<EspTarget<EspSerial>, TargetError> {
    let (DeviceAddress::Esp { port, .. }, Some(opts)) = (address, esp_options(address)) else {
        return Err(TargetError::reported(format!("{address} is not an ESP address")));
    };
    // A port a previous connection just closed is released once its reader thread sees the
    // stop (within one read timeout): try a few times before calling it unreachable.
    let mut tries = 0;
    let serial = loop {
        match EspSerial::open(port, ROM_BAUD) {
            Ok(s) => break s,
            Err(_) if tries < OPEN_RETRIES => {
                tries += 1;
                tokio::time::sleep(OPEN_RETRY_DELAY).await;
            }
            Err(e) => {
                let transient = e.is_transient();
                return Err(TargetError::Open {
                    address: address.to_string(),
                    reason: e.to_string(),
                    transient,
                });
            }
        }
    };
    EspTarget::connect(serial, address.to_string(), opts).await
}

/// A USB address that does not name exactly one attached DFU device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsbSelectError {
    /// No attached DFU device has these ids (and this serial number).
    #[error(
        "no USB DFU device {address} is attached{}: check the cable and that it is in DFU or run-time mode (`fieldpatch dfu list` shows what is attached)",
        others_text(.others)
    )]
    NotFound {
        address: String,
        /// The attached devices with the same ids (other serial numbers).
        others: Vec<UsbCandidate>,
    },
    /// Several attached DFU devices match: flashing "the first one" could flash the wrong board.
    #[error(
        "{address} matches {} attached USB DFU devices ({}): add the serial number of the one you mean to the address, e.g. {} (in a devices or addresses file: \"serial\": \"...\" in the address){}",
        .candidates.len(),
        candidates_text(.candidates),
        example(*.vid, *.pid, .candidates),
        no_serial_hint(.candidates)
    )]
    Ambiguous { address: String, vid: u16, pid: u16, candidates: Vec<UsbCandidate> },
}

impl UsbSelectError {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            UsbSelectError::NotFound { .. } => "device_unreachable",
            UsbSelectError::Ambiguous { .. } => "usb_ambiguous",
        }
    }

    /// Whether asking again may help: a device may be plugged in; an ambiguous address stays so.
    pub fn is_transient(&self) -> bool {
        matches!(self, UsbSelectError::NotFound { .. })
    }
}

/// An attached device an address could mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsbCandidate {
    pub location: String,
    pub serial: Option<String>,
}

impl std::fmt::Display for UsbCandidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.serial {
            Some(s) => write!(f, "serial {s} at {}", self.location),
            None => write!(f, "no serial number, at {}", self.location),
        }
    }
}

fn candidates_text(c: &[UsbCandidate]) -> String {
    c.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

fn others_text(c: &[UsbCandidate]) -> String {
    if c.is_empty() {
        String::new()
    } else {
        format!(" (attached with the same ids: {})", candidates_text(c))
    }
}

fn example(vid: u16, pid: u16, c: &[UsbCandidate]) -> DeviceAddress {
    let serial = c.iter().find_map(|c| c.serial.clone()).unwrap_or_else(|| "SERIAL".into());
    DeviceAddress::Usb { vid, pid, serial: Some(serial) }
}

fn no_serial_hint(c: &[UsbCandidate]) -> &'static str {
    if c.iter().any(|c| c.serial.is_none()) {
        "; a device without a serial number is named by its location (`fieldpatch dfu flash --device LOCATION`)"
    } else {
        ""
    }
}

/// The one attached DFU device the USB address `vid:pid[:serial]` names: the device with that
/// serial number, or, without one, the only device with those ids. Several matches are
/// [`UsbSelectError::Ambiguous`] (listing the candidates' serial numbers), none is
/// [`UsbSelectError::NotFound`].
pub fn select_usb<'a>(
    devices: &'a [DfuDeviceInfo],
    vid: u16,
    pid: u16,
    serial: Option<&str>,
) -> Result<&'a DfuDeviceInfo, UsbSelectError> {
    let address = DeviceAddress::Usb { vid, pid, serial: serial.map(str::to_string) }.to_string();
    let same_ids: Vec<&DfuDeviceInfo> =
        devices.iter().filter(|d| d.ids.vendor_id == vid && d.ids.product_id == pid).collect();
    let candidate = |d: &&DfuDeviceInfo| UsbCandidate {
        location: d.location.clone(),
        serial: d.serial.clone(),
    };
    let matching: Vec<&DfuDeviceInfo> = match serial {
        Some(s) => same_ids.iter().copied().filter(|d| d.serial.as_deref() == Some(s)).collect(),
        None => same_ids.clone(),
    };
    match matching.as_slice() {
        [one] => Ok(one),
        [] => Err(UsbSelectError::NotFound {
            address,
            others: same_ids.iter().map(candidate).collect(),
        }),
        several => Err(UsbSelectError::Ambiguous {
            address,
            vid,
            pid,
            candidates: several.iter().map(candidate).collect(),
        }),
    }
}

/// The USB DFU devices on `usb`, in run-time or DFU mode.
pub fn dfu_devices<B: UsbBus>(usb: &B) -> Result<Vec<DfuDeviceInfo>, TargetError> {
    Ok(fieldpatch_drivers::dfu::list(usb)?)
}

/// Download a checked DFU file to the device at USB `location` (detaching it first when it is in
/// run-time mode). Blocking: call it off the async runtime.
pub fn dfu_download<B: UsbBus>(
    usb: &B,
    location: &str,
    file: &DfuFile,
    options: DfuseOptions,
    progress: &dyn Progress,
) -> Result<DownloadReport, TargetError> {
    let mut dev = DfuDevice::open(usb, location, DfuOptions::default())?;
    if dev.mode() == DfuMode::Runtime {
        dev = dev.detach(usb)?;
    }
    Ok(dfu_file::download(&mut dev, file, options, progress)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldpatch_drivers::esp::ResetMode;

    #[test]
    fn an_esp_address_gives_the_driver_its_reset_mode_chip_and_upload_baud() {
        let a: DeviceAddress =
            "esp:/dev/ttyUSB0@921600?reset=usb-jtag&chip=esp32c3".parse().unwrap();
        let o = esp_options(&a).unwrap();
        assert_eq!(o.connect.reset, ResetMode::UsbSerialJtag);
        assert_eq!(o.expected_chip, Some(fieldpatch_drivers::esp::Chip::Esp32C3));
        assert_eq!(o.upload_baud, Some(921_600));
        let plain = esp_options(&"esp:/dev/ttyUSB0".parse().unwrap()).unwrap();
        assert_eq!(plain.connect.reset, ResetMode::Classic, "real adapters auto-reset");
        assert_eq!((plain.upload_baud, plain.expected_chip), (None, None));
        let rom = esp_options(&"esp:/dev/pts/3@115200?reset=none".parse().unwrap()).unwrap();
        assert_eq!(rom.connect.reset, ResetMode::NoReset);
        assert_eq!(rom.upload_baud, None, "the ROM's own rate needs no baud change");
        assert!(esp_options(&"serial:/dev/ttyUSB0@115200".parse().unwrap()).is_none());
    }
}
