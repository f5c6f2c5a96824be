//! Device discovery, the driver half: find devices on serial ports, at network addresses and by
//! mDNS, and ask each who it is in the protocols Fieldpatch speaks.
//!
//! ```text
//!  Request ──> Discovery::start ──> Scan (events, as they happen, until the deadline)
//!                │                     Planned ─ Found* / Skipped* ─ Finished
//!                ├─ serial  : list/named ports ─ exclude ─ busy? ─ probes × baud rates
//!                ├─ network : addresses/CIDR ─ bounded ─ rate-limited ─ probes
//!                └─ mdns    : browse allowed interfaces ─ probe what is advertised
//!                                  probes: [`Probe`] (SMP first: [`smp::SmpProbe`]; the ESP
//!                                  ROM loader when allowed: [`esp::EspRomProbe`])
//! ```
//!
//! Design decisions:
//! - Results are a stream ([`Scan::next`], a bounded `tokio::sync::mpsc` inside), because a
//!   technician watches devices appear and `core` records each as it comes; [`Scan::collect`]
//!   gathers them for callers that only want the list. Dropping the [`Scan`] stops everything.
//! - One overall deadline ([`Request::deadline`]) bounds the scan whatever the devices do: what
//!   is unfinished then is reported as [`SkipReason::Deadline`], so every candidate gets exactly
//!   one answer ([`Event::Found`] or [`Event::Skipped`]), and [`Event::Finished`] always comes.
//! - Mistakes in the request (too many hosts, unknown interfaces, no baud rate) are refused by
//!   [`Discovery::start`] before anything is opened or sent ([`DiscoveryError`], with stable
//!   codes); what happens to single candidates is an event, never an error.
//! - Protocols plug in through the [`Probe`] trait. This module does what must be the same for
//!   every protocol: exclusions, busy ports, settings restored, baud rates, rate limits,
//!   bounds, deadlines.
//! - Discovery reports facts, each with its source ([`Via`], [`Probed`]); merging identities
//!   across sources and matching the inventory is `core`'s job. [`Found::identity`] is only a
//!   convenience (the probe's answer, completed by an advertisement's claim).
//! - Nothing here decides what to flash or writes anywhere: discovery only reads.
//!
//! ```no_run
//! use fieldpatch_drivers::discovery::{
//!     Discovery, DiscoveryError, Event, MdnsScope, NetworkScope, Request, SerialScope,
//! };
//! use std::time::Duration;
//!
//! # async fn demo() -> Result<(), DiscoveryError> {
//! let request = Request {
//!     serial: Some(SerialScope {
//!         paths: vec!["/dev/pts/7".into()],        // ptys are not listed by the OS
//!         exclude: vec!["/dev/ttyUSB1".into()],     // never opened
//!         ..SerialScope::default()                 // USB ports, 115200 baud
//!     }),
//!     network: Some(NetworkScope {
//!         targets: vec!["192.0.2.0/28".parse()?, "192.0.2.40:1337".parse()?],
//!         ..NetworkScope::default()                // 100 hosts/s, at most 4096 hosts
//!     }),
//!     mdns: Some(MdnsScope { interfaces: vec!["eth0".into()], ..MdnsScope::default() }),
//!     deadline: Duration::from_secs(10),
//! };
//! let mut scan = Discovery::new(request).start().await?;
//! while let Some(event) = scan.next().await {
//!     match event {
//!         Event::Found(found) => println!("{}: {:?}", found.endpoint, found.identity()),
//!         Event::Skipped(s) => println!("{}: {} [{}]", s.candidate, s.reason, s.reason.code()),
//!         Event::Planned(_) | Event::Finished(_) => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```

pub mod esp;
pub mod mdns;
pub mod net;
pub mod probe;
mod scan;
pub mod serial;
pub mod smp;

pub use esp::EspRomProbe;
pub use mdns::{Advertisement, MdnsScope};
pub use net::{NetTarget, NetworkScope};
pub use probe::{
    BoxFuture, Details, Endpoint, Identity, Probe, ProbeContext, ProbeError, ProbeOutcome,
    ProbeReport,
};
pub use scan::Scan;
pub use serial::{PortInfo, PortKind, SerialScope, SystemPorts, UsbInfo, list_ports};
pub use smp::{OsInfo, SmpFacts, SmpProbe};

use serde::Serialize;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// What to look for, where, and for how long.
#[derive(Debug, Clone)]
pub struct Request {
    /// Serial ports to probe (`None`: none).
    pub serial: Option<SerialScope>,
    /// Network addresses to probe (`None`: none).
    pub network: Option<NetworkScope>,
    /// mDNS browsing (`None`: none).
    pub mdns: Option<MdnsScope>,
    /// Everything is over this long after the start.
    pub deadline: Duration,
}

impl Default for Request {
    fn default() -> Self {
        Request { serial: None, network: None, mdns: None, deadline: Duration::from_secs(10) }
    }
}

/// A discovery about to start: the request and the probes.
#[derive(Debug)]
pub struct Discovery {
    request: Request,
    probes: Vec<Arc<dyn Probe>>,
}

impl Discovery {
    /// A discovery with the SMP probe.
    pub fn new(request: Request) -> Discovery {
        Discovery { request, probes: vec![Arc::new(SmpProbe::new())] }
    }

    /// A discovery with no probe yet (add them with [`Discovery::with_probe`]).
    pub fn without_probes(request: Request) -> Discovery {
        Discovery { request, probes: Vec::new() }
    }

    /// Add a probe; on each endpoint, probes are tried in the order they were added.
    pub fn with_probe(mut self, probe: impl Probe + 'static) -> Discovery {
        self.probes.push(Arc::new(probe));
        self
    }

    /// Check the request and start the scan on the current tokio runtime. The mDNS daemon (if
    /// any) is created in the calling thread. Nothing is opened or sent when this fails.
    pub async fn start(self) -> Result<Scan, DiscoveryError> {
        scan::start(self.request, self.probes).await
    }
}

/// What happens during a scan, in order: one [`Event::Planned`], then [`Event::Found`] and
/// [`Event::Skipped`] as they happen, then one [`Event::Finished`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Planned(Plan),
    Found(Box<Found>),
    Skipped(Skipped),
    Finished(Summary),
}

/// The candidates of a scan, known at its start.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// Serial ports that will be probed.
    pub serial_ports: Vec<PortInfo>,
    /// Serial ports excluded by the technician (never opened; each also gets a `Skipped`).
    pub excluded_ports: Vec<PortInfo>,
    /// Network hosts that will be probed.
    pub hosts: usize,
    /// DNS-SD service types browsed for.
    pub mdns_services: Vec<String>,
    /// Interfaces browsed on.
    pub mdns_interfaces: Vec<String>,
    /// The scan ends by then at the latest.
    pub deadline: Duration,
}

/// A device that is there.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Found {
    /// How to reach it (what `core` stores as the device address).
    pub endpoint: Endpoint,
    /// How it was found.
    pub via: Via,
    /// What the probe said.
    pub probed: Probed,
}

impl Found {
    /// The probe's report, when the device answered.
    pub fn report(&self) -> Option<&ProbeReport> {
        match &self.probed {
            Probed::Answered(r) => Some(&**r),
            _ => None,
        }
    }

    /// What the device said in its protocol, completed by what its advertisement claims. USB
    /// descriptors of a serial port are left out: they may describe an adapter, not the device.
    pub fn identity(&self) -> Identity {
        let mut id = self.report().map(|r| r.identity.clone()).unwrap_or_default();
        if let Via::Mdns(adv) = &self.via {
            id.fill_from(&adv.identity);
        }
        id
    }
}

/// How a device was found.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "via", rename_all = "snake_case")]
pub enum Via {
    /// On a serial port (with what the OS says about the port).
    SerialPort(PortInfo),
    /// At an address the technician gave (alone or in a range).
    Address(NetTarget),
    /// Advertised over mDNS.
    Mdns(Advertisement),
}

/// Whether and how a found device was probed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Probed {
    /// It answered.
    Answered(Box<ProbeReport>),
    /// Not probed (an advertisement with probing turned off).
    NotProbed,
    /// Advertised, but the probe of the advertised endpoint failed.
    Failed(SkipReason),
}

/// A candidate that is not a device Fieldpatch can talk to, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub candidate: Candidate,
    pub reason: SkipReason,
}

/// Something that was looked at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Candidate {
    SerialPort(PortInfo),
    Host { ip: IpAddr, port: Option<u16> },
}

impl std::fmt::Display for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Candidate::SerialPort(p) => write!(f, "{}", p.path),
            Candidate::Host { ip, port: None } => write!(f, "{ip}"),
            Candidate::Host { ip, port: Some(p) } => {
                write!(f, "{}", std::net::SocketAddr::new(*ip, *p))
            }
        }
    }
}

/// Why a candidate was skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "reason", content = "detail", rename_all = "snake_case")]
pub enum SkipReason {
    #[error("excluded by the technician; it was not opened")]
    Excluded,
    #[error("busy: {0}")]
    Busy(String),
    #[error("cannot be used: {0}")]
    Unavailable(String),
    #[error("no answer (no device, switched off, or another line speed or protocol)")]
    Silent,
    #[error("answered, but in no protocol Fieldpatch speaks: {0}")]
    Unrecognized(String),
    #[error("not finished before the discovery deadline; give it more time to check it")]
    Deadline,
}

impl SkipReason {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            SkipReason::Excluded => "excluded",
            SkipReason::Busy(_) => "port_busy",
            SkipReason::Unavailable(_) => "endpoint_unavailable",
            SkipReason::Silent => "no_answer",
            SkipReason::Unrecognized(_) => "not_recognized",
            SkipReason::Deadline => "deadline_reached",
        }
    }
}

/// How a scan ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub found: usize,
    pub skipped: usize,
    /// Some candidates were cut short by the deadline.
    pub deadline_reached: bool,
    pub elapsed: Duration,
}

/// Everything a finished scan reported ([`Scan::collect`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub plan: Option<Plan>,
    pub found: Vec<Found>,
    pub skipped: Vec<Skipped>,
    /// `None` when the scan was stopped before it finished.
    pub summary: Option<Summary>,
}

impl Report {
    /// The skip reported for a candidate (a port path, or an address as written by `Display`).
    pub fn skip_of(&self, candidate: &str) -> Option<&SkipReason> {
        self.skipped.iter().find(|s| s.candidate.to_string() == candidate).map(|s| &s.reason)
    }
}

/// A request discovery refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(
        "{hosts} hosts is more than the limit of {limit}: narrow the ranges (a /20 has 4094 hosts) or raise the limit (up to {max})"
    )]
    TooManyHosts { hosts: u128, limit: usize, max: usize },
    #[error(
        "`{spec}` is not an address to probe ({why}); use an IP address (192.0.2.7), an address and port (192.0.2.7:1337, [2001:db8::7]:1337) or a CIDR range (192.0.2.0/24)"
    )]
    BadTarget { spec: String, why: String },
    #[error("there is no network interface named `{name}`; this computer has: {available}")]
    UnknownInterface { name: String, available: String },
    #[error(
        "name the network interfaces to browse on (for example eth0): Fieldpatch does not browse every interface by itself"
    )]
    NoInterfaces,
    #[error("{0}")]
    BadOption(String),
    #[error("cannot list the serial ports: {0}")]
    ListPorts(String),
    #[error("cannot list the network interfaces: {0}")]
    Interfaces(std::io::Error),
    #[error("cannot start mDNS: {0} (is another program holding UDP port 5353 exclusively?)")]
    Mdns(String),
}

impl DiscoveryError {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            DiscoveryError::TooManyHosts { .. } => "too_many_hosts",
            DiscoveryError::BadTarget { .. } => "bad_target",
            DiscoveryError::UnknownInterface { .. } => "unknown_interface",
            DiscoveryError::NoInterfaces => "no_interfaces",
            DiscoveryError::BadOption(_) => "bad_option",
            DiscoveryError::ListPorts(_) => "serial_list_failed",
            DiscoveryError::Interfaces(_) => "interfaces_unavailable",
            DiscoveryError::Mdns(_) => "mdns_unavailable",
        }
    }
}
