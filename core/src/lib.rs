//! # fieldpatch-core
//!
//! Everything Fieldpatch *decides* lives here: the domain model, patch bundle verification, the
//! planner, the flash pipeline and batch sessions, the local store, the tamper-evident visit log,
//! credentials in the OS keyring, the sync client and the audit export.
//!
//! Design decisions that shape this crate:
//!
//! * **No protocol frames.** Device bytes, ports and wire formats belong to `fieldpatch-drivers`.
//!   This crate hands drivers verified bytes and reads back what devices report.
//! * **No UI.** The desktop shell (`src-tauri`) and the CLI (`cli`) are thin callers of this crate,
//!   so every job the app can do is testable headless.
//! * **Errors are actionable.** Each module has one `thiserror` enum whose messages say what was
//!   wrong and what to do about it. Secrets never appear in an error message.
//! * **Progress is a callback.** Long jobs report through [`progress::Progress`]; the CLI renders
//!   progress bars, the app forwards events to the window.

pub mod bundle;
pub mod catalog;
pub mod clock;
pub mod credentials;
pub mod device;
pub mod discovery;
pub mod export;
mod fieldpatch;
pub mod flash;
pub mod gateway;
pub mod image;
pub mod overview;
pub mod paths;
pub mod plan;
pub mod session;
pub mod store;
pub mod sync;
pub mod visitlog;

pub use fieldpatch::{Error, Fieldpatch, SyncSettings, TrustSummary};
pub use fieldpatch_drivers::progress;
/// Versions and device identities, shared with the inventory server (`fieldpatch-proto`).
pub use fieldpatch_proto::model;

use serde::Serialize;
use std::path::PathBuf;
use ts_rs::TS;

/// The version of Fieldpatch, as built.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the app and the CLI show about this installation.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, TS)]
pub struct AppInfo {
    /// Fieldpatch version (`CARGO_PKG_VERSION` of the core).
    pub version: String,
    /// Local data directory (store, visit logs, catalog cache).
    pub data_dir: PathBuf,
    /// Where the data directory came from: `FIELDPATCH_DATA_DIR` or the OS convention.
    pub data_dir_source: paths::DataDirSource,
}

/// Describe this installation: version and local data directory.
pub fn app_info() -> Result<AppInfo, paths::PathError> {
    let (data_dir, data_dir_source) = paths::data_dir()?;
    Ok(AppInfo { version: VERSION.to_string(), data_dir, data_dir_source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_info_reports_the_crate_version() {
        let info = app_info().unwrap();
        assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
        assert!(info.data_dir.is_absolute(), "{:?}", info.data_dir);
    }
}
