//! Opening devices by address: SMP over serial or UDP, USB DFU on a bus (the real one or the
//! lab's).

use super::dfu::DfuTarget;
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
        RunnerLock::device(&device.address.to_string()).map(Some)
    }

    fn dfu_devices(&self) -> Result<Vec<DfuDeviceInfo>, TargetError> {
        dfu_devices(&self.usb)
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
        DeviceAddress::Usb { vid, pid, serial: _ } => {
            let entries = usb.list().map_err(|e| open_err(&e, true))?;
            let found = entries
                .iter()
                .find(|e| e.ids.vendor_id == *vid && e.ids.product_id == *pid)
                .ok_or_else(|| {
                    open_err(
                        &"no such USB device attached (check the cable and that it is in DFU or run-time mode)",
                        true,
                    )
                })?;
            Ok(Box::new(DfuTarget::new(usb.clone(), found.location.clone())))
        }
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
