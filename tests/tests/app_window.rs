//! The real desktop window under Xvfb, driven through tauri-driver + WebKitWebDriver: it opens,
//! loads the built UI, and shows the version it got from the core over IPC.

use fieldpatch_e2e::{artifacts_dir, built_binary, free_port, webdriver::Session, xvfb::Xvfb};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

/// tauri-driver and the WebKitWebDriver it spawns, in their own process group; the whole group is
/// ended on drop so no driver outlives the test.
struct DriverGroup(std::process::Child);
impl Drop for DriverGroup {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let _ = self.0.wait();
    }
}

#[test]
fn window_shows_the_core_version_and_data_dir() {
    let app = built_binary("fieldpatch-app");
    let xvfb = Xvfb::start().unwrap();
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let native_port = free_port();
    let driver = Command::new("tauri-driver")
        .args(["--port", &port.to_string(), "--native-port", &native_port.to_string()])
        .env("DISPLAY", xvfb.display())
        .env("FIELDPATCH_DATA_DIR", data.path())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .expect("cannot start tauri-driver: install it with `cargo install tauri-driver --locked`");
    let _driver = DriverGroup(driver);

    let session = Session::start(&format!("http://127.0.0.1:{port}"), &app).unwrap();
    let version = session.wait_text("#core-version", Duration::from_secs(60)).unwrap();
    let data_dir = session.wait_text("#data-dir", Duration::from_secs(5)).unwrap();
    let png = session.screenshot().unwrap();
    std::fs::write(artifacts_dir().join("app-window.png"), &png).unwrap();
    session.close().unwrap();

    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    assert!(data_dir.contains(data.path().to_str().unwrap()), "{data_dir}");
    assert!(data_dir.contains("FIELDPATCH_DATA_DIR"), "{data_dir}");
    assert!(png.starts_with(b"\x89PNG"), "screenshot is not a PNG");
}
