//! SMP upload throughput against the simulated device (prints figures; run with
//! `cargo bench -p fieldpatch-drivers --bench smp_upload`).
//!
//! 1. Serial at 115200 baud 8N1 (11520 bytes/s on the line): payload throughput as a fraction of
//!    what the console framing allows (93 data bytes per 127-byte line). Goal: at least 90%.
//! 2. UDP with 20 ms added round-trip: windowed upload against stop-and-wait. Goal: at least 3x.
//! 3. The same images uploaded by the independent clients `smpmgr` (Python) and `mcumgrctl`
//!    (Rust) to the same kind of device over the same links, each timed from its own process with
//!    its start-up and connect (a bare echo or connection check) subtracted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use fieldpatch_drivers::progress::NoProgress;
use fieldpatch_drivers::smp::{SmpClient, UploadOptions, UploadReport};
use fieldpatch_drivers::transport::{Link, SerialLink, UdpLink};
use fieldpatch_lab::smp::mcuboot::{Version, build_image, test_payload};
use fieldpatch_lab::smp::udp::{NetConditions, UdpServer, serve_udp};
use fieldpatch_lab::smp::{DeviceConfig, SmpDevice, serial::serve_pty};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const BAUD: u32 = 115_200;
const SERIAL_IMAGE: usize = 48 * 1024;
const UDP_IMAGE: usize = 256 * 1024;
const RTT: Duration = Duration::from_millis(20);

fn image(len: usize) -> Vec<u8> {
    build_image(Version { major: 2, minor: 0, revision: 0, build: 0 }, &test_payload(len, 42))
}

async fn upload<L: Link>(link: L, img: &[u8], window: Option<usize>) -> UploadReport {
    let mut c = SmpClient::new(link);
    let opts = UploadOptions { window, ..Default::default() };
    c.upload(img, opts, &NoProgress).await.expect("upload")
}

fn rate(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64()
}

fn smpmgr() -> Option<PathBuf> {
    let mut c: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("smpmgr")).collect())
        .unwrap_or_default();
    if let Some(h) = std::env::var_os("HOME") {
        c.push(PathBuf::from(h).join(".cache/fieldpatch/venv/bin/smpmgr"));
    }
    c.into_iter().find(|p| p.is_file())
}

fn mcumgrctl() -> Option<PathBuf> {
    let mut c: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("mcumgrctl")).collect())
        .unwrap_or_default();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if let Some(d) = cargo_home {
        c.push(d.join("bin/mcumgrctl"));
    }
    c.into_iter().find(|p| p.is_file())
}

/// Wall time of a peer's run of `args`, and of its run of `startup` (process start-up and
/// connect, no transfer).
fn time_peer(
    bin: &PathBuf,
    target: &[String],
    common: &[&str],
    startup: &[&str],
    args: &[&str],
) -> (Duration, Duration) {
    let run = |a: &[&str]| {
        let t = Instant::now();
        let out = std::process::Command::new(bin)
            .args(target)
            .args(common)
            .args(a)
            .env("NO_COLOR", "1")
            .output()
            .expect("peer runs");
        assert!(
            out.status.success(),
            "{} {a:?} failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        t.elapsed()
    };
    let startup = run(startup);
    (run(args), startup)
}

/// Wall time of an `smpmgr` run, and of a bare `os echo` (interpreter start-up and connect).
fn time_smpmgr(bin: &PathBuf, target: &[String], args: &[&str]) -> (Duration, Duration) {
    time_peer(bin, target, &["--timeout", "10"], &["os", "echo", "x"], args)
}

/// Wall time of an `mcumgrctl` run, and of its connection check (start-up, the MCUmgr
/// parameters request and an echo).
fn time_mcumgrctl(bin: &PathBuf, target: &[String], args: &[&str]) -> (Duration, Duration) {
    time_peer(bin, target, &["--timeout", "10000", "--quiet"], &[], args)
}

fn udp_1337(dev: &SmpDevice, net: NetConditions) -> Option<UdpServer> {
    ["127.0.0.1:1337", "127.0.0.2:1337", "127.0.0.3:1337"]
        .iter()
        .find_map(|a| serve_udp(dev.clone(), a.parse().unwrap(), net).ok())
}

#[tokio::main]
async fn main() {
    let limit = f64::from(BAUD) / 10.0 * 93.0 / 127.0;
    println!("== SMP upload benchmarks (lab device: buf_size 2048, buf_count 4)");

    // 1. Serial.
    let img = image(SERIAL_IMAGE);
    let dev = SmpDevice::new(DeviceConfig::default());
    let server = serve_pty(dev.clone(), BAUD).unwrap();
    let port = server.path().to_str().unwrap().to_string();
    let link = SerialLink::open(&port, BAUD).unwrap();
    let r = upload(link, &img, None).await;
    let ours_serial = rate(img.len(), r.elapsed);
    println!(
        "serial 115200: {} bytes in {:.2} s = {:.0} B/s; framing limit {:.0} B/s; {:.1}% of the limit (goal >= 90%); chunk {} B, window {}, {} retries",
        img.len(),
        r.elapsed.as_secs_f64(),
        ours_serial,
        limit,
        100.0 * ours_serial / limit,
        r.chunk,
        r.window,
        r.retries
    );

    println!(
        "FIGURE {}",
        serde_json::json!({
            "group": GROUP_SERIAL, "name": "upload payload rate against the framing limit",
            "value": ours_serial, "unit": "B/s", "runs": 1, "limit": limit, "better": "higher",
            "goal": "at least 90% of the framing limit",
        })
    );

    // 2. UDP, windowed against stop-and-wait.
    let img = image(UDP_IMAGE);
    let net = NetConditions { added_rtt: RTT, ..Default::default() };
    let mut udp_rates = Vec::new();
    for window in [Some(1), None] {
        let dev = SmpDevice::new(DeviceConfig::default());
        let server = serve_udp(dev, "127.0.0.1:0".parse().unwrap(), net).unwrap();
        let link = UdpLink::connect(server.local_addr()).await.unwrap();
        let r = upload(link, &img, window).await;
        let label = if window == Some(1) { "stop-and-wait" } else { "windowed" };
        println!(
            "udp rtt 20 ms, {label}: {} bytes in {:.2} s = {:.0} B/s (window {}, {} retries)",
            img.len(),
            r.elapsed.as_secs_f64(),
            rate(img.len(), r.elapsed),
            r.window,
            r.retries
        );
        udp_rates.push(rate(img.len(), r.elapsed));
    }
    let ours_udp = udp_rates[1];
    println!("udp windowed / stop-and-wait: {:.2}x (goal >= 3x)", udp_rates[1] / udp_rates[0]);
    println!(
        "FIGURE {}",
        serde_json::json!({
            "group": GROUP_UDP, "name": "windowed upload against stop-and-wait",
            "value": udp_rates[1], "unit": "B/s", "runs": 1, "peer": "stop-and-wait (window 1)",
            "peer_value": udp_rates[0], "better": "higher", "goal": "at least 3x stop-and-wait",
            "min_ratio": 3.0,
        })
    );

    // 3. The independent clients side by side.
    let dir = std::env::temp_dir().join(format!("fieldpatch-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let serial_file = dir.join("serial.bin");
    std::fs::write(&serial_file, image(SERIAL_IMAGE)).unwrap();
    let udp_file = dir.join("udp.bin");
    std::fs::write(&udp_file, image(UDP_IMAGE)).unwrap();
    let files = PeerFiles { serial: &serial_file, udp: &udp_file };
    let ours = Ours { serial: ours_serial, udp: ours_udp };
    match smpmgr() {
        Some(bin) => smpmgr_side_by_side(&bin, &files, ours, net),
        None => println!("smpmgr: not installed (run scripts/setup); comparison skipped"),
    }
    match mcumgrctl() {
        Some(bin) => mcumgrctl_side_by_side(&bin, &files, ours, net),
        None => println!("mcumgrctl: not installed (run scripts/setup); comparison skipped"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

const GROUP_SERIAL: &str = "SMP over serial (lab device on a pty, 115200 baud)";
const GROUP_UDP: &str = "SMP over UDP (lab device, 20 ms added round trip)";

struct PeerFiles<'a> {
    serial: &'a std::path::Path,
    udp: &'a std::path::Path,
}

/// Fieldpatch's own rates in this run, B/s.
#[derive(Clone, Copy)]
struct Ours {
    serial: f64,
    udp: f64,
}

fn smpmgr_side_by_side(bin: &PathBuf, files: &PeerFiles<'_>, ours: Ours, net: NetConditions) {
    let dev = SmpDevice::new(DeviceConfig::default());
    let server = serve_pty(dev, BAUD).unwrap();
    let target = vec![
        "--port".to_string(),
        server.path().to_str().unwrap().to_string(),
        "--baudrate".into(),
        BAUD.to_string(),
    ];
    let (t, startup) = time_smpmgr(
        bin,
        &target,
        &["image", "upload", "--slot", "1", files.serial.to_str().unwrap()],
    );
    let theirs = rate(SERIAL_IMAGE, t.saturating_sub(startup));
    println!(
        "FIGURE {}",
        serde_json::json!({
            "group": GROUP_SERIAL, "name": "upload against smpmgr (start-up excluded)",
            "value": ours.serial, "unit": "B/s", "runs": 1, "peer": "smpmgr image upload",
            "peer_value": theirs, "better": "higher",
        })
    );
    println!(
        "smpmgr serial 115200: {:.2} s wall ({:.2} s start-up and connect excluded) = {:.0} B/s; fieldpatch / smpmgr = {:.2}x",
        t.as_secs_f64(),
        startup.as_secs_f64(),
        theirs,
        ours.serial / theirs
    );

    let dev = SmpDevice::new(DeviceConfig::default());
    match udp_1337(&dev, net) {
        None => println!("smpmgr udp: no free loopback address for port 1337; skipped"),
        Some(server) => {
            let target = vec!["--ip".to_string(), server.local_addr().ip().to_string()];
            let (t, startup) = time_smpmgr(
                bin,
                &target,
                &["image", "upload", "--slot", "1", files.udp.to_str().unwrap()],
            );
            let theirs = rate(UDP_IMAGE, t.saturating_sub(startup));
            println!(
                "FIGURE {}",
                serde_json::json!({
                    "group": GROUP_UDP, "name": "windowed upload against smpmgr (start-up excluded)",
                    "value": ours.udp, "unit": "B/s", "runs": 1, "peer": "smpmgr image upload",
                    "peer_value": theirs, "better": "higher",
                })
            );
            println!(
                "smpmgr udp rtt 20 ms: {:.2} s wall ({:.2} s start-up and connect excluded) = {:.0} B/s; fieldpatch / smpmgr = {:.2}x",
                t.as_secs_f64(),
                startup.as_secs_f64(),
                theirs,
                ours.udp / theirs
            );
        }
    }
}

fn mcumgrctl_side_by_side(bin: &PathBuf, files: &PeerFiles<'_>, ours: Ours, net: NetConditions) {
    let dev = SmpDevice::new(DeviceConfig::default());
    let server = serve_pty(dev.clone(), BAUD).unwrap();
    let target = vec![
        "--serial".to_string(),
        server.path().to_str().unwrap().to_string(),
        "--baud".into(),
        BAUD.to_string(),
    ];
    let (t, startup) =
        time_mcumgrctl(bin, &target, &["image", "upload", files.serial.to_str().unwrap()]);
    // A timed run that did not land the image would be no figure at all.
    assert_eq!(dev.slot_bytes(1), Some(std::fs::read(files.serial).unwrap()), "{:?}", dev.log());
    let theirs = rate(SERIAL_IMAGE, t.saturating_sub(startup));
    println!(
        "FIGURE {}",
        serde_json::json!({
            "group": GROUP_SERIAL, "name": "upload against mcumgrctl (start-up excluded)",
            "value": ours.serial, "unit": "B/s", "runs": 1, "peer": "mcumgrctl image upload",
            "peer_value": theirs, "better": "higher",
        })
    );
    println!(
        "mcumgrctl serial 115200: {:.2} s wall ({:.2} s start-up and connect excluded) = {:.0} B/s; fieldpatch / mcumgrctl = {:.2}x",
        t.as_secs_f64(),
        startup.as_secs_f64(),
        theirs,
        ours.serial / theirs
    );

    // mcumgrctl takes any UDP port.
    let dev = SmpDevice::new(DeviceConfig::default());
    let server = serve_udp(dev.clone(), "127.0.0.1:0".parse().unwrap(), net).unwrap();
    let target = vec!["--udp".to_string(), server.local_addr().to_string()];
    let (t, startup) =
        time_mcumgrctl(bin, &target, &["image", "upload", files.udp.to_str().unwrap()]);
    assert_eq!(dev.slot_bytes(1), Some(std::fs::read(files.udp).unwrap()), "{:?}", dev.log());
    let theirs = rate(UDP_IMAGE, t.saturating_sub(startup));
    println!(
        "FIGURE {}",
        serde_json::json!({
            "group": GROUP_UDP, "name": "windowed upload against mcumgrctl (start-up excluded)",
            "value": ours.udp, "unit": "B/s", "runs": 1, "peer": "mcumgrctl image upload",
            "peer_value": theirs, "better": "higher",
        })
    );
    println!(
        "mcumgrctl udp rtt 20 ms: {:.2} s wall ({:.2} s start-up and connect excluded) = {:.0} B/s; fieldpatch / mcumgrctl = {:.2}x",
        t.as_secs_f64(),
        startup.as_secs_f64(),
        theirs,
        ours.udp / theirs
    );
}
