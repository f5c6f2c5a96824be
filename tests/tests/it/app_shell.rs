//! The desktop app as a process and as a package: a second launch on the same data directory hands
//! over to the running window and exits (single instance), the window logs to a file in its log
//! directory, and the `.deb` that `scripts/package` builds installs the udev rule and declares its
//! runtime dependencies.

use fieldpatch_e2e::{built_binary, workspace_root, xvfb::Xvfb};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The app process, killed on drop so none outlives the test.
struct App(Child);
impl Drop for App {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn launch(display: &str, data: &Path) -> Child {
    Command::new(built_binary("fieldpatch-app"))
        .env("DISPLAY", display)
        .env("FIELDPATCH_DATA_DIR", data)
        .env("FIELDPATCH_KEYRING_SERVICE", format!("fieldpatch-shell-{}", std::process::id()))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Everything in the log directory (`<data dir>/logs` with `FIELDPATCH_DATA_DIR`).
fn logs(data: &Path) -> String {
    let Ok(dir) = std::fs::read_dir(data.join("logs")) else { return String::new() };
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok()).collect()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_second_launch_focuses_the_running_window_and_exits() {
    assert!(
        std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some(),
        "single instance goes through the D-Bus session bus: run the tests with scripts/test"
    );
    let xvfb = Xvfb::start().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut first = App(launch(xvfb.display(), data.path()));
    wait_until("the first window to be ready", Duration::from_secs(60), || {
        assert!(
            first.0.try_wait().unwrap().is_none(),
            "the first launch exited:\n{}",
            logs(data.path())
        );
        logs(data.path()).contains("ready (real mode)")
    });
    let files: Vec<_> = std::fs::read_dir(data.path().join("logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(files.iter().all(|f| f.starts_with("fieldpatch.") && f.ends_with(".log")), "{files:?}");

    let mut second = App(launch(xvfb.display(), data.path()));
    let mut status = None;
    wait_until("the second launch to exit", Duration::from_secs(60), || {
        status = second.0.try_wait().unwrap();
        status.is_some()
    });
    assert!(status.unwrap().success(), "the second launch failed: {status:?}");
    wait_until("the first window to hear of it", Duration::from_secs(30), || {
        logs(data.path()).contains("second launch: focusing the running window")
    });
    assert!(first.0.try_wait().unwrap().is_none(), "the first window must keep running");
    let log = logs(data.path());
    assert_eq!(log.matches("Fieldpatch window starting").count(), 1, "{log}");

    // Another data directory is another instance: it runs its own window.
    let other = tempfile::tempdir().unwrap();
    let mut third = App(launch(xvfb.display(), other.path()));
    wait_until("a window on another data directory", Duration::from_secs(60), || {
        assert!(third.0.try_wait().unwrap().is_none(), "{}", logs(other.path()));
        logs(other.path()).contains("ready (real mode)")
    });
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let out = Command::new("dpkg-deb").args(args).arg(deb).output().expect("dpkg-deb");
    assert!(out.status.success(), "dpkg-deb {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_deb_installs_the_udev_rule_and_declares_its_dependencies() {
    // The binary the tests run, bundled as it is (scripts/package --bundle-only), from a copy in a
    // target directory of its own: the bundler opens the binary for writing, which fails while
    // another test runs it.
    let target = tempfile::tempdir().unwrap();
    std::fs::create_dir(target.path().join("debug")).unwrap();
    let app = target.path().join("debug/fieldpatch-app");
    std::fs::copy(built_binary("fieldpatch-app"), &app).unwrap();
    let out = Command::new(workspace_root().join("scripts/package"))
        .args(["--debug", "--bundles", "deb", "--bundle-only"])
        .env("CARGO_TARGET_DIR", target.path())
        .output()
        .unwrap();
    let log =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "scripts/package failed:\n{log}");
    let dir = app.parent().unwrap().join("bundle/deb");
    let deb = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .unwrap_or_else(|| panic!("no .deb in {}:\n{log}", dir.display()));

    let files = dpkg_deb(&["-c"], &deb);
    for path in [
        " usr/bin/fieldpatch-app",
        " lib/udev/rules.d/60-fieldpatch.rules",
        " usr/share/applications/Fieldpatch.desktop",
    ] {
        assert!(files.lines().any(|l| l.contains(path)), "{path} missing:\n{files}");
    }
    let rule = Command::new("sh")
        .args([
            "-c",
            r#"dpkg-deb --fsys-tarfile "$1" | tar -xO lib/udev/rules.d/60-fieldpatch.rules"#,
        ])
        .args(["sh".as_ref(), deb.as_os_str()])
        .output()
        .unwrap();
    assert!(rule.status.success(), "{}", String::from_utf8_lossy(&rule.stderr));
    let rule = String::from_utf8(rule.stdout).unwrap();
    assert!(rule.contains(r#"ENV{ID_USB_INTERFACES}=="*:fe01??:*""#), "DFU devices:\n{rule}");
    assert!(rule.contains(r#"GROUP="plugdev""#) && rule.contains(r#"GROUP="dialout""#), "{rule}");

    let control = dpkg_deb(&["-f"], &deb);
    assert!(control.contains("Package: fieldpatch"), "{control}");
    let depends = control.lines().find_map(|l| l.strip_prefix("Depends: ")).expect("Depends");
    let depends: Vec<&str> = depends.split(", ").collect();
    for dep in [
        "libwebkit2gtk-4.1-0",
        "libgtk-3-0",
        "libusb-1.0-0",
        "libudev1",
        "libsecret-1-0",
        "gnome-keyring | keepassxc | kwalletmanager",
    ] {
        assert!(depends.contains(&dep), "{dep} not declared: {depends:?}");
    }
    let info = dpkg_deb(&["-I"], &deb);
    assert!(info.contains("postinst"), "the postinst reloads the udev rules:\n{info}");
}
