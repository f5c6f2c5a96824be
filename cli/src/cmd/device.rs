//! `fieldpatch device`: low-level SMP commands for technicians who debug a device.
//!
//! Thin: every subcommand is a call into [`fieldpatch_core::device`], which clears what is sent
//! (a bundle, a vendor-signed image, or a bare file with `--allow-unverified`) and writes the
//! visit-log events around every command that changes the device.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use fieldpatch_core::bundle::container::looks_like_bundle;
use fieldpatch_core::device::{AfterUpload, ImageSlotState, hex_string, parse_image_hash};
use fieldpatch_core::flash::{FlashOptions, FlashOutcome};
use fieldpatch_core::gateway::{SwupdateJob, SwupdateTimeouts as Timeouts};
use fieldpatch_core::image::swu::SwuTarget;
use fieldpatch_core::plan::DeviceAddress;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct DeviceArgs {
    /// Serial port of the device (for example /dev/ttyACM0).
    #[arg(long, required_unless_present_any = ["udp", "swupdate", "esp"], conflicts_with_all = ["udp", "swupdate", "esp"])]
    serial: Option<String>,
    /// Serial speed.
    #[arg(long, default_value_t = 115_200, requires = "serial")]
    baud: u32,
    /// UDP address of the device, HOST[:PORT] (port 1337 by default).
    #[arg(long, conflicts_with_all = ["swupdate", "esp"])]
    udp: Option<String>,
    /// An ESP32-family device in its ROM serial bootloader: PORT[@BAUD][?reset=classic|usb-jtag|none]
    /// (`info`, and `image upload` of a bundle with --device ID or of a bare image with
    /// --allow-unverified; BAUD is the upload speed after CHANGE_BAUDRATE; reset: how the
    /// adapter's DTR/RTS lines reach the loader, classic auto-reset by default).
    #[arg(long, conflicts_with = "swupdate")]
    esp: Option<String>,
    /// An embedded Linux gateway's SWUpdate web server, http://HOST:PORT (`image upload` of a
    /// `.swu` only; its password comes from the keyring as device/ID/password).
    #[arg(long, requires_all = ["gateway", "hardware"])]
    swupdate: Option<String>,
    /// SWUpdate: the gateway's id (names it in the visit log and its credential).
    #[arg(long = "device", requires = "swupdate")]
    gateway: Option<String>,
    /// SWUpdate: the gateway's hardware revision, which the image must list.
    #[arg(long, requires = "swupdate")]
    hardware: Option<String>,
    /// SWUpdate: the gateway's board name, for images with per-board sections.
    #[arg(long, requires = "swupdate")]
    board: Option<String>,
    /// SWUpdate: the digest user name.
    #[arg(long, default_value = "admin", requires = "swupdate")]
    user: String,
    /// SWUpdate: do not ask the gateway to restart after the install (it restarts by its own
    /// policy).
    #[arg(long, requires = "swupdate")]
    no_restart: bool,
    /// SWUpdate: the device's own health URL, which must answer 2xx after the install.
    #[arg(long, requires = "swupdate")]
    health_url: Option<String>,
    /// SWUpdate: seconds the health URL may take to answer 2xx after the install.
    #[arg(long, default_value_t = 120, requires = "swupdate")]
    health_timeout: u64,
    #[command(subcommand)]
    command: DeviceCommand,
}

#[derive(Subcommand, Debug)]
pub(crate) enum DeviceCommand {
    /// Show the device's OS/application info and SMP buffer parameters.
    Info,
    /// Image slots: list, upload, test, confirm.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Reset the device (a pending test image boots; an unconfirmed test image reverts).
    Reset,
    /// Ask the device to echo TEXT (checks the link).
    Echo { text: String },
}

#[derive(Subcommand, Debug)]
pub(crate) enum ImageCommand {
    /// List the images in the device's slots.
    List,
    /// Upload an image. A signed bundle goes through the same gate and pipeline as a session
    /// (it must apply to the device named with --device; it is test-booted, checked and
    /// confirmed, or rolled back); a bare image goes to the secondary slot.
    Upload {
        file: PathBuf,
        /// Bare images: mark the image for a test boot after the upload.
        #[arg(long)]
        test: bool,
        /// Trust store (JSON) to verify a bundle or a vendor-signed image against.
        #[arg(long)]
        trust: Option<PathBuf>,
        /// Bundles: which device this is (its id in the synced inventory, or in --devices).
        #[arg(long)]
        device: Option<String>,
        /// Bundles: the work order's devices file, when the device is not in the synced
        /// inventory.
        #[arg(long, requires = "device")]
        devices: Option<PathBuf>,
        /// Send a bare image file that Fieldpatch has not verified (recorded in the visit log).
        /// SWUpdate: a `.swu` whose signature does not verify against a vendor certificate of the
        /// trust store (its archive, hardware and hashes are still checked).
        #[arg(long)]
        allow_unverified: bool,
        /// ESP bare images: the flash offset to write at (hex with 0x, or decimal; 0x10000 by
        /// default). A bundle's manifest gives its own offsets.
        #[arg(long)]
        offset: Option<String>,
    },
    /// Mark the image with HASH (hex) for a test boot on the next reset.
    Test { hash: String },
    /// Confirm the image with HASH, or the running image.
    Confirm { hash: Option<String> },
}

pub fn run(args: DeviceArgs, json: bool) -> anyhow::Result<ExitCode> {
    if let Some(url) = args.swupdate.clone() {
        return run_swupdate(&url, args, json);
    }
    if let Some(esp) = args.esp.clone() {
        return super::esp::run(&esp, args.command, json);
    }
    super::runtime()?.block_on(async move {
        let address = match (&args.serial, &args.udp) {
            (Some(port), _) => DeviceAddress::Serial { port: port.clone(), baud: args.baud },
            (None, Some(addr)) => DeviceAddress::Udp { addr: addr.clone() },
            (None, None) => bail!("say which device: --serial PORT or --udp HOST[:PORT]"),
        };
        let fp = super::open().await?;
        let mut device = fp.smp_device(&address).await?;
        match args.command {
            DeviceCommand::Info => {
                let info = device.info().await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&info)?);
                } else {
                    println!("mode: {}", info.mode);
                    if !info.mode.can_revert() {
                        println!(
                            "  uploads overwrite the image the bootloader boots; no test boot, no rollback"
                        );
                    }
                    if let Some(b) = &info.bootloader {
                        println!("bootloader: {b}");
                    }
                    match &info.info {
                        Some(text) => println!("{text}"),
                        None => println!("(the device does not report OS/application info)"),
                    }
                    println!(
                        "SMP buffers: {} x {} bytes",
                        info.params.buf_count, info.params.buf_size
                    );
                }
            }
            DeviceCommand::Image(ImageCommand::List) => {
                print_states(&device.images().await?, json)?;
            }
            DeviceCommand::Image(ImageCommand::Upload {
                file,
                test,
                trust,
                device: Some(id),
                devices,
                allow_unverified: _,
                offset: _,
            }) if looks_like_bundle(&file) => {
                if test {
                    bail!(
                        "a bundle is installed through the full pipeline (test boot, health check, confirm): drop --test"
                    );
                }
                let trust = trust.context(
                    "a bundle is verified against the trust store: pass --trust FILE",
                )?;
                let record = fp.inventory_record(&id, address.clone(), devices.as_deref()).await?;
                let bar = crate::output::Bar::bytes(json);
                let outcome = device
                    .install(&file, &trust, record, &bar, &FlashOptions::default())
                    .await?;
                bar.finish();
                if json {
                    println!("{}", serde_json::to_string_pretty(&outcome)?);
                } else {
                    println!("{id}: {}", outcome_text(&outcome));
                }
                if !outcome.is_success() {
                    return Ok(ExitCode::from(3));
                }
            }
            DeviceCommand::Image(ImageCommand::Upload { file, trust, device: None, .. })
                if looks_like_bundle(&file) && trust.is_some() =>
            {
                bail!(
                    "say which device this is with --device ID (its inventory record says whether the bundle applies: vendor, model, hardware revision); add --devices FILE when it is not in the synced inventory"
                );
            }
            DeviceCommand::Image(ImageCommand::Upload {
                file,
                test,
                trust,
                allow_unverified,
                ..
            }) => {
                let after = if test { AfterUpload::Test } else { AfterUpload::Nothing };
                let bar = crate::output::Bar::bytes(json);
                let (report, states) = device
                    .upload(&file, trust.as_deref(), allow_unverified, after, &bar)
                    .await?;
                bar.finish();
                if json {
                    let v = serde_json::json!({
                        "bytes": report.bytes,
                        "seconds": report.elapsed.as_secs_f64(),
                        "resumed_from": report.resumed_from,
                        "retries": report.retries,
                        "images": states,
                    });
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    let secs = report.elapsed.as_secs_f64().max(1e-6);
                    println!(
                        "uploaded {} bytes in {:.1} s ({:.1} KiB/s, {} retries)",
                        report.bytes,
                        secs,
                        report.bytes as f64 / secs / 1024.0,
                        report.retries
                    );
                    print_states(&states, false)?;
                }
            }
            DeviceCommand::Image(ImageCommand::Test { hash }) => {
                print_states(&device.test(&parse_image_hash(&hash)?).await?, json)?;
            }
            DeviceCommand::Image(ImageCommand::Confirm { hash }) => {
                let hash = hash.as_deref().map(parse_image_hash).transpose()?;
                print_states(&device.confirm(hash.as_deref()).await?, json)?;
            }
            DeviceCommand::Reset => {
                device.reset().await?;
                if !json {
                    println!("reset requested");
                }
            }
            DeviceCommand::Echo { text } => {
                let r = device.echo(&text).await?;
                if json {
                    println!("{}", serde_json::json!({ "echo": r }));
                } else {
                    println!("{r}");
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `device --swupdate URL --device ID --hardware REV image upload FILE.swu [--trust FILE]
/// [--allow-unverified]`: the `.swu` is verified against a vendor certificate of the trust store
/// in force.
fn run_swupdate(url: &str, args: DeviceArgs, json: bool) -> anyhow::Result<ExitCode> {
    let DeviceCommand::Image(ImageCommand::Upload { file, trust, allow_unverified, .. }) =
        args.command
    else {
        bail!("an SWUpdate gateway takes `image upload FILE.swu` only");
    };
    let (Some(device), Some(hardware)) = (args.gateway, args.hardware) else {
        bail!("an SWUpdate gateway needs --device ID and --hardware REV");
    };
    super::runtime()?.block_on(async move {
        let fp = super::open().await?;
        let bar = crate::output::Bar::bytes(json);
        let job = SwupdateJob {
            device: &device,
            url,
            user: &args.user,
            file: &file,
            trust: trust.as_deref(),
            allow_unverified,
            target: SwuTarget { board: args.board, hardware_revision: hardware },
            timeouts: Timeouts::default(),
            restart: !args.no_restart,
            health_url: args.health_url.as_deref(),
            health_timeout: std::time::Duration::from_secs(args.health_timeout),
        };
        let outcome = fp.swupdate_install(job, &bar).await;
        bar.finish();
        let outcome = outcome?;
        let version = outcome.verified.description.version.as_deref().unwrap_or("(no version)");
        if json {
            let v = serde_json::json!({
                "device": device,
                "version": version,
                "bytes": outcome.report.bytes_sent,
                "sha256": hex::encode(outcome.report.sha256),
                "restart": outcome.restart,
                "health": outcome.health,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            println!(
                "{device}: installed {version} ({} bytes; SWUpdate reported success)",
                outcome.report.bytes_sent
            );
            if let Some(r) = &outcome.restart {
                println!("{device}: {r}");
            }
            if let Some(h) = &outcome.health {
                println!("{device}: healthy: {h}");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn print_states(states: &[ImageSlotState], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(states)?);
        return Ok(());
    }
    if states.is_empty() {
        println!("no images");
    }
    for s in states {
        let flags: Vec<&str> = [
            (s.active, "active"),
            (s.confirmed, "confirmed"),
            (s.pending, "pending"),
            (s.permanent, "permanent"),
            (s.bootable, "bootable"),
        ]
        .iter()
        .filter_map(|&(on, name)| on.then_some(name))
        .collect();
        println!(
            "image {} slot {}: version {}  hash {}  [{}]",
            s.image,
            s.slot,
            s.version,
            hex_string(&s.hash),
            flags.join(", ")
        );
    }
    Ok(())
}

/// One line for how an install ended.
pub(crate) fn outcome_text(o: &FlashOutcome) -> String {
    match o {
        FlashOutcome::Confirmed { version } => format!("patched: {version}, confirmed"),
        FlashOutcome::AlreadyDone { version } => format!("already runs {version}; nothing sent"),
        FlashOutcome::Unverified { version } => {
            format!("{version} written, unverified (the device cannot report its image)")
        }
        FlashOutcome::RolledBack { reason } => format!("rolled back: {reason}"),
        FlashOutcome::Failed { stage, reason } => format!("failed at {stage}: {reason}"),
    }
}
