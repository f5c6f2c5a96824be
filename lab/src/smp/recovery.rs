//! MCUboot serial recovery: the bootloader itself answering SMP on the serial console, as
//! MCUboot's `boot_serial` does with Zephyr's default options.
//!
//! Only a subset of SMP is answered. Group 0: echo (only with [`SerialRecovery::echo`]), console
//! echo control (always `rc 0`), reset, MCUmgr parameters (only with
//! [`SerialRecovery::mcumgr_params`]: `buf_size` the receive size, `buf_count` 1). Group 1: image
//! state read and upload. Everything else, including image state write (no
//! `CONFIG_BOOT_SERIAL_IMG_GRP_IMAGE_STATE`), is `rc 8` (`MGMT_ERR_ENOTSUP`). Every answer is a
//! plain `rc` map, never a v2 `err` group error.
//!
//! The image list names the slots that hold a valid image with `slot`, `hash` (with
//! [`SerialRecovery::image_hash`], Zephyr's default) and `version`; no `image` (one image), no
//! `active`, `confirmed`, `pending` or `bootable` (those need the image-state option).
//!
//! An upload erases and writes the primary slot of image 0 (`image` 0; with
//! [`SerialRecovery::direct_image_upload`] `image` 0 or 1 is the primary slot and 2 the secondary
//! one). The `sha` field is ignored, every chunk is answered with `rc` and `off` only (no
//! `match`), a chunk at an unexpected offset is answered with the offset expected, an upload
//! cannot resume after a reset. A reset leaves recovery and boots the application when the
//! primary slot holds a valid image.
//!
//! On the serial line ([`super::serial`]) a console line longer than
//! [`SerialRecovery::max_line_len`] is dropped, a frame must start a line, and a packet (with
//! its length and CRC) larger than [`SerialRecovery::receive_size`] is dropped; one packet is
//! processed at a time (one buffer).

use super::{Outcome, Slot, SmpDevice, State, get, mcuboot, t};
use ciborium::Value;
use std::time::Duration;

/// The serial-recovery build options of the simulated bootloader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialRecovery {
    /// `CONFIG_BOOT_MGMT_ECHO` (Zephyr default: off).
    pub echo: bool,
    /// `CONFIG_BOOT_SERIAL_MCUMGR_PARAMS` (default: off).
    pub mcumgr_params: bool,
    /// `CONFIG_BOOT_SERIAL_DIRECT_IMAGE_UPLOAD` (default: off).
    pub direct_image_upload: bool,
    /// `CONFIG_BOOT_SERIAL_IMG_GRP_HASH` (default: on): the image list carries `hash`.
    pub image_hash: bool,
    /// `CONFIG_BOOT_MAX_LINE_INPUT_LEN` (default 128): the console line buffer, newline included.
    pub max_line_len: usize,
    /// `CONFIG_BOOT_SERIAL_MAX_RECEIVE_SIZE` (default 1024): the decoded packet buffer.
    pub receive_size: usize,
}

impl Default for SerialRecovery {
    fn default() -> Self {
        SerialRecovery {
            echo: false,
            mcumgr_params: false,
            direct_image_upload: false,
            image_hash: true,
            max_line_len: 128,
            receive_size: 1024,
        }
    }
}

const MGMT_EINVAL: i64 = 3;
const MGMT_ENOENT: i64 = 5;
const MGMT_ENOTSUP: i64 = 8;

/// An upload in progress, kept in the bootloader's RAM (lost on reset).
#[derive(Debug)]
pub(super) struct RecoveryUpload {
    slot: usize,
    len: usize,
    data: Vec<u8>,
}

impl SmpDevice {
    /// Whether the device is in serial recovery now (its bootloader answers SMP).
    pub fn in_serial_recovery(&self) -> bool {
        self.state().in_recovery.is_some()
    }

    /// The serial-recovery options in force now; `None` when the application runs.
    pub fn serial_recovery(&self) -> Option<SerialRecovery> {
        self.state().in_recovery.clone()
    }

    /// Reset into serial recovery (as if the recovery button was held at reset), with the
    /// options of [`super::DeviceConfig::serial_recovery`] or Zephyr's defaults.
    pub fn enter_serial_recovery(&self) {
        let mut s = self.state();
        s.boots += 1;
        s.session_live = false;
        s.pending = None;
        s.primary_confirmed = true;
        s.in_recovery = Some(self.config.serial_recovery.clone().unwrap_or_default());
        s.recovery_upload = None;
        s.offline_until = Some(std::time::Instant::now() + self.config.reboot_time);
        s.log.push("reboot into serial recovery".into());
    }

    /// Process one packet as MCUboot's serial recovery does.
    pub(super) fn handle_recovery(
        &self,
        rec: &SerialRecovery,
        op: u8,
        group: u16,
        id: u8,
        body: Option<&[(Value, Value)]>,
        reply: &dyn Fn(Vec<(Value, Value)>) -> Outcome,
    ) -> Outcome {
        let rc = |rc: i64| reply(vec![(t("rc"), Value::from(rc))]);
        match (group, id) {
            (1, 0) if op == 0 => reply(vec![(t("images"), self.recovery_images(rec))]),
            (1, 0) => rc(MGMT_ENOTSUP),
            (1, 1) => match body.map(|b| self.recovery_upload(rec, b)) {
                Some(Ok(off)) => {
                    reply(vec![(t("rc"), Value::from(0)), (t("off"), Value::from(off as u64))])
                }
                Some(Err(code)) => rc(code),
                None => rc(MGMT_EINVAL),
            },
            (0, 0) if rec.echo => match body.and_then(|b| get(b, "d")) {
                Some(Value::Text(d)) => reply(vec![(t("r"), Value::Text(d.clone()))]),
                _ => rc(MGMT_EINVAL),
            },
            (0, 1) => rc(0),
            (0, 5) => {
                let out = rc(0);
                let dev = self.clone();
                std::thread::spawn(move || {
                    // boot_serial waits 250 ms for the answer to leave, then reboots cold.
                    std::thread::sleep(Duration::from_millis(250));
                    let mut s = dev.state();
                    dev.recovery_reset(&mut s);
                });
                out
            }
            (0, 6) if rec.mcumgr_params => reply(vec![
                (t("buf_size"), Value::from(rec.receive_size as u64)),
                (t("buf_count"), Value::from(1)),
            ]),
            _ => rc(MGMT_ENOTSUP),
        }
    }

    pub(super) fn recovery_reset(&self, s: &mut State) {
        s.boots += 1;
        s.session_live = false;
        s.recovery_upload = None;
        s.offline_until = Some(std::time::Instant::now() + self.config.reboot_time);
        let bootable = s.slots[0].as_ref().is_some_and(|sl| sl.info.valid);
        if bootable {
            s.in_recovery = None;
        }
        s.primary_confirmed = true;
        s.pending = None;
        s.log.push(if bootable {
            "reboot (reset command): left serial recovery, application boots".into()
        } else {
            "reboot (reset command): no bootable image, back in serial recovery".into()
        });
    }

    fn recovery_images(&self, rec: &SerialRecovery) -> Value {
        let s = self.state();
        let mut out = Vec::new();
        for (i, slot) in s.slots.iter().enumerate() {
            let Some(slot) = slot.as_ref().filter(|sl| sl.info.valid) else { continue };
            let mut m = vec![(t("slot"), Value::from(i as u64))];
            if rec.image_hash {
                m.push((t("hash"), Value::Bytes(slot.info.hash.to_vec())));
            }
            m.push((t("version"), Value::Text(slot.info.version.to_string())));
            out.push(Value::Map(m));
        }
        Value::Array(out)
    }

    /// The offset to answer, or the `rc` of a refused chunk.
    fn recovery_upload(&self, rec: &SerialRecovery, body: &[(Value, Value)]) -> Result<usize, i64> {
        let fail = Err;
        let uint = |k| match get(body, k) {
            Some(Value::Integer(i)) => u64::try_from(i128::from(*i)).ok().map(|v| v as usize),
            _ => None,
        };
        let (Some(off), Some(Value::Bytes(data))) = (uint("off"), get(body, "data")) else {
            return fail(MGMT_EINVAL);
        };
        let mut s = self.state();
        if off == 0 {
            let image = uint("image").unwrap_or(0);
            let slot = if rec.direct_image_upload {
                match image {
                    0 | 1 => 0,
                    2 => 1,
                    _ => return fail(MGMT_EINVAL),
                }
            } else {
                match image {
                    0 => 0,
                    // One image: image 1 has no flash area; beyond the image count is ENOENT.
                    1 => return fail(MGMT_EINVAL),
                    _ => return fail(MGMT_ENOENT),
                }
            };
            let Some(len) = uint("len").filter(|&l| l <= self.config.slot_size) else {
                return fail(MGMT_EINVAL);
            };
            s.slots[slot] = None;
            s.recovery_upload = Some(RecoveryUpload { slot, len, data: Vec::with_capacity(len) });
            s.log.push(format!("serial recovery: upload of {len} bytes to slot {slot}; erasing"));
            drop(s);
            std::thread::sleep(self.config.erase_time);
            s = self.state();
        }
        let Some(up) = s.recovery_upload.as_mut() else {
            // No upload started since the reset: ask for the start.
            return Ok(0);
        };
        if off != up.data.len() {
            return Ok(up.data.len());
        }
        if off + data.len() > up.len {
            return fail(MGMT_EINVAL);
        }
        up.data.extend_from_slice(data);
        let now = up.data.len();
        let complete = now == up.len;
        drop(s);
        std::thread::sleep(Duration::from_secs_f64(
            data.len() as f64 / self.config.flash_bytes_per_sec.max(1.0),
        ));
        if complete {
            // The upload stays (a repeated chunk is answered with the end); the slot now holds
            // the bytes, listed only when they are a valid image.
            let mut s = self.state();
            let other = self.faults().recovery_lists_other.clone();
            if let Some((slot, data)) = s.recovery_upload.as_ref().map(|u| (u.slot, u.data.clone()))
            {
                let data = other.unwrap_or(data);
                let info = mcuboot::parse(&data);
                s.log.push(match &info {
                    Some(i) => format!("serial recovery: upload complete: version {}", i.version),
                    None => "serial recovery: upload complete, not an MCUboot image".into(),
                });
                s.slots[slot] = info.map(|info| Slot { bytes: data, info });
            }
        }
        Ok(now)
    }
}
