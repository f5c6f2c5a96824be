//! Discovery, the core half: what the drivers found, as one identity per physical device,
//! matched to the inventory, streamed to the caller and recorded in the visit log.
//!
//! ```text
//!  drivers::discovery::Scan ──Found──> Find ──merge──> DiscoveredDevice ──match──> inventory
//!  USB DFU listing ─────────────────────┘                 │                  └─> missing ids
//!                                                         └─> Update (stream) + visit-log events
//! ```
//!
//! Design decisions:
//!
//! * **Drivers find, core decides.** Enumeration, probes, exclusions, rate limits and the
//!   deadline are the drivers' ([`fieldpatch_drivers::discovery`]); turning a find into an
//!   identity, merging the same board seen on two transports and matching the inventory are
//!   here ([`matching`]).
//! * **USB DFU is listed, not probed**: the listing already says everything a DFU device tells
//!   (identity strings, serial number, DfuSe memory map), and listing opens no device.
//! * **The visit log records what was found and what was not**: one `device_discovered` per
//!   address (with how it was found and the inventory key that matched it), one
//!   `device_identified` per device, and one `device_missing` per inventory device of the
//!   site or work order that was not found. The events are written when the scan ends, so a
//!   device found on two transports is recorded as one device.
//! * **Unknown devices are never added** to the inventory or to a plan: they are listed, logged
//!   and left alone.

pub mod matching;
pub mod settings;

pub use fieldpatch_drivers::discovery::{
    MdnsScope, NetTarget, NetworkScope, Request, SerialScope, SystemPorts,
};
pub use matching::{Capability, DiscoveredDevice, Find, InventoryMatch, MatchKey};
pub use settings::DiscoverySettings;

use crate::fieldpatch::{Error, Fieldpatch};
use crate::model::{DeviceIdentity, DeviceMode};
use crate::plan::{DeviceAddress, DeviceRecord, EspReset};
use crate::store::InventoryDevice;
use crate::visitlog::{EventKind, NewEvent};
use fieldpatch_drivers::dfu::DfuMode;
use fieldpatch_drivers::discovery::{self as drv, Endpoint, Probed, Via};
use fieldpatch_drivers::smp::SmpMode;
use serde::Serialize;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use ts_rs::TS;
use uuid::Uuid;

/// What to search and what to match against.
#[derive(Debug, Default)]
pub struct DiscoverOptions {
    /// Serial ports, network addresses and mDNS, as the drivers take them.
    pub request: drv::Request,
    /// Also list USB DFU devices.
    pub usb: bool,
    /// Match against this work order's devices (and list those not found as missing).
    pub work_order: Option<String>,
    /// Match against this site's devices (and list those not found as missing).
    pub site: Option<String>,
    /// Record the events in this open visit.
    pub visit: Option<Uuid>,
    /// Also look for ESP chips' ROM loaders on the serial ports, getting each chip into its
    /// loader this way (and back into its application afterwards): the technician's choice,
    /// because a reset reboots the device (`None`: never).
    pub esp: Option<EspReset>,
}

/// A candidate that was looked at and is not a device Fieldpatch can talk to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
pub struct SkippedCandidate {
    /// The port path or network address.
    pub candidate: String,
    /// A stable code (`excluded`, `port_busy`, `no_answer`, `not_recognized`, ...).
    pub code: String,
    pub reason: String,
}

/// What discovery reports while it runs.
#[derive(Debug, Clone, PartialEq, Serialize, TS)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Update {
    /// A device answered (or a known device answered on one more address): its merged state.
    Device { device: Box<DiscoveredDevice> },
    /// A candidate that is not a device.
    Skipped { skipped: SkippedCandidate },
}

/// Everything one discovery found.
#[derive(Debug, Clone, PartialEq, Serialize, TS)]
pub struct DiscoveryReport {
    pub devices: Vec<DiscoveredDevice>,
    /// Inventory ids of the site's or work order's devices that were not found (empty when no
    /// site or work order was given).
    pub missing: Vec<String>,
    pub skipped: Vec<SkippedCandidate>,
    /// What was matched against: `work order WO-1`, `site S` or `whole inventory`.
    pub matched_against: String,
    /// Some candidates were not finished by the deadline.
    pub deadline_reached: bool,
    #[ts(type = "number")]
    pub elapsed_ms: u64,
}

impl DiscoveryReport {
    /// The devices that are known to the inventory, as the planner takes them: the inventory's
    /// identity (vendor, model, hardware revision, serial number) with what the device reports
    /// live (running version and image hash), at the first address it answered at.
    pub fn records(&self, inventory: &[InventoryDevice]) -> Vec<DeviceRecord> {
        self.devices
            .iter()
            .filter_map(|d| {
                let m = d.matched.as_ref()?;
                let inv = inventory.iter().find(|i| i.id == m.device_id)?;
                Some(DeviceRecord {
                    id: inv.id.clone(),
                    address: preferred_address(&d.addresses)?.clone(),
                    identity: DeviceIdentity {
                        vendor: inv.vendor.clone().or(d.identity.vendor.clone()),
                        model: inv.model.clone().or(d.identity.model.clone()),
                        hardware_revision: inv
                            .hardware_revision
                            .clone()
                            .or(d.identity.hardware_revision.clone()),
                        serial_number: inv
                            .serial_number
                            .clone()
                            .or(d.identity.serial_number.clone()),
                        firmware_version: d.identity.firmware_version.or_else(|| {
                            inv.firmware_version.as_deref().and_then(|v| v.parse().ok())
                        }),
                        image_hash: d.identity.image_hash.clone(),
                        mode: d.identity.mode,
                    },
                    criticality: Default::default(),
                    windows: vec![],
                    credential: None,
                    health_url: None,
                })
            })
            .collect()
    }
}

/// SMP over UDP or serial before USB DFU: SMP reports what runs and can test-boot.
fn preferred_address(addresses: &[DeviceAddress]) -> Option<&DeviceAddress> {
    addresses.iter().find(|a| !matches!(a, DeviceAddress::Usb { .. })).or_else(|| addresses.first())
}

fn transport(address: &DeviceAddress) -> &'static str {
    match address {
        DeviceAddress::Serial { .. } => "serial",
        DeviceAddress::Udp { .. } => "udp",
        DeviceAddress::Usb { .. } => "usb",
        DeviceAddress::Swupdate { .. } => "swupdate",
        DeviceAddress::Esp { .. } => "esp",
    }
}

/// What discovery calls a bootloader in MCUboot's serial recovery.
pub const SERIAL_RECOVERY: &str = "MCUboot serial recovery";

/// A find from the drivers' scan, in core's terms: the address, how it was found, the identity
/// the device gave (completed by what its advertisement claims) and what its answers say it can
/// do. What [`Fieldpatch::discover`] merges and matches; public so benchmarks and other callers
/// that run the drivers' scan themselves see the same finds.
impl From<&drv::Found> for Find {
    fn from(found: &drv::Found) -> Find {
        let esp = found.report().and_then(|r| match &r.details {
            drv::Details::Facts(facts) if r.protocol == drv::esp::PROTOCOL => Some(facts),
            _ => None,
        });
        let address = match (&found.endpoint, esp) {
            (Endpoint::Serial { path, .. }, Some(facts)) => DeviceAddress::Esp {
                port: path.clone(),
                baud: None,
                reset: [EspReset::Classic, EspReset::UsbJtag, EspReset::None]
                    .into_iter()
                    .find(|r| {
                        facts.get("reset").map(String::as_str) == Some(r.driver_mode().name())
                    })
                    .unwrap_or_default(),
                chip: facts.get("chip").cloned(),
            },
            (Endpoint::Serial { path, baud }, None) => {
                DeviceAddress::Serial { port: path.clone(), baud: *baud }
            }
            (Endpoint::Udp { addr }, _) => DeviceAddress::Udp { addr: addr.to_string() },
            (other, _) => DeviceAddress::Udp { addr: other.to_string() },
        };
        let via = match &found.via {
            Via::SerialPort(_) => "serial",
            Via::Address(_) => "udp-probe",
            Via::Mdns(_) => "mdns",
        };
        let id = found.identity();
        let identity = DeviceIdentity {
            vendor: id.vendor,
            model: id.model,
            hardware_revision: id.hardware_revision,
            serial_number: id.serial_number,
            firmware_version: id.firmware_version.as_deref().and_then(|v| v.parse().ok()),
            image_hash: id.image_hash,
            mode: None,
        };
        let mut capabilities = BTreeSet::new();
        let mut bootloader = None;
        let mut identity = identity;
        if let Probed::Answered(report) = &found.probed
            && let drv::Details::Smp(facts) = &report.details
        {
            capabilities.insert(Capability::Reset);
            identity.mode = facts.mode.map(|m| match m {
                SmpMode::Application => DeviceMode::Application,
                SmpMode::SerialRecovery => DeviceMode::SerialRecovery,
            });
            if facts.mode == Some(SmpMode::SerialRecovery) {
                // MCUboot's serial recovery: an upload overwrites the primary slot, whose hash the
                // device lists where it is built to; no test boot, no revert.
                bootloader = Some(SERIAL_RECOVERY.to_string());
                capabilities.insert(Capability::Upload);
                if facts.images.iter().any(|s| !s.hash.is_empty()) {
                    capabilities.insert(Capability::ImageHash);
                }
            } else if !facts.images.is_empty() {
                // Image management answers: MCUboot slots, an upload into the secondary slot, a test
                // boot that reverts unless confirmed, and the hash of each slot.
                bootloader = Some("MCUboot".to_string());
                capabilities.extend([
                    Capability::Upload,
                    Capability::TestBoot,
                    Capability::ImageHash,
                ]);
            }
        }
        let mut details = Vec::new();
        if let Some(facts) = esp {
            // The ROM serial bootloader: it writes flash and reports its MD5; no slots, no test
            // boot, no revert.
            bootloader = Some("ESP ROM loader".to_string());
            capabilities.insert(Capability::Upload);
            details.extend(
                facts.iter().filter(|(k, _)| *k != "reset").map(|(k, v)| format!("{k}: {v}")),
            );
        }
        Find { address, via: via.to_string(), identity, bootloader, capabilities, details }
    }
}

/// A USB DFU device from the bus listing, with what its descriptors say (`described`: identity
/// strings, alternate-setting names and DfuSe memory maps) when they could be read. The strings
/// name a product, not an inventory model, so they are shown, never matched on.
fn find_of_dfu(
    d: &fieldpatch_drivers::dfu::DfuDeviceInfo,
    described: Option<&fieldpatch_drivers::dfu::DfuDescription>,
) -> Find {
    let mut details = Vec::new();
    if let Some(desc) = described {
        if let Some(m) = &desc.manufacturer {
            details.push(format!("manufacturer: {m}"));
        }
        if let Some(p) = &desc.product {
            details.push(format!("product: {p}"));
        }
        for alt in &desc.alts {
            let n = alt.setting.alt_setting;
            match (&alt.memory_map, &alt.name) {
                (Some(map), _) => {
                    let segments: Vec<String> = map
                        .segments
                        .iter()
                        .map(|s| format!("0x{:08x}: {} x {} B", s.start, s.pages, s.page_size))
                        .collect();
                    details.push(format!(
                        "alt {n} memory map: {} [{}]",
                        map.name,
                        segments.join(", ")
                    ));
                }
                (None, Some(name)) => details.push(format!("alt {n}: {name}")),
                (None, None) => {}
            }
        }
    }
    let dfuse = d.functional.is_some_and(|f| f.dfu_version == 0x011a);
    let mut capabilities: BTreeSet<Capability> = [Capability::Upload].into();
    if d.functional.is_some_and(|f| f.can_upload()) {
        capabilities.insert(Capability::Readback);
    }
    let bootloader = match (d.mode, dfuse) {
        (DfuMode::Runtime, _) => "DFU (run-time mode)",
        (DfuMode::Dfu, true) => "DfuSe",
        (DfuMode::Dfu, false) => "DFU",
    };
    Find {
        address: DeviceAddress::Usb {
            vid: d.ids.vendor_id,
            pid: d.ids.product_id,
            serial: d.serial.clone(),
        },
        via: "usb".into(),
        identity: DeviceIdentity { serial_number: d.serial.clone(), ..Default::default() },
        bootloader: Some(bootloader.to_string()),
        capabilities,
        details,
    }
}

fn skipped_of(s: &drv::Skipped) -> SkippedCandidate {
    SkippedCandidate {
        candidate: s.candidate.to_string(),
        code: s.reason.code().to_string(),
        reason: s.reason.to_string(),
    }
}

impl Fieldpatch {
    /// Find the devices on site: run the drivers' scan (and list USB DFU devices), merge what
    /// answered into one identity per device, match it to the work order, site or inventory,
    /// report each change to `on_update` as it happens, and record the outcome in the visit log.
    /// The scan's own deadline bounds the whole job.
    pub async fn discover(
        &self,
        options: DiscoverOptions,
        on_update: &mut (dyn FnMut(&Update) + Send),
    ) -> Result<DiscoveryReport, Error> {
        let started = Instant::now();
        let (inventory, matched_against, scoped) = self.discovery_inventory(&options).await?;
        // The log is opened before anything is probed: a discovery that cannot be recorded
        // does not run.
        let log = self.log().await?;
        let mut devices: Vec<DiscoveredDevice> = Vec::new();
        let mut skipped = Vec::new();
        let mut deadline_reached = false;
        let add = |devices: &mut Vec<DiscoveredDevice>,
                   find: Find,
                   on: &mut (dyn FnMut(&Update) + Send)| {
            let i = matching::merge(devices, find);
            matching::match_inventory(devices, &inventory);
            on(&Update::Device { device: Box::new(devices[i].clone()) });
        };
        if options.usb {
            match self.dfu_devices() {
                Ok(list) => {
                    for d in &list {
                        // A few short descriptor requests, as the listing itself makes.
                        let described = self.connector().dfu_describe(d).ok();
                        add(&mut devices, find_of_dfu(d, described.as_ref()), on_update);
                    }
                }
                Err(e) => {
                    let s = SkippedCandidate {
                        candidate: "usb".into(),
                        code: e.code().into(),
                        reason: e.to_string(),
                    };
                    on_update(&Update::Skipped { skipped: s.clone() });
                    skipped.push(s);
                }
            }
        }
        let request = options.request;
        // What the visit log says was searched for a device that was not found, and how.
        let how: Vec<&str> = [
            ("serial", request.serial.is_some()),
            ("usb", options.usb),
            ("net", request.network.is_some()),
            ("mdns", request.mdns.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, used)| used.then_some(name))
        .collect();
        let searched = format!("{matched_against} ({})", how.join(", "));
        if request.serial.is_some() || request.network.is_some() || request.mdns.is_some() {
            let mut discovery = drv::Discovery::new(request);
            if let Some(reset) = options.esp {
                discovery = discovery.with_probe(drv::EspRomProbe::new(reset.driver_mode()));
            }
            let mut scan = discovery.start().await.map_err(DiscoverError::from)?;
            while let Some(event) = scan.next().await {
                match event {
                    drv::Event::Found(found) => add(&mut devices, Find::from(&*found), on_update),
                    drv::Event::Skipped(s) => {
                        let s = skipped_of(&s);
                        on_update(&Update::Skipped { skipped: s.clone() });
                        skipped.push(s);
                    }
                    drv::Event::Finished(summary) => deadline_reached = summary.deadline_reached,
                    drv::Event::Planned(_) => {}
                }
            }
        }
        let missing = matching::match_inventory(&mut devices, &inventory);
        let missing = if scoped { missing } else { Vec::new() };
        for d in &devices {
            let device = d.matched.as_ref().map(|m| m.device_id.clone());
            let matched_by = d.matched.as_ref().map(|m| {
                serde_json::to_value(m.key)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default()
            });
            for (address, via) in d.addresses.iter().zip(&d.via) {
                let kind = EventKind::DeviceDiscovered {
                    transport: transport(address).into(),
                    address: address.to_string(),
                    via: Some(via.clone()),
                    matched_by: matched_by.clone(),
                };
                log.append(event(kind, options.visit, device.clone())).await?;
            }
            let kind = EventKind::DeviceIdentified { identity: d.identity.clone() };
            log.append(event(kind, options.visit, device)).await?;
        }
        for id in &missing {
            let kind = EventKind::DeviceMissing { searched: searched.clone() };
            log.append(event(kind, options.visit, Some(id.clone()))).await?;
        }
        Ok(DiscoveryReport {
            devices,
            missing,
            skipped,
            matched_against,
            deadline_reached,
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// The inventory devices discovery matches against, what that is called, and whether those
    /// not found count as missing.
    async fn discovery_inventory(
        &self,
        options: &DiscoverOptions,
    ) -> Result<(Vec<InventoryDevice>, String, bool), Error> {
        if let Some(order) = &options.work_order {
            let orders = self.store().work_orders().await?;
            let wo = orders.iter().find(|w| &w.id == order).ok_or_else(|| {
                Error::Invalid(format!(
                    "no work order {order} in the local store: sync first, or check the id with `fieldpatch info`"
                ))
            })?;
            let all = self.store().devices(None).await?;
            let devices = all.into_iter().filter(|d| wo.device_ids.contains(&d.id)).collect();
            return Ok((devices, format!("work order {order}"), true));
        }
        if let Some(site) = &options.site {
            let devices = self.store().devices(Some(site)).await?;
            return Ok((devices, format!("site {site}"), true));
        }
        Ok((self.store().devices(None).await?, "whole inventory".into(), false))
    }

    /// What a visit for synced work order `id` is for (its site and the order) and the devices
    /// it is to patch, for [`crate::session::SessionState::for_visit`].
    pub async fn work_order_visit(
        &self,
        id: &str,
    ) -> Result<(crate::session::VisitFor, Vec<String>), Error> {
        let orders = self.store().work_orders().await?;
        let wo = orders.iter().find(|w| w.id == id).ok_or_else(|| {
            Error::Invalid(format!(
                "no work order {id} in the local store: sync first, or check the id with `fieldpatch info`"
            ))
        })?;
        let visit =
            crate::session::VisitFor { site: wo.site_id.clone(), work_order: Some(wo.id.clone()) };
        Ok((visit, wo.device_ids.clone()))
    }

    /// The synced inventory devices (all sites), for turning a discovery into device records.
    pub async fn inventory_devices(&self) -> Result<Vec<InventoryDevice>, Error> {
        Ok(self.store().devices(None).await?)
    }
}

fn event(kind: EventKind, visit: Option<Uuid>, device: Option<String>) -> NewEvent {
    let mut e = NewEvent::new(kind);
    if let Some(v) = visit {
        e = e.visit(v);
    }
    if let Some(d) = device {
        e = e.device(d);
    }
    e
}

/// A discovery request that cannot start (the drivers' checks, before anything is opened).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct DiscoverError(#[from] drv::DiscoveryError);

impl DiscoverError {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        self.0.code()
    }
}

/// The deadline the CLI and the app use when the technician gives none.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
