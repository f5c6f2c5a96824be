//! Network address probing: the hosts a technician names (addresses and CIDR ranges), bounded,
//! rate-limited and deadline-bound.
//!
//! Design decisions:
//! - Only IP literals and CIDR ranges are accepted, never host names: resolving names would send
//!   DNS queries to wherever the laptop's resolver points, and a technician on site types
//!   addresses from the site's network plan anyway.
//! - The size is checked before anything is sent: a scope that adds up to more than
//!   [`NetworkScope::max_hosts`] (4096 by default, at most [`MAX_HOSTS_LIMIT`]) is refused whole
//!   with [`super::DiscoveryError::TooManyHosts`], instead of quietly probing a part.
//! - An IPv4 range of /30 or wider leaves out its network and broadcast addresses (a datagram to
//!   the broadcast address would reach every host, or be refused by the OS); /31 and /32 keep
//!   every address, and IPv6 ranges have no broadcast.
//! - The rate limit counts hosts contacted per second ([`NetworkScope::probes_per_second`]), so
//!   a sweep never floods a site network; the retry and the identity questions that follow an
//!   answer are not paced. A bound on probes in flight keeps sockets few.
//! - A silent host costs `answer_timeout × (1 + retries)` and never more: UDP sockets are
//!   connected, so an ICMP "port unreachable" ends the wait early instead of hanging.

use super::DiscoveryError;
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

/// The default limit on hosts in one scan.
pub const DEFAULT_MAX_HOSTS: usize = 4096;

/// The highest limit a scope may set.
pub const MAX_HOSTS_LIMIT: usize = 65_536;

/// One thing a technician asked to probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NetTarget {
    /// One host, optionally on a given port (else each probe's default port).
    Host { ip: IpAddr, port: Option<u16> },
    /// A CIDR range.
    Range { network: IpAddr, prefix: u8 },
}

impl FromStr for NetTarget {
    type Err = DiscoveryError;

    /// `192.0.2.7`, `192.0.2.7:1337`, `2001:db8::7`, `[2001:db8::7]:1337`, `192.0.2.0/24`,
    /// `2001:db8::/120`.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| DiscoveryError::BadTarget { spec: spec.into(), why: why.into() };
        let s = spec.trim();
        if let Some((addr, prefix)) = s.split_once('/') {
            let network: IpAddr =
                addr.parse().map_err(|_| bad("the part before `/` is not an IP address"))?;
            let max = if network.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = prefix
                .parse()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| bad(&format!("the prefix length must be 0 to {max}")))?;
            return Ok(NetTarget::Range { network: mask(network, prefix), prefix });
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(NetTarget::Host { ip, port: None });
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(bad("port 0 is not a port to probe"));
            }
            return Ok(NetTarget::Host { ip: addr.ip(), port: Some(addr.port()) });
        }
        Err(bad("host names are not resolved"))
    }
}

impl std::fmt::Display for NetTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetTarget::Host { ip, port: None } => write!(f, "{ip}"),
            NetTarget::Host { ip, port: Some(p) } => write!(f, "{}", SocketAddr::new(*ip, *p)),
            NetTarget::Range { network, prefix } => write!(f, "{network}/{prefix}"),
        }
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & m))
        }
        IpAddr::V6(v6) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & m))
        }
    }
}

/// Whether an IPv4 range this wide leaves out its network and broadcast addresses.
fn v4_drops_ends(prefix: u8) -> bool {
    prefix <= 30
}

impl NetTarget {
    /// How many hosts this target stands for.
    pub fn host_count(&self) -> u128 {
        match *self {
            NetTarget::Host { .. } => 1,
            NetTarget::Range { network: IpAddr::V4(_), prefix } => {
                let all = 1u128 << (32 - u32::from(prefix));
                if v4_drops_ends(prefix) { all - 2 } else { all }
            }
            NetTarget::Range { network: IpAddr::V6(_), prefix } => {
                1u128.checked_shl(128 - u32::from(prefix)).unwrap_or(u128::MAX)
            }
        }
    }

    /// The hosts, each with the port the technician gave (only a single host can have one).
    /// Callers check [`NetTarget::host_count`] first: this enumerates every one.
    fn hosts(&self) -> Box<dyn Iterator<Item = (IpAddr, Option<u16>)> + Send> {
        match *self {
            NetTarget::Host { ip, port } => Box::new(std::iter::once((ip, port))),
            NetTarget::Range { network: IpAddr::V4(net), prefix } => {
                let first = u32::from(net);
                let count = 1u64 << (32 - u32::from(prefix));
                let (skip, take) = if v4_drops_ends(prefix) { (1, count - 2) } else { (0, count) };
                Box::new(
                    (skip..skip + take).map(move |i| {
                        (IpAddr::V4(Ipv4Addr::from(first.wrapping_add(i as u32))), None)
                    }),
                )
            }
            NetTarget::Range { network: IpAddr::V6(net), prefix } => {
                let first = u128::from(net);
                let count = 1u128.checked_shl(128 - u32::from(prefix)).unwrap_or(u128::MAX);
                Box::new((0..count).map(move |i| (IpAddr::V6(Ipv6Addr::from(first + i)), None)))
            }
        }
    }
}

/// What to probe on the network.
#[derive(Debug, Clone)]
pub struct NetworkScope {
    pub targets: Vec<NetTarget>,
    /// The port for targets without their own; `None`: each probe's default (SMP: 1337).
    pub port: Option<u16>,
    /// New hosts contacted per second.
    pub probes_per_second: u32,
    /// Refuse scopes with more hosts than this (at most [`MAX_HOSTS_LIMIT`]).
    pub max_hosts: usize,
    /// How long a probe waits for a host's first answer.
    pub answer_timeout: Duration,
    /// How often the first request is sent again (a datagram can be lost).
    pub retries: u32,
    /// How long a probe waits for each further answer once the host answered.
    pub request_timeout: Duration,
    /// Hosts being probed at the same time.
    pub parallel: usize,
}

impl Default for NetworkScope {
    fn default() -> Self {
        NetworkScope {
            targets: Vec::new(),
            port: None,
            probes_per_second: 100,
            max_hosts: DEFAULT_MAX_HOSTS,
            answer_timeout: Duration::from_millis(500),
            retries: 1,
            request_timeout: Duration::from_secs(1),
            parallel: 64,
        }
    }
}

/// One host to probe: its address, the port to use (`None`: each probe's default), and the
/// target it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Host {
    pub ip: IpAddr,
    pub port: Option<u16>,
    pub origin: NetTarget,
}

/// The hosts of a scope, checked against its limit: each host once, in the order given.
pub(crate) fn expand(scope: &NetworkScope) -> Result<Vec<Host>, DiscoveryError> {
    if scope.max_hosts > MAX_HOSTS_LIMIT {
        return Err(DiscoveryError::BadOption(format!(
            "the host limit can be raised to {MAX_HOSTS_LIMIT} at most, not {}",
            scope.max_hosts
        )));
    }
    if scope.probes_per_second == 0 || scope.parallel == 0 {
        return Err(DiscoveryError::BadOption(
            "network `probes_per_second` and `parallel` must be at least 1".into(),
        ));
    }
    if scope.answer_timeout.is_zero() || scope.request_timeout.is_zero() {
        return Err(DiscoveryError::BadOption("network timeouts must be above zero".into()));
    }
    if scope.port == Some(0) {
        return Err(DiscoveryError::BadOption("port 0 is not a port to probe".into()));
    }
    let total = scope.targets.iter().map(NetTarget::host_count).fold(0u128, u128::saturating_add);
    if total > scope.max_hosts as u128 {
        return Err(DiscoveryError::TooManyHosts {
            hosts: total,
            limit: scope.max_hosts,
            max: MAX_HOSTS_LIMIT,
        });
    }
    let mut seen = std::collections::HashSet::new();
    let mut hosts = Vec::new();
    for target in &scope.targets {
        for (ip, port) in target.hosts() {
            let port = port.or(scope.port);
            if seen.insert((ip, port)) {
                hosts.push(Host { ip, port, origin: *target });
            }
        }
    }
    Ok(hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> NetTarget {
        s.parse().unwrap()
    }

    #[test]
    fn targets_parse() {
        assert_eq!(
            t("192.0.2.7"),
            NetTarget::Host { ip: "192.0.2.7".parse().unwrap(), port: None }
        );
        assert_eq!(
            t("192.0.2.7:2000"),
            NetTarget::Host { ip: "192.0.2.7".parse().unwrap(), port: Some(2000) }
        );
        assert_eq!(
            t("[2001:db8::7]:1337"),
            NetTarget::Host { ip: "2001:db8::7".parse().unwrap(), port: Some(1337) }
        );
        // The network address is masked.
        assert_eq!(
            t("192.0.2.77/24"),
            NetTarget::Range { network: "192.0.2.0".parse().unwrap(), prefix: 24 }
        );
        assert_eq!(t("2001:db8::/120").to_string(), "2001:db8::/120");
        for bad in ["sensor.local", "192.0.2.0/33", "::/129", "10.0.0.1:0", "1.2.3/8", ""] {
            let e = bad.parse::<NetTarget>().unwrap_err();
            assert_eq!(e.code(), "bad_target", "{bad}: {e}");
            assert!(e.to_string().contains("CIDR"), "{e}");
        }
    }

    #[test]
    fn host_counts_leave_out_network_and_broadcast() {
        assert_eq!(t("192.0.2.0/24").host_count(), 254);
        assert_eq!(t("192.0.2.0/30").host_count(), 2);
        assert_eq!(t("192.0.2.0/31").host_count(), 2);
        assert_eq!(t("192.0.2.9/32").host_count(), 1);
        assert_eq!(t("0.0.0.0/0").host_count(), (1u128 << 32) - 2);
        assert_eq!(t("2001:db8::/64").host_count(), 1u128 << 64);
        assert_eq!(t("::/0").host_count(), u128::MAX);
        let hosts: Vec<_> = t("127.0.0.0/29").hosts().map(|(ip, _)| ip.to_string()).collect();
        assert_eq!(hosts.first().map(String::as_str), Some("127.0.0.1"));
        assert_eq!(hosts.last().map(String::as_str), Some("127.0.0.6"));
        assert_eq!(hosts.len(), 6);
    }

    #[test]
    fn scopes_over_the_limit_are_refused_before_anything_is_sent() {
        let scope = NetworkScope {
            targets: vec![t("10.0.0.0/20"), t("10.1.0.0/29")],
            ..NetworkScope::default()
        };
        let e = expand(&scope).unwrap_err();
        assert_eq!(e.code(), "too_many_hosts");
        assert!(e.to_string().contains("4096"), "{e}");
        let huge = NetworkScope { targets: vec![t("::/0")], ..NetworkScope::default() };
        assert_eq!(expand(&huge).unwrap_err().code(), "too_many_hosts");
        let ok = NetworkScope { targets: vec![t("10.0.0.0/20")], ..NetworkScope::default() };
        assert_eq!(expand(&ok).unwrap().len(), 4094);
        let raised = NetworkScope { max_hosts: 1 << 20, ..ok.clone() };
        assert_eq!(expand(&raised).unwrap_err().code(), "bad_option");
    }

    #[test]
    fn hosts_are_probed_once_with_their_port() {
        let scope = NetworkScope {
            targets: vec![t("192.0.2.1"), t("192.0.2.0/30"), t("192.0.2.1:9")],
            port: Some(2000),
            ..NetworkScope::default()
        };
        let hosts: Vec<_> = expand(&scope).unwrap().into_iter().map(|h| (h.ip, h.port)).collect();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            hosts,
            vec![(ip, Some(2000)), ("192.0.2.2".parse().unwrap(), Some(2000)), (ip, Some(9))]
        );
    }
}
