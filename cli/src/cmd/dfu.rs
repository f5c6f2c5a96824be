//! `fieldpatch dfu`: USB DFU devices — list them, flash a DFU file (dfu-suffix / dfuse-pack
//! format) with readback verification. Thin over `fieldpatch-core` (file checks) and the DFU
//! driver on the system's USB buses.

use anyhow::Context;
use clap::Subcommand;
use fieldpatch_core::image::dfu_file::{self, DfuFile};
use fieldpatch_drivers::dfu::{self, DfuDevice, DfuMode, DfuOptions, DfuseOptions};
use fieldpatch_drivers::progress::{Progress, TransferProgress};
use fieldpatch_drivers::usb::rusb_backend::RusbBus;
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
        /// The DFU file.
        file: PathBuf,
    },
}

struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn phase(&self, name: &str) {
        self.0.set_message(name.to_string());
        self.0.set_position(0);
    }
    fn transfer(&self, p: TransferProgress) {
        self.0.set_length(p.total);
        self.0.set_position(p.done);
    }
    fn note(&self, message: &str) {
        self.0.println(message);
    }
}

pub fn run(command: DfuCommand, json: bool) -> anyhow::Result<ExitCode> {
    match command {
        DfuCommand::List => {
            let devices = dfu::list(&RusbBus)?;
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
        DfuCommand::Flash { device, mass_erase, leave, file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let file = DfuFile::parse(&bytes)?;
            let mut dev = DfuDevice::open(&RusbBus, &device, DfuOptions::default())?;
            if dev.mode() == DfuMode::Runtime {
                dev = dev.detach(&RusbBus)?;
            }
            let bar = Bar(indicatif::ProgressBar::new(file.image_len()));
            bar.0.set_style(indicatif::ProgressStyle::with_template(
                "{msg:>8} [{bar:40}] {bytes}/{total_bytes}",
            )?);
            let report =
                dfu_file::download(&mut dev, &file, DfuseOptions { mass_erase, leave }, &bar)?;
            bar.0.finish_and_clear();
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
