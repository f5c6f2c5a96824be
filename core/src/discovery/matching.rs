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
//!   technician can check). A device that reports no vendor (SMP has no vendor query: a board on
//!   a serial port tells only its model and revision) is compared on model and revision, under
//!   the same uniqueness rule. Ambiguity is never resolved by guessing: the device stays
//!   unknown.
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
    /// What else the device said that the technician may want to see, as `name: value` lines
    /// (USB identity strings, DfuSe memory maps); never used for matching.
    #[serde(default)]
    pub details: Vec<String>,
}

/// Which inventory key matched a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum MatchKey {
    /// The serial number the device reports equals the inventory's.
    SerialNumber,
    /// No serial number to compare; the only inventory device of this vendor (when the device
    /// reports one), model and hardware revision at the site that nothing else matched.
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
    /// USB identity strings, DfuSe memory maps, ... (`name: value` lines), for the technician.
    #[serde(default)]
    pub details: Vec<String>,
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
    take(&mut into.mode, &from.mode);
}

fn extend_details(into: &mut Vec<String>, more: Vec<String>) {
    for line in more {
        if !into.contains(&line) {
            into.push(line);
        }
    }
}

/// Add one find to the devices seen so far: a new address of a known device (same serial
/// number), or a new device. Returns the index of the device it went to.
pub fn merge(devices: &mut Vec<DiscoveredDevice>, find: Find) -> usize {
    if let Some(i) = devices.iter().position(|d| d.addresses.contains(&find.address)) {
        let d = &mut devices[i];
        fill(&mut d.identity, &find.identity);
        d.capabilities.extend(find.capabilities);
        extend_details(&mut d.details, find.details);
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
        extend_details(&mut d.details, find.details);
        return i;
    }
    devices.push(DiscoveredDevice {
        addresses: vec![find.address],
        via: vec![find.via],
        identity: find.identity,
        bootloader: find.bootloader,
        capabilities: find.capabilities,
        details: find.details,
        matched: None,
    });
    devices.len() - 1
}

/// The identity fields matching compares, normalised once per matching run.
struct Keys {
    vendor: Option<String>,
    model: Option<String>,
    hardware_revision: Option<String>,
    serial_number: Option<String>,
}

impl Keys {
    fn of_device(d: &DeviceIdentity) -> Keys {
        Keys {
            vendor: norm(&d.vendor),
            model: norm(&d.model),
            hardware_revision: norm(&d.hardware_revision),
            serial_number: norm(&d.serial_number),
        }
    }

    fn of_inventory(d: &InventoryDevice) -> Keys {
        Keys {
            vendor: norm(&d.vendor),
            model: norm(&d.model),
            hardware_revision: norm(&d.hardware_revision),
            serial_number: norm(&d.serial_number),
        }
    }
}

/// Whether a device without a usable serial-number match can be `inv` by its model: the same
/// model and hardware revision (a revision unknown on both sides is the same), the inventory's
/// vendor (or no vendor reported: SMP has no vendor query, so a board found on a serial port
/// knows only its model and revision), and not a serial number on both sides (they differ, or
/// the inventory holds it twice: a different or an undecidable device, never a match).
fn same_model(d: &Keys, inv: &Keys) -> bool {
    let (Some(model), Some(inv_model), Some(inv_vendor)) = (&d.model, &inv.model, &inv.vendor)
    else {
        return false;
    };
    model == inv_model
        && d.hardware_revision == inv.hardware_revision
        && d.vendor.as_ref().is_none_or(|v| v == inv_vendor)
        && !(d.serial_number.is_some() && inv.serial_number.is_some())
}

/// Match every device to `inventory` (the site's or work order's devices) and return the ids of
/// inventory devices nothing matched. Earlier matches are recomputed from scratch, so the result
/// does not depend on the order devices were found in. Discovery runs it after every find, so
/// it stays within devices × inventory comparisons.
pub fn match_inventory(
    devices: &mut [DiscoveredDevice],
    inventory: &[InventoryDevice],
) -> Vec<String> {
    let found: Vec<Keys> = devices.iter().map(|d| Keys::of_device(&d.identity)).collect();
    let known: Vec<Keys> = inventory.iter().map(Keys::of_inventory).collect();
    let mut matched: Vec<Option<InventoryMatch>> = vec![None; devices.len()];
    let mut taken = vec![false; inventory.len()];
    let take = |i: usize, key: MatchKey| InventoryMatch { device_id: inventory[i].id.clone(), key };
    // Serial numbers first: the one inventory device (not taken yet) with the same number.
    for (di, d) in found.iter().enumerate() {
        let Some(sn) = &d.serial_number else { continue };
        let mut hits =
            (0..known.len()).filter(|&i| !taken[i] && known[i].serial_number.as_ref() == Some(sn));
        if let (Some(i), None) = (hits.next(), hits.next()) {
            taken[i] = true;
            matched[di] = Some(take(i, MatchKey::SerialNumber));
        }
    }
    // Then the only device of its model, where a serial number is missing on one side. Every
    // pair is judged against the serial-number matches alone (not against each other), so the
    // outcome does not depend on the order devices were found in.
    let unmatched: Vec<usize> = (0..found.len()).filter(|&di| matched[di].is_none()).collect();
    let free: Vec<usize> = (0..known.len()).filter(|&i| !taken[i]).collect();
    // For each device, the inventory devices it can be; for each inventory device, how many
    // devices found can be it.
    let mut could_be = vec![0usize; known.len()];
    let mut candidates: Vec<(usize, Option<usize>, usize)> = Vec::with_capacity(unmatched.len());
    for &di in &unmatched {
        let (mut first, mut count) = (None, 0);
        for &i in &free {
            if same_model(&found[di], &known[i]) {
                could_be[i] += 1;
                first.get_or_insert(i);
                count += 1;
            }
        }
        candidates.push((di, first, count));
    }
    // Exactly one inventory device it can be, and no other device found could be that one.
    for (di, first, count) in candidates {
        if let Some(i) = first
            && count == 1
            && could_be[i] == 1
        {
            taken[i] = true;
            matched[di] = Some(take(i, MatchKey::OnlyOfItsModel));
        }
    }
    for (d, m) in devices.iter_mut().zip(matched) {
        d.matched = m;
    }
    inventory.iter().zip(&taken).filter(|(_, t)| !**t).map(|(d, _)| d.id.clone()).collect()
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
            details: vec![],
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

    /// SMP on a serial port tells the model and revision, never the vendor or serial number.
    fn smp_serial_find(port: &str, model: &str) -> Find {
        Find {
            address: DeviceAddress::Serial { port: port.into(), baud: 115_200 },
            via: "serial".into(),
            identity: DeviceIdentity { model: Some(model.into()), ..Default::default() },
            bootloader: Some("MCUboot".into()),
            capabilities: [Capability::Upload].into(),
            details: vec![],
        }
    }

    #[test]
    fn a_board_that_reports_no_vendor_matches_the_only_device_of_its_model() {
        let mut other_vendor = inv("e", None, "S1");
        other_vendor.vendor = Some("Other".into());
        let inventory = vec![inv("a", Some("SN-1"), "P1"), inv("b", None, "S1"), other_vendor];
        let mut devices = Vec::new();
        merge(&mut devices, smp_serial_find("/dev/pts/1", "P1"));
        // Two inventory S1 devices of different vendors: a vendor-less S1 could be either.
        merge(&mut devices, smp_serial_find("/dev/pts/2", "S1"));
        // A device with another serial number is not this one and takes nothing from it.
        merge(&mut devices, find("h1:1", Some("SN-9"), Some("P1")));
        let missing = match_inventory(&mut devices, &inventory);
        assert_eq!(
            devices[0].matched,
            Some(InventoryMatch { device_id: "a".into(), key: MatchKey::OnlyOfItsModel })
        );
        assert_eq!(devices[1].matched, None, "ambiguous across vendors: {devices:#?}");
        assert_eq!(devices[2].matched, None);
        assert_eq!(missing, vec!["b".to_string(), "e".to_string()]);

        // An inventory device without a vendor is never matched by model.
        let mut no_vendor = inv("n", None, "P1");
        no_vendor.vendor = None;
        let mut devices = Vec::new();
        merge(&mut devices, smp_serial_find("/dev/pts/1", "P1"));
        assert_eq!(match_inventory(&mut devices, &[no_vendor]), vec!["n".to_string()]);
        assert_eq!(devices[0].matched, None);
    }

    #[test]
    fn model_matches_do_not_depend_on_the_order_devices_were_found_in() {
        let inventory = vec![inv("a", None, "S1"), inv("d", None, "G7")];
        let finds = [
            find("h1:1", None, Some("S1")),
            smp_serial_find("/dev/pts/1", "S1"),
            find("h3:1", None, Some("G7")),
        ];
        let mut outcomes = Vec::new();
        for order in [[0, 1, 2], [1, 0, 2], [2, 1, 0]] {
            let mut devices = Vec::new();
            for i in order {
                merge(&mut devices, finds[i].clone());
            }
            let missing = match_inventory(&mut devices, &inventory);
            let mut matched: Vec<_> =
                devices.iter().map(|d| (d.addresses[0].to_string(), d.matched.clone())).collect();
            matched.sort_by(|a, b| a.0.cmp(&b.0));
            outcomes.push((matched, missing));
        }
        assert!(outcomes.windows(2).all(|w| w[0] == w[1]), "{outcomes:#?}");
        // Two finds that could be `a`: neither is; `d` is the only G7.
        assert_eq!(outcomes[0].1, vec!["a".to_string()]);
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
