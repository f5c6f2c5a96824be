//! Discovery of a lab device in MCUboot serial recovery beside one running its application (real
//! ptys): the drivers' SMP probe tells the modes apart without leaving a problem behind for the
//! bootloader's unsupported commands, and core's find records the mode in the identity, names
//! the bootloader and offers no test boot.

use fieldpatch_core::discovery::{Capability, Find, SERIAL_RECOVERY};
use fieldpatch_core::model::DeviceMode;
use fieldpatch_drivers::discovery::{
    Details, Discovery, Endpoint, Request, SerialScope, SystemPorts,
};
use fieldpatch_drivers::smp::SmpMode;
use fieldpatch_lab::smp::recovery::SerialRecovery;
use fieldpatch_lab::smp::{DeviceConfig, SmpDevice, serial::serve_pty};
use std::time::Duration;

fn device(recovery: bool) -> SmpDevice {
    SmpDevice::new(DeviceConfig {
        serial_recovery: recovery.then(SerialRecovery::default),
        ..DeviceConfig::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_tells_serial_recovery_from_the_application() {
    let (rec, app) = (device(true), device(false));
    assert!(rec.in_serial_recovery() && !app.in_serial_recovery());
    let rec_pty = serve_pty(rec.clone(), 115_200).unwrap();
    let app_pty = serve_pty(app.clone(), 115_200).unwrap();
    let path = |p: &std::path::Path| p.to_path_buf();
    let request = Request {
        serial: Some(SerialScope {
            system_ports: SystemPorts::None,
            paths: vec![path(rec_pty.path()), path(app_pty.path())],
            bauds: vec![115_200],
            answer_timeout: Duration::from_millis(500),
            ..SerialScope::default()
        }),
        deadline: Duration::from_secs(15),
        ..Request::default()
    };
    let report = Discovery::new(request).start().await.unwrap().collect().await;
    assert_eq!(report.found.len(), 2, "{report:#?}");
    let found_at = |p: &std::path::Path| {
        let p = p.to_string_lossy();
        report
            .found
            .iter()
            .find(|f| matches!(&f.endpoint, Endpoint::Serial { path, .. } if *path == p))
            .unwrap()
    };

    // The drivers' facts.
    let rec_found = found_at(rec_pty.path());
    let Some(Details::Smp(facts)) = rec_found.report().map(|r| &r.details) else {
        panic!("{rec_found:#?}")
    };
    assert_eq!(facts.mode, Some(SmpMode::SerialRecovery), "{facts:#?}");
    // Echo, parameters, OS info and bootloader info are refused as not supported: no problem.
    assert!(!facts.echo);
    assert_eq!(facts.params, None);
    assert!(facts.problems.is_empty(), "{:?}", facts.problems);
    assert_eq!(facts.images.len(), 1, "{:?}", facts.images);
    assert!(!facts.images[0].active);
    let app_found = found_at(app_pty.path());
    let Some(Details::Smp(app_facts)) = app_found.report().map(|r| &r.details) else {
        panic!("{app_found:#?}")
    };
    assert_eq!(app_facts.mode, Some(SmpMode::Application), "{app_facts:#?}");

    // Core's find: the mode in the identity, the bootloader named, no test boot.
    let find = Find::from(rec_found);
    assert_eq!(find.identity.mode, Some(DeviceMode::SerialRecovery));
    assert_eq!(find.bootloader.as_deref(), Some(SERIAL_RECOVERY));
    assert!(!find.capabilities.contains(&Capability::TestBoot), "{find:#?}");
    assert!(find.capabilities.contains(&Capability::Upload));
    assert!(find.capabilities.contains(&Capability::ImageHash));
    // What the bootloader would boot, not a running image.
    let (_, version) = rec.active_image().unwrap();
    assert_eq!(find.identity.firmware_version.map(|v| v.to_string()), Some(version));
    assert_eq!(find.identity.image_hash, None);

    let find = Find::from(app_found);
    assert_eq!(find.identity.mode, Some(DeviceMode::Application));
    assert_eq!(find.bootloader.as_deref(), Some("MCUboot"));
    assert!(find.capabilities.contains(&Capability::TestBoot), "{find:#?}");
    let (hash, _) = app.active_image().unwrap();
    assert_eq!(find.identity.image_hash, Some(hex::encode(hash)));
}
