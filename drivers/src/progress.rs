//! Progress reporting for long device operations (uploads, downloads, erases).
//!
//! Drivers and the core report progress through the [`Progress`] trait. Every method has a no-op
//! default so a caller implements only what it renders: the CLI draws progress bars, the desktop
//! app forwards events to the window, tests record them.

use serde::Serialize;
use std::time::Duration;

/// One progress observation of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TransferProgress {
    /// Bytes the device has acknowledged so far.
    pub done: u64,
    /// Total bytes to transfer.
    pub total: u64,
    /// Time since the transfer started.
    pub elapsed: Duration,
}

impl TransferProgress {
    /// Average rate so far in bytes per second (0 before any time has passed).
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { self.done as f64 / secs } else { 0.0 }
    }

    /// Estimated time to completion at the average rate so far, if it can be estimated.
    pub fn eta(&self) -> Option<Duration> {
        let rate = self.rate();
        if rate <= 0.0 || self.done > self.total {
            return None;
        }
        Some(Duration::from_secs_f64((self.total - self.done) as f64 / rate))
    }

    /// Fraction done in `0.0..=1.0`.
    pub fn fraction(&self) -> f64 {
        if self.total == 0 { 1.0 } else { (self.done as f64 / self.total as f64).min(1.0) }
    }
}

/// Receives progress of a long-running operation. All methods default to doing nothing.
pub trait Progress: Send + Sync {
    /// A named phase begins (for example "erase", "upload", "verify").
    fn phase(&self, _name: &str) {}
    /// Bytes moved.
    fn transfer(&self, _progress: TransferProgress) {}
    /// Something worth telling the user that is not an error (a retry, a resume).
    fn note(&self, _message: &str) {}
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_eta_and_fraction() {
        let p = TransferProgress { done: 500, total: 2000, elapsed: Duration::from_secs(2) };
        assert_eq!(p.rate(), 250.0);
        assert_eq!(p.eta(), Some(Duration::from_secs(6)));
        assert_eq!(p.fraction(), 0.25);
        let start = TransferProgress { done: 0, total: 10, elapsed: Duration::ZERO };
        assert_eq!(start.eta(), None);
        let empty = TransferProgress { done: 0, total: 0, elapsed: Duration::ZERO };
        assert_eq!(empty.fraction(), 1.0);
    }
}
