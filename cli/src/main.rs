//! `fieldpatch`: the headless face of Fieldpatch. Every job the desktop app does is a subcommand
//! here, each a few lines over `fieldpatch-core`; `--json` gives machine-readable output.

use clap::{Parser, Subcommand};

mod cmd;
mod output;

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
    /// Find the devices on site (serial, USB, network, mDNS), identify them and match them to
    /// the inventory; rows print as devices answer.
    Discover {
        #[command(flatten)]
        args: cmd::discover::DiscoverArgs,
        #[command(flatten)]
        matching: cmd::discover::MatchArgs,
    },
    /// USB DFU devices: list, flash.
    #[command(subcommand)]
    Dfu(cmd::dfu::DfuCommand),
    /// Signing keys and trust stores.
    #[command(subcommand)]
    Keys(cmd::keys::KeysCmd),
    /// Create, sign, verify and inspect patch bundles.
    #[command(subcommand)]
    Bundle(cmd::bundle::BundleCmd),
    /// The tamper-evident visit log: show, verify, add a note.
    #[command(subcommand)]
    Log(cmd::log::LogCommand),
    /// Credentials in the OS keyring: set, get, delete, list (names only).
    #[command(subcommand)]
    Credentials(cmd::credentials::CredentialsCommand),
    /// Run the built-in demo site (lab devices and a signed catalog) until Ctrl-C.
    Demo {
        /// Folder for the demo's devices file, catalog and trust store.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Identify the work order's devices and plan which verified bundles go where.
    Plan(cmd::session::PlanArgs),
    /// Offline batch sessions: run a plan (canary, waves), resume, status.
    #[command(subcommand)]
    Session(cmd::session::SessionCommand),
    /// Talk SMP (MCUmgr) to one device over serial or UDP: info, images, reset; `--esp PORT`: an
    /// ESP32 in its ROM serial bootloader (info, image upload).
    Device(cmd::device::DeviceArgs),
    /// Push the visit logs to the inventory server and pull the next trip's data; `sync login`
    /// stores the token, `sync key` prints the technician key to register.
    Sync(cmd::sync::SyncCommand),
    /// Write a visit's signed audit export (events, device table, HTML and PDF report).
    Export(cmd::audit::ExportArgs),
    /// Audit exports: verify one offline.
    #[command(subcommand)]
    Audit(cmd::audit::AuditCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let result = match cli.command {
        Command::Info => cmd::info::run(cli.json),
        Command::Discover { args, matching } => cmd::discover::run(args, matching, cli.json),
        Command::Dfu(c) => cmd::dfu::run(c, cli.json),
        Command::Keys(c) => cmd::keys::run(c, cli.json),
        Command::Bundle(c) => cmd::bundle::run(c, cli.json),
        Command::Log(c) => cmd::log::run(c, cli.json),
        Command::Credentials(c) => cmd::credentials::run(c, cli.json),
        Command::Demo { dir } => cmd::demo::run(dir, cli.json),
        Command::Plan(args) => cmd::session::plan(args, cli.json),
        Command::Session(c) => cmd::session::run(c, cli.json),
        Command::Device(args) => cmd::device::run(args, cli.json),
        Command::Sync(c) => cmd::sync::run(c, cli.json),
        Command::Export(args) => cmd::audit::export(args, cli.json),
        Command::Audit(c) => cmd::audit::run(c, cli.json),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            output::print_error(&err, json);
            std::process::ExitCode::from(1)
        }
    }
}
