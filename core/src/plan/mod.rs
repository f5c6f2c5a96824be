//! The planner: which approved bundles go to which device, in which order, and why a device
//! cannot be patched.
//!
//! Planning is a pure function of its inputs (devices from the inventory, catalog entries that
//! passed verification, the names of credentials in the keyring, rollback approvals and the
//! current time), so the same inputs always give the same plan and the plan can be saved, shown
//! (`fieldpatch plan`) and executed later by a batch session, offline.
//!
//! * **Upgrade paths.** A device is taken to the highest version it can reach through usable
//!   bundles, following the fewest steps (A -> B -> C when no bundle goes from A to C directly).
//! * **Refusals are reasons, not silence.** Every device ends in exactly one [`Disposition`]; an
//!   [`Unpatchable`] names what is missing and what to do about it.
//! * **Order.** Patchable devices first, by the highest severity (CVSS) their steps fix, then by
//!   the device's criticality, then by id; scheduled devices (outside their maintenance window)
//!   come next, then up-to-date and unpatchable ones.

use crate::model::{DeviceIdentity, DeviceMode, Version};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, VecDeque};
use ts_rs::TS;

/// How much the customer depends on a device (from the inventory).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default, TS,
)]
#[serde(rename_all = "snake_case")]
pub enum Criticality {
    Low,
    #[default]
    Normal,
    High,
    Critical,
}

/// A period in which a device may be taken down for patching.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
pub struct MaintenanceWindow {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// How to reach a device.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, TS)]
#[serde(tag = "transport", rename_all = "snake_case")]
pub enum DeviceAddress {
    /// SMP over a serial port.
    Serial { port: String, baud: u32 },
    /// SMP over UDP (`host:port`).
    Udp { addr: String },
    /// USB DFU, by vendor/product id and optional serial number.
    Usb { vid: u16, pid: u16, serial: Option<String> },
    /// An embedded Linux gateway's SWUpdate web server (`http://HOST:PORT`), with the digest
    /// user name when it is not `admin`; the password is the device's keyring credential.
    Swupdate { url: String, user: Option<String> },
    /// An ESP32-family device in its ROM serial bootloader (`esp:PORT[@BAUD][?reset=..&chip=..]`):
    /// the loader is reached at 115200 baud and switched to `baud` for the upload where given;
    /// `reset` is how the adapter's DTR/RTS lines get the chip into its loader; `chip` (an
    /// esptool chip name such as `esp32`) is checked against the chip the ROM reports.
    Esp {
        port: String,
        baud: Option<u32>,
        #[serde(default)]
        reset: EspReset,
        #[serde(default)]
        chip: Option<String>,
    },
}

/// How an ESP address gets the chip into its ROM loader. The default is the classic auto-reset
/// circuit of USB-UART dev boards (RTS = EN, DTR = GPIO0), what real adapters have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, TS)]
#[serde(rename_all = "kebab-case")]
pub enum EspReset {
    #[default]
    Classic,
    /// The chip's built-in USB-Serial/JTAG peripheral (ESP32-C3, -S3, -C6, ...).
    UsbJtag,
    /// Leave DTR/RTS alone: the technician put the device in download mode (hold BOOT, press EN),
    /// or the adapter has no such lines.
    None,
}

impl EspReset {
    /// The driver's reset sequence for this mode.
    pub fn driver_mode(self) -> fieldpatch_drivers::esp::ResetMode {
        use fieldpatch_drivers::esp::ResetMode;
        match self {
            EspReset::Classic => ResetMode::Classic,
            EspReset::UsbJtag => ResetMode::UsbSerialJtag,
            EspReset::None => ResetMode::NoReset,
        }
    }

    /// The word used in addresses (`?reset=`).
    pub fn as_str(self) -> &'static str {
        match self {
            EspReset::Classic => "classic",
            EspReset::UsbJtag => "usb-jtag",
            EspReset::None => "none",
        }
    }
}

impl std::str::FromStr for EspReset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "classic" => Ok(EspReset::Classic),
            "usb-jtag" => Ok(EspReset::UsbJtag),
            "none" => Ok(EspReset::None),
            _ => Err(format!("reset {s:?} is not classic, usb-jtag or none")),
        }
    }
}

/// The esptool name of an ESP chip (`esp32`, `esp32c3`, ...), when `name` is one.
fn esp_chip_name(name: &str) -> Option<&'static str> {
    esp_chip(name).map(|c| c.name())
}

/// The chip an ESP address names (`esp32`, `ESP32-C3`, ...), as the driver knows it.
pub fn esp_chip(name: &str) -> Option<fieldpatch_drivers::esp::Chip> {
    fieldpatch_drivers::esp::Chip::ALL
        .into_iter()
        .find(|c| c.name().replace('-', "").eq_ignore_ascii_case(&name.replace('-', "")))
}

/// The digest user name of an SWUpdate address without one.
pub const SWUPDATE_DEFAULT_USER: &str = "admin";

impl std::fmt::Display for DeviceAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceAddress::Serial { port, baud } => write!(f, "serial:{port}@{baud}"),
            DeviceAddress::Udp { addr } => write!(f, "udp:{addr}"),
            DeviceAddress::Usb { vid, pid, serial } => {
                write!(f, "usb:{vid:04x}:{pid:04x}")?;
                if let Some(s) = serial {
                    write!(f, ":{s}")?;
                }
                Ok(())
            }
            DeviceAddress::Swupdate { url, user: None } => write!(f, "swupdate:{url}"),
            DeviceAddress::Swupdate { url, user: Some(u) } => write!(f, "swupdate:{u}@{url}"),
            DeviceAddress::Esp { port, baud, reset, chip } => {
                write!(f, "esp:{port}")?;
                if let Some(b) = baud {
                    write!(f, "@{b}")?;
                }
                let mut sep = '?';
                if *reset != EspReset::Classic {
                    write!(f, "{sep}reset={}", reset.as_str())?;
                    sep = '&';
                }
                if let Some(c) = chip {
                    write!(f, "{sep}chip={c}")?;
                }
                Ok(())
            }
        }
    }
}

/// Text that is not a device address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a device address ({why}): write serial:PORT@BAUD, udp:HOST:PORT, usb:VVVV:PPPP[:SERIAL] (vendor and product id in hex, as `fieldpatch dfu list` shows them), swupdate:[USER@]http://HOST:PORT or esp:PORT[@BAUD][?reset=classic|usb-jtag|none][&chip=esp32]"
)]
pub struct AddressError {
    pub text: String,
    pub why: String,
}

impl AddressError {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        "bad_address"
    }
}

/// The text form [`DeviceAddress`] displays as: `serial:PORT@BAUD`, `udp:HOST:PORT`,
/// `usb:VVVV:PPPP` or `usb:VVVV:PPPP:SERIAL` (the serial number is everything after the third
/// colon, so it may contain colons itself), `swupdate:[USER@]http://HOST:PORT`, or
/// `esp:PORT[@BAUD][?reset=classic|usb-jtag|none][&chip=CHIP]` (no `reset`: classic).
impl std::str::FromStr for DeviceAddress {
    type Err = AddressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| AddressError { text: text.to_string(), why: why.to_string() };
        let (transport, rest) = text.split_once(':').ok_or_else(|| bad("no transport"))?;
        match transport {
            "serial" => {
                let (port, baud) = rest.rsplit_once('@').ok_or_else(|| bad("no @BAUD"))?;
                let baud = baud.parse().map_err(|_| bad("the baud rate is not a number"))?;
                if port.is_empty() {
                    return Err(bad("no port"));
                }
                Ok(DeviceAddress::Serial { port: port.to_string(), baud })
            }
            "udp" if !rest.is_empty() => Ok(DeviceAddress::Udp { addr: rest.to_string() }),
            "udp" => Err(bad("no host")),
            "usb" => {
                let mut parts = rest.splitn(3, ':');
                let mut id = |what: &str| {
                    let hex = parts.next().unwrap_or_default();
                    if hex.is_empty() || hex.len() > 4 {
                        return Err(bad(&format!("the {what} id is not 1 to 4 hex digits")));
                    }
                    u16::from_str_radix(hex, 16)
                        .map_err(|_| bad(&format!("the {what} id is not 1 to 4 hex digits")))
                };
                let vid = id("vendor")?;
                let pid = id("product")?;
                let serial = match parts.next() {
                    None => None,
                    Some("") => return Err(bad("the serial number is empty")),
                    Some(s) => Some(s.to_string()),
                };
                Ok(DeviceAddress::Usb { vid, pid, serial })
            }
            "swupdate" => {
                let (user, url) = match rest.split_once("@http://") {
                    Some((u, host)) => (Some(u), format!("http://{host}")),
                    None => (None, rest.to_string()),
                };
                let host = url.strip_prefix("http://").ok_or_else(|| bad("no http:// URL"))?;
                let host = host.trim_end_matches('/');
                if host.is_empty()
                    || host.contains(['/', '@', '?', '#'])
                    || host.chars().any(char::is_whitespace)
                {
                    return Err(bad("the URL is not http://HOST:PORT"));
                }
                if user.is_some_and(|u| u.is_empty() || u.contains([':', '/'])) {
                    return Err(bad("the user name is empty or has `:` or `/`"));
                }
                Ok(DeviceAddress::Swupdate {
                    url: format!("http://{host}"),
                    user: user.map(str::to_string),
                })
            }
            "esp" => {
                let (head, query) = match rest.split_once('?') {
                    Some((h, q)) => (h, Some(q)),
                    None => (rest, None),
                };
                let (port, baud) = match head.rsplit_once('@') {
                    Some((p, b)) => {
                        let baud: u32 =
                            b.parse().map_err(|_| bad("the baud rate is not a number"))?;
                        if baud == 0 {
                            return Err(bad("the baud rate is 0"));
                        }
                        (p, Some(baud))
                    }
                    None => (head, None),
                };
                if port.is_empty() {
                    return Err(bad("no port"));
                }
                let (mut reset, mut chip) = (EspReset::Classic, None);
                for pair in query.into_iter().flat_map(|q| q.split('&')) {
                    match pair.split_once('=') {
                        Some(("reset", r)) => reset = r.parse().map_err(|e: String| bad(&e))?,
                        Some(("chip", c)) => {
                            let name = esp_chip_name(c).ok_or_else(|| {
                                bad(&format!("chip {c:?} is not an ESP chip esptool knows"))
                            })?;
                            chip = Some(name.to_ascii_lowercase().replace('-', ""));
                        }
                        _ => return Err(bad(&format!("{pair:?} is not reset=... or chip=..."))),
                    }
                }
                Ok(DeviceAddress::Esp { port: port.to_string(), baud, reset, chip })
            }
            _ => Err(bad("the transport is not serial, udp, usb, swupdate or esp")),
        }
    }
}

/// A device as the planner sees it: inventory facts plus what was identified on site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct DeviceRecord {
    /// Inventory id (stable across visits).
    pub id: String,
    pub address: DeviceAddress,
    pub identity: DeviceIdentity,
    #[serde(default)]
    pub criticality: Criticality,
    /// Empty means "any time".
    #[serde(default)]
    pub windows: Vec<MaintenanceWindow>,
    /// Name of the keyring credential needed to open this device, if any.
    #[serde(default)]
    pub credential: Option<String>,
    /// A URL of the device's own that must answer (HTTP 2xx) after an update before it counts
    /// as healthy, for devices whose update interface cannot report what they run (SWUpdate
    /// gateways). Absent: the update interface answering again is the health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[ts(optional)]
    pub health_url: Option<String>,
}

/// An inclusive version range (as bundle manifests state it); `None` bounds are open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, TS)]
pub struct InstalledRange {
    /// Lowest version included.
    pub min: Option<Version>,
    /// Highest version included.
    pub max: Option<Version>,
}

impl InstalledRange {
    pub fn contains(&self, v: Version) -> bool {
        self.min.is_none_or(|m| v >= m) && self.max.is_none_or(|m| v <= m)
    }
}

/// One verified bundle, as the planner needs it. Built from a verified manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct PlannableBundle {
    pub bundle_id: String,
    pub vendor: String,
    pub model: String,
    /// Hardware revisions accepted (inclusive bounds, compared as versions when both parse,
    /// otherwise as text); `None` means any.
    pub hw_min: Option<String>,
    pub hw_max: Option<String>,
    /// Installed versions this bundle applies to.
    pub applies_to: InstalledRange,
    /// The version it installs.
    pub installs: Version,
    /// Highest CVSS score among the issues it fixes (0 when none).
    pub cvss: f32,
    #[serde(default)]
    pub cves: Vec<String>,
    /// Last moment the bundle may be used (its expiry, plus the offline grace period when the
    /// catalog was verified online within it).
    pub usable_until: DateTime<Utc>,
    /// Whether opening the device for this bundle needs a credential from the keyring.
    #[serde(default)]
    pub needs_credential: bool,
}

impl PlannableBundle {
    /// Whether the bundle is for this device: vendor, model and hardware revision.
    pub fn targets(&self, id: &DeviceIdentity) -> bool {
        let (Some(vendor), Some(model)) = (&id.vendor, &id.model) else { return false };
        if !vendor.eq_ignore_ascii_case(&self.vendor) || !model.eq_ignore_ascii_case(&self.model) {
            return false;
        }
        match &id.hardware_revision {
            Some(hw) => {
                self.hw_min.as_deref().is_none_or(|m| cmp_rev(hw, m) != Ordering::Less)
                    && self.hw_max.as_deref().is_none_or(|m| cmp_rev(hw, m) != Ordering::Greater)
            }
            None => self.hw_min.is_none() && self.hw_max.is_none(),
        }
    }
}

fn cmp_rev(a: &str, b: &str) -> Ordering {
    match (a.parse::<Version>(), b.parse::<Version>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

/// A signed approval to install an older version: exactly `from` -> `to` on `model`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovedDowngrade {
    pub vendor: String,
    pub model: String,
    pub from: Version,
    pub to: Version,
}

/// Everything planning depends on.
#[derive(Debug, Clone, Default)]
pub struct PlanInput {
    pub devices: Vec<DeviceRecord>,
    pub catalog: Vec<PlannableBundle>,
    /// Names of credentials present in the keyring.
    pub credentials: BTreeSet<String>,
    pub rollback_approvals: Vec<ApprovedDowngrade>,
}

/// One bundle applied to one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct Step {
    pub bundle_id: String,
    pub from: Version,
    pub to: Version,
    pub cvss: f32,
    /// True for an approved downgrade.
    #[serde(default)]
    pub rollback: bool,
}

/// Why a device cannot be patched now. Messages say what to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS, thiserror::Error)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Unpatchable {
    #[error("device not identified ({missing} unknown): reconnect it and identify it again")]
    UnknownDevice { missing: String },
    #[error("no approved bundle targets {vendor} {model}: sync the catalog or ask for a release")]
    NoBundle { vendor: String, model: String },
    #[error(
        "no usable upgrade path from {from} towards {latest}: a bundle that applies to {from} is missing from the catalog"
    )]
    NoUpgradePath { from: Version, latest: Version },
    #[error(
        "bundle {bundle_id} expired (usable until {usable_until}) and is past its offline grace period: sync the catalog"
    )]
    BundleExpired { bundle_id: String, usable_until: DateTime<Utc> },
    #[error(
        "device runs {from}, newer than the approved {to}: a downgrade needs a signed rollback approval for exactly {from} -> {to}"
    )]
    DowngradeRefused { from: Version, to: Version },
    #[error("credential {name:?} is not in the keyring: add it with `fieldpatch credentials set`")]
    MissingCredential { name: String },
    #[error("no maintenance window remains for this device: agree a window with the site owner")]
    NoMaintenanceWindow,
}

/// What the plan says about one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
#[serde(tag = "disposition", rename_all = "snake_case")]
pub enum Disposition {
    /// Flash these steps in order now. `latest` is the newest version the catalog has; when it
    /// differs from the last step's `to`, the device stops short of it (see `short_reason`).
    Patch { steps: Vec<Step>, latest: Version, short_reason: Option<Unpatchable> },
    /// Outside its maintenance window: flash these steps from `not_before`.
    Scheduled { steps: Vec<Step>, not_before: DateTime<Utc> },
    /// Already at the newest approved version.
    UpToDate { version: Version },
    /// Cannot be patched, and why.
    Unpatchable { why: Unpatchable },
}

/// The plan for one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct DevicePlan {
    pub device: DeviceRecord,
    pub disposition: Disposition,
    /// Why flashing this device, as it was identified, can neither test-boot nor revert the new
    /// image (a device in MCUboot's serial recovery), said before the technician starts; `None`:
    /// nothing to say. Absent from plans made before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[ts(optional)]
    pub no_rollback: Option<String>,
}

impl DevicePlan {
    /// Steps to flash now (empty unless the disposition is `Patch`).
    pub fn steps_now(&self) -> &[Step] {
        match &self.disposition {
            Disposition::Patch { steps, .. } => steps,
            _ => &[],
        }
    }

    fn rank(&self) -> (u8, i64, Criticality) {
        let sev = |s: &[Step]| s.iter().map(|s| (s.cvss * 10.0) as i64).max().unwrap_or(0);
        match &self.disposition {
            Disposition::Patch { steps, .. } => (0, -sev(steps), self.device.criticality),
            Disposition::Scheduled { steps, .. } => (1, -sev(steps), self.device.criticality),
            Disposition::UpToDate { .. } => (2, 0, self.device.criticality),
            Disposition::Unpatchable { .. } => (3, 0, self.device.criticality),
        }
    }
}

/// A plan: devices in the order they should be flashed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct Plan {
    pub created: DateTime<Utc>,
    pub devices: Vec<DevicePlan>,
}

impl Plan {
    /// Devices with steps to flash now, in order.
    pub fn patchable(&self) -> impl Iterator<Item = &DevicePlan> {
        self.devices.iter().filter(|d| !d.steps_now().is_empty())
    }
}

/// Make a plan for `input` at time `now`.
pub fn plan(input: &PlanInput, now: DateTime<Utc>) -> Plan {
    let mut devices: Vec<DevicePlan> = input
        .devices
        .iter()
        .map(|d| DevicePlan {
            device: d.clone(),
            disposition: plan_device(input, d, now),
            no_rollback: no_rollback(d),
        })
        .collect();
    devices.sort_by(|a, b| {
        let (ga, sa, ca) = a.rank();
        let (gb, sb, cb) = b.rank();
        ga.cmp(&gb).then(sa.cmp(&sb)).then(cb.cmp(&ca)).then(a.device.id.cmp(&b.device.id))
    });
    Plan { created: now, devices }
}

/// What the plan says about a device that cannot test-boot or revert, as it was identified (a
/// bootloader in serial recovery) or by its kind (the way it is updated offers no way back).
fn no_rollback(d: &DeviceRecord) -> Option<String> {
    if d.identity.mode == Some(DeviceMode::SerialRecovery) {
        return Some(SERIAL_RECOVERY_NO_ROLLBACK.to_string());
    }
    match &d.address {
        DeviceAddress::Serial { .. } | DeviceAddress::Udp { .. } => None,
        DeviceAddress::Usb { .. } => Some(DFU_NO_ROLLBACK.to_string()),
        DeviceAddress::Swupdate { .. } => Some(SWUPDATE_NO_ROLLBACK.to_string()),
        DeviceAddress::Esp { .. } => Some(ESP_NO_ROLLBACK.to_string()),
    }
}

/// The plan's word on a USB DFU device.
pub const DFU_NO_ROLLBACK: &str = "USB DFU: the device writes and starts the new image itself; no test boot, and no revert by Fieldpatch";

/// The plan's word on an SWUpdate gateway.
pub const SWUPDATE_NO_ROLLBACK: &str = "SWUpdate gateway: no test boot or revert through its web server; any A/B fallback is the gateway's own";

/// The plan's word on an ESP device in its ROM loader.
pub const ESP_NO_ROLLBACK: &str = "ESP ROM loader: the new image is written in place; no test boot, and no revert (a failed write leaves the device in its ROM loader, from which it can be flashed again)";

/// The plan's word on a device in MCUboot's serial recovery.
pub const SERIAL_RECOVERY_NO_ROLLBACK: &str = "in MCUboot serial recovery: the new image overwrites the one the bootloader boots; no test boot, and no revert if it does not come up";

fn plan_device(input: &PlanInput, d: &DeviceRecord, now: DateTime<Utc>) -> Disposition {
    let unpatchable = |why| Disposition::Unpatchable { why };
    let id = &d.identity;
    let (Some(vendor), Some(model), Some(current)) =
        (id.vendor.clone(), id.model.clone(), id.firmware_version)
    else {
        let missing: Vec<&str> = [
            ("vendor", id.vendor.is_none()),
            ("model", id.model.is_none()),
            ("firmware version", id.firmware_version.is_none()),
        ]
        .into_iter()
        .filter_map(|(n, m)| m.then_some(n))
        .collect();
        return unpatchable(Unpatchable::UnknownDevice { missing: missing.join(", ") });
    };

    let matching: Vec<&PlannableBundle> = input.catalog.iter().filter(|e| e.targets(id)).collect();
    // The first of the bundles that install the highest version.
    let Some(latest_entry) = matching
        .iter()
        .copied()
        .reduce(|best, e| if e.installs > best.installs { e } else { best })
    else {
        return unpatchable(Unpatchable::NoBundle { vendor, model });
    };
    let latest = latest_entry.installs;

    let steps = if current > latest {
        // Newer than anything approved: only an approved downgrade to `latest` moves it.
        let approved = input.rollback_approvals.iter().any(|a| {
            a.vendor.eq_ignore_ascii_case(&vendor)
                && a.model.eq_ignore_ascii_case(&model)
                && a.from == current
                && a.to == latest
        });
        let entry = matching
            .iter()
            .filter(|e| e.installs == latest && e.usable_until >= now)
            .min_by(|a, b| a.bundle_id.cmp(&b.bundle_id));
        match (approved, entry) {
            (true, Some(e)) => vec![Step {
                bundle_id: e.bundle_id.clone(),
                from: current,
                to: latest,
                cvss: e.cvss,
                rollback: true,
            }],
            (true, None) => {
                return unpatchable(Unpatchable::BundleExpired {
                    bundle_id: latest_entry.bundle_id.clone(),
                    usable_until: latest_entry.usable_until,
                });
            }
            (false, _) => {
                return unpatchable(Unpatchable::DowngradeRefused { from: current, to: latest });
            }
        }
    } else if current == latest {
        return Disposition::UpToDate { version: current };
    } else {
        let usable: Vec<&PlannableBundle> =
            matching.iter().copied().filter(|e| e.usable_until >= now).collect();
        let path = shortest_path(&usable, current);
        let reached = path.last().map(|s| s.to).unwrap_or(current);
        if reached == current {
            // Nothing usable moves it: say whether expiry is what stands in the way.
            let all = shortest_path(&matching, current);
            if let Some(e) = all.iter().find_map(|s| {
                matching.iter().find(|e| e.bundle_id == s.bundle_id && e.usable_until < now)
            }) {
                return unpatchable(Unpatchable::BundleExpired {
                    bundle_id: e.bundle_id.clone(),
                    usable_until: e.usable_until,
                });
            }
            return unpatchable(Unpatchable::NoUpgradePath { from: current, latest });
        }
        path
    };

    // Credentials: the device's own, and any the bundles need.
    let needs_cred = steps
        .iter()
        .any(|s| matching.iter().any(|e| e.bundle_id == s.bundle_id && e.needs_credential));
    // An SWUpdate gateway's password: its record's credential, else `device/<id>/password`.
    let gateway = matches!(d.address, DeviceAddress::Swupdate { .. })
        .then(|| crate::flash::swupdate::default_credential(&d.id));
    if let Some(name) = d.credential.as_ref().or(gateway.as_ref()) {
        if !input.credentials.contains(name) {
            return unpatchable(Unpatchable::MissingCredential { name: name.clone() });
        }
    } else if needs_cred {
        return unpatchable(Unpatchable::MissingCredential { name: format!("device/{}", d.id) });
    }

    if !d.windows.is_empty() && !d.windows.iter().any(|w| w.start <= now && now < w.end) {
        return match d.windows.iter().filter(|w| w.start > now).map(|w| w.start).min() {
            Some(not_before) => Disposition::Scheduled { steps, not_before },
            None => unpatchable(Unpatchable::NoMaintenanceWindow),
        };
    }

    let reached = steps.last().map(|s| s.to).unwrap_or(current);
    let short_reason =
        (reached < latest).then_some(Unpatchable::NoUpgradePath { from: reached, latest });
    Disposition::Patch { steps, latest, short_reason }
}

/// Fewest steps from `from` to the highest reachable version (ties: lowest bundle id first, so
/// the result is deterministic). Only upgrades are followed.
fn shortest_path(entries: &[&PlannableBundle], from: Version) -> Vec<Step> {
    let mut prev: HashMap<Version, (Version, &PlannableBundle)> = HashMap::new();
    let mut queue = VecDeque::from([from]);
    let mut seen = BTreeSet::from([from]);
    let mut sorted: Vec<&PlannableBundle> = entries.to_vec();
    sorted.sort_by(|a, b| a.bundle_id.cmp(&b.bundle_id));
    while let Some(v) = queue.pop_front() {
        for e in &sorted {
            if e.applies_to.contains(v) && e.installs > v && seen.insert(e.installs) {
                prev.insert(e.installs, (v, e));
                queue.push_back(e.installs);
            }
        }
    }
    // `seen` holds `from` at least.
    let best = seen.last().copied().unwrap_or(from);
    let mut steps = Vec::new();
    let mut at = best;
    while at != from {
        let (p, e) = prev[&at];
        steps.push(Step {
            bundle_id: e.bundle_id.clone(),
            from: p,
            to: at,
            cvss: e.cvss,
            rollback: false,
        });
        at = p;
    }
    steps.reverse();
    steps
}

/// Check the steps a plan chose for `device` against the verified catalog, at the moment they
/// are about to run: each step's bundle is in the catalog, targets this device (vendor, model,
/// hardware revision), applies to the version the step starts from and installs the version it
/// names, and is still usable at `now` (not past its expiry, its trust store's or the offline
/// grace period's end); the steps chain; none is a downgrade (the planner has no signed approvals
/// for one); and the device runs the version the remaining steps start from (or one a step installs, when
/// a flash was interrupted). The plan selects devices and order; it never decides what is sent.
pub fn check_steps(
    catalog: &[PlannableBundle],
    device: &DeviceIdentity,
    running: Option<Version>,
    steps: &[Step],
    now: DateTime<Utc>,
) -> Result<(), String> {
    let mut previous: Option<Version> = None;
    for step in steps {
        let entry = catalog
            .iter()
            .find(|e| e.bundle_id == step.bundle_id)
            .ok_or_else(|| format!("bundle {} is not in the verified catalog", step.bundle_id))?;
        if entry.usable_until < now {
            return Err(format!(
                "bundle {} was usable until {} (its expiry, the trust store's or the offline grace period's end) and it is {} now: sync for a current catalog, then plan again",
                step.bundle_id,
                entry.usable_until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ));
        }
        if !entry.targets(device) {
            return Err(format!(
                "bundle {} is for {} {}, not this device ({} {}, hardware {})",
                step.bundle_id,
                entry.vendor,
                entry.model,
                device.vendor.as_deref().unwrap_or("?"),
                device.model.as_deref().unwrap_or("?"),
                device.hardware_revision.as_deref().unwrap_or("?")
            ));
        }
        if step.to != entry.installs || !entry.applies_to.contains(step.from) {
            return Err(format!(
                "the plan's step {} -> {} with bundle {} does not match the verified bundle (it installs {} on the versions it applies to)",
                step.from, step.to, step.bundle_id, entry.installs
            ));
        }
        if step.to <= step.from || step.rollback {
            return Err(format!(
                "the plan's step {} -> {} is a downgrade; it needs a signed rollback approval",
                step.from, step.to
            ));
        }
        if previous.is_some_and(|p| p != step.from) {
            return Err(format!("the plan's steps do not chain at {}", step.from));
        }
        previous = Some(step.to);
    }
    if let (Some(v), Some(first)) = (running, steps.first())
        && v != first.from
        && !steps.iter().any(|s| s.to == v)
    {
        return Err(format!(
            "the device runs {v}, but the plan starts from {}: plan again",
            first.from
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    fn device(id: &str, fw: &str) -> DeviceRecord {
        DeviceRecord {
            id: id.into(),
            address: DeviceAddress::Udp { addr: "127.0.0.1:1337".into() },
            identity: DeviceIdentity {
                vendor: Some("Acme".into()),
                model: Some("Sensor".into()),
                hardware_revision: Some("2".into()),
                firmware_version: Some(v(fw)),
                ..Default::default()
            },
            criticality: Criticality::Normal,
            windows: vec![],
            credential: None,
            health_url: None,
        }
    }

    fn entry(id: &str, from: &str, to: &str, installs: &str, cvss: f32) -> PlannableBundle {
        PlannableBundle {
            bundle_id: id.into(),
            vendor: "acme".into(),
            model: "sensor".into(),
            hw_min: Some("1".into()),
            hw_max: Some("3".into()),
            applies_to: InstalledRange { min: Some(v(from)), max: Some(v(to)) },
            installs: v(installs),
            cvss,
            cves: vec![],
            usable_until: Utc::now() + Duration::days(30),
            needs_credential: false,
        }
    }

    fn disposition(input: &PlanInput, id: &str) -> Disposition {
        let p = plan(input, Utc::now());
        p.devices.into_iter().find(|d| d.device.id == id).unwrap().disposition
    }

    #[test]
    fn upgrade_path_goes_through_the_intermediate_version() {
        let input = PlanInput {
            devices: vec![device("d1", "1.0.0")],
            catalog: vec![
                entry("to-2", "1.0.0", "2.0.0", "2.0.0", 5.0),
                entry("to-3", "2.0.0", "3.0.0", "3.0.0", 9.8),
            ],
            ..Default::default()
        };
        let Disposition::Patch { steps, latest, short_reason } = disposition(&input, "d1") else {
            panic!()
        };
        assert_eq!(latest, v("3.0.0"));
        assert_eq!(short_reason, None);
        let path: Vec<_> = steps.iter().map(|s| (s.bundle_id.as_str(), s.from, s.to)).collect();
        assert_eq!(path, vec![("to-2", v("1.0.0"), v("2.0.0")), ("to-3", v("2.0.0"), v("3.0.0"))]);
    }

    #[test]
    fn a_device_in_serial_recovery_is_planned_without_test_boot_or_revert() {
        let mut recovery = device("rec", "1.0.0");
        recovery.identity.mode = Some(DeviceMode::SerialRecovery);
        let mut app = device("app", "1.0.0");
        app.identity.mode = Some(DeviceMode::Application);
        let input = PlanInput {
            devices: vec![recovery, app, device("unknown-mode", "1.0.0")],
            catalog: vec![entry("to-2", "1.0.0", "2.0.0", "2.0.0", 5.0)],
            ..Default::default()
        };
        let p = plan(&input, Utc::now());
        let of = |id: &str| p.devices.iter().find(|d| d.device.id == id).unwrap();
        // Still patched, and said so before anyone starts.
        assert_eq!(of("rec").steps_now().len(), 1);
        let note = of("rec").no_rollback.as_deref().unwrap();
        assert!(note.contains("serial recovery") && note.contains("no test boot"), "{note}");
        assert_eq!(of("app").no_rollback, None);
        assert_eq!(of("unknown-mode").no_rollback, None);
        // By kind: gateways, DFU and ESP devices have no way back either.
        let by_kind = |address: DeviceAddress| {
            let mut d = device("k", "1.0.0");
            d.address = address;
            no_rollback(&d)
        };
        let usb = DeviceAddress::Usb { vid: 0x1209, pid: 2, serial: None };
        assert_eq!(by_kind(usb).as_deref(), Some(DFU_NO_ROLLBACK));
        let gw = DeviceAddress::Swupdate { url: "http://127.0.0.1:8080".into(), user: None };
        assert_eq!(by_kind(gw).as_deref(), Some(SWUPDATE_NO_ROLLBACK));
        let esp: DeviceAddress = "esp:/dev/ttyUSB0".parse().unwrap();
        assert_eq!(by_kind(esp).as_deref(), Some(ESP_NO_ROLLBACK));
        // The plan file carries it; plans written before the field still read.
        let json = serde_json::to_value(&p).unwrap();
        let devices = json["devices"].as_array().unwrap();
        let rec = devices.iter().find(|d| d["device"]["id"] == "rec").unwrap();
        assert_eq!(rec["device"]["identity"]["mode"], "serial_recovery");
        assert_eq!(rec["no_rollback"], note);
        let app = devices.iter().find(|d| d["device"]["id"] == "app").unwrap();
        assert!(app.get("no_rollback").is_none(), "{app}");
        let mut old = json.clone();
        for d in old["devices"].as_array_mut().unwrap() {
            d.as_object_mut().unwrap().remove("no_rollback");
            d["device"]["identity"].as_object_mut().unwrap().remove("mode");
        }
        let read: Plan = serde_json::from_value(old).unwrap();
        assert!(read.devices.iter().all(|d| d.no_rollback.is_none()));
        assert_eq!(serde_json::from_value::<Plan>(json).unwrap(), p);
    }

    #[test]
    fn direct_bundle_is_preferred_over_a_longer_path() {
        let input = PlanInput {
            devices: vec![device("d1", "1.0.0")],
            catalog: vec![
                entry("a", "1.0.0", "2.0.0", "2.0.0", 1.0),
                entry("b", "2.0.0", "3.0.0", "3.0.0", 1.0),
                entry("direct", "1.0.0", "3.0.0", "3.0.0", 1.0),
            ],
            ..Default::default()
        };
        let Disposition::Patch { steps, .. } = disposition(&input, "d1") else { panic!() };
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].bundle_id, "direct");
    }

    #[test]
    fn every_refusal_has_its_reason() {
        let mut unknown = device("unknown", "1.0.0");
        unknown.identity.firmware_version = None;
        let mut other = device("other-model", "1.0.0");
        other.identity.model = Some("Gateway".into());
        let mut hw = device("old-hw", "1.0.0");
        hw.identity.hardware_revision = Some("7".into());
        let mut cred = device("needs-cred", "1.0.0");
        cred.credential = Some("site-a/sensor".into());
        let mut expired_entry = entry("old", "0.5.0", "0.6.0", "0.9.0", 1.0);
        expired_entry.usable_until = Utc::now() - Duration::days(1);
        let input = PlanInput {
            devices: vec![
                unknown,
                other,
                hw,
                cred,
                device("newer", "4.0.0"),
                device("gap", "0.1.0"),
                device("expired", "0.5.0"),
                device("current", "2.0.0"),
            ],
            catalog: vec![entry("to-2", "1.0.0", "2.0.0", "2.0.0", 5.0), expired_entry],
            ..Default::default()
        };
        let reason = |id| match disposition(&input, id) {
            Disposition::Unpatchable { why } => why,
            other => panic!("{id}: {other:?}"),
        };
        assert!(matches!(reason("unknown"), Unpatchable::UnknownDevice { .. }));
        assert!(matches!(reason("other-model"), Unpatchable::NoBundle { .. }));
        assert!(matches!(reason("old-hw"), Unpatchable::NoBundle { .. }));
        assert_eq!(
            reason("needs-cred"),
            Unpatchable::MissingCredential { name: "site-a/sensor".into() }
        );
        assert_eq!(
            reason("newer"),
            Unpatchable::DowngradeRefused { from: v("4.0.0"), to: v("2.0.0") }
        );
        assert!(matches!(reason("gap"), Unpatchable::NoUpgradePath { .. }));
        assert!(
            matches!(reason("expired"), Unpatchable::BundleExpired { ref bundle_id, .. } if bundle_id == "old")
        );
        assert_eq!(disposition(&input, "current"), Disposition::UpToDate { version: v("2.0.0") });
        let msg = reason("newer").to_string();
        assert!(msg.contains("rollback approval"), "{msg}");
    }

    #[test]
    fn an_approved_downgrade_is_planned_as_a_rollback_step() {
        let input = PlanInput {
            devices: vec![device("newer", "4.0.0")],
            catalog: vec![entry("to-2", "1.0.0", "1.9.0", "2.0.0", 0.0)],
            rollback_approvals: vec![ApprovedDowngrade {
                vendor: "Acme".into(),
                model: "Sensor".into(),
                from: v("4.0.0"),
                to: v("2.0.0"),
            }],
            ..Default::default()
        };
        let Disposition::Patch { steps, .. } = disposition(&input, "newer") else { panic!() };
        assert!(steps[0].rollback);
        assert_eq!((steps[0].from, steps[0].to), (v("4.0.0"), v("2.0.0")));
    }

    #[test]
    fn outside_the_window_is_scheduled_and_order_follows_severity_then_criticality() {
        let now = Utc::now();
        let mut later = device("later", "1.0.0");
        later.windows = vec![MaintenanceWindow {
            start: now + Duration::hours(2),
            end: now + Duration::hours(3),
        }];
        let mut past = device("past", "1.0.0");
        past.windows = vec![MaintenanceWindow {
            start: now - Duration::hours(3),
            end: now - Duration::hours(2),
        }];
        let mut crit = device("crit", "1.0.0");
        crit.criticality = Criticality::Critical;
        let mut low_sev = device("low-sev", "1.5.0");
        low_sev.criticality = Criticality::Critical;
        let input = PlanInput {
            devices: vec![device("a-normal", "1.0.0"), later, past, crit, low_sev],
            catalog: vec![
                entry("fix", "1.0.0", "1.4.0", "2.0.0", 9.1),
                entry("minor", "1.5.0", "2.0.0", "2.0.0", 3.0),
            ],
            ..Default::default()
        };
        let p = plan(&input, now);
        let order: Vec<&str> = p.devices.iter().map(|d| d.device.id.as_str()).collect();
        assert_eq!(order, vec!["crit", "a-normal", "low-sev", "later", "past"]);
        assert!(
            matches!(p.devices[3].disposition, Disposition::Scheduled { not_before, .. } if not_before == now + Duration::hours(2))
        );
        assert_eq!(
            p.devices[4].disposition,
            Disposition::Unpatchable { why: Unpatchable::NoMaintenanceWindow }
        );
        assert_eq!(p.patchable().count(), 3);
        // A plan survives a round trip through JSON (it is saved and run later).
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Plan>(&json).unwrap(), p);
    }

    #[test]
    fn addresses_parse_back_from_the_text_they_display_as() {
        let addresses = [
            DeviceAddress::Serial { port: "/dev/ttyACM0".into(), baud: 115_200 },
            DeviceAddress::Udp { addr: "192.0.2.7:1337".into() },
            DeviceAddress::Usb { vid: 0x1209, pid: 0x0002, serial: None },
            DeviceAddress::Usb { vid: 0x0483, pid: 0xdf11, serial: Some("3276:3A5B".into()) },
            DeviceAddress::Swupdate { url: "http://192.0.2.9:8080".into(), user: None },
            DeviceAddress::Swupdate {
                url: "http://gw-1.local:8080".into(),
                user: Some("ops".into()),
            },
        ];
        for a in addresses {
            assert_eq!(a.to_string().parse::<DeviceAddress>().unwrap(), a, "{a}");
        }
        let usb: DeviceAddress = "usb:1209:2:B-07".parse().unwrap();
        assert_eq!(usb, DeviceAddress::Usb { vid: 0x1209, pid: 2, serial: Some("B-07".into()) });
        for bad in ["3-2", "usb:1209", "usb:12345:0002", "usb:1209:zz", "usb:1209:0002:", "udp:"]
            .into_iter()
            .chain([
                "swupdate:",
                "swupdate:ftp://h:1",
                "swupdate:http://h/x",
                "swupdate:@http://h:1",
            ])
        {
            let e = bad.parse::<DeviceAddress>().unwrap_err();
            assert_eq!(e.code(), "bad_address");
            assert!(e.to_string().contains("usb:VVVV:PPPP[:SERIAL]"), "{e}");
        }
    }

    #[test]
    fn esp_addresses_round_trip_with_their_baud_reset_and_chip() {
        let addresses = [
            DeviceAddress::Esp {
                port: "/dev/ttyUSB0".into(),
                baud: None,
                reset: EspReset::Classic,
                chip: None,
            },
            DeviceAddress::Esp {
                port: "/dev/pts/7".into(),
                baud: Some(921_600),
                reset: EspReset::None,
                chip: Some("esp32".into()),
            },
            DeviceAddress::Esp {
                port: "COM5".into(),
                baud: Some(460_800),
                reset: EspReset::UsbJtag,
                chip: None,
            },
            DeviceAddress::Esp {
                port: "/dev/serial/by-id/usb-Espressif_USB_JTAG-if00".into(),
                baud: None,
                reset: EspReset::Classic,
                chip: Some("esp32c3".into()),
            },
        ];
        for a in addresses {
            let text = a.to_string();
            assert_eq!(text.parse::<DeviceAddress>().unwrap(), a, "{text}");
            let json = serde_json::to_string(&a).unwrap();
            assert_eq!(serde_json::from_str::<DeviceAddress>(&json).unwrap(), a, "{json}");
        }
        assert_eq!(
            "esp:/dev/ttyUSB1@921600?chip=ESP32-S3&reset=none".parse::<DeviceAddress>().unwrap(),
            DeviceAddress::Esp {
                port: "/dev/ttyUSB1".into(),
                baud: Some(921_600),
                reset: EspReset::None,
                chip: Some("esp32s3".into()),
            }
        );
        // Defaults are left out of the text.
        let plain: DeviceAddress = "esp:/dev/ttyUSB0?reset=classic".parse().unwrap();
        assert_eq!(plain.to_string(), "esp:/dev/ttyUSB0");
        for bad in [
            "esp:",
            "esp:@115200",
            "esp:/dev/ttyUSB0@fast",
            "esp:/dev/ttyUSB0@0",
            "esp:/dev/ttyUSB0?reset=hard",
            "esp:/dev/ttyUSB0?chip=esp99",
            "esp:/dev/ttyUSB0?speed=1",
        ] {
            let e = bad.parse::<DeviceAddress>().unwrap_err();
            assert_eq!(e.code(), "bad_address", "{bad}");
            assert!(e.to_string().contains("esp:PORT[@BAUD]"), "{e}");
        }
        assert_eq!(esp_chip("esp32c3"), Some(fieldpatch_drivers::esp::Chip::Esp32C3));
    }

    #[test]
    fn a_gateway_without_its_password_in_the_keyring_is_refused_up_front() {
        let mut gw = device("gw", "1.0.0");
        gw.address = DeviceAddress::Swupdate { url: "http://192.0.2.9:8080".into(), user: None };
        let mut named = device("gw-named", "1.0.0");
        named.address = gw.address.clone();
        named.credential = Some("site/a/gateway/password".into());
        let mut e = entry("to-2", "1.0.0", "2.0.0", "2.0.0", 5.0);
        e.needs_credential = true;
        let mut input =
            PlanInput { devices: vec![gw, named], catalog: vec![e], ..Default::default() };
        let missing = |name: &str| Disposition::Unpatchable {
            why: Unpatchable::MissingCredential { name: name.into() },
        };
        assert_eq!(disposition(&input, "gw"), missing("device/gw/password"));
        assert_eq!(disposition(&input, "gw-named"), missing("site/a/gateway/password"));
        input.credentials =
            ["device/gw/password", "site/a/gateway/password"].map(String::from).into();
        for id in ["gw", "gw-named"] {
            assert!(matches!(disposition(&input, id), Disposition::Patch { .. }), "{id}");
        }
    }
}
