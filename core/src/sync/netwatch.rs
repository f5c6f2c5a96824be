//! Network-change signals for `watch`: on Linux, a cheap poll of the kernel's routing table and
//! interface states (`/proc/net/route`, `/sys/class/net/*/operstate`) that notifies when either
//! changes (a cable plugged in, Wi-Fi joined, a VPN up). Elsewhere (macOS, Windows) the OS keeps
//! that state behind its own APIs, so [`spawn_monitor`] returns `None` there and `watch` relies on
//! its periodic probe; the desktop app can nudge it from the OS's own events.
//!
//! Only `std` file reads are used, so this module builds on every platform; what is Linux-only is
//! the meaning of the files, and [`spawn_monitor`] is gated on that.

use std::sync::Arc;
use std::time::Duration;

/// A fingerprint of the network state: changes when routes or interface states change.
pub fn fingerprint(root: &std::path::Path) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let routes = std::fs::read(root.join("proc/net/route")).ok()?;
    routes.hash(&mut h);
    if let Ok(dir) = std::fs::read_dir(root.join("sys/class/net")) {
        let mut ifaces: Vec<_> = dir.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        ifaces.sort();
        for i in ifaces {
            i.file_name().hash(&mut h);
            std::fs::read(i.join("operstate")).unwrap_or_default().hash(&mut h);
        }
    }
    Some(h.finish())
}

/// Whether this platform exposes the network state [`fingerprint`] reads (Linux only).
pub const SUPPORTED: bool = cfg!(target_os = "linux");

/// Notify `nudge` whenever the fingerprint under `root` (`/` for the real system) changes, checking
/// every `every`. Ends when `nudge` has no other owner. Returns `None` where the OS offers no
/// such state: on every platform but Linux (see [`SUPPORTED`]), and on a Linux without
/// `/proc/net/route`. The caller then relies on its periodic probe.
pub fn spawn_monitor(
    root: std::path::PathBuf,
    every: Duration,
    nudge: Arc<tokio::sync::Notify>,
) -> Option<tokio::task::JoinHandle<()>> {
    if !SUPPORTED {
        tracing::debug!("no network-change signal on this platform; relying on periodic probes");
        return None;
    }
    monitor(root, every, nudge)
}

/// [`spawn_monitor`] without the platform gate (the files under `root` decide).
fn monitor(
    root: std::path::PathBuf,
    every: Duration,
    nudge: Arc<tokio::sync::Notify>,
) -> Option<tokio::task::JoinHandle<()>> {
    let mut last = fingerprint(&root)?;
    Some(tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if Arc::strong_count(&nudge) == 1 {
                return;
            }
            let root = root.clone();
            let now = tokio::task::spawn_blocking(move || fingerprint(&root)).await.ok().flatten();
            if let Some(now) = now
                && now != last
            {
                last = now;
                nudge.notify_one();
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_route_change_nudges() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("proc/net")).unwrap();
        std::fs::create_dir_all(root.path().join("sys/class/net/eth0")).unwrap();
        std::fs::write(root.path().join("proc/net/route"), "Iface\tDestination\n").unwrap();
        std::fs::write(root.path().join("sys/class/net/eth0/operstate"), "down\n").unwrap();
        let nudge = Arc::new(tokio::sync::Notify::new());
        let task = monitor(root.path().into(), Duration::from_millis(10), nudge.clone()).unwrap();
        // Nothing changes: no nudge.
        assert!(tokio::time::timeout(Duration::from_millis(100), nudge.notified()).await.is_err());
        std::fs::write(root.path().join("sys/class/net/eth0/operstate"), "up\n").unwrap();
        tokio::time::timeout(Duration::from_secs(5), nudge.notified()).await.unwrap();
        drop(nudge);
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
        assert!(
            monitor(root.path().join("missing"), Duration::from_millis(10), Arc::default())
                .is_none()
        );
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn on_linux_the_real_system_is_watched() {
        let nudge = Arc::new(tokio::sync::Notify::new());
        let task = spawn_monitor("/".into(), Duration::from_millis(10), nudge.clone()).unwrap();
        drop(nudge);
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    }

    #[cfg(not(target_os = "linux"))]
    #[tokio::test]
    async fn elsewhere_there_is_no_monitor_and_watch_probes_periodically() {
        assert!(spawn_monitor("/".into(), Duration::from_millis(10), Arc::default()).is_none());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_real_system_has_a_fingerprint() {
        assert!(fingerprint(std::path::Path::new("/")).is_some());
    }
}
