//! The built-in demo site: lab devices speaking the real protocols (SMP over a pty and UDP, USB
//! DFU through the lab backend) and a signed catalog for them, so the app and the CLI can be
//! tried, and demonstrated, without hardware.
//!
//! The demo catalog is signed by keys made for the demo and never written anywhere: only the trust
//! store (public keys) and the signed bundles go to disk. One LAN sensor is set to fail its health
//! check after the update, so a demo session shows a rollback.

use ed25519_dalek::SigningKey;
use fieldpatch_core::bundle::container::assemble_raw;
use fieldpatch_core::bundle::signature::{self, CONTEXT_MANIFEST};
use fieldpatch_core::bundle::{
    Evidence, Manifest, PayloadEntry, PayloadFormat, RevisionRange, Role, Severity, Target,
    TrustStore, TrustStoreBody, TrustedKey, VersionRange, key_id,
};
use fieldpatch_core::image::dfu_file::DfuSuffix;
use fieldpatch_core::model::{DeviceIdentity, Version};
use fieldpatch_core::plan::{Criticality, DeviceAddress, DeviceRecord};
use fieldpatch_lab::dfu::{LabDfu, LabDfuConfig, LabUsbBus};
use fieldpatch_lab::pty::PtyError;
use fieldpatch_lab::smp::mcuboot::{self, build_image, test_payload};
use fieldpatch_lab::smp::serial::{SerialServer, serve_pty};
use fieldpatch_lab::smp::udp::{NetConditions, UdpServer, serve_udp};
use fieldpatch_lab::smp::{DeviceConfig, SmpDevice};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
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
    /// The console device's pty (`None` where the platform has no pseudo-terminals).
    _serial: Option<SerialServer>,
    _udp: Vec<UdpServer>,
    _dfu: LabDfu,
}

const V1: mcuboot::Version = mcuboot::Version { major: 1, minor: 4, revision: 0, build: 0 };
const V2: mcuboot::Version = mcuboot::Version { major: 1, minor: 5, revision: 0, build: 0 };

fn record(id: &str, model: &str, address: DeviceAddress, crit: Criticality) -> DeviceRecord {
    DeviceRecord {
        id: id.into(),
        address,
        identity: DeviceIdentity {
            vendor: Some("Demo".into()),
            model: Some(model.into()),
            hardware_revision: Some("2".into()),
            ..Default::default()
        },
        criticality: crit,
        windows: vec![],
        credential: None,
    }
}

/// Start the demo site, writing its trust store and catalog under `dir`.
pub fn start(dir: &Path) -> Result<Demo, DemoError> {
    let dev_err = |e: &dyn std::fmt::Display| DemoError::Device(e.to_string());
    let smp_device = |seed: u8, flash: f64| {
        SmpDevice::new(DeviceConfig {
            initial_image: build_image(V1, &test_payload(8 * 1024, seed)),
            flash_bytes_per_sec: flash,
            reboot_time: Duration::from_millis(400),
            ..Default::default()
        })
    };
    let console = smp_device(1, 64.0 * 1024.0);
    let lan: Vec<SmpDevice> = (2..6).map(|s| smp_device(s, 96.0 * 1024.0)).collect();
    lan[3].faults().fail_health_check = true;
    // Where the platform has no pseudo-terminals (Windows) the demo runs without its serial
    // console device; the LAN and USB devices work everywhere.
    let serial = match serve_pty(console.clone(), 115_200) {
        Ok(s) => Some(s),
        Err(PtyError::Unsupported) => None,
        Err(e) => return Err(dev_err(&e)),
    };
    let net = NetConditions { added_rtt: Duration::from_millis(8), ..Default::default() };
    let udp: Vec<UdpServer> = lan
        .iter()
        .map(|d| serve_udp(d.clone(), "127.0.0.1:0".parse().expect("address"), net))
        .collect::<Result<_, _>>()
        .map_err(|e| dev_err(&e))?;
    let mut cfg = LabDfuConfig::plain_dfu();
    cfg.start_in_runtime = false;
    let board = LabDfu::new(cfg);

    let mut devices: Vec<DeviceRecord> = serial
        .iter()
        .map(|serial| {
            record(
                "pump-ctl-01",
                "pump-controller",
                DeviceAddress::Serial { port: serial.path().display().to_string(), baud: 115_200 },
                Criticality::Critical,
            )
        })
        .collect();
    for (i, s) in udp.iter().enumerate() {
        devices.push(record(
            &format!("sensor-{:02}", i + 1),
            "sensor",
            DeviceAddress::Udp { addr: s.local_addr().to_string() },
            Criticality::Normal,
        ));
    }
    let mut usb = record(
        "gateway-01",
        "gateway",
        DeviceAddress::Usb { vid: 0x1209, pid: 0x0002, serial: None },
        Criticality::High,
    );
    // A DFU device cannot report its version: the inventory's record says what it runs.
    usb.identity.firmware_version = Some(Version::new(3, 0, 0, 0));
    devices.push(usb);

    let (catalog_dir, trust_path) = write_catalog(dir)?;
    let mut smp = vec![console];
    smp.extend(lan);
    Ok(Demo {
        devices,
        catalog_dir,
        trust_path,
        usb: board.bus(),
        smp,
        _serial: serial,
        _udp: udp,
        _dfu: board,
    })
}

fn write_catalog(dir: &Path) -> Result<(PathBuf, PathBuf), DemoError> {
    let write = |path: &Path, bytes: &[u8]| {
        std::fs::write(path, bytes)
            .map_err(|source| DemoError::Write { path: path.to_path_buf(), source })
    };
    let catalog_dir = dir.join("catalog");
    std::fs::create_dir_all(&catalog_dir)
        .map_err(|source| DemoError::Write { path: catalog_dir.clone(), source })?;
    let mut rng = rand::rngs::OsRng;
    let root = SigningKey::generate(&mut rng);
    let release = [SigningKey::generate(&mut rng), SigningKey::generate(&mut rng)];
    let keys = vec![
        TrustedKey::new(&root.verifying_key(), vec![Role::Root], "demo root"),
        TrustedKey::new(&release[0].verifying_key(), vec![Role::Release], "demo release A"),
        TrustedKey::new(&release[1].verifying_key(), vec![Role::Release], "demo release B"),
    ];
    let thresholds = BTreeMap::from([(Role::Root, 1), (Role::Release, 2)]);
    let trust =
        TrustStore::provision(TrustStoreBody { version: 1, keys, thresholds }.sign(&[&root]))?;
    let trust_path = dir.join("trust.json");
    let doc = serde_json::to_vec_pretty(trust.document()).expect("a trust store serializes");
    write(&trust_path, &doc)?;

    let now = chrono::Utc::now();
    let approvers: Vec<String> = release.iter().map(|k| key_id(&k.verifying_key())).collect();
    let bundle = |id: &str,
                  model: &str,
                  applies: (Version, Version),
                  installs: Version,
                  cvss: &str,
                  format: PayloadFormat,
                  payload: &[u8]|
     -> Result<(), DemoError> {
        let manifest = Manifest {
            schema: 1,
            bundle_id: id.into(),
            bundle_version: 1,
            target: Target {
                vendor: "Demo".into(),
                model: model.into(),
                hardware_revision: RevisionRange::default(),
            },
            applies_to: VersionRange { min: applies.0, max: applies.1 },
            installs,
            payloads: vec![PayloadEntry {
                name: "image.bin".into(),
                format,
                length: payload.len() as u64,
                sha256: hex::encode(Sha256::digest(payload)),
            }],
            severity: Severity { cvss: Some(cvss.into()), cves: vec!["CVE-2026-4242".into()] },
            created: now - chrono::Duration::days(2),
            expires: now + chrono::Duration::days(60),
            evidence: Evidence {
                test_report_sha256: hex::encode(Sha256::digest(b"demo test report")),
                approvers: approvers.clone(),
            },
            release_notes: format!("{model} {installs}: demo release"),
        };
        let mb = manifest.canonical_bytes()?;
        let sigs: Vec<_> =
            release.iter().map(|k| signature::sign(CONTEXT_MANIFEST, &mb, k)).collect();
        write(&catalog_dir.join(format!("{id}.fpb")), &assemble_raw(&mb, &sigs, &[payload]))
    };
    let v = |a, b, c| Version::new(a, b, c, 0);
    let image = build_image(V2, &test_payload(24 * 1024, 77));
    for (id, model, cvss) in
        [("pump-controller-1.5.0", "pump-controller", "9.1"), ("sensor-1.5.0", "sensor", "7.4")]
    {
        bundle(
            id,
            model,
            (v(1, 0, 0), v(1, 4, 9)),
            v(1, 5, 0),
            cvss,
            PayloadFormat::Mcuboot,
            &image,
        )?;
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
    bundle(
        "gateway-3.1.0",
        "gateway",
        (v(3, 0, 0), v(3, 0, 9)),
        v(3, 1, 0),
        "6.5",
        PayloadFormat::Dfu,
        &dfu,
    )?;
    Ok((catalog_dir, trust_path))
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
}

/// Id of the demo site in the inventory.
pub const SITE_ID: &str = "demo-site";

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
                serial_number: None,
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
            let manifest = serde_json::to_value(m).expect("a manifest serializes");
            bundles.push((m.bundle_id.clone(), m.installs.to_string(), manifest, read(&b.path)?));
        }
        let trust_store = serde_json::from_slice(&read(&self.trust_path)?).map_err(|e| {
            DemoError::Device(format!("demo trust store {}: {e}", self.trust_path.display()))
        })?;
        Ok(InventoryContent {
            site: wire::Site { id: SITE_ID.into(), name: "Demo site".into(), address: None },
            devices,
            bundles,
            trust_store,
        })
    }
}
