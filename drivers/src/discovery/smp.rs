//! The SMP (MCUmgr) probe: the first [`Probe`] implementation, for Zephyr devices on serial
//! ports and on UDP.
//!
//! Design decisions:
//! - Recognition is one `echo` with a short timeout and no retry on serial (one on UDP): an SMP
//!   server answers it in milliseconds, and a port that is silent costs only that timeout. A
//!   device that answers SMP but has echo disabled (an SMP error such as "not supported") is
//!   still an SMP device; only a well-formed SMP answer counts, so a shell that echoes our frame
//!   back or a log console is [`ProbeOutcome::Unrecognized`], not a device.
//! - Once a device answered, the probe reads what identifies it with the ordinary client
//!   ([`SmpClient`]) and its usual timeouts: MCUmgr parameters, each OS info field by its own
//!   format letter (one letter per request, because the all-fields answer `a` is space
//!   separated and the build date contains spaces), and the image state. Commands the device
//!   does not support leave their facts empty; other failures are listed in
//!   [`SmpFacts::problems`]. When the device stops answering, or the deadline draws near, the
//!   probe stops asking and reports what it has.
//! - Mode: an answer to OS info or an active image is the application's SMP server; a device
//!   that refuses OS info and bootloader info as not supported and marks no image active is
//!   MCUboot's serial recovery ([`SmpMode::from_answers`], the rule identification uses). In
//!   recovery the listed image is the one the bootloader will boot, not one that runs.
//! - Identity: Zephyr's hardware platform (`i`, `BOARD[@REVISION]`) gives the model and the
//!   hardware revision; the running image of image 0 gives the firmware version and image hash.
//!   SMP has no standard vendor or serial-number query: those come from other sources (mDNS TXT,
//!   USB descriptors), which `core` merges.
//! - The probe opens serial ports itself at the baud rate it is given, through the same
//!   [`SerialLink`] the flash pipeline uses; everything about whether a port may be opened is
//!   decided by the framework before.

use super::probe::{
    BoxFuture, Details, Endpoint, Identity, Probe, ProbeContext, ProbeError, ProbeOutcome,
    ProbeReport, clean_text,
};
use crate::smp::commands::{self, hex_string};
use crate::smp::{ImageSlotState, Params, SmpClient, SmpError, SmpMode, Timeouts};
use crate::transport::{Link, SerialLink, TransportError, UdpLink};
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The DNS-SD service type of SMP over UDP.
pub const SMP_UDP_SERVICE: &str = "_mcumgr._udp.local.";

/// The text the probe asks SMP devices to echo.
pub const ECHO_TEXT: &str = "fieldpatch-discovery";

/// The SMP probe (serial and UDP).
#[derive(Debug, Clone, Default)]
pub struct SmpProbe {
    _private: (),
}

impl SmpProbe {
    pub fn new() -> SmpProbe {
        SmpProbe::default()
    }
}

/// What the SMP probe read from a device.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SmpFacts {
    /// Whether the device echoed the probe's text (false: it answered SMP but refused echo).
    pub echo: bool,
    /// The MCUmgr buffer parameters, when the device supports the command.
    pub params: Option<Params>,
    /// The OS/application info fields the device reported.
    pub os: OsInfo,
    /// The image slots (empty when the device does not support image management).
    pub images: Vec<ImageSlotState>,
    /// What answers: the application's SMP server or MCUboot's serial recovery (`None`: the
    /// answers did not say, for example when the deadline stopped the questions).
    pub mode: Option<SmpMode>,
    /// Requests that failed other than by not being supported (what, and why).
    pub problems: Vec<String>,
}

/// Zephyr's OS/application info, one field per format letter (`None`: not reported).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OsInfo {
    /// `s`: kernel name (`Zephyr`).
    pub kernel_name: Option<String>,
    /// `n`: node name (the network host name, the Bluetooth name, or `unknown`).
    pub node_name: Option<String>,
    /// `r`: kernel release (the build version).
    pub kernel_release: Option<String>,
    /// `v`: kernel version.
    pub kernel_version: Option<String>,
    /// `b`: build date and time (when the device is built with it).
    pub build_time: Option<String>,
    /// `m`: machine (the architecture).
    pub machine: Option<String>,
    /// `p`: processor (the SoC).
    pub processor: Option<String>,
    /// `i`: hardware platform, `BOARD[@REVISION]`.
    pub hardware_platform: Option<String>,
    /// `o`: operating system.
    pub operating_system: Option<String>,
}

impl OsInfo {
    /// The format letters, in the order Zephyr prints them, with the field each fills.
    pub const LETTERS: [char; 9] = ['s', 'n', 'r', 'v', 'b', 'm', 'p', 'i', 'o'];

    fn field(&mut self, letter: char) -> Option<&mut Option<String>> {
        Some(match letter {
            's' => &mut self.kernel_name,
            'n' => &mut self.node_name,
            'r' => &mut self.kernel_release,
            'v' => &mut self.kernel_version,
            'b' => &mut self.build_time,
            'm' => &mut self.machine,
            'p' => &mut self.processor,
            'i' => &mut self.hardware_platform,
            'o' => &mut self.operating_system,
            _ => return None,
        })
    }

    /// The value reported for `letter` (one of [`OsInfo::LETTERS`]).
    pub fn get(&self, letter: char) -> Option<&str> {
        match letter {
            's' => self.kernel_name.as_deref(),
            'n' => self.node_name.as_deref(),
            'r' => self.kernel_release.as_deref(),
            'v' => self.kernel_version.as_deref(),
            'b' => self.build_time.as_deref(),
            'm' => self.machine.as_deref(),
            'p' => self.processor.as_deref(),
            'i' => self.hardware_platform.as_deref(),
            'o' => self.operating_system.as_deref(),
            _ => None,
        }
    }
}

/// Split Zephyr's hardware platform `BOARD[@REVISION]` into model and hardware revision.
pub fn split_hardware_platform(platform: &str) -> (Option<String>, Option<String>) {
    match platform.split_once('@') {
        Some((board, rev)) => (clean_text(board), clean_text(rev)),
        None => (clean_text(platform), None),
    }
}

impl Probe for SmpProbe {
    fn protocol(&self) -> &'static str {
        "smp"
    }

    fn probes_serial(&self) -> bool {
        true
    }

    fn network_endpoint(&self, ip: IpAddr, port: Option<u16>) -> Option<Endpoint> {
        let port = port.unwrap_or(crate::transport::udp::DEFAULT_PORT);
        Some(Endpoint::Udp { addr: SocketAddr::new(ip, port) })
    }

    fn dns_sd_service(&self) -> Option<&'static str> {
        Some(SMP_UDP_SERVICE)
    }

    fn probe<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        ctx: &'a ProbeContext,
    ) -> BoxFuture<'a, Result<ProbeOutcome, ProbeError>> {
        Box::pin(async move {
            match endpoint {
                Endpoint::Serial { path, baud } => {
                    let (path, baud) = (path.clone(), *baud);
                    let link = tokio::task::spawn_blocking(move || SerialLink::open(&path, baud))
                        .await
                        .map_err(|e| ProbeError::Unavailable(format!("opening the port: {e}")))?
                        .map_err(open_error)?;
                    talk(link, ctx).await
                }
                Endpoint::Udp { addr } => {
                    let link = UdpLink::connect(*addr).await.map_err(|e| {
                        ProbeError::Unavailable(format!("cannot send to {addr}: {e}"))
                    })?;
                    talk(link, ctx).await
                }
            }
        })
    }
}

/// Sort an error opening a serial port into busy (another program holds it: an exclusive open
/// or a lock; `serialport` reports both as "no device") and unavailable.
fn open_error(e: TransportError) -> ProbeError {
    match &e {
        TransportError::OpenSerial { port, source }
            if source.kind() == serialport::ErrorKind::NoDevice =>
        {
            ProbeError::Busy(format!(
                "{port} is held by another program ({}); close that program to probe it",
                source.description
            ))
        }
        _ => ProbeError::Unavailable(e.to_string()),
    }
}

/// Recognise an SMP server on `link`, then read its facts.
async fn talk<L: Link>(link: L, ctx: &ProbeContext) -> Result<ProbeOutcome, ProbeError> {
    let mut client = SmpClient::new(link);
    client.timeouts = Timeouts {
        request: ctx.answer_timeout,
        first_chunk: ctx.answer_timeout,
        retries: ctx.first_retries,
        backoff: Duration::from_millis(20),
    };
    let mut facts = SmpFacts::default();
    match client.echo(ECHO_TEXT).await {
        Ok(text) if text == ECHO_TEXT => facts.echo = true,
        Ok(text) => {
            return Ok(ProbeOutcome::Unrecognized(format!(
                "an SMP echo came back changed ({:?} instead of {ECHO_TEXT:?})",
                clean_text(&text).unwrap_or_default()
            )));
        }
        // A well-formed SMP error answer: an SMP server with echo turned off (not supported,
        // as in MCUboot's serial recovery by default, is no problem: `echo` says it).
        Err(SmpError::Device(e)) if e.rc == 8 => {}
        Err(SmpError::Device(e)) => facts.problems.push(format!("echo: {e}")),
        Err(SmpError::Timeout { .. }) => return Ok(ProbeOutcome::Silent),
        // ICMP "port/host unreachable" on a connected UDP socket: nobody listens there.
        Err(SmpError::Transport(TransportError::Udp { source, .. }))
            if matches!(
                source.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::HostUnreachable
            ) =>
        {
            return Ok(ProbeOutcome::Silent);
        }
        Err(SmpError::Transport(e)) if e.is_transient() => {
            return Ok(match e {
                TransportError::Timeout(_) => ProbeOutcome::Silent,
                TransportError::BadFrame(m) => ProbeOutcome::Unrecognized(m),
                other => return Err(ProbeError::Unavailable(other.to_string())),
            });
        }
        Err(SmpError::Transport(e)) => return Err(ProbeError::Unavailable(e.to_string())),
        Err(other) => return Ok(ProbeOutcome::Unrecognized(other.to_string())),
    }

    client.timeouts.request = ctx.request_timeout;
    client.timeouts.retries = 1;
    let mut asker = Asker { client, ctx, stopped: false, problems: &mut facts.problems };
    facts.params = asker.ask(&commands::McumgrParams).await;
    let (mut os_supported, mut os_answered) = (true, false);
    for letter in OsInfo::LETTERS {
        if !os_supported {
            break;
        }
        let cmd = commands::AppInfo { format: Some(letter.to_string()) };
        match asker.ask_raw(&cmd).await {
            Some(Ok(text)) => {
                os_answered = true;
                if let Some(field) = facts.os.field(letter) {
                    *field = clean_text(&text);
                }
            }
            // The whole command is missing: no OS info at all.
            Some(Err(SmpError::Device(e))) if e.group.is_none() && e.rc == 8 => {
                os_supported = false;
            }
            // This letter is not built in (for example `b` without the build date): skip it.
            Some(Err(SmpError::Device(_))) | None => {}
            Some(Err(e)) => asker.note(&format!("OS info `{letter}`"), &e),
        }
    }
    let images = asker.ask_raw(&commands::ImageStateRead).await;
    let images_read = matches!(images, Some(Ok(_)));
    match images {
        Some(Ok(list)) => facts.images = list,
        Some(Err(SmpError::Device(e))) if e.group.is_none() && e.rc == 8 => {}
        Some(Err(e)) => asker.note("image state read", &e),
        None => {}
    }
    // The mode, as identification tells it ([`SmpMode::from_answers`]): only from answers
    // actually received. An application answers OS info or lists an active image; otherwise
    // one more question (bootloader info, which serial recovery refuses) settles it.
    facts.mode = if os_answered || facts.images.iter().any(|i| i.active) {
        Some(SmpMode::Application)
    } else if !os_supported && images_read {
        match asker.ask_raw(&commands::BootloaderInfo { query: None }).await {
            Some(Ok(b)) => {
                Some(SmpMode::from_answers(b.bootloader.is_some(), false, &facts.images))
            }
            Some(Err(SmpError::Device(e))) if e.rc == 8 => {
                Some(SmpMode::from_answers(false, false, &facts.images))
            }
            Some(Err(e)) => {
                asker.note("bootloader info", &e);
                None
            }
            None => None,
        }
    } else {
        None
    };

    let mut identity = Identity::default();
    if let Some(platform) = &facts.os.hardware_platform {
        (identity.model, identity.hardware_revision) = split_hardware_platform(platform);
    }
    let running = facts
        .images
        .iter()
        .filter(|s| s.image == 0)
        .find(|s| s.active)
        .or_else(|| facts.images.iter().find(|s| s.image == 0 && s.slot == 0));
    if let Some(slot) = running {
        identity.firmware_version = clean_text(&slot.version);
        // In serial recovery nothing runs: the version is what the bootloader will boot.
        identity.image_hash = (!slot.hash.is_empty()
            && facts.mode != Some(SmpMode::SerialRecovery))
        .then(|| hex_string(&slot.hash));
    }
    Ok(ProbeOutcome::Answered(Box::new(ProbeReport {
        protocol: "smp",
        identity,
        details: Details::Smp(Box::new(facts)),
    })))
}

/// Asks the follow-up questions, stopping when the device went quiet or time is short.
struct Asker<'a, L: Link> {
    client: SmpClient<L>,
    ctx: &'a ProbeContext,
    stopped: bool,
    problems: &'a mut Vec<String>,
}

impl<L: Link> Asker<'_, L> {
    /// Ask `cmd`; `None` when it was not asked, or the device does not support it.
    async fn ask<C: commands::Command>(&mut self, cmd: &C) -> Option<C::Response> {
        match self.ask_raw(cmd).await? {
            Ok(r) => Some(r),
            Err(SmpError::Device(e)) if e.group.is_none() && e.rc == 8 => None,
            Err(e) => {
                self.note(&cmd.name(), &e);
                None
            }
        }
    }

    async fn ask_raw<C: commands::Command>(
        &mut self,
        cmd: &C,
    ) -> Option<Result<C::Response, SmpError>> {
        let left = self.ctx.deadline.saturating_duration_since(tokio::time::Instant::now());
        // Two attempts of a request must fit before the deadline.
        if self.stopped || left < self.ctx.request_timeout * 2 {
            if !self.stopped {
                self.stopped = true;
                self.problems.push("stopped asking: the discovery deadline is near".into());
            }
            return None;
        }
        let r = self.client.request(cmd).await;
        if let Err(SmpError::Timeout { .. } | SmpError::Transport(_)) = &r {
            self.stopped = true;
        }
        Some(r)
    }

    fn note(&mut self, what: &str, e: &SmpError) {
        self.problems.push(format!("{what}: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardware_platform_splits_into_model_and_revision() {
        assert_eq!(
            split_hardware_platform("nrf52840dk@2.0.0"),
            (Some("nrf52840dk".into()), Some("2.0.0".into()))
        );
        assert_eq!(split_hardware_platform("frdm_k64f"), (Some("frdm_k64f".into()), None));
        assert_eq!(split_hardware_platform("@"), (None, None));
    }

    #[test]
    fn os_info_letters_map_to_fields() {
        let mut os = OsInfo::default();
        for l in OsInfo::LETTERS {
            *os.field(l).unwrap() = Some(l.to_string());
        }
        assert_eq!(os.hardware_platform.as_deref(), Some("i"));
        assert_eq!(os.get('n'), Some("n"));
        assert_eq!(os.get('o'), Some("o"));
        assert_eq!(os.get('x'), None);
        assert!(os.field('a').is_none());
    }

    #[test]
    fn busy_ports_are_told_from_other_open_failures() {
        let busy = open_error(TransportError::OpenSerial {
            port: "/dev/ttyACM0".into(),
            source: serialport::Error::new(
                serialport::ErrorKind::NoDevice,
                "Unable to acquire exclusive lock on serial port",
            ),
        });
        assert_eq!(busy.code(), "port_busy", "{busy}");
        let denied = open_error(TransportError::OpenSerial {
            port: "/dev/ttyACM0".into(),
            source: serialport::Error::new(
                serialport::ErrorKind::Io(std::io::ErrorKind::PermissionDenied),
                "Permission denied",
            ),
        });
        assert_eq!(denied.code(), "endpoint_unavailable");
        assert!(denied.to_string().contains("dialout"), "{denied}");
    }
}
