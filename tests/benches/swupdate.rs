//! SWUpdate upload throughput on loopback: a 64 MiB `.swu` installed on the real SWUpdate daemon
//! (its web server with HTTP digest authentication, a vendor certificate and the `raw` handler
//! writing a file) by Fieldpatch's driver, next to `curl --digest -F file=@...` uploading the same
//! file to the same daemon (with `-H 'Expect:'`: otherwise curl waits up to a second for a
//! `100 Continue` the daemon never sends), alternating, in one run. Each figure is the median of the runs with
//! the spread (min..max): the upload (the last byte sent), and the install (the daemon's final
//! verdict, read by the driver on SWUpdate's WebSocket, and for curl from the daemon's log). Goal:
//! Fieldpatch's upload within 10% of curl's. Figures only: nothing here asserts a time.
//!
//! `cargo bench -p fieldpatch-e2e --bench swupdate` (`FIELDPATCH_SWUPDATE_BENCH_RUNS=N`, default 5)

use fieldpatch_drivers::progress::{Progress, TransferProgress};
use fieldpatch_drivers::swupdate::{DigestCredentials, SwupdateClient, Timeouts};
use fieldpatch_testkit::swupdate::{Daemon, DaemonAuth, Swu, Vendor};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SIZE: usize = 64 << 20;
const PASSWORD: &str = "bench-gateway-password";

/// Remembers when the last byte went.
#[derive(Default)]
struct UploadClock(Mutex<Option<Instant>>);

impl Progress for UploadClock {
    fn transfer(&self, p: TransferProgress) {
        if p.done >= p.total {
            let mut t = self.0.lock().unwrap();
            t.get_or_insert_with(Instant::now);
        }
    }
}

fn median_spread(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn successes(d: &Daemon) -> usize {
    d.log_text().matches("SWUPDATE successful").count()
}

fn main() {
    let runs: usize = std::env::var("FIELDPATCH_SWUPDATE_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let vendor = Vendor::new(&root.join("vendor"), "Bench Vendor");
    let auth =
        DaemonAuth { user: "admin".into(), realm: "bench".into(), password: PASSWORD.into() };
    let daemon = Daemon::start(&root.join("daemon"), "gw100:1.0", &vendor.cert, Some(&auth));
    let image: Vec<u8> =
        (0..SIZE as u64).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    let swu = Swu {
        version: "9.9.9".into(),
        hardware: vec!["1.0".into()],
        image_name: "rootfs.img".into(),
        image,
        device_path: daemon.flash.clone(),
        signer: Some(vendor.clone()),
        tamper: false,
    };
    let file = swu.write(root, "bench.swu");
    let len = std::fs::metadata(&file).unwrap().len();
    let netrc = root.join("netrc");
    std::fs::write(&netrc, format!("machine 127.0.0.1 login admin password {PASSWORD}\n")).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let client = SwupdateClient::new(
        &daemon.url(),
        Timeouts { request: Duration::from_secs(10), install: Duration::from_secs(120) },
    )
    .unwrap();
    let creds = DigestCredentials::new("admin", PASSWORD);

    let (mut ours_up, mut ours_all, mut curl_up, mut curl_all) = (vec![], vec![], vec![], vec![]);
    // What curl reports it uploaded in its last run (its digest handshake may resend the body).
    let mut curl_sent: u64 = 0;
    let mib = len as f64 / (1024.0 * 1024.0);
    println!(
        "SWUpdate upload of a {mib:.1} MiB .swu to the real daemon on loopback, {runs} runs each"
    );
    for run in 0..runs {
        // Fieldpatch's driver: authenticate, stream, wait for the WebSocket verdict.
        // The daemon stays busy for a moment after an install curl sent: wait for it, untimed.
        let waited = Instant::now();
        let (start, clock, report) = loop {
            let clock = UploadClock::default();
            let start = Instant::now();
            match rt.block_on(client.install(&file, Some(&creds), &clock)) {
                Err(e) if e.is_transient() && waited.elapsed() < Duration::from_secs(30) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                other => break (start, clock, other.unwrap()),
            }
        };
        let all = start.elapsed().as_secs_f64();
        let up = clock.0.lock().unwrap().map_or(all, |t| (t - start).as_secs_f64());
        assert_eq!(report.bytes_sent, len);
        ours_up.push(up);
        ours_all.push(all);

        // curl: the same file, the same daemon; the verdict from the daemon's log.
        let before = successes(&daemon);
        // As above: a busy daemon answers 500 at once; wait for it, untimed.
        let waited = Instant::now();
        let (start, up) = loop {
            let start = Instant::now();
            let out = std::process::Command::new("curl")
                .args(["-sS", "--fail", "-o", "/dev/null", "-w", "%{size_upload}", "--digest"])
                // Without this header curl waits up to a second for a `100 Continue` that the
                // daemon's web server never sends: that would measure curl's timer, not the link.
                .args(["-H", "Expect:"])
                // A daemon that stops reading must not hang the benchmark: curl gives up.
                .args(["--max-time", "120"])
                .arg("--netrc-file")
                .arg(&netrc)
                .arg("-F")
                .arg(format!("file=@{}", file.display()))
                .arg(format!("{}/upload", daemon.url()))
                .output()
                .expect("curl runs (scripts/setup installs it)");
            let up = start.elapsed().as_secs_f64();
            if out.status.success() {
                curl_sent = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
                break (start, up);
            }
            assert!(
                waited.elapsed() < Duration::from_secs(30),
                "curl: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        while successes(&daemon) == before {
            assert!(start.elapsed() < Duration::from_secs(120), "{}", daemon.log_text());
            std::thread::sleep(Duration::from_millis(5));
        }
        let all = start.elapsed().as_secs_f64();
        curl_up.push(up);
        curl_all.push(all);
        println!(
            "  run {}: fieldpatch upload {:.3} s / install {:.3} s; curl upload {:.3} s / install {:.3} s",
            run + 1,
            ours_up[run],
            ours_all[run],
            up,
            all
        );
    }
    let row = |name: &str, v: &mut Vec<f64>| {
        let (m, lo, hi) = median_spread(v);
        println!("{name:<28} {m:>7.3} s  ({lo:.3}..{hi:.3})  {:>7.1} MiB/s", mib / m);
        m
    };
    println!("{:<28} {:>9}  {:>14}  {:>12}", "", "median", "spread", "rate");
    let ou = row("fieldpatch upload", &mut ours_up);
    let cu = row("curl --digest -F upload", &mut curl_up);
    let oa = row("fieldpatch install", &mut ours_all);
    let ca = row("curl install (daemon log)", &mut curl_all);
    println!("fieldpatch / curl: upload {:.2}x the time, install {:.2}x", ou / cu, oa / ca);
    let spread = |v: &[f64]| serde_json::json!([v[0], v[v.len() - 1]]);
    let figure = |name: &str, m: f64, s: serde_json::Value, peer: f64, ps: serde_json::Value| {
        println!(
            "FIGURE {}",
            serde_json::json!({
                "group": "SWUpdate upload (64 MiB .swu, real daemon, loopback)",
                "name": name, "value": m, "unit": "s", "spread": s, "runs": runs,
                "peer": "curl --digest -F", "peer_value": peer, "peer_spread": ps,
                "better": "lower", "goal": "within 10% of curl",
            })
        )
    };
    figure("upload", ou, spread(&ours_up), cu, spread(&curl_up));
    figure("upload and install verdict", oa, spread(&ours_all), ca, spread(&curl_all));
    println!(
        "bytes on the wire per upload: fieldpatch {len} (one challenge request without a body, then the file); curl {curl_sent} ({:.2}x the file)",
        curl_sent as f64 / len as f64
    );
}
