//! `fieldpatch device`: low-level SMP commands for technicians who debug a device.
//!
//! Thin: every subcommand is a call into `fieldpatch_drivers::smp`. Image upload sends only bytes
//! the caller vouches for: a bare file needs `--allow-unverified`; verified inputs (bundles,
//! vendor-signed images) enter through [`send_image`], which takes the bytes to send.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use fieldpatch_drivers::progress::{Progress, TransferProgress};
use fieldpatch_drivers::smp::commands::hex_string;
use fieldpatch_drivers::smp::{AfterUpload, ImageSlotState, SmpClient, UploadOptions};
use fieldpatch_drivers::transport::{AnyLink, SerialLink, UdpLink, serial, udp};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct DeviceArgs {
    /// Serial port of the device (for example /dev/ttyACM0).
    #[arg(long, required_unless_present = "udp", conflicts_with = "udp")]
    serial: Option<String>,
    /// Serial speed.
    #[arg(long, default_value_t = serial::DEFAULT_BAUD, requires = "serial")]
    baud: u32,
    /// UDP address of the device, HOST[:PORT] (port 1337 by default).
    #[arg(long)]
    udp: Option<String>,
    #[command(subcommand)]
    command: DeviceCommand,
}

#[derive(Subcommand, Debug)]
enum DeviceCommand {
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
enum ImageCommand {
    /// List the images in the device's slots.
    List,
    /// Upload an image to the secondary slot.
    Upload {
        file: PathBuf,
        /// Mark the image for a test boot after the upload.
        #[arg(long, conflicts_with = "confirm")]
        test: bool,
        /// Mark the image permanent after the upload (no test boot: risky).
        #[arg(long)]
        confirm: bool,
        /// Send a bare image file that Fieldpatch has not verified.
        #[arg(long)]
        allow_unverified: bool,
    },
    /// Mark the image with HASH (hex) for a test boot on the next reset.
    Test { hash: String },
    /// Confirm the image with HASH, or the running image.
    Confirm { hash: Option<String> },
}

pub fn run(args: DeviceArgs, json: bool) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let link = match (&args.serial, &args.udp) {
            (Some(port), _) => AnyLink::Serial(SerialLink::open(port, args.baud)?),
            (None, Some(addr)) => AnyLink::Udp(UdpLink::connect(udp::parse_addr(addr)?).await?),
            (None, None) => bail!("say which device: --serial PORT or --udp HOST[:PORT]"),
        };
        let mut client = SmpClient::new(link);
        match args.command {
            DeviceCommand::Info => {
                let info = client.app_info().await?;
                let params = client.params().await?;
                if json {
                    let v = serde_json::json!({ "info": info, "params": params });
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    println!("{info}");
                    println!("SMP buffers: {} x {} bytes", params.buf_count, params.buf_size);
                }
            }
            DeviceCommand::Image(ImageCommand::List) => {
                print_states(&client.image_list().await?, json)?;
            }
            DeviceCommand::Image(ImageCommand::Upload { file, test, confirm, allow_unverified }) => {
                if !allow_unverified {
                    bail!(
                        "refusing to send {}: it is a bare image file that Fieldpatch has not verified \
                         (no signed bundle, no trusted vendor signature). Use a signed patch bundle, \
                         or pass --allow-unverified to send it anyway",
                        file.display()
                    );
                }
                let bytes = std::fs::read(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                let after = match (test, confirm) {
                    (true, _) => AfterUpload::Test,
                    (_, true) => AfterUpload::Confirm,
                    _ => AfterUpload::Nothing,
                };
                // Unverified: there is no verified hash to hold the device to.
                send_image(&mut client, &bytes, None, after, json).await?;
            }
            DeviceCommand::Image(ImageCommand::Test { hash }) => {
                print_states(&client.image_test(&parse_hash(&hash)?).await?, json)?;
            }
            DeviceCommand::Image(ImageCommand::Confirm { hash }) => {
                let hash = hash.as_deref().map(parse_hash).transpose()?;
                print_states(&client.image_confirm(hash.as_deref()).await?, json)?;
            }
            DeviceCommand::Reset => {
                client.reset().await?;
                if !json {
                    println!("reset requested");
                }
            }
            DeviceCommand::Echo { text } => {
                let r = client.echo(&text).await?;
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

/// Upload bytes that were verified (or explicitly allowed unverified) and mark them as asked;
/// `verified_hash` is the image hash established by verification, if any.
pub async fn send_image(
    client: &mut SmpClient<AnyLink>,
    verified: &[u8],
    verified_hash: Option<&[u8]>,
    after: AfterUpload,
    json: bool,
) -> anyhow::Result<()> {
    let bar = Bar::new(json);
    let (report, states) =
        client.upload_image(verified, verified_hash, after, UploadOptions::default(), &bar).await?;
    bar.0.finish_and_clear();
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
    Ok(())
}

fn parse_hash(s: &str) -> anyhow::Result<Vec<u8>> {
    let h = hex::decode(s.trim())
        .with_context(|| format!("{s:?} is not a hex image hash (as printed by `image list`)"))?;
    if h.len() != 32 {
        bail!("an image hash is 32 bytes (64 hex digits); {s:?} has {} bytes", h.len());
    }
    Ok(h)
}

fn print_states(states: &[ImageSlotState], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(states)?);
        return Ok(());
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

/// Upload progress as an indicatif bar (hidden in JSON mode).
struct Bar(indicatif::ProgressBar);

impl Bar {
    fn new(json: bool) -> Bar {
        let bar =
            if json { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(0) };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:8} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Bar(bar)
    }
}

impl Progress for Bar {
    fn phase(&self, name: &str) {
        self.0.set_message(name.to_string());
    }
    fn transfer(&self, p: TransferProgress) {
        self.0.set_length(p.total);
        self.0.set_position(p.done);
    }
    fn note(&self, message: &str) {
        self.0.println(message);
    }
}
