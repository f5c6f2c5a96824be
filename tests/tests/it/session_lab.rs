//! Batch sessions end to end against lab devices over real ptys, UDP sockets and the lab USB
//! backend: bundles made and signed by the `fieldpatch` binary, verified into a catalog, devices
//! identified and planned, flashed canary-first in waves, every step in the signed visit log.

use fieldpatch_core::catalog::Catalog;
use fieldpatch_core::flash::connect::DriverConnector;
use fieldpatch_core::image::dfu_file::DfuSuffix;
use fieldpatch_core::model::DeviceMode;
use fieldpatch_core::plan::Criticality;
use fieldpatch_core::session::batch::{VisitRun, identify, load_catalog, make_plan, run_in_visit};
use fieldpatch_core::session::{Phase, SessionOptions, SessionState, Threshold};
use fieldpatch_core::store::Store;
use fieldpatch_core::visitlog::VisitLog;
use fieldpatch_e2e::kit::{BundleSpec, Kit, fieldpatch};
use fieldpatch_lab::dfu::{LabDfu, LabDfuConfig};
use fieldpatch_lab::smp::SmpDevice;
use fieldpatch_lab::smp::mcuboot::{Version, build_image, test_payload};
use fieldpatch_testkit::site::{LabSite, SiteBuilder};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

const V2: Version = Version { major: 2, minor: 0, revision: 0, build: 0 };

/// `n` lab sensors (1.0.0, payload seeds from `first_seed`), each on its own UDP socket, with
/// records named `s0`, `s1`, ...
fn sensors(n: usize, first_seed: u8, flash_bytes_per_sec: f64) -> LabSite {
    SiteBuilder::new()
        .first_seed(first_seed)
        .flash_speed(flash_bytes_per_sec)
        .udp_sensors(n, "sensor", Criticality::Normal, |i| format!("s{i}"))
        .start()
        .unwrap()
}

/// The release: a 2.0.0 MCUboot image for the SMP sensors and a DFU file for the USB board.
struct Release {
    kit: Kit,
    new_image: Vec<u8>,
    dfu_payload: Vec<u8>,
}

fn release(dir: &std::path::Path) -> Release {
    let kit = Kit::new(dir);
    let new_image = build_image(V2, &test_payload(12 * 1024, 42));
    kit.bundle(&BundleSpec {
        id: "lab-sensor-2.0.0",
        vendor: "Lab",
        model: "sensor",
        applies: ("1.0.0", "1.9.9"),
        installs: "2.0.0",
        cvss: "8.1",
        format: "mcuboot",
        payload: &new_image,
    });
    let dfu_payload: Vec<u8> = (0..20_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let suffix = DfuSuffix {
        bcd_device: 0xFFFF,
        id_product: 0x0002,
        id_vendor: 0x1209,
        bcd_dfu: 0x0110,
        length: 16,
        crc: 0,
    };
    kit.bundle(&BundleSpec {
        id: "lab-board-1.1.0",
        vendor: "Lab",
        model: "board",
        applies: ("1.0.0", "1.0.9"),
        installs: "1.1.0",
        cvss: "5.0",
        format: "dfu",
        payload: &suffix.append_to(&dfu_payload),
    });
    Release { kit, new_image, dfu_payload }
}

fn catalog(r: &Release) -> Arc<Catalog> {
    let c = load_catalog(
        &r.kit.catalog,
        &r.kit.trust,
        &fieldpatch_core::bundle::verify::VerifyPolicy::now(),
    )
    .unwrap();
    assert!(c.refused.is_empty(), "{:?}", c.refused);
    assert_eq!(c.bundles.len(), 2);
    Arc::new(c)
}

fn options(threshold: Threshold) -> SessionOptions {
    SessionOptions {
        canary: true,
        soak: Duration::from_millis(200),
        wave_size: 4,
        concurrency: 4,
        failure_threshold: threshold,
        retries: 0,
        dry_run: false,
        reconnect_timeout: Duration::from_secs(20),
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_patches_serial_udp_and_dfu_devices_and_rolls_back_an_unhealthy_one() {
    let tmp = tempfile::tempdir().unwrap();
    let r = release(tmp.path());
    let catalog = catalog(&r);

    // The site: one sensor on a serial console, three on the LAN (one whose new image fails its
    // health check), one board on USB DFU (whose record says it runs 1.0.0: DFU devices cannot
    // say).
    let site = SiteBuilder::new()
        .first_seed(1)
        .flash_speed(512.0 * 1024.0)
        .console("sensor-serial", "sensor", Criticality::Normal)
        .udp_sensors(3, "sensor", Criticality::Normal, |i| format!("sensor-lan-{i}"))
        .dfu_board("board-usb", "board", "1.0.0".parse().unwrap(), Criticality::Normal)
        .start()
        .unwrap();
    assert!(site.serial.is_some(), "the serial console is served on a pty");
    let serial_dev = site.console.clone().unwrap();
    let lan = &site.sensors;
    lan[2].faults().fail_health_check = true;
    let board = site.board.as_ref().unwrap();
    let devices = site.records.clone();

    let connector = site.connector();
    let identified = identify(&connector, devices, Duration::from_secs(15)).await;
    for (d, err) in &identified {
        assert!(err.is_none(), "{}: {err:?}", d.id);
    }
    assert_eq!(
        identified[0].0.identity.firmware_version.map(|v| v.to_string()).as_deref(),
        Some("1.0.0")
    );
    let plan = make_plan(identified.into_iter().map(|(d, _)| d).collect(), &catalog, None).await;
    assert_eq!(plan.patchable().count(), 5, "{plan:#?}");
    // Higher severity first: the sensors (CVSS 8.1) before the board (5.0).
    assert_eq!(plan.devices.last().unwrap().device.id, "board-usb");

    let store = Store::open_in(&tmp.path().join("data")).await.unwrap();
    let key = ed25519_key();
    let log = Arc::new(VisitLog::open(&store, key).await.unwrap());
    let state = SessionState::new(plan, options(Threshold::Count(3)));
    let (summary, state) = run_in_visit(
        VisitRun {
            store: &store,
            log,
            catalog: catalog.clone(),
            connector: Arc::new(connector),
            observer: Arc::new(|_, _| {}),
            pause: Arc::new(AtomicBool::new(false)),
        },
        state,
    )
    .await
    .unwrap();

    assert_eq!((summary.patched, summary.rolled_back, summary.failed), (4, 1, 0), "{state:#?}");
    assert_eq!(state.phase, Phase::Finished);
    let new_hash = fieldpatch_core::image::mcuboot::McubootImage::parse(&r.new_image)
        .unwrap()
        .image_hash()
        .unwrap()
        .to_vec();
    for (name, dev) in [("serial", &serial_dev), ("lan-0", &lan[0]), ("lan-1", &lan[1])] {
        let (hash, version) = dev.active_image().unwrap();
        assert_eq!(
            (hash.to_vec(), version.as_str()),
            (new_hash.clone(), "2.0.0"),
            "{name}: {:?}",
            dev.log()
        );
        assert!(dev.active_confirmed(), "{name}");
    }
    let (_, version) = lan[2].active_image().unwrap();
    assert_eq!(version, "1.0.0", "the unhealthy device runs its previous image");
    assert!(lan[2].active_confirmed());
    assert_eq!(board.firmware(), r.dfu_payload);

    // Every step is in the signed visit log, and the log verifies.
    let checks = store.verify_all_logs().await.unwrap();
    assert!(checks.iter().all(|c| c.is_ok()), "{checks:?}");
    let visits = store.visits(false).await.unwrap();
    assert_eq!(visits.len(), 1);
    let events = store.visit_events(visits[0].visit_id).await.unwrap();
    let tags = |device: &str| -> Vec<&'static str> {
        events
            .iter()
            .filter(|e| e.body.device.as_deref() == Some(device))
            .map(|e| e.body.kind.tag())
            .collect()
    };
    for d in ["sensor-serial", "sensor-lan-0", "sensor-lan-1"] {
        let t = tags(d);
        for must in
            ["flash_started", "image_uploaded", "test_boot_requested", "health_check", "confirmed"]
        {
            assert!(t.contains(&must), "{d}: {t:?}");
        }
    }
    let unhealthy = tags("sensor-lan-2");
    assert_eq!(&unhealthy[unhealthy.len() - 2..], ["rolled_back", "device_not_patched"]);
    assert!(!tags("sensor-lan-0").contains(&"device_not_patched"));
    assert!(tags("board-usb").contains(&"confirmed"), "{:?}", tags("board-usb"));
    assert_eq!(events.first().unwrap().body.kind.tag(), "visit_opened");
    assert_eq!(events.last().unwrap().body.kind.tag(), "visit_closed");
}

/// A session stopped by its threshold is ended for good through the facade: its devices never
/// attempted become skipped (the lab devices still run what they ran), it is no longer offered
/// for resume, and its close-out asks a reason for each of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ending_a_stopped_session_skips_the_devices_it_never_reached() {
    let tmp = tempfile::tempdir().unwrap();
    let r = release(tmp.path());
    let catalog = catalog(&r);
    let site = sensors(5, 40, 1024.0 * 1024.0);
    for d in &site.sensors[1..3] {
        d.faults().fail_health_check = true;
    }
    let connector = DriverConnector { usb: LabDfu::new(LabDfuConfig::plain_dfu()).bus() };
    let fp = fieldpatch_core::Fieldpatch::open_in(&tmp.path().join("data"), Arc::new(connector))
        .await
        .unwrap();
    let identified = fp.identify(site.records.clone(), Duration::from_secs(10)).await;
    let plan = fp.plan(identified.into_iter().map(|(d, _)| d).collect(), &catalog).await;
    let mut opts = options(Threshold::Count(2));
    opts.wave_size = 2;
    opts.concurrency = 2;
    let pause = Arc::new(AtomicBool::new(false));
    let (_, state) = fp
        .run_session(SessionState::new(plan, opts), catalog, Arc::new(|_, _| {}), pause)
        .await
        .unwrap();
    assert!(matches!(state.phase, Phase::Stopped { .. }), "{state:#?}");
    let never: Vec<String> = state
        .devices
        .iter()
        .filter(|(_, s)| **s == fieldpatch_core::session::DeviceStatus::Pending)
        .map(|(id, _)| id.clone())
        .collect();
    assert!(!never.is_empty(), "{state:#?}");

    let ended = fp.end_session(None).await.unwrap();
    assert_eq!(ended.id, state.id);
    assert_eq!(ended.phase, Phase::Finished);
    for id in &never {
        assert!(
            matches!(&ended.devices[id], fieldpatch_core::session::DeviceStatus::Skipped { reason } if reason.contains("ended the session")),
            "{id}: {:?}",
            ended.devices[id]
        );
    }
    for d in &site.sensors[3..] {
        assert_eq!(d.active_image().unwrap().1, "1.0.0", "{:?}", d.log());
    }
    // Nothing is left to resume or to end.
    assert_eq!(fp.end_session(None).await.unwrap_err().code(), "no_session");
    let e = fp.close_session(&ended, &Default::default()).await.unwrap_err().to_string();
    for id in &never {
        assert!(e.contains(id.as_str()), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failure_threshold_stops_the_session() {
    let tmp = tempfile::tempdir().unwrap();
    let r = release(tmp.path());
    let catalog = catalog(&r);
    let site = sensors(6, 0, 1024.0 * 1024.0);
    let devs = &site.sensors;
    for d in &devs[1..4] {
        d.faults().fail_health_check = true;
    }
    let records = site.records.clone();
    let board = LabDfu::new(LabDfuConfig::plain_dfu());
    let connector = DriverConnector { usb: board.bus() };
    let identified = identify(&connector, records, Duration::from_secs(10)).await;
    let plan = make_plan(identified.into_iter().map(|(d, _)| d).collect(), &catalog, None).await;
    // The canary is the first in plan order (ties broken by id): s0, which is healthy.
    assert_eq!(plan.devices[0].device.id, "s0");
    let store = Store::open_in(&tmp.path().join("data")).await.unwrap();
    let log = Arc::new(VisitLog::open(&store, ed25519_key()).await.unwrap());
    let mut opts = options(Threshold::Count(2));
    opts.wave_size = 3;
    opts.concurrency = 3;
    let (summary, state) = run_in_visit(
        VisitRun {
            store: &store,
            log,
            catalog,
            connector: Arc::new(connector),
            observer: Arc::new(|_, _| {}),
            pause: Arc::new(AtomicBool::new(false)),
        },
        SessionState::new(plan, opts),
    )
    .await
    .unwrap();
    assert!(
        matches!(state.phase, Phase::Stopped { ref reason } if reason.contains("threshold")),
        "{state:#?}"
    );
    assert_eq!((summary.patched, summary.rolled_back), (1, 3));
    assert_eq!(summary.pending, 2, "the last wave never started");
    for d in &devs[4..] {
        assert_eq!(d.active_image().unwrap().1, "1.0.0", "{:?}", d.log());
    }
}

#[test]
fn a_killed_cli_session_resumes_without_reflashing_confirmed_devices() {
    let tmp = tempfile::tempdir().unwrap();
    let r = release(tmp.path());
    let data = tmp.path().join("data");
    // Slow flash so the session is still running when it is killed.
    let site = sensors(4, 0, 24.0 * 1024.0);
    let devs = &site.sensors;
    let records = &site.records;
    std::fs::write(tmp.path().join("devices.json"), serde_json::to_vec(&records).unwrap()).unwrap();
    let catalog_args =
        ["--catalog", r.kit.catalog.to_str().unwrap(), "--trust", r.kit.trust.to_str().unwrap()];

    let mut args = vec!["plan", "--devices", "devices.json", "--out", "plan.json"];
    args.extend(catalog_args);
    let out = fieldpatch(tmp.path(), &data, &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("patch: 1.0.0 -> 2.0.0 (lab-sensor-2.0.0)"), "{table}");

    let mut args = vec![
        "session",
        "run",
        "plan.json",
        "--soak",
        "0",
        "--wave",
        "1",
        "--concurrency",
        "1",
        "--threshold",
        "1",
    ];
    args.extend(catalog_args);
    let mut child = std::process::Command::new(fieldpatch_e2e::built_binary("fieldpatch"))
        .args(&args)
        .current_dir(tmp.path())
        .env("FIELDPATCH_DATA_DIR", &data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once two devices are confirmed on the new image.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let done = |d: &SmpDevice| d.active_confirmed() && d.active_image().unwrap().1 == "2.0.0";
    while devs.iter().filter(|d| done(d)).count() < 2 {
        assert!(std::time::Instant::now() < deadline, "session made no progress");
        assert!(child.try_wait().unwrap().is_none(), "session ended before it was killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let boots_before: Vec<u32> = devs.iter().map(SmpDevice::boots).collect();
    let patched_before: Vec<bool> = devs.iter().map(done).collect();

    let mut args = vec!["--json", "session", "resume"];
    args.extend(catalog_args);
    let out = fieldpatch(tmp.path(), &data, &args);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["summary"]["patched"], 4, "{report:#}");
    for (i, d) in devs.iter().enumerate() {
        assert!(done(d), "s{i}: {:?}", d.log());
        if patched_before[i] {
            assert_eq!(d.boots(), boots_before[i], "s{i} was flashed again after the resume");
        }
    }
    let out = fieldpatch(tmp.path(), &data, &["log", "verify"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn ed25519_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::generate(&mut rand::rng())
}

#[test]
fn closing_out_a_session_needs_a_reason_for_every_unpatched_device() {
    let tmp = tempfile::tempdir().unwrap();
    let r = release(tmp.path());
    let data = tmp.path().join("data");
    let site = sensors(2, 0, 1024.0 * 1024.0);
    site.sensors[1].faults().fail_health_check = true;
    let records = &site.records;
    std::fs::write(tmp.path().join("devices.json"), serde_json::to_vec(&records).unwrap()).unwrap();
    let cat =
        ["--catalog", r.kit.catalog.to_str().unwrap(), "--trust", r.kit.trust.to_str().unwrap()];
    let run = |args: &[&str]| {
        let mut a = args.to_vec();
        if matches!(args[0], "plan" | "session") && args.get(1) != Some(&"close") {
            a.extend(cat);
        }
        fieldpatch(tmp.path(), &data, &a)
    };
    assert!(run(&["plan", "--devices", "devices.json", "--out", "plan.json"]).status.success());
    let out =
        run(&["session", "run", "plan.json", "--no-canary", "--soak", "0", "--threshold", "5"]);
    assert_eq!(out.status.code(), Some(3), "a rollback makes the exit status non-zero");
    assert!(String::from_utf8_lossy(&out.stdout).contains("rolled back"));

    let out = run(&["session", "close"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing for s1"), "{err}");

    let out = run(&["session", "close", "--reason", "s1=owner refused a second attempt"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = String::from_utf8_lossy(&run(&["--json", "log", "show"]).stdout).to_string();
    assert!(log.contains("owner refused a second attempt"), "{log}");
    assert!(run(&["log", "verify"]).status.success());
}

#[test]
fn a_session_run_with_only_flashes_the_chosen_device_and_the_rest_need_reasons() {
    let tmp = tempfile::tempdir().unwrap();
    let r = release(tmp.path());
    let data = tmp.path().join("data");
    let site = sensors(3, 0, 1024.0 * 1024.0);
    std::fs::write(tmp.path().join("devices.json"), serde_json::to_vec(&site.records).unwrap())
        .unwrap();
    let cat =
        ["--catalog", r.kit.catalog.to_str().unwrap(), "--trust", r.kit.trust.to_str().unwrap()];
    let run = |args: &[&str]| {
        let mut a = args.to_vec();
        if args.iter().any(|a| matches!(*a, "plan" | "session")) && !args.contains(&"close") {
            a.extend(cat);
        }
        fieldpatch(tmp.path(), &data, &a)
    };
    assert!(run(&["plan", "--devices", "devices.json", "--out", "plan.json"]).status.success());
    let boots: Vec<u32> = site.sensors.iter().map(|d| d.boots()).collect();
    // A device the plan does not hold is refused before anything is flashed.
    let out = run(&["session", "run", "plan.json", "--soak", "0", "--only", "s9"]);
    assert!(!out.status.success());
    let unknown = String::from_utf8_lossy(&out.stderr).to_string();

    let out = run(&["--json", "session", "run", "plan.json", "--soak", "0", "--only", "s1"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "every chosen device was patched: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let close = run(&["session", "close"]);
    let refused = String::from_utf8_lossy(&close.stderr).to_string();
    let close = run(&[
        "session",
        "close",
        "--reason",
        "s0=next visit",
        "--reason",
        "s2=owner asked to wait",
    ]);
    let log = String::from_utf8_lossy(&run(&["--json", "log", "show"]).stdout).to_string();

    assert!(unknown.contains("s9 is not in the plan"), "{unknown}");
    assert_eq!(report["summary"]["patched"], 1, "{report:#}");
    assert_eq!(report["summary"]["skipped"], 2, "{report:#}");
    for (i, d) in site.sensors.iter().enumerate() {
        if i == 1 {
            assert!(d.boots() > boots[i], "s1 was chosen but not flashed");
        } else {
            assert_eq!(d.boots(), boots[i], "s{i} was not chosen, yet flashed");
        }
    }
    assert!(refused.contains("s0") && refused.contains("s2"), "{refused}");
    assert!(close.status.success(), "{}", String::from_utf8_lossy(&close.stderr));
    assert!(log.contains("owner asked to wait"), "{log}");
    assert!(log.contains("not chosen for this session"), "{log}");
    assert!(run(&["log", "verify"]).status.success());
}

#[test]
fn device_upload_of_a_bundle_passes_the_session_gate_and_the_full_pipeline() {
    let tmp = tempfile::tempdir().unwrap();
    let r = release(tmp.path());
    let data = tmp.path().join("data");
    let site = sensors(1, 5, 1024.0 * 1024.0);
    let dev = &site.sensors[0];
    let addr = site.udp[0].local_addr().to_string();
    let bundle = r.kit.catalog.join("lab-sensor-2.0.0.fpb");
    let bundle = bundle.to_str().unwrap();
    let trust = r.kit.trust.to_str().unwrap();
    let run = |args: &[&str]| fieldpatch(tmp.path(), &data, args);
    let upload = |extra: &[&str]| {
        let mut a = vec!["--json", "device", "--udp", &addr, "image", "upload", bundle];
        a.extend_from_slice(extra);
        run(&a)
    };

    let boots_before = dev.boots();
    // Without the trust store the bundle cannot be verified, so nothing is sent.
    let out = upload(&[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--trust"), "{out:?}");
    // Verified, but for which device? Its inventory record decides whether the bundle applies.
    let out = upload(&["--trust", trust]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--device"), "{out:?}");

    // The inventory says this device is a pump controller: the sensor bundle does not target it.
    let mut pump = site.records[0].clone();
    pump.id = "p0".into();
    pump.identity.model = Some("pump-controller".into());
    let mut records = site.records.clone();
    records.push(pump);
    std::fs::write(tmp.path().join("devices.json"), serde_json::to_vec(&records).unwrap()).unwrap();
    let out = upload(&["--trust", trust, "--device", "p0", "--devices", "devices.json"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "not_applicable", "{v}");
    assert!(dev.slot_bytes(1).is_none(), "a byte reached the device");
    assert_eq!(dev.boots(), boots_before);
    // --test belongs to bare images: a bundle always goes through the whole pipeline.
    let out = upload(&["--trust", trust, "--device", "s0", "--devices", "devices.json", "--test"]);
    assert!(!out.status.success());
    assert!(dev.slot_bytes(1).is_none());

    // The sensor it targets: sent, checked on the device, test-booted, health-checked, confirmed.
    let out = upload(&["--trust", trust, "--device", "s0", "--devices", "devices.json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outcome"], "confirmed", "{v}");
    assert_eq!(
        dev.slot_bytes(0).unwrap(),
        r.new_image,
        "the payload verified is the payload running"
    );
    assert!(dev.active_confirmed());
    let log = String::from_utf8_lossy(&run(&["--json", "log", "show"]).stdout).to_string();
    let events: Vec<serde_json::Value> = serde_json::from_str(&log).unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"bundle_refused"), "the refusal is recorded: {kinds:?}");
    let from = kinds.iter().position(|k| *k == "bundle_verified").unwrap();
    let tail: Vec<&str> =
        kinds[from..].iter().copied().filter(|k| *k != "progress_checkpoint").collect();
    assert_eq!(
        tail,
        [
            "bundle_verified",
            "flash_started",
            "image_uploaded",
            "test_boot_requested",
            "health_check",
            "confirmed"
        ],
        "{kinds:?}"
    );

    // Again: the device already runs it, nothing is sent.
    let boots = dev.boots();
    let out = upload(&["--trust", trust, "--device", "s0", "--devices", "devices.json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outcome"], "already_done", "{v}");
    assert_eq!(dev.boots(), boots);
    assert!(run(&["log", "verify"]).status.success());
}

#[test]
fn dfu_flash_of_a_bundle_is_refused_by_the_planner_before_any_usb_access() {
    use fieldpatch_core::plan::DeviceAddress;
    use fieldpatch_testkit::site::{BOARD_PID, BOARD_VID, record};
    let tmp = tempfile::tempdir().unwrap();
    let r = release(tmp.path());
    let data = tmp.path().join("data");
    let bundle = r.kit.catalog.join("lab-board-1.1.0.fpb");
    let (bundle, trust) = (bundle.to_str().unwrap(), r.kit.trust.to_str().unwrap());
    // Three inventory records for the board with serial number B: a pump controller (another
    // model), a board running 2.0.0 (1.1.0 would be a downgrade), a board running 1.0.0.
    let at_b = DeviceAddress::Usb { vid: BOARD_VID, pid: BOARD_PID, serial: Some("B".into()) };
    let rec = |id: &str, model: &str, runs: &str| {
        let mut d = record(id, "Lab", model, at_b.clone());
        d.identity.firmware_version = Some(runs.parse().unwrap());
        d
    };
    let records = [
        rec("pump-b", "pump-controller", "1.0.0"),
        rec("new-b", "board", "2.0.0"),
        rec("b", "board", "1.0.0"),
    ];
    std::fs::write(tmp.path().join("devices.json"), serde_json::to_vec(&records).unwrap()).unwrap();
    let run = |args: &[&str]| fieldpatch(tmp.path(), &data, args);
    let flash = |extra: &[&str]| {
        let mut a = vec!["--json", "dfu", "flash", "--device", "usb:1209:0002:B"];
        a.extend_from_slice(&["--trust", trust, "--devices", "devices.json"]);
        a.extend_from_slice(extra);
        a.push(bundle);
        run(&a)
    };
    let error = |out: &std::process::Output| {
        assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["error"].clone()
    };

    // The planner decides from the inventory record, before the USB bus is even looked at, so no
    // device (this machine has no USB bus; the lab boards live inside test processes) could have
    // received a byte: the refusal is the planner's reason, and it is recorded.
    let e = error(&flash(&["--id", "pump-b"]));
    assert_eq!(e["code"], "not_applicable", "{e}");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("no approved bundle targets Lab pump-controller"), "{msg}");
    assert!(msg.contains("nothing was sent"), "{msg}");
    let e = error(&flash(&["--id", "new-b"]));
    assert_eq!(e["code"], "not_applicable", "{e}");
    assert!(e["message"].as_str().unwrap().contains("downgrade"), "{e}");
    // A bundle always names its inventory device, and cannot pass as a bare DFU file.
    let out = run(&["dfu", "flash", "--device", "usb:1209:0002:B", "--trust", trust, bundle]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--id"), "{out:?}");
    let out = flash(&["--id", "b", "--allow-unverified", "--mass-erase"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--mass-erase"), "{out:?}");
    let log = String::from_utf8_lossy(&run(&["--json", "log", "show"]).stdout).to_string();
    let events: Vec<serde_json::Value> = serde_json::from_str(&log).unwrap();
    let refused: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "bundle_refused")
        .map(|e| e["device"].as_str().unwrap())
        .collect();
    assert_eq!(refused, ["pump-b", "new-b"], "{log}");
    assert!(!events.iter().any(|e| e["kind"] == "flash_started"), "{log}");

    // The board the bundle targets passes the planner; only then is the USB address looked up
    // (and here, with no board attached, not found).
    let e = error(&flash(&["--id", "b"]));
    assert_eq!(e["code"], "device_unreachable", "{e}");
    assert!(e["message"].as_str().unwrap().contains("usb:1209:0002:B"), "{e}");
    let log = String::from_utf8_lossy(&run(&["--json", "log", "show"]).stdout).to_string();
    let events: Vec<serde_json::Value> = serde_json::from_str(&log).unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert!(kinds.ends_with(&["bundle_verified", "failed"]), "{kinds:?}");
    assert!(run(&["log", "verify"]).status.success());
}

#[test]
fn an_edited_plan_file_cannot_choose_what_a_session_sends() {
    let tmp = tempfile::tempdir().unwrap();
    let r = release(tmp.path());
    let data = tmp.path().join("data");
    let site = sensors(2, 0, 1024.0 * 1024.0);
    std::fs::write(tmp.path().join("devices.json"), serde_json::to_vec(&site.records).unwrap())
        .unwrap();
    let cat =
        ["--catalog", r.kit.catalog.to_str().unwrap(), "--trust", r.kit.trust.to_str().unwrap()];
    let run = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(cat);
        fieldpatch(tmp.path(), &data, &a)
    };
    let out = run(&["plan", "--devices", "devices.json", "--out", "plan.json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // s0's step now names the USB board's bundle (another model); s1 is left as planned.
    let path = tmp.path().join("plan.json");
    let mut plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let s0 = plan["devices"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|d| d["device"]["id"] == "s0")
        .unwrap();
    s0["disposition"]["steps"][0]["bundle_id"] = "lab-board-1.1.0".into();
    std::fs::write(&path, serde_json::to_vec(&plan).unwrap()).unwrap();

    let out = run(&["--json", "session", "run", "plan.json", "--no-canary", "--soak", "0"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s0 = v["devices"]["s0"].to_string();
    assert!(s0.contains("refused before sending") && s0.contains("not this device"), "{v}");
    assert_eq!(site.sensors[0].slot_bytes(1), None, "s0 received bytes");
    assert_eq!(v["devices"]["s1"]["status"], "patched", "{v}");
    let log =
        String::from_utf8_lossy(&fieldpatch(tmp.path(), &data, &["--json", "log", "show"]).stdout)
            .to_string();
    assert!(log.contains("bundle_refused"), "{log}");
}

/// A session with a device in MCUboot serial recovery beside application-mode devices: the
/// recovery device is written in its primary slot, hash-checked, reset into the application and
/// health-checked, with no test boot and no rollback claimed; the others go through the full
/// test-boot pipeline.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_flashes_a_device_in_serial_recovery_beside_application_devices() {
    let tmp = tempfile::tempdir().unwrap();
    let r = release(tmp.path());
    let catalog = catalog(&r);
    let site = SiteBuilder::new()
        .first_seed(1)
        .flash_speed(512.0 * 1024.0)
        .console("sensor-recovery", "sensor", Criticality::Normal)
        .udp_sensors(2, "sensor", Criticality::Normal, |i| format!("sensor-app-{i}"))
        .dfu_board("board-usb", "board", "1.0.0".parse().unwrap(), Criticality::Normal)
        .start()
        .unwrap();
    let recovering = site.console.clone().unwrap();
    recovering.enter_serial_recovery();
    std::thread::sleep(Duration::from_millis(400));
    assert!(recovering.in_serial_recovery());
    let devices = site.records.clone();

    let connector = site.connector();
    let identified = identify(&connector, devices, Duration::from_secs(15)).await;
    for (d, err) in &identified {
        assert!(err.is_none(), "{}: {err:?}", d.id);
    }
    // Identification records the mode; the plan says before the start what it means.
    for (d, _) in &identified {
        let expected = match d.id.as_str() {
            "sensor-recovery" => Some(DeviceMode::SerialRecovery),
            "board-usb" => None,
            _ => Some(DeviceMode::Application),
        };
        assert_eq!(d.identity.mode, expected, "{}", d.id);
    }
    let plan = make_plan(identified.into_iter().map(|(d, _)| d).collect(), &catalog, None).await;
    assert_eq!(plan.patchable().count(), 4, "{plan:#?}");
    for d in &plan.devices {
        let said = d.no_rollback.as_deref();
        match d.device.id.as_str() {
            "sensor-recovery" => {
                assert!(said.is_some_and(|s| s.contains("serial recovery")), "{d:#?}")
            }
            // A DFU board has no way back either, by its kind.
            "board-usb" => assert!(said.is_some_and(|s| s.starts_with("USB DFU")), "{d:#?}"),
            _ => assert_eq!(said, None, "{d:#?}"),
        }
    }

    let store = Store::open_in(&tmp.path().join("data")).await.unwrap();
    let log = Arc::new(VisitLog::open(&store, ed25519_key()).await.unwrap());
    let state = SessionState::new(plan, options(Threshold::Count(1)));
    let (summary, state) = run_in_visit(
        VisitRun {
            store: &store,
            log,
            catalog: catalog.clone(),
            connector: Arc::new(connector),
            observer: Arc::new(|_, _| {}),
            pause: Arc::new(AtomicBool::new(false)),
        },
        state,
    )
    .await
    .unwrap();
    assert_eq!((summary.patched, summary.rolled_back, summary.failed), (4, 0, 0), "{state:#?}");

    assert!(!recovering.in_serial_recovery(), "{:?}", recovering.log());
    for dev in std::iter::once(&recovering).chain(site.sensors.iter()) {
        let (_, version) = dev.active_image().unwrap();
        assert_eq!(version, "2.0.0", "{:?}", dev.log());
        assert!(dev.active_confirmed());
    }
    let visits = store.visits(false).await.unwrap();
    let events = store.visit_events(visits[0].visit_id).await.unwrap();
    let of = |device: &str| -> Vec<&fieldpatch_core::visitlog::event::EventKind> {
        events
            .iter()
            .filter(|e| e.body.device.as_deref() == Some(device))
            .map(|e| &e.body.kind)
            .collect()
    };
    let rec: Vec<&str> = of("sensor-recovery").iter().map(|k| k.tag()).collect();
    for must in ["flash_started", "image_uploaded", "health_check", "confirmed"] {
        assert!(rec.contains(&must), "{rec:?}");
    }
    assert!(!rec.contains(&"test_boot_requested") && !rec.contains(&"rolled_back"), "{rec:?}");
    assert!(
        of("sensor-recovery").iter().any(|k| matches!(
            k,
            fieldpatch_core::visitlog::event::EventKind::Note { text } if text.contains("no rollback")
        )),
        "{rec:?}"
    );
    let app: Vec<&str> = of("sensor-app-0").iter().map(|k| k.tag()).collect();
    assert!(app.contains(&"test_boot_requested"), "{app:?}");
}

/// `fieldpatch plan` identifies a device in MCUboot serial recovery live and says, in its table
/// and its JSON, that flashing it has no test boot and no revert; the application-mode devices
/// beside it carry no such word.
#[cfg(unix)]
#[test]
fn cli_plan_says_a_device_in_serial_recovery_has_no_test_boot() {
    let tmp = tempfile::tempdir().unwrap();
    let r = release(tmp.path());
    let data = tmp.path().join("data");
    let site = SiteBuilder::new()
        .first_seed(1)
        .console("sensor-recovery", "sensor", Criticality::Normal)
        .udp_sensors(1, "sensor", Criticality::Normal, |i| format!("sensor-app-{i}"))
        .start()
        .unwrap();
    let recovering = site.console.clone().unwrap();
    recovering.enter_serial_recovery();
    std::thread::sleep(Duration::from_millis(400));
    std::fs::write(tmp.path().join("devices.json"), serde_json::to_vec(&site.records).unwrap())
        .unwrap();
    let cat =
        ["--catalog", r.kit.catalog.to_str().unwrap(), "--trust", r.kit.trust.to_str().unwrap()];

    let mut args = vec!["plan", "--devices", "devices.json"];
    args.extend(cat);
    let out = fieldpatch(tmp.path(), &data, &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    let line = |id: &str| table.lines().find(|l| l.starts_with(id)).unwrap_or_default().to_string();
    let rec = line("sensor-recovery");
    assert!(rec.contains("patch: 1.0.0 -> 2.0.0"), "{table}");
    assert!(rec.contains("serial recovery") && rec.contains("no test boot"), "{table}");
    assert!(!line("sensor-app-0").contains("serial recovery"), "{table}");

    let mut args = vec!["--json", "plan", "--devices", "devices.json"];
    args.extend(cat);
    let out = fieldpatch(tmp.path(), &data, &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let devices = plan["devices"].as_array().unwrap();
    let of = |id: &str| devices.iter().find(|d| d["device"]["id"] == id).unwrap();
    assert_eq!(of("sensor-recovery")["device"]["identity"]["mode"], "serial_recovery", "{plan}");
    assert!(of("sensor-recovery")["no_rollback"].as_str().unwrap().contains("no revert"));
    assert_eq!(of("sensor-app-0")["device"]["identity"]["mode"], "application", "{plan}");
    assert!(of("sensor-app-0").get("no_rollback").is_none(), "{plan}");
    // Planning only read: the device is still in serial recovery, nothing was written.
    assert!(recovering.in_serial_recovery(), "{:?}", recovering.log());
}
