//! Real pseudo-terminals for simulated serial devices.
//!
//! A [`Pty`] is an `openpty(3)` pair in raw mode: the lab device owns the controller side and a
//! client (Fieldpatch, `smpmgr`, a terminal program) opens [`Pty::path`] like any serial port.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

/// Errors creating a pseudo-terminal.
#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    #[error("cannot open a pseudo-terminal: {0} (is /dev/ptmx available and devpts mounted?)")]
    Open(nix::Error),
    #[error("cannot configure the pseudo-terminal for raw bytes: {0}")]
    Configure(nix::Error),
    #[error("cannot find the name of the pseudo-terminal: {0}")]
    Name(std::io::Error),
}

/// A pseudo-terminal pair: the controller end for the simulated device and the path a client opens.
#[derive(Debug)]
pub struct Pty {
    controller: File,
    /// The subordinate end is kept open so the controller never sees EOF/EIO between clients.
    _subordinate: OwnedFd,
    path: PathBuf,
}

impl Pty {
    /// Open a new raw-mode pseudo-terminal.
    pub fn open() -> Result<Self, PtyError> {
        use nix::sys::termios;
        let pair = nix::pty::openpty(None, None).map_err(PtyError::Open)?;
        let mut attrs = termios::tcgetattr(&pair.slave).map_err(PtyError::Configure)?;
        termios::cfmakeraw(&mut attrs);
        termios::tcsetattr(&pair.slave, termios::SetArg::TCSANOW, &attrs)
            .map_err(PtyError::Configure)?;
        let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&pair.slave));
        let path = std::fs::read_link(link).map_err(PtyError::Name)?;
        Ok(Pty { controller: File::from(pair.master), _subordinate: pair.slave, path })
    }

    /// The device path a client opens (for example `/dev/pts/7`).
    pub fn path(&self) -> &std::path::Path {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn bytes_cross_a_real_pty_unchanged() {
        let pty = Pty::open().unwrap();
        assert!(pty.path().starts_with("/dev/pts"), "{:?}", pty.path());
        let mut client = std::fs::OpenOptions::new().read(true).write(true).open(pty.path()).unwrap();
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
}
