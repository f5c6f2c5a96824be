//! The fault campaign: randomized flash runs against lab devices, each with one fault drawn from
//! what the field throws at a technician, checked against the invariants that must never break.
//!
//! One run: a fresh data directory and one device of a family (SMP over UDP, SMP on a serial
//! pty, USB DFU on the lab bus, an ESP32 in its ROM loader on a pty ([`esp`]), an SWUpdate
//! gateway on the real daemon behind a loopback proxy ([`swupdate`])), identified, planned and
//! flashed through the facade ([`Fieldpatch::run_session`], what the CLI and the app call) with
//! one fault:
//!
//! | fault | families | what happens |
//! |---|---|---|
//! | `none` | all | nothing: the baseline |
//! | `drop_frames` | SMP, ESP | the device loses every Nth frame it receives (SMP); one to three frames from a random FLASH_DATA block, or the next frames of any kind (ESP) |
//! | `corrupt_frames` | SMP | every Nth frame it sends has one byte flipped |
//! | `duplicate_frames` | SMP | every Nth answer is sent twice |
//! | `reorder_frames` | SMP | every Nth answer is held back and sent after the next one (or after the answer to the laptop's retry) |
//! | `stall` | SMP, ESP, SWUpdate | the device goes silent for up to 4 s at a random upload offset (SMP); the ROM loader answers nothing after a random number of commands until it is reset (ESP); the proxy forwards nothing after a random byte of the upload until the laptop gives up (SWUpdate: longer than the upload timeout, at least 30 s) |
//! | `reboot_mid_upload` | SMP | the device reboots at a random upload offset (the partial image stays) |
//! | `power_loss_on_test_boot` | SMP | power is lost during the test boot: MCUboot reverts |
//! | `fails_health_check` | SMP | the new image does not come up: the watchdog resets, MCUboot reverts |
//! | `stalled_dnload` | DFU | the device stalls the Nth data DNLOAD and enters dfuERROR |
//! | `verify_error` | DFU | the device reports errVERIFY at manifestation |
//! | `garbage_status` | DFU | GETSTATUS answers random bytes |
//! | `bad_checksum` | ESP | one to three FLASH_DATA blocks from a random one are answered with the checksum error, as if the line garbled them |
//! | `flash_write_fail` | ESP | the flash never keeps a random block (ROM error 0x08, every time) |
//! | `corrupt_flash` | ESP | the flash keeps a random block with one bit flipped and the ROM does not notice (only the MD5 check can) |
//! | `crash_at_boot_rollback` | ESP | the new application panics at boot; the bootloader has rollback |
//! | `crash_at_boot` | ESP | the same without rollback in the bootloader: the device keeps restarting |
//! | `cut_upload` | SWUpdate | the proxy closes the upload's connection after a random byte |
//! | `daemon_killed` | SWUpdate | the daemon is killed at a random moment of the upload or install (a power cut) and started again up to 2 s later, its flash kept |
//! | `refused_by_daemon` | SWUpdate | the inventory records the gateway as hardware revision 2.0, so it gets the signed 2.0 image, which passes every laptop-side check; the gateway is 1.0 and its daemon refuses it |
//! | `killed` | all | the session is cut off at a random moment (its task dropped, as a killed process leaves it), then resumed from the store by a new facade |
//! | `clock_jump` | all | the laptop's clock jumps at a random moment (before the session or up to 1.5 s into it): back within the 10 min tolerance, back beyond it (by up to 30 days), or forward (by up to 60 days, often past the bundles' expiry); a data directory that had synced just before. A session that stops on a clock set back is resumed once the clock is set right |
//! | `sigkill` | SMP | the session runs in the `fieldpatch` CLI, a process of its own reaching the lab device over its UDP socket or pty, which is SIGKILLed at a random moment; a new facade resumes the session (the other families' lab devices live inside the campaign's process: the USB bus seam, the ESP's wired port, the gateway's keyring credential, so they have `killed` only) |
//! | `disk_full` | all | the data directory is a small filesystem of its own (a 32 MiB tmpfs), filled to the last byte at a random moment of the session; once the session has ended or stopped, the space is freed (as a technician would) and the session resumed by a new facade |
//!
//! After each run the invariants are checked, each of which must hold every time:
//! 1. **bootable**: the device runs a confirmed image (SMP), or its old or new firmware, or
//!    waits in its DFU bootloader (which a new download recovers); an ESP boots its old or new
//!    application byte for byte, or after a failure said so waits in its ROM loader, or
//!    restarts over exactly the new application that crashes (see [`esp`]); a gateway's flash
//!    holds its old content or exactly the new image once the daemon has settled;
//! 2. **honest success**: a device reported patched (or, ESP, unverified with the version) runs
//!    exactly the verified new image (ESP: the slot its last reset started holds it; SWUpdate:
//!    the flash file is the new image);
//! 3. **log**: every visit log verifies as a chain, no event id appears twice, and the device's
//!    last outcome event says what the session says (none lost);
//! 4. **no secret on disk**: a device secret kept in the OS keyring for the campaign appears in
//!    no file of the data directory. It is also the SWUpdate gateway's digest password, read
//!    from the keyring when the gateway is opened.
//!
//! Every run is reproducible from its seed: the family, the fault and its parameters come from a
//! small deterministic generator ([`Draw`]) seeded with it (the SWUpdate daemon is shared by the
//! runs of a campaign, so what a run leaves in it can matter: it is settled after each run).

pub mod esp;
pub mod swupdate;

use crate::kit::{BundleSpec, Kit};
use fieldpatch_core::Fieldpatch;
use fieldpatch_core::bundle::PayloadFormat;
use fieldpatch_core::catalog::Catalog;
use fieldpatch_core::flash::{FlashTarget, TargetError};
use fieldpatch_core::image::dfu_file::DfuSuffix;
use fieldpatch_core::plan::{Criticality, DeviceRecord};
use fieldpatch_core::session::Connector;
use fieldpatch_core::session::{DeviceStatus, SessionOptions, SessionState, Threshold};
use fieldpatch_lab::dfu::{LabDfuFaults, LabMode};
use fieldpatch_lab::smp::mcuboot::{Version, build_image, test_payload};
use fieldpatch_testkit::site::{LabSite, SiteBuilder};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

/// Device families the campaign flashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    SmpUdp,
    SmpSerial,
    Dfu,
    Esp,
    Swupdate,
}

impl Family {
    pub const ALL: [Family; 5] =
        [Family::SmpUdp, Family::SmpSerial, Family::Dfu, Family::Esp, Family::Swupdate];

    pub fn name(self) -> &'static str {
        match self {
            Family::SmpUdp => "SMP over UDP",
            Family::SmpSerial => "SMP serial",
            Family::Dfu => "USB DFU",
            Family::Esp => "ESP32 ROM loader",
            Family::Swupdate => "SWUpdate",
        }
    }

    /// The faults that apply to this family.
    pub fn faults(self) -> &'static [Fault] {
        match self {
            Family::SmpUdp | Family::SmpSerial => &[
                Fault::None,
                Fault::DropFrames,
                Fault::CorruptFrames,
                Fault::DuplicateFrames,
                Fault::ReorderFrames,
                Fault::Stall,
                Fault::RebootMidUpload,
                Fault::PowerLossOnTestBoot,
                Fault::FailsHealthCheck,
                Fault::Killed,
                Fault::DiskFull,
                Fault::ClockJump,
                Fault::ProcessKilled,
            ],
            Family::Dfu => &[
                Fault::None,
                Fault::StalledDnload,
                Fault::VerifyError,
                Fault::GarbageStatus,
                Fault::Killed,
                Fault::DiskFull,
                Fault::ClockJump,
            ],
            Family::Esp => &[
                Fault::None,
                Fault::DropFrames,
                Fault::BadChecksum,
                Fault::FlashWriteFail,
                Fault::CorruptFlash,
                Fault::Stall,
                Fault::CrashAtBootRollback,
                Fault::CrashAtBoot,
                Fault::Killed,
                Fault::DiskFull,
                Fault::ClockJump,
            ],
            Family::Swupdate => &[
                Fault::None,
                Fault::CutUpload,
                Fault::DaemonKilled,
                Fault::Stall,
                Fault::RefusedByDaemon,
                Fault::Killed,
                Fault::DiskFull,
                Fault::ClockJump,
            ],
        }
    }
}

/// One fault per run (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    None,
    DropFrames,
    CorruptFrames,
    DuplicateFrames,
    ReorderFrames,
    Stall,
    RebootMidUpload,
    PowerLossOnTestBoot,
    FailsHealthCheck,
    StalledDnload,
    VerifyError,
    GarbageStatus,
    BadChecksum,
    FlashWriteFail,
    CorruptFlash,
    CrashAtBootRollback,
    CrashAtBoot,
    CutUpload,
    DaemonKilled,
    RefusedByDaemon,
    Killed,
    DiskFull,
    ClockJump,
    ProcessKilled,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::DropFrames => "drop_frames",
            Fault::CorruptFrames => "corrupt_frames",
            Fault::DuplicateFrames => "duplicate_frames",
            Fault::ReorderFrames => "reorder_frames",
            Fault::Stall => "stall",
            Fault::RebootMidUpload => "reboot_mid_upload",
            Fault::PowerLossOnTestBoot => "power_loss_on_test_boot",
            Fault::FailsHealthCheck => "fails_health_check",
            Fault::StalledDnload => "stalled_dnload",
            Fault::VerifyError => "verify_error",
            Fault::GarbageStatus => "garbage_status",
            Fault::BadChecksum => "bad_checksum",
            Fault::FlashWriteFail => "flash_write_fail",
            Fault::CorruptFlash => "corrupt_flash",
            Fault::CrashAtBootRollback => "crash_at_boot_rollback",
            Fault::CrashAtBoot => "crash_at_boot",
            Fault::CutUpload => "cut_upload",
            Fault::DaemonKilled => "daemon_killed",
            Fault::RefusedByDaemon => "refused_by_daemon",
            Fault::Killed => "killed",
            Fault::DiskFull => "disk_full",
            Fault::ClockJump => "clock_jump",
            Fault::ProcessKilled => "sigkill",
        }
    }
}

/// How a run ended, when every invariant held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ending {
    /// Patched in one go.
    Succeeded,
    /// Patched after the session was cut off and resumed.
    Resumed,
    /// The device reverted to its previous image (reported as rolled back).
    RolledBack,
    /// The flash failed and said so; the device is bootable or recoverable.
    FailedCleanly,
    /// The session stopped short of the device (it is untouched and reported as not patched).
    NotAttempted,
}

impl Ending {
    pub fn name(self) -> &'static str {
        match self {
            Ending::Succeeded => "succeeded",
            Ending::Resumed => "resumed",
            Ending::RolledBack => "rolled back",
            Ending::FailedCleanly => "failed cleanly",
            Ending::NotAttempted => "not attempted",
        }
    }
}

/// One run's record.
#[derive(Debug, Clone)]
pub struct Run {
    pub seed: u64,
    pub family: Family,
    pub fault: Fault,
    /// What was drawn for the fault (offsets, periods, delays).
    pub detail: String,
    pub ending: Ending,
    /// Broken invariants (empty: the run is clean).
    pub violations: Vec<String>,
    pub elapsed: Duration,
}

/// A small deterministic generator (SplitMix64): the same seed draws the same run.
#[derive(Debug, Clone)]
pub struct Draw(u64);

impl Draw {
    pub fn new(seed: u64) -> Draw {
        Draw(seed)
    }

    pub fn word(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..hi` (`lo` when the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo { lo } else { lo + self.word() % (hi - lo) }
    }
}

/// What every run flashes: a signed catalog with a 2.0.0 MCUboot image for the sensors and a DFU
/// file for the board, made once with the `fieldpatch` binary; and a second one, signed in
/// process with the gateway vendor's certificate in its trust store, with the ESP bundles
/// (see [`esp`]) and the gateways' `.swu` (2.1.0, hardware revision 1.0, and the same for 2.0).
/// It also holds the campaign's SWUpdate gateway, whose daemon is shared by the runs.
#[derive(Debug)]
pub struct Release {
    pub catalog: Arc<Catalog>,
    /// The ESP and SWUpdate bundles.
    pub more: Arc<Catalog>,
    new_image: Vec<u8>,
    new_hash: Vec<u8>,
    dfu_payload: Vec<u8>,
    esp: esp::EspRelease,
    gateway: Arc<swupdate::Gateway>,
    /// The gateway's flash before (`old_rootfs`) and after the update.
    old_rootfs: Vec<u8>,
    rootfs: Vec<u8>,
    /// The `.swu`'s length (where the upload faults fall).
    swu_len: u64,
    /// The signed catalog folder and trust store (what the CLI is given).
    kit: Kit,
}

/// The size of the new SMP image and of the DFU payload.
const IMAGE_LEN: usize = 8 * 1024;

impl Release {
    /// Make the release in `dir`.
    pub fn make(dir: &Path) -> Release {
        let kit = Kit::new(dir);
        let v2 = Version { major: 2, minor: 0, revision: 0, build: 0 };
        let new_image = build_image(v2, &test_payload(IMAGE_LEN, 42));
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
        let dfu_payload: Vec<u8> = (0..IMAGE_LEN as u32).map(|i| (i * 31 % 251) as u8).collect();
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
        let catalog = fieldpatch_core::session::batch::load_catalog(
            &kit.catalog,
            &kit.trust,
            &fieldpatch_core::bundle::verify::VerifyPolicy::now(),
        )
        .expect("the campaign's catalog verifies");
        assert!(catalog.refused.is_empty(), "{:?}", catalog.refused);
        let new_hash = fieldpatch_core::image::mcuboot::McubootImage::parse(&new_image)
            .ok()
            .and_then(|i| i.image_hash().map(|h| h.to_vec()))
            .expect("the new image has a hash");
        let gateway = Arc::new(swupdate::Gateway::new(&dir.join("gateway")));
        let esp = esp::EspRelease::make(&|b| sha256(b));
        let old_rootfs: Vec<u8> =
            (0..swupdate::ROOTFS_LEN as u32).map(|i| (i.wrapping_mul(7) >> 3) as u8).collect();
        let rootfs: Vec<u8> = (0..swupdate::ROOTFS_LEN as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
            .collect();
        let (more, swu_len) = more_bundles(&dir.join("more"), &esp, &gateway, &rootfs);
        Release {
            catalog: Arc::new(catalog),
            more: Arc::new(more),
            new_image,
            new_hash,
            dfu_payload,
            esp,
            gateway,
            old_rootfs,
            rootfs,
            swu_len,
            kit,
        }
    }

    /// The catalog a family's bundles are in.
    pub fn catalog_for(&self, family: Family) -> &Arc<Catalog> {
        match family {
            Family::Esp | Family::Swupdate => &self.more,
            _ => &self.catalog,
        }
    }

    /// The new MCUboot image every SMP run flashes.
    pub fn new_image(&self) -> &[u8] {
        &self.new_image
    }
}

/// Sign the ESP bundles and the gateways' `.swu` into a catalog in `dir` whose trust store has
/// the gateway vendor's certificate; the catalog, verified, and the `.swu`'s length.
fn more_bundles(
    dir: &Path,
    esp: &esp::EspRelease,
    gateway: &swupdate::Gateway,
    rootfs: &[u8],
) -> (Catalog, u64) {
    use fieldpatch_testkit::catalog::{BundleSpec, CatalogBuilder, payload_entry, sign_manifest};
    let v = |a, b, c| fieldpatch_core::model::Version::new(a, b, c, 0);
    let signed = CatalogBuilder::new()
        .vendor_certificate(&gateway.vendor.cert_pem(), "campaign gateway vendor")
        .write(dir)
        .expect("the campaign's second catalog is written");
    for (id, model, payloads) in esp.bundles() {
        let spec = BundleSpec {
            id,
            model,
            applies: (v(1, 0, 0), v(1, 2, 9)),
            installs: v(1, 3, 0),
            cvss: "8.1",
            format: PayloadFormat::Esp,
            payload: &payloads[0].1,
        };
        let mut m = signed.manifest(&spec);
        m.payloads = payloads
            .iter()
            .map(|(name, b, offset)| {
                let mut e = payload_entry(name, PayloadFormat::Esp, b);
                e.flash_offset = Some(*offset);
                e
            })
            .collect();
        let mb = m.canonical_bytes().expect("a manifest");
        let sigs = sign_manifest(&mb, &signed.release_keys());
        let held: Vec<&[u8]> = payloads.iter().map(|(_, b, _)| b.as_slice()).collect();
        let bytes = fieldpatch_core::bundle::container::assemble_raw(&mb, &sigs, &held);
        std::fs::write(signed.catalog_dir.join(format!("{id}.fpb")), bytes)
            .expect("the ESP bundle is written");
    }
    let mut swu_len = 0;
    for (id, model, revision) in
        [("lab-gateway-2.1.0", "gateway", "1.0"), ("lab-gateway-r2-2.1.0", "gateway-r2", "2.0")]
    {
        let swu = fieldpatch_testkit::swupdate::Swu {
            version: "2.1.0".into(),
            hardware: vec![revision.into()],
            image_name: "rootfs.img".into(),
            image: rootfs.to_vec(),
            device_path: gateway.flash(),
            signer: Some(gateway.vendor.clone()),
            tamper: false,
        };
        let bytes = std::fs::read(swu.write(dir, &format!("{id}.swu"))).expect("a .swu");
        swu_len = bytes.len() as u64;
        signed
            .bundle(&BundleSpec {
                id,
                model,
                applies: (v(1, 0, 0), v(1, 9, 9)),
                installs: v(2, 1, 0),
                cvss: "7.0",
                format: PayloadFormat::Swupdate,
                payload: &bytes,
            })
            .expect("the gateway bundle is written");
    }
    let catalog = fieldpatch_core::session::batch::load_catalog(
        &signed.catalog_dir,
        &signed.trust_path,
        &fieldpatch_core::bundle::verify::VerifyPolicy::now(),
    )
    .expect("the campaign's second catalog verifies");
    assert!(catalog.refused.is_empty(), "{:?}", catalog.refused);
    (catalog, swu_len)
}

/// SHA-256 (by the `sha256sum` tool, as the test kit does).
fn sha256(bytes: &[u8]) -> [u8; 32] {
    let text = fieldpatch_testkit::swupdate::sha256_hex(bytes);
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = text.get(2 * i..2 * i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()).unwrap_or(0);
    }
    out
}

/// The secret every run's keyring holds for its device: found on disk, it is a violation.
pub const SECRET_NAME: &str = "device/campaign/password";

/// Draw and run one run of `family` (or a family drawn from the seed) with `fault` (or one
/// drawn), in a fresh directory under `work`.
pub async fn run(
    release: &Release,
    work: &Path,
    seed: u64,
    family: Option<Family>,
    fault: Option<Fault>,
    secret: &str,
) -> Run {
    let started = std::time::Instant::now();
    let mut draw = Draw::new(seed);
    let family = family.unwrap_or(Family::ALL[draw.range(0, Family::ALL.len() as u64) as usize]);
    let faults = family.faults();
    let fault = fault.unwrap_or(faults[draw.range(0, faults.len() as u64) as usize]);
    let dir = work.join(format!("run-{seed}"));
    let data = dir.join("data");
    let mut violations = Vec::new();
    // The disk-full fault needs the data directory on a filesystem of its own.
    let small = match fault {
        Fault::DiskFull => match SmallFs::mount(&data, SMALL_FS_BYTES) {
            Ok(fs) => Some(fs),
            Err(e) => {
                violations.push(e);
                let (detail, ending) = (String::new(), Ending::NotAttempted);
                let elapsed = started.elapsed();
                return Run { seed, family, fault, detail, ending, violations, elapsed };
            }
        },
        _ => None,
    };
    let (ending, detail) = match family {
        Family::Esp => run_esp(release, &data, fault, &mut draw, &mut violations).await,
        Family::Swupdate => {
            run_swupdate(release, &data, fault, &mut draw, secret, &mut violations).await
        }
        Family::SmpUdp | Family::SmpSerial | Family::Dfu => {
            run_lab(release, &data, seed, family, fault, &mut draw, &mut violations).await
        }
    };
    check_secret(&data, secret, &mut violations);
    drop(small);
    let _ = std::fs::remove_dir_all(&dir);
    Run { seed, family, fault, detail, ending, violations, elapsed: started.elapsed() }
}

/// Join what was drawn and what happened to the session.
fn with_note(detail: String, note: String) -> String {
    match (detail.is_empty(), note.is_empty()) {
        (_, true) => detail,
        (true, false) => note,
        (false, false) => format!("{detail}; {note}"),
    }
}

/// The ending and status of a flash, its note joined to `detail`.
fn outcome(
    flashed: Result<(Ending, Option<DeviceStatus>, String), String>,
    detail: &mut String,
    violations: &mut Vec<String>,
) -> (Ending, Option<DeviceStatus>) {
    match flashed {
        Ok((ending, status, note)) => {
            *detail = with_note(std::mem::take(detail), note);
            (ending, status)
        }
        Err(e) => {
            violations.push(format!("the run could not be carried out: {e}"));
            (Ending::FailedCleanly, None)
        }
    }
}

/// A run of the SMP and DFU families (lab devices of a [`LabSite`]).
async fn run_lab(
    release: &Release,
    data: &Path,
    seed: u64,
    family: Family,
    fault: Fault,
    draw: &mut Draw,
    violations: &mut Vec<String>,
) -> (Ending, String) {
    let site = match start_site(family, seed) {
        Ok(s) => s,
        Err(e) => {
            violations.push(format!("the lab device did not start: {e}"));
            return (Ending::FailedCleanly, String::new());
        }
    };
    let old_dfu = site.board.as_ref().map(|b| b.firmware());
    let mut detail = arm(&site, family, fault, draw);
    let usb = site.usb().unwrap_or_else(|| fieldpatch_lab::dfu::LabUsbBus::new(std::iter::empty()));
    let connector = Arc::new(fieldpatch_core::flash::connect::DriverConnector { usb });
    let catalog = release.catalog_for(family);
    let records = site.records.clone();
    let flashed = flash(
        &release.kit,
        catalog,
        connector,
        records,
        data,
        fault,
        draw,
        None,
        violations,
        || {},
    );
    let (ending, status) = outcome(flashed.await, &mut detail, violations);
    // Let a rebooting device settle before looking at it.
    settle(&site).await;
    check_device(release, &site, status.as_ref(), old_dfu.as_deref(), violations);
    check_log(data, status.as_ref(), violations).await;
    (ending, detail)
}

/// A connector to one run's ESP module through its wired port (locked as the drivers' connector
/// locks an `esp:` port).
struct EspConnector {
    esp: Arc<esp::EspRun>,
    locks: fieldpatch_core::flash::connect::DriverConnector<fieldpatch_lab::dfu::LabUsbBus>,
}

impl Connector for EspConnector {
    fn open<'a, 'b, 'c>(
        &'a self,
        device: &'b DeviceRecord,
    ) -> Pin<Box<dyn Future<Output = Result<Box<dyn FlashTarget>, TargetError>> + Send + 'c>>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        Box::pin(self.esp.open(device))
    }

    fn hold(
        &self,
        device: &DeviceRecord,
    ) -> Result<
        Option<fieldpatch_core::session::lock::RunnerLock>,
        fieldpatch_core::session::lock::LockError,
    > {
        self.locks.hold(device)
    }
}

/// A run of the ESP family (see [`esp`]).
async fn run_esp(
    release: &Release,
    data: &Path,
    fault: Fault,
    draw: &mut Draw,
    violations: &mut Vec<String>,
) -> (Ending, String) {
    let esp = match esp::EspRun::start(&release.esp, fault, draw) {
        Ok(e) => Arc::new(e),
        Err(e) => {
            violations.push(format!("the lab module did not start: {e}"));
            return (Ending::FailedCleanly, String::new());
        }
    };
    let mut detail = esp.detail.clone();
    let usb = fieldpatch_lab::dfu::LabUsbBus::new(std::iter::empty());
    let locks = fieldpatch_core::flash::connect::DriverConnector { usb };
    let connector = Arc::new(EspConnector { esp: esp.clone(), locks });
    let catalog = release.catalog_for(Family::Esp);
    let records = vec![esp.record.clone()];
    let armed = || esp.arm();
    let flashed = flash(
        &release.kit,
        catalog,
        connector,
        records,
        data,
        fault,
        draw,
        None,
        violations,
        armed,
    );
    let (ending, status) = outcome(flashed.await, &mut detail, violations);
    esp.check(&release.esp, status.as_ref(), violations);
    check_log(data, status.as_ref(), violations).await;
    (ending, detail)
}

/// A run of the SWUpdate family (see [`swupdate`]).
async fn run_swupdate(
    release: &Release,
    data: &Path,
    fault: Fault,
    draw: &mut Draw,
    secret: &str,
    violations: &mut Vec<String>,
) -> (Ending, String) {
    let gateway = &release.gateway;
    let (old, len) = (&release.old_rootfs, release.swu_len);
    let mut gw = match swupdate::SwupdateRun::start(gateway, old, len, fault, draw, secret).await {
        Ok(g) => g,
        Err(e) => {
            violations.push(format!("the gateway did not start: {e}"));
            return (Ending::FailedCleanly, String::new());
        }
    };
    let mut detail = gw.detail.clone();
    let usb = fieldpatch_lab::dfu::LabUsbBus::new(std::iter::empty());
    let connector = Arc::new(fieldpatch_core::flash::connect::DriverConnector { usb });
    let catalog = release.catalog_for(Family::Swupdate);
    let records = vec![gw.record.clone()];
    let flashed = flash(
        &release.kit,
        catalog,
        connector,
        records,
        data,
        fault,
        draw,
        Some(secret),
        violations,
        || {},
    );
    let (ending, status) = outcome(flashed.await, &mut detail, violations);
    gw.settle(gateway, violations).await;
    gw.check(gateway, old, &release.rootfs, status.as_ref(), violations);
    check_log(data, status.as_ref(), violations).await;
    (ending, detail)
}

fn start_site(family: Family, seed: u64) -> Result<LabSite, String> {
    let b = SiteBuilder::new()
        .first_seed((seed % 200) as u8)
        .flash_speed(2.0 * 1024.0 * 1024.0)
        .reboot_time(Duration::from_millis(100));
    let b = match family {
        Family::SmpUdp => b.udp_sensors(1, "sensor", Criticality::Normal, |_| "dev".to_string()),
        Family::SmpSerial => b.console("dev", "sensor", Criticality::Normal),
        Family::Dfu => {
            b.dfu_board("dev", "board", "1.0.0".parse().expect("a version"), Criticality::Normal)
        }
        Family::Esp | Family::Swupdate => return Err(format!("{} has no lab site", family.name())),
    };
    b.start().map_err(|e| e.to_string())
}

/// Set the fault on the lab device; returns what was drawn.
fn arm(site: &LabSite, family: Family, fault: Fault, draw: &mut Draw) -> String {
    let smp = site.console.as_ref().or(site.sensors.first());
    match (family, fault, smp, &site.board) {
        (
            _,
            Fault::None | Fault::Killed | Fault::DiskFull | Fault::ClockJump | Fault::ProcessKilled,
            _,
            _,
        ) => String::new(),
        (_, Fault::DropFrames, Some(d), _) => {
            let n = draw.range(4, 40) as u32;
            d.faults().drop_rx_every = Some(n);
            format!("every {n}th frame lost")
        }
        (_, Fault::DuplicateFrames, Some(d), _) => {
            let n = draw.range(2, 20) as u32;
            d.faults().duplicate_tx_every = Some(n);
            format!("every {n}th answer sent twice")
        }
        (_, Fault::ReorderFrames, Some(d), _) => {
            let n = draw.range(3, 30) as u32;
            d.faults().reorder_tx_every = Some(n);
            format!("every {n}th answer held back and sent after the next one")
        }
        (_, Fault::CorruptFrames, Some(d), _) => {
            let n = draw.range(4, 40) as u32;
            d.faults().corrupt_tx_every = Some(n);
            format!("every {n}th answer corrupted")
        }
        (_, Fault::Stall, Some(d), _) => {
            let at = draw.range(0, IMAGE_LEN as u64);
            let ms = draw.range(200, 4000);
            d.faults().stall_at = Some((at, Duration::from_millis(ms)));
            format!("silent {ms} ms at offset {at}")
        }
        (_, Fault::RebootMidUpload, Some(d), _) => {
            let at = draw.range(0, IMAGE_LEN as u64);
            d.faults().reboot_at = Some(at);
            format!("reboots at offset {at}")
        }
        (_, Fault::PowerLossOnTestBoot, Some(d), _) => {
            d.faults().power_loss_on_test_boot = true;
            String::new()
        }
        (_, Fault::FailsHealthCheck, Some(d), _) => {
            d.faults().fail_health_check = true;
            String::new()
        }
        (_, Fault::StalledDnload, _, Some(b)) => {
            let n = draw.range(1, (IMAGE_LEN / 1024) as u64) as usize;
            b.set_faults(LabDfuFaults { stall_on_data_dnload: Some(n), ..Default::default() });
            format!("stalls data DNLOAD #{n}")
        }
        (_, Fault::VerifyError, _, Some(b)) => {
            b.set_faults(LabDfuFaults { verify_error_at_manifest: true, ..Default::default() });
            String::new()
        }
        (_, Fault::GarbageStatus, _, Some(b)) => {
            let len = draw.range(0, 12) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| draw.word() as u8).collect();
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            b.set_faults(LabDfuFaults { raw_status: Some(bytes), ..Default::default() });
            format!("GETSTATUS answers {len} bytes {hex}")
        }
        _ => format!("{} does not apply to {}", fault.name(), family.name()),
    }
}

fn options() -> SessionOptions {
    SessionOptions {
        canary: false,
        soak: Duration::ZERO,
        wave_size: 1,
        concurrency: 1,
        failure_threshold: Threshold::Count(1),
        retries: 1,
        dry_run: false,
        reconnect_timeout: Duration::from_secs(8),
    }
}

/// Identify, plan, `arm` the device's faults and run the session (cut off and resumed for
/// [`Fault::Killed`]); the ending, the device's final status and what happened to the cut-off
/// session. With `secret`, this laptop's keyring gets it as [`SECRET_NAME`] first (the
/// gateway's password, put there as a sync would).
#[allow(clippy::too_many_arguments)]
async fn flash(
    kit: &Kit,
    catalog: &Arc<Catalog>,
    connector: Arc<dyn Connector>,
    records: Vec<DeviceRecord>,
    data: &Path,
    fault: Fault,
    draw: &mut Draw,
    secret: Option<&str>,
    violations: &mut Vec<String>,
    arm: impl FnOnce(),
) -> Result<(Ending, Option<DeviceStatus>, String), String> {
    let mut fp = Fieldpatch::open_in(data, connector.clone()).await.map_err(|e| e.to_string())?;
    // A clock-jump run's data directory reads a clock the campaign moves (seconds of offset).
    let offset = Arc::new(AtomicI64::new(0));
    if fault == Fault::ClockJump {
        let o = offset.clone();
        fp = fp.with_clock(fieldpatch_core::clock::Clock::from_fn(move || {
            chrono::Utc::now() + chrono::TimeDelta::seconds(o.load(Ordering::SeqCst))
        }));
        // As after a sync just before the visit: the server's time is the latest trusted time,
        // and the clock agreed with it (events are stamped as server-checked).
        fieldpatch_core::clock::note_online(fp.store(), chrono::Utc::now())
            .await
            .map_err(|e| e.to_string())?;
        fp.store()
            .record_clock_check(chrono::TimeDelta::zero())
            .await
            .map_err(|e| e.to_string())?;
    }
    if let Some(secret) = secret {
        let name: fieldpatch_core::credentials::CredentialName =
            SECRET_NAME.parse().map_err(|e| format!("{e}"))?;
        let creds = fp.credentials().await.map_err(|e| e.to_string())?;
        creds
            .set(&name, &fieldpatch_core::credentials::Secret::new(secret.to_string()))
            .await
            .map_err(|e| e.to_string())?;
    }
    let identified = fp.identify(records, Duration::from_secs(10)).await;
    if let Some((d, Some(e))) = identified.iter().find(|(_, e)| e.is_some()) {
        return Err(format!("{} was not identified: {e}", d.id));
    }
    let plan = fp.plan(identified.into_iter().map(|(d, _)| d).collect(), catalog).await;
    arm();
    if plan.patchable().count() != 1 {
        return Err(format!("the plan has nothing to flash: {plan:?}"));
    }
    let state = SessionState::new(plan, options());
    // FIELDPATCH_CAMPAIGN_TRACE=1 prints the session's events with their times (for one seed).
    let t0 = std::time::Instant::now();
    let quiet: fieldpatch_core::session::Observer =
        if std::env::var_os("FIELDPATCH_CAMPAIGN_TRACE").is_some() {
            Arc::new(move |d, e| {
                if !matches!(e, fieldpatch_core::session::SessionEvent::Transfer(_)) {
                    eprintln!("{:8.3} {d:?} {e:?}", t0.elapsed().as_secs_f64());
                }
            })
        } else {
            Arc::new(|_, _| {})
        };
    let pause = Arc::new(AtomicBool::new(false));
    let mut resumed = false;
    let mut note = String::new();
    let final_state = if fault == Fault::ProcessKilled {
        // The session runs in a process of its own, given the plan made here.
        drop(fp);
        let after = Duration::from_millis(draw.range(0, 3000));
        let (ended, text) = run_cli_killed(kit, data, &state.plan, after).await?;
        note = text;
        if !ended {
            resumed = true;
        }
        // A new process, as after the technician starts Fieldpatch again.
        let again = resume_anew(data, connector, catalog, quiet, pause, &mut note).await?;
        match again {
            Some(state) => state,
            None => return Ok((Ending::NotAttempted, None, note)),
        }
    } else if fault == Fault::Killed {
        let after = Duration::from_millis(draw.range(20, 1500));
        let (c, q, p) = (catalog.clone(), quiet.clone(), pause.clone());
        let run = tokio::spawn(async move { fp.run_session(state, c, q, p).await });
        tokio::time::sleep(after).await;
        run.abort();
        let ended = match run.await {
            Ok(r) => Some(r.map_err(|e| e.to_string())?),
            Err(_) => None,
        };
        note = format!("cut off after {} ms", after.as_millis());
        match ended {
            Some((_, state)) => {
                note.push_str(", after the session had ended");
                state
            }
            None => {
                // A new process, as after a restart: a new facade on the same data directory.
                resumed = true;
                let again = resume_anew(data, connector, catalog, quiet, pause, &mut note).await?;
                match again {
                    Some(state) => state,
                    // Cut off before the session was first saved: nothing was started, and the
                    // device must be as it was (the checks below say so).
                    None => return Ok((Ending::NotAttempted, None, note)),
                }
            }
        }
    } else if fault == Fault::ClockJump {
        let jump = ClockJump::draw(draw);
        note = jump.describe();
        let usable_until = catalog.entries().iter().map(|e| e.usable_until).min();
        let (c, q, p) = (catalog.clone(), quiet.clone(), pause.clone());
        if jump.after.is_none() {
            offset.store(jump.seconds, Ordering::SeqCst);
        }
        let run = tokio::spawn(async move { fp.run_session(state, c, q, p).await });
        if let Some(after) = jump.after {
            tokio::time::sleep(after).await;
            offset.store(jump.seconds, Ordering::SeqCst);
        }
        let (_, first) = run
            .await
            .map_err(|e| format!("the session's task failed: {e}"))?
            .map_err(|e| e.to_string())?;
        let first_status = first.devices.get("dev").cloned();
        let patched = matches!(first_status, Some(DeviceStatus::Patched { .. }));
        let refused_clock = matches!(&first.phase, fieldpatch_core::session::Phase::Stopped { reason } if reason.contains("clock was set back"));
        if jump.after.is_none() && jump.seconds < -CLOCK_TOLERANCE_SECS && !refused_clock {
            violations.push(format!(
                "a clock set back {} s before the session did not stop it: {:?}, {first_status:?}",
                -jump.seconds, first.phase
            ));
        }
        if jump.after.is_none()
            && patched
            && usable_until
                .is_some_and(|u| u < chrono::Utc::now() + chrono::TimeDelta::seconds(jump.seconds))
        {
            violations
                .push("a bundle past its expiry by the laptop's clock was flashed".to_string());
        }
        let state = if refused_clock {
            // The technician sets the clock right and starts Fieldpatch again.
            offset.store(0, Ordering::SeqCst);
            note.push_str(", the session stopped on the clock; set right and resumed");
            resumed = true;
            let again = resume_anew(data, connector, catalog, quiet, pause, &mut note).await?;
            match again {
                Some(state) => state,
                None => return Ok((Ending::NotAttempted, None, note)),
            }
        } else {
            first
        };
        // The clock set right and the laptop synced, expiry decisions go on: a clock that ran
        // ahead must not lock the laptop out until real time catches up.
        let store =
            fieldpatch_core::store::Store::open_in(data).await.map_err(|e| e.to_string())?;
        fieldpatch_core::clock::note_online(&store, chrono::Utc::now())
            .await
            .map_err(|e| e.to_string())?;
        if let Err(e) = fieldpatch_core::clock::checked_now(&store).await {
            violations.push(format!("after the clock was set right and a sync: {e}"));
        }
        store.close().await;
        state
    } else if fault == Fault::DiskFull {
        let after = Duration::from_millis(draw.range(0, 1500));
        let (c, q, p) = (catalog.clone(), quiet.clone(), pause.clone());
        let run = tokio::spawn(async move { fp.run_session(state, c, q, p).await });
        tokio::time::sleep(after).await;
        let filler = fill(data)?;
        note = format!("the disk filled after {} ms", after.as_millis());
        let first = tokio::time::timeout(DISK_FULL_PATIENCE, run)
            .await
            .map_err(|_| {
                format!(
                    "the session neither ended nor stopped within {} s of the disk filling",
                    DISK_FULL_PATIENCE.as_secs()
                )
            })?
            .map_err(|e| format!("the session's task failed: {e}"))?;
        std::fs::remove_file(&filler).map_err(|e| format!("freeing the disk: {e}"))?;
        match first {
            Ok((_, state)) if state.phase == fieldpatch_core::session::Phase::Finished => {
                note.push_str(", the session finished all the same");
                state
            }
            first => {
                match &first {
                    Ok((_, state)) => note.push_str(&format!(", stopped: {:?}", state.phase)),
                    Err(e) => {
                        let text = e.to_string();
                        // The technician must be told what to do about a full disk.
                        if text.contains("disk is full") && !text.contains("Free space") {
                            violations.push(format!("a full disk reported without advice: {text}"));
                        }
                        let short: String = text.chars().take(160).collect();
                        note.push_str(&format!(", stopped: {short}"));
                    }
                }
                // Space freed; a new facade resumes, as after the technician's next start.
                resumed = true;
                let again = resume_anew(data, connector, catalog, quiet, pause, &mut note).await?;
                match again {
                    Some(state) => state,
                    None => return Ok((Ending::NotAttempted, None, note)),
                }
            }
        }
    } else {
        fp.run_session(state, catalog.clone(), quiet, pause).await.map_err(|e| e.to_string())?.1
    };
    let status = final_state.devices.get("dev").cloned();
    if let Some(DeviceStatus::Failed { reason } | DeviceStatus::RolledBack { reason }) = &status {
        let short: String = reason.chars().take(200).collect();
        note = with_note(note, format!("the session says: {short}"));
    }
    if final_state.phase == fieldpatch_core::session::Phase::Finished
        && matches!(status, Some(DeviceStatus::Pending | DeviceStatus::InProgress { .. }))
    {
        violations.push(format!(
            "log: the session finished without an outcome for the device ({status:?})"
        ));
    }
    let ending = match &status {
        Some(DeviceStatus::Patched { .. } | DeviceStatus::Unverified { .. }) if resumed => {
            Ending::Resumed
        }
        Some(DeviceStatus::Patched { .. } | DeviceStatus::Unverified { .. }) => Ending::Succeeded,
        Some(DeviceStatus::RolledBack { .. }) => Ending::RolledBack,
        Some(DeviceStatus::Failed { .. }) => Ending::FailedCleanly,
        Some(DeviceStatus::Pending) => Ending::NotAttempted,
        other => {
            violations.push(format!("the session ended with the device {other:?}"));
            Ending::FailedCleanly
        }
    };
    Ok((ending, status, note))
}

/// Run `plan` in `fieldpatch session run` (the CLI, with the campaign's session options) on
/// `data`, and SIGKILL it `after` its start unless it has ended by then; whether it had ended,
/// and what happened.
async fn run_cli_killed(
    kit: &Kit,
    data: &Path,
    plan: &fieldpatch_core::plan::Plan,
    after: Duration,
) -> Result<(bool, String), String> {
    let work = data.parent().ok_or("the data directory has no parent")?;
    let plan_file = work.join("plan.json");
    let bytes = serde_json::to_vec(plan).map_err(|e| e.to_string())?;
    std::fs::write(&plan_file, bytes).map_err(|e| format!("{}: {e}", plan_file.display()))?;
    let mut child = tokio::process::Command::new(crate::built_binary("fieldpatch"))
        .arg("session")
        .arg("run")
        .arg(&plan_file)
        .args(["--no-canary", "--soak", "0", "--wave", "1", "--concurrency", "1"])
        .args(["--threshold", "1", "--retries", "1", "--reconnect-timeout", "8"])
        .arg("--catalog")
        .arg(&kit.catalog)
        .arg("--trust")
        .arg(&kit.trust)
        .env("FIELDPATCH_DATA_DIR", data)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the fieldpatch CLI: {e}"))?;
    let mut stderr = child.stderr.take();
    let ended = tokio::time::timeout(after, child.wait()).await;
    match ended {
        Ok(status) => {
            let status = status.map_err(|e| e.to_string())?;
            let mut text = String::new();
            if let Some(err) = stderr.as_mut() {
                use tokio::io::AsyncReadExt as _;
                let _ = err.read_to_string(&mut text).await;
            }
            // 0: patched; 3: a device not patched (said in its status). Anything else is the
            // CLI refusing the run itself, which the campaign must not cause.
            if !matches!(status.code(), Some(0 | 3)) {
                let short: String = text.chars().take(300).collect();
                return Err(format!("the CLI session ended with {status}: {short}"));
            }
            Ok((true, format!("the CLI session ended ({status}) before its SIGKILL")))
        }
        Err(_) => {
            child.start_kill().map_err(|e| format!("SIGKILL: {e}"))?;
            let _ = child.wait().await;
            Ok((false, format!("the CLI session SIGKILLed after {} ms", after.as_millis())))
        }
    }
}

/// Resume the session of `data` with a new facade, as after the technician's next start (and
/// once more when it stopped with the device still held by the runner cut off); `None` when it
/// was cut off before it was first saved, so there is nothing to resume.
async fn resume_anew(
    data: &Path,
    connector: Arc<dyn Connector>,
    catalog: &Arc<Catalog>,
    quiet: fieldpatch_core::session::Observer,
    pause: Arc<AtomicBool>,
    note: &mut String,
) -> Result<Option<SessionState>, String> {
    let fp = Fieldpatch::open_in(data, connector).await.map_err(|e| e.to_string())?;
    let mut state =
        match fp.resume_session(None, catalog.clone(), quiet.clone(), pause.clone()).await {
            Ok((_, state)) => state,
            Err(e) if e.code() == "session_finished" => {
                note.push_str(", the session had finished");
                fp.session(None).await.map_err(|e| e.to_string())?
            }
            // No unfinished session: it finished before the cut (a process killed between the
            // session's end and its exit), or it was never saved.
            Err(e) if e.code() == "no_session" => match fp.session(None).await {
                Ok(state) => {
                    note.push_str(", the session had finished");
                    state
                }
                Err(_) => {
                    note.push_str(", before the session was saved: nothing to resume");
                    return Ok(None);
                }
            },
            Err(e) => return Err(format!("resume: {e}")),
        };
    note.push_str(&format!(", resumed: {:?}", state.phase));
    // A session that stopped with the device untouched (still held by the runner that was cut
    // off) is resumed again, as a technician would.
    if matches!(state.phase, fieldpatch_core::session::Phase::Stopped { .. }) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        state = fp
            .resume_session(None, catalog.clone(), quiet, pause)
            .await
            .map_err(|e| format!("second resume: {e}"))?
            .1;
        note.push_str(&format!(", resumed again: {:?}", state.phase));
    }
    Ok(Some(state))
}

/// How far back the laptop's clock may be from the latest trusted time and still be believed
/// (`fieldpatch_core::clock::TOLERANCE`), in seconds.
const CLOCK_TOLERANCE_SECS: i64 = fieldpatch_core::clock::TOLERANCE.num_seconds();

/// What a clock-jump run does to the laptop's clock.
#[derive(Debug, Clone, Copy)]
struct ClockJump {
    /// By how much (negative: back).
    seconds: i64,
    /// When, from the session's start (`None`: just before it).
    after: Option<Duration>,
}

impl ClockJump {
    fn draw(draw: &mut Draw) -> ClockJump {
        const DAY: u64 = 86_400;
        let seconds = match draw.range(0, 4) {
            // Back, within the tolerance for drift between syncs.
            0 => -(draw.range(60, CLOCK_TOLERANCE_SECS as u64 - 60) as i64),
            // Back beyond it, by up to 30 days.
            1 => -(draw.range(CLOCK_TOLERANCE_SECS as u64 + 60, 30 * DAY) as i64),
            // Forward, by up to 60 days (the release's trust store lasts 30).
            _ => draw.range(3_600, 60 * DAY) as i64,
        };
        let after = match draw.range(0, 3) {
            0 => None,
            _ => Some(Duration::from_millis(draw.range(0, 1500))),
        };
        ClockJump { seconds, after }
    }

    fn describe(&self) -> String {
        let how = if self.seconds < 0 {
            format!("back {} s", -self.seconds)
        } else {
            format!("forward {} s", self.seconds)
        };
        match self.after {
            None => format!("the clock jumped {how} before the session"),
            Some(a) => format!("the clock jumped {how} {} ms into the session", a.as_millis()),
        }
    }
}

/// Size of the filesystem a disk-full run's data directory lives on.
const SMALL_FS_BYTES: u64 = 32 << 20;

/// How long a session may take to end or stop once its disk is full.
const DISK_FULL_PATIENCE: Duration = Duration::from_secs(300);

/// A tmpfs of its own mounted on a directory (needs root, as CI has), unmounted on drop.
struct SmallFs {
    dir: std::path::PathBuf,
}

impl SmallFs {
    fn mount(dir: &Path, bytes: u64) -> Result<SmallFs, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes},mode=0700"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "the disk-full fault needs a small filesystem of its own, and mounting a tmpfs on {} failed (run the campaign as root): {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SmallFs { dir: dir.to_path_buf() })
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        // Lazily: a file the run left open must not keep the mount.
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Fill the filesystem of `dir` to the last byte with a file of its own; returns its path.
fn fill(dir: &Path) -> Result<std::path::PathBuf, String> {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut file =
        std::fs::File::create(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    let chunk = vec![0u8; 64 << 10];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC: full
            Err(e) => return Err(format!("filling the disk: {e}")),
        }
    }
    // The last partial block, byte by byte, so not even a small write fits.
    while matches!(file.write(&[0u8]), Ok(1)) {}
    Ok(path)
}

/// Wait (bounded) until the SMP device has finished any reboot.
async fn settle(site: &LabSite) {
    let smp = site.console.as_ref().or(site.sensors.first());
    if let Some(d) = smp {
        for _ in 0..100 {
            if d.active_image().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Invariants 1 and 2: the device is bootable, and a success is the verified image.
fn check_device(
    release: &Release,
    site: &LabSite,
    status: Option<&DeviceStatus>,
    old_dfu: Option<&[u8]>,
    violations: &mut Vec<String>,
) {
    let patched = matches!(status, Some(DeviceStatus::Patched { .. }));
    if let Some(d) = site.console.as_ref().or(site.sensors.first()) {
        match d.active_image() {
            None => violations.push("bootable: the device runs no image".into()),
            Some((hash, version)) => {
                if !d.active_confirmed() {
                    violations.push(format!("bootable: the running {version} is not confirmed"));
                }
                if patched && (hash.to_vec() != release.new_hash || version != "2.0.0") {
                    violations.push(format!(
                        "honest success: reported patched, but the device runs {version} ({})",
                        hex(&hash)
                    ));
                }
            }
        }
    }
    if let Some(b) = &site.board {
        let now = b.firmware();
        let known = Some(now.as_slice()) == old_dfu || now == release.dfu_payload;
        if !known && b.mode() != LabMode::Dfu {
            violations.push(
                "bootable: the board holds partial firmware and is not in its DFU bootloader"
                    .into(),
            );
        }
        if patched && now != release.dfu_payload {
            violations.push("honest success: reported patched, but the firmware differs".into());
        }
    }
}

/// Invariant 3: the logs verify, no event twice, the device's last outcome event is the
/// session's.
async fn check_log(data: &Path, status: Option<&DeviceStatus>, violations: &mut Vec<String>) {
    let store = match fieldpatch_core::store::Store::open_in(data).await {
        Ok(s) => s,
        Err(e) => return violations.push(format!("log: the store does not open: {e}")),
    };
    match store.verify_all_logs().await {
        Ok(checks) => {
            for c in checks.iter().filter(|c| !c.is_ok()) {
                violations.push(format!("log: a chain does not verify: {c:?}"));
            }
        }
        Err(e) => violations.push(format!("log: cannot verify: {e}")),
    }
    let visits = store.visits(false).await.unwrap_or_default();
    let mut ids = std::collections::BTreeSet::new();
    let mut tags: Vec<&'static str> = Vec::new();
    for v in &visits {
        for e in store.visit_events(v.visit_id).await.unwrap_or_default() {
            if !ids.insert(e.body.id) {
                violations.push(format!("log: event {} appears twice", e.body.id));
            }
            if e.body.device.as_deref() == Some("dev") {
                tags.push(e.body.kind.tag());
            }
        }
    }
    // A device refused before anything was sent (its bundle refused at that moment) has the
    // refusal as its last word: the session calls that failed.
    let last_outcome = tags
        .iter()
        .rev()
        .find(|t| matches!(**t, "confirmed" | "rolled_back" | "failed" | "bundle_refused"))
        .copied();
    let want = match status {
        Some(DeviceStatus::Patched { .. }) => Some("confirmed"),
        Some(DeviceStatus::RolledBack { .. }) => Some("rolled_back"),
        Some(DeviceStatus::Failed { reason }) if reason.starts_with("refused before sending") => {
            Some("bundle_refused")
        }
        Some(DeviceStatus::Failed { .. }) => Some("failed"),
        _ => None,
    };
    if want.is_some() && last_outcome != want {
        violations.push(format!(
            "log: the session says {want:?}, the device's last outcome event is {last_outcome:?}"
        ));
    }
}

/// Invariant 4: the keyring's secret is in no file of the data directory.
fn check_secret(data: &Path, secret: &str, violations: &mut Vec<String>) {
    let mut stack = vec![data.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(secret.len()).any(|w| w == secret.as_bytes())
            {
                violations.push(format!("secret: found in {}", path.display()));
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Counts of a campaign, by family.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub runs: usize,
    pub endings: std::collections::BTreeMap<&'static str, usize>,
    pub faults: std::collections::BTreeMap<&'static str, usize>,
    pub violations: usize,
}

/// Sum `runs` by family.
pub fn tally(runs: &[Run]) -> std::collections::BTreeMap<Family, Tally> {
    let mut out: std::collections::BTreeMap<Family, Tally> = Default::default();
    for r in runs {
        let t = out.entry(r.family).or_default();
        t.runs += 1;
        *t.endings.entry(r.ending.name()).or_default() += 1;
        *t.faults.entry(r.fault.name()).or_default() += 1;
        t.violations += r.violations.len();
    }
    out
}

/// Keep a fresh random device secret in the OS keyring under [`SECRET_NAME`] (through a
/// facade opened in `dir`) and return it: every run then checks it reaches no file.
pub async fn keep_secret(dir: &Path) -> Result<String, String> {
    let usb = fieldpatch_lab::dfu::LabUsbBus::new(std::iter::empty());
    let connector = Arc::new(fieldpatch_core::flash::connect::DriverConnector { usb });
    let fp = Fieldpatch::open_in(dir, connector).await.map_err(|e| e.to_string())?;
    let secret = format!("campaign-secret-{:016x}", Draw::new(rand::random()).word());
    let name: fieldpatch_core::credentials::CredentialName =
        SECRET_NAME.parse().map_err(|e| format!("{e}"))?;
    let creds = fp.credentials().await.map_err(|e| e.to_string())?;
    creds
        .set(&name, &fieldpatch_core::credentials::Secret::new(secret.clone()))
        .await
        .map_err(|e| e.to_string())?;
    Ok(secret)
}
