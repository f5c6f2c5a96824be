//! SMP (the MCUmgr Simple Management Protocol) for Zephyr devices with the MCUboot bootloader.
//!
//! Layers, bottom up:
//! - [`header`]: the 8-byte SMP v2 header.
//! - [`frame`]: the serial console framing (base64 lines with CRC-16); UDP needs none.
//! - [`commands`]: one small type per command, each with `to_bytes` and `parse_response`
//!   (probe-rs style), turning CBOR bodies and both error formats into typed results.
//! - [`client`]: sequence numbers, timeouts, retries and the windowed image upload, over any
//!   [`crate::transport::Link`].
//!
//! Device replies are untrusted input: every malformed packet becomes an [`SmpError`], and every
//! wait is bounded.

pub mod client;
pub mod commands;
pub mod frame;
pub mod header;

pub use client::{
    AfterUpload, Identification, SmpClient, SmpMode, Timeouts, UploadOptions, UploadReport,
};
pub use commands::{ImageSlotState, Params};

use crate::transport::TransportError;
use std::time::Duration;

/// Errors talking SMP to a device.
#[derive(Debug, thiserror::Error)]
pub enum SmpError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(
        "no answer from the device to {what} after {after:?} ({attempts} attempts); check the cable/address, the baud rate and that the device runs an SMP server"
    )]
    Timeout { what: String, after: Duration, attempts: u32 },
    #[error("malformed SMP packet from the device: {0}")]
    Malformed(String),
    #[error(
        "SMP response has the wrong shape: {0} (is this an SMP server of a supported version?)"
    )]
    Shape(String),
    #[error("the device answered a different request: {0}")]
    Mismatch(String),
    #[error("the device refused the request: {0}")]
    Device(DeviceError),
    #[error("{what} failed after {attempts} attempts; last problem: {last}")]
    Failed { what: String, attempts: u32, last: String },
    #[error("upload failed: {0}")]
    Upload(String),
    #[error("the image is {len} bytes; SMP uploads are limited to 4 GiB")]
    TooLarge { len: usize },
    #[error(
        "the {what} request body is {len} bytes, more than the 65,535 an SMP header can announce: send less per request"
    )]
    RequestTooLarge { what: String, len: usize },
}

impl SmpError {
    /// Whether the same request may succeed when tried again (a dropped or stalled link, a busy
    /// device), as opposed to a refusal that repeats until something changes (the device said no,
    /// the image is too large, the answer was of another protocol).
    pub fn is_transient(&self) -> bool {
        match self {
            SmpError::Transport(e) => e.is_transient(),
            SmpError::Timeout { .. } | SmpError::Malformed(_) | SmpError::Mismatch(_) => true,
            SmpError::Device(e) => e.is_transient(),
            SmpError::Failed { .. } | SmpError::Upload(_) => true,
            SmpError::Shape(_) | SmpError::TooLarge { .. } | SmpError::RequestTooLarge { .. } => {
                false
            }
        }
    }

    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            SmpError::Transport(e) => e.code(),
            SmpError::Timeout { .. } => "device_timeout",
            SmpError::Malformed(_) => "malformed_packet",
            SmpError::Shape(_) => "unexpected_response",
            SmpError::Mismatch(_) => "response_mismatch",
            SmpError::Device(e) if e.is_transient() => "device_busy",
            SmpError::Device(_) => "device_refused",
            SmpError::Failed { .. } => "retries_exhausted",
            SmpError::Upload(_) => "upload_failed",
            SmpError::TooLarge { .. } => "image_too_large",
            SmpError::RequestTooLarge { .. } => "request_too_large",
        }
    }
}

/// An error code returned by the device, in either format: SMP v1 `rc` or SMP v2 `err`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceError {
    /// The management group of a v2 error (`None` for a v1 `rc`).
    pub group: Option<u16>,
    pub rc: i64,
}

impl DeviceError {
    /// Whether retrying the same request later may succeed.
    pub fn is_transient(&self) -> bool {
        self.group.is_none() && matches!(self.rc, 2 | 4 | 10)
    }
}

impl std::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.group {
            None => {
                let meaning = match self.rc {
                    1 => "unknown error",
                    2 => "out of memory (try again; the device is busy)",
                    3 => "invalid argument",
                    4 => "timeout on the device",
                    5 => "no such entry (for example no image with that hash)",
                    6 => {
                        "bad state (for example an upload of another image is in progress, or the image is not in the expected slot state)"
                    }
                    7 => "message too large for the device buffer",
                    8 => "command not supported by this device",
                    9 => "corrupt data",
                    10 => "device busy (try again)",
                    11 => "access denied",
                    12 => "protocol version too old for the device",
                    13 => "protocol version too new for the device",
                    _ => "unrecognised error code",
                };
                write!(f, "rc {} ({meaning})", self.rc)
            }
            Some(group) => {
                let meaning = match (group, self.rc) {
                    (1, 3) => "no image in the slot",
                    (1, 4..=7) => "image has no valid TLVs",
                    (1, 8) => "no image with that hash",
                    (1, 9) => "no free slot for the upload",
                    (1, 10..=13) => "flash access failed",
                    (1, 20) => "upload offset mismatch",
                    (1, 21) => "invalid upload length",
                    (1, 22) | (1, 23) => "not an MCUboot image (bad header)",
                    (1, 24) => "image hash is invalid",
                    (1, 27) => "the running image is newer (upgrade-only upload refused)",
                    (1, 28) => "another image is already pending",
                    (1, 30) => "image is too large for the slot",
                    (1, 32) => "image confirmation denied",
                    (1, 33) => "cannot mark the active image for test",
                    _ => "see the group's error table",
                };
                write!(f, "group {group} rc {} ({meaning})", self.rc)
            }
        }
    }
}
