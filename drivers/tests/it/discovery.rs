//! Device discovery against lab devices over real ptys, loopback sockets and network namespaces:
//! what answers is found with its identity, what does not is skipped in time, busy and excluded
//! ports are left alone (checked from the lab side), mDNS is browsed only where allowed.

use fieldpatch_drivers::discovery::{
    Details, Discovery, DiscoveryError, Endpoint, NetTarget, NetworkScope, Report, Request,
    SkipReason, Via,
};
use fieldpatch_drivers::smp::Params;
use fieldpatch_lab::smp::udp::{NetConditions, serve_udp};
use fieldpatch_lab::smp::{DeviceConfig, DeviceIdentity, SmpDevice};
use std::time::{Duration, Instant};

fn lab_device(serial: &str) -> SmpDevice {
    SmpDevice::new(DeviceConfig {
        identity: DeviceIdentity {
            vendor: "Acme".into(),
            model: "acme_sensor".into(),
            hardware_revision: "2.1.0".into(),
            serial_number: serial.into(),
            ..DeviceIdentity::default()
        },
        ..DeviceConfig::default()
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The found device's SMP identity matches the lab device's.
fn assert_identity_of(found: &fieldpatch_drivers::discovery::Found, dev: &SmpDevice) {
    let id = found.identity();
    assert_eq!(id.model.as_deref(), Some("acme_sensor"), "{found:#?}");
    assert_eq!(id.hardware_revision.as_deref(), Some("2.1.0"));
    let (hash, version) = dev.active_image().unwrap();
    assert_eq!(id.firmware_version.as_deref(), Some(version.as_str()));
    assert_eq!(id.image_hash.as_deref(), Some(hex(&hash).as_str()));
    let Some(report) = found.report() else { panic!("not probed: {found:#?}") };
    assert_eq!(report.protocol, "smp");
    let Details::Smp(facts) = &report.details else { panic!("{report:#?}") };
    assert!(facts.echo);
    assert_eq!(facts.params, Some(Params { buf_size: 2048, buf_count: 4 }));
    assert_eq!(facts.os.kernel_name.as_deref(), Some("Zephyr"));
    assert_eq!(facts.os.node_name, Some(dev.identity().hostname()));
    assert_eq!(facts.os.hardware_platform.as_deref(), Some("acme_sensor@2.1.0"));
    // Built without the build date, as Zephyr's default: no `b`, and that is no problem.
    assert_eq!(facts.os.build_time, None);
    assert!(facts.problems.is_empty(), "{:?}", facts.problems);
    assert_eq!(facts.images.len(), 1, "{:?}", facts.images);
}

#[cfg(target_os = "linux")]
mod serial {
    use super::*;
    use fieldpatch_drivers::discovery::{SerialScope, SystemPorts};
    use fieldpatch_drivers::transport::{Link, SerialLink};
    use fieldpatch_lab::noise::{serve_garbage, serve_garbage_with};
    use fieldpatch_lab::pty::{OpenWatch, Pty};
    use fieldpatch_lab::smp::serial::serve_pty;
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    use std::path::PathBuf;

    fn path(p: &std::path::Path) -> PathBuf {
        p.to_path_buf()
    }

    fn open(p: &std::path::Path) -> std::fs::File {
        std::fs::OpenOptions::new().read(true).write(true).open(p).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn discover_serial_finds_the_lab_device_and_leaves_the_rest_alone() {
        let dev = lab_device("SN-0001");
        let device = serve_pty(dev.clone(), 115_200).unwrap();
        let garbage = serve_garbage(115_200, 3).unwrap();
        // Noise with no SMP frame marker at all: only listening tells it from silence.
        let noise = serve_garbage_with(115_200, 4, false).unwrap();
        let silent = Pty::open().unwrap();
        let busy = serve_pty(lab_device("SN-BUSY"), 115_200).unwrap();
        let excluded = serve_pty(lab_device("SN-EXCL"), 115_200).unwrap();

        // Another program holds the busy port (serialport: TIOCEXCL and an exclusive flock).
        let mut holder = SerialLink::open(busy.path().to_str().unwrap(), 115_200).unwrap();
        // Distinctive settings on the silent port, which the probe must put back.
        {
            let f = open(silent.path());
            let mut t = tcgetattr(&f).unwrap();
            t.set_speed(9600).unwrap();
            t.local_modes |= LocalModes::ICANON | LocalModes::ECHO;
            tcsetattr(&f, OptionalActions::Now, &t).unwrap();
        }
        let excluded_watch = OpenWatch::new(excluded.path()).unwrap();
        let silent_watch = OpenWatch::new(silent.path()).unwrap();

        let request = Request {
            serial: Some(SerialScope {
                system_ports: SystemPorts::None,
                paths: vec![
                    path(device.path()),
                    path(garbage.path()),
                    path(noise.path()),
                    path(silent.path()),
                    path(busy.path()),
                    path(excluded.path()),
                ],
                exclude: vec![path(excluded.path())],
                bauds: vec![115_200, 57_600],
                answer_timeout: Duration::from_millis(300),
                ..SerialScope::default()
            }),
            deadline: Duration::from_secs(15),
            ..Request::default()
        };
        let started = Instant::now();
        let report = Discovery::new(request).start().await.unwrap().collect().await;
        let elapsed = started.elapsed();

        assert_eq!(report.found.len(), 1, "{report:#?}");
        let found = &report.found[0];
        assert_eq!(
            found.endpoint,
            Endpoint::Serial { path: device.path().to_string_lossy().into(), baud: 115_200 }
        );
        assert!(matches!(found.via, Via::SerialPort(_)), "{found:#?}");
        assert_identity_of(found, &dev);

        let skip = |p: &std::path::Path| report.skip_of(p.to_str().unwrap()).cloned();
        match skip(garbage.path()) {
            Some(SkipReason::Unrecognized(why)) => assert!(why.contains("smp at 115200"), "{why}"),
            other => panic!("garbage: {other:?}"),
        }
        match skip(noise.path()) {
            Some(SkipReason::Unrecognized(why)) => assert!(why.contains("sends data"), "{why}"),
            other => panic!("noise: {other:?}"),
        }
        assert_eq!(skip(silent.path()), Some(SkipReason::Silent), "{report:#?}");
        match skip(busy.path()) {
            // Seen by the framework's own check, before any probe opened it.
            Some(SkipReason::Busy(why)) => assert!(why.contains("flock"), "{why}"),
            other => panic!("busy port: {other:?}"),
        }
        assert_eq!(skip(excluded.path()), Some(SkipReason::Excluded));
        let summary = report.summary.unwrap();
        assert_eq!((summary.found, summary.skipped, summary.deadline_reached), (1, 5, false));
        assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");
        let plan = report.plan.unwrap();
        assert_eq!(plan.serial_ports.len(), 5);
        assert_eq!(plan.excluded_ports.len(), 1);

        // The excluded port was never opened; the silent one was, and got its settings back.
        assert!(!excluded_watch.was_opened(), "the excluded pty was opened");
        assert!(silent_watch.was_opened(), "the silent pty was not even probed");
        let t = tcgetattr(open(silent.path())).unwrap();
        assert_eq!(t.output_speed(), 9600, "line speed not restored");
        assert!(
            t.local_modes.contains(LocalModes::ICANON | LocalModes::ECHO),
            "modes not restored"
        );
        // Nothing reached the busy device: its holder got no answer to anything.
        assert!(holder.recv(Duration::from_millis(200)).await.is_err(), "the busy device talked");
    }

    /// A UUCP lock file of a live process (minicom, picocom) marks a port busy.
    #[tokio::test]
    async fn discover_serial_honours_uucp_lock_files() {
        let device = serve_pty(lab_device("SN-LOCK"), 115_200).unwrap();
        let watch = OpenWatch::new(device.path()).unwrap();
        let name = device.path().strip_prefix("/dev/").unwrap().to_str().unwrap().replace('/', "_");
        std::fs::create_dir_all("/run/lock").unwrap();
        let lock = PathBuf::from(format!("/run/lock/LCK..{name}"));
        let mut owner = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        std::fs::write(&lock, format!("{:>10}\n", owner.id())).unwrap();
        struct Cleanup(PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let _cleanup = Cleanup(lock.clone());

        let request = Request {
            serial: Some(SerialScope {
                system_ports: SystemPorts::None,
                paths: vec![device.path().to_path_buf()],
                ..SerialScope::default()
            }),
            deadline: Duration::from_secs(5),
            ..Request::default()
        };
        let report = Discovery::new(request).start().await.unwrap().collect().await;
        let reason = report.skip_of(device.path().to_str().unwrap()).cloned();
        let _ = owner.kill();
        let _ = owner.wait();
        match reason {
            Some(SkipReason::Busy(why)) => assert!(why.contains("lock file"), "{why}"),
            other => panic!("expected busy, got {other:?}: {report:#?}"),
        }
        assert!(!watch.was_opened(), "a port locked by another process was opened");
    }

    /// The deadline bounds the scan whatever the ports do, and every candidate gets an answer.
    #[tokio::test]
    async fn discover_deadline_cuts_silent_ports_short() {
        let ptys: Vec<Pty> = (0..3).map(|_| Pty::open().unwrap()).collect();
        let request = Request {
            serial: Some(SerialScope {
                system_ports: SystemPorts::None,
                paths: ptys.iter().map(|p| p.path().to_path_buf()).collect(),
                // Silence at five baud rates would take 5 s per port, one port at a time.
                bauds: vec![115_200, 57_600, 38_400, 19_200, 9_600],
                answer_timeout: Duration::from_secs(1),
                parallel: 1,
                ..SerialScope::default()
            }),
            deadline: Duration::from_millis(1500),
            ..Request::default()
        };
        let started = Instant::now();
        let report = Discovery::new(request).start().await.unwrap().collect().await;
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_secs(4), "the scan overran its deadline: {elapsed:?}");
        assert_eq!(report.skipped.len(), 3, "{report:#?}");
        assert!(report.skipped.iter().all(|s| s.reason == SkipReason::Deadline), "{report:#?}");
        assert!(report.summary.unwrap().deadline_reached);
        // Cut short mid-probe, the port is released (the probe's reader thread lets go within
        // its 50 ms read wait): it can be opened exclusively again.
        for p in &ptys {
            let until = Instant::now() + Duration::from_secs(1);
            while let Err(e) = SerialLink::open(p.path().to_str().unwrap(), 115_200) {
                assert!(
                    Instant::now() < until,
                    "{} still held after the scan: {e}",
                    p.path().display()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// A silent UDP endpoint: bound, reads, never answers.
fn silent_udp(addr: &str) -> std::net::UdpSocket {
    std::net::UdpSocket::bind(addr).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_udp_range_finds_the_lab_device_and_passes_silent_hosts() {
    let dev = lab_device("SN-UDP");
    let server =
        serve_udp(dev.clone(), "127.0.0.3:0".parse().unwrap(), NetConditions::default()).unwrap();
    let port = server.local_addr().port();
    // A host in the range that swallows datagrams, and a named address outside it that does too.
    let _quiet_in_range = silent_udp(&format!("127.0.0.5:{port}"));
    let _quiet_named = silent_udp(&format!("127.0.0.9:{port}"));

    let request = Request {
        network: Some(NetworkScope {
            targets: vec!["127.0.0.0/29".parse().unwrap(), "127.0.0.9".parse().unwrap()],
            port: Some(port),
            probes_per_second: 5,
            answer_timeout: Duration::from_millis(300),
            ..NetworkScope::default()
        }),
        deadline: Duration::from_secs(10),
        ..Request::default()
    };
    let started = Instant::now();
    let report: Report = Discovery::new(request).start().await.unwrap().collect().await;
    let elapsed = started.elapsed();

    assert_eq!(report.plan.as_ref().unwrap().hosts, 7, "{report:#?}");
    assert_eq!(report.found.len(), 1, "{report:#?}");
    let found = &report.found[0];
    assert_eq!(found.endpoint, Endpoint::Udp { addr: server.local_addr() });
    assert_eq!(found.via, Via::Address("127.0.0.0/29".parse::<NetTarget>().unwrap()));
    assert_identity_of(found, &dev);
    assert_eq!(report.skipped.len(), 6, "{report:#?}");
    for s in &report.skipped {
        assert_eq!(s.reason, SkipReason::Silent, "{s:?}");
    }
    assert_eq!(report.skip_of(&format!("127.0.0.9:{port}")), Some(&SkipReason::Silent));
    assert!(!report.summary.unwrap().deadline_reached);
    // Seven hosts at five a second: the last starts at least 1.2 s after the first.
    assert!(elapsed >= Duration::from_millis(1200), "not rate-limited: {elapsed:?}");
}

#[tokio::test]
async fn discover_refuses_ranges_over_the_limit() {
    let request = |targets: &[&str], max_hosts| Request {
        network: Some(NetworkScope {
            targets: targets.iter().map(|t| t.parse().unwrap()).collect(),
            max_hosts,
            ..NetworkScope::default()
        }),
        ..Request::default()
    };
    let err = Discovery::new(request(&["10.0.0.0/19"], 4096)).start().await.unwrap_err();
    assert!(matches!(err, DiscoveryError::TooManyHosts { hosts: 8190, limit: 4096, .. }), "{err}");
    assert_eq!(err.code(), "too_many_hosts");
    assert!(err.to_string().contains("narrow the ranges"), "{err}");
    let err = Discovery::new(request(&["127.0.0.0/29", "127.0.1.1"], 6)).start().await.unwrap_err();
    assert_eq!(err.code(), "too_many_hosts", "{err}");
    assert!(Discovery::new(request(&["127.0.0.0/29"], 6)).start().await.is_ok());
    let err = "sensor.local".parse::<NetTarget>().unwrap_err();
    assert_eq!(err.code(), "bad_target");
}

#[cfg(target_os = "linux")]
mod mdns {
    use super::*;
    use fieldpatch_drivers::discovery::{MdnsScope, Probed};
    use fieldpatch_lab::mdns::{AdvertiseOptions, advertise};
    use fieldpatch_lab::netns::{Netns, VethPair};

    /// Serve and advertise `dev` at `bind` on `interfaces`, inside `ns`, until the returned
    /// sender is dropped.
    fn advertised_device(
        ns: &Netns,
        dev: SmpDevice,
        bind: &str,
        interfaces: Vec<String>,
    ) -> std::sync::mpsc::Sender<()> {
        let bind: std::net::SocketAddr = bind.parse().unwrap();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        ns.spawn(move || {
            let server = serve_udp(dev.clone(), bind, NetConditions::default()).unwrap();
            let opts = AdvertiseOptions { interfaces, ..AdvertiseOptions::on(&[]) };
            let adv = advertise(&dev, server.local_addr(), &opts).unwrap();
            ready_tx.send(()).unwrap();
            let _ = stop_rx.recv();
            drop(adv);
            drop(server);
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).expect("the advertiser did not start");
        stop_tx
    }

    /// Browse on `interfaces` inside `ns` (on a thread of its own, with its own runtime).
    fn browse(ns: &Netns, interfaces: &[&str], listen: Duration) -> Report {
        let interfaces: Vec<String> = interfaces.iter().map(|s| s.to_string()).collect();
        ns.run(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let request = Request {
                    mdns: Some(MdnsScope { interfaces, listen, ..MdnsScope::default() }),
                    deadline: listen + Duration::from_secs(4),
                    ..Request::default()
                };
                Discovery::new(request).start().await.unwrap().collect().await
            })
        })
        .expect("cannot run inside the network namespace")
    }

    fn assert_advertised(report: &Report, dev: &SmpDevice, addr: &str) {
        let found: Vec<_> = report.found.iter().filter(|f| matches!(f.via, Via::Mdns(_))).collect();
        assert_eq!(found.len(), 1, "{report:#?}");
        let f = found[0];
        let Via::Mdns(adv) = &f.via else { unreachable!() };
        assert_eq!(adv.service_type, "_mcumgr._udp.local.");
        assert_eq!(
            adv.instance,
            format!("acme_sensor-{}._mcumgr._udp.local.", dev.identity().serial_number)
        );
        assert_eq!(adv.identity.vendor.as_deref(), Some("Acme"));
        assert_eq!(
            adv.identity.serial_number.as_deref(),
            Some(dev.identity().serial_number.as_str())
        );
        assert_eq!(adv.identity.model.as_deref(), Some("acme_sensor"));
        assert_eq!(adv.identity.hardware_revision.as_deref(), Some("2.1.0"));
        assert_eq!(adv.identity.firmware_version.as_deref(), Some("1.0.0"));
        assert_eq!(f.endpoint, Endpoint::Udp { addr: addr.parse().unwrap() });
        assert!(matches!(f.probed, Probed::Answered(_)), "{f:#?}");
        assert_identity_of(f, dev);
        // The merged identity has what only the advertisement knows.
        assert_eq!(f.identity().vendor.as_deref(), Some("Acme"));
    }

    /// A device advertising in one namespace is found from another across a veth pair, and a
    /// browser allowed only on loopback does not see it.
    #[test]
    fn discover_mdns_finds_a_device_advertised_in_another_namespace() {
        let pair = VethPair::create().expect("mDNS across namespaces needs network namespaces");
        let dev = lab_device("SN-MDNS");
        let _device =
            advertised_device(&pair.a, dev.clone(), "192.0.2.1:1337", vec![pair.if_a.clone()]);
        let report = browse(&pair.b, &[&pair.if_b], Duration::from_secs(4));
        assert_advertised(&report, &dev, "192.0.2.1:1337");
        assert_eq!(report.plan.as_ref().unwrap().mdns_interfaces, vec![pair.if_b.clone()]);
        let elsewhere = browse(&pair.b, &["lo"], Duration::from_secs(2));
        assert!(elsewhere.found.is_empty(), "found on an interface not allowed: {elsewhere:#?}");
    }

    /// mDNS on loopback alone (inside a namespace, so nothing reaches the machine's network).
    #[test]
    fn discover_mdns_on_loopback() {
        let ns = Netns::create().expect("mDNS on loopback runs in a network namespace");
        let dev = lab_device("SN-LO");
        let _device = advertised_device(&ns, dev.clone(), "127.0.0.1:1337", vec!["lo".into()]);
        let report = browse(&ns, &["lo"], Duration::from_secs(3));
        assert_advertised(&report, &dev, "127.0.0.1:1337");
    }

    #[tokio::test]
    async fn discover_mdns_refuses_unknown_interfaces() {
        let request = Request {
            mdns: Some(MdnsScope {
                interfaces: vec!["fp-nonexistent0".into()],
                ..MdnsScope::default()
            }),
            ..Request::default()
        };
        let err = Discovery::new(request).start().await.unwrap_err();
        assert_eq!(err.code(), "unknown_interface");
        assert!(
            err.to_string().contains("lo"),
            "the message lists the interfaces there are: {err}"
        );
    }
}
