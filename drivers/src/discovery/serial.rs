//! Serial discovery: which ports there are, which may be opened, and probing them without
//! disturbing what does not answer.
//!
//! Design decisions:
//! - Listing uses `serialport` without its `libudev` feature: on Linux it reads sysfs
//!   (`/sys/class/tty/*/device`), which gives the same USB facts udev would (VID/PID, serial
//!   number, manufacturer, product) without a build dependency on libudev or a running udev
//!   daemon (containers and minimal images have none). Ptys are not listed by any OS, so lab
//!   devices and other explicit candidates are given by path ([`SerialScope::paths`]).
//! - USB descriptors are reported as facts of the port ([`UsbInfo`]), never folded into the
//!   device's identity: behind a USB-UART adapter they describe the adapter, not the device, and
//!   only `core` (with its inventory) can tell the two apart.
//! - Exclusions are compared on canonical paths (a `/dev/serial/by-id/...` link excludes the
//!   port it points to) before anything touches the port: an excluded port is never opened.
//! - Before a probe opens a port, the framework opens it once itself (non-blocking, no
//!   controlling terminal) to see whether it is busy: a UUCP lock file of a live process, an
//!   exclusive open (`EBUSY`; root is not kept out by `TIOCEXCL`, so only a lock shows it to
//!   root) or a `flock` held by another program (`serialport`-based tools, Fieldpatch itself).
//!   A busy port is reported busy and never probed.
//! - That first descriptor stays open while the probes run: it saves the line settings
//!   (termios) and restores them afterwards, and it clears the exclusive flag (`TIOCNXCL`) that
//!   `serialport` leaves behind on close, which would otherwise keep other non-root programs out
//!   while the tty stays open. After every probe failed, it listens briefly: a port that sends
//!   data no probe recognised (a log console, another protocol, the wrong baud rate, noise) is
//!   reported as such instead of as silent.
//! - Probes run per port in order of baud rate (115200 first by default), then probe; the first
//!   answer wins. Waits are short ([`SerialScope::answer_timeout`]) because most ports answer
//!   nothing, and the scan's deadline bounds everything.

use super::probe::{
    Endpoint, Probe, ProbeContext, ProbeError, ProbeOutcome, ProbeReport, clean_text,
};
use super::{DiscoveryError, SkipReason};
use crate::transport::serial::DEFAULT_BAUD;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Which of the ports the operating system lists are probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SystemPorts {
    /// None: only the explicit paths.
    None,
    /// USB serial ports (adapters and devices with native USB), the usual field setup.
    #[default]
    Usb,
    /// Every port the OS lists, including built-in UARTs (`/dev/ttyS*`), which are often
    /// present with nothing attached and so cost a timeout each.
    All,
}

/// What to probe on serial ports.
#[derive(Debug, Clone)]
pub struct SerialScope {
    /// Which OS-listed ports are candidates.
    pub system_ports: SystemPorts,
    /// Explicit candidates (ptys, ports the OS does not list, `/dev/serial/by-id/...` links).
    pub paths: Vec<PathBuf>,
    /// Ports never to open, whatever lists them.
    pub exclude: Vec<PathBuf>,
    /// Line speeds to try, in order.
    pub bauds: Vec<u32>,
    /// How long a probe waits for the first answer at one baud rate.
    pub answer_timeout: Duration,
    /// How long a probe waits for each further answer once the device answered.
    pub request_timeout: Duration,
    /// How long to listen for unsolicited data after every probe failed (zero: do not).
    pub listen: Duration,
    /// Ports probed at the same time.
    pub parallel: usize,
}

impl Default for SerialScope {
    fn default() -> Self {
        SerialScope {
            system_ports: SystemPorts::default(),
            paths: Vec::new(),
            exclude: Vec::new(),
            bauds: vec![DEFAULT_BAUD],
            answer_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(1),
            listen: Duration::from_millis(200),
            parallel: 8,
        }
    }
}

/// A serial port and what the OS says about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortInfo {
    /// The path to open (`/dev/ttyACM0`, `/dev/pts/7`, `COM3`).
    pub path: String,
    pub kind: PortKind,
}

/// The kind of a serial port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PortKind {
    /// A USB serial port, with what its USB descriptors say.
    Usb(UsbInfo),
    /// A PCI serial card.
    Pci,
    /// A Bluetooth serial link (rfcomm).
    Bluetooth,
    /// Listed by the OS, kind unknown (built-in UARTs).
    Other,
    /// Not listed by the OS: given by path (ptys, lab devices).
    Named,
}

/// The USB descriptors of a USB serial port: the device's own when it has native USB (CDC ACM),
/// the adapter's when it sits behind a USB-UART bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsbInfo {
    pub vid: u16,
    pub pid: u16,
    pub serial_number: Option<String>,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
}

impl From<serialport::SerialPortInfo> for PortInfo {
    fn from(p: serialport::SerialPortInfo) -> Self {
        let clean = |s: Option<String>| s.as_deref().and_then(clean_text);
        let kind = match p.port_type {
            serialport::SerialPortType::UsbPort(u) => PortKind::Usb(UsbInfo {
                vid: u.vid,
                pid: u.pid,
                serial_number: clean(u.serial_number),
                manufacturer: clean(u.manufacturer),
                product: clean(u.product),
            }),
            serialport::SerialPortType::PciPort => PortKind::Pci,
            serialport::SerialPortType::BluetoothPort => PortKind::Bluetooth,
            serialport::SerialPortType::Unknown => PortKind::Other,
        };
        PortInfo { path: p.port_name, kind }
    }
}

/// The serial ports the operating system lists (blocking: reads sysfs or the OS registry).
pub fn list_ports() -> Result<Vec<PortInfo>, DiscoveryError> {
    // `serialport` panics when sysfs has no tty class (some containers): no ports, then.
    #[cfg(target_os = "linux")]
    if !Path::new("/sys/class/tty").is_dir() {
        return Ok(Vec::new());
    }
    let ports =
        serialport::available_ports().map_err(|e| DiscoveryError::ListPorts(e.to_string()))?;
    Ok(ports.into_iter().map(PortInfo::from).collect())
}

/// The candidates of a scope: ports to probe, and ports excluded (never opened).
#[derive(Debug, Clone, Default)]
pub(crate) struct SerialPlan {
    pub probe: Vec<PortInfo>,
    pub excluded: Vec<PortInfo>,
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Check the options of a serial scope.
pub(crate) fn validate(scope: &SerialScope) -> Result<(), DiscoveryError> {
    if scope.bauds.is_empty() || scope.bauds.contains(&0) {
        return Err(DiscoveryError::BadOption(
            "serial discovery needs at least one baud rate, none of them 0 (115200 is usual)"
                .into(),
        ));
    }
    if scope.parallel == 0 {
        return Err(DiscoveryError::BadOption("serial `parallel` must be at least 1".into()));
    }
    if scope.answer_timeout.is_zero() || scope.request_timeout.is_zero() {
        return Err(DiscoveryError::BadOption("serial timeouts must be above zero".into()));
    }
    Ok(())
}

/// Work out the candidates (blocking: lists ports and resolves links; opens nothing).
pub(crate) fn plan(scope: &SerialScope) -> Result<SerialPlan, DiscoveryError> {
    let listed = match scope.system_ports {
        SystemPorts::None => Vec::new(),
        SystemPorts::Usb => {
            list_ports()?.into_iter().filter(|p| matches!(p.kind, PortKind::Usb(_))).collect()
        }
        SystemPorts::All => list_ports()?,
    };
    let mut ports: Vec<(PathBuf, PortInfo)> = Vec::new();
    let named = scope
        .paths
        .iter()
        .map(|p| PortInfo { path: p.to_string_lossy().into_owned(), kind: PortKind::Named });
    for port in listed.into_iter().chain(named) {
        let canon = canonical(Path::new(&port.path));
        if !ports.iter().any(|(c, _)| *c == canon) {
            ports.push((canon, port));
        }
    }
    let excluded: Vec<PathBuf> = scope.exclude.iter().map(|p| canonical(p)).collect();
    let mut plan = SerialPlan::default();
    for (canon, port) in ports {
        let literal = Path::new(&port.path);
        if excluded.contains(&canon) || scope.exclude.iter().any(|e| e == literal) {
            plan.excluded.push(port);
        } else {
            plan.probe.push(port);
        }
    }
    Ok(plan)
}

/// How long a probe's closed link may take to let go of the port.
const RELEASE_WAIT: Duration = Duration::from_millis(500);

/// Probe one port with every serial probe at every baud rate.
pub(crate) async fn probe_port(
    port: &PortInfo,
    scope: &SerialScope,
    probes: &[Arc<dyn Probe>],
    deadline: tokio::time::Instant,
) -> Result<(Endpoint, Box<ProbeReport>), SkipReason> {
    let path = port.path.clone();
    let claimed = tokio::task::spawn_blocking(move || claim::claim(&path))
        .await
        .map_err(|e| SkipReason::Unavailable(format!("checking the port failed: {e}")))?
        .map_err(SkipReason::from)?;
    let claimed = Arc::new(claimed);
    let ctx = ProbeContext {
        answer_timeout: scope.answer_timeout,
        first_retries: 0,
        request_timeout: scope.request_timeout,
        deadline,
    };
    let mut seen: Option<String> = None;
    for &baud in &scope.bauds {
        for probe in probes.iter().filter(|p| p.probes_serial()) {
            let endpoint = Endpoint::Serial { path: port.path.clone(), baud };
            let outcome = probe.probe(&endpoint, &ctx).await;
            // The probe's link closes its descriptors a little after it is dropped (a reader
            // thread finishes its current wait); the next open must not find our own lock.
            let waiter = claimed.clone();
            let released = tokio::task::spawn_blocking(move || waiter.wait_unlocked(RELEASE_WAIT))
                .await
                .unwrap_or(false);
            claimed.release_exclusive();
            if !released {
                return Err(SkipReason::Busy(format!(
                    "{} stayed locked after the probe closed it: another program took it",
                    port.path
                )));
            }
            match outcome {
                Ok(ProbeOutcome::Answered(report)) => return Ok((endpoint, report)),
                Ok(ProbeOutcome::Silent) => {}
                Ok(ProbeOutcome::Unrecognized(what)) => {
                    seen.get_or_insert(format!("{} at {baud} baud: {what}", probe.protocol()));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    if seen.is_none() && !scope.listen.is_zero() {
        let listener = claimed.clone();
        let listen = scope.listen;
        let bytes = tokio::task::spawn_blocking(move || listener.listen(listen)).await.unwrap_or(0);
        if bytes > 0 {
            seen = Some(format!(
                "the port sends data ({bytes} bytes in {} ms) that no probe recognises at {:?} baud",
                listen.as_millis(),
                scope.bauds
            ));
        }
    }
    Err(match seen {
        Some(what) => SkipReason::Unrecognized(what),
        None => SkipReason::Silent,
    })
}

impl From<ProbeError> for SkipReason {
    fn from(e: ProbeError) -> Self {
        match e {
            ProbeError::Busy(m) => SkipReason::Busy(m),
            ProbeError::Unavailable(m) => SkipReason::Unavailable(m),
        }
    }
}

#[cfg(unix)]
mod claim {
    //! The framework's own descriptor of a port being probed (Unix).

    use super::super::probe::ProbeError;
    use rustix::fs::{FlockOperation, Mode, OFlags};
    use rustix::termios::{OptionalActions, Termios};
    use std::io::Read;
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    /// A port checked to be free, with its line settings saved; restores them when dropped.
    #[derive(Debug)]
    pub(crate) struct Claimed {
        file: std::fs::File,
        saved: Termios,
    }

    /// Check that `path` is a free terminal and save its settings. Opens it once; never writes.
    pub(crate) fn claim(path: &str) -> Result<Claimed, ProbeError> {
        if let Some((lock, pid)) = lock_file_holder(path) {
            return Err(ProbeError::Busy(format!(
                "{path} is locked by process {pid} (lock file {}); close that program to probe it",
                lock.display()
            )));
        }
        let flags = OFlags::RDWR | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = rustix::fs::open(path, flags, Mode::empty()).map_err(|e| {
            let e = std::io::Error::from(e);
            match e.raw_os_error() {
                Some(code) if code == rustix::io::Errno::BUSY.raw_os_error() => ProbeError::Busy(
                    format!("{path} is open exclusively by another program; close it to probe"),
                ),
                _ if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    ProbeError::Unavailable(format!(
                        "{path}: permission denied (the user may need to be in the `dialout` group)"
                    ))
                }
                _ => ProbeError::Unavailable(format!("cannot open {path}: {e}")),
            }
        })?;
        match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                rustix::fs::flock(&fd, FlockOperation::Unlock).map_err(|e| {
                    ProbeError::Unavailable(format!("cannot release the lock test on {path}: {e}"))
                })?;
            }
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                return Err(ProbeError::Busy(format!(
                    "{path} is locked by another program (flock); close it to probe"
                )));
            }
            // File systems without flock: nothing to learn from it.
            Err(_) => {}
        }
        let saved = rustix::termios::tcgetattr(&fd).map_err(|e| {
            ProbeError::Unavailable(format!("{path} is not a serial port (not a terminal: {e})"))
        })?;
        Ok(Claimed { file: std::fs::File::from(fd), saved })
    }

    impl Claimed {
        /// Clear the exclusive flag a probe's open left (`serialport` sets `TIOCEXCL` and does
        /// not clear it on close; while this descriptor keeps the tty open it would keep
        /// non-root programs, and the next baud rate's open, out).
        pub(crate) fn release_exclusive(&self) {
            let _ = rustix::termios::ioctl_tiocnxcl(&self.file);
        }

        /// Wait until nobody holds a `flock` on the port (the probe's link has closed all its
        /// descriptors); false if it is still held after `within`.
        pub(crate) fn wait_unlocked(&self, within: Duration) -> bool {
            let until = Instant::now() + within;
            loop {
                match rustix::fs::flock(&self.file, FlockOperation::NonBlockingLockExclusive) {
                    Ok(()) => {
                        let _ = rustix::fs::flock(&self.file, FlockOperation::Unlock);
                        return true;
                    }
                    Err(e) if e == rustix::io::Errno::WOULDBLOCK && Instant::now() < until => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return e != rustix::io::Errno::WOULDBLOCK,
                }
            }
        }

        /// Read whatever arrives during `period` (discarding it); the number of bytes.
        pub(crate) fn listen(&self, period: Duration) -> usize {
            let until = Instant::now() + period;
            let mut buf = [0u8; 1024];
            let mut total = 0usize;
            while Instant::now() < until {
                match (&self.file).read(&mut buf) {
                    Ok(0) => std::thread::sleep(Duration::from_millis(10)),
                    Ok(n) => total = total.saturating_add(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => break,
                }
            }
            total
        }
    }

    impl Drop for Claimed {
        fn drop(&mut self) {
            self.release_exclusive();
            let _ = rustix::termios::tcsetattr(&self.file, OptionalActions::Now, &self.saved);
        }
    }

    /// A UUCP-style lock file (`LCK..ttyUSB0`) naming a live process.
    fn lock_file_holder(path: &str) -> Option<(PathBuf, u32)> {
        let name = path.strip_prefix("/dev/").unwrap_or(path).replace('/', "_");
        for dir in ["/var/lock", "/run/lock", "/var/spool/lock", "/var/spool/uucp"] {
            let lock = Path::new(dir).join(format!("LCK..{name}"));
            let Ok(file) = std::fs::File::open(&lock) else { continue };
            let mut bytes = Vec::new();
            if file.take(64).read_to_end(&mut bytes).is_err() {
                continue;
            }
            if let Some(pid) = lock_pid(&bytes)
                && pid != std::process::id()
                && alive(pid)
            {
                return Some((lock, pid));
            }
        }
        None
    }

    /// The pid in a lock file: ASCII (HDB UUCP, the usual form) or a 4-byte binary integer.
    pub(super) fn lock_pid(bytes: &[u8]) -> Option<u32> {
        if let Some(pid) = std::str::from_utf8(bytes).ok().and_then(|s| s.trim().parse().ok()) {
            return Some(pid);
        }
        let raw: [u8; 4] = bytes.try_into().ok()?;
        Some(u32::from_ne_bytes(raw)).filter(|&p| p > 0)
    }

    fn alive(pid: u32) -> bool {
        let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) else {
            return false;
        };
        match rustix::process::test_kill_process(pid) {
            Ok(()) => true,
            Err(e) => e == rustix::io::Errno::PERM,
        }
    }
}

#[cfg(not(unix))]
mod claim {
    //! Elsewhere (Windows) a port held by another program fails to open, which `serialport`
    //! reports; there are no line settings to save.

    use super::super::probe::ProbeError;
    use std::time::Duration;

    #[derive(Debug)]
    pub(crate) struct Claimed;

    pub(crate) fn claim(_path: &str) -> Result<Claimed, ProbeError> {
        Ok(Claimed)
    }

    impl Claimed {
        pub(crate) fn release_exclusive(&self) {}

        pub(crate) fn wait_unlocked(&self, _within: Duration) -> bool {
            true
        }

        pub(crate) fn listen(&self, _period: Duration) -> usize {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_os_port_list_can_be_read() {
        // Whatever this machine has (often nothing, or built-in UARTs), listing must not fail.
        let ports = list_ports().unwrap();
        assert!(ports.iter().all(|p| !p.path.is_empty()), "{ports:?}");
    }

    #[test]
    fn bad_scopes_are_refused() {
        let no_baud = SerialScope { bauds: vec![], ..SerialScope::default() };
        assert_eq!(validate(&no_baud).unwrap_err().code(), "bad_option");
        let zero = SerialScope { bauds: vec![0], ..SerialScope::default() };
        assert!(validate(&zero).is_err());
        assert!(validate(&SerialScope::default()).is_ok());
    }

    #[test]
    fn exclusions_match_links_and_literal_paths() {
        let dir = std::env::temp_dir().join(format!("fp-serial-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let real = dir.join("ttyFAKE0");
        std::fs::write(&real, b"").unwrap();
        let link = dir.join("by-id-link");
        let _ = std::fs::remove_file(&link);
        #[cfg(unix)]
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let scope = SerialScope {
            system_ports: SystemPorts::None,
            paths: vec![real.clone(), dir.join("missing"), link.clone()],
            exclude: vec![link.clone(), dir.join("missing")],
            ..SerialScope::default()
        };
        let plan = plan(&scope).unwrap();
        let excluded: Vec<_> = plan.excluded.iter().map(|p| p.path.clone()).collect();
        #[cfg(unix)]
        assert!(excluded.contains(&real.to_string_lossy().into_owned()), "{excluded:?}");
        assert!(excluded.iter().any(|p| p.ends_with("missing")), "{excluded:?}");
        // The link and its target are one port.
        #[cfg(unix)]
        assert_eq!(plan.probe.len() + plan.excluded.len(), 2, "{plan:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn lock_files_name_a_pid_in_ascii_or_binary() {
        assert_eq!(claim::lock_pid(b"      1234\n"), Some(1234));
        assert_eq!(claim::lock_pid(&77u32.to_ne_bytes()), Some(77));
        assert_eq!(claim::lock_pid(b"garbage"), None);
    }

    #[cfg(unix)]
    #[test]
    fn a_regular_file_is_not_a_port() {
        let file = std::env::temp_dir().join(format!("fp-not-a-tty-{}", std::process::id()));
        std::fs::write(&file, b"x").unwrap();
        let err = claim::claim(file.to_str().unwrap()).unwrap_err();
        assert!(err.to_string().contains("not a terminal"), "{err}");
        let _ = std::fs::remove_file(&file);
    }
}
