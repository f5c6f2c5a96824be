//! From finds to devices: one identity per physical device, matched to the inventory.
//!
//! Design decisions:
//!
//! * **A serial number is the device.** Finds that report the same serial number (compared
//!   case-insensitively, after trimming) are one device with several addresses, whatever transport
//!   each came over. Finds without a serial number are never merged with anything: guessing that
//!   two anonymous answers are one board would hide a device.
//! * **Matching is strict and explained.** The serial number is tried first. Only when it is
//!   missing on one side, a device matches the one inventory device of its site with the same
//!   vendor, model and hardware revision that nothing else could match (the key says so, so the
//!   technician can check). Ambiguity is never resolved by guessing: the device stays unknown.
//! * **Unknown devices are never added** to the inventory, and inventory devices nothing matched
//!   are listed as missing: the visit close-out needs a reason for each.

use crate::model::DeviceIdentity;
use crate::plan::DeviceAddress;
use crate::store::InventoryDevice;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use ts_rs::TS;

/// What a device can do, as far as discovery could tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// Upload an image into a slot (SMP image upload, DFU download).
    Upload,
    /// Boot a new image once and keep the old one until it is confirmed (MCUboot test boot).
    TestBoot,
    /// Report the hash of what it runs, so a write can be checked (SMP image state).
    ImageHash,
    /// Read back what was written (DFU upload).
    Readback,
    /// Reset on command.
    Reset,
}

/// One answer from one transport: what a probe learnt about whatever answered at an address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct Find {
    pub address: DeviceAddress,
    /// How it was found: `serial`, `usb`, `mdns`, `udp-probe`.
    pub via: String,
    pub identity: DeviceIdentity,
    /// The bootloader or update agent that answered (`MCUboot`, `DFU`, `DfuSe`, ...).
    pub bootloader: Option<String>,
    pub capabilities: BTreeSet<Capability>,
}

/// Which inventory key matched a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum MatchKey {
    /// The serial number the device reports equals the inventory's.
    SerialNumber,
    /// No serial number to compare; the only inventory device of this vendor, model and
    /// hardware revision at the site that nothing else matched.
    OnlyOfItsModel,
}

impl std::fmt::Display for MatchKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MatchKey::SerialNumber => "serial number",
            MatchKey::OnlyOfItsModel => "only device of its model at the site",
        })
    }
}

/// The inventory device a discovered device is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
pub struct InventoryMatch {
    pub device_id: String,
    pub key: MatchKey,
}

/// One physical device found on site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct DiscoveredDevice {
    /// Every address it answered at (one per transport), in the order found.
    pub addresses: Vec<DeviceAddress>,
    /// How each address was found, in the same order.
    pub via: Vec<String>,
    pub identity: DeviceIdentity,
    pub bootloader: Option<String>,
    pub capabilities: BTreeSet<Capability>,
    /// The inventory device it is; `None`: unknown to the inventory (never added to it).
    pub matched: Option<InventoryMatch>,
}

fn norm(s: &Option<String>) -> Option<String> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_ascii_lowercase)
}

/// Fill what `into` does not know from `from` (the first transport to report a fact wins).
fn fill(into: &mut DeviceIdentity, from: &DeviceIdentity) {
    fn take<T: Clone>(a: &mut Option<T>, b: &Option<T>) {
        if a.is_none() {
            a.clone_from(b);
        }
    }
    take(&mut into.vendor, &from.vendor);
    take(&mut into.model, &from.model);
    take(&mut into.hardware_revision, &from.hardware_revision);
    take(&mut into.serial_number, &from.serial_number);
    take(&mut into.firmware_version, &from.firmware_version);
    take(&mut into.image_hash, &from.image_hash);
}

/// Add one find to the devices seen so far: a new address of a known device (same serial
/// number), or a new device. Returns the index of the device it went to.
pub fn merge(devices: &mut Vec<DiscoveredDevice>, find: Find) -> usize {
    if let Some(i) = devices.iter().position(|d| d.addresses.contains(&find.address)) {
        let d = &mut devices[i];
        fill(&mut d.identity, &find.identity);
        d.capabilities.extend(find.capabilities);
        return i;
    }
    let serial = norm(&find.identity.serial_number);
    if let Some(sn) = &serial
        && let Some(i) =
            devices.iter().position(|d| norm(&d.identity.serial_number).as_ref() == Some(sn))
    {
        let d = &mut devices[i];
        d.addresses.push(find.address);
        d.via.push(find.via);
        fill(&mut d.identity, &find.identity);
        if d.bootloader.is_none() {
            d.bootloader = find.bootloader;
        }
        d.capabilities.extend(find.capabilities);
        return i;
    }
    devices.push(DiscoveredDevice {
        addresses: vec![find.address],
        via: vec![find.via],
        identity: find.identity,
        bootloader: find.bootloader,
        capabilities: find.capabilities,
        matched: None,
    });
    devices.len() - 1
}

/// Match every device to `inventory` (the site's or work order's devices) and return the ids of
/// inventory devices nothing matched. Earlier matches are recomputed from scratch, so the result
/// does not depend on the order devices were found in.
pub fn match_inventory(
    devices: &mut [DiscoveredDevice],
    inventory: &[InventoryDevice],
) -> Vec<String> {
    for d in devices.iter_mut() {
        d.matched = None;
    }
    let mut taken: BTreeSet<usize> = BTreeSet::new();
    // Serial numbers first.
    for d in devices.iter_mut() {
        let Some(sn) = norm(&d.identity.serial_number) else { continue };
        let hits: Vec<usize> = inventory
            .iter()
            .enumerate()
            .filter(|(i, inv)| !taken.contains(i) && norm(&inv.serial_number).as_ref() == Some(&sn))
            .map(|(i, _)| i)
            .collect();
        if let [i] = hits[..] {
            taken.insert(i);
            d.matched = Some(InventoryMatch {
                device_id: inventory[i].id.clone(),
                key: MatchKey::SerialNumber,
            });
        }
    }
    // Then the only device of its model, where a serial number is missing on one side.
    let model_key = |vendor: &Option<String>, model: &Option<String>, hw: &Option<String>| {
        Some((norm(vendor)?, norm(model)?, norm(hw)))
    };
    let unmatched: Vec<usize> =
        (0..devices.len()).filter(|&i| devices[i].matched.is_none()).collect();
    for &di in &unmatched {
        let d = &devices[di];
        let Some(key) =
            model_key(&d.identity.vendor, &d.identity.model, &d.identity.hardware_revision)
        else {
            continue;
        };
        let has_sn = norm(&d.identity.serial_number).is_some();
        let same_model_found = unmatched
            .iter()
            .filter(|&&o| {
                let o = &devices[o];
                model_key(&o.identity.vendor, &o.identity.model, &o.identity.hardware_revision)
                    .as_ref()
                    == Some(&key)
            })
            .count();
        let candidates: Vec<usize> = inventory
            .iter()
            .enumerate()
            .filter(|(i, inv)| {
                !taken.contains(i)
                    && model_key(&inv.vendor, &inv.model, &inv.hardware_revision).as_ref()
                        == Some(&key)
            })
            .map(|(i, _)| i)
            .collect();
        // A serial number on both sides that differs is a different device, never a match.
        if let [i] = candidates[..]
            && same_model_found == 1
            && !(has_sn && norm(&inventory[i].serial_number).is_some())
        {
            taken.insert(i);
            devices[di].matched = Some(InventoryMatch {
                device_id: inventory[i].id.clone(),
                key: MatchKey::OnlyOfItsModel,
            });
        }
    }
    inventory
        .iter()
        .enumerate()
        .filter(|(i, _)| !taken.contains(i))
        .map(|(_, d)| d.id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(addr: &str, sn: Option<&str>, model: Option<&str>) -> Find {
        Find {
            address: DeviceAddress::Udp { addr: addr.into() },
            via: "udp-probe".into(),
            identity: DeviceIdentity {
                vendor: model.map(|_| "Acme".into()),
                model: model.map(Into::into),
                serial_number: sn.map(Into::into),
                ..Default::default()
            },
            bootloader: Some("MCUboot".into()),
            capabilities: [Capability::Upload].into(),
        }
    }

    fn inv(id: &str, sn: Option<&str>, model: &str) -> InventoryDevice {
        InventoryDevice {
            id: id.into(),
            site_id: Some("s".into()),
            vendor: Some("acme".into()),
            model: Some(model.into()),
            hardware_revision: None,
            serial_number: sn.map(Into::into),
            firmware_version: None,
        }
    }

    #[test]
    fn one_serial_number_is_one_device_with_two_addresses() {
        let mut devices = Vec::new();
        merge(&mut devices, find("10.0.0.2:1337", Some("SN-1"), Some("S1")));
        let mut serial = find("x", Some(" sn-1 "), None);
        serial.address = DeviceAddress::Serial { port: "/dev/ttyUSB0".into(), baud: 115200 };
        serial.via = "serial".into();
        serial.capabilities = [Capability::TestBoot].into();
        assert_eq!(merge(&mut devices, serial), 0);
        merge(&mut devices, find("10.0.0.3:1337", None, Some("S1")));
        merge(&mut devices, find("10.0.0.4:1337", None, Some("S1")));
        assert_eq!(devices.len(), 3, "finds without serial numbers are never merged");
        assert_eq!(devices[0].addresses.len(), 2);
        assert_eq!(devices[0].capabilities.len(), 2);
        assert_eq!(devices[0].identity.model.as_deref(), Some("S1"));
    }

    #[test]
    fn serial_numbers_match_first_and_ambiguity_stays_unknown() {
        let inventory = vec![
            inv("a", Some("SN-1"), "S1"),
            inv("b", None, "S1"),
            inv("c", None, "S1"),
            inv("d", None, "G7"),
        ];
        let mut devices = Vec::new();
        merge(&mut devices, find("h1:1", Some("sn-1"), Some("S1")));
        merge(&mut devices, find("h2:1", None, Some("S1")));
        merge(&mut devices, find("h3:1", None, Some("G7")));
        merge(&mut devices, find("h4:1", Some("SN-9"), Some("X")));
        let missing = match_inventory(&mut devices, &inventory);
        assert_eq!(
            devices[0].matched,
            Some(InventoryMatch { device_id: "a".into(), key: MatchKey::SerialNumber })
        );
        // Two inventory S1 devices without serial numbers: which one this is cannot be told.
        assert_eq!(devices[1].matched, None);
        assert_eq!(
            devices[2].matched,
            Some(InventoryMatch { device_id: "d".into(), key: MatchKey::OnlyOfItsModel })
        );
        assert_eq!(devices[3].matched, None, "unknown devices stay unknown");
        assert_eq!(missing, vec!["b".to_string(), "c".to_string()]);
    }

    #[test]
    fn a_different_serial_number_never_matches_by_model() {
        let inventory = vec![inv("a", Some("SN-1"), "S1")];
        let mut devices = Vec::new();
        merge(&mut devices, find("h1:1", Some("SN-2"), Some("S1")));
        let missing = match_inventory(&mut devices, &inventory);
        assert_eq!(devices[0].matched, None);
        assert_eq!(missing, vec!["a".to_string()]);
    }
}
