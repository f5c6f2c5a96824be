//! `fieldpatch dfu`: USB DFU devices — list them (with the address that selects each, serial
//! number included), flash a DFU file (dfu-suffix / dfuse-pack format) with readback
//! verification, or install a signed bundle. Thin over [`fieldpatch_core::Fieldpatch`]:
//! `dfu_flash` clears a bare file (`--allow-unverified`, recorded in the visit log) and
//! `dfu_install` passes a bundle through the planner with the device's inventory record, as a
//! session does.

use anyhow::{Context, bail};
use clap::Subcommand;
use fieldpatch_core::bundle::container::looks_like_bundle;
use fieldpatch_core::device::DfuseOptions;
use fieldpatch_core::flash::FlashOptions;
use fieldpatch_core::plan::DeviceAddress;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum DfuCommand {
    /// List USB devices with a DFU interface (run-time or DFU mode).
    List,
    /// Flash a DFU file, or install a signed bundle carrying one, on a USB DFU device.
    Flash {
        /// The device: its USB address usb:VVVV:PPPP[:SERIAL] as `dfu list` prints it (the serial
        /// number picks one of several identical boards), or for a bare DFU file its USB
        /// location (e.g. 1-1.4).
        #[arg(long)]
        device: String,
        /// Bundles: which device this is (its id in the synced inventory, or in --devices); its
        /// record says whether the bundle applies (model, hardware revision, the version it runs).
        #[arg(long)]
        id: Option<String>,
        /// Bundles: the work order's devices file, when the device is not in the synced
        /// inventory.
        #[arg(long, requires = "id")]
        devices: Option<PathBuf>,
        /// DfuSe: erase the whole memory first instead of the touched pages.
        #[arg(long)]
        mass_erase: bool,
        /// DfuSe: leave DFU mode and start the firmware afterwards.
        #[arg(long)]
        leave: bool,
        /// Trust store (JSON) to verify a bundle carrying the DFU file against.
        #[arg(long)]
        trust: Option<PathBuf>,
        /// Send a bare DFU file that Fieldpatch has not verified (recorded in the visit log).
        #[arg(long)]
        allow_unverified: bool,
        /// The DFU file, or a signed bundle carrying it.
        file: PathBuf,
    },
}

pub fn run(command: DfuCommand, json: bool) -> anyhow::Result<ExitCode> {
    super::runtime()?.block_on(run_async(command, json))
}

async fn run_async(command: DfuCommand, json: bool) -> anyhow::Result<ExitCode> {
    match command {
        DfuCommand::List => {
            let devices = super::open().await?.dfu_devices()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&devices)?);
            } else if devices.is_empty() {
                println!("no DFU devices found");
            }
            for d in devices.iter().filter(|_| !json) {
                let address = DeviceAddress::Usb {
                    vid: d.ids.vendor_id,
                    pid: d.ids.product_id,
                    serial: d.serial.clone(),
                };
                println!(
                    "{}  {address}  {}  serial {}  {:?}  {} alt setting(s)",
                    d.location,
                    d.ids,
                    d.serial.as_deref().unwrap_or("(none)"),
                    d.mode,
                    d.alts.len()
                );
            }
        }
        DfuCommand::Flash { file, device, id, devices, trust, mass_erase, leave, .. }
            if looks_like_bundle(&file) =>
        {
            if mass_erase || leave {
                bail!(
                    "a bundle is installed the way a session installs it (the pages it touches erased, then the device left to run it): drop --mass-erase and --leave"
                );
            }
            let trust =
                trust.context("a bundle is verified against the trust store: pass --trust FILE")?;
            let id = id.context(
                "say which device this is with --id ID (its inventory record says whether the bundle applies: vendor, model, hardware revision, the version it runs); add --devices FILE when it is not in the synced inventory",
            )?;
            if !device.contains(':') {
                bail!(
                    "a bundle goes to the device its USB address names, usb:VVVV:PPPP[:SERIAL] as `fieldpatch dfu list` prints it, not to a bus location ({device})"
                );
            }
            let address: DeviceAddress = device.parse()?;
            let fp = super::open().await?;
            let record = fp.inventory_device(&id, address, devices.as_deref()).await?;
            let bar = crate::output::Bar::bytes(json);
            let outcome =
                fp.dfu_install(record, &file, &trust, &bar, &FlashOptions::default()).await?;
            bar.finish();
            if json {
                println!("{}", serde_json::to_string_pretty(&outcome)?);
            } else {
                println!("{id}: {}", super::device::outcome_text(&outcome));
            }
            if !outcome.is_success() {
                return Ok(ExitCode::from(3));
            }
        }
        DfuCommand::Flash { device, mass_erase, leave, trust, allow_unverified, file, .. } => {
            let fp = super::open().await?;
            let bar = crate::output::Bar::bytes(json);
            let options = DfuseOptions { mass_erase, leave };
            let report = fp
                .dfu_flash(&device, &file, trust.as_deref(), allow_unverified, options, &bar)
                .await?;
            bar.finish();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "flashed {} bytes to {} (sha256 {}), verified by {:?}",
                    report.bytes, report.ids, report.sha256, report.verified_by
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
