//! DFU 1.1 wire constants and the GETSTATUS response: one small type per concept, with
//! `parse` for what the device sends. Unknown codes and short answers are errors, never panics.

use serde::Serialize;
use std::fmt;

/// Class requests (DFU 1.1 table 3.2).
pub const DETACH: u8 = 0;
pub const DNLOAD: u8 = 1;
pub const UPLOAD: u8 = 2;
pub const GETSTATUS: u8 = 3;
pub const CLRSTATUS: u8 = 4;
pub const GETSTATE: u8 = 5;
pub const ABORT: u8 = 6;

/// `bmRequestType` host-to-device / device-to-host, class, interface.
pub const REQ_OUT: u8 = 0x21;
pub const REQ_IN: u8 = 0xA1;

/// DfuSe commands, sent as DNLOAD with wBlockNum 0.
pub const DFUSE_GET_COMMANDS: u8 = 0x00;
pub const DFUSE_SET_ADDRESS: u8 = 0x21;
pub const DFUSE_ERASE: u8 = 0x41;
pub const DFUSE_READ_UNPROTECT: u8 = 0x92;

/// Device states (DFU 1.1 section 6.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum DfuState {
    AppIdle = 0,
    AppDetach = 1,
    DfuIdle = 2,
    DfuDnloadSync = 3,
    DfuDnbusy = 4,
    DfuDnloadIdle = 5,
    DfuManifestSync = 6,
    DfuManifest = 7,
    DfuManifestWaitReset = 8,
    DfuUploadIdle = 9,
    DfuError = 10,
}

impl DfuState {
    pub fn from_u8(b: u8) -> Option<Self> {
        use DfuState::*;
        Some(match b {
            0 => AppIdle,
            1 => AppDetach,
            2 => DfuIdle,
            3 => DfuDnloadSync,
            4 => DfuDnbusy,
            5 => DfuDnloadIdle,
            6 => DfuManifestSync,
            7 => DfuManifest,
            8 => DfuManifestWaitReset,
            9 => DfuUploadIdle,
            10 => DfuError,
            _ => return None,
        })
    }

    /// The name the specification uses.
    pub fn name(self) -> &'static str {
        use DfuState::*;
        match self {
            AppIdle => "appIDLE",
            AppDetach => "appDETACH",
            DfuIdle => "dfuIDLE",
            DfuDnloadSync => "dfuDNLOAD-SYNC",
            DfuDnbusy => "dfuDNBUSY",
            DfuDnloadIdle => "dfuDNLOAD-IDLE",
            DfuManifestSync => "dfuMANIFEST-SYNC",
            DfuManifest => "dfuMANIFEST",
            DfuManifestWaitReset => "dfuMANIFEST-WAIT-RESET",
            DfuUploadIdle => "dfuUPLOAD-IDLE",
            DfuError => "dfuERROR",
        }
    }
}

impl fmt::Display for DfuState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Status codes (DFU 1.1 section 6.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum DfuStatus {
    Ok = 0x00,
    ErrTarget = 0x01,
    ErrFile = 0x02,
    ErrWrite = 0x03,
    ErrErase = 0x04,
    ErrCheckErased = 0x05,
    ErrProg = 0x06,
    ErrVerify = 0x07,
    ErrAddress = 0x08,
    ErrNotdone = 0x09,
    ErrFirmware = 0x0A,
    ErrVendor = 0x0B,
    ErrUsbr = 0x0C,
    ErrPor = 0x0D,
    ErrUnknown = 0x0E,
    ErrStalledPkt = 0x0F,
}

impl DfuStatus {
    pub fn from_u8(b: u8) -> Option<Self> {
        use DfuStatus::*;
        Some(match b {
            0x00 => Ok,
            0x01 => ErrTarget,
            0x02 => ErrFile,
            0x03 => ErrWrite,
            0x04 => ErrErase,
            0x05 => ErrCheckErased,
            0x06 => ErrProg,
            0x07 => ErrVerify,
            0x08 => ErrAddress,
            0x09 => ErrNotdone,
            0x0A => ErrFirmware,
            0x0B => ErrVendor,
            0x0C => ErrUsbr,
            0x0D => ErrPor,
            0x0E => ErrUnknown,
            0x0F => ErrStalledPkt,
            _ => return None,
        })
    }

    /// The specification's name and meaning.
    pub fn describe(self) -> &'static str {
        use DfuStatus::*;
        match self {
            Ok => "OK: no error",
            ErrTarget => "errTARGET: the file is not targeted for this device",
            ErrFile => "errFILE: the file is for this device but failed a vendor-specific check",
            ErrWrite => "errWRITE: the device cannot write memory",
            ErrErase => "errERASE: memory erase failed",
            ErrCheckErased => "errCHECK_ERASED: memory erase check failed",
            ErrProg => "errPROG: program memory function failed",
            ErrVerify => "errVERIFY: programmed memory failed verification",
            ErrAddress => "errADDRESS: the address is out of range for this device",
            ErrNotdone => {
                "errNOTDONE: the download ended but the device thinks the firmware is incomplete"
            }
            ErrFirmware => {
                "errFIRMWARE: the device's firmware is corrupt and it cannot return to run-time"
            }
            ErrVendor => "errVENDOR: vendor-specific error",
            ErrUsbr => "errUSBR: the device saw an unexpected USB reset",
            ErrPor => "errPOR: the device saw an unexpected power-on reset",
            ErrUnknown => "errUNKNOWN: something went wrong but the device does not know what",
            ErrStalledPkt => "errSTALLEDPKT: the device stalled an unexpected request",
        }
    }
}

impl fmt::Display for DfuStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// What is wrong with a GETSTATUS/GETSTATE answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusParseError {
    #[error("the answer is {got} bytes, expected {expected}")]
    Short { got: usize, expected: usize },
    #[error("unknown bStatus {0:#04x}")]
    UnknownStatus(u8),
    #[error("unknown bState {0:#04x}")]
    UnknownState(u8),
}

/// The 6-byte answer to GETSTATUS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StatusResponse {
    pub status: DfuStatus,
    /// `bwPollTimeout`: milliseconds to wait before the next GETSTATUS (24 bits).
    pub poll_timeout_ms: u32,
    pub state: DfuState,
    pub string_index: u8,
}

impl StatusResponse {
    pub const LEN: usize = 6;

    pub fn parse(b: &[u8]) -> Result<Self, StatusParseError> {
        if b.len() < Self::LEN {
            return Err(StatusParseError::Short { got: b.len(), expected: Self::LEN });
        }
        Ok(Self {
            status: DfuStatus::from_u8(b[0]).ok_or(StatusParseError::UnknownStatus(b[0]))?,
            poll_timeout_ms: u32::from_le_bytes([b[1], b[2], b[3], 0]),
            state: DfuState::from_u8(b[4]).ok_or(StatusParseError::UnknownState(b[4]))?,
            string_index: b[5],
        })
    }
}
