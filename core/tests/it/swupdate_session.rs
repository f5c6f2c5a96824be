//! A batch session through the facade that mixes an SMP sensor (lab, UDP), a USB DFU board (lab
//! bus) and an SWUpdate gateway (the real `swupdate` daemon with digest authentication): the
//! gateway's `.swu` travels in a signed bundle, the planner refuses the gateway while its password
//! is not in the keyring (nothing is sent), and once it is every device is patched, the daemon's
//! flash file holds exactly the image, the log says what Fieldpatch could not check or roll back,
//! and the password is nowhere in the data directory.

use fieldpatch_core::Fieldpatch;
use fieldpatch_core::bundle::PayloadFormat;
use fieldpatch_core::bundle::verify::VerifyPolicy;
use fieldpatch_core::credentials::{CredentialName, Secret};
use fieldpatch_core::model::Version;
use fieldpatch_core::plan::{Criticality, DeviceAddress, Disposition, Unpatchable};
use fieldpatch_core::session::batch::{load_catalog, make_plan};
use fieldpatch_core::session::{Phase, SessionOptions, SessionState, Threshold};
use fieldpatch_core::visitlog::EventKind;
use fieldpatch_lab::smp::mcuboot::{self, build_image, test_payload};
use fieldpatch_testkit::catalog::{BundleSpec, CatalogBuilder};
use fieldpatch_testkit::site::SiteBuilder;
use fieldpatch_testkit::swupdate::{Daemon, DaemonAuth, Swu, Vendor};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

const PASSWORD: &str = "gw-session-pass-9313";

fn v(a: u8, b: u8, c: u16) -> Version {
    Version::new(a, b, c, 0)
}

/// Every file under `dir` holding `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                hits.push(p.display().to_string());
            }
        }
    }
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_patches_smp_dfu_and_swupdate_gateway_with_keyring_password() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();

    // The site: one lab sensor on UDP, one lab DFU board, one gateway with the real daemon.
    let site = SiteBuilder::new()
        .first_seed(3)
        .flash_speed(1024.0 * 1024.0)
        .udp_sensors(1, "sensor", Criticality::Normal, |_| "sensor-lan".into())
        .dfu_board("board-usb", "board", "1.0.0".parse().unwrap(), Criticality::Normal)
        .start()
        .unwrap();
    let vendor = Vendor::new(&root.join("vendor"), "Gateway Vendor");
    let auth =
        DaemonAuth { user: "admin".into(), realm: "gw-site-a".into(), password: PASSWORD.into() };
    let daemon = Daemon::start(&root.join("daemon"), "gw100:1.0", &vendor.cert, Some(&auth));
    let rootfs: Vec<u8> =
        (0..200_000u32).map(|i| (i.wrapping_mul(2654435761) >> 7) as u8).collect();
    let swu = Swu {
        version: "2.1.0".into(),
        hardware: vec!["1.0".into()],
        image_name: "rootfs.img".into(),
        image: rootfs.clone(),
        device_path: daemon.flash.clone(),
        signer: Some(vendor.clone()),
        tamper: false,
    };
    let swu_bytes = std::fs::read(swu.write(root, "gw.swu")).unwrap();

    // The release: one bundle per model, the gateway's `.swu` as an SWUpdate payload.
    let signed = CatalogBuilder::new().write(&root.join("release")).unwrap();
    let sensor_image = build_image(
        mcuboot::Version { major: 2, minor: 0, revision: 0, build: 0 },
        &test_payload(8 * 1024, 77),
    );
    let dfu_payload: Vec<u8> = (0..9_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let dfu_file = fieldpatch_core::image::dfu_file::DfuSuffix {
        bcd_device: 0xFFFF,
        id_product: 0x0002,
        id_vendor: 0x1209,
        bcd_dfu: 0x0110,
        length: 16,
        crc: 0,
    }
    .append_to(&dfu_payload);
    let bundles: [(&str, &str, Version, PayloadFormat, &[u8]); 3] = [
        ("lab-sensor-2.0.0", "sensor", v(2, 0, 0), PayloadFormat::Mcuboot, &sensor_image),
        ("lab-board-1.1.0", "board", v(1, 1, 0), PayloadFormat::Dfu, &dfu_file),
        ("lab-gateway-2.1.0", "gateway", v(2, 1, 0), PayloadFormat::Swupdate, &swu_bytes),
    ];
    for (id, model, installs, format, payload) in bundles {
        let applies = (v(1, 0, 0), v(1, 9, 9));
        let spec = BundleSpec { id, model, applies, installs, cvss: "7.0", format, payload };
        signed.bundle(&spec).unwrap();
    }
    let catalog =
        load_catalog(&signed.catalog_dir, &signed.trust_path, &VerifyPolicy::now()).unwrap();
    assert!(catalog.refused.is_empty(), "{:?}", catalog.refused);
    assert_eq!(catalog.bundles.len(), 3);
    let catalog = Arc::new(catalog);

    let mut gateway = fieldpatch_testkit::site::record(
        "gw-1",
        "Lab",
        "gateway",
        DeviceAddress::Swupdate { url: daemon.url(), user: None },
    );
    gateway.identity.firmware_version = Some(v(1, 0, 0));
    gateway.identity.hardware_revision = Some("1.0".into());
    let mut records = site.records.clone();
    records.push(gateway);

    let fp = Fieldpatch::open_in(&root.join("laptop"), Arc::new(site.connector())).await.unwrap();
    let keyring = fp.credentials().await.unwrap().clone();

    // Without the password in the keyring the planner refuses the gateway up front.
    let identified = fp.identify(records.clone(), Duration::from_secs(10)).await;
    let gw_error = identified.iter().find(|(d, _)| d.id == "gw-1").unwrap().1.clone();
    assert!(
        gw_error
            .as_deref()
            .is_some_and(|e| e.contains("`device/gw-1/password` is not in this laptop's keyring")),
        "{gw_error:?}"
    );
    let devices: Vec<_> = identified.into_iter().map(|(d, _)| d).collect();
    let plan = make_plan(devices.clone(), &catalog, Some(&keyring)).await;
    let gw = plan.devices.iter().find(|d| d.device.id == "gw-1").unwrap();
    assert_eq!(
        gw.disposition,
        Disposition::Unpatchable {
            why: Unpatchable::MissingCredential { name: "device/gw-1/password".into() }
        }
    );
    assert_eq!(plan.patchable().count(), 2, "{plan:#?}");
    assert!(!daemon.started_an_update());

    // With it, every device is planned and patched.
    let name: CredentialName = "device/gw-1/password".parse().unwrap();
    keyring.set(&name, &Secret::new(PASSWORD)).await.unwrap();
    let identified = fp.identify(records, Duration::from_secs(10)).await;
    for (d, err) in &identified {
        assert!(err.is_none(), "{}: {err:?}", d.id);
    }
    let plan =
        make_plan(identified.into_iter().map(|(d, _)| d).collect(), &catalog, Some(&keyring)).await;
    assert_eq!(plan.patchable().count(), 3, "{plan:#?}");
    let opts = SessionOptions {
        canary: true,
        soak: Duration::from_millis(100),
        wave_size: 3,
        concurrency: 3,
        failure_threshold: Threshold::Count(1),
        retries: 0,
        dry_run: false,
        reconnect_timeout: Duration::from_secs(20),
    };
    let (summary, state) = fp
        .run_session(
            SessionState::new(plan, opts),
            catalog,
            Arc::new(|_, _| {}),
            Arc::new(AtomicBool::new(false)),
        )
        .await
        .unwrap();
    assert_eq!((summary.patched, summary.failed, summary.unverified), (3, 0, 0), "{state:#?}");
    assert_eq!(state.phase, Phase::Finished);

    // Each device holds its new image; the gateway's flash is byte-identical to the rootfs.
    assert_eq!(daemon.flash_bytes(), rootfs, "daemon log:\n{}", daemon.log_text());
    assert_eq!(site.board.as_ref().unwrap().firmware(), dfu_payload);
    assert_eq!(site.sensors[0].active_image().unwrap().1, "2.0.0");

    // The log brackets the gateway's install and says what Fieldpatch could not do.
    let log = fp.log().await.unwrap();
    let events = fp.store().log_events(log.log_id(), 0, 10_000).await.unwrap();
    let gw: Vec<&EventKind> = events
        .iter()
        .filter(|e| e.body.device.as_deref() == Some("gw-1"))
        .map(|e| &e.body.kind)
        .collect();
    let tags: Vec<&str> = gw.iter().map(|k| k.tag()).collect();
    for must in ["flash_started", "image_uploaded", "health_check", "confirmed"] {
        assert!(tags.contains(&must), "{tags:?}");
    }
    assert!(!tags.contains(&"test_boot_requested"), "{tags:?}");
    assert!(!tags.contains(&"rolled_back"), "{tags:?}");
    let said = gw.iter().any(|k| {
        matches!(k, EventKind::Note { text } if text.contains("no trial boot or revert") && text.contains("not claimed"))
    });
    assert!(said, "{gw:#?}");
    let checks = fp.store().verify_all_logs().await.unwrap();
    assert!(checks.iter().all(|c| c.is_ok()), "{checks:?}");

    // The password is in the keyring only.
    drop(fp);
    let hits = files_containing(&root.join("laptop"), PASSWORD.as_bytes());
    assert!(hits.is_empty(), "the password is on disk in {hits:?}");
}

#[test]
fn a_swu_payload_that_does_not_check_out_is_refused_at_catalog_load() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let vendor = Vendor::new(&root.join("vendor"), "Gateway Vendor");
    let good = Swu {
        version: "2.1.0".into(),
        hardware: vec!["1.0".into()],
        image_name: "rootfs.img".into(),
        image: vec![0x5a; 10_000],
        device_path: root.join("flash.bin"),
        signer: Some(vendor),
        tamper: false,
    };
    let tampered = Swu { tamper: true, ..good.clone() };
    let unsigned = Swu { signer: None, ..good.clone() };
    // Its sw-description says 2.0.0 while the manifest installs 2.1.0.
    let misversioned = Swu { version: "2.0.0".into(), ..good.clone() };
    let signed = CatalogBuilder::new().write(&root.join("release")).unwrap();
    for (id, swu) in [
        ("gw-good", &good),
        ("gw-tampered", &tampered),
        ("gw-unsigned", &unsigned),
        ("gw-misversioned", &misversioned),
    ] {
        let payload = std::fs::read(swu.write(root, &format!("{id}.swu"))).unwrap();
        let spec = BundleSpec {
            id,
            model: "gateway",
            applies: (v(1, 0, 0), v(1, 9, 9)),
            installs: v(2, 1, 0),
            cvss: "7.0",
            format: PayloadFormat::Swupdate,
            payload: &payload,
        };
        signed.bundle(&spec).unwrap();
    }
    let catalog =
        load_catalog(&signed.catalog_dir, &signed.trust_path, &VerifyPolicy::now()).unwrap();
    let ids: Vec<&str> =
        catalog.bundles.iter().map(|b| b.bundle.manifest().bundle_id.as_str()).collect();
    assert_eq!(ids, ["gw-good"]);
    let entries = catalog.entries();
    assert!(entries[0].needs_credential, "a gateway bundle needs the gateway's password");
    let reason = |id: &str| {
        catalog.refused.iter().find(|r| r.bundle_id.as_deref() == Some(id)).unwrap().reason.clone()
    };
    assert!(
        reason("gw-tampered").contains("does not match its sha256"),
        "{}",
        reason("gw-tampered")
    );
    assert!(reason("gw-unsigned").contains("not signed"), "{}", reason("gw-unsigned"));
    assert!(
        reason("gw-misversioned").contains("sw-description says version 2.0.0"),
        "{}",
        reason("gw-misversioned")
    );
}

#[test]
fn with_a_vendor_certificate_in_the_trust_store_the_catalog_checks_each_swu_signature() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let vendor = Vendor::new(&root.join("vendor"), "Gateway Vendor");
    let stranger = Vendor::new(&root.join("stranger"), "Someone Else");
    let good = Swu {
        version: "2.1.0".into(),
        hardware: vec!["1.0".into()],
        image_name: "rootfs.img".into(),
        image: vec![0x5a; 10_000],
        device_path: root.join("flash.bin"),
        signer: Some(vendor.clone()),
        tamper: false,
    };
    let foreign = Swu { signer: Some(stranger), ..good.clone() };
    let signed = CatalogBuilder::new()
        .vendor_certificate(&vendor.cert_pem(), "Gateway Vendor")
        .write(&root.join("release"))
        .unwrap();
    for (id, swu) in [("gw-vendor", &good), ("gw-foreign", &foreign)] {
        let payload = std::fs::read(swu.write(root, &format!("{id}.swu"))).unwrap();
        let spec = BundleSpec {
            id,
            model: "gateway",
            applies: (v(1, 0, 0), v(1, 9, 9)),
            installs: v(2, 1, 0),
            cvss: "7.0",
            format: PayloadFormat::Swupdate,
            payload: &payload,
        };
        signed.bundle(&spec).unwrap();
    }
    let catalog =
        load_catalog(&signed.catalog_dir, &signed.trust_path, &VerifyPolicy::now()).unwrap();
    let ids: Vec<&str> =
        catalog.bundles.iter().map(|b| b.bundle.manifest().bundle_id.as_str()).collect();
    assert_eq!(
        ids,
        ["gw-vendor"],
        "a .swu signed by another vendor is refused: {:?}",
        catalog.refused
    );
    let detail = catalog.bundles[0]
        .bundle
        .verdict()
        .checks
        .iter()
        .map(|c| c.detail.clone())
        .collect::<Vec<_>>()
        .join("; ");
    assert!(
        detail.contains("verifies against a vendor certificate in the trust store"),
        "{detail}"
    );
    let refused = &catalog.refused[0];
    assert_eq!(refused.bundle_id.as_deref(), Some("gw-foreign"));
    assert!(refused.reason.contains("signature"), "{}", refused.reason);
}

#[tokio::test]
async fn a_swu_for_other_hardware_is_refused_by_the_target_before_a_byte_is_sent() {
    use fieldpatch_core::flash::FlashTarget;
    use fieldpatch_core::flash::swupdate::SwupdateTarget;
    use fieldpatch_core::image::swu::SwuTarget;
    use fieldpatch_drivers::swupdate::{DigestCredentials, Timeouts};

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let vendor = Vendor::new(&root.join("vendor"), "Gateway Vendor");
    let auth =
        DaemonAuth { user: "admin".into(), realm: "gw-site-a".into(), password: PASSWORD.into() };
    let daemon = Daemon::start(&root.join("daemon"), "gw100:1.0", &vendor.cert, Some(&auth));
    let swu = Swu {
        version: "2.1.0".into(),
        hardware: vec!["1.0".into()],
        image_name: "rootfs.img".into(),
        image: vec![0x33; 50_000],
        device_path: daemon.flash.clone(),
        signer: Some(vendor),
        tamper: false,
    };
    let bytes = std::fs::read(swu.write(root, "gw.swu")).unwrap();
    let fits = SwuTarget { board: None, hardware_revision: "2.0".into() };
    let creds = DigestCredentials::new("admin", PASSWORD);
    let mut target =
        SwupdateTarget::new(&daemon.url(), Some(creds), Some(fits), Timeouts::default()).unwrap();
    target.state().await.expect("the daemon answers with the right password");
    let e = target.upload(&bytes, &fieldpatch_core::progress::NoProgress).await.unwrap_err();
    assert!(e.to_string().contains("not this device's revision `2.0`"), "{e}");
    assert!(!e.is_retryable());
    assert!(!e.to_string().contains(PASSWORD));
    assert!(!daemon.started_an_update(), "{}", daemon.log_text());
    assert!(daemon.flash_bytes().is_empty());
}

/// A device's own health endpoint: answers every request with the status in `status`.
async fn health_endpoint(status: std::sync::Arc<std::sync::atomic::AtomicU16>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let status = status.load(std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    url
}

struct Events(std::sync::Mutex<Vec<fieldpatch_core::visitlog::EventKind>>);

#[async_trait::async_trait]
impl fieldpatch_core::flash::EventSink for Events {
    async fn record(
        &self,
        _device: &str,
        kind: fieldpatch_core::visitlog::EventKind,
    ) -> Result<(), fieldpatch_core::flash::SinkError> {
        self.0.lock().unwrap().push(kind);
        Ok(())
    }
}

#[tokio::test]
async fn a_gateway_restarts_and_counts_as_healthy_only_once_its_own_health_url_answers() {
    use fieldpatch_core::flash::swupdate::SwupdateTarget;
    use fieldpatch_core::flash::{FlashOptions, FlashOutcome, FlashStage, VerifiedImage, flash};
    use fieldpatch_core::progress::NoProgress;
    use fieldpatch_drivers::swupdate::{DigestCredentials, Timeouts};
    use sha2::Digest;
    use std::sync::atomic::{AtomicU16, Ordering};

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let vendor = Vendor::new(&root.join("vendor"), "Gateway Vendor");
    let auth =
        DaemonAuth { user: "admin".into(), realm: "gw-site-a".into(), password: PASSWORD.into() };
    let daemon =
        Daemon::start_with(&root.join("daemon"), "gw100:1.0", &vendor.cert, Some(&auth), true);
    let swu = Swu {
        version: "2.1.0".into(),
        hardware: vec!["1.0".into()],
        image_name: "rootfs.img".into(),
        image: vec![0x44; 40_000],
        device_path: daemon.flash.clone(),
        signer: Some(vendor),
        tamper: false,
    };
    let bytes = std::fs::read(swu.write(root, "gw.swu")).unwrap();
    let sha: [u8; 32] = sha2::Sha256::digest(&bytes).into();
    let image = VerifiedImage {
        bundle_id: Some("gw-2.1.0".into()),
        from: None,
        to: v(2, 1, 0),
        bytes: bytes.clone().into(),
        sha256: sha,
        device_hash: sha.to_vec(),
        esp: None,
    };
    let status = Arc::new(AtomicU16::new(200));
    let url = health_endpoint(status.clone()).await;
    let opts = FlashOptions { reconnect_timeout: Duration::from_secs(2), ..Default::default() };
    let target = || {
        let creds = DigestCredentials::new("admin", PASSWORD);
        SwupdateTarget::new(&daemon.url(), Some(creds), None, Timeouts::default())
            .unwrap()
            .with_health_url(Some(url.clone()))
    };

    // The device's endpoint answers 200: confirmed, and the log says what was checked.
    let events = Events(Default::default());
    let out = flash("gw-1", &mut target(), &image, &events, &NoProgress, &opts).await.unwrap();
    assert_eq!(out, FlashOutcome::Confirmed { version: v(2, 1, 0) });
    let passed = events.0.lock().unwrap().iter().find_map(|e| match e {
        EventKind::HealthCheck { passed: true, detail } => Some(detail.clone()),
        _ => None,
    });
    let passed = passed.expect("a passed health check is recorded");
    assert!(passed.contains(&url), "{passed}");
    assert_eq!(daemon.flash_bytes(), swu.image);
    // The gateway was asked to restart into the new software: its post-update command ran.
    assert!(passed.contains("restart requested"), "{passed}");
    assert!(daemon.restart_marker().exists(), "{}", daemon.log_text());

    // It keeps answering 503: the install is not counted healthy, and nothing claims a rollback.
    status.store(503, Ordering::SeqCst);
    let events = Events(Default::default());
    let out = flash("gw-1", &mut target(), &image, &events, &NoProgress, &opts).await.unwrap();
    let FlashOutcome::Failed { stage, reason } = out else { panic!("{out:?}") };
    assert_eq!(stage, FlashStage::HealthCheck);
    assert!(reason.contains("HTTP 503") && reason.contains("cannot be rolled back"), "{reason}");
    let tags: Vec<String> = events.0.lock().unwrap().iter().map(|e| e.tag().to_string()).collect();
    assert!(tags.contains(&"health_check".to_string()), "{tags:?}");
    assert!(!tags.contains(&"rolled_back".to_string()), "{tags:?}");
    assert!(!tags.contains(&"confirmed".to_string()), "{tags:?}");
}
