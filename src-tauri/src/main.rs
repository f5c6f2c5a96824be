//! The `fieldpatch-app` binary: starts the desktop shell (see the library); `--demo` runs it on
//! the built-in demo site.

#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

fn main() {
    // `--demo`: the built-in demo site (what `scripts/app` starts); otherwise real mode.
    fieldpatch_app::run(std::env::args().skip(1).any(|a| a == "--demo"));
}
