//! Automatic sync for a shell that stays open (the desktop app): one controller that turns the
//! background [`watch`](super::watch) on and off, wakes it for "sync now", and reports every
//! [`WatchEvent`] through a callback the shell renders.

use super::{StoreSync, SyncConfig, WatchEvent, WatchOptions, watch};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where watch events go (the app forwards them to the window).
pub type WatchSink = Arc<dyn Fn(WatchEvent) + Send + Sync>;

/// Turns automatic sync on and off. See the module docs.
pub struct AutoSync {
    config: SyncConfig,
    local: Arc<StoreSync>,
    options: WatchOptions,
    stop: Mutex<Option<tokio::sync::watch::Sender<bool>>>,
    nudge: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for AutoSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AutoSync").field("on", &self.is_on()).finish_non_exhaustive()
    }
}

impl AutoSync {
    /// A controller for syncing `local` with the server of `config`; off until [`AutoSync::set`].
    pub fn new(config: SyncConfig, local: StoreSync) -> AutoSync {
        AutoSync {
            config,
            local: Arc::new(local),
            options: WatchOptions::interactive(),
            stop: Mutex::new(None),
            nudge: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Whether automatic sync is on.
    pub fn is_on(&self) -> bool {
        self.stop.lock().is_ok_and(|g| g.is_some())
    }

    /// Turn automatic sync on or off. Turning it on (again) restarts the watch on `runtime`;
    /// turning it off stops it, and the watch reports [`WatchEvent::Stopped`].
    pub fn set(&self, on: bool, runtime: &tokio::runtime::Handle, events: WatchSink) {
        let mut guard = self.stop.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stop) = guard.take() {
            let _ = stop.send(true);
        }
        if !on {
            return;
        }
        let (tx, rx) = tokio::sync::watch::channel(false);
        *guard = Some(tx);
        let (config, local, nudge, options) =
            (self.config.clone(), self.local.clone(), self.nudge.clone(), self.options);
        runtime.spawn(async move {
            let emit = move |e: WatchEvent| events(e);
            // A failure is reported as an event; the watch itself keeps going until stopped.
            let _ = watch(&config, local.as_ref(), options, rx, Some(&nudge), &emit).await;
        });
    }

    /// Sync now: wakes the running watch (a no-op while automatic sync is off).
    pub fn sync_now(&self) {
        self.nudge.notify_one();
    }
}

impl WatchOptions {
    /// For a window the technician looks at: sync every 20 s while online, probe quickly when
    /// offline.
    pub fn interactive() -> WatchOptions {
        WatchOptions {
            interval: Duration::from_secs(20),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(15),
        }
    }
}
