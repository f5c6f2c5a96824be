//! `fieldpatch`: the headless face of Fieldpatch. Every job the desktop app does is a subcommand
//! here, each a few lines over `fieldpatch-core`; `--json` gives machine-readable output.

use clap::{Parser, Subcommand};

mod cmd;

#[derive(Parser, Debug)]
#[command(name = "fieldpatch", version, about = "Patch IoT devices in the field, offline-first")]
struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show the version and the local data directory.
    Info,
    /// Talk SMP (MCUmgr) to one device over serial or UDP: info, images, reset.
    Device(cmd::device::DeviceArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info => cmd::info::run(cli.json),
        Command::Device(args) => cmd::device::run(args, cli.json),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::from(1)
        }
    }
}
