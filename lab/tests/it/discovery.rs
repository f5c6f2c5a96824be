//! The lab's side of discovery: device identity in OS info (checked against `smpclient`, the
//! library under `smpmgr`), mDNS advertising by the `fieldpatch-lab` binary, the garbage pty and
//! the open watch.

use fieldpatch_drivers::discovery::{
    Details, Discovery, Endpoint, MdnsScope, Report, Request, SerialScope, SystemPorts, Via,
};
use fieldpatch_drivers::smp::commands::AppInfo;
use fieldpatch_drivers::smp::{SmpClient, SmpError};
use fieldpatch_drivers::transport::UdpLink;
use fieldpatch_lab::smp::udp::{NetConditions, serve_udp};
use fieldpatch_lab::smp::{DeviceConfig, DeviceIdentity, SmpDevice};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn device() -> SmpDevice {
    SmpDevice::new(DeviceConfig {
        identity: DeviceIdentity {
            vendor: "Acme".into(),
            model: "acme_gateway".into(),
            hardware_revision: "3.0.1".into(),
            serial_number: "GW-0042".into(),
            ..DeviceIdentity::default()
        },
        ..DeviceConfig::default()
    })
}

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// OS info answers one field per format letter, in Zephyr's order, and refuses unknown letters
/// with Zephyr's error (v2: OS group, "invalid format").
#[tokio::test]
async fn discover_lab_os_info_answers_like_zephyr() {
    let dev = device();
    let server =
        serve_udp(dev.clone(), "127.0.0.1:0".parse().unwrap(), NetConditions::default()).unwrap();
    let mut c = SmpClient::new(UdpLink::connect(server.local_addr()).await.unwrap());
    let info = |f: &str| AppInfo { format: Some(f.into()) };
    assert_eq!(c.request(&info("i")).await.unwrap(), "acme_gateway@3.0.1");
    assert_eq!(c.request(&info("n")).await.unwrap(), "acme-gateway-gw-0042");
    assert_eq!(c.request(&info("r")).await.unwrap(), "1.0.0");
    // Letters in any order come out in Zephyr's order.
    assert_eq!(c.request(&info("is")).await.unwrap(), "Zephyr acme_gateway@3.0.1");
    assert_eq!(
        c.request(&info("a")).await.unwrap(),
        "Zephyr acme-gateway-gw-0042 1.0.0 3.7.0 arm nrf52840 acme_gateway@3.0.1 Zephyr"
    );
    // No format: the kernel name.
    assert_eq!(c.request(&AppInfo { format: None }).await.unwrap(), "Zephyr");
    // No build date in this build, as Zephyr's default.
    match c.request(&info("b")).await {
        Err(SmpError::Device(e)) => assert_eq!((e.group, e.rc), (Some(0), 2), "{e}"),
        other => panic!("`b` should be an invalid format: {other:?}"),
    }
}

/// What the discovery probe reads from the lab device is what `smpclient` (the library under
/// `smpmgr`, which has no OS info command of its own) reads from it.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_probe_sees_what_smpclient_sees() {
    let dev = device();
    let server = fieldpatch_lab::smp::serial::serve_pty(dev.clone(), 115_200).unwrap();
    let path = server.path().to_str().unwrap().to_string();

    let request = Request {
        serial: Some(SerialScope {
            system_ports: SystemPorts::None,
            paths: vec![server.path().to_path_buf()],
            ..SerialScope::default()
        }),
        deadline: Duration::from_secs(10),
        ..Request::default()
    };
    let report = Discovery::new(request).start().await.unwrap().collect().await;
    assert_eq!(report.found.len(), 1, "{report:#?}");
    let Some(Details::Smp(facts)) = report.found[0].report().map(|r| r.details.clone()) else {
        panic!("{report:#?}")
    };

    let smpmgr = crate::smpmgr::smpmgr();
    let python = smpmgr.with_file_name("python");
    let out = Command::new(&python)
        .arg("-c")
        .arg(SMPCLIENT_QUERY)
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(out.status.success(), "smpclient failed: {}", String::from_utf8_lossy(&out.stderr));
    let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    for letter in ['s', 'n', 'r', 'v', 'b', 'm', 'p', 'i', 'o'] {
        let seen = theirs["os"][letter.to_string()].as_str();
        assert_eq!(facts.os.get(letter), seen, "OS info `{letter}`: {theirs}");
    }
    assert!(facts.os.hardware_platform.is_some());
    let params = facts.params.unwrap();
    assert_eq!(theirs["params"], serde_json::json!([params.buf_size, params.buf_count]));
    let images: Vec<serde_json::Value> = facts
        .images
        .iter()
        .map(|s| {
            let hash: String = s.hash.iter().map(|b| format!("{b:02x}")).collect();
            serde_json::json!([s.slot, s.version, hash, s.active])
        })
        .collect();
    assert_eq!(theirs["images"], serde_json::Value::Array(images));
    let id = report.found[0].identity();
    assert_eq!(
        theirs["os"]["i"],
        format!("{}@{}", id.model.unwrap(), id.hardware_revision.unwrap())
    );
}

const SMPCLIENT_QUERY: &str = r#"
import asyncio, json, sys
from smpclient import SMPClient
from smpclient.generics import success
from smpclient.requests.image_management import ImageStatesRead
from smpclient.requests.os_management import MCUMgrParametersRead, OSApplicationInfoRead
from smpclient.transport.serial import SMPSerialTransport

async def main(port):
    async with SMPClient(SMPSerialTransport(), port, timeout_s=5) as c:
        out = {"os": {}}
        for letter in "snrvbmpio":
            r = await c.request(OSApplicationInfoRead(format=letter))
            out["os"][letter] = r.output if success(r) else None
        p = await c.request(MCUMgrParametersRead())
        out["params"] = [p.buf_size, p.buf_count]
        s = await c.request(ImageStatesRead())
        out["images"] = [[i.slot, i.version, bytes(i.hash).hex(), bool(i.active)] for i in s.images]
        print(json.dumps(out))

asyncio.run(main(sys.argv[1]))
"#;

/// `fieldpatch-lab smp-udp --advertise` in one namespace is found by an mDNS browser in
/// another, with the identity given on its command line, and its SMP answers.
#[cfg(target_os = "linux")]
#[test]
fn discover_finds_the_lab_binary_advertising_over_mdns() {
    use fieldpatch_lab::netns::VethPair;
    let pair = VethPair::create().expect("this test needs network namespaces");
    let mut child = pair
        .a
        .command(env!("CARGO_BIN_EXE_fieldpatch-lab"))
        .args(["smp-udp", "--bind", "192.0.2.1:1337", "--advertise", "--mdns-interface"])
        .arg(&pair.if_a)
        .args(["--vendor", "Acme", "--model", "acme_gateway", "--hardware-revision", "3.0.1"])
        .args(["--serial-number", "GW-BIN-7", "--running-version", "2.4.0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _guard = Kill(child);
    assert_eq!(line.trim(), "192.0.2.1:1337");

    let if_b = pair.if_b.clone();
    let report: Report = pair
        .b
        .run(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let request = Request {
                    mdns: Some(MdnsScope {
                        interfaces: vec![if_b],
                        listen: Duration::from_secs(4),
                        ..MdnsScope::default()
                    }),
                    deadline: Duration::from_secs(8),
                    ..Request::default()
                };
                Discovery::new(request).start().await.unwrap().collect().await
            })
        })
        .unwrap();
    assert_eq!(report.found.len(), 1, "{report:#?}");
    let found = &report.found[0];
    let Via::Mdns(adv) = &found.via else { panic!("{found:#?}") };
    assert_eq!(adv.instance, "acme_gateway-GW-BIN-7._mcumgr._udp.local.");
    assert_eq!(adv.host, "acme-gateway-gw-bin-7.local.");
    assert_eq!(adv.txt.get("sn").map(String::as_str), Some("GW-BIN-7"));
    assert_eq!(adv.txt.get("fw").map(String::as_str), Some("2.4.0"));
    assert_eq!(found.endpoint, Endpoint::Udp { addr: "192.0.2.1:1337".parse().unwrap() });
    let id = found.identity();
    assert_eq!(id.vendor.as_deref(), Some("Acme"));
    assert_eq!(id.model.as_deref(), Some("acme_gateway"));
    assert_eq!(id.hardware_revision.as_deref(), Some("3.0.1"));
    assert_eq!(id.serial_number.as_deref(), Some("GW-BIN-7"));
    // The firmware version is the probe's (live), the same as advertised.
    assert_eq!(found.report().unwrap().identity.firmware_version.as_deref(), Some("2.4.0"));
}

/// A lab device's TXT record follows its firmware: after an update and reset it announces the
/// new version.
#[cfg(target_os = "linux")]
#[test]
fn discover_lab_advertisement_follows_the_running_version() {
    use fieldpatch_lab::mdns::{AdvertiseOptions, advertise};
    use fieldpatch_lab::netns::Netns;
    use fieldpatch_lab::smp::mcuboot::{Version, build_image, test_payload};
    let ns = Netns::create().expect("this test needs a network namespace");
    let dev = device();
    let browse = |dev: SmpDevice| {
        ns.run(move || {
            let server =
                serve_udp(dev.clone(), "127.0.0.1:1337".parse().unwrap(), NetConditions::default())
                    .unwrap();
            let _adv =
                advertise(&dev, server.local_addr(), &AdvertiseOptions::on(&["lo"])).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let fw = |rt: &tokio::runtime::Runtime| {
                rt.block_on(async {
                    let request = Request {
                        mdns: Some(MdnsScope {
                            interfaces: vec!["lo".into()],
                            listen: Duration::from_secs(2),
                            probe_advertised: false,
                            ..MdnsScope::default()
                        }),
                        deadline: Duration::from_secs(3),
                        ..Request::default()
                    };
                    let report = Discovery::new(request).start().await.unwrap().collect().await;
                    match report.found.first().map(|f| &f.via) {
                        Some(Via::Mdns(adv)) => adv.identity.firmware_version.clone(),
                        _ => None,
                    }
                })
            };
            let before = fw(&rt);
            // Update: a new image, confirmed, and a reset.
            let img = build_image(
                Version { major: 1, minor: 5, revision: 0, build: 0 },
                &test_payload(2000, 5),
            );
            let client_rt = &rt;
            client_rt.block_on(async {
                let mut c = SmpClient::new(UdpLink::connect(server.local_addr()).await.unwrap());
                let hash = fieldpatch_lab::smp::mcuboot::parse(&img).unwrap().hash;
                c.upload_image(
                    &img,
                    Some(&hash),
                    fieldpatch_drivers::smp::AfterUpload::Confirm,
                    Default::default(),
                    &fieldpatch_drivers::progress::NoProgress,
                )
                .await
                .unwrap();
                c.reset().await.unwrap();
            });
            std::thread::sleep(Duration::from_millis(800));
            (before, fw(&rt))
        })
        .unwrap()
    };
    let (before, after) = browse(dev);
    assert_eq!(before.as_deref(), Some("1.0.0"));
    assert_eq!(after.as_deref(), Some("1.5.0"));
}

/// The binary's garbage pty talks continuously.
#[cfg(unix)]
#[test]
fn discover_lab_binary_serves_a_garbage_pty() {
    use std::io::Read;
    let mut child = Command::new(env!("CARGO_BIN_EXE_fieldpatch-lab"))
        .args(["garbage", "--seed", "9"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _guard = Kill(child);
    let mut port = std::fs::File::open(line.trim()).unwrap();
    let mut buf = [0u8; 512];
    let mut got = 0;
    while got < 512 {
        got += port.read(&mut buf).unwrap();
    }
}
