//! LAN discovery by DNS-SD over multicast DNS (`mdns-sd`), on the interfaces a technician allows.
//!
//! Design decisions:
//! - The service types browsed are the ones the registered probes declare
//!   ([`super::Probe::dns_sd_service`]); SMP over UDP is `_mcumgr._udp.local.`
//!   ([`super::smp::SMP_UDP_SERVICE`]). Devices say who they are in TXT keys this module
//!   defines ([`TXT_VENDOR`], [`TXT_MODEL`], [`TXT_HARDWARE`], [`TXT_SERIAL`], [`TXT_FIRMWARE`],
//!   plus [`TXT_VERSION`] = `1`), and advertisers (the lab, device firmware) build them with
//!   [`txt_record`] so both sides agree byte for byte.
//! - Browsing needs explicit interface names: Fieldpatch never browses every interface by
//!   itself. Unknown names are refused before anything starts, listing the names there are.
//!   `mdns-sd` joins the mDNS multicast group on every interface when its daemon starts (the
//!   kernel sends an IGMP/MLD membership report there); the interface selection is applied right
//!   after, before the first query, so queries and answers use only the allowed interfaces.
//! - The daemon and its sockets are created in [`super::Discovery::start`], in the calling
//!   thread: a caller that runs discovery inside a network namespace (tests do, with `setns` on
//!   a dedicated thread) gets the daemon in that namespace.
//! - An advertisement is only a claim: by default each advertised endpoint is probed with the
//!   probe that owns the service type, and the report carries both (the claim in
//!   [`super::Via::Mdns`], the answer in [`super::Probed`]). Browsing lasts
//!   [`MdnsScope::listen`] (multicast gives no "that was everyone"), within the scan's deadline.
//! - TXT values and names come from the network: they are cleaned and bounded like device text.

use super::probe::{Endpoint, Identity, Probe, clean_text};
use super::{DiscoveryError, Found, Probed, SkipReason, Via};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// The TXT key of the TXT record format version (always `1`).
pub const TXT_VERSION: &str = "txtvers";
/// The TXT key of the vendor.
pub const TXT_VENDOR: &str = "vendor";
/// The TXT key of the model.
pub const TXT_MODEL: &str = "model";
/// The TXT key of the hardware revision.
pub const TXT_HARDWARE: &str = "hw";
/// The TXT key of the serial number.
pub const TXT_SERIAL: &str = "sn";
/// The TXT key of the running firmware version.
pub const TXT_FIRMWARE: &str = "fw";

/// The standard mDNS port.
pub const MDNS_PORT: u16 = 5353;

/// At most this many advertised instances are followed in one scan.
pub const MAX_ADVERTISEMENTS: usize = 4096;

/// Advertised endpoints probed at the same time.
const PROBES_IN_FLIGHT: usize = 32;

/// The TXT record of a device with `identity`: known fields only, each entry within DNS-SD's
/// 255-byte limit (longer values are cut at a character boundary).
pub fn txt_record(identity: &Identity) -> Vec<(String, String)> {
    let mut out = vec![(TXT_VERSION.to_string(), "1".to_string())];
    let fields = [
        (TXT_VENDOR, &identity.vendor),
        (TXT_MODEL, &identity.model),
        (TXT_HARDWARE, &identity.hardware_revision),
        (TXT_SERIAL, &identity.serial_number),
        (TXT_FIRMWARE, &identity.firmware_version),
    ];
    for (key, value) in fields {
        if let Some(value) = value {
            let room = 255 - key.len() - 1;
            let mut end = value.len().min(room);
            while !value.is_char_boundary(end) {
                end -= 1;
            }
            out.push((key.to_string(), value[..end].to_string()));
        }
    }
    out
}

/// The identity a TXT record claims (unknown keys are ignored).
pub fn identity_from_txt(txt: &BTreeMap<String, String>) -> Identity {
    let get = |k: &str| txt.get(k).and_then(|v| clean_text(v));
    Identity {
        vendor: get(TXT_VENDOR),
        model: get(TXT_MODEL),
        hardware_revision: get(TXT_HARDWARE),
        serial_number: get(TXT_SERIAL),
        firmware_version: get(TXT_FIRMWARE),
        image_hash: None,
    }
}

/// What to browse for.
#[derive(Debug, Clone)]
pub struct MdnsScope {
    /// The interfaces to browse on, by name (`eth0`, `enp3s0`); at least one.
    pub interfaces: Vec<String>,
    /// How long to listen for answers (within the scan's deadline).
    pub listen: Duration,
    /// Probe each advertised endpoint to confirm the claim and read live facts.
    pub probe_advertised: bool,
    /// How long the probe of an advertised endpoint waits for its first answer.
    pub answer_timeout: Duration,
    /// How long it waits for each further answer.
    pub request_timeout: Duration,
    /// The mDNS port: [`MDNS_PORT`] on real networks.
    pub port: u16,
}

impl Default for MdnsScope {
    fn default() -> Self {
        MdnsScope {
            interfaces: Vec::new(),
            listen: Duration::from_secs(3),
            probe_advertised: true,
            answer_timeout: Duration::from_millis(800),
            request_timeout: Duration::from_secs(1),
            port: MDNS_PORT,
        }
    }
}

/// One advertised service instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Advertisement {
    /// The instance's full name (`sensor-0042._mcumgr._udp.local.`).
    pub instance: String,
    /// The service type (`_mcumgr._udp.local.`).
    pub service_type: String,
    /// The host name (`sensor-0042.local.`).
    pub host: String,
    pub port: u16,
    pub addresses: Vec<IpAddr>,
    /// Every TXT entry (keys lower-case).
    pub txt: BTreeMap<String, String>,
    /// What the TXT entries claim.
    pub identity: Identity,
}

impl Advertisement {
    fn from_resolved(svc: &mdns_sd::ResolvedService) -> Advertisement {
        let name = |s: &str| clean_text(s).unwrap_or_default();
        let txt: BTreeMap<String, String> = svc
            .txt_properties
            .iter()
            .filter_map(|p| {
                let value = clean_text(p.val_str()).unwrap_or_default();
                Some((clean_text(p.key())?.to_ascii_lowercase(), value))
            })
            .collect();
        let mut addresses: Vec<IpAddr> = svc.addresses.iter().map(|a| a.to_ip_addr()).collect();
        // IPv4 first, then global before link-local, for a stable preferred address.
        addresses.sort_by_key(|ip| (ip.is_ipv6(), is_link_local(ip), *ip));
        Advertisement {
            instance: name(&svc.fullname),
            service_type: name(&svc.ty_domain),
            host: name(&svc.host),
            port: svc.port,
            addresses,
            identity: identity_from_txt(&txt),
            txt,
        }
    }
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

/// The names of the network interfaces with an address, sorted.
fn interface_names() -> Result<Vec<String>, DiscoveryError> {
    let mut names: Vec<String> = if_addrs::get_if_addrs()
        .map_err(DiscoveryError::Interfaces)?
        .into_iter()
        .map(|i| i.name)
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// A running browser: the daemon and one subscription per service type.
pub(crate) struct Browser {
    daemon: mdns_sd::ServiceDaemon,
    subscriptions: Vec<(mdns_sd::Receiver<mdns_sd::ServiceEvent>, Arc<dyn Probe>)>,
    pub(crate) services: Vec<String>,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser").field("services", &self.services).finish()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.daemon.shutdown();
    }
}

/// Check the scope, start the daemon on the allowed interfaces and subscribe to the probes'
/// service types (in the calling thread).
pub(crate) fn start(
    scope: &MdnsScope,
    probes: &[Arc<dyn Probe>],
) -> Result<Browser, DiscoveryError> {
    if scope.interfaces.is_empty() {
        return Err(DiscoveryError::NoInterfaces);
    }
    if scope.listen.is_zero() || scope.answer_timeout.is_zero() || scope.request_timeout.is_zero() {
        return Err(DiscoveryError::BadOption("mDNS durations must be above zero".into()));
    }
    let available = interface_names()?;
    for name in &scope.interfaces {
        if !available.contains(name) {
            return Err(DiscoveryError::UnknownInterface {
                name: name.clone(),
                available: available.join(", "),
            });
        }
    }
    let mut owners: Vec<(&'static str, Arc<dyn Probe>)> = Vec::new();
    for probe in probes {
        if let Some(service) = probe.dns_sd_service()
            && !owners.iter().any(|(s, _)| *s == service)
        {
            owners.push((service, probe.clone()));
        }
    }
    if owners.is_empty() {
        return Err(DiscoveryError::BadOption(
            "mDNS browsing needs a probe that names a DNS-SD service type".into(),
        ));
    }
    let mdns_err = |e: mdns_sd::Error| DiscoveryError::Mdns(e.to_string());
    let daemon = mdns_sd::ServiceDaemon::new_with_port(scope.port).map_err(mdns_err)?;
    let mut browser = Browser { daemon, subscriptions: Vec::new(), services: Vec::new() };
    browser.daemon.disable_interface(mdns_sd::IfKind::All).map_err(mdns_err)?;
    let allowed: Vec<mdns_sd::IfKind> =
        scope.interfaces.iter().map(|n| mdns_sd::IfKind::Name(n.clone())).collect();
    browser.daemon.enable_interface(allowed).map_err(mdns_err)?;
    for (service, probe) in owners {
        let rx = browser.daemon.browse(service).map_err(mdns_err)?;
        browser.subscriptions.push((rx, probe));
        browser.services.push(service.to_string());
    }
    Ok(browser)
}

/// The endpoint the owning probe reaches an advertisement at, on its preferred address; a
/// link-local IPv6 address gets the interface (`scope_id`) it was seen on.
fn advertised_endpoint(
    adv: &Advertisement,
    scope_id: Option<u32>,
    probe: &dyn Probe,
) -> Option<Endpoint> {
    let ip = *adv.addresses.first()?;
    match probe.network_endpoint(ip, Some(adv.port))? {
        Endpoint::Udp { addr: SocketAddr::V6(mut v6) } if is_link_local(&ip) => {
            v6.set_scope_id(scope_id.unwrap_or(0));
            Some(Endpoint::Udp { addr: SocketAddr::V6(v6) })
        }
        other => Some(other),
    }
}

/// Browse until the listening time is over, probing what is advertised; send each instance
/// once, as found.
pub(crate) async fn run(
    mut browser: Browser,
    scope: MdnsScope,
    deadline: tokio::time::Instant,
    sink: super::scan::Sink,
) {
    use tokio::task::JoinSet;
    let until = deadline.min(tokio::time::Instant::now() + scope.listen);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut forwarders = JoinSet::new();
    for (receiver, probe) in std::mem::take(&mut browser.subscriptions) {
        let tx = tx.clone();
        forwarders.spawn(async move {
            while let Ok(event) = receiver.recv_async().await {
                if let mdns_sd::ServiceEvent::ServiceResolved(svc) = event {
                    let scope_id = svc.addresses.iter().find_map(|a| match a {
                        mdns_sd::ScopedIp::V6(v6) => Some(v6.scope_id().index),
                        _ => None,
                    });
                    let adv = Advertisement::from_resolved(&svc);
                    if tx.send((adv, scope_id, probe.clone())).is_err() {
                        return;
                    }
                }
            }
        });
    }
    drop(tx);

    let mut seen = HashSet::new();
    let mut probing = JoinSet::new();
    let mut pending: HashMap<tokio::task::Id, Found> = HashMap::new();
    let ctx = super::probe::ProbeContext {
        answer_timeout: scope.answer_timeout,
        first_retries: 1,
        request_timeout: scope.request_timeout,
        deadline,
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(PROBES_IN_FLIGHT));
    let mut listening = true;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until), if listening => listening = false,
            got = rx.recv(), if listening => {
                let Some((adv, scope_id, probe)) = got else {
                    listening = false;
                    continue;
                };
                // Each instance once; a network that floods instances is not followed forever.
                if seen.len() >= MAX_ADVERTISEMENTS || !seen.insert(adv.instance.clone()) {
                    continue;
                }
                // Resolved services always carry an address, and the probe that owns a service
                // type reaches it on the network: anything else is not a usable advertisement.
                let Some(endpoint) = advertised_endpoint(&adv, scope_id, probe.as_ref()) else {
                    continue;
                };
                let found = Found {
                    endpoint: endpoint.clone(),
                    via: Via::Mdns(adv),
                    probed: Probed::NotProbed,
                };
                if !scope.probe_advertised {
                    sink.found(found).await;
                    continue;
                }
                let permits = permits.clone();
                let handle = probing.spawn(async move {
                    let _permit = permits.acquire_owned().await;
                    match probe.probe(&endpoint, &ctx).await {
                        Ok(super::probe::ProbeOutcome::Answered(r)) => Probed::Answered(r),
                        Ok(super::probe::ProbeOutcome::Silent) => Probed::Failed(SkipReason::Silent),
                        Ok(super::probe::ProbeOutcome::Unrecognized(w)) => {
                            Probed::Failed(SkipReason::Unrecognized(w))
                        }
                        Err(e) => Probed::Failed(e.into()),
                    }
                });
                pending.insert(handle.id(), found);
            }
            Some(done) = probing.join_next_with_id(), if !probing.is_empty() => {
                let (id, probed) = match done {
                    Ok(done) => done,
                    Err(e) => (
                        e.id(),
                        Probed::Failed(SkipReason::Unavailable(format!(
                            "the probe stopped unexpectedly: {e}"
                        ))),
                    ),
                };
                if let Some(mut found) = pending.remove(&id) {
                    found.probed = probed;
                    sink.found(found).await;
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
        if !listening && probing.is_empty() {
            break;
        }
    }
    probing.abort_all();
    forwarders.abort_all();
    if !pending.is_empty() {
        sink.deadline_reached();
    }
    for (_, mut found) in pending {
        found.probed = Probed::Failed(SkipReason::Deadline);
        sink.found(found).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_records_round_trip_and_fit_dns_sd_limits() {
        let id = Identity {
            vendor: Some("Acme".into()),
            model: Some("sensor-s1".into()),
            hardware_revision: Some("B".into()),
            serial_number: Some("é".repeat(200)),
            firmware_version: Some("1.2.3".into()),
            image_hash: Some("ab".into()),
        };
        let txt = txt_record(&id);
        assert_eq!(txt[0], ("txtvers".to_string(), "1".to_string()));
        for (k, v) in &txt {
            assert!(k.len() + 1 + v.len() <= 255, "{k}");
        }
        let map: BTreeMap<String, String> = txt.into_iter().collect();
        let back = identity_from_txt(&map);
        assert_eq!(back.vendor.as_deref(), Some("Acme"));
        assert_eq!(back.hardware_revision.as_deref(), Some("B"));
        assert_eq!(back.firmware_version.as_deref(), Some("1.2.3"));
        assert!(back.serial_number.unwrap().starts_with("éé"));
        // The image hash is not a TXT claim.
        assert_eq!(back.image_hash, None);
    }

    #[test]
    fn browsing_needs_named_known_interfaces() {
        let probes: Vec<Arc<dyn Probe>> = vec![Arc::new(super::super::smp::SmpProbe::new())];
        let e = start(&MdnsScope::default(), &probes).unwrap_err();
        assert_eq!(e.code(), "no_interfaces");
        let scope = MdnsScope { interfaces: vec!["fp-no-such-if0".into()], ..MdnsScope::default() };
        let e = start(&scope, &probes).unwrap_err();
        assert_eq!(e.code(), "unknown_interface");
        assert!(e.to_string().contains("fp-no-such-if0"), "{e}");
    }
}
