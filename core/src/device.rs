//! Jobs on one device at an address, for a technician who inspects or repairs a device by hand:
//! SMP (MCUmgr) info, image list, upload, test, confirm, reset and echo over serial or UDP, and
//! USB DFU list, flash and install.
//!
//! Every command that changes a device's state is bracketed in the technician's visit log: a
//! `device_command` event before it is sent and a `device_command_result` after (uploads: the
//! clearance that allowed the bytes, `flash_started`, then `image_uploaded` or `failed`). The bytes
//! sent are the bytes that were cleared: a verified bundle's payload, a vendor-signed image, or a
//! bare image the technician allowed explicitly (recorded as such).
//!
//! A signed bundle reaches a device only through the gate a session uses: the planner
//! decides with the device's inventory record whether it applies (target model and hardware
//! revision, upgrade path, downgrade rule), then the flash pipeline sends it. `install` (SMP) reads
//! the running version from the device first; `dfu_install` (USB DFU, whose devices cannot say
//! what they run) decides with the version in the inventory, as a session does.

use crate::bundle::VerifyPolicy;
use crate::bundle::container::looks_like_bundle;
use crate::bundle::input::clear_for_device;
use crate::bundle::verify::AcceptRule;
use crate::catalog::Catalog;
use crate::fieldpatch::{Error, Fieldpatch};
use crate::flash::connect::select_usb;
use crate::flash::smp::SmpTarget;
use crate::flash::{
    FlashOptions, FlashOutcome, FlashStage, FlashTarget, TargetError, VerifiedImage, flash,
};
use crate::image::dfu_file::DfuFile;
use crate::model::Version;
use crate::plan::DeviceAddress;
use crate::plan::{DeviceRecord, Disposition, PlanInput, plan};
use crate::progress::Progress;
use crate::session::local::LogSink;
use crate::visitlog::EventKind;
use fieldpatch_drivers::smp::SmpClient;
use fieldpatch_drivers::transport::{AnyLink, SerialLink, UdpLink, udp};
use sha2::{Digest, Sha256};
use std::path::Path;

pub use fieldpatch_drivers::dfu::{DfuDeviceInfo, DfuseOptions, DownloadReport, VerifiedBy};
pub use fieldpatch_drivers::smp::commands::hex_string;
pub use fieldpatch_drivers::smp::{AfterUpload, ImageSlotState, Params, SmpMode, UploadReport};

mod esp;
pub use esp::{DEFAULT_APP_OFFSET, EspInfo, EspUpload};

/// What the device says about itself.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceInfo {
    /// What answers SMP: the application, or MCUboot's serial recovery.
    pub mode: SmpMode,
    /// OS and application info as the device reports it; `None` when it does not support the
    /// command (serial recovery).
    pub info: Option<String>,
    /// The bootloader's name where the device tells it.
    pub bootloader: Option<String>,
    /// SMP buffer parameters (the defaults for the mode when the device cannot tell them).
    pub params: Params,
}

/// What the gate decided for a signed bundle on one device (see the module docs).
#[derive(Debug)]
pub(crate) enum Gate {
    /// The plan's step for the device: send this verified image.
    Flash { image: VerifiedImage },
    /// The device already runs the newest version the bundle offers: nothing to send.
    UpToDate { version: Version },
}

/// One SMP device at an address, opened for hand commands. See the module docs.
#[derive(Debug)]
pub struct SmpDevice<'a> {
    fp: &'a Fieldpatch,
    /// How the device is named in the visit log: its address.
    name: String,
    client: SmpClient<AnyLink>,
}

/// Parse an image hash as `image list` prints it.
pub fn parse_image_hash(text: &str) -> Result<Vec<u8>, Error> {
    let h = hex::decode(text.trim()).map_err(|_| {
        Error::Invalid(format!("{text:?} is not a hex image hash (as printed by `image list`)"))
    })?;
    if h.len() != 32 {
        return Err(Error::Invalid(format!(
            "an image hash is 32 bytes (64 hex digits); {text:?} has {} bytes",
            h.len()
        )));
    }
    Ok(h)
}

impl Fieldpatch {
    /// Open the SMP device at `address` (serial or UDP).
    pub async fn smp_device(&self, address: &DeviceAddress) -> Result<SmpDevice<'_>, Error> {
        let link = match address {
            DeviceAddress::Serial { port, baud } => AnyLink::Serial(
                SerialLink::open(port, *baud).map_err(|e| TargetError::Smp(e.into()))?,
            ),
            DeviceAddress::Udp { addr } => {
                let peer = udp::parse_addr(addr).map_err(|e| TargetError::Smp(e.into()))?;
                AnyLink::Udp(UdpLink::connect(peer).await.map_err(|e| TargetError::Smp(e.into()))?)
            }
            DeviceAddress::Usb { .. } => {
                return Err(Error::WrongAddress(format!(
                    "{address} is a USB DFU device: use `fieldpatch dfu` for it"
                )));
            }
            DeviceAddress::Swupdate { .. } => {
                return Err(Error::WrongAddress(format!(
                    "{address} is an SWUpdate gateway: use `fieldpatch device --swupdate URL` for it"
                )));
            }
            DeviceAddress::Esp { .. } => {
                return Err(Error::WrongAddress(format!(
                    "{address} is an ESP device in its ROM loader: use `fieldpatch device --esp PORT` for it"
                )));
            }
        };
        Ok(SmpDevice { fp: self, name: address.to_string(), client: SmpClient::new(link) })
    }

    /// Clear the file for a device: a bundle or vendor-signed image verified against the trust
    /// store under [`Fieldpatch::verify_policy`], or a bare image the technician allows.
    async fn clear(
        &self,
        file: &Path,
        trust: Option<&Path>,
        allow_unverified: bool,
    ) -> Result<crate::bundle::input::ClearedImage, Error> {
        let trust = match trust {
            Some(path) => Some(self.trust_store(Some(path)).await?),
            // A bare image may be vendor-signed: check it against the pinned store when there is one.
            None => match self.trust_store(None).await {
                Ok(t) => Some(t),
                Err(Error::NoTrustStore) => None,
                Err(e) => return Err(e),
            },
        };
        let policy = match &trust {
            Some(t) => self.verify_policy(t).await?,
            None => VerifyPolicy { now: self.store().clock().now(), offline_grace: None },
        };
        Ok(clear_for_device(file, trust.as_ref(), &policy, allow_unverified)?)
    }

    /// The USB DFU devices attached, in run-time or DFU mode.
    pub fn dfu_devices(&self) -> Result<Vec<DfuDeviceInfo>, Error> {
        Ok(self.connector().dfu_devices()?)
    }

    /// Where `dfu flash` sends a file, and how the visit log names the device: `device` is a USB
    /// address (`usb:VVVV:PPPP[:SERIAL]`, which must select exactly one attached device; see
    /// [`select_usb`]) or a bus location as `dfu list` shows it (`1-1.4`).
    fn dfu_location(&self, device: &str) -> Result<(String, String), Error> {
        if !device.contains(':') {
            return Ok((format!("usb:{device}"), device.to_string()));
        }
        match device.parse::<DeviceAddress>() {
            Ok(DeviceAddress::Usb { vid, pid, serial }) => {
                let devices = self.dfu_devices()?;
                let found =
                    select_usb(&devices, vid, pid, serial.as_deref()).map_err(TargetError::from)?;
                let exact = DeviceAddress::Usb { vid, pid, serial: found.serial.clone() };
                Ok((exact.to_string(), found.location.clone()))
            }
            Ok(other) => Err(Error::WrongAddress(format!(
                "{other} is not a USB address: `fieldpatch dfu` is for USB DFU devices (SMP devices: `fieldpatch device`)"
            ))),
            Err(e) => Err(Error::Invalid(e.to_string())),
        }
    }

    /// Flash the DFU file at `file` to the USB DFU device `device`: a USB address
    /// (`usb:VVVV:PPPP[:SERIAL]`, which must select exactly one attached device; see
    /// [`select_usb`]) or a bus location as `dfu list` shows it. The file must be a bare DFU
    /// file the technician allows explicitly (`allow_unverified`, recorded in the visit log); a
    /// signed bundle is refused here, it goes through the planner with
    /// [`Fieldpatch::dfu_install`]. The file's suffix is checked against the device before any
    /// byte is sent; the result says how the device checked the image.
    pub async fn dfu_flash(
        &self,
        device: &str,
        file: &Path,
        trust: Option<&Path>,
        allow_unverified: bool,
        options: DfuseOptions,
        progress: &dyn Progress,
    ) -> Result<DownloadReport, Error> {
        if looks_like_bundle(file) {
            return Err(Error::Invalid(format!(
                "{} is a patch bundle: it is installed through the planner for the inventory device it is meant for (name the device with --id ID, and --devices FILE when it is not in the synced inventory)",
                file.display()
            )));
        }
        let cleared = self.clear(file, trust, allow_unverified).await?;
        let dfu = DfuFile::parse(&cleared.bytes)?;
        let (name, location) = self.dfu_location(device)?;
        self.record_clearance(&name, &cleared, file).await?;
        let sha = hex::encode(Sha256::digest(&cleared.bytes));
        self.record(
            Some(&name),
            EventKind::FlashStarted {
                bundle_id: None,
                from_version: None,
                to_version: None,
                image_sha256: sha.clone(),
                bytes: dfu.image_len(),
            },
        )
        .await?;
        let connector = self.connector();
        let result = crate::flash::dfu::blocking_with_progress(progress, move |p| {
            connector.dfu_download(&location, &dfu, options, p)
        })
        .await;
        match result {
            Ok(report) => {
                let device_reported_hash = match report.verified_by {
                    VerifiedBy::Readback => Some(report.sha256.clone()),
                    VerifiedBy::StatusOnly => None,
                };
                self.record(
                    Some(&name),
                    EventKind::ImageUploaded { image_sha256: sha, device_reported_hash },
                )
                .await?;
                Ok(report)
            }
            Err(e) => {
                self.record(
                    Some(&name),
                    EventKind::Failed {
                        stage: FlashStage::Upload.to_string(),
                        reason: e.to_string(),
                    },
                )
                .await?;
                Err(e.into())
            }
        }
    }

    /// Install the signed bundle in `bundle` on the USB DFU device at `record.address` through
    /// the same gate and pipeline as a session. A DFU device cannot say what it runs, so the
    /// planner decides with the inventory `record` alone (vendor, model, hardware revision and
    /// the version it runs; see [`Fieldpatch::inventory_device`]) whether the bundle applies:
    /// target, upgrade path, downgrade rule. A refusal is recorded and nothing is sent; the device
    /// is not even looked up. Otherwise the device the address selects (exactly one attached
    /// device, see [`select_usb`]) receives the bundle's DFU file, read back where the device can
    /// upload, and is reconnected; an image the device cannot read back ends unverified.
    pub async fn dfu_install(
        &self,
        record: DeviceRecord,
        bundle: &Path,
        trust: &Path,
        progress: &dyn Progress,
        options: &FlashOptions,
    ) -> Result<FlashOutcome, Error> {
        if !matches!(record.address, DeviceAddress::Usb { .. }) {
            return Err(Error::WrongAddress(format!(
                "{} is not a USB address: install on {} with `fieldpatch device ... image upload`",
                record.address, record.id
            )));
        }
        let image = match self.gate_bundle(bundle, trust, &record).await? {
            Gate::UpToDate { version } => return Ok(FlashOutcome::AlreadyDone { version }),
            Gate::Flash { image } => image,
        };
        let mut target = match self.connector().open(&record).await {
            Ok(t) => t,
            Err(e) => {
                let reason = format!("cannot open {}: {e}", record.address);
                let kind = EventKind::Failed { stage: FlashStage::Open.to_string(), reason };
                self.record(Some(&record.id), kind).await?;
                return Err(e.into());
            }
        };
        self.flash_cleared(&record, target.as_mut(), &image, progress, options).await
    }

    /// The gate a signed bundle passes before it reaches one device, the same as a session's:
    /// the bundle is verified under [`Fieldpatch::verify_policy`] (and, when the signed listing
    /// restricts it to some sites, the inventory must place the device at one of them), and the
    /// planner decides with
    /// `device` (its inventory identity and the version it runs: reported by the device, or the
    /// inventory's for a device that cannot report it) whether the bundle applies. A refusal is
    /// recorded (`bundle_refused`) and returned as the planner's reason; a bundle that applies is
    /// recorded as verified and its image returned for the plan's first step.
    pub(crate) async fn gate_bundle(
        &self,
        bundle: &Path,
        trust: &Path,
        device: &DeviceRecord,
    ) -> Result<Gate, Error> {
        let trust_store = self.trust_store(Some(trust)).await?;
        let policy = self.verify_policy(&trust_store).await?;
        let mut catalog = Catalog::load_file(bundle, &trust_store, &policy);
        // A bundle the signed listing publishes to some sites only is for the devices the
        // inventory places at one of them.
        if catalog.has_site_restrictions() {
            let known = self.store().devices(None).await?;
            let site = known.into_iter().find(|d| d.id == device.id).and_then(|d| d.site_id);
            catalog = catalog.for_site(site.as_deref());
        }
        if let Some(r) = catalog.refused.first() {
            let bundle_id = r.bundle_id.clone().unwrap_or_else(|| bundle.display().to_string());
            let kind = EventKind::BundleRefused { bundle_id, reason: r.reason.clone() };
            self.record(Some(&device.id), kind).await?;
            return Err(crate::bundle::input::InputError::Bundle {
                path: bundle.display().to_string(),
                reason: r.reason.clone(),
            }
            .into());
        }
        let input = PlanInput {
            devices: vec![device.clone()],
            catalog: catalog.entries(),
            credentials: Default::default(),
            rollback_approvals: Vec::new(),
        };
        let plan = plan(&input, policy.now);
        let planned = plan.devices.first().map(|d| d.disposition.clone());
        let step = match planned {
            Some(Disposition::Patch { steps, .. }) if !steps.is_empty() => steps[0].clone(),
            Some(Disposition::UpToDate { version }) => return Ok(Gate::UpToDate { version }),
            other => {
                let reason = match other {
                    Some(Disposition::Unpatchable { why }) => why.to_string(),
                    Some(Disposition::Scheduled { not_before, .. }) => {
                        format!("outside its maintenance window until {not_before}")
                    }
                    _ => "the bundle does not apply to this device".to_string(),
                };
                let bundle_id = catalog
                    .bundles
                    .first()
                    .map(|b| b.bundle.manifest().bundle_id.clone())
                    .unwrap_or_default();
                let kind = EventKind::BundleRefused { bundle_id, reason: reason.clone() };
                self.record(Some(&device.id), kind).await?;
                return Err(Error::NotApplicable { device: device.id.clone(), reason });
            }
        };
        let verified = catalog.bundle(&step.bundle_id).map(|b| b.bundle.verdict().clone());
        if let Some(v) = verified {
            let rule = v.rule.as_ref().map_or("", AcceptRule::name).to_string();
            let kind = EventKind::BundleVerified {
                bundle_id: step.bundle_id.clone(),
                bundle_version: v.bundle_version.map(|b| b.to_string()).unwrap_or_default(),
                rule,
            };
            self.record(Some(&device.id), kind).await?;
        }
        let image = crate::session::ImageSource::image(&catalog, device, &step)
            .map_err(|reason| Error::NotApplicable { device: device.id.clone(), reason })?;
        Ok(Gate::Flash { image })
    }

    /// Send an image the gate cleared through the flash pipeline (upload, device check, test
    /// boot, health check, confirm or roll back), every step in the visit log under the device's
    /// inventory id.
    async fn flash_cleared(
        &self,
        device: &DeviceRecord,
        target: &mut dyn FlashTarget,
        image: &VerifiedImage,
        progress: &dyn Progress,
        options: &FlashOptions,
    ) -> Result<FlashOutcome, Error> {
        let sink = LogSink { log: self.log().await?, visit: None };
        // `Err` only when the visit log cannot be written: nothing more was done to the device.
        flash(&device.id, target, image, &sink, progress, options)
            .await
            .map_err(|e| Error::Batch(crate::session::batch::BatchError::Session(e.into())))
    }
}

impl SmpDevice<'_> {
    /// The mode (application or serial recovery), OS/application info and SMP buffer
    /// parameters. Optional commands the device does not support are left out, not errors.
    pub async fn info(&mut self) -> Result<DeviceInfo, Error> {
        let id = self.client.identify().await.map_err(TargetError::Smp)?;
        let params = self.client.params().await.map_err(TargetError::Smp)?;
        Ok(DeviceInfo { mode: id.mode, info: id.info, bootloader: id.bootloader, params })
    }

    /// The images in the device's slots.
    pub async fn images(&mut self) -> Result<Vec<ImageSlotState>, Error> {
        Ok(self.client.image_list().await.map_err(TargetError::Smp)?)
    }

    /// Ask the device to echo `text` (checks the link).
    pub async fn echo(&mut self, text: &str) -> Result<String, Error> {
        Ok(self.client.echo(text).await.map_err(TargetError::Smp)?)
    }

    /// Upload the image in `file` to the secondary slot, then mark it as `after` says. The file is
    /// cleared first (see the module docs); the image is marked only when the device reports the
    /// verified hash for it. A patch bundle is refused: it goes through [`SmpDevice::install`].
    pub async fn upload(
        &mut self,
        file: &Path,
        trust: Option<&Path>,
        allow_unverified: bool,
        after: AfterUpload,
        progress: &dyn Progress,
    ) -> Result<(UploadReport, Vec<ImageSlotState>), Error> {
        // A bundle names the devices it is for: it goes through the planner in `install`, never
        // around it.
        if crate::bundle::container::looks_like_bundle(file) {
            return Err(Error::Invalid(format!(
                "{} is a patch bundle: install it with the device's inventory id (`fieldpatch device ... image upload --device ID --trust FILE`), so the planner checks it applies",
                file.display()
            )));
        }
        let cleared = self.fp.clear(file, trust, allow_unverified).await?;
        self.fp.record_clearance(&self.name, &cleared, file).await?;
        let sha = hex::encode(Sha256::digest(&cleared.bytes));
        let id = self.client.identify().await.map_err(TargetError::Smp)?;
        if id.mode == SmpMode::SerialRecovery && after == AfterUpload::Test {
            return Err(Error::Invalid(
                "the device is in MCUboot serial recovery: it has no test boot (the upload overwrites the image it boots and cannot be reverted); upload without --test".into(),
            ));
        }
        let from = id.images.iter().find(|s| s.image == 0 && s.active).map(|s| s.version.clone());
        self.fp
            .record(
                Some(&self.name),
                EventKind::FlashStarted {
                    bundle_id: None,
                    from_version: from,
                    to_version: None,
                    image_sha256: sha.clone(),
                    bytes: cleared.bytes.len() as u64,
                },
            )
            .await?;
        if id.mode == SmpMode::SerialRecovery {
            let text = "the device is in MCUboot serial recovery: the upload overwrites the image it boots; there is no test boot and no rollback in this mode".to_string();
            self.fp.record(Some(&self.name), EventKind::Note { text }).await?;
        }
        let uploaded = self
            .client
            .upload_image(
                &cleared.bytes,
                cleared.device_hash.as_deref(),
                AfterUpload::Nothing,
                Default::default(),
                progress,
            )
            .await;
        let (report, states) = match uploaded {
            Ok(done) => done,
            Err(e) => {
                let reason = e.to_string();
                self.fp
                    .record(
                        Some(&self.name),
                        EventKind::Failed { stage: FlashStage::Upload.to_string(), reason },
                    )
                    .await?;
                return Err(TargetError::Smp(e).into());
            }
        };
        let slot = id.mode.upload_slot();
        let slot_hash =
            states.iter().find(|s| s.image == 0 && s.slot == slot).map(|s| s.hash.clone());
        self.fp
            .record(
                Some(&self.name),
                EventKind::ImageUploaded {
                    image_sha256: sha,
                    device_reported_hash: slot_hash.as_deref().map(hex::encode),
                },
            )
            .await?;
        let Some(hash) = slot_hash else { return Ok((report, states)) };
        let states = match after {
            AfterUpload::Nothing => states,
            // Serial recovery wrote the image MCUboot boots: nothing to mark.
            _ if id.mode == SmpMode::SerialRecovery => states,
            AfterUpload::Test => self.test(&hash).await?,
            AfterUpload::Confirm => self.confirm(Some(&hash)).await?,
        };
        Ok((report, states))
    }

    /// Install the signed bundle in `bundle` on this device through the same gate and pipeline
    /// as a session: the device's live running version is read, the bundle is verified under
    /// [`Fieldpatch::verify_policy`], and the planner decides with the device's inventory
    /// `record` (vendor, model, hardware revision) whether the bundle applies (target, upgrade
    /// path, downgrade rule). Only then is the payload sent, checked on the device, test-booted,
    /// health-checked and confirmed, or rolled back. A refusal sends nothing and is recorded.
    pub async fn install(
        self,
        bundle: &Path,
        trust: &Path,
        record: DeviceRecord,
        progress: &dyn Progress,
        options: &FlashOptions,
    ) -> Result<FlashOutcome, Error> {
        let fp = self.fp;
        let mut target = SmpTarget::from_client(self.client, self.name);
        let state = target.state().await?;
        let mut device = record;
        device.identity.firmware_version = state.running_version;
        device.identity.image_hash = state.running_hash.as_deref().map(hex::encode);
        match fp.gate_bundle(bundle, trust, &device).await? {
            Gate::UpToDate { version } => Ok(FlashOutcome::AlreadyDone { version }),
            Gate::Flash { image } => {
                fp.flash_cleared(&device, &mut target, &image, progress, options).await
            }
        }
    }

    /// Mark the image with `hash` for a test boot on the next reset.
    pub async fn test(&mut self, hash: &[u8]) -> Result<Vec<ImageSlotState>, Error> {
        self.before("image_test", Some(hash)).await?;
        let result = self.client.image_test(hash).await;
        self.after("image_test", result).await
    }

    /// Confirm the image with `hash`, or the running image.
    pub async fn confirm(&mut self, hash: Option<&[u8]>) -> Result<Vec<ImageSlotState>, Error> {
        self.before("image_confirm", hash).await?;
        let result = self.client.image_confirm(hash).await;
        self.after("image_confirm", result).await
    }

    /// Reset the device (a pending test image boots; an unconfirmed test image reverts).
    pub async fn reset(&mut self) -> Result<(), Error> {
        self.before("reset", None).await?;
        let result = self.client.reset().await;
        self.after("reset", result).await
    }

    /// Record a state-changing command before it is sent.
    async fn before(&self, command: &str, hash: Option<&[u8]>) -> Result<(), Error> {
        let kind = EventKind::DeviceCommand {
            command: command.to_string(),
            image_sha256: hash.map(hex::encode),
        };
        self.fp.record(Some(&self.name), kind).await?;
        Ok(())
    }

    /// Record what the device answered to a state-changing command.
    async fn after<T>(
        &self,
        command: &str,
        result: Result<T, fieldpatch_drivers::smp::SmpError>,
    ) -> Result<T, Error> {
        let (ok, detail) = match &result {
            Ok(_) => (true, "done".to_string()),
            Err(e) => (false, e.to_string()),
        };
        let kind = EventKind::DeviceCommandResult { command: command.to_string(), ok, detail };
        self.fp.record(Some(&self.name), kind).await?;
        Ok(result.map_err(TargetError::Smp)?)
    }
}
