//! Where Fieldpatch keeps its local data.
//!
//! The data directory follows each OS's conventions (XDG on Linux, `Application Support` on macOS,
//! `%APPDATA%` on Windows) and can be overridden with `FIELDPATCH_DATA_DIR`, which tests and
//! portable installs use.

use serde::Serialize;
use std::path::PathBuf;
use ts_rs::TS;

/// Environment variable that overrides the data directory.
pub const DATA_DIR_ENV: &str = "FIELDPATCH_DATA_DIR";

/// Where the data directory path came from.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, TS)]
#[serde(rename_all = "snake_case")]
pub enum DataDirSource {
    /// `FIELDPATCH_DATA_DIR` was set.
    Environment,
    /// The operating system's convention for per-user application data.
    OsConvention,
}

/// Errors finding the data directory.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error(
        "cannot determine a home directory for local data; set {DATA_DIR_ENV} to a writable directory"
    )]
    NoHome,
    #[error("{DATA_DIR_ENV} is set to a relative path ({0:?}); set it to an absolute path")]
    RelativeOverride(PathBuf),
}

impl PathError {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        "data_dir"
    }
}

/// The local data directory and where that choice came from. Does not create it.
pub fn data_dir() -> Result<(PathBuf, DataDirSource), PathError> {
    if let Some(dir) = std::env::var_os(DATA_DIR_ENV).filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        if dir.is_relative() {
            return Err(PathError::RelativeOverride(dir));
        }
        return Ok((dir, DataDirSource::Environment));
    }
    let dirs = directories::ProjectDirs::from("org", "Fieldpatch", "fieldpatch")
        .ok_or(PathError::NoHome)?;
    Ok((dirs.data_dir().to_path_buf(), DataDirSource::OsConvention))
}
