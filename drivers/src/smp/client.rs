//! The SMP client: sequence numbers, timeouts and retries, and the windowed image upload.
//!
//! Upload design. The device tells us its receive buffer (`buf_size`) and how many it has
//! (`buf_count`). Each chunk fills one buffer, and up to `buf_count` chunks are in flight, so the
//! link never idles waiting for an answer. Every answer carries `off`, the offset the device
//! expects next; the device processes chunks in order and answers a chunk at the wrong offset with
//! its current `off` without writing. So the client needs no bookkeeping beyond "resend from the
//! `off` the device reports": after a lost or corrupted chunk, after a timeout, and after a reboot
//! (the device then reports `off: 0`, the client resends the first chunk with `len` and `sha`, and
//! a device that kept the partial upload answers with where it got to). The first chunk has a long timeout because it makes the device erase the slot; the chunks after it are
//! queued behind it in the device's buffers, so the link does not idle during the erase.
//!
//! Identification ([`SmpClient::identify`]) tells an application's SMP server from MCUboot's
//! serial recovery: the bootloader-info command where the device has it, otherwise the shape of
//! what it answers and refuses (serial recovery refuses OS info with rc 8 and lists images
//! without marking any of them active). Optional commands a device does not support never fail
//! identification. In serial recovery an upload goes to the primary slot of image 0 and the
//! answers carry no `match`; there is no test boot.

use super::commands::{self, Command, ImageUpload, Params, UploadAck};
use super::header::{HEADER_LEN, Header};
use super::{ImageSlotState, SmpError};
use crate::progress::{Progress, TransferProgress};
use crate::transport::{Link, TransportError};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

/// How long to wait, and how often to try again.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Wait for the answer to an ordinary request or chunk.
    pub request: Duration,
    /// Wait for the answer to the first upload chunk (the device erases the slot first).
    pub first_chunk: Duration,
    /// Attempts after the first for a request, and consecutive failed rounds in an upload.
    pub retries: u32,
    /// First back-off delay; doubles on each consecutive failure, capped at 2 s.
    pub backoff: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            request: Duration::from_secs(3),
            first_chunk: Duration::from_secs(30),
            retries: 5,
            backoff: Duration::from_millis(100),
        }
    }
}

/// Choices for [`SmpClient::upload`].
#[derive(Debug, Clone, Copy, Default)]
pub struct UploadOptions {
    /// Image number (0 for single-image devices).
    pub image: u32,
    /// Ask the device to refuse images that are not newer than the running one.
    pub upgrade: bool,
    /// Requests in flight; `None` uses the device's `buf_count`. `Some(1)` is stop-and-wait.
    pub window: Option<usize>,
    /// Largest SMP packet; `None` derives it from the device's `buf_size`.
    pub max_packet: Option<usize>,
}

/// What happened during an upload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UploadReport {
    pub bytes: u64,
    pub elapsed: Duration,
    /// The offset the device reported for the first chunk (non-zero when resumed).
    pub resumed_from: u64,
    /// Rounds that had to be resent (lost or corrupted chunks, timeouts, device reboots).
    pub retries: u32,
    /// Data bytes per chunk and requests in flight that were used.
    pub chunk: usize,
    pub window: usize,
}

/// What to do with an image after it is uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AfterUpload {
    #[default]
    Nothing,
    /// Mark for a test boot (reverts on the next reset unless confirmed).
    Test,
    /// Mark as permanent.
    Confirm,
}

/// What answers SMP on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SmpMode {
    /// The application's SMP server (MCUmgr): uploads go to the secondary slot, test and confirm.
    Application,
    /// MCUboot's serial recovery: uploads overwrite the primary slot; no test boot, no revert.
    SerialRecovery,
}

impl SmpMode {
    /// Whether MCUboot can test-boot and revert an upload in this mode.
    pub fn can_revert(self) -> bool {
        self == SmpMode::Application
    }

    /// The slot an upload to image 0 is written to.
    pub fn upload_slot(self) -> u32 {
        match self {
            SmpMode::Application => 1,
            SmpMode::SerialRecovery => 0,
        }
    }
}

impl SmpMode {
    /// The mode the answers show: an application lists the image it runs as active and answers
    /// OS info or bootloader info; MCUboot's serial recovery refuses both (rc 8) and never marks
    /// an image active. `answers_bootloader_info` / `answers_os_info`: the command was answered
    /// (false only when the device refused it as not supported).
    pub fn from_answers(
        answers_bootloader_info: bool,
        answers_os_info: bool,
        images: &[ImageSlotState],
    ) -> SmpMode {
        if !answers_bootloader_info && !answers_os_info && !images.iter().any(|i| i.active) {
            SmpMode::SerialRecovery
        } else {
            SmpMode::Application
        }
    }
}

impl std::fmt::Display for SmpMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SmpMode::Application => "application",
            SmpMode::SerialRecovery => "serial recovery (MCUboot)",
        })
    }
}

/// What [`SmpClient::identify`] learnt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identification {
    pub mode: SmpMode,
    /// OS/application info; `None` when the device does not support the command.
    pub info: Option<String>,
    /// The bootloader's name where the device tells it.
    pub bootloader: Option<String>,
    /// The images listed; empty when there are none.
    pub images: Vec<ImageSlotState>,
}

/// A device's answer "not supported" (rc 8, `MGMT_ERR_ENOTSUP`).
fn unsupported(e: &SmpError) -> bool {
    matches!(e, SmpError::Device(d) if d.rc == 8)
}

/// An SMP client over one link.
#[derive(Debug)]
pub struct SmpClient<L: Link> {
    link: L,
    seq: u8,
    pub timeouts: Timeouts,
    params: Option<Params>,
    mode: Option<SmpMode>,
}

struct InFlight {
    seq: u8,
    off: u64,
    end: u64,
    deadline: Instant,
    sent: Instant,
}

impl<L: Link> SmpClient<L> {
    pub fn new(link: L) -> Self {
        SmpClient { link, seq: 0, timeouts: Timeouts::default(), params: None, mode: None }
    }

    pub fn link(&self) -> &L {
        &self.link
    }

    fn next_seq(&mut self) -> u8 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(1);
        s
    }

    /// Send a command and wait for its answer, retrying with back-off on silence or corruption.
    pub async fn request<C: Command>(&mut self, cmd: &C) -> Result<C::Response, SmpError> {
        self.request_with(cmd, self.timeouts.request).await
    }

    async fn request_with<C: Command>(
        &mut self,
        cmd: &C,
        timeout: Duration,
    ) -> Result<C::Response, SmpError> {
        let attempts = self.timeouts.retries + 1;
        let mut last_bad = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(backoff(self.timeouts.backoff, attempt)).await;
                self.link.drain();
            }
            let seq = self.next_seq();
            let bytes = cmd.to_bytes(seq)?;
            self.link.send(&bytes).await?;
            // Slow serial links: allow for the request and a generous answer on the wire.
            let deadline = Instant::now() + timeout + self.link.wire_time(bytes.len() + 1024);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match self.link.recv(left).await {
                    Ok(packet) => match Header::parse(&packet) {
                        Ok(h) if h.seq == seq => match C::parse_response(&packet, seq) {
                            Err(SmpError::Device(e)) if e.is_transient() => {
                                last_bad = Some(SmpError::Device(e));
                                break;
                            }
                            Err(SmpError::Mismatch(m)) => {
                                last_bad = Some(SmpError::Mismatch(m));
                            }
                            // Damaged on the way (UDP has no CRC): ask again.
                            Err(SmpError::Malformed(m)) => {
                                last_bad = Some(SmpError::Malformed(m));
                                break;
                            }
                            other => return other,
                        },
                        // A late answer to an earlier request, or noise: keep waiting.
                        Ok(_) => {}
                        Err(e) => last_bad = Some(e),
                    },
                    Err(TransportError::Timeout(_)) => break,
                    Err(TransportError::BadFrame(m)) => {
                        last_bad = Some(SmpError::Malformed(m));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Err(match last_bad {
            Some(e @ SmpError::Device(_)) => e,
            Some(SmpError::Malformed(m)) => SmpError::Malformed(format!(
                "{m} (to {}, on every one of {attempts} attempts)",
                cmd.name()
            )),
            Some(e) => SmpError::Failed { what: cmd.name(), attempts, last: e.to_string() },
            None => SmpError::Timeout { what: cmd.name(), after: timeout, attempts },
        })
    }

    /// The mode [`SmpClient::identify`] found, if it ran since the last reset.
    pub fn mode(&self) -> Option<SmpMode> {
        self.mode
    }

    /// Tell an application's SMP server from MCUboot's serial recovery, and read what the
    /// device says about itself. Commands the device does not support (rc 8) are skipped.
    pub async fn identify(&mut self) -> Result<Identification, SmpError> {
        let bootloader = match self.request(&commands::BootloaderInfo { query: None }).await {
            Ok(b) => b.bootloader,
            Err(e) if unsupported(&e) => None,
            Err(e) => return Err(e),
        };
        let info = match self.request(&commands::AppInfo { format: Some("a".into()) }).await {
            Ok(i) => Some(i),
            Err(e) if unsupported(&e) => None,
            Err(e) => return Err(e),
        };
        let images = self.image_list().await?;
        // An application lists the image it runs as active; MCUboot's serial recovery never
        // marks one, and answers neither OS info nor bootloader info.
        let mode = SmpMode::from_answers(bootloader.is_some(), info.is_some(), &images);
        self.mode = Some(mode);
        Ok(Identification { mode, info, bootloader, images })
    }

    /// The device's buffer parameters (cached). Devices without the command get the Zephyr
    /// defaults of a single small buffer: MCUboot's serial recovery receive size (1024) when the
    /// device is known to be in it, the application's SMP buffer (384) otherwise.
    pub async fn params(&mut self) -> Result<Params, SmpError> {
        if let Some(p) = self.params {
            return Ok(p);
        }
        let p = match self.request(&commands::McumgrParams).await {
            Ok(p) => p,
            Err(e) if unsupported(&e) => match self.mode {
                Some(SmpMode::SerialRecovery) => Params { buf_size: 1024, buf_count: 1 },
                _ => Params { buf_size: 384, buf_count: 1 },
            },
            Err(e) => return Err(e),
        };
        self.params = Some(p);
        Ok(p)
    }

    pub async fn echo(&mut self, text: &str) -> Result<String, SmpError> {
        self.request(&commands::Echo { text: text.to_string() }).await
    }

    pub async fn app_info(&mut self) -> Result<String, SmpError> {
        self.request(&commands::AppInfo { format: Some("a".into()) }).await
    }

    pub async fn image_list(&mut self) -> Result<Vec<ImageSlotState>, SmpError> {
        self.request(&commands::ImageStateRead).await
    }

    /// Mark the image with `hash` for a test boot.
    pub async fn image_test(&mut self, hash: &[u8]) -> Result<Vec<ImageSlotState>, SmpError> {
        self.request(&commands::ImageStateWrite { hash: Some(hash.to_vec()), confirm: false }).await
    }

    /// Confirm the image with `hash`, or the running image when `None`.
    pub async fn image_confirm(
        &mut self,
        hash: Option<&[u8]>,
    ) -> Result<Vec<ImageSlotState>, SmpError> {
        self.request(&commands::ImageStateWrite { hash: hash.map(<[u8]>::to_vec), confirm: true })
            .await
    }

    pub async fn image_erase(&mut self) -> Result<(), SmpError> {
        self.request_with(&commands::ImageErase { slot: None }, self.timeouts.first_chunk).await
    }

    /// Ask the device to reset. The device answers before it resets; the cached buffer
    /// parameters are dropped since the next firmware may differ.
    pub async fn reset(&mut self) -> Result<(), SmpError> {
        self.params = None;
        self.mode = None;
        // Not retried: a second reset could hit the freshly booted image.
        let seq = self.next_seq();
        self.link.send(&commands::Reset.to_bytes(seq)?).await?;
        let deadline = Instant::now() + self.timeouts.request + self.link.wire_time(64);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let received = if left.is_zero() {
                Err(TransportError::Timeout(left))
            } else {
                self.link.recv(left).await
            };
            match received {
                Ok(p) if Header::parse(&p).is_ok_and(|h| h.seq == seq) => {
                    return commands::Reset::parse_response(&p, seq);
                }
                Ok(_) | Err(TransportError::BadFrame(_)) => {}
                Err(TransportError::Timeout(_)) => {
                    return Err(SmpError::Timeout {
                        what: "reset (the device may have reset anyway: list its images to see)"
                            .into(),
                        after: self.timeouts.request,
                        attempts: 1,
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Upload `data` (an image whose bytes the caller has verified) to the device's secondary
    /// slot, then optionally mark it for test or confirm it. Returns the slot state after marking.
    ///
    /// `expected_hash` is the image hash the caller verified (for MCUboot images, the SHA-256 TLV):
    /// when given, the image is marked only if the device reports exactly that hash for the
    /// secondary slot. Without it, the device's own check of the upload `sha` is all there is.
    pub async fn upload_image(
        &mut self,
        data: &[u8],
        expected_hash: Option<&[u8]>,
        after: AfterUpload,
        opts: UploadOptions,
        progress: &dyn Progress,
    ) -> Result<(UploadReport, Vec<ImageSlotState>), SmpError> {
        let mode = match self.mode {
            Some(m) => m,
            None => self.identify().await?.mode,
        };
        if mode == SmpMode::SerialRecovery && after == AfterUpload::Test {
            return Err(SmpError::Upload(
                "the device is in MCUboot serial recovery: it has no test boot (an upload overwrites the image it boots and cannot be reverted); upload without --test".into(),
            ));
        }
        let report = self.upload(data, opts, progress).await?;
        progress.phase("verify");
        let states = self.image_list().await?;
        let slot_no = mode.upload_slot();
        let Some(slot) = states.iter().find(|s| s.image == opts.image && s.slot == slot_no) else {
            return Err(SmpError::Upload(format!(
                "the device does not list an image in the {} slot after the upload",
                if slot_no == 0 { "primary" } else { "secondary" }
            )));
        };
        let hash = slot.hash.clone();
        if let Some(expected) = expected_hash
            && expected != hash.as_slice()
        {
            return Err(SmpError::Upload(format!(
                "the device reports hash {} for the uploaded image but {} was verified; the image was not marked for boot. Upload again",
                commands::hex_string(&hash),
                commands::hex_string(expected)
            )));
        }
        let states = match after {
            AfterUpload::Nothing => states,
            // Serial recovery wrote the image MCUboot boots: nothing to mark.
            _ if mode == SmpMode::SerialRecovery => states,
            AfterUpload::Test => self.image_test(&hash).await?,
            AfterUpload::Confirm => self.image_confirm(Some(&hash)).await?,
        };
        Ok((report, states))
    }

    /// Upload `data` to the secondary slot with a window of requests in flight, resuming from
    /// whatever offset the device reports.
    pub async fn upload(
        &mut self,
        data: &[u8],
        opts: UploadOptions,
        progress: &dyn Progress,
    ) -> Result<UploadReport, SmpError> {
        if data.len() > u32::MAX as usize {
            return Err(SmpError::TooLarge { len: data.len() });
        }
        if data.is_empty() {
            return Err(SmpError::Upload("the image is empty".into()));
        }
        let params = self.params().await?;
        let total = data.len() as u64;
        let sha: [u8; 32] = Sha256::digest(data).into();
        let budget = opts.max_packet.unwrap_or_else(|| {
            self.link.fit_packet(self.link.packet_budget(params.buf_size as usize))
        });
        let window = opts.window.unwrap_or(params.buf_count as usize).clamp(1, 32);
        let chunk = max_data(budget, total, false, &opts, &sha)?;
        let first_chunk = max_data(budget, total, true, &opts, &sha)?;
        if chunk == 0 || first_chunk == 0 {
            return Err(SmpError::Upload(format!(
                "the device buffer ({} bytes) is too small to carry image data",
                params.buf_size
            )));
        }

        let started = Instant::now();
        let mut acked: u64 = 0;
        let mut next: u64 = 0;
        let mut in_flight: Vec<InFlight> = Vec::with_capacity(window);
        let mut retries = 0u32;
        let mut failures = 0u32;
        let mut resumed_from = None;
        let mut bad_frame: Option<String> = None;
        // The first chunk may take the whole erase allowance to be answered. Once the ordinary
        // request time has passed without its answer, one echo asks whether the device is busy
        // (erasing: it answers nothing) or answers (it rebooted or lost the chunk: send it again
        // now rather than at the end of the erase allowance).
        let mut went_back = 0u32;
        let mut probed_first = false;
        let mut probe: Option<(u8, Instant)> = None;
        progress.phase("erase");

        loop {
            // Fill the window. A first chunk (off 0) only starts an empty window; the chunks
            // after it wait in the device's buffers while it erases, so their deadline is at
            // least the first chunk's.
            while next < total && in_flight.len() < window && (next != 0 || in_flight.is_empty()) {
                let first = next == 0;
                let len = if first { first_chunk } else { chunk };
                let end = (next + len as u64).min(total);
                let req = ImageUpload {
                    image: opts.image,
                    off: next,
                    data: &data[next as usize..end as usize],
                    len: first.then_some(total),
                    sha: first.then_some(sha),
                    upgrade: (first && opts.upgrade).then_some(true),
                };
                let seq = self.next_seq();
                self.link.send(&req.to_bytes(seq)?).await?;
                let wait = if first { self.timeouts.first_chunk } else { self.timeouts.request };
                // The chunks queued ahead of this one must cross the wire first.
                let queued = in_flight.iter().map(|f| (f.end - f.off) as usize).sum::<usize>();
                let mut deadline = Instant::now() + wait + self.link.wire_time(queued + budget);
                if let Some(f) = in_flight.iter().find(|f| f.off == 0) {
                    deadline = deadline.max(f.deadline);
                }
                in_flight.push(InFlight { seq, off: next, end, deadline, sent: Instant::now() });
                next = end;
            }
            let Some(oldest) = in_flight.iter().map(|f| f.deadline).min() else {
                // Nothing in flight and nothing to send: only when acked == total.
                break;
            };
            let first_sent = in_flight.iter().find(|f| f.off == 0).map(|f| f.sent);
            let probe_at = first_sent.filter(|_| !probed_first).map(|t| t + self.timeouts.request);
            let wake = [Some(oldest), probe_at, probe.map(|(_, d)| d)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(oldest);
            let left = wake.saturating_duration_since(Instant::now());
            // A device flooding stale answers must not keep us past the deadline.
            let received = if left.is_zero() {
                Err(TransportError::Timeout(left))
            } else {
                self.link.recv(left).await
            };
            let outcome = match received {
                Ok(packet) => {
                    let Ok(h) = Header::parse(&packet) else {
                        bad_frame = Some("a packet too short for an SMP header".into());
                        continue;
                    };
                    if probe.is_some_and(|(seq, _)| seq == h.seq) {
                        probe = None;
                        if !in_flight.iter().any(|f| f.off == 0) {
                            continue;
                        }
                        // Alive and not erasing: the first chunk (or its answer) was lost.
                        Err("the device answers, but not the first chunk".to_string())
                    } else {
                        let Some(pos) = in_flight.iter().position(|f| f.seq == h.seq) else {
                            continue; // A late answer to a request we already gave up on.
                        };
                        match ImageUpload::parse_response(&packet, h.seq) {
                            Ok(ack) => Ok((in_flight.remove(pos), ack)),
                            Err(SmpError::Device(e)) if e.is_transient() => {
                                in_flight.remove(pos);
                                Err(e.to_string())
                            }
                            Err(e @ SmpError::Device(_)) => return Err(e),
                            Err(e) => {
                                // A damaged answer counts as a lost one: a later answer
                                // acknowledges the chunk, or its deadline makes it go again.
                                bad_frame = Some(e.to_string());
                                continue;
                            }
                        }
                    }
                }
                Err(TransportError::Timeout(_)) if Instant::now() < oldest => {
                    // Not a chunk's deadline: time to ask whether the device is alive, or the
                    // probe went unanswered (the device is busy erasing: keep waiting).
                    if probe_at.is_some_and(|t| Instant::now() >= t) {
                        probed_first = true;
                        let seq = self.next_seq();
                        let echo = commands::Echo { text: "erasing?".into() };
                        self.link.send(&echo.to_bytes(seq)?).await?;
                        probe = Some((seq, Instant::now() + self.timeouts.request));
                    } else if probe.is_some_and(|(_, d)| Instant::now() >= d) {
                        probe = None;
                    }
                    continue;
                }
                Err(TransportError::Timeout(_)) => Err("no answer in time".to_string()),
                Err(TransportError::BadFrame(m)) => {
                    // A corrupted answer: the chunk it answered will time out and be resent.
                    bad_frame = Some(m);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            match outcome {
                Ok((sent, UploadAck { off, matched })) => {
                    if off > total {
                        return Err(SmpError::Malformed(format!(
                            "device reports offset {off} beyond the image length {total}"
                        )));
                    }
                    let progressed = off > acked;
                    if progressed {
                        failures = 0;
                    }
                    if off < acked {
                        // The device lost what it had acknowledged (it rebooted, or it closed
                        // the finished upload while its last answer was lost). Bounded: a device
                        // that keeps doing it would otherwise make an upload that never ends.
                        went_back += 1;
                        if went_back > self.timeouts.retries {
                            return Err(SmpError::Upload(format!(
                                "the device went back from byte {acked} to byte {off} of {total} {went_back} times; reset the device and upload again"
                            )));
                        }
                    }
                    if sent.off == 0 {
                        // The erase is over: the chunks sent behind the first waited for it
                        // with its long deadline; from now on each is owed an answer within
                        // the ordinary time (after the chunks queued ahead of it), so a lost
                        // one goes again at once instead of after the erase allowance.
                        let now = Instant::now();
                        let mut queued = 0usize;
                        for f in in_flight.iter_mut() {
                            let due =
                                now + self.timeouts.request + self.link.wire_time(queued + budget);
                            f.deadline = f.deadline.min(due);
                            queued += (f.end - f.off) as usize;
                        }
                    }
                    if sent.off == 0 && resumed_from.is_none() {
                        resumed_from = Some(off);
                        if off > 0 && off != sent.end {
                            progress.note(&format!("resuming the upload at byte {off}"));
                        }
                        progress.phase("upload");
                    }
                    acked = off;
                    progress.transfer(TransferProgress {
                        done: acked,
                        total,
                        elapsed: started.elapsed(),
                    });
                    if matched == Some(false) {
                        return Err(SmpError::Upload(
                            "the device reports that the uploaded image does not match its SHA-256; nothing was marked for boot, upload again".into(),
                        ));
                    }
                    if acked == total {
                        break;
                    }
                    // Chunks that end at or before `off` are written even if their own answers
                    // were lost: stop waiting for them.
                    in_flight.retain(|f| f.end > off);
                    if off != sent.end {
                        // The device wants something else (a chunk was lost, or it rebooted and
                        // lost the session): everything in flight is void, resend from `off`.
                        if !progressed {
                            retries += 1;
                            failures += 1;
                            if failures > self.timeouts.retries {
                                return Err(SmpError::Upload(format!(
                                    "the device keeps asking for byte {off} of {total} without making progress ({failures} times in a row); reset the device and upload again"
                                )));
                            }
                            progress.note(&format!("device asked for byte {off} again; resending"));
                        }
                        in_flight.clear();
                        next = off;
                    }
                }
                Err(problem) => {
                    let last_problem = match bad_frame.take() {
                        Some(bad) => format!("{problem} (after {bad})"),
                        None => problem,
                    };
                    retries += 1;
                    failures += 1;
                    if failures > self.timeouts.retries {
                        return Err(SmpError::Upload(format!(
                            "gave up at byte {acked} of {total} after {failures} failed attempts in a row; last problem: {last_problem}. Run the upload again: it resumes where it stopped"
                        )));
                    }
                    progress.note(&format!("{last_problem}; retrying from byte {acked}"));
                    tokio::time::sleep(backoff(self.timeouts.backoff, failures)).await;
                    self.link.drain();
                    in_flight.clear();
                    next = acked;
                    (probed_first, probe) = (false, None);
                }
            }
        }
        Ok(UploadReport {
            bytes: total,
            elapsed: started.elapsed(),
            resumed_from: resumed_from.unwrap_or(0),
            retries,
            chunk,
            window,
        })
    }
}

fn backoff(base: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1 << attempt.saturating_sub(1).min(5)).min(Duration::from_secs(2))
}

/// The most image bytes that fit in one upload request of at most `budget` bytes (and of a body
/// the header's 16-bit length can announce, whatever the budget).
fn max_data(
    budget: usize,
    total: u64,
    first: bool,
    opts: &UploadOptions,
    sha: &[u8; 32],
) -> Result<usize, SmpError> {
    let probe = ImageUpload {
        image: opts.image,
        // The largest offset costs the most CBOR bytes.
        off: if first { 0 } else { total },
        data: &[],
        len: first.then_some(total),
        sha: first.then_some(*sha),
        upgrade: (first && opts.upgrade).then_some(true),
    };
    let budget = budget.min(HEADER_LEN + usize::from(u16::MAX));
    let empty = probe.to_bytes(0)?.len(); // includes a 1-byte length prefix for the empty data
    let room = budget.saturating_sub(empty - 1);
    // CBOR byte-string prefix: 1 byte up to 23, 2 up to 255, 3 up to 65535.
    let d = [(1usize, 23usize), (2, 255), (3, 65535)]
        .iter()
        .filter_map(|&(prefix, max)| room.checked_sub(prefix).map(|d| d.min(max)))
        .max()
        .unwrap_or(0);
    Ok(d.min(total as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_fills_the_budget_exactly() {
        let sha = [7u8; 32];
        let opts = UploadOptions::default();
        for budget in [64usize, 128, 300, 512, 2044, 4096] {
            let total = 1_000_000u64;
            for first in [false, true] {
                let d = max_data(budget, total, first, &opts, &sha).unwrap();
                if d == 0 {
                    assert!(first && budget < 80, "budget {budget} gave no room");
                    continue;
                }
                let data = vec![0u8; d];
                let req = ImageUpload {
                    image: 0,
                    off: if first { 0 } else { total - 1 },
                    data: &data,
                    len: first.then_some(total),
                    sha: first.then_some(sha),
                    upgrade: None,
                };
                let len = req.to_bytes(0).unwrap().len();
                assert!(len <= budget, "budget {budget}: {len}");
                assert!(len + 2 >= budget, "budget {budget}: only {len} used");
            }
        }
        assert_eq!(max_data(20, 100, true, &opts, &sha).unwrap(), 0);
    }

    #[test]
    fn a_budget_past_the_header_limit_gives_requests_the_header_can_announce() {
        let sha = [7u8; 32];
        let opts = UploadOptions { max_packet: Some(1 << 20), ..UploadOptions::default() };
        let total = 1u64 << 24;
        for first in [false, true] {
            let d = max_data(1 << 20, total, first, &opts, &sha).unwrap();
            let data = vec![0u8; d];
            let req = ImageUpload {
                image: 0,
                off: if first { 0 } else { total - 1 },
                data: &data,
                len: first.then_some(total),
                sha: first.then_some(sha),
                upgrade: None,
            };
            let len = req.to_bytes(0).unwrap().len();
            assert!(len <= HEADER_LEN + 65_535, "{len}");
            assert!(len + 2 >= HEADER_LEN + 65_535, "only {len} used");
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let b = Duration::from_millis(100);
        assert_eq!(backoff(b, 1), b);
        assert_eq!(backoff(b, 2), b * 2);
        assert_eq!(backoff(b, 30), Duration::from_secs(2));
    }
}
