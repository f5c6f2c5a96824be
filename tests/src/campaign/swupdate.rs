//! The SWUpdate family: an embedded Linux gateway running the real `swupdate` daemon (digest
//! authentication, its password the campaign's keyring secret), reached through a loopback TCP
//! proxy that carries the faults on the way to it.
//!
//! One daemon serves every run of a campaign ([`Gateway`]); a fault that kills it restarts it in
//! the same folder, its flash file kept as a power cut keeps a device's flash. Each run writes
//! the old content into the flash file, opens its own proxy (which follows the daemon to its new
//! port after a restart) and flashes `lab-gateway-2.1.0`: a signed `.swu` with one `raw` image
//! written to the flash file.
//!
//! The check: the flash file holds the old content or exactly the new image once the daemon has
//! settled, and the new image whenever the device is reported patched.

use super::{Draw, Fault};
use fieldpatch_core::plan::{DeviceAddress, DeviceRecord};
use fieldpatch_core::session::DeviceStatus;
use fieldpatch_testkit::swupdate::{Daemon, DaemonAuth, Vendor};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The gateway's board and hardware revision (`swupdate -H`).
const HARDWARE: &str = "gw100:1.0";
/// The digest realm and user.
const REALM: &str = "campaign-gateway";
const USER: &str = "admin";
/// Size of the root file system image (and of the old flash content).
pub const ROOTFS_LEN: usize = 120_000;

/// The campaign's gateway: its folder, the vendor whose certificate it trusts, the daemon.
#[derive(Debug)]
pub struct Gateway {
    dir: PathBuf,
    pub vendor: Vendor,
    daemon: Mutex<Option<Daemon>>,
    /// The port the daemon listens on now (0: not running).
    port: Arc<AtomicU16>,
}

impl Gateway {
    /// A gateway in `dir` (the daemon starts at its first run).
    pub fn new(dir: &Path) -> Gateway {
        let vendor = Vendor::new(&dir.join("vendor"), "Campaign Gateway Vendor");
        Gateway {
            dir: dir.join("daemon"),
            vendor,
            daemon: Mutex::new(None),
            port: Arc::new(AtomicU16::new(0)),
        }
    }

    /// The file the daemon's `raw` handler writes (the gateway's flash).
    pub fn flash(&self) -> PathBuf {
        self.dir.join("flash.bin")
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Daemon>> {
        self.daemon.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start the daemon unless it runs, keeping the flash file's content (starting empties it).
    async fn ensure(&self, password: &str) -> Result<(), String> {
        if self.slot().is_some() {
            return Ok(());
        }
        let flash = std::fs::read(self.flash()).ok();
        let (dir, cert) = (self.dir.clone(), self.vendor.cert.clone());
        let auth = DaemonAuth { user: USER.into(), realm: REALM.into(), password: password.into() };
        let daemon = tokio::task::spawn_blocking(move || {
            Daemon::try_start_with(&dir, HARDWARE, &cert, Some(&auth), false)
        })
        .await
        .map_err(|e| e.to_string())??;
        if let Some(bytes) = flash {
            std::fs::write(&daemon.flash, bytes).map_err(|e| e.to_string())?;
        }
        self.port.store(daemon.port, Ordering::SeqCst);
        *self.slot() = Some(daemon);
        Ok(())
    }

    /// Kill the daemon (as a power cut does).
    async fn kill(&self) {
        self.port.store(0, Ordering::SeqCst);
        let daemon = self.slot().take();
        let _ = tokio::task::spawn_blocking(move || drop(daemon)).await;
    }

    /// What the daemon has logged (empty when it does not run).
    fn log_len(&self) -> u64 {
        std::fs::metadata(self.dir.join("swupdate.log")).map(|m| m.len()).unwrap_or(0)
    }
}

/// What the proxy does to the first upload that reaches a byte count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProxyFault {
    None,
    /// Close both sides after this many bytes of the upload.
    Cut(u64),
    /// Forward nothing more after this many bytes (either way) until the laptop hangs up.
    Stall(u64),
    /// Tell the run's killer after this many bytes (the connection goes on).
    Kill(u64),
}

/// A loopback proxy in front of the daemon, for one run.
#[derive(Debug)]
struct Proxy {
    port: u16,
    task: tokio::task::JoinHandle<()>,
    /// Connections open now.
    open: Arc<AtomicUsize>,
    /// The fault fired.
    fired: Arc<AtomicBool>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    upstream: Arc<AtomicU16>,
    fault: ProxyFault,
    fired: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
    kill: Arc<tokio::sync::Notify>,
}

async fn start_proxy(
    upstream: Arc<AtomicU16>,
    fault: ProxyFault,
    kill: Arc<tokio::sync::Notify>,
) -> Result<Proxy, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let open = Arc::new(AtomicUsize::new(0));
    let fired = Arc::new(AtomicBool::new(false));
    let shared =
        Arc::new(Shared { upstream, fault, fired: fired.clone(), open: open.clone(), kill });
    let task = tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else { continue };
            let shared = shared.clone();
            shared.open.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let port = shared.upstream.load(Ordering::SeqCst);
                if port != 0
                    && let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                {
                    pipe(client, server, &shared).await;
                }
                shared.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Ok(Proxy { port, task, open, fired })
}

/// Forward both ways; the upload (`POST /upload`) gets the fault once per run.
async fn pipe(mut client: tokio::net::TcpStream, mut server: tokio::net::TcpStream, s: &Shared) {
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let (mut a, mut b) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let mut upload: Option<bool> = None;
    let mut sent = 0u64;
    loop {
        let (n, up) = tokio::select! {
            r = cr.read(&mut a) => (r, true),
            r = sr.read(&mut b) => (r, false),
        };
        let n = match n {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !up {
            if cw.write_all(&b[..n]).await.is_err() {
                return;
            }
            continue;
        }
        let is_upload = *upload.get_or_insert_with(|| a[..n].starts_with(b"POST /upload"));
        let before = sent;
        sent += n as u64;
        let at = match s.fault {
            ProxyFault::Cut(at) | ProxyFault::Stall(at) | ProxyFault::Kill(at) => at,
            ProxyFault::None => u64::MAX,
        };
        let hit = is_upload && before + n as u64 > at && !s.fired.swap(true, Ordering::SeqCst);
        if !hit {
            if sw.write_all(&a[..n]).await.is_err() {
                return;
            }
            continue;
        }
        let keep = (at - before) as usize;
        match s.fault {
            ProxyFault::Cut(_) => {
                let _ = sw.write_all(&a[..keep]).await;
                return;
            }
            ProxyFault::Stall(_) => {
                let _ = sw.write_all(&a[..keep]).await;
                // Silent both ways until the laptop gives up and hangs up.
                while matches!(cr.read(&mut a).await, Ok(n) if n > 0) {}
                return;
            }
            ProxyFault::Kill(_) => {
                s.kill.notify_one();
                if sw.write_all(&a[..n]).await.is_err() {
                    return;
                }
            }
            ProxyFault::None => {}
        }
    }
}

/// One run's gateway: the record, the proxy, and the daemon killer for [`Fault::DaemonKilled`].
#[derive(Debug)]
pub struct SwupdateRun {
    proxy: Proxy,
    killer: Option<tokio::task::JoinHandle<Result<(), String>>>,
    pub record: DeviceRecord,
    pub detail: String,
}

impl SwupdateRun {
    /// Start (or reuse) the daemon, write the old content into its flash, open the proxy with
    /// the drawn fault.
    pub async fn start(
        gateway: &Arc<Gateway>,
        old: &[u8],
        upload_len: u64,
        fault: Fault,
        draw: &mut Draw,
        password: &str,
    ) -> Result<SwupdateRun, String> {
        gateway.ensure(password).await?;
        std::fs::write(gateway.flash(), old).map_err(|e| e.to_string())?;
        let (proxy_fault, detail, kill_plan) = match fault {
            Fault::CutUpload => {
                let at = draw.range(0, upload_len);
                (ProxyFault::Cut(at), format!("upload cut after {at} bytes"), None)
            }
            Fault::Stall => {
                let at = draw.range(0, upload_len);
                (ProxyFault::Stall(at), format!("silent after {at} bytes of the upload"), None)
            }
            Fault::DaemonKilled => {
                let at = draw.range(0, upload_len);
                let delay = draw.range(0, 1500);
                let down = draw.range(100, 2000);
                let text = format!(
                    "daemon killed {delay} ms after {at} bytes of the upload, back {down} ms later"
                );
                (ProxyFault::Kill(at), text, Some((delay, down)))
            }
            Fault::RefusedByDaemon => (
                ProxyFault::None,
                "the inventory says revision 2.0; the gateway is 1.0".to_string(),
                None,
            ),
            _ => (ProxyFault::None, String::new(), None),
        };
        let kill = Arc::new(tokio::sync::Notify::new());
        let proxy = start_proxy(gateway.port.clone(), proxy_fault, kill.clone()).await?;
        let killer = kill_plan.map(|(delay, down)| {
            let (gateway, password) = (gateway.clone(), password.to_string());
            tokio::spawn(async move {
                kill.notified().await;
                tokio::time::sleep(Duration::from_millis(delay)).await;
                gateway.kill().await;
                tokio::time::sleep(Duration::from_millis(down)).await;
                gateway.ensure(&password).await
            })
        });
        let (model, revision) = match fault {
            Fault::RefusedByDaemon => ("gateway-r2", "2.0"),
            _ => ("gateway", "1.0"),
        };
        let url = format!("http://127.0.0.1:{}", proxy.port);
        let address = DeviceAddress::Swupdate { url, user: None };
        let mut record = fieldpatch_testkit::site::record("dev", "Lab", model, address);
        record.identity.firmware_version = Some("1.0.0".parse().map_err(|e| format!("{e}"))?);
        record.identity.hardware_revision = Some(revision.into());
        record.credential = Some(super::SECRET_NAME.into());
        Ok(SwupdateRun { proxy, killer, record, detail })
    }

    /// Wait (bounded) until the killed daemon is back, no connection is open and the daemon's
    /// log has been still for half a second (an install the laptop left behind has ended).
    pub async fn settle(&mut self, gateway: &Gateway, violations: &mut Vec<String>) {
        if let Some(killer) = self.killer.take() {
            if self.proxy.fired.load(Ordering::SeqCst) {
                match tokio::time::timeout(Duration::from_secs(20), killer).await {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(e))) => {
                        violations.push(format!("the daemon did not start again: {e}"))
                    }
                    Ok(Err(e)) => violations.push(format!("the daemon killer failed: {e}")),
                    Err(_) => violations.push("the daemon did not start again in 20 s".into()),
                }
            } else {
                killer.abort();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = (gateway.log_len(), Instant::now());
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let len = gateway.log_len();
            if len != last.0 || self.proxy.open.load(Ordering::SeqCst) > 0 {
                last = (len, Instant::now());
            } else if last.1.elapsed() >= Duration::from_millis(500) {
                return;
            }
        }
    }

    /// Invariants 1 and 2: the flash file holds the old content or exactly the new image, and
    /// the new image when reported patched.
    pub fn check(
        &self,
        gateway: &Gateway,
        old: &[u8],
        new: &[u8],
        status: Option<&DeviceStatus>,
        violations: &mut Vec<String>,
    ) {
        let flash = match std::fs::read(gateway.flash()) {
            Ok(f) => f,
            Err(e) => return violations.push(format!("bootable: the flash file is gone: {e}")),
        };
        let describe = |f: &[u8]| {
            if f == old {
                "the old content".to_string()
            } else if f == new {
                "the new image".to_string()
            } else {
                let diff_old = f.iter().zip(old).position(|(a, b)| a != b);
                let diff_new = f.iter().zip(new).position(|(a, b)| a != b);
                format!(
                    "{} bytes, neither old (differs at {diff_old:?}) nor new (differs at {diff_new:?})",
                    f.len()
                )
            }
        };
        if matches!(status, Some(DeviceStatus::Patched { .. } | DeviceStatus::Unverified { .. }))
            && flash != new
        {
            violations.push(format!(
                "honest success: reported {status:?}, but the flash holds {}",
                describe(&flash)
            ));
        } else if flash != old && flash != new {
            violations.push(format!(
                "bootable: the gateway's flash holds {} (the session says {status:?})",
                describe(&flash)
            ));
        }
    }
}
