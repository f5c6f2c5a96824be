//! The desktop app's launch in demo mode, in the real window under Xvfb through WebDriver: the
//! time from asking for the window to its first screen (Home), and to the Devices screen with the
//! demo site's devices listed (each identified: the version it runs is shown), and the peak
//! resident memory of the app's process and of the WebKit processes it starts (their peaks
//! summed: pages they share are counted in each, so the sum is an upper bound). Goals: devices
//! listed in under 1.5 s, under 150 MB. Each run starts on a fresh data directory.
//!
//! The same in real mode on a first run (the settings screen), to tell the window's own cost from
//! the demo site's (its lab devices and embedded inventory run inside the app process).
//!
//! Run by `scripts/bench app_launch` (after a release build of `fieldpatch-app`); runs per
//! invocation: `FIELDPATCH_APP_BENCH_RUNS` (default 3), the median is reported.

use fieldpatch_e2e::{built_binary, free_port, webdriver::Session, xvfb::Xvfb};
use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// tauri-driver and everything it starts, in one process group, ended on drop.
struct Driver(Child);
impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let _ = self.0.wait();
    }
}

/// Parent of every process, by pid.
fn parents() -> HashMap<u32, u32> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            out.insert(pid, ppid);
        }
    }
    out
}

/// (name, peak resident KiB) of every descendant of `root`.
fn descendants_peaks(root: u32) -> Vec<(String, u64)> {
    let parents = parents();
    let under = |mut pid: u32| {
        while let Some(&p) = parents.get(&pid) {
            if p == root {
                return true;
            }
            if p <= 1 {
                return false;
            }
            pid = p;
        }
        false
    };
    let mut out = Vec::new();
    for &pid in parents.keys().filter(|&&p| under(p)) {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { continue };
        let field = |key: &str| {
            status.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim().to_string())
        };
        let name = field("Name:").unwrap_or_default();
        let kib =
            field("VmHWM:").and_then(|v| v.trim_end_matches("kB").trim().parse().ok()).unwrap_or(0);
        out.push((name, kib));
    }
    out
}

struct Run {
    home: Duration,
    devices: Duration,
    app_kib: u64,
    with_webkit_kib: u64,
}

fn one_run(app: &std::path::Path, demo: bool) -> anyhow::Result<Run> {
    let xvfb = Xvfb::start_with_screen("1366x768x24")?;
    let data = tempfile::tempdir()?;
    let port = free_port();
    let driver = Driver(
        Command::new("tauri-driver")
            .args(["--port", &port.to_string(), "--native-port", &free_port().to_string()])
            .env("DISPLAY", xvfb.display())
            .env("FIELDPATCH_DATA_DIR", data.path())
            .env("FIELDPATCH_KEYRING_SERVICE", format!("fieldpatch-bench-{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?,
    );
    // The driver is listening before the clock starts: its own start is not the app's.
    let ready = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < ready, "tauri-driver did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let long = Duration::from_secs(60);
    let started = Instant::now();
    let args: &[&str] = if demo { &["--demo"] } else { &[] };
    let session = Session::start_with_args(&format!("http://127.0.0.1:{port}"), app, args)?;
    let (home, devices) = if demo {
        session.wait_text("#home-heading", long)?;
        let home = started.elapsed();
        session.click("#nav-site", long)?;
        session.wait_for("tr[data-device='pump-ctl-01'] td.runs", long, |t| !t.is_empty())?;
        (home, started.elapsed())
    } else {
        // Real mode on a first run: the settings, nothing to list.
        session.wait_for("dd[data-setting='Sync token']", long, |t| !t.is_empty())?;
        let first = started.elapsed();
        (first, first)
    };
    let peaks = descendants_peaks(driver.0.id());
    let app_kib = peaks.iter().filter(|(n, _)| n.starts_with("fieldpatch-app")).map(|p| p.1).sum();
    let webkit: u64 = peaks
        .iter()
        .filter(|(n, _)| n.starts_with("WebKit") && !n.contains("Driver"))
        .map(|p| p.1)
        .sum();
    session.close()?;
    drop(driver);
    Ok(Run { home, devices, app_kib, with_webkit_kib: app_kib + webkit })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let app = built_binary("fieldpatch-app");
    let runs: usize =
        std::env::var("FIELDPATCH_APP_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let mut all = Vec::new();
    println!("{:>4} {:>10} {:>12} {:>10} {:>16}", "run", "home", "devices", "app", "app + WebKit");
    for i in 0..runs.max(1) {
        let r = one_run(&app, true)?;
        println!(
            "{:>4} {:>8.0}ms {:>10.0}ms {:>8.1}MB {:>14.1}MB",
            i + 1,
            r.home.as_secs_f64() * 1e3,
            r.devices.as_secs_f64() * 1e3,
            r.app_kib as f64 / 1024.0,
            r.with_webkit_kib as f64 / 1024.0
        );
        all.push(r);
    }
    let n = all.len();
    let group = "Desktop app, demo mode, under Xvfb (WebDriver session included)";
    let figure = |name: &str, value: f64, unit: &str, limit: f64, goal: &str| {
        println!(
            "FIGURE {}",
            serde_json::json!({
                "group": group, "name": name, "value": value, "unit": unit, "runs": n,
                "limit": limit, "better": "lower", "goal": goal,
            })
        );
    };
    figure(
        "launch to the first screen (Home)",
        median(all.iter().map(|r| r.home.as_secs_f64()).collect()),
        "s",
        1.5,
        "under 1.5 s",
    );
    figure(
        "launch to the devices listed and identified",
        median(all.iter().map(|r| r.devices.as_secs_f64()).collect()),
        "s",
        1.5,
        "under 1.5 s",
    );
    figure(
        "peak resident memory, app process",
        median(all.iter().map(|r| r.app_kib as f64 / 1024.0).collect()),
        "MB",
        150.0,
        "under 150 MB",
    );
    figure(
        "peak resident memory, app + WebKit processes (sum of peaks)",
        median(all.iter().map(|r| r.with_webkit_kib as f64 / 1024.0).collect()),
        "MB",
        150.0,
        "under 150 MB",
    );
    // Real mode on a first run: what the window itself costs, without the demo site (its lab
    // devices and embedded inventory run inside the app process).
    let real: Vec<Run> =
        (0..runs.max(1)).map(|_| one_run(&app, false)).collect::<Result<_, _>>()?;
    figure(
        "real mode, first run: launch to the settings screen",
        median(real.iter().map(|r| r.home.as_secs_f64()).collect()),
        "s",
        1.5,
        "under 1.5 s",
    );
    figure(
        "real mode, first run: peak resident memory, app process",
        median(real.iter().map(|r| r.app_kib as f64 / 1024.0).collect()),
        "MB",
        150.0,
        "under 150 MB",
    );
    Ok(())
}
