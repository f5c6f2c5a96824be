//! Discovery at site scale: N lab SMP devices, half on ptys (115200 baud, paced like a UART) and
//! half over UDP on loopback, found and identified by the drivers' scan (`Discovery`, the CLI's
//! default scopes: 8 ports at a time, 100 new hosts a second) and merged and matched to an
//! inventory of N devices by core's matching, in process. Each device has a model of its own and
//! reports no serial number (SMP has none), so each is matched as the only device of its model.
//! Prints the wall time per N and per device, and the share spent merging and matching (goal:
//! 50 devices in under 3 s). Figures only: nothing here asserts a time.
//!
//! `cargo bench -p fieldpatch-e2e --bench discovery`

use fieldpatch_core::discovery::{DiscoveredDevice, Find, matching};
use fieldpatch_core::store::InventoryDevice;
use fieldpatch_drivers::discovery::{
    Discovery, Event, NetTarget, NetworkScope, Request, SerialScope, SystemPorts,
};
use fieldpatch_lab::smp::serial::{SerialServer, serve_pty};
use fieldpatch_lab::smp::udp::{NetConditions, UdpServer, serve_udp};
use fieldpatch_lab::smp::{DeviceConfig, DeviceIdentity, SmpDevice};
use std::time::{Duration, Instant};

const SIZES: [usize; 5] = [10, 20, 30, 40, 50];
const DEADLINE: Duration = Duration::from_secs(30);

fn model(i: usize) -> String {
    format!("bench_{i:02}")
}

/// N lab devices: the first half on ptys, the rest on loopback UDP sockets.
struct Site {
    ptys: Vec<SerialServer>,
    udp: Vec<UdpServer>,
}

fn site(n: usize) -> Site {
    let device = |i: usize| {
        SmpDevice::new(DeviceConfig {
            identity: DeviceIdentity {
                vendor: "Bench".into(),
                model: model(i),
                hardware_revision: "1.0".into(),
                serial_number: format!("BENCH-{i:04}"),
                ..DeviceIdentity::default()
            },
            ..DeviceConfig::default()
        })
    };
    let half = n / 2;
    let ptys = (0..half).map(|i| serve_pty(device(i), 115_200).expect("a pty")).collect();
    let udp = (half..n)
        .map(|i| {
            serve_udp(device(i), "127.0.0.1:0".parse().unwrap(), NetConditions::default())
                .expect("a loopback socket")
        })
        .collect();
    Site { ptys, udp }
}

fn inventory(n: usize) -> Vec<InventoryDevice> {
    (0..n)
        .map(|i| InventoryDevice {
            id: format!("dev-{i:02}"),
            site_id: Some("bench".into()),
            vendor: Some("Bench".into()),
            model: Some(model(i)),
            hardware_revision: Some("1.0".into()),
            serial_number: Some(format!("BENCH-{i:04}")),
            firmware_version: Some("1.0.0".into()),
        })
        .collect()
}

struct Run {
    wall: Duration,
    matching: Duration,
    devices: usize,
    matched: usize,
    skipped: usize,
    deadline_reached: bool,
}

async fn discover(site: &Site, inventory: &[InventoryDevice]) -> Run {
    let request = Request {
        serial: Some(SerialScope {
            system_ports: SystemPorts::None,
            paths: site.ptys.iter().map(|s| s.path().to_path_buf()).collect(),
            ..SerialScope::default()
        }),
        network: Some(NetworkScope {
            targets: site
                .udp
                .iter()
                .map(|s| NetTarget::Host {
                    ip: s.local_addr().ip(),
                    port: Some(s.local_addr().port()),
                })
                .collect(),
            ..NetworkScope::default()
        }),
        mdns: None,
        deadline: DEADLINE,
    };
    let started = Instant::now();
    let mut scan = Discovery::new(request).start().await.expect("the scan starts");
    let mut devices: Vec<DiscoveredDevice> = Vec::new();
    let mut matching_time = Duration::ZERO;
    let (mut skipped, mut deadline_reached) = (0, false);
    while let Some(event) = scan.next().await {
        match event {
            Event::Found(found) => {
                // What `Fieldpatch::discover` does with each find as it comes.
                let t = Instant::now();
                matching::merge(&mut devices, Find::from(found.as_ref()));
                matching::match_inventory(&mut devices, inventory);
                matching_time += t.elapsed();
            }
            Event::Skipped(_) => skipped += 1,
            Event::Finished(summary) => deadline_reached = summary.deadline_reached,
            Event::Planned(_) => {}
        }
    }
    let wall = started.elapsed();
    Run {
        wall,
        matching: matching_time,
        devices: devices.len(),
        matched: devices.iter().filter(|d| d.matched.is_some()).count(),
        skipped,
        deadline_reached,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    println!(
        "discovery: N lab SMP devices (N/2 on ptys at 115200 baud, N/2 over loopback UDP), \
         drivers' scan + core matching, deadline {} s",
        DEADLINE.as_secs()
    );
    println!(
        "{:>4} {:>10} {:>12} {:>12} {:>7} {:>8} {:>8}",
        "N", "wall", "per device", "matching", "found", "matched", "skipped"
    );
    for n in SIZES {
        let site = site(n);
        let inventory = inventory(n);
        let run = rt.block_on(discover(&site, &inventory));
        println!(
            "{n:>4} {:>8.0}ms {:>10.1}ms {:>10.2}ms {:>7} {:>8} {:>8}{}",
            run.wall.as_secs_f64() * 1e3,
            run.wall.as_secs_f64() * 1e3 / n as f64,
            run.matching.as_secs_f64() * 1e3,
            run.devices,
            run.matched,
            run.skipped,
            if run.deadline_reached { "  (deadline reached)" } else { "" },
        );
        if n == 50 {
            println!(
                "FIGURE {}",
                serde_json::json!({
                    "group": "Discovery (lab SMP devices: half on ptys at 115200 baud, half UDP)",
                    "name": format!("{n} devices found, identified and matched"),
                    "value": run.wall.as_secs_f64(), "unit": "s", "runs": 1,
                    "limit": 3.0, "better": "lower", "goal": "under 3 s",
                    "found": run.devices, "matched": run.matched,
                })
            );
        }
        if run.devices != n || run.matched != n {
            println!("      ! expected {n} found and matched");
        }
    }
    println!("goal: 50 devices discovered and identified in under 3 s");
}
