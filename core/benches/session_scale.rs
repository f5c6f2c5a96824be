//! Batch session scaling: one lab SMP device over UDP alone, then 32 in one session (each its own
//! socket), the same signed MCUboot bundle, events into a real store. Prints wall times and the
//! ratio (goal: 32 devices take no more than 1.5x one device).
//!
//! `cargo bench -p fieldpatch-core --bench session_scale`

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
        let many = rt.block_on(session(32, catalog.clone(), rtt));
        let ratio = many.as_secs_f64() / one.as_secs_f64();
        println!(
            "  added RTT {:>3} ms: 1 device {:>6.2} s | 32 devices {:>6.2} s | ratio {:.2} (goal <= 1.50) {}",
            rtt.as_millis(),
            one.as_secs_f64(),
            many.as_secs_f64(),
            ratio,
            if ratio <= 1.5 { "ok" } else { "MISSED" }
        );
        println!(
            "FIGURE {}",
            serde_json::json!({
                "group": format!("Batch scaling ({IMAGE_KIB} KiB MCUboot image, lab SMP over UDP)"),
                "name": format!("32 devices in one session, added RTT {} ms", rtt.as_millis()),
                "value": many.as_secs_f64(), "unit": "s", "runs": 1,
                "peer": "1 device alone", "peer_value": one.as_secs_f64(),
                "better": "lower", "goal": "at most 1.5x one device", "max_ratio": 1.5,
            })
        );
    }
}
