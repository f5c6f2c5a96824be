//! The `fieldpatch-app` binary: starts the desktop shell (see the library).

#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

fn main() {
    fieldpatch_app::run();
}
