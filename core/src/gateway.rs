//! One-device jobs on embedded Linux gateways that SWUpdate updates over HTTP.
//!
//! [`Fieldpatch::swupdate_install`] checks the `.swu` completely on the laptop first
//! ([`crate::image::swu`]: archive, the vendor's CMS signature against a vendor certificate of the
//! trust store in force, the device's hardware revision, every artifact's SHA-256), then reads the device's password from the OS keyring at the moment
//! of use (`device/<id>/password`; a missing one is a per-device error naming the credential and
//! how to add it) and hands it to the driver for this one upload. The job is bracketed in the visit
//! log: why the image may be sent (the vendor certificate that verified it, or
//! `unverified_image_allowed` when the technician sends it with `allow_unverified`: the trust
//! store then names no vendor certificate, or the signature does not verify against one; the
//! archive, hardware and hashes are checked all the same), `flash_started` (image hash and size)
//! before the first byte, then `image_uploaded` or
//! `failed` with the daemon's own message. After the install the gateway is asked to restart
//! into the new software (SWUpdate's `/restart`; what it answered is noted), and, given the
//! device's own health URL, the install counts as done only once that answers 2xx
//! (`health_check` in the log either way). The secret never reaches an event, an error or the
//! store. The upload hashes the bytes again as they stream; a mismatch with what was verified is
//! recorded as a failure. The device checks the same signature and hashes itself (SWUpdate with a
//! public key), and whatever rollback the gateway has (A/B slots) is the device's, not Fieldpatch's.

use crate::credentials::CredentialKind;
use crate::fieldpatch::{Error, Fieldpatch};
use crate::flash::FlashStage;
use crate::image::swu::{SwuError, SwuTarget, VerifiedSwu, verify_file};
use crate::progress::Progress;
use crate::visitlog::EventKind;
use fieldpatch_drivers::swupdate::{DigestCredentials, SwupdateClient, Timeouts};
use std::path::Path;

pub use fieldpatch_drivers::swupdate::{InstallReport, Timeouts as SwupdateTimeouts};

/// One SWUpdate install on one gateway.
#[derive(Debug, Clone)]
pub struct SwupdateJob<'a> {
    /// The gateway's id (inventory/work order), which names it in the visit log and its
    /// credential in the keyring.
    pub device: &'a str,
    /// `http://HOST:PORT` of its SWUpdate web server.
    pub url: &'a str,
    /// The digest user name (the password comes from the keyring).
    pub user: &'a str,
    /// The `.swu` file.
    pub file: &'a Path,
    /// The trust store file; `None`: the one pinned by sync. Either way it must be the trust
    /// store in force ([`Fieldpatch::trust_store`]).
    pub trust: Option<&'a Path>,
    /// Send a `.swu` whose signature Fieldpatch could not verify against a vendor certificate of
    /// the trust store (recorded in the visit log). Its archive, hardware and hashes are still
    /// checked.
    pub allow_unverified: bool,
    /// What the image must fit.
    pub target: SwuTarget,
    pub timeouts: Timeouts,
    /// After the install, ask the gateway to restart into the new software (SWUpdate's
    /// `/restart`), as its own web page does.
    pub restart: bool,
    /// The device's own health endpoint (`http://` or `https://`), which must answer 2xx within
    /// `health_timeout` after the install (and the restart) for the install to count as done.
    pub health_url: Option<&'a str>,
    pub health_timeout: std::time::Duration,
}

/// What an install did.
#[derive(Debug, Clone)]
pub struct SwupdateOutcome {
    pub verified: VerifiedSwu,
    pub report: InstallReport,
    /// What the restart request did (`None`: none was asked for).
    pub restart: Option<String>,
    /// What the health check found (`None`: no health URL).
    pub health: Option<String>,
}

impl Fieldpatch {
    /// Check the `.swu` and install it on the gateway through its SWUpdate web server; see the
    /// module docs. Nothing is sent when a check fails or the credential is missing.
    pub async fn swupdate_install(
        &self,
        job: SwupdateJob<'_>,
        progress: &dyn Progress,
    ) -> Result<SwupdateOutcome, Error> {
        let client = SwupdateClient::new(job.url, job.timeouts)?;
        progress.phase("verify");
        if crate::bundle::container::looks_like_bundle(job.file) {
            return Err(Error::Invalid(format!(
                "{} is a patch bundle: it is installed through the planner for the inventory gateway it is meant for (`fieldpatch plan` and `fieldpatch session`)",
                job.file.display()
            )));
        }
        let trust = self.trust_store(job.trust).await?;
        let certs: Vec<(String, String)> =
            trust.vendor_certificates().iter().map(|c| (c.id.clone(), c.pem.clone())).collect();
        let (verified, clearance) = match self.verify_swu(&job, certs, trust.version()).await? {
            Ok(v) => v,
            Err(e) => {
                self.record(
                    Some(job.device),
                    EventKind::Failed { stage: "verify".into(), reason: e.to_string() },
                )
                .await?;
                return Err(e);
            }
        };
        self.record(Some(job.device), clearance).await?;

        let secret = match self
            .credentials()
            .await?
            .device_secret(job.device, None, CredentialKind::Password)
            .await
        {
            Ok(s) => s,
            Err(crate::credentials::CredentialError::NoDeviceCredential { .. }) => {
                return Err(Error::MissingCredential {
                    device: job.device.to_string(),
                    credential: format!("device/{}/password", job.device),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let credentials = DigestCredentials::new(job.user, secret.expose());
        drop(secret);

        // Wrong credentials and an unreachable gateway are found before anything is recorded as
        // started: no byte of the image is sent for them.
        if let Err(e) = client.authenticate(Some(&credentials)).await {
            self.record(
                Some(job.device),
                EventKind::Failed { stage: "authenticate".into(), reason: e.to_string() },
            )
            .await?;
            return Err(e.into());
        }

        let sha = hex::encode(verified.file_sha256);
        self.record(
            Some(job.device),
            EventKind::FlashStarted {
                bundle_id: None,
                from_version: None,
                to_version: verified.description.version.clone(),
                image_sha256: sha.clone(),
                bytes: verified.file_len,
            },
        )
        .await?;
        let result = client.install(job.file, Some(&credentials), progress).await;
        match result {
            Ok(report) if report.sha256 == verified.file_sha256 => {
                self.record(
                    Some(job.device),
                    EventKind::ImageUploaded { image_sha256: sha, device_reported_hash: None },
                )
                .await?;
                let restart = if job.restart {
                    progress.phase("restart");
                    let said = match client.restart(Some(&credentials)).await {
                        Ok(()) => "restart requested".to_string(),
                        Err(e) => format!(
                            "the restart request failed ({e}): the gateway restarts by its own policy"
                        ),
                    };
                    self.record(
                        Some(job.device),
                        EventKind::Note { text: format!("{}: {said}", job.device) },
                    )
                    .await?;
                    Some(said)
                } else {
                    None
                };
                drop(credentials);
                let health = match job.health_url {
                    None => None,
                    Some(url) => Some(self.gateway_health(&client, &job, url, progress).await?),
                };
                Ok(SwupdateOutcome { verified, report, restart, health })
            }
            Ok(report) => {
                let reason = format!(
                    "the file changed while it was sent: verified {sha}, sent {}",
                    hex::encode(report.sha256)
                );
                self.record(
                    Some(job.device),
                    EventKind::Failed {
                        stage: FlashStage::Upload.to_string(),
                        reason: reason.clone(),
                    },
                )
                .await?;
                Err(Error::Invalid(reason))
            }
            Err(e) => {
                self.record(
                    Some(job.device),
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
}

impl Fieldpatch {
    /// Poll the gateway's own health URL after an install until it answers 2xx or
    /// `job.health_timeout` passes; the verdict goes into the visit log (`health_check`), and a
    /// gateway that never answers is an error: the install is not done.
    async fn gateway_health(
        &self,
        client: &SwupdateClient,
        job: &SwupdateJob<'_>,
        url: &str,
        progress: &dyn Progress,
    ) -> Result<String, Error> {
        progress.phase("health check");
        let deadline = tokio::time::Instant::now() + job.health_timeout;
        let every = std::time::Duration::from_millis(250);
        match client.await_healthy(url, deadline, every).await {
            Ok(()) => {
                let detail = format!("{url} answered 2xx after the install");
                self.record(
                    Some(job.device),
                    EventKind::HealthCheck { passed: true, detail: detail.clone() },
                )
                .await?;
                Ok(detail)
            }
            Err(e) => {
                let detail = format!(
                    "{e}; still failing {} s after the install: the new software is installed but the device is not healthy, check it by hand (SWUpdate offers no revert)",
                    job.health_timeout.as_secs()
                );
                self.record(
                    Some(job.device),
                    EventKind::HealthCheck { passed: false, detail: detail.clone() },
                )
                .await?;
                Err(Error::Invalid(format!("{}: {detail}", job.device)))
            }
        }
    }

    /// The checks of [`Fieldpatch::swupdate_install`] before anything is sent, and the event
    /// that records why the image may go: `Ok(Err(e))` is a refusal to record.
    async fn verify_swu(
        &self,
        job: &SwupdateJob<'_>,
        certs: Vec<(String, String)>,
        trust_version: u64,
    ) -> Result<Result<(VerifiedSwu, EventKind), Error>, Error> {
        let (file, target) = (job.file.to_path_buf(), job.target.clone());
        let shown = job.file.display().to_string();
        let allow = job.allow_unverified;
        let checked = tokio::task::spawn_blocking(move || {
            // Each certificate on its own, so the log can say which one vouched for the image.
            let mut signed = Err(SwuError::VendorCertificate(format!(
                "the trust store in force names none, so the signature of {shown} cannot be checked: add the vendor's certificate in a trust-store rotation (`fieldpatch keys trust-init --vendor-cert PEM`) and sync, or send it with --allow-unverified (recorded in the visit log)"
            )));
            for (id, pem) in &certs {
                signed = verify_file(&file, Some(pem.as_bytes()), &target).map(|v| (v, id.clone()));
                if !matches!(signed, Err(SwuError::BadSignature(_))) {
                    break;
                }
            }
            match signed {
                Ok((v, id)) => Ok((v, Ok(id))),
                Err(e @ (SwuError::BadSignature(_) | SwuError::VendorCertificate(_))) if allow => {
                    verify_file(&file, None, &target)
                        .map(|v| (v, Err(e.to_string())))
                        .map_err(Error::from)
                }
                Err(e) => Err(Error::from(e)),
            }
        })
        .await
        .map_err(|e| Error::Invalid(format!("verification stopped: {e}")))?;
        Ok(checked.map(|(v, by)| {
            let sha = hex::encode(v.file_sha256);
            let kind = match by {
                Err(why) => EventKind::UnverifiedImageAllowed {
                    image_sha256: sha,
                    reason: format!("{}: sent with --allow-unverified ({why})", job.file.display()),
                },
                Ok(cert) => EventKind::Note {
                    text: format!(
                        "SWUpdate image {} ({sha}) verified by vendor certificate {cert} of trust store version {trust_version}",
                        job.file.display()
                    ),
                },
            };
            (v, kind)
        }))
    }
}
