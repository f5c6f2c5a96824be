//! One runner per session and per device on this machine, across processes: a session holds an
//! exclusive lock on its data directory's `session.lock`, and each device being flashed holds a
//! lock named after its address in the system's temporary folder. A second runner (the app and
//! the CLI, or two CLIs) is refused at once instead of flashing the same devices at the same
//! time. The OS releases the locks when the holder exits, however it exits.

use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

/// A lock is held by another runner, or cannot be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{what} is already being driven by another Fieldpatch runner on this machine; wait for it to finish or pause it"
    )]
    Held { what: String },
    #[error("cannot create the lock file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl LockError {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            LockError::Held { .. } => "busy",
            LockError::Io { .. } => "lock_file",
        }
    }
}

/// An exclusive lock, released when dropped (or when the process ends).
#[derive(Debug)]
pub struct RunnerLock {
    _file: File,
}

impl RunnerLock {
    /// The lock of the sessions run in `data_dir`.
    pub fn session(data_dir: &Path) -> Result<RunnerLock, LockError> {
        Self::take(&data_dir.join("session.lock"), "a session in this data directory")
    }

    /// The lock of the device at `address` (as the plan writes it).
    pub fn device(address: &str) -> Result<RunnerLock, LockError> {
        let dir = std::env::temp_dir().join("fieldpatch-device-locks");
        std::fs::create_dir_all(&dir)
            .map_err(|source| LockError::Io { path: dir.clone(), source })?;
        let name = hex::encode(&Sha256::digest(address.as_bytes())[..16]);
        Self::take(&dir.join(format!("{name}.lock")), &format!("the device at {address}"))
    }

    fn take(path: &Path, what: &str) -> Result<RunnerLock, LockError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|source| LockError::Io { path: path.to_path_buf(), source })?;
        match file.try_lock() {
            Ok(()) => Ok(RunnerLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(LockError::Held { what: what.to_string() }),
            Err(TryLockError::Error(source)) => {
                Err(LockError::Io { path: path.to_path_buf(), source })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_runner_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunnerLock::session(dir.path()).unwrap();
        let err = RunnerLock::session(dir.path()).unwrap_err();
        assert_eq!(err.code(), "busy", "{err}");
        drop(first);
        RunnerLock::session(dir.path()).unwrap();

        let address = format!("udp:127.0.0.1:{}", std::process::id());
        let held = RunnerLock::device(&address).unwrap();
        assert!(RunnerLock::device(&address).is_err());
        RunnerLock::device(&format!("{address}0")).unwrap();
        drop(held);
        RunnerLock::device(&address).unwrap();
    }
}
