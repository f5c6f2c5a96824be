//! `fieldpatch discover` and `fieldpatch plan --discover` end to end, through the real binaries:
//! a `fieldpatch-server` with a site, its devices and a work order; a laptop (the `fieldpatch`
//! binary, its own data directory, the real Secret Service) enrolled and synced; and a lab site
//! on real plumbing:
//!
//! - `pump-1`: a lab SMP device on a pty. SMP tells no vendor or serial number, so it can only
//!   match as the one device of its model (`only_of_its_model`);
//! - `gw-1`: the `fieldpatch-lab smp-udp --advertise` binary in one network namespace of a veth
//!   pair, found by mDNS from the other (its serial number is in the TXT record), and also probed
//!   at its address: one device, matched by `serial_number`;
//! - `sensor-9`: in the work order, not on site: `missing`;
//! - a stray advertised device of the same vendor, model and revision as `sensor-9` with another
//!   serial number: unknown, never matched, never planned;
//! - a pty that talks garbage and an address that never answers: skipped, well within the
//!   deadline;
//! - an SMP device on a pty that is both named (`--port`) and excluded (`--exclude`): never
//!   opened (an inotify [`OpenWatch`] on its node says so).
//!
//! `fieldpatch discover` and `fieldpatch plan` run inside the browsing namespace
//! (`ip netns exec`); ptys and the D-Bus socket are files, so they reach them from there. The
//! tests need root (network namespaces) and run inside `scripts/test`'s D-Bus session.

use crate::sync_cli::{Laptop, Server, admin, enrol, new_laptop, serve};
use fieldpatch_e2e::built_binary;
use fieldpatch_e2e::kit::{BundleSpec, Kit};
use fieldpatch_lab::netns::{Netns, VethPair};
use fieldpatch_lab::noise::{GarbagePty, serve_garbage};
use fieldpatch_lab::pty::OpenWatch;
use fieldpatch_lab::smp::mcuboot::{Version, build_image, test_payload};
use fieldpatch_lab::smp::serial::{SerialServer, serve_pty};
use fieldpatch_lab::smp::{DeviceConfig, DeviceIdentity, SmpDevice};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

/// The discovery deadline the tests give (`--deadline`); everything must be over well before.
const DEADLINE_S: u64 = 20;
/// An address in the device namespace with a socket that reads and never answers.
const SILENT: &str = "192.0.2.1:1500";
/// Where the advertised gateway serves SMP (also probed by address).
const GATEWAY: &str = "192.0.2.1:1337";
/// Where the stray advertised device serves SMP.
const STRAY: &str = "192.0.2.1:1338";

/// A child process killed when dropped.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The work order's inventory: `pump-1` (on a pty), `gw-1` (advertised), `sensor-9` (absent).
const DEVICES: &str = r#"[
  {"id":"pump-1","site_id":"plant-7","vendor":"Lab","model":"lab_pump","hardware_revision":"2.0",
   "serial_number":"PUMP-0001","approved_version":"2.0.0","current_firmware":"1.0.0"},
  {"id":"gw-1","site_id":"plant-7","vendor":"Acme","model":"acme_gateway","hardware_revision":"3.0.1",
   "serial_number":"GW-0042","approved_version":"2.0.0","current_firmware":"1.0.0"},
  {"id":"sensor-9","site_id":"plant-7","vendor":"Lab","model":"lab_sensor","hardware_revision":"1.0.0",
   "serial_number":"SN-GONE","approved_version":"2.0.0","current_firmware":"1.0.0"}
]"#;

const ORDERS: &str = r#"[{"id":"wo-7","site_id":"plant-7","title":"Patch plant 7",
  "planned_for":"2026-12-01","devices":["pump-1","gw-1","sensor-9"]}]"#;

/// A lab SMP device running 1.0.0 with `identity`.
fn lab_device(vendor: &str, model: &str, rev: &str, serial: &str, seed: u8) -> SmpDevice {
    SmpDevice::new(DeviceConfig {
        initial_image: build_image(
            Version { major: 1, minor: 0, revision: 0, build: 0 },
            &test_payload(4096, seed),
        ),
        identity: DeviceIdentity {
            vendor: vendor.into(),
            model: model.into(),
            hardware_revision: rev.into(),
            serial_number: serial.into(),
            ..DeviceIdentity::default()
        },
        ..DeviceConfig::default()
    })
}

/// The whole scene. Fields drop in order: lab processes and sockets before their namespaces.
struct Scene {
    laptop: Laptop,
    _advertised: Vec<Kill>,
    _silent: std::sync::mpsc::Sender<()>,
    pair: VethPair,
    pump: SerialServer,
    excluded: SerialServer,
    excluded_watch: OpenWatch,
    garbage: GarbagePty,
    _server: Server,
    _tmp: tempfile::TempDir,
}

impl Drop for Scene {
    fn drop(&mut self) {
        for name in ["sync-token", "technician-key"] {
            let _ = self.laptop.run(&["credentials", "delete", name], "");
        }
    }
}

/// `fieldpatch-lab smp-udp --advertise` inside `ns`, bound at `bind`; returns once it serves.
fn advertised(ns: &Netns, ifname: &str, bind: &str, id: [&str; 4]) -> Kill {
    let [vendor, model, rev, serial] = id;
    let mut child = ns
        .command(built_binary("fieldpatch-lab"))
        .args(["smp-udp", "--bind", bind, "--advertise", "--mdns-interface", ifname])
        .args(["--vendor", vendor, "--model", model, "--hardware-revision", rev])
        .args(["--serial-number", serial, "--running-version", "1.0.0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let child = Kill(child);
    assert_eq!(line.trim(), bind, "the lab device did not start");
    child
}

/// A UDP socket at `addr` inside `ns` that reads and never answers, until the sender is dropped.
fn silent_socket(ns: &Netns, addr: &str) -> std::sync::mpsc::Sender<()> {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    ns.spawn(move || {
        let socket = std::net::UdpSocket::bind(addr).unwrap();
        ready_tx.send(()).unwrap();
        let _ = stop_rx.recv();
        drop(socket);
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).expect("the silent socket is not bound");
    stop_tx
}

fn file(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

/// Server, inventory, signed catalog, enrolled and synced laptop, and the lab site.
fn scene() -> Scene {
    let tmp = tempfile::tempdir().unwrap();
    let server_data = tmp.path().join("server");
    let laptop = new_laptop(tmp.path());
    let token = enrol(&laptop, &server_data, "alice");

    let sites = file(tmp.path(), "sites.csv", "id,name,address\nplant-7,Plant 7,\n");
    let devices = file(tmp.path(), "devices.json", DEVICES);
    let orders = file(tmp.path(), "orders.json", ORDERS);
    admin(&server_data, &["import-sites", &sites], None);
    admin(&server_data, &["import-devices", &devices], None);
    admin(&server_data, &["import-work-orders", &orders], None);
    admin(&server_data, &["assign", "--technician", "alice", "--site", "plant-7"], None);

    // A 2.0.0 bundle for each model of the work order.
    let kit_dir = tmp.path().join("kit");
    std::fs::create_dir_all(&kit_dir).unwrap();
    let kit = Kit::new(&kit_dir);
    let payload: Vec<u8> = (0..4096u32).map(|i| (i * 13 % 251) as u8).collect();
    for (id, vendor, model) in [
        ("lab-pump-2.0.0", "Lab", "lab_pump"),
        ("acme-gateway-2.0.0", "Acme", "acme_gateway"),
        ("lab-sensor-2.0.0", "Lab", "lab_sensor"),
    ] {
        let bundle = kit.bundle(&BundleSpec {
            id,
            vendor,
            model,
            applies: ("1.0.0", "1.9.9"),
            installs: "2.0.0",
            cvss: "7.5",
            format: "raw",
            payload: &payload,
        });
        let manifest = kit_dir.join(format!("{id}.tpl.json"));
        let (manifest, bundle) = (manifest.to_str().unwrap(), bundle.to_str().unwrap());
        let publish = [
            "publish",
            "--bundle-id",
            id,
            "--version",
            "1",
            "--manifest",
            manifest,
            "--bundle",
            bundle,
        ];
        admin(&server_data, &publish, None);
    }
    admin(&server_data, &["publish-trust", kit.trust.to_str().unwrap()], None);

    let (server, url) = serve(&server_data);
    let out = laptop.run(&["sync", "login", "--server", &url], &format!("{token}\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = laptop.ok(&["sync"]);
    assert!(text.contains("pulled 1 sites, 3 devices, 1 work orders, 3 catalog entries"), "{text}");

    // The lab site.
    let pump = serve_pty(lab_device("Lab", "lab_pump", "2.0", "PUMP-0001", 1), 115_200).unwrap();
    let excluded =
        serve_pty(lab_device("Lab", "lab_valve", "1.0", "VALVE-0001", 2), 115_200).unwrap();
    let excluded_watch = OpenWatch::new(excluded.path()).unwrap();
    let garbage = serve_garbage(115_200, 7).unwrap();
    let pair = VethPair::create().expect("these tests need network namespaces (root)");
    let advertised = vec![
        advertised(&pair.a, &pair.if_a, GATEWAY, ["Acme", "acme_gateway", "3.0.1", "GW-0042"]),
        advertised(&pair.a, &pair.if_a, STRAY, ["Lab", "lab_sensor", "1.0.0", "SN-STRAY"]),
    ];
    let silent = silent_socket(&pair.a, SILENT);
    Scene {
        laptop,
        _advertised: advertised,
        _silent: silent,
        pair,
        pump,
        excluded,
        excluded_watch,
        garbage,
        _server: server,
        _tmp: tmp,
    }
}

impl Scene {
    /// The discovery options every run uses: the three ptys (one excluded), the gateway's and
    /// the silent address, mDNS on the browsing side of the veth pair.
    fn discovery_args(&self) -> Vec<String> {
        let path = |p: &Path| p.to_str().unwrap().to_string();
        let mut args: Vec<String> = Vec::new();
        for port in [self.pump.path(), self.garbage.path(), self.excluded.path()] {
            args.extend(["--port".into(), path(port)]);
        }
        args.extend(["--exclude".into(), path(self.excluded.path())]);
        args.extend(["--net".into(), format!("{GATEWAY},{SILENT}")]);
        args.extend(["--interface".into(), self.pair.if_b.clone()]);
        args.extend(["--deadline".into(), DEADLINE_S.to_string()]);
        args
    }

    /// Run the `fieldpatch` binary inside the browsing namespace, as the technician's laptop;
    /// its output and how long it took.
    fn run_on_site(&self, args: &[String]) -> (Output, Duration) {
        let started = Instant::now();
        let out = self
            .pair
            .b
            .command(built_binary("fieldpatch"))
            .args(args)
            .current_dir(&self.laptop.data)
            .env("FIELDPATCH_DATA_DIR", &self.laptop.data)
            .env("FIELDPATCH_KEYRING", "secret-service")
            .env("FIELDPATCH_KEYRING_SERVICE", &self.laptop.service)
            .env_remove("FIELDPATCH_SERVER")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let took = started.elapsed();
        assert!(
            out.status.success(),
            "fieldpatch {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out, took)
    }

    fn catalog(&self) -> PathBuf {
        self.laptop.data.join("catalog")
    }

    fn trust(&self) -> PathBuf {
        self.laptop.data.join("trust.json")
    }
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)))
}

/// A version as the JSON output carries it (`{major, minor, revision, build}`), as text.
fn version(v: &Value) -> String {
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("not a version: {v}"));
    format!("{}.{}.{}", n("major"), n("minor"), n("revision"))
}

/// The discovered device matched to inventory device `id`.
fn matched<'a>(report: &'a Value, id: &str) -> &'a Value {
    let hits: Vec<&Value> = report["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["matched"]["device_id"] == id)
        .collect();
    assert_eq!(hits.len(), 1, "{id} is matched once: {report:#}");
    hits[0]
}

/// The reason code of the skipped candidate `candidate`.
fn skip_code<'a>(report: &'a Value, candidate: &str) -> &'a str {
    let hits: Vec<&Value> = report["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["candidate"] == candidate)
        .collect();
    assert_eq!(hits.len(), 1, "{candidate} is skipped once: {report:#}");
    hits[0]["code"].as_str().unwrap()
}

/// Events of `kind` in the laptop's visit log.
fn events_of(log: &Value, kind: &str) -> Vec<Value> {
    log.as_array().unwrap().iter().filter(|e| e["kind"] == kind).cloned().collect()
}

#[test]
fn discover_matches_the_work_order_and_records_found_unknown_and_missing_devices() {
    let scene = scene();
    let mut args: Vec<String> =
        ["--json", "discover", "--work-order", "wo-7"].map(String::from).to_vec();
    args.extend(scene.discovery_args());
    let (out, took) = scene.run_on_site(&args);
    let report = json(&out.stdout);

    // Well inside the deadline, and nothing was cut short by it.
    assert!(took < Duration::from_secs(DEADLINE_S / 2), "took {took:?}: {report:#}");
    assert_eq!(report["deadline_reached"], false, "{report:#}");
    assert_eq!(report["matched_against"], "work order wo-7");

    // The pty device: found on its port, matched as the only device of its model.
    let pump = matched(&report, "pump-1");
    assert_eq!(pump["matched"]["key"], "only_of_its_model", "{pump:#}");
    assert_eq!(pump["via"], serde_json::json!(["serial"]), "{pump:#}");
    assert_eq!(pump["addresses"][0]["port"], scene.pump.path().to_str().unwrap());
    assert_eq!(pump["identity"]["model"], "lab_pump");
    assert_eq!(pump["identity"]["hardware_revision"], "2.0");
    assert_eq!(version(&pump["identity"]["firmware_version"]), "1.0.0");
    assert_eq!(pump["bootloader"], "MCUboot");

    // The advertised gateway: found by mDNS and at its address, one device, matched by the
    // serial number its TXT record carries.
    let gw = matched(&report, "gw-1");
    assert_eq!(gw["matched"]["key"], "serial_number", "{gw:#}");
    assert_eq!(gw["addresses"].as_array().unwrap().len(), 1, "{gw:#}");
    assert_eq!(gw["addresses"][0]["addr"], GATEWAY, "{gw:#}");
    assert_eq!(gw["identity"]["serial_number"], "GW-0042");
    assert_eq!(gw["identity"]["vendor"], "Acme");

    // The stray device is reported, unknown, and left alone.
    let devices = report["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 3, "{report:#}");
    let stray: Vec<&Value> =
        devices.iter().filter(|d| d["identity"]["serial_number"] == "SN-STRAY").collect();
    assert_eq!(stray.len(), 1, "{report:#}");
    assert_eq!(stray[0]["matched"], Value::Null, "{report:#}");
    assert_eq!(stray[0]["via"], serde_json::json!(["mdns"]), "{report:#}");

    // The absent device is missing; nothing else is.
    assert_eq!(report["missing"], serde_json::json!(["sensor-9"]), "{report:#}");

    // Garbage and silence are skipped for what they are, not for running out of time; the
    // excluded pty is reported excluded and was never opened.
    assert_eq!(skip_code(&report, scene.garbage.path().to_str().unwrap()), "not_recognized");
    assert_eq!(skip_code(&report, SILENT), "no_answer");
    assert_eq!(skip_code(&report, scene.excluded.path().to_str().unwrap()), "excluded");
    assert!(!scene.excluded_watch.was_opened(), "the excluded pty was opened");
    assert!(scene.garbage.bytes_sent() > 0);

    // The visit log says the same, with the inventory ids.
    let log = json(&scene.laptop.run(&["--json", "log", "show"], "").stdout);
    let discovered = events_of(&log, "device_discovered");
    let by_device = |events: &[Value], id: Option<&str>| -> Vec<Value> {
        let id = id.map_or(Value::Null, |s| Value::String(s.into()));
        events.iter().filter(|e| e["device"] == id).cloned().collect()
    };
    let pump_found = by_device(&discovered, Some("pump-1"));
    assert_eq!(pump_found.len(), 1, "{discovered:#?}");
    let kind = &pump_found[0];
    assert_eq!(kind["transport"], "serial");
    assert_eq!(kind["via"], "serial");
    assert_eq!(kind["matched_by"], "only_of_its_model");
    let pump_path = scene.pump.path().to_str().unwrap();
    assert!(kind["address"].as_str().unwrap().contains(pump_path), "{kind}");
    let gw_found = by_device(&discovered, Some("gw-1"));
    assert_eq!(gw_found.len(), 1, "{discovered:#?}");
    let kind = &gw_found[0];
    assert_eq!(kind["transport"], "udp");
    assert_eq!(kind["matched_by"], "serial_number");
    assert!(kind["address"].as_str().unwrap().contains(GATEWAY), "{kind}");
    let unknown_found = by_device(&discovered, None);
    assert_eq!(unknown_found.len(), 1, "{discovered:#?}");
    let kind = &unknown_found[0];
    assert_eq!(kind["via"], "mdns");
    assert!(kind.get("matched_by").is_none_or(Value::is_null), "{kind}");
    assert!(kind["address"].as_str().unwrap().contains(STRAY), "{kind}");
    assert_eq!(discovered.len(), 3, "{discovered:#?}");

    let identified = events_of(&log, "device_identified");
    assert_eq!(identified.len(), 3, "{identified:#?}");
    for (id, model) in
        [(Some("pump-1"), "lab_pump"), (Some("gw-1"), "acme_gateway"), (None, "lab_sensor")]
    {
        let e = by_device(&identified, id);
        assert_eq!(e.len(), 1, "{id:?}: {identified:#?}");
        assert_eq!(e[0]["identity"]["model"], model);
    }
    let missing = events_of(&log, "device_missing");
    assert_eq!(missing.len(), 1, "{missing:#?}");
    assert_eq!(missing[0]["device"], "sensor-9");
    let searched = missing[0]["searched"].as_str().unwrap();
    assert_eq!(searched, "work order wo-7 (serial, net, mdns)");

    // The log still verifies.
    scene.laptop.ok(&["log", "verify"]);
}

#[test]
fn discover_then_plan_plans_exactly_the_matched_devices() {
    let scene = scene();
    let (catalog, trust) = (scene.catalog(), scene.trust());
    let mut args: Vec<String> =
        ["--json", "plan", "--discover", "--work-order", "wo-7"].map(String::from).to_vec();
    args.extend(scene.discovery_args());
    args.extend([
        "--catalog".into(),
        catalog.to_str().unwrap().into(),
        "--trust".into(),
        trust.to_str().unwrap().into(),
        "--identify-timeout".into(),
        "5".into(),
    ]);
    let (out, _) = scene.run_on_site(&args);
    let plan = json(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);

    let mut planned: Vec<(String, String, String)> = plan["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let steps = d["disposition"]["steps"].as_array().cloned().unwrap_or_default();
            let steps: Vec<String> = steps
                .iter()
                .map(|s| {
                    let id = s["bundle_id"].as_str().unwrap();
                    format!("{} -> {} ({id})", version(&s["from"]), version(&s["to"]))
                })
                .collect();
            (
                d["device"]["id"].as_str().unwrap().to_string(),
                d["disposition"]["disposition"].as_str().unwrap().to_string(),
                steps.join(", "),
            )
        })
        .collect();
    planned.sort();
    assert_eq!(
        planned,
        vec![
            ("gw-1".into(), "patch".into(), "1.0.0 -> 2.0.0 (acme-gateway-2.0.0)".into()),
            ("pump-1".into(), "patch".into(), "1.0.0 -> 2.0.0 (lab-pump-2.0.0)".into()),
        ],
        "{plan:#}\n{stderr}"
    );
    // Each at the address it was found at.
    for d in plan["devices"].as_array().unwrap() {
        let address = &d["device"]["address"];
        match d["device"]["id"].as_str().unwrap() {
            "pump-1" => assert_eq!(address["port"], scene.pump.path().to_str().unwrap()),
            _ => assert_eq!(address["addr"], GATEWAY),
        }
    }
    assert!(stderr.contains("unknown to the inventory; not planned"), "{stderr}");
    assert!(stderr.contains(STRAY), "{stderr}");
    assert!(stderr.contains("sensor-9: not found on site"), "{stderr}");
    assert!(!scene.excluded_watch.was_opened(), "the excluded pty was opened");
}
