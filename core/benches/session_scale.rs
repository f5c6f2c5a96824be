//! Batch session scaling: one lab SMP device over UDP alone, then 8, 32 and 128 in one session
//! (each its own socket), the same signed MCUboot bundle, events into a real store. Prints wall
//! times, the ratio to one device (goal: 32 devices take no more than 1.5x one device), CPU time
//! per device and peak resident memory (the lab devices run in this process and are counted).
//!
//! `cargo bench -p fieldpatch-core --bench session_scale`
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap fails the run

use fieldpatch_core::bundle::{PayloadFormat, VerifyPolicy};
use fieldpatch_core::catalog::Catalog;
use fieldpatch_core::flash::connect::DriverConnector;
use fieldpatch_core::model::Version as FpVersion;
use fieldpatch_core::plan::Criticality;
use fieldpatch_core::session::batch::{VisitRun, identify, make_plan, run_in_visit};
use fieldpatch_core::session::{SessionOptions, SessionState, Threshold};
use fieldpatch_core::store::Store;
use fieldpatch_core::visitlog::VisitLog;
use fieldpatch_drivers::usb::rusb_backend::RusbBus;
use fieldpatch_lab::smp::mcuboot::{Version, build_image, test_payload};
use fieldpatch_lab::smp::udp::NetConditions;
use fieldpatch_testkit::catalog::{BundleSpec, CatalogBuilder};
use fieldpatch_testkit::site::SiteBuilder;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

const IMAGE_KIB: usize = 96;

fn catalog(dir: &std::path::Path, image: &[u8]) -> Catalog {
    let signed = CatalogBuilder::new().vendor("Acme").payload_name("app.bin").write(dir).unwrap();
    signed
        .bundle(&BundleSpec {
            id: "bench-2.0.0",
            model: "bench",
            applies: (FpVersion::new(1, 0, 0, 0), FpVersion::new(1, 9, 0, 0)),
            installs: FpVersion::new(2, 0, 0, 0),
            cvss: "9.8",
            format: PayloadFormat::Mcuboot,
            payload: image,
        })
        .unwrap();
    let c = Catalog::load_dir(&signed.catalog_dir, &signed.trust, &VerifyPolicy::now()).unwrap();
    assert!(c.refused.is_empty(), "{:?}", c.refused);
    c
}

async fn session(n: usize, catalog: Arc<Catalog>, rtt: Duration) -> Duration {
    let site = SiteBuilder::new()
        .vendor("Acme")
        .net(NetConditions { added_rtt: rtt, ..Default::default() })
        .udp_sensors(n, "bench", Criticality::Normal, |i| format!("dev-{i:02}"))
        .start()
        .unwrap();
    let records = site.records.clone();
    let connector = DriverConnector { usb: RusbBus };
    let identified = identify(&connector, records, Duration::from_secs(10)).await;
    let plan = make_plan(identified.into_iter().map(|(d, _)| d).collect(), &catalog, None).await;
    assert_eq!(plan.patchable().count(), n);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).await.unwrap();
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rng());
    let log = Arc::new(VisitLog::open(&store, key).await.unwrap());
    let options = SessionOptions {
        canary: false,
        soak: Duration::ZERO,
        wave_size: n,
        concurrency: n,
        failure_threshold: Threshold::Count(1),
        retries: 0,
        dry_run: false,
        reconnect_timeout: Duration::from_secs(30),
    };
    let started = Instant::now();
    let (summary, _) = run_in_visit(
        VisitRun {
            store: &store,
            log,
            catalog,
            connector: Arc::new(connector),
            observer: Arc::new(|_, _| {}),
            pause: Arc::new(AtomicBool::new(false)),
        },
        SessionState::new(plan, options),
    )
    .await
    .unwrap();
    let took = started.elapsed();
    assert_eq!(summary.patched as usize, n, "{summary:?}");
    for d in &site.sensors {
        assert_eq!(d.active_image().unwrap().1, "2.0.0");
    }
    took
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = build_image(
        Version { major: 2, minor: 0, revision: 0, build: 0 },
        &test_payload(IMAGE_KIB * 1024, 9),
    );
    let catalog = Arc::new(catalog(dir.path(), &image));
    println!(
        "session scaling: {IMAGE_KIB} KiB MCUboot image, lab SMP devices over UDP on loopback"
    );
    for rtt in [Duration::ZERO, Duration::from_millis(20)] {
        let one = rt.block_on(session(1, catalog.clone(), rtt));
        for n in [8, 32, 128] {
            let cpu_before = cpu_seconds();
            let many = rt.block_on(session(n, catalog.clone(), rtt));
            let cpu_per_device = (cpu_seconds() - cpu_before) / n as f64;
            let ratio = many.as_secs_f64() / one.as_secs_f64();
            println!(
                "  added RTT {:>3} ms: 1 device {:>6.2} s | {n:>3} devices {:>6.2} s | ratio {:.2} | CPU {:.1} ms per device | peak RSS {} MiB",
                rtt.as_millis(),
                one.as_secs_f64(),
                many.as_secs_f64(),
                ratio,
                cpu_per_device * 1e3,
                peak_rss_kib() / 1024
            );
            let group = format!("Batch scaling ({IMAGE_KIB} KiB MCUboot image, lab SMP over UDP)");
            let mut figure = serde_json::json!({
                "group": group,
                "name": format!("{n} devices in one session, added RTT {} ms", rtt.as_millis()),
                "value": many.as_secs_f64(), "unit": "s", "runs": 1,
                "peer": "1 device alone", "peer_value": one.as_secs_f64(), "better": "lower",
                "cpu_ms_per_device": cpu_per_device * 1e3,
            });
            if n == 32 {
                figure["goal"] = "at most 1.5x one device".into();
                figure["max_ratio"] = 1.5.into();
            } else {
                figure["baseline"] = true.into();
            }
            println!("FIGURE {figure}");
            println!(
                "FIGURE {}",
                serde_json::json!({
                    "group": group,
                    "name": format!("CPU time per device, {n} devices, added RTT {} ms (the lab devices run in the same process)", rtt.as_millis()),
                    "value": cpu_per_device * 1e3, "unit": "ms", "runs": 1, "better": "lower",
                })
            );
        }
    }
    println!(
        "FIGURE {}",
        serde_json::json!({
            "group": format!("Batch scaling ({IMAGE_KIB} KiB MCUboot image, lab SMP over UDP)"),
            "name": "peak resident memory of the whole run (up to 128 devices and their lab devices)",
            "value": peak_rss_kib() as f64 / 1024.0, "unit": "MiB", "runs": 1, "better": "lower",
        })
    );
}

/// User plus system CPU time of this process so far (`/proc/self/stat`, in USER_HZ ticks).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after the state field.
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident memory of this process (VmHWM), KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
