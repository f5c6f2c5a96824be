//! `fieldpatch device`: low-level SMP commands for technicians who debug a device.
//!
//! Thin: every subcommand is a call into `fieldpatch_drivers::smp`. Image upload sends only bytes
//! the caller vouches for: a bare file needs `--allow-unverified`; verified inputs (bundles,
//! vendor-signed images) enter through [`send_image`], which takes the bytes to send.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use fieldpatch_core::bundle::input::{Clearance, ClearedImage, clear_for_device};
use fieldpatch_core::bundle::{TrustStore, VerifyPolicy};
use fieldpatch_core::credentials::Credentials;
use fieldpatch_core::store::Store;
use fieldpatch_core::visitlog::{EventKind, NewEvent, VisitLog};
use fieldpatch_drivers::progress::{Progress, TransferProgress};
use fieldpatch_drivers::smp::commands::hex_string;
use fieldpatch_drivers::smp::{AfterUpload, ImageSlotState, SmpClient, UploadOptions};
use fieldpatch_drivers::transport::{AnyLink, SerialLink, UdpLink, serial, udp};
use sha2::{Digest, Sha256};
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
        /// Trust store (JSON) to verify a bundle or a vendor-signed image against.
        #[arg(long)]
        trust: Option<PathBuf>,
        /// Send a bare image file that Fieldpatch has not verified (recorded in the visit log).
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
            DeviceCommand::Image(ImageCommand::Upload {
                file,
                test,
                confirm,
                trust,
                allow_unverified,
            }) => {
                let trust = trust.as_deref().map(TrustStore::load).transpose()?;
                let cleared = clear_for_device(
                    &file,
                    trust.as_ref(),
                    &VerifyPolicy::now(),
                    allow_unverified,
                )?;
                record_clearance(&cleared, &file).await?;
                let after = match (test, confirm) {
                    (true, _) => AfterUpload::Test,
                    (_, true) => AfterUpload::Confirm,
                    _ => AfterUpload::Nothing,
                };
                send_image(
                    &mut client,
                    &cleared.bytes,
                    cleared.device_hash.as_deref(),
                    after,
                    json,
                )
                .await?;
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

/// Record in the technician's visit log why these bytes may be sent, before the first byte goes.
async fn record_clearance(c: &ClearedImage, file: &std::path::Path) -> anyhow::Result<()> {
    let store = Store::open_default().await?;
    let key = Credentials::open(&store).await?.technician_key().await?;
    let log = VisitLog::open(&store, key).await?;
    let sha = hex_string(&Sha256::digest(&c.bytes));
    let kind = match &c.how {
        Clearance::Bundle { bundle_id, bundle_version, rule } => EventKind::BundleVerified {
            bundle_id: bundle_id.clone(),
            bundle_version: bundle_version.clone(),
            rule: rule.clone(),
        },
        Clearance::VendorSigned { key_id } => EventKind::Note {
            text: format!("image {} ({sha}) verified by vendor key {key_id}", file.display()),
        },
        Clearance::Unverified => EventKind::UnverifiedImageAllowed {
            image_sha256: sha,
            reason: format!("{}: sent with --allow-unverified", file.display()),
        },
    };
    log.append(NewEvent::new(kind)).await.context("cannot record the upload in the visit log")?;
    Ok(())
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
