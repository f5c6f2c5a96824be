//! A lab site: simulated devices speaking the real protocols over real plumbing (MCUboot SMP
//! devices on UDP sockets and on a pty serial console, a USB DFU board behind the lab bus) and the
//! inventory's [`DeviceRecord`]s that find them.
//!
//! ```ignore
//! let site = SiteBuilder::new()
//!     .console("sensor-serial", "sensor", Criticality::Normal)
//!     .udp_sensors(3, "sensor", Criticality::Normal, |i| format!("sensor-lan-{i}"))
//!     .dfu_board("board-usb", "board", "1.0.0".parse().unwrap(), Criticality::Normal)
//!     .start()
//!     .unwrap();
//! ```
//!
//! Device settings (`initial_image`, `flash_speed`, `reboot_time`) apply to the SMP devices added
//! after them; each SMP device's initial image carries a distinct test payload (seeds count up
//! from `first_seed` in the order devices are added). Every device reports its record's vendor,
//! model and hardware revision and a serial number of its own ([`serial_number`] of its id), which
//! its record carries too. Records come console first, then the sensors, then the board. Devices
//! stop when the site is dropped.

use fieldpatch_core::flash::connect::DriverConnector;
use fieldpatch_core::model::{DeviceIdentity, Version};
use fieldpatch_core::plan::{Criticality, DeviceAddress, DeviceRecord};
use fieldpatch_lab::dfu::{LabDfu, LabDfuConfig, LabUsbBus};
use fieldpatch_lab::pty::PtyError;
use fieldpatch_lab::smp::mcuboot::{self, build_image, test_payload};
use fieldpatch_lab::smp::serial::{SerialServer, serve_pty};
use fieldpatch_lab::smp::udp::{NetConditions, UdpServer, serve_udp};
use fieldpatch_lab::smp::{DeviceConfig, DeviceIdentity as LabIdentity, SmpDevice};
use std::time::Duration;

/// USB ids of the lab DFU board.
pub const BOARD_VID: u16 = 0x1209;
/// USB ids of the lab DFU board.
pub const BOARD_PID: u16 = 0x0002;

/// An inventory record for a device of `vendor`/`model` at `address` (no hardware revision,
/// default criticality, no windows, no credential).
pub fn record(id: &str, vendor: &str, model: &str, address: DeviceAddress) -> DeviceRecord {
    DeviceRecord {
        id: id.into(),
        address,
        identity: DeviceIdentity {
            vendor: Some(vendor.into()),
            model: Some(model.into()),
            ..Default::default()
        },
        criticality: Criticality::default(),
        windows: vec![],
        credential: None,
        health_url: None,
    }
}

/// The serial number a site device reports and its record carries: `SN-` and its id in capitals.
pub fn serial_number(id: &str) -> String {
    format!("SN-{}", id.to_ascii_uppercase())
}

/// Serve `device` on a free loopback UDP port.
pub fn serve_on_loopback(device: &SmpDevice, net: NetConditions) -> std::io::Result<UdpServer> {
    serve_udp(device.clone(), "127.0.0.1:0".parse().expect("a socket address"), net)
}

/// Errors starting a lab site.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error(transparent)]
    Pty(#[from] PtyError),
    #[error(transparent)]
    Udp(#[from] std::io::Error),
}

#[derive(Debug, Clone)]
struct Smp {
    version: mcuboot::Version,
    image_len: usize,
    flash_bytes_per_sec: f64,
    reboot_time: Option<Duration>,
}

#[derive(Debug, Clone)]
struct Planned {
    id: String,
    model: String,
    criticality: Criticality,
    smp: Smp,
    seed: u8,
}

/// How a [`LabSite`] is made.
#[derive(Debug, Clone)]
pub struct SiteBuilder {
    vendor: String,
    hardware_revision: Option<String>,
    smp: Smp,
    next_seed: u8,
    baud: u32,
    net: NetConditions,
    console: Option<Planned>,
    sensors: Vec<Planned>,
    board: Option<(String, String, Version, Criticality)>,
}

impl Default for SiteBuilder {
    fn default() -> Self {
        SiteBuilder::new()
    }
}

impl SiteBuilder {
    /// An empty site: vendor `Lab`, no hardware revision, SMP devices running 1.0.0 over a
    /// 4 KiB payload and flashing at the lab default (512 KiB/s), seeds from 0, console at
    /// 115200 baud, UDP without added latency or loss.
    pub fn new() -> SiteBuilder {
        SiteBuilder {
            vendor: "Lab".into(),
            hardware_revision: None,
            smp: Smp {
                version: mcuboot::Version { major: 1, minor: 0, revision: 0, build: 0 },
                image_len: 4096,
                flash_bytes_per_sec: DeviceConfig::default().flash_bytes_per_sec,
                reboot_time: None,
            },
            next_seed: 0,
            baud: 115_200,
            net: NetConditions::default(),
            console: None,
            sensors: vec![],
            board: None,
        }
    }

    /// The vendor in every record.
    pub fn vendor(mut self, vendor: &str) -> Self {
        self.vendor = vendor.into();
        self
    }

    /// The hardware revision in every record.
    pub fn hardware_revision(mut self, rev: &str) -> Self {
        self.hardware_revision = Some(rev.into());
        self
    }

    /// The seed of the next SMP device's test payload.
    pub fn first_seed(mut self, seed: u8) -> Self {
        self.next_seed = seed;
        self
    }

    /// What the next SMP devices run: `version` over a `len`-byte test payload.
    pub fn initial_image(mut self, version: mcuboot::Version, len: usize) -> Self {
        self.smp.version = version;
        self.smp.image_len = len;
        self
    }

    /// How fast the next SMP devices write flash.
    pub fn flash_speed(mut self, bytes_per_sec: f64) -> Self {
        self.smp.flash_bytes_per_sec = bytes_per_sec;
        self
    }

    /// How long the next SMP devices are away after a reset.
    pub fn reboot_time(mut self, t: Duration) -> Self {
        self.smp.reboot_time = Some(t);
        self
    }

    /// Link conditions of every UDP device.
    pub fn net(mut self, net: NetConditions) -> Self {
        self.net = net;
        self
    }

    fn plan(&mut self, id: String, model: &str, criticality: Criticality) -> Planned {
        let seed = self.next_seed;
        self.next_seed = self.next_seed.wrapping_add(1);
        Planned { id, model: model.into(), criticality, smp: self.smp.clone(), seed }
    }

    /// One SMP device on a pty serial console. Where the platform has no pseudo-terminals the
    /// device is made but not served, and has no record.
    pub fn console(mut self, id: &str, model: &str, criticality: Criticality) -> Self {
        self.console = Some(self.plan(id.into(), model, criticality));
        self
    }

    /// `n` SMP devices, each on its own UDP socket, named `name(0)`, `name(1)`, ...
    pub fn udp_sensors(
        mut self,
        n: usize,
        model: &str,
        criticality: Criticality,
        name: impl Fn(usize) -> String,
    ) -> Self {
        for i in 0..n {
            let p = self.plan(name(i), model, criticality);
            self.sensors.push(p);
        }
        self
    }

    /// A plain DFU 1.1 board on the lab USB bus, in DFU mode. A DFU device cannot say what it
    /// runs, so its record carries `firmware`.
    pub fn dfu_board(
        mut self,
        id: &str,
        model: &str,
        firmware: Version,
        criticality: Criticality,
    ) -> Self {
        self.board = Some((id.into(), model.into(), firmware, criticality));
        self
    }

    fn record(
        &self,
        id: &str,
        model: &str,
        address: DeviceAddress,
        c: Criticality,
    ) -> DeviceRecord {
        let mut r = record(id, &self.vendor, model, address);
        r.identity.hardware_revision = self.hardware_revision.clone();
        r.identity.serial_number = Some(serial_number(id));
        r.criticality = c;
        r
    }

    /// Make the devices and serve them.
    pub fn start(self) -> Result<LabSite, SiteError> {
        // Each device says who it is as its record does (vendor, model, revision and a serial
        // number of its own), so discovery tells the devices apart and matches them.
        let make = |p: &Planned| {
            SmpDevice::new(DeviceConfig {
                initial_image: build_image(p.smp.version, &test_payload(p.smp.image_len, p.seed)),
                flash_bytes_per_sec: p.smp.flash_bytes_per_sec,
                reboot_time: p.smp.reboot_time.unwrap_or(DeviceConfig::default().reboot_time),
                identity: LabIdentity {
                    vendor: self.vendor.clone(),
                    model: p.model.clone(),
                    hardware_revision: self.hardware_revision.clone().unwrap_or_default(),
                    serial_number: serial_number(&p.id),
                    ..LabIdentity::default()
                },
                ..Default::default()
            })
        };
        let console = self.console.as_ref().map(make);
        let sensors: Vec<SmpDevice> = self.sensors.iter().map(make).collect();
        let serial = match &console {
            Some(dev) => match serve_pty(dev.clone(), self.baud) {
                Ok(s) => Some(s),
                Err(PtyError::Unsupported) => None,
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        let udp: Vec<UdpServer> =
            sensors.iter().map(|d| serve_on_loopback(d, self.net)).collect::<Result<_, _>>()?;
        let board = self.board.as_ref().map(|(id, ..)| {
            let mut cfg = LabDfuConfig::plain_dfu();
            cfg.start_in_runtime = false;
            cfg.serial = Some(serial_number(id));
            LabDfu::new(cfg)
        });

        let mut records = Vec::new();
        if let (Some(p), Some(s)) = (&self.console, &serial) {
            let address =
                DeviceAddress::Serial { port: s.path().display().to_string(), baud: self.baud };
            records.push(self.record(&p.id, &p.model, address, p.criticality));
        }
        for (p, s) in self.sensors.iter().zip(&udp) {
            let address = DeviceAddress::Udp { addr: s.local_addr().to_string() };
            records.push(self.record(&p.id, &p.model, address, p.criticality));
        }
        if let Some((id, model, firmware, c)) = &self.board {
            let address = DeviceAddress::Usb { vid: BOARD_VID, pid: BOARD_PID, serial: None };
            let mut r = self.record(id, model, address, *c);
            r.identity.firmware_version = Some(*firmware);
            records.push(r);
        }
        Ok(LabSite { records, console, sensors, board, serial, udp })
    }
}

/// A running lab site. Devices stop when it is dropped.
#[derive(Debug)]
pub struct LabSite {
    /// The inventory's records: console (if served), sensors, board.
    pub records: Vec<DeviceRecord>,
    /// The console's SMP device (made even where it cannot be served).
    pub console: Option<SmpDevice>,
    /// The UDP sensors, in order.
    pub sensors: Vec<SmpDevice>,
    /// The DFU board.
    pub board: Option<LabDfu>,
    /// The console's pty (`None` without a console or where the platform has no ptys).
    pub serial: Option<SerialServer>,
    /// The sensors' sockets, in order.
    pub udp: Vec<UdpServer>,
}

impl LabSite {
    /// Every SMP device: the console first, then the sensors.
    pub fn smp_devices(&self) -> Vec<SmpDevice> {
        self.console.iter().chain(&self.sensors).cloned().collect()
    }

    /// The USB bus the board is on.
    pub fn usb(&self) -> Option<LabUsbBus> {
        self.board.as_ref().map(LabDfu::bus)
    }

    /// A connector that reaches every device of the site (the USB side through the board's bus).
    ///
    /// Panics without a DFU board.
    pub fn connector(&self) -> DriverConnector<LabUsbBus> {
        DriverConnector { usb: self.usb().expect("the site has a DFU board") }
    }
}
