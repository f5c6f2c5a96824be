//! The shell around the window: one running instance per data directory and mode (a second launch
//! focuses the running window and exits), and logs to a rotating file.
//!
//! Logs go to the app's log directory (Tauri's per-user log directory, e.g.
//! `~/.local/share/org.fieldpatch.app/logs` on Linux), or to `<data dir>/logs` when
//! `FIELDPATCH_DATA_DIR` sets the data directory (tests, portable installs), the demo's to
//! `demo/logs` below that, one file a day
//! (`fieldpatch.YYYY-MM-DD.log`), the last [`LOG_FILES_KEPT`] kept. `FIELDPATCH_LOG` sets the
//! filter (`info` by default). Secrets never reach a log: the core never formats one.

use fieldpatch_core::paths::{self, DataDirSource};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tauri::{AppHandle, Manager, Runtime};
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::EnvFilter;

/// How many daily log files are kept.
pub const LOG_FILES_KEPT: usize = 7;

/// The environment variable that sets the log filter (`tracing_subscriber::EnvFilter` syntax).
pub const LOG_ENV: &str = "FIELDPATCH_LOG";

/// The name under which this instance is the only one: a D-Bus well-known name on Linux (the
/// single-instance plugin appends `.SingleInstance`). One per data directory and mode, so a
/// portable install or a test's data directory runs its own window, while a second launch on the
/// same data focuses the window already open on it.
pub fn instance_id(data_dir: &Path, demo: bool) -> String {
    let mut h = Sha256::new();
    h.update(data_dir.as_os_str().as_encoded_bytes());
    h.update(if demo { b"\0demo" as &[u8] } else { b"\0real" });
    // D-Bus name elements may not start with a digit, hence the `i`.
    format!("org.fieldpatch.app.i{}", &hex::encode(h.finalize())[..16])
}

/// The data directory this launch would use, for [`instance_id`] (`None` when there is none: then
/// the app starts and reports the error in the window).
pub fn data_dir() -> Option<PathBuf> {
    paths::data_dir().ok().map(|(dir, _)| dir)
}

/// Where the logs go: `<data dir>/logs` when `FIELDPATCH_DATA_DIR` is set, else the app's log
/// directory; the demo's in `demo/logs` below either, so nothing the demo does lands beside the
/// technician's real data.
pub fn log_dir<R: Runtime>(app: &AppHandle<R>, demo: bool) -> Result<PathBuf, String> {
    let base = match paths::data_dir() {
        Ok((dir, DataDirSource::Environment)) => dir,
        _ => app.path().app_log_dir().map_err(|e| format!("no log directory: {e}"))?,
    };
    Ok(if demo { base.join("demo").join("logs") } else { base.join("logs") })
}

/// Send this process's `tracing` events to a daily-rotating file in `dir` (created if needed).
pub fn init_logs(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the log directory {}: {e}", dir.display()))?;
    let file = RollingFileAppender::builder()
        .rotation(Rotation::DAILY)
        .filename_prefix("fieldpatch")
        .filename_suffix("log")
        .max_log_files(LOG_FILES_KEPT)
        .build(dir)
        .map_err(|e| format!("cannot open a log file in {}: {e}", dir.display()))?;
    let filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(file)
        .try_init()
        .map_err(|e| format!("logging is already set up: {e}"))
}

/// A second launch arrived: bring the running window to the front.
pub fn focus_main<R: Runtime>(app: &AppHandle<R>, argv: &[String]) {
    tracing::info!(?argv, "second launch: focusing the running window");
    if let Some(window) = app.get_webview_window("main") {
        let _ = window.unminimize();
        let _ = window.show();
        let _ = window.set_focus();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_valid_dbus_names_one_per_data_dir_and_mode() {
        let a = instance_id(Path::new("/tmp/a"), false);
        assert_eq!(a, instance_id(Path::new("/tmp/a"), false), "stable");
        assert_ne!(a, instance_id(Path::new("/tmp/a"), true), "demo and real mode differ");
        assert_ne!(a, instance_id(Path::new("/tmp/b"), false), "data directories differ");
        let name = format!("{a}.SingleInstance");
        assert!(name.len() <= 255);
        for element in name.split('.') {
            assert!(!element.is_empty() && !element.starts_with(|c: char| c.is_ascii_digit()));
            assert!(element.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{element}");
        }
    }

    #[test]
    fn logs_go_to_a_daily_file_in_the_log_directory() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        init_logs(&logs).unwrap();
        tracing::info!("hello from the test");
        let files: Vec<_> = std::fs::read_dir(&logs).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("fieldpatch.") && name.ends_with(".log"), "{name}");
        let text = std::fs::read_to_string(&files[0]).unwrap();
        assert!(text.contains("hello from the test"), "{text}");
    }
}
