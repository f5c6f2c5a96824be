//! The Fieldpatch desktop shell. Tauri commands and events only: each command is a few lines that
//! call `fieldpatch-core`; errors cross the bridge as `{code, message}` so the front end branches
//! on codes, not on strings.

use serde::Serialize;

/// An error as the front end receives it.
#[derive(Debug, Serialize)]
pub struct BridgeError {
    /// Stable, machine-readable code (`data_dir`, ...).
    pub code: &'static str,
    /// Human-readable message that says what to do.
    pub message: String,
}

impl From<fieldpatch_core::paths::PathError> for BridgeError {
    fn from(e: fieldpatch_core::paths::PathError) -> Self {
        BridgeError { code: "data_dir", message: e.to_string() }
    }
}

/// Version and local data directory of this installation.
#[tauri::command]
fn app_info() -> Result<fieldpatch_core::AppInfo, BridgeError> {
    Ok(fieldpatch_core::app_info()?)
}

/// Start the desktop app.
pub fn run() {
    tauri::Builder::default()
        .invoke_handler(tauri::generate_handler![app_info])
        .run(tauri::generate_context!())
        .expect("the Fieldpatch window could not be started");
}
