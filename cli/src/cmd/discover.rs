//! `fieldpatch discover`: find the devices on site (serial ports, USB DFU, network addresses and
//! mDNS), identify them, match them to the inventory, print rows as they come and record the
//! outcome in the visit log. The same options let `fieldpatch plan --discover` take the
//! discovered site instead of a devices file (`session run` then runs the saved plan).

use anyhow::Context;
use clap::Args;
use fieldpatch_core::Fieldpatch;
use fieldpatch_core::discovery::{
    DiscoverOptions, DiscoveredDevice, DiscoveryReport, MdnsScope, NetTarget, NetworkScope,
    Request, SerialScope, SystemPorts, Update,
};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Where to look. Without any of --serial, --usb, --net or --interface: serial ports and USB.
#[derive(Args, Debug, Clone, Default)]
pub struct DiscoverArgs {
    /// Probe the USB serial ports the OS lists (and every --port).
    #[arg(long)]
    pub serial: bool,
    /// A serial port to probe besides those the OS lists (ptys, ports it does not list).
    #[arg(long = "port", value_name = "PATH")]
    pub ports: Vec<PathBuf>,
    /// Probe every serial port the OS lists, built-in UARTs included (each silent one costs a
    /// timeout).
    #[arg(long)]
    pub all_ports: bool,
    /// A serial port never to open, whatever lists it.
    #[arg(long = "exclude", value_name = "PATH")]
    pub exclude: Vec<PathBuf>,
    /// Line speeds to try on serial ports, in order.
    #[arg(long = "baud", value_name = "BAUD", default_values_t = [115200u32])]
    pub bauds: Vec<u32>,
    /// List USB DFU devices.
    #[arg(long)]
    pub usb: bool,
    /// Probe these addresses or ranges for SMP over UDP (192.0.2.7, 192.0.2.7:1337,
    /// 192.0.2.0/24); with --interface, also browse mDNS there.
    #[arg(long = "net", value_name = "CIDR", num_args = 0.., value_delimiter = ',')]
    pub net: Option<Vec<String>>,
    /// Browse mDNS (DNS-SD) on this network interface; only the interfaces named are used.
    #[arg(long = "interface", value_name = "NAME")]
    pub interfaces: Vec<String>,
    /// New hosts contacted per second on --net ranges.
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// Most hosts a --net scope may hold.
    #[arg(long, default_value_t = 4096)]
    pub max_hosts: usize,
    /// Seconds the whole discovery may take.
    #[arg(long, default_value_t = 10)]
    pub deadline: u64,
    /// Also look for ESP32-family boards' ROM loaders on the serial ports, getting each chip
    /// into its loader with this reset (classic, usb-jtag) and back into its application
    /// afterwards: this reboots the boards. `none`: only boards already held in download mode.
    #[arg(long = "esp-reset", value_name = "MODE")]
    pub esp_reset: Option<fieldpatch_core::plan::EspReset>,
}

impl DiscoverArgs {
    /// The drivers' request and whether USB is listed.
    pub fn request(&self) -> anyhow::Result<(Request, bool)> {
        let net_given = self.net.is_some() || !self.interfaces.is_empty();
        let none = !self.serial && !self.usb && !net_given && self.ports.is_empty();
        let serial = self.serial || none || !self.ports.is_empty() || self.all_ports;
        let usb = self.usb || none;
        let serial = serial.then(|| SerialScope {
            system_ports: if self.all_ports {
                SystemPorts::All
            } else if self.serial || none {
                SystemPorts::Usb
            } else {
                SystemPorts::None
            },
            paths: self.ports.clone(),
            exclude: self.exclude.clone(),
            bauds: self.bauds.clone(),
            ..SerialScope::default()
        });
        let targets: Vec<NetTarget> = self
            .net
            .iter()
            .flatten()
            .map(|t| t.parse())
            .collect::<Result<_, _>>()
            .map_err(fieldpatch_core::discovery::DiscoverError::from)?;
        let network = (!targets.is_empty()).then(|| NetworkScope {
            targets,
            probes_per_second: self.rate,
            max_hosts: self.max_hosts,
            ..NetworkScope::default()
        });
        let mdns = (!self.interfaces.is_empty())
            .then(|| MdnsScope { interfaces: self.interfaces.clone(), ..MdnsScope::default() });
        if self.net.as_ref().is_some_and(|n| n.is_empty()) && mdns.is_none() {
            anyhow::bail!(
                "--net needs addresses or ranges to probe (192.0.2.0/24), or --interface NAME to browse mDNS on"
            );
        }
        let request =
            Request { serial, network, mdns, deadline: Duration::from_secs(self.deadline) };
        Ok((request, usb))
    }
}

/// Which inventory devices to match against.
#[derive(Args, Debug, Clone, Default)]
pub struct MatchArgs {
    /// Match against this synced work order's devices; those not found are listed as missing.
    #[arg(long, conflicts_with = "site")]
    pub work_order: Option<String>,
    /// Match against this site's devices; those not found are listed as missing.
    #[arg(long)]
    pub site: Option<String>,
}

/// Run a discovery, printing rows as they come (to stderr with --json, so stdout stays JSON).
pub async fn discover(
    fp: &Fieldpatch,
    args: &DiscoverArgs,
    work_order: Option<String>,
    site: Option<String>,
    json: bool,
) -> anyhow::Result<DiscoveryReport> {
    let (request, usb) = args.request()?;
    let options =
        DiscoverOptions { request, usb, work_order, site, visit: None, esp: args.esp_reset };
    let mut printed = std::collections::BTreeSet::new();
    let mut on_update = |u: &Update| match u {
        Update::Device { device } => {
            let row = row(device);
            if printed.insert(row.clone()) {
                eprintln!("found    {row}");
            }
        }
        Update::Skipped { skipped } if !json => {
            eprintln!("skipped  {}: {} [{}]", skipped.candidate, skipped.reason, skipped.code);
        }
        Update::Skipped { .. } => {}
    };
    fp.discover(options, &mut on_update).await.context("discovery")
}

fn row(d: &DiscoveredDevice) -> String {
    let addresses: Vec<String> = d.addresses.iter().map(|a| a.to_string()).collect();
    let id = &d.identity;
    let what = [
        id.vendor.as_deref(),
        id.model.as_deref(),
        id.hardware_revision.as_deref().map(|h| h.trim()),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" ");
    let fw = id.firmware_version.map(|v| v.to_string()).unwrap_or_else(|| "?".into());
    let sn = id.serial_number.as_deref().unwrap_or("-");
    let matched = match &d.matched {
        Some(m) => format!("{} (by {})", m.device_id, m.key),
        None => "UNKNOWN to the inventory".into(),
    };
    format!(
        "{}  {}  sn {sn}  runs {fw}  {}  -> {matched}",
        addresses.join(" + "),
        if what.is_empty() { "?" } else { &what },
        d.bootloader.as_deref().unwrap_or("?"),
    )
}

pub fn run(args: DiscoverArgs, matching: MatchArgs, json: bool) -> anyhow::Result<ExitCode> {
    super::runtime()?.block_on(async move {
        let fp = super::open().await?;
        let report = discover(&fp, &args, matching.work_order, matching.site, json).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "{} device(s) found in {:.1} s, matched against the {}",
            report.devices.len(),
            report.elapsed_ms as f64 / 1000.0,
            report.matched_against
        );
        for d in &report.devices {
            println!("  {}", row(d));
            for line in &d.details {
                println!("      {line}");
            }
        }
        for id in &report.missing {
            println!(
                "  MISSING  {id}: in the inventory, not found; it needs a reason at close-out"
            );
        }
        if report.deadline_reached {
            println!("the deadline cut some checks short: give --deadline more seconds");
        }
        Ok(ExitCode::SUCCESS)
    })
}
