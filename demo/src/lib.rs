//! The built-in demo site: lab devices speaking the real protocols (SMP over a pty and UDP, USB
//! DFU through the lab backend) and a signed catalog for them, so the app and the CLI can be
//! tried, and demonstrated, without hardware.
//!
//! The demo catalog is signed by keys made for the demo and never written anywhere: only the trust
//! store (public keys), the signed bundles and the signed catalog listing go to disk. The demo's
//! trust store names a catalog key, so the demo shows the whole trust root: its catalog folder
//! carries `listing.json` (signed by that key, naming every bundle by hash) and its inventory
//! publishes that listing with the bundles. One LAN sensor is set to fail its health check after
//! the update, so a demo session shows a rollback.
//!
//! Where the real SWUpdate daemon (`swupdate`) is installed, the site also has an embedded Linux
//! gateway ([`GATEWAY_ID`]): the daemon with its web server on a loopback port, digest
//! authentication with a password made at each start (the daemon keeps only its digest; the
//! laptop gets the password in its keyring, [`Demo::store_gateway_password`]), its `raw` handler
//! writing into a file in the demo's folder, and a `.swu` signed by the demo gateway vendor in the
//! catalog. That vendor's key and certificate are part of the demo's source (`assets/`): like the
//! demo's other keys they are public, and only the demo's own trust store names the certificate.
//! Without the daemon the demo runs without the gateway and [`Demo::gateway_absent`] says why.

use fieldpatch_core::bundle::{PayloadFormat, Role};
use fieldpatch_core::credentials::{CredentialError, CredentialName, Secret};
use fieldpatch_core::discovery::{
    DEFAULT_DEADLINE, DiscoverOptions, NetTarget, NetworkScope, Request, SerialScope, SystemPorts,
};
use fieldpatch_core::image::dfu_file::DfuSuffix;
use fieldpatch_core::model::Version;
use fieldpatch_core::plan::{Criticality, DeviceAddress, DeviceRecord};
use fieldpatch_lab::dfu::LabUsbBus;
use fieldpatch_lab::smp::SmpDevice;
use fieldpatch_lab::smp::mcuboot::{self, build_image, test_payload};
use fieldpatch_lab::smp::udp::NetConditions;
use fieldpatch_testkit::catalog::{BundleSpec, CatalogBuilder, CatalogError, labelled_key};
use fieldpatch_testkit::site::{LabSite, SiteBuilder};
use fieldpatch_testkit::swupdate::{Daemon, DaemonAuth, Swu, Vendor};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Errors starting the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start a demo device: {0}")]
    Device(String),
    #[error("cannot write the demo catalog in {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("demo catalog: {0}")]
    Bundle(#[from] fieldpatch_core::bundle::BundleError),
    #[error("cannot keep the demo gateway's password in the keyring: {0}")]
    Keyring(String),
}

/// A running demo site. Devices stop when it is dropped.
#[derive(Debug)]
pub struct Demo {
    pub devices: Vec<DeviceRecord>,
    pub catalog_dir: PathBuf,
    pub trust_path: PathBuf,
    /// The USB bus the demo DFU board is on.
    pub usb: LabUsbBus,
    pub smp: Vec<SmpDevice>,
    /// Why the site has no SWUpdate gateway (`swupdate` not installed, or it would not start).
    pub gateway_absent: Option<String>,
    /// The SWUpdate gateway's daemon and password, when it runs.
    gateway: Option<Gateway>,
    /// The running devices: the console on a pty (not served where the platform has no
    /// pseudo-terminals), the LAN sensors on UDP, the DFU board on the lab USB bus.
    _site: LabSite,
}

/// The demo's SWUpdate gateway: the real daemon (stopped on drop) and the password its digest
/// file was made from.
struct Gateway {
    daemon: Daemon,
    password: Secret,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("url", &self.daemon.url()).finish_non_exhaustive()
    }
}

/// Id of the demo's SWUpdate gateway.
pub const GATEWAY_ID: &str = "edge-gw-01";
/// Its model, and the board name its daemon checks `.swu` images against.
const GATEWAY_MODEL: &str = "edge-gateway";
/// The keyring credential holding its password: scoped to the demo site, so it never stands for
/// a real device's.
pub const GATEWAY_CREDENTIAL: &str = "site/demo-site/edge-gateway/password";
const GATEWAY_VENDOR_CERT: &[u8] = include_bytes!("../assets/gateway-vendor.cert.pem");
const GATEWAY_VENDOR_KEY: &[u8] = include_bytes!("../assets/gateway-vendor.key.pem");

const V1: mcuboot::Version = mcuboot::Version { major: 1, minor: 4, revision: 0, build: 0 };
const V2: mcuboot::Version = mcuboot::Version { major: 1, minor: 5, revision: 0, build: 0 };

/// Start the demo site, writing its trust store and catalog under `dir`. Call it from a thread
/// that lives as long as the [`Demo`] (the main thread): on Linux the SWUpdate gateway's daemon is
/// killed by the kernel when that thread ends, so a killed demo leaves no daemon behind.
pub fn start(dir: &Path) -> Result<Demo, DemoError> {
    // Where the platform has no pseudo-terminals (Windows) the demo runs without its serial
    // console device; the LAN and USB devices work everywhere.
    let site = SiteBuilder::new()
        .vendor("Demo")
        .hardware_revision("2")
        .first_seed(1)
        .initial_image(V1, 8 * 1024)
        .reboot_time(Duration::from_millis(400))
        .net(NetConditions { added_rtt: Duration::from_millis(8), ..Default::default() })
        .flash_speed(64.0 * 1024.0)
        .console("pump-ctl-01", "pump-controller", Criticality::Critical)
        .flash_speed(96.0 * 1024.0)
        .udp_sensors(4, "sensor", Criticality::Normal, |i| format!("sensor-{:02}", i + 1))
        // A DFU device cannot report its version: the inventory's record says what it runs.
        .dfu_board("gateway-01", "gateway", Version::new(3, 0, 0, 0), Criticality::High)
        .start()
        .map_err(|e| DemoError::Device(e.to_string()))?;
    site.sensors[3].faults().fail_health_check = true;
    let usb =
        site.usb().ok_or_else(|| DemoError::Device("the demo site has no USB DFU board".into()))?;

    let mut devices = site.records.clone();
    let (gateway, swu, gateway_absent) = match start_gateway(dir) {
        Ok((gateway, record, swu)) => {
            devices.push(record);
            (Some(gateway), Some(swu), None)
        }
        Err(why) => (None, None, Some(why)),
    };
    let (catalog_dir, trust_path) = write_catalog(dir, swu.as_deref())?;
    Ok(Demo {
        devices,
        catalog_dir,
        trust_path,
        usb,
        smp: site.smp_devices(),
        gateway_absent,
        gateway,
        _site: site,
    })
}

/// Start the SWUpdate gateway in `dir/gateway`: the real daemon, its record and the `.swu` that
/// updates it from 2.0.0 to 2.1.0. `Err` says why the demo runs without it.
fn start_gateway(dir: &Path) -> Result<(Gateway, DeviceRecord, Vec<u8>), String> {
    let absent = |why: String| format!("the demo site has no SWUpdate gateway: {why}");
    let gw_dir = dir.join("gateway");
    // A daemon left from an earlier start in this folder is gone with its process; start clean.
    let _ = std::fs::remove_dir_all(&gw_dir);
    let vendor_dir = gw_dir.join("vendor");
    std::fs::create_dir_all(&vendor_dir).map_err(|e| absent(e.to_string()))?;
    let vendor = Vendor { cert: vendor_dir.join("cert.pem"), key: vendor_dir.join("key.pem") };
    std::fs::write(&vendor.cert, GATEWAY_VENDOR_CERT).map_err(|e| absent(e.to_string()))?;
    std::fs::write(&vendor.key, GATEWAY_VENDOR_KEY).map_err(|e| absent(e.to_string()))?;
    let password = Secret::new(
        rand::random::<[u8; 16]>().iter().map(|b| format!("{b:02x}")).collect::<String>(),
    );
    let auth = DaemonAuth {
        user: "admin".into(),
        realm: GATEWAY_ID.into(),
        password: password.expose().to_string(),
    };
    // Tied to this process: a demo that is killed leaves no daemon behind.
    let daemon = Daemon::try_start_tied(
        &gw_dir.join("daemon"),
        &format!("{GATEWAY_MODEL}:{GATEWAY_REVISION}"),
        &vendor.cert,
        Some(&auth),
    )
    .map_err(|e| match e.contains("cannot start the SWUpdate daemon") {
        true => absent("`swupdate` is not installed (on Debian: apt install swupdate)".into()),
        false => absent(e),
    })?;
    let rootfs: Vec<u8> =
        (0..256 * 1024u32).map(|i| (i.wrapping_mul(2246822519) >> 11) as u8).collect();
    let swu = Swu {
        version: "2.1.0".into(),
        hardware: vec![GATEWAY_REVISION.into()],
        image_name: "rootfs.img".into(),
        image: rootfs,
        device_path: daemon.flash.clone(),
        signer: Some(vendor),
        tamper: false,
    };
    let path = swu.try_write(&gw_dir, "edge-gateway-2.1.0.swu").map_err(absent)?;
    let bytes = std::fs::read(&path).map_err(|e| absent(e.to_string()))?;
    let mut record = fieldpatch_testkit::site::record(
        GATEWAY_ID,
        "Demo",
        GATEWAY_MODEL,
        DeviceAddress::Swupdate { url: daemon.url(), user: None },
    );
    // SWUpdate's web server does not say what runs: the inventory's record does.
    record.identity.firmware_version = Some(Version::new(2, 0, 0, 0));
    record.identity.hardware_revision = Some(GATEWAY_REVISION.into());
    record.identity.serial_number = Some(fieldpatch_testkit::site::serial_number(GATEWAY_ID));
    record.criticality = Criticality::High;
    record.credential = Some(GATEWAY_CREDENTIAL.into());
    Ok((Gateway { daemon, password }, record, bytes))
}

/// The demo gateway's hardware revision (its daemon's `-H BOARD:REV`).
const GATEWAY_REVISION: &str = "2";

/// The demo's keys are derived from public labels, so every start signs with the same keys: the
/// trust store the demo's data directory pinned at its first sync stays the one in force. They
/// sign only the demo's catalog, which only the demo's own data directory ever trusts.
fn write_catalog(dir: &Path, gateway_swu: Option<&[u8]>) -> Result<(PathBuf, PathBuf), DemoError> {
    let now = chrono::Utc::now();
    let catalog = CatalogBuilder::new()
        .root(labelled_key("demo root"), "demo root")
        .release(labelled_key("demo release A"), "demo release A")
        .release(labelled_key("demo release B"), "demo release B")
        .catalog_key(labelled_key("demo catalog"), "demo catalog")
        // Named whether or not the gateway runs, so the trust store is the same at every start.
        .vendor_certificate(GATEWAY_VENDOR_CERT, "demo gateway vendor")
        .threshold(Role::Root, 1)
        .threshold(Role::Release, 2)
        .threshold(Role::Catalog, 1)
        .vendor("Demo")
        .payload_name("image.bin")
        .cves(&["CVE-2026-4242"])
        .test_report(b"demo test report")
        .valid(now - chrono::Duration::days(2), now + chrono::Duration::days(60))
        .release_note("demo release")
        .write(dir)
        .map_err(catalog_error)?;
    let bundle = |spec: BundleSpec<'_>| catalog.bundle(&spec).map_err(catalog_error);
    let v = |a, b, c| Version::new(a, b, c, 0);
    let image = build_image(V2, &test_payload(24 * 1024, 77));
    for (id, model, cvss) in
        [("pump-controller-1.5.0", "pump-controller", "9.1"), ("sensor-1.5.0", "sensor", "7.4")]
    {
        bundle(BundleSpec {
            id,
            model,
            applies: (v(1, 0, 0), v(1, 4, 9)),
            installs: v(1, 5, 0),
            cvss,
            format: PayloadFormat::Mcuboot,
            payload: &image,
        })?;
    }
    let firmware: Vec<u8> =
        (0..32 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    let dfu = DfuSuffix {
        bcd_device: 0xFFFF,
        id_product: 0x0002,
        id_vendor: 0x1209,
        bcd_dfu: 0x0110,
        length: 16,
        crc: 0,
    }
    .append_to(&firmware);
    bundle(BundleSpec {
        id: "gateway-3.1.0",
        model: "gateway",
        applies: (v(3, 0, 0), v(3, 0, 9)),
        installs: v(3, 1, 0),
        cvss: "6.5",
        format: PayloadFormat::Dfu,
        payload: &dfu,
    })?;
    if let Some(swu) = gateway_swu {
        bundle(BundleSpec {
            id: "edge-gateway-2.1.0",
            model: GATEWAY_MODEL,
            applies: (v(2, 0, 0), v(2, 0, 9)),
            installs: v(2, 1, 0),
            cvss: "8.1",
            format: PayloadFormat::Swupdate,
            payload: swu,
        })?;
    }
    // The listing names the bundles just written; its version is the time, so a demo restarted
    // later publishes a newer one.
    let version = u64::try_from(now.timestamp()).unwrap_or_default();
    catalog.write_listing(version, now + chrono::Duration::days(60)).map_err(catalog_error)?;
    Ok((catalog.catalog_dir, catalog.trust_path))
}

fn catalog_error(e: CatalogError) -> DemoError {
    match e {
        CatalogError::Write { path, source } => DemoError::Write { path, source },
        CatalogError::Bundle(e) => DemoError::Bundle(e),
    }
}

/// What the demo site looks like to an inventory: the site, its devices with their approved
/// versions, the published catalog and the trust store.
#[derive(Debug, Clone)]
pub struct InventoryContent {
    pub site: fieldpatch_core::sync::wire::Site,
    pub devices: Vec<fieldpatch_core::sync::wire::Device>,
    /// `(bundle id, version it installs, manifest JSON, bundle file bytes)`.
    pub bundles: Vec<(String, String, serde_json::Value, Vec<u8>)>,
    pub trust_store: serde_json::Value,
    /// The signed catalog listing of the demo catalog folder (its trust store names a catalog
    /// key, so laptops require it).
    pub catalog_listing: Option<serde_json::Value>,
}

/// Id of the demo site in the inventory.
pub const SITE_ID: &str = "demo-site";

impl Demo {
    /// Put the SWUpdate gateway's password into the keyring `fp` uses, under
    /// [`GATEWAY_CREDENTIAL`], as a technician would before the visit (nothing when the site has
    /// no gateway). The password changes at every start of the demo.
    pub async fn store_gateway_password(
        &self,
        fp: &fieldpatch_core::Fieldpatch,
    ) -> Result<(), DemoError> {
        let Some(gateway) = &self.gateway else { return Ok(()) };
        let name: CredentialName = GATEWAY_CREDENTIAL
            .parse()
            .map_err(|e: CredentialError| DemoError::Keyring(e.to_string()))?;
        let keyring = fp.credentials().await.map_err(|e| DemoError::Keyring(e.to_string()))?;
        keyring.set(&name, &gateway.password).await.map_err(|e| DemoError::Keyring(e.to_string()))
    }
}

impl Demo {
    /// The demo site as an inventory should hold it; each device is approved at the newest
    /// version the verified `catalog` installs for its model.
    pub fn inventory_content(
        &self,
        catalog: &fieldpatch_core::catalog::Catalog,
    ) -> Result<InventoryContent, DemoError> {
        use fieldpatch_core::sync::wire;
        let read = |path: &Path| {
            std::fs::read(path)
                .map_err(|source| DemoError::Write { path: path.to_path_buf(), source })
        };
        let entries = catalog.entries();
        let approved = |model: Option<&String>| {
            entries
                .iter()
                .filter(|e| Some(&e.model) == model)
                .map(|e| e.installs)
                .max()
                .map(|v| v.to_string())
        };
        let devices = self
            .devices
            .iter()
            .map(|d| wire::Device {
                id: d.id.clone(),
                site_id: SITE_ID.into(),
                vendor: d.identity.vendor.clone(),
                model: d.identity.model.clone(),
                hardware_revision: d.identity.hardware_revision.clone(),
                serial_number: d.identity.serial_number.clone(),
                approved_version: approved(d.identity.model.as_ref()),
                current_firmware: None,
                last_visit: None,
                failures: 0,
                last_failure: None,
                not_patched_reason: None,
            })
            .collect();
        let mut bundles = Vec::new();
        for b in &catalog.bundles {
            let m = b.bundle.manifest();
            let manifest = serde_json::to_value(m)
                .map_err(|e| DemoError::Device(format!("demo bundle {}: {e}", m.bundle_id)))?;
            bundles.push((m.bundle_id.clone(), m.installs.to_string(), manifest, read(&b.path)?));
        }
        let trust_store = serde_json::from_slice(&read(&self.trust_path)?).map_err(|e| {
            DemoError::Device(format!("demo trust store {}: {e}", self.trust_path.display()))
        })?;
        let listing_path = fieldpatch_core::bundle::listing::listing_path(&self.catalog_dir);
        let catalog_listing = match listing_path.exists() {
            false => None,
            true => Some(serde_json::from_slice(&read(&listing_path)?).map_err(|e| {
                DemoError::Device(format!("demo catalog listing {}: {e}", listing_path.display()))
            })?),
        };
        Ok(InventoryContent {
            site: wire::Site { id: SITE_ID.into(), name: "Demo site".into(), address: None },
            devices,
            bundles,
            trust_store,
            catalog_listing,
        })
    }
}

impl Demo {
    /// Where discovery looks for the demo's devices: the console's pty, each sensor's UDP address
    /// (as a `--net` target) and the lab USB bus (listed through the connector the facade was
    /// opened with, [`Demo::usb`]), matched against the demo site so its devices not found are
    /// listed as missing.
    pub fn discover_options(&self) -> DiscoverOptions {
        let mut ports = Vec::new();
        let mut bauds = Vec::new();
        let mut targets = Vec::new();
        for d in &self.devices {
            match &d.address {
                DeviceAddress::Serial { port, baud } => {
                    ports.push(PathBuf::from(port));
                    if !bauds.contains(baud) {
                        bauds.push(*baud);
                    }
                }
                DeviceAddress::Udp { addr } => {
                    targets.extend(addr.parse::<NetTarget>().ok());
                }
                DeviceAddress::Usb { .. }
                | DeviceAddress::Swupdate { .. }
                | DeviceAddress::Esp { .. } => {}
            }
        }
        let serial = (!ports.is_empty()).then(|| SerialScope {
            system_ports: SystemPorts::None,
            paths: ports,
            bauds,
            ..SerialScope::default()
        });
        let network = (!targets.is_empty()).then(|| NetworkScope { targets, ..Default::default() });
        DiscoverOptions {
            request: Request { serial, network, mdns: None, deadline: DEFAULT_DEADLINE },
            usb: true,
            work_order: None,
            site: Some(SITE_ID.into()),
            visit: None,
            esp: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Discovery looks exactly where the demo's devices are: their pty, their UDP sockets, the
    /// lab USB bus, and matches against the demo site.
    #[test]
    fn discovery_looks_at_every_demo_device() {
        let dir = std::env::temp_dir().join(format!("fieldpatch-demo-disc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let demo = start(&dir).unwrap();
        let options = demo.discover_options();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(options.usb);
        assert_eq!(options.site.as_deref(), Some(SITE_ID));
        let udp: Vec<String> = demo
            .devices
            .iter()
            .filter_map(|d| match &d.address {
                DeviceAddress::Udp { addr } => Some(addr.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(udp.len(), 4);
        let network = options.request.network.expect("the sensors are probed over UDP");
        let targets: Vec<String> = network.targets.iter().map(|t| t.to_string()).collect();
        for addr in &udp {
            assert!(targets.iter().any(|t| t.contains(addr.as_str())), "{addr} not in {targets:?}");
        }
        if let Some(DeviceAddress::Serial { port, .. }) = demo
            .devices
            .iter()
            .map(|d| &d.address)
            .find(|a| matches!(a, DeviceAddress::Serial { .. }))
        {
            let serial = options.request.serial.expect("the console is probed on its pty");
            assert_eq!(serial.paths, vec![PathBuf::from(port)]);
            assert_eq!(serial.system_ports, SystemPorts::None, "no other port is opened");
        }
        // Every device says who it is, as its inventory record does.
        for d in &demo.devices {
            let sn = d.identity.serial_number.as_deref().unwrap_or_default();
            assert!(sn.starts_with("SN-"), "{}: {sn:?}", d.id);
        }
    }

    /// The demo's data directory pins the trust store at its first sync; a later start must offer
    /// the same document, or every sync after the first start would be refused.
    #[test]
    fn every_start_writes_the_same_trust_store() {
        let base =
            std::env::temp_dir().join(format!("fieldpatch-demo-trust-{}", std::process::id()));
        let (a, b) = (base.join("a"), base.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        // One start with its SWUpdate gateway (where `swupdate` runs), one catalog without.
        let demo = start(&a).unwrap();
        let trust_a = demo.trust_path.clone();
        let (_, trust_b) = write_catalog(&b, None).unwrap();
        let same = std::fs::read(&trust_a).unwrap() == std::fs::read(&trust_b).unwrap();
        drop(demo);
        std::fs::remove_dir_all(&base).unwrap();
        assert!(same, "two starts of the demo wrote different trust stores");
    }

    /// Where `swupdate` is installed (`scripts/setup` installs it) the demo site has its gateway:
    /// the real daemon, which refuses a request without digest credentials, and a `.swu` bundle
    /// for it that verifies against the demo's trust store like every other bundle.
    #[test]
    fn the_demo_gateway_is_the_real_daemon_and_its_bundle_verifies() {
        use std::io::{Read as _, Write as _};
        let dir = std::env::temp_dir().join(format!("fieldpatch-demo-gw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let demo = start(&dir).unwrap();
        assert_eq!(demo.gateway_absent, None);
        let gateway = demo.devices.iter().find(|d| d.id == GATEWAY_ID).expect("the gateway");
        assert_eq!(gateway.credential.as_deref(), Some(GATEWAY_CREDENTIAL));
        let DeviceAddress::Swupdate { url, .. } = &gateway.address else {
            panic!("{:?}", gateway.address)
        };
        let host = url.trim_start_matches("http://");
        let mut http = std::net::TcpStream::connect(host).unwrap();
        write!(http, "GET /upload HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        http.read_to_string(&mut answer).unwrap();
        let policy = fieldpatch_core::bundle::verify::VerifyPolicy::now();
        let catalog = fieldpatch_core::session::batch::load_catalog(
            &demo.catalog_dir,
            &demo.trust_path,
            &policy,
        )
        .unwrap();
        let models: Vec<String> =
            catalog.bundles.iter().map(|b| b.bundle.manifest().target.model.clone()).collect();
        drop(demo);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(catalog.refused.is_empty(), "{:?}", catalog.refused);
        assert!(models.iter().any(|m| m == GATEWAY_MODEL), "{models:?}");
    }
}
