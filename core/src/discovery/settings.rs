//! Where this laptop looks for devices: the technician's discovery settings, kept in the local
//! store so that the desktop app's Devices screen and `fieldpatch discover --saved` search the
//! same places. Every serial port opened and every network scanned is one the technician allowed
//! here; nothing else is probed.

use super::{
    DiscoverOptions, MdnsScope, NetTarget, NetworkScope, Request, SerialScope, SystemPorts,
};
use crate::fieldpatch::{Error, Fieldpatch};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;
use ts_rs::TS;

const META_KEY: &str = "discovery_settings";

/// The technician's discovery settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(default)]
pub struct DiscoverySettings {
    /// Probe the USB serial ports the OS lists (USB-to-serial adapters, CDC ACM).
    pub usb_serial: bool,
    /// Also probe the built-in UARTs the OS lists (each silent one costs a timeout).
    pub all_ports: bool,
    /// Serial ports to probe besides those the OS lists (ptys, `/dev/serial/by-id/...`).
    pub ports: Vec<String>,
    /// Serial ports never to open, whatever lists them.
    pub exclude: Vec<String>,
    /// List USB DFU devices.
    pub usb_dfu: bool,
    /// Addresses or ranges probed for SMP over UDP (`192.0.2.7`, `192.0.2.7:1337`,
    /// `192.0.2.0/24`).
    pub networks: Vec<String>,
    /// Network interfaces mDNS is browsed on (only those named).
    pub interfaces: Vec<String>,
    /// Seconds a discovery may take.
    #[ts(type = "number")]
    pub deadline_secs: u64,
    /// Also look for ESP32-family boards' ROM loaders on the serial ports allowed above, with
    /// this reset (which reboots each board into its loader and back): `None`, never.
    #[ts(optional)]
    pub esp_reset: Option<crate::plan::EspReset>,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        DiscoverySettings {
            usb_serial: true,
            all_ports: false,
            ports: Vec::new(),
            exclude: Vec::new(),
            usb_dfu: true,
            networks: Vec::new(),
            interfaces: Vec::new(),
            deadline_secs: 10,
            esp_reset: None,
        }
    }
}

impl DiscoverySettings {
    /// The settings with blank entries dropped and every entry checked: an error names the entry
    /// and says what is expected.
    pub fn checked(mut self) -> Result<DiscoverySettings, Error> {
        // Blank entries and repeats go; the order given stays.
        let tidy = |v: &mut Vec<String>| {
            let mut seen = std::collections::BTreeSet::new();
            *v = v
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty() && seen.insert(s.clone()))
                .collect();
        };
        tidy(&mut self.ports);
        tidy(&mut self.exclude);
        tidy(&mut self.networks);
        tidy(&mut self.interfaces);
        for p in self.ports.iter().chain(&self.exclude) {
            if !p.starts_with('/') && !p.to_ascii_uppercase().starts_with("COM") {
                return Err(Error::Invalid(format!(
                    "serial port {p:?}: give the port's full path (/dev/ttyUSB0, /dev/serial/by-id/...) or a COM port"
                )));
            }
        }
        for n in &self.networks {
            n.parse::<NetTarget>().map_err(|e| {
                Error::Invalid(format!(
                    "network {n:?}: {e}; give an address (192.0.2.7), an address and port (192.0.2.7:1337) or a range (192.0.2.0/24)"
                ))
            })?;
        }
        for i in &self.interfaces {
            if i.len() > 15 || i.contains(['/', ' ']) {
                return Err(Error::Invalid(format!(
                    "network interface {i:?}: give an interface name as `ip link` lists it (eth0, enp3s0, wlan0)"
                )));
            }
        }
        if !(1..=600).contains(&self.deadline_secs) {
            return Err(Error::Invalid(format!(
                "a discovery deadline of {} s: give between 1 and 600 seconds",
                self.deadline_secs
            )));
        }
        if !self.usb_serial
            && !self.all_ports
            && self.ports.is_empty()
            && !self.usb_dfu
            && self.networks.is_empty()
            && self.interfaces.is_empty()
        {
            return Err(Error::Invalid(
                "these settings search nowhere: allow USB serial ports, USB DFU, a serial port, a network or an interface".into(),
            ));
        }
        Ok(self)
    }

    /// The discovery these settings allow, matched against `work_order` when one is given.
    pub fn options(&self, work_order: Option<String>) -> Result<DiscoverOptions, Error> {
        let s = self.clone().checked()?;
        let serial = (s.usb_serial || s.all_ports || !s.ports.is_empty()).then(|| SerialScope {
            system_ports: if s.all_ports {
                SystemPorts::All
            } else if s.usb_serial {
                SystemPorts::Usb
            } else {
                SystemPorts::None
            },
            paths: s.ports.iter().map(PathBuf::from).collect(),
            exclude: s.exclude.iter().map(PathBuf::from).collect(),
            ..SerialScope::default()
        });
        let targets = s
            .networks
            .iter()
            .map(|n| n.parse::<NetTarget>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let network =
            (!targets.is_empty()).then(|| NetworkScope { targets, ..NetworkScope::default() });
        let mdns = (!s.interfaces.is_empty())
            .then(|| MdnsScope { interfaces: s.interfaces.clone(), ..MdnsScope::default() });
        Ok(DiscoverOptions {
            request: Request {
                serial,
                network,
                mdns,
                deadline: Duration::from_secs(s.deadline_secs),
            },
            usb: s.usb_dfu,
            work_order,
            site: None,
            visit: None,
            esp: s.esp_reset,
        })
    }
}

impl Fieldpatch {
    /// The discovery settings (the defaults until the technician saves some).
    pub async fn discovery_settings(&self) -> Result<DiscoverySettings, Error> {
        match self.store().meta(META_KEY).await? {
            None => Ok(DiscoverySettings::default()),
            Some(text) => serde_json::from_str(&text).map_err(|e| {
                Error::Invalid(format!(
                    "the saved discovery settings cannot be read ({e}): save them again on the settings"
                ))
            }),
        }
    }

    /// Check and save the discovery settings; returns them as saved (blank entries dropped).
    pub async fn set_discovery_settings(
        &self,
        settings: DiscoverySettings,
    ) -> Result<DiscoverySettings, Error> {
        let settings = settings.checked()?;
        let text = serde_json::to_string(&settings)
            .map_err(|e| Error::Invalid(format!("discovery settings: {e}")))?;
        self.store().set_meta(META_KEY, &text).await?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_search_usb_serial_and_dfu_only() {
        let o = DiscoverySettings::default().options(None).unwrap();
        let serial = o.request.serial.unwrap();
        assert_eq!(serial.system_ports, SystemPorts::Usb);
        assert!(serial.paths.is_empty());
        assert!(o.usb);
        assert!(o.request.network.is_none() && o.request.mdns.is_none());
    }

    #[test]
    fn ports_networks_and_interfaces_become_the_request() {
        let s = DiscoverySettings {
            usb_serial: false,
            usb_dfu: false,
            ports: vec![
                " /dev/pts/7 ".into(),
                String::new(),
                "/dev/pts/8".into(),
                "/dev/pts/7".into(),
            ],
            networks: vec!["192.0.2.0/30".into()],
            interfaces: vec!["eth0".into()],
            ..DiscoverySettings::default()
        };
        let o = s.options(Some("WO-1".into())).unwrap();
        let serial = o.request.serial.unwrap();
        assert_eq!(serial.system_ports, SystemPorts::None);
        assert_eq!(serial.paths, vec![PathBuf::from("/dev/pts/7"), PathBuf::from("/dev/pts/8")]);
        assert_eq!(o.request.network.unwrap().targets.len(), 1);
        assert_eq!(o.request.mdns.unwrap().interfaces, vec!["eth0".to_string()]);
        assert_eq!(o.work_order.as_deref(), Some("WO-1"));
        assert!(!o.usb);
    }

    #[test]
    fn bad_entries_are_named() {
        let bad_net =
            DiscoverySettings { networks: vec!["10.0.0.0/33".into()], ..Default::default() };
        let e = bad_net.checked().unwrap_err().to_string();
        assert!(e.contains("10.0.0.0/33"), "{e}");
        let bad_port = DiscoverySettings { ports: vec!["ttyUSB0".into()], ..Default::default() };
        let e = bad_port.checked().unwrap_err().to_string();
        assert!(e.contains("ttyUSB0") && e.contains("full path"), "{e}");
        let nowhere = DiscoverySettings { usb_serial: false, usb_dfu: false, ..Default::default() };
        assert!(nowhere.checked().unwrap_err().to_string().contains("nowhere"));
        let slow = DiscoverySettings { deadline_secs: 0, ..Default::default() };
        assert!(slow.checked().is_err());
    }
}
