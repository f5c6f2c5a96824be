//! Opening devices by address: SMP over serial or UDP, USB DFU on a bus (the real one or the
//! lab's).

use super::dfu::DfuTarget;
use super::smp::SmpTarget;
use super::{FlashTarget, TargetError};
use crate::plan::{DeviceAddress, DeviceRecord};
use crate::session::Connector;
use async_trait::async_trait;
use fieldpatch_drivers::transport::{SerialLink, UdpLink, udp::parse_addr};
use fieldpatch_drivers::usb::UsbBus;

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
    let err = |e: &dyn std::fmt::Display| TargetError::Device(format!("{address}: {e}"));
    match address {
        DeviceAddress::Serial { port, baud } => {
            let link = SerialLink::open(port, *baud).map_err(|e| err(&e))?;
            Ok(Box::new(SmpTarget::new(link, address.to_string())))
        }
        DeviceAddress::Udp { addr } => {
            let peer = parse_addr(addr).map_err(|e| err(&e))?;
            let link = UdpLink::connect(peer).await.map_err(|e| err(&e))?;
            Ok(Box::new(SmpTarget::new(link, address.to_string())))
        }
        DeviceAddress::Usb { vid, pid, serial: _ } => {
            let entries = usb.list().map_err(|e| err(&e))?;
            let found = entries
                .iter()
                .find(|e| e.ids.vendor_id == *vid && e.ids.product_id == *pid)
                .ok_or_else(|| {
                    TargetError::Device(format!(
                        "{address}: no such USB device attached (check the cable and that it is in DFU or run-time mode)"
                    ))
                })?;
            Ok(Box::new(DfuTarget::new(usb.clone(), found.location.clone())))
        }
    }
}
