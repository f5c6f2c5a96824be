//! Build script: Tauri's context and the app manifest. The manifest lists every command the shell
//! registers (`generate_handler!` in `src/lib.rs`), so each one becomes a permission
//! (`allow-<command>`) that the window gets only through `capabilities/`, and a command missing
//! from a capability is refused at the IPC boundary.

/// Every command of `tauri::generate_handler!` in `src/lib.rs`, no more.
const COMMANDS: &[&str] = &[
    "app_info",
    "mode",
    "settings",
    "login",
    "site",
    "discover",
    "plan",
    "run_session",
    "verify_log",
    "set_auto_sync",
    "sync_now",
    "close_session",
    "home",
    "visit_log",
    "sync_once",
    "export_visit",
    "choose_export_path",
    "pause_session",
    "resume_session",
    "end_session",
    "choose_work_order",
    "discovery_settings",
    "set_discovery_settings",
    "credentials",
    "set_credential",
    "delete_credential",
];

fn main() {
    if let Err(e) = tauri_build::try_build(
        tauri_build::Attributes::new()
            .app_manifest(tauri_build::AppManifest::new().commands(COMMANDS)),
    ) {
        eprintln!("the Tauri build step failed: {e:#}");
        std::process::exit(1);
    }
}
