//! The probe seam: one small trait that each management protocol implements to say whether an
//! endpoint speaks it and who is there.
//!
//! Design decisions:
//! - The framework ([`super::Discovery`]) owns everything that must be the same for every
//!   protocol: which ports may be opened (exclusions, busy ports), saving and restoring a port's
//!   line settings, baud rates, rate limits and the deadline. A probe only talks: it gets an
//!   [`Endpoint`] and a [`ProbeContext`] with its time budget, opens its own link (SMP console
//!   framing, SLIP, HTTP...) and says what it found.
//! - Three outcomes are told apart because a technician acts differently on each: the device
//!   answered in this protocol ([`ProbeOutcome::Answered`]), nothing came back
//!   ([`ProbeOutcome::Silent`]: wrong port, device off, wrong baud on some adapters), or bytes came
//!   back that are not this protocol ([`ProbeOutcome::Unrecognized`]: another protocol, a log
//!   console, the wrong baud rate). Failing to reach the endpoint at all is a [`ProbeError`].
//! - The trait is object safe (boxed futures, no `async fn` in the trait) so probes of different
//!   protocols sit in one list; the first that answers on an endpoint wins.
//! - Everything a probe reports comes from a device or the network: text is cleaned of control
//!   characters and bounded ([`clean_text`]) before it leaves this module tree.

use super::smp::SmpFacts;
use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

/// A boxed, sendable future (what [`Probe::probe`] returns).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a device can be reached: what `core` stores as the device's address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Endpoint {
    /// A serial port at a line speed (8N1, no flow control).
    Serial { path: String, baud: u32 },
    /// A UDP endpoint (SMP: one packet per datagram).
    Udp { addr: SocketAddr },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Serial { path, baud } => write!(f, "serial:{path}@{baud}"),
            Endpoint::Udp { addr } => write!(f, "udp:{addr}"),
        }
    }
}

/// Who a device says it is. Every field is optional: each source (a protocol probe, an mDNS
/// advertisement) knows some of them, and `core` merges sources and matches the inventory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub vendor: Option<String>,
    pub model: Option<String>,
    pub hardware_revision: Option<String>,
    pub serial_number: Option<String>,
    /// The version of the running firmware, as the device reports it.
    pub firmware_version: Option<String>,
    /// SHA-256 of the running image (the MCUboot image hash), lower-case hex.
    pub image_hash: Option<String>,
}

impl Identity {
    /// Fill the fields that are still unknown from `other` (fields already known win).
    pub fn fill_from(&mut self, other: &Identity) {
        let fill = |mine: &mut Option<String>, theirs: &Option<String>| {
            if mine.is_none() {
                mine.clone_from(theirs);
            }
        };
        fill(&mut self.vendor, &other.vendor);
        fill(&mut self.model, &other.model);
        fill(&mut self.hardware_revision, &other.hardware_revision);
        fill(&mut self.serial_number, &other.serial_number);
        fill(&mut self.firmware_version, &other.firmware_version);
        fill(&mut self.image_hash, &other.image_hash);
    }

    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        *self == Identity::default()
    }
}

/// What a probe learned from a device that answered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeReport {
    /// The protocol that answered ([`Probe::protocol`]), for example `smp`.
    pub protocol: &'static str,
    /// The identity facts the device gave in that protocol.
    pub identity: Identity,
    /// Everything else the probe read, by protocol.
    pub details: Details,
}

/// Protocol-specific facts of a [`ProbeReport`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "protocol", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Details {
    /// SMP / MCUmgr: echo, buffer parameters, OS info fields, image slots.
    Smp(Box<SmpFacts>),
    /// Plain facts of a protocol without a typed report (name → value).
    Facts(BTreeMap<String, String>),
}

/// The outcome of one probe of one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeOutcome {
    /// The device answered in the probe's protocol.
    Answered(Box<ProbeReport>),
    /// Nothing came back in time.
    Silent,
    /// Bytes came back, but not in this protocol (another protocol, a log console, the wrong
    /// line speed): what was seen.
    Unrecognized(String),
}

/// Failing to reach an endpoint at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// Another program holds the port (an exclusive open or a lock).
    #[error("{0}")]
    Busy(String),
    /// The endpoint cannot be opened or used (permissions, vanished device, not a terminal).
    #[error("{0}")]
    Unavailable(String),
}

impl ProbeError {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            ProbeError::Busy(_) => "port_busy",
            ProbeError::Unavailable(_) => "endpoint_unavailable",
        }
    }
}

/// The time budget of one probe, set by the scan.
#[derive(Debug, Clone, Copy)]
pub struct ProbeContext {
    /// How long to wait for the first answer of an unknown endpoint. Keep it short: most
    /// candidates answer nothing, and a silent one costs exactly this.
    pub answer_timeout: Duration,
    /// How many times the first request is sent again (0 on serial; 1 on UDP, where a datagram
    /// can be lost).
    pub first_retries: u32,
    /// How long to wait for each further answer once the device has answered.
    pub request_timeout: Duration,
    /// The probe is abandoned at this instant (the scan's deadline).
    pub deadline: tokio::time::Instant,
}

/// A management protocol that discovery can recognise devices by.
///
/// Implementations decide where they apply ([`Probe::probes_serial`],
/// [`Probe::network_endpoint`], [`Probe::dns_sd_service`]) and talk to one endpoint in
/// [`Probe::probe`]. They must not block the async runtime (use `spawn_blocking` for blocking
/// opens), must finish within the context's timeouts, and must turn anything a device sends
/// into an outcome or an error, never a panic.
pub trait Probe: Send + Sync + std::fmt::Debug {
    /// A short protocol name (`smp`), reported with every answer.
    fn protocol(&self) -> &'static str;

    /// Whether this protocol is probed on serial ports (at each of the scan's baud rates).
    fn probes_serial(&self) -> bool {
        false
    }

    /// The endpoint this protocol is reached at on host `ip`; `port` is the technician's (or an
    /// advertisement's) port when one was given. `None`: not probed on networks.
    fn network_endpoint(&self, _ip: IpAddr, _port: Option<u16>) -> Option<Endpoint> {
        None
    }

    /// The DNS-SD service type devices of this protocol advertise (for example
    /// `_mcumgr._udp.local.`); the mDNS browser looks for it and hands what it finds here.
    fn dns_sd_service(&self) -> Option<&'static str> {
        None
    }

    /// Talk to `endpoint` and say what is there.
    fn probe<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        ctx: &'a ProbeContext,
    ) -> BoxFuture<'a, Result<ProbeOutcome, ProbeError>>;
}

/// The longest text kept from one device-supplied field.
pub const MAX_TEXT: usize = 255;

/// Clean device- or network-supplied text: control characters become spaces, surrounding
/// whitespace goes, and at most [`MAX_TEXT`] characters are kept. `None` when nothing is left.
pub fn clean_text(raw: &str) -> Option<String> {
    let cleaned: String = raw
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_TEXT)
        .collect::<String>()
        .trim()
        .to_string();
    (!cleaned.is_empty()).then_some(cleaned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_devices_is_cleaned_and_bounded() {
        assert_eq!(clean_text("  board\u{7}\r\n"), Some("board".into()));
        assert_eq!(clean_text("a\u{1b}[31mb"), Some("a [31mb".into()));
        assert_eq!(clean_text(" \n\t"), None);
        assert_eq!(clean_text(&"x".repeat(1000)).unwrap().len(), MAX_TEXT);
    }

    #[test]
    fn identities_fill_only_what_is_missing() {
        let mut a = Identity { model: Some("m1".into()), ..Identity::default() };
        let b = Identity {
            model: Some("m2".into()),
            serial_number: Some("42".into()),
            ..Identity::default()
        };
        a.fill_from(&b);
        assert_eq!(a.model.as_deref(), Some("m1"));
        assert_eq!(a.serial_number.as_deref(), Some("42"));
        assert!(!a.is_empty());
        assert!(Identity::default().is_empty());
    }

    #[test]
    fn endpoints_display_as_addresses() {
        let s = Endpoint::Serial { path: "/dev/ttyACM0".into(), baud: 115_200 };
        assert_eq!(s.to_string(), "serial:/dev/ttyACM0@115200");
        let u = Endpoint::Udp { addr: "192.0.2.7:1337".parse().unwrap() };
        assert_eq!(u.to_string(), "udp:192.0.2.7:1337");
    }
}
