//! Lab devices advertise themselves over mDNS, as networked products do: DNS-SD service
//! `_mcumgr._udp.local.` (SMP over UDP) with the identity in TXT keys.
//!
//! Design decisions:
//! - The TXT keys and the service type come from the drivers
//!   ([`fieldpatch_drivers::discovery::mdns::txt_record`],
//!   [`fieldpatch_drivers::discovery::smp::SMP_UDP_SERVICE`]), so advertiser and browser cannot
//!   drift apart: `vendor`, `model`, `hw`, `sn`, `fw` and `txtvers=1`.
//! - The instance is named `MODEL-SERIAL` and the host is the device's node name, the same name
//!   its SMP OS info reports (`n`). `fw` follows the running image: after an update and a reset
//!   the record is announced again with the new version, as firmware does after a reboot.
//! - Advertising needs explicit interface names, like browsing: a lab device never announces
//!   itself on a laptop's real network by accident. Tests run it inside network namespaces they
//!   create ([`crate::netns`]).
//! - The advertiser stops (goodbye packets, daemon shut down) when dropped.

use crate::smp::SmpDevice;
use fieldpatch_drivers::discovery::Identity;
use fieldpatch_drivers::discovery::mdns::{MDNS_PORT, txt_record};
use fieldpatch_drivers::discovery::smp::SMP_UDP_SERVICE;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Errors starting an advertiser.
#[derive(Debug, thiserror::Error)]
pub enum AdvertiseError {
    #[error(
        "name the network interfaces to advertise on (for example `lo` inside a test namespace)"
    )]
    NoInterfaces,
    #[error("cannot advertise over mDNS: {0}")]
    Mdns(String),
}

impl AdvertiseError {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            AdvertiseError::NoInterfaces => "no_interfaces",
            AdvertiseError::Mdns(_) => "mdns_unavailable",
        }
    }
}

/// Where and how to advertise.
#[derive(Debug, Clone)]
pub struct AdvertiseOptions {
    /// Interfaces to advertise on, by name.
    pub interfaces: Vec<String>,
    /// The mDNS port ([`MDNS_PORT`] on real networks).
    pub mdns_port: u16,
    /// The instance name; `None`: `MODEL-SERIAL`.
    pub instance: Option<String>,
}

impl AdvertiseOptions {
    /// Advertise on these interfaces, on the standard port.
    pub fn on(interfaces: &[&str]) -> AdvertiseOptions {
        AdvertiseOptions {
            interfaces: interfaces.iter().map(|s| s.to_string()).collect(),
            mdns_port: MDNS_PORT,
            instance: None,
        }
    }
}

/// The identity a device claims in its TXT record now.
pub fn claimed_identity(device: &SmpDevice) -> Identity {
    let id = device.identity();
    Identity {
        vendor: Some(id.vendor.clone()),
        model: Some(id.model.clone()),
        hardware_revision: (!id.hardware_revision.is_empty()).then(|| id.hardware_revision.clone()),
        serial_number: Some(id.serial_number.clone()),
        firmware_version: device.active_image().map(|(_, v)| v),
        image_hash: None,
    }
}

/// A running advertisement of one device; stops when dropped.
pub struct Advertiser {
    daemon: mdns_sd::ServiceDaemon,
    fullname: String,
    stop: Arc<AtomicBool>,
    follower: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Advertiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Advertiser").field("fullname", &self.fullname).finish()
    }
}

impl Advertiser {
    /// The advertised instance's full name (`lab_sensor-LAB-000001._mcumgr._udp.local.`).
    pub fn fullname(&self) -> &str {
        &self.fullname
    }
}

fn service(
    device: &SmpDevice,
    addr: SocketAddr,
    opts: &AdvertiseOptions,
) -> Result<mdns_sd::ServiceInfo, AdvertiseError> {
    let id = device.identity();
    let instance =
        opts.instance.clone().unwrap_or_else(|| format!("{}-{}", id.model, id.serial_number));
    let host = format!("{}.local.", id.hostname());
    let txt = txt_record(&claimed_identity(device));
    let txt: Vec<(&str, &str)> = txt.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mdns_err = |e: mdns_sd::Error| AdvertiseError::Mdns(e.to_string());
    let info = if addr.ip().is_unspecified() {
        // Bound to every address: announce the allowed interfaces' addresses.
        let mut info =
            mdns_sd::ServiceInfo::new(SMP_UDP_SERVICE, &instance, &host, (), addr.port(), &txt[..])
                .map_err(mdns_err)?
                .enable_addr_auto();
        info.set_interfaces(
            opts.interfaces.iter().map(|n| mdns_sd::IfKind::Name(n.clone())).collect(),
        );
        info
    } else {
        mdns_sd::ServiceInfo::new(
            SMP_UDP_SERVICE,
            &instance,
            &host,
            addr.ip(),
            addr.port(),
            &txt[..],
        )
        .map_err(mdns_err)?
    };
    Ok(info)
}

/// Advertise `device`, served at `addr` (its UDP server's address), over mDNS.
pub fn advertise(
    device: &SmpDevice,
    addr: SocketAddr,
    opts: &AdvertiseOptions,
) -> Result<Advertiser, AdvertiseError> {
    if opts.interfaces.is_empty() {
        return Err(AdvertiseError::NoInterfaces);
    }
    let mdns_err = |e: mdns_sd::Error| AdvertiseError::Mdns(e.to_string());
    let daemon = mdns_sd::ServiceDaemon::new_with_port(opts.mdns_port).map_err(mdns_err)?;
    let shut = |e| {
        let _ = daemon.shutdown();
        e
    };
    daemon.disable_interface(mdns_sd::IfKind::All).map_err(mdns_err).map_err(shut)?;
    let allowed: Vec<mdns_sd::IfKind> =
        opts.interfaces.iter().map(|n| mdns_sd::IfKind::Name(n.clone())).collect();
    daemon.enable_interface(allowed).map_err(mdns_err).map_err(shut)?;
    let info = service(device, addr, opts).map_err(shut)?;
    let fullname = info.get_fullname().to_string();
    daemon.register(info).map_err(mdns_err).map_err(shut)?;

    // Announce again when the running version changes (after an update and a reset).
    let stop = Arc::new(AtomicBool::new(false));
    let follower = {
        let (stop, daemon, device, opts) =
            (stop.clone(), daemon.clone(), device.clone(), opts.clone());
        let mut version = device.active_image().map(|(_, v)| v);
        std::thread::Builder::new()
            .name("lab-mdns".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                    let now = device.active_image().map(|(_, v)| v);
                    if now != version {
                        version = now;
                        if let Ok(info) = service(&device, addr, &opts) {
                            let _ = daemon.register(info);
                        }
                    }
                }
            })
            .map_err(|e| AdvertiseError::Mdns(format!("cannot start a thread: {e}")))
            .map_err(shut)?
    };
    Ok(Advertiser { daemon, fullname, stop, follower: Some(follower) })
}

impl Drop for Advertiser {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.follower.take() {
            let _ = t.join();
        }
        // Say goodbye (wait briefly for it to go out), then stop the daemon.
        if let Ok(done) = self.daemon.unregister(&self.fullname) {
            let _ = done.recv_timeout(Duration::from_secs(1));
        }
        let _ = self.daemon.shutdown();
    }
}
