//! `fieldpatch dfu`: USB DFU devices — list them, flash a DFU file (dfu-suffix / dfuse-pack
//! format) with readback verification. Thin over [`fieldpatch_core::Fieldpatch::dfu_flash`],
//! which clears the file (a verified bundle, or a bare file with `--allow-unverified`) and
//! records the flash in the visit log.

use clap::Subcommand;
use fieldpatch_core::device::DfuseOptions;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum DfuCommand {
    /// List USB devices with a DFU interface (run-time or DFU mode).
    List,
    /// Flash a DFU file to the device at a USB location (as `dfu list` shows it).
    Flash {
        /// USB location, e.g. 1-1.4.
        #[arg(long)]
        device: String,
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
                println!(
                    "{}  {}  {:?}  {} alt setting(s)",
                    d.location,
                    d.ids,
                    d.mode,
                    d.alts.len()
                );
            }
        }
        DfuCommand::Flash { device, mass_erase, leave, trust, allow_unverified, file } => {
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
