//! `fieldpatch-lab`: run simulated devices by hand.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use fieldpatch_lab::smp::mcuboot::{self, Version};
use fieldpatch_lab::smp::{DeviceConfig, DeviceIdentity, Faults, SmpDevice};
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "fieldpatch-lab", version, about = "Simulated devices for Fieldpatch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Open a raw pseudo-terminal and echo every byte back (checks a client's serial setup).
    Loopback,
    /// Open a pseudo-terminal that sends garbage continuously (prints its path).
    Garbage {
        /// Line speed the garbage is paced at (8N1).
        #[arg(long, default_value_t = 115_200)]
        baud: u32,
        /// Seed of the garbage.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Run a simulated Zephyr/MCUboot SMP device on a new pty (prints its path).
    SmpSerial {
        /// Line speed the pty is paced at (8N1).
        #[arg(long, default_value_t = 115_200)]
        baud: u32,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Run a simulated ESP32 in its ROM serial bootloader on a new pty (prints its path); use
    /// esptool with `--before no-reset --no-stub`.
    EspSerial {
        /// Flash size in bytes (a power of two, 256 KiB to 16 MiB).
        #[arg(long, default_value_t = 4 * 1024 * 1024)]
        flash_size: u32,
        /// Keep the flash in this file (created erased when missing).
        #[arg(long)]
        flash_file: Option<std::path::PathBuf>,
        /// Pace the line at its baud rate (115200, then what CHANGE_BAUDRATE sets).
        #[arg(long)]
        paced: bool,
    },
    /// Run a simulated Zephyr/MCUboot SMP device on a UDP port.
    SmpUdp {
        /// Address to bind (loopback only is sensible).
        #[arg(long, default_value = "127.0.0.1:1337")]
        bind: std::net::SocketAddr,
        /// Added round-trip time in milliseconds.
        #[arg(long, default_value_t = 0)]
        rtt_ms: u64,
        /// Datagram loss probability per direction (0.0 to 1.0).
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Advertise the device over mDNS (`_mcumgr._udp.local.`, identity in TXT) on the
        /// interfaces named by --mdns-interface.
        #[arg(long, requires = "mdns_interface")]
        advertise: bool,
        /// An interface to advertise on (repeat for several); never all by default.
        #[arg(long = "mdns-interface", value_name = "NAME")]
        mdns_interface: Vec<String>,
        /// The mDNS port (5353 on real networks).
        #[arg(long, default_value_t = 5353)]
        mdns_port: u16,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Write an unsigned MCUboot test image (header, payload, SHA-256 TLV) to a file.
    MakeImage {
        /// Version MAJOR.MINOR.REVISION[.BUILD].
        #[arg(long)]
        version: Version,
        /// Payload size in bytes.
        #[arg(long, default_value_t = 65_536)]
        size: usize,
        /// Seed for the payload bytes.
        #[arg(long, default_value_t = 1)]
        seed: u8,
        out: std::path::PathBuf,
    },
}

#[derive(Args, Debug)]
struct DeviceArgs {
    /// SMP receive buffer size.
    #[arg(long, default_value_t = 2048)]
    buf_size: usize,
    /// Number of SMP receive buffers.
    #[arg(long, default_value_t = 4)]
    buf_count: usize,
    /// Flash write speed in KiB/s.
    #[arg(long, default_value_t = 512.0)]
    flash_kib_s: f64,
    /// Version of the image running at power-on.
    #[arg(long, default_value = "1.0.0")]
    running_version: Version,
    /// Fault: drop every Nth received packet.
    #[arg(long)]
    drop_every: Option<u32>,
    /// Fault: corrupt every Nth sent packet.
    #[arg(long)]
    corrupt_every: Option<u32>,
    /// Fault: reboot once the upload reaches this offset.
    #[arg(long)]
    reboot_at: Option<u64>,
    /// Fault: stall for 3 s once the upload reaches this offset.
    #[arg(long)]
    stall_at: Option<u64>,
    /// Fault: lose power during the test boot of a new image (it reverts).
    #[arg(long)]
    power_loss_on_test_boot: bool,
    /// Fault: a new image fails its health check on its test boot (it reverts).
    #[arg(long)]
    fail_health_check: bool,
    /// Vendor (advertised over mDNS).
    #[arg(long, default_value = "Lab")]
    vendor: String,
    /// Model: the board name, reported as the OS info hardware platform.
    #[arg(long, default_value = "lab_sensor")]
    model: String,
    /// Hardware revision: the board revision (`MODEL@REVISION`).
    #[arg(long, default_value = "1.0.0")]
    hardware_revision: String,
    /// Serial number (advertised over mDNS).
    #[arg(long, default_value = "LAB-000001")]
    serial_number: String,
    /// Host name (OS info node name, mDNS host); default MODEL-SERIAL.
    #[arg(long)]
    hostname: Option<String>,
    /// Start in MCUboot serial recovery (Zephyr's defaults: no echo, no parameters command).
    #[arg(long)]
    serial_recovery: bool,
}

impl DeviceArgs {
    fn device(&self) -> SmpDevice {
        let dev = SmpDevice::new(DeviceConfig {
            buf_size: self.buf_size,
            buf_count: self.buf_count,
            flash_bytes_per_sec: self.flash_kib_s * 1024.0,
            initial_image: mcuboot::build_image(
                self.running_version,
                &mcuboot::test_payload(4096, 0),
            ),
            identity: DeviceIdentity {
                vendor: self.vendor.clone(),
                model: self.model.clone(),
                hardware_revision: self.hardware_revision.clone(),
                serial_number: self.serial_number.clone(),
                hostname: self.hostname.clone(),
                ..DeviceIdentity::default()
            },
            serial_recovery: self
                .serial_recovery
                .then(fieldpatch_lab::smp::recovery::SerialRecovery::default),
            ..DeviceConfig::default()
        });
        *dev.faults() = Faults {
            drop_rx_every: self.drop_every,
            corrupt_tx_every: self.corrupt_every,
            stall_at: self.stall_at.map(|o| (o, Duration::from_secs(3))),
            reboot_at: self.reboot_at,
            power_loss_on_test_boot: self.power_loss_on_test_boot,
            fail_health_check: self.fail_health_check,
            ..Faults::default()
        };
        dev
    }
}

/// Print the device's log as it grows, forever.
fn follow(dev: &SmpDevice) -> ! {
    let mut seen = 0;
    loop {
        let log = dev.log();
        for line in &log[seen.min(log.len())..] {
            eprintln!("device: {line}");
        }
        seen = log.len();
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Loopback => {
            use std::io::{Read, Write};
            let pty = fieldpatch_lab::pty::Pty::open()?;
            println!("{}", pty.path().display());
            let mut rx = pty.controller_clone()?;
            let mut tx = pty.controller_clone()?;
            let mut buf = [0u8; 512];
            loop {
                let n = rx.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                tx.write_all(&buf[..n])?;
            }
        }
        Command::Garbage { baud, seed } => {
            let garbage = fieldpatch_lab::noise::serve_garbage(baud, seed)?;
            println!("{}", garbage.path().display());
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        Command::SmpSerial { baud, device } => {
            let dev = device.device();
            let server = fieldpatch_lab::smp::serial::serve_pty(dev.clone(), baud)?;
            println!("{}", server.path().display());
            follow(&dev)
        }
        Command::EspSerial { flash_size, flash_file, paced } => {
            let config = fieldpatch_lab::esp::EspConfig {
                flash_size,
                flash_file,
                paced,
                ..Default::default()
            };
            let dev = fieldpatch_lab::esp::EspDevice::new(config)?;
            let server = fieldpatch_lab::esp::serial::serve_pty(dev.clone())?;
            println!("{}", server.path().display());
            let mut seen = 0;
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let commands = dev.commands();
                for c in &commands[seen.min(commands.len())..] {
                    eprintln!("{}", c.name());
                }
                seen = commands.len();
            }
        }
        Command::SmpUdp { bind, rtt_ms, loss, advertise, mdns_interface, mdns_port, device } => {
            anyhow::ensure!((0.0..1.0).contains(&loss), "--loss must be at least 0 and below 1");
            let dev = device.device();
            let net = fieldpatch_lab::smp::udp::NetConditions {
                added_rtt: Duration::from_millis(rtt_ms),
                loss,
                seed: 1,
            };
            let server = fieldpatch_lab::smp::udp::serve_udp(dev.clone(), bind, net)?;
            let _advertiser = if advertise {
                let opts = fieldpatch_lab::mdns::AdvertiseOptions {
                    interfaces: mdns_interface,
                    mdns_port,
                    instance: None,
                };
                let adv = fieldpatch_lab::mdns::advertise(&dev, server.local_addr(), &opts)?;
                eprintln!("advertising {} over mDNS", adv.fullname());
                Some(adv)
            } else {
                None
            };
            println!("{}", server.local_addr());
            follow(&dev)
        }
        Command::MakeImage { version, size, seed, out } => {
            let img = mcuboot::build_image(version, &mcuboot::test_payload(size, seed));
            std::fs::write(&out, &img)?;
            let info = mcuboot::parse(&img).with_context(|| {
                format!("the image built for version {version} does not parse as MCUboot")
            })?;
            let hash: String = info.hash.iter().map(|b| format!("{b:02x}")).collect();
            println!("{} {} bytes, version {}, hash {hash}", out.display(), img.len(), version);
            Ok(())
        }
    }
}
