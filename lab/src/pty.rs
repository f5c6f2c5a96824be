//! Real pseudo-terminals for simulated serial devices.
//!
//! A [`Pty`] is an `openpty(3)` pair in raw mode: the lab device owns the controller side and a
//! client (Fieldpatch, `smpmgr`, a terminal program) opens [`Pty::path`] like any serial port. The
//! path is the subordinate's `ttyname(3)` (`/dev/pts/N` on Linux, `/dev/ttysNNN` on macOS).
//!
//! Whether a client ever opened a pty is told by an [`OpenWatch`] (Linux): an inotify watch for
//! `IN_OPEN` on the subordinate's device node. Unlike polling the controller for `POLLHUP`
//! (which only says whether the subordinate is open *now*, and which this module's kept-open
//! subordinate would mask anyway), inotify queues every open, so an open followed by a close
//! between two looks is still seen. Opening the pair itself (`openpty`) happens before the
//! watch exists and is not counted.
//!
//! Pseudo-terminals exist on Unix only. Elsewhere (Windows) this module still compiles, but
//! [`Pty::open`] fails with [`PtyError::Unsupported`], so the serial lab devices report a clear
//! error while the UDP and USB lab devices work as everywhere.

use std::fs::File;
use std::path::{Path, PathBuf};

/// Errors creating a pseudo-terminal.
#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    #[error("cannot open a pseudo-terminal: {0} (is /dev/ptmx available and devpts mounted?)")]
    Open(std::io::Error),
    #[error("cannot configure the pseudo-terminal for raw bytes: {0}")]
    Configure(std::io::Error),
    #[error("cannot find the name of the pseudo-terminal: {0}")]
    Name(std::io::Error),
    /// The platform has no pseudo-terminals (Windows).
    #[error(
        "lab serial devices need a pseudo-terminal, which this platform does not have; use the \
         UDP or USB lab devices"
    )]
    Unsupported,
}

/// A pseudo-terminal pair: the controller end for the simulated device and the path a client opens.
#[derive(Debug)]
pub struct Pty {
    controller: File,
    /// The subordinate end is kept open so the controller never sees EOF/EIO between clients.
    #[cfg(unix)]
    _subordinate: std::os::fd::OwnedFd,
    path: PathBuf,
}

impl Pty {
    /// Open a new raw-mode pseudo-terminal.
    #[cfg(unix)]
    pub fn open() -> Result<Self, PtyError> {
        use nix::sys::termios;
        let pair = nix::pty::openpty(None, None).map_err(|e| PtyError::Open(e.into()))?;
        let mut attrs =
            termios::tcgetattr(&pair.slave).map_err(|e| PtyError::Configure(e.into()))?;
        termios::cfmakeraw(&mut attrs);
        termios::tcsetattr(&pair.slave, termios::SetArg::TCSANOW, &attrs)
            .map_err(|e| PtyError::Configure(e.into()))?;
        let path = nix::unistd::ttyname(&pair.slave).map_err(|e| PtyError::Name(e.into()))?;
        Ok(Pty { controller: File::from(pair.master), _subordinate: pair.slave, path })
    }

    /// Open a new raw-mode pseudo-terminal: this platform has none, so this always fails with
    /// [`PtyError::Unsupported`].
    #[cfg(not(unix))]
    pub fn open() -> Result<Self, PtyError> {
        Err(PtyError::Unsupported)
    }

    /// The device path a client opens (for example `/dev/pts/7`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The controller end, read and written by the simulated device.
    pub fn controller(&self) -> &File {
        &self.controller
    }

    /// Split off an owned handle to the controller end.
    pub fn controller_clone(&self) -> std::io::Result<File> {
        self.controller.try_clone()
    }
}

/// Counts the opens of a device node since the watch was made (Linux, inotify `IN_OPEN`).
#[cfg(target_os = "linux")]
#[derive(Debug)]
pub struct OpenWatch {
    inotify: nix::sys::inotify::Inotify,
    opens: std::sync::atomic::AtomicUsize,
}

#[cfg(target_os = "linux")]
impl OpenWatch {
    /// Watch `path` (for example [`Pty::path`]) for opens from now on.
    pub fn new(path: &Path) -> std::io::Result<OpenWatch> {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        inotify.add_watch(path, AddWatchFlags::IN_OPEN)?;
        Ok(OpenWatch { inotify, opens: std::sync::atomic::AtomicUsize::new(0) })
    }

    /// How many times the node was opened since the watch was made (by anyone).
    pub fn opens(&self) -> usize {
        use nix::sys::inotify::AddWatchFlags;
        use std::sync::atomic::Ordering;
        while let Ok(events) = self.inotify.read_events() {
            if events.is_empty() {
                break;
            }
            let n = events.iter().filter(|e| e.mask.contains(AddWatchFlags::IN_OPEN)).count();
            self.opens.fetch_add(n, Ordering::Relaxed);
        }
        self.opens.load(Ordering::Relaxed)
    }

    /// Whether anyone opened the node since the watch was made.
    pub fn was_opened(&self) -> bool {
        self.opens() > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn bytes_cross_a_real_pty_unchanged() {
        use std::io::{Read, Write};
        let pty = Pty::open().unwrap();
        #[cfg(target_os = "linux")]
        assert!(pty.path().starts_with("/dev/pts"), "{:?}", pty.path());
        #[cfg(target_os = "macos")]
        assert!(pty.path().to_string_lossy().starts_with("/dev/ttys"), "{:?}", pty.path());
        let mut client =
            std::fs::OpenOptions::new().read(true).write(true).open(pty.path()).unwrap();
        // Raw mode: no echo, no CR/LF translation, 0x04 and 0x06 pass through.
        let frame = [0x06u8, 0x09, b'\n', b'\r', 0x04, 0x14, 0xff];
        client.write_all(&frame).unwrap();
        let mut got = [0u8; 7];
        pty.controller().read_exact(&mut got).unwrap();
        assert_eq!(got, frame);
        pty.controller().write_all(b"ok\n").unwrap();
        let mut back = [0u8; 3];
        client.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"ok\n");
    }

    /// The name comes from `ttyname(3)`; on Linux it must be the device `/proc` names too.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_name_is_the_subordinate_device() {
        let pty = Pty::open().unwrap();
        let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&pty._subordinate));
        assert_eq!(std::fs::read_link(link).unwrap(), pty.path());
    }

    #[cfg(unix)]
    #[test]
    fn each_pty_has_its_own_name() {
        let (a, b) = (Pty::open().unwrap(), Pty::open().unwrap());
        assert_ne!(a.path(), b.path());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_open_watch_sees_an_open_and_close_between_two_looks() {
        let pty = Pty::open().unwrap();
        let watch = OpenWatch::new(pty.path()).unwrap();
        assert!(!watch.was_opened(), "creating the pty must not count as an open");
        drop(std::fs::OpenOptions::new().read(true).write(true).open(pty.path()).unwrap());
        assert!(watch.was_opened());
        assert_eq!(watch.opens(), 1);
        // Another pty's opens are not counted.
        let other = Pty::open().unwrap();
        drop(std::fs::File::open(other.path()).unwrap());
        assert_eq!(watch.opens(), 1);
    }

    #[cfg(not(unix))]
    #[test]
    fn without_ptys_opening_says_so() {
        let err = Pty::open().unwrap_err();
        assert!(matches!(err, PtyError::Unsupported), "{err}");
    }

    #[test]
    fn the_unsupported_error_points_to_the_other_lab_devices() {
        let msg = PtyError::Unsupported.to_string();
        assert!(msg.contains("pseudo-terminal"), "{msg}");
        assert!(msg.contains("UDP or USB lab devices"), "{msg}");
    }
}
