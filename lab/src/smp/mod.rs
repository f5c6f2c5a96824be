//! A simulated Zephyr + MCUboot device with an SMP server, over a pty ([`serial`]) or UDP
//! ([`udp`]).
//!
//! MCUboot semantics: two slots; an upload goes to the secondary slot; `test` marks it pending, the
//! next reset swaps it in for one boot, and the reset after that swaps back unless the running
//! image was confirmed; `confirm` of the secondary marks it permanent. The hash SMP reports is the
//! image's SHA-256 TLV, the version comes from its header ([`mcuboot`]). As in Zephyr, while an
//! image is pending or on its test boot the secondary slot is in use (an upload or erase is refused
//! with "no free slot"), and a state write that would change the next boot is refused then
//! ("already pending"), as is a hash that is not 32 bytes ("invalid hash").
//!
//! Timing is part of the simulation: flash writes cost time at a configured speed, the first chunk
//! erases, a reset takes the device away for a while, and the serial link is paced at its baud rate.
//! Received packets wait in `buf_count` buffers; a packet arriving when all are full is dropped,
//! as on a real device.
//!
//! Uploads survive a reboot: the partial image stays in flash and a first chunk with the same `len`
//! and `sha` is answered with the offset reached, so a client resumes instead of starting over.
//!
//! Identity: a device has a vendor, model, hardware revision and serial number
//! ([`DeviceIdentity`]). Over SMP it answers the OS info command as Zephyr does, one field per
//! format letter (`s n r v m p i o`, `a` for all; no `b`, as Zephyr without the build-date
//! option; an unknown letter is an "invalid format" error): the hardware platform `i` is
//! `MODEL@REVISION` (Zephyr's `BOARD@REVISION`), the node name `n` is the host name, and the
//! release `r` is the running image's version. Vendor and serial number are not part of SMP; a
//! networked lab device tells them in its mDNS TXT record ([`crate::mdns`]).
//!
//! Serial recovery: with [`DeviceConfig::serial_recovery`] the device starts in MCUboot's serial
//! recovery ([`recovery`]) and answers only what the bootloader answers, until a reset boots the
//! application.

pub mod mcuboot;
pub mod recovery;
pub mod serial;
pub mod udp;

use ciborium::Value;
use mcuboot::{ImageInfo, Version};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the simulated device is built.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// SMP receive buffer size reported in the MCUmgr parameters.
    pub buf_size: usize,
    /// Number of receive buffers.
    pub buf_count: usize,
    /// Flash write speed in bytes per second.
    pub flash_bytes_per_sec: f64,
    /// Time to erase the secondary slot (spent on the first upload chunk).
    pub erase_time: Duration,
    /// Time the device is away after a reset.
    pub reboot_time: Duration,
    /// Size of each image slot.
    pub slot_size: usize,
    /// The image in the primary slot at power-on.
    pub initial_image: Vec<u8>,
    /// On serial, print a log line on the console this often (noise between SMP frames, as a
    /// Zephyr application that logs on its mcumgr UART does). A boot banner is printed after every
    /// reboot when this is set.
    pub console_log_every: Option<Duration>,
    /// Who the device is.
    pub identity: DeviceIdentity,
    /// Start in MCUboot serial recovery with these bootloader options (`None`: the application
    /// runs).
    pub serial_recovery: Option<recovery::SerialRecovery>,
}

/// Who a simulated device is: what a real product has in its board definition and factory data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    pub vendor: String,
    /// The board name (Zephyr's `CONFIG_BOARD`): the model.
    pub model: String,
    /// The board revision (Zephyr's `CONFIG_BOARD_REVISION`); empty for none.
    pub hardware_revision: String,
    pub serial_number: String,
    /// The network host name (Zephyr's node name, and the mDNS host); `None`: derived from the
    /// model and serial number, as Zephyr's unique host names are.
    pub hostname: Option<String>,
    /// Zephyr's kernel version (`v`).
    pub kernel_version: String,
    /// The architecture (`m`).
    pub machine: String,
    /// The SoC (`p`).
    pub processor: String,
}

impl Default for DeviceIdentity {
    fn default() -> Self {
        DeviceIdentity {
            vendor: "Lab".into(),
            model: "lab_sensor".into(),
            hardware_revision: "1.0.0".into(),
            serial_number: "LAB-000001".into(),
            hostname: None,
            kernel_version: "3.7.0".into(),
            machine: "arm".into(),
            processor: "nrf52840".into(),
        }
    }
}

impl DeviceIdentity {
    /// The host name: the given one, or `MODEL-SERIAL` in lower case with anything but letters,
    /// digits and `-` turned into `-`.
    pub fn hostname(&self) -> String {
        match &self.hostname {
            Some(h) => h.clone(),
            None => format!("{}-{}", self.model, self.serial_number)
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
                .collect(),
        }
    }

    /// Zephyr's hardware platform: `MODEL@REVISION`, or `MODEL` without a revision.
    pub fn hardware_platform(&self) -> String {
        if self.hardware_revision.is_empty() {
            self.model.clone()
        } else {
            format!("{}@{}", self.model, self.hardware_revision)
        }
    }
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            buf_size: 2048,
            buf_count: 4,
            flash_bytes_per_sec: 512.0 * 1024.0,
            erase_time: Duration::from_millis(200),
            reboot_time: Duration::from_millis(300),
            slot_size: 1024 * 1024,
            initial_image: mcuboot::build_image(
                Version { major: 1, minor: 0, revision: 0, build: 0 },
                &mcuboot::test_payload(4096, 0),
            ),
            console_log_every: None,
            identity: DeviceIdentity::default(),
            serial_recovery: None,
        }
    }
}

/// Faults to inject; change them at any time through [`SmpDevice::faults`].
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Drop every Nth received packet (as if a frame was lost on the line).
    pub drop_rx_every: Option<u32>,
    /// Corrupt every Nth sent packet (one flipped byte on the wire).
    pub corrupt_tx_every: Option<u32>,
    /// Send every Nth answer twice (as a network or a retransmitting link may deliver it).
    pub duplicate_tx_every: Option<u32>,
    /// Hold every Nth answer back and send it after the next one (answers out of order).
    pub reorder_tx_every: Option<u32>,
    /// Go silent for this long once the upload reaches the given offset (then continue).
    pub stall_at: Option<(u64, Duration)>,
    /// Reboot once the upload reaches the given offset (the partial image stays in flash).
    pub reboot_at: Option<u64>,
    /// Lose power right after the test boot of a new image: the device is away for
    /// `reboot_time`, and because the image was not confirmed, MCUboot reverts to the old one.
    pub power_loss_on_test_boot: bool,
    /// The new image fails its health check on its test boot: the application does not come up,
    /// the watchdog resets and MCUboot reverts to the old image.
    pub fail_health_check: bool,
    /// Serial recovery: a completed upload leaves this image in the slot instead of the bytes
    /// received (a bootloader that wrote somewhere else, or a stale image listed).
    pub recovery_lists_other: Option<Vec<u8>>,
    /// The application does not answer SMP at all (only the bootloader's serial recovery does):
    /// it boots and runs, but nothing can ask it what it runs.
    pub application_without_smp: bool,
}

#[derive(Debug, Clone)]
struct Slot {
    bytes: Vec<u8>,
    info: ImageInfo,
}

#[derive(Debug)]
struct Upload {
    len: usize,
    sha: Option<Vec<u8>>,
    data: Vec<u8>,
}

#[derive(Debug)]
struct State {
    slots: [Option<Slot>; 2],
    primary_confirmed: bool,
    /// The secondary slot is marked for swap; `true` when permanent.
    pending: Option<bool>,
    /// Partial upload in flash.
    upload: Option<Upload>,
    /// The upload session lives in RAM and is lost on reboot.
    session_live: bool,
    offline_until: Option<Instant>,
    boots: u32,
    rx_count: u32,
    tx_count: u32,
    /// An answer held back by the reorder fault, sent after the next one.
    held_tx: Option<Vec<u8>>,
    log: Vec<String>,
    /// The bootloader's serial recovery answers instead of the application, with these options.
    in_recovery: Option<recovery::SerialRecovery>,
    recovery_upload: Option<recovery::RecoveryUpload>,
}

impl State {
    /// Zephyr's `img_mgmt_slot_in_use` for the secondary: it holds an image marked for the next
    /// boot (test or permanent), or, during a test boot, the confirmed image MCUboot reverts to.
    /// Neither an upload nor an erase may overwrite it then.
    fn secondary_in_use(&self) -> bool {
        self.pending.is_some() || !self.primary_confirmed
    }
}

/// A simulated SMP device. Clone the handle freely; transports share it.
#[derive(Debug, Clone)]
pub struct SmpDevice {
    config: Arc<DeviceConfig>,
    state: Arc<Mutex<State>>,
    faults: Arc<Mutex<Faults>>,
}

/// One buffer of the device after processing a packet.
#[derive(Debug, Default)]
pub struct Outcome {
    pub reply: Option<Vec<u8>>,
}

const OS: u16 = 0;
const IMAGE: u16 = 1;
const MGMT_EINVAL: i64 = 3;
const MGMT_ENOTSUP: i64 = 8;
// Zephyr's image group codes (`img_mgmt_err_code_t`).
const IMG_HASH_NOT_FOUND: i64 = 8;
const IMG_NO_FREE_SLOT: i64 = 9;
const IMG_INVALID_HASH: i64 = 24;
const IMG_ALREADY_PENDING: i64 = 28;
const IMG_TEST_TO_ACTIVE_DENIED: i64 = 33;

impl SmpDevice {
    pub fn new(config: DeviceConfig) -> SmpDevice {
        let primary = mcuboot::parse(&config.initial_image)
            .map(|info| Slot { bytes: config.initial_image.clone(), info });
        SmpDevice {
            state: Arc::new(Mutex::new(State {
                slots: [primary, None],
                primary_confirmed: true,
                pending: None,
                upload: None,
                session_live: false,
                offline_until: None,
                boots: 1,
                rx_count: 0,
                tx_count: 0,
                held_tx: None,
                log: vec![
                    if config.serial_recovery.is_some() {
                        "boot: serial recovery"
                    } else {
                        "boot: primary image"
                    }
                    .into(),
                ],
                in_recovery: config.serial_recovery.clone(),
                recovery_upload: None,
            })),
            config: Arc::new(config),
            faults: Arc::new(Mutex::new(Faults::default())),
        }
    }

    pub fn config(&self) -> &DeviceConfig {
        &self.config
    }

    /// Who the device is.
    pub fn identity(&self) -> &DeviceIdentity {
        &self.config.identity
    }

    /// The fault settings, shared with the running device.
    pub fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The (hash, version) of the running image.
    pub fn active_image(&self) -> Option<([u8; 32], String)> {
        let s = self.state();
        s.slots[0].as_ref().map(|sl| (sl.info.hash, sl.info.version.to_string()))
    }

    /// Whether the running image is confirmed.
    pub fn active_confirmed(&self) -> bool {
        self.state().primary_confirmed
    }

    /// The bytes of the image in `slot` (0 primary, 1 secondary).
    pub fn slot_bytes(&self, slot: usize) -> Option<Vec<u8>> {
        self.state().slots.get(slot)?.as_ref().map(|s| s.bytes.clone())
    }

    /// How many times the device has booted.
    pub fn boots(&self) -> u32 {
        self.state().boots
    }

    /// What happened, for test failure messages.
    pub fn log(&self) -> Vec<String> {
        self.state().log.clone()
    }

    /// Power-cycle the device now (as if its power was cut and restored).
    pub fn power_cycle(&self) {
        let faults = self.faults().clone();
        let mut s = self.state();
        if s.in_recovery.is_some() {
            self.recovery_reset(&mut s);
            return;
        }
        self.boot(&mut s, &faults, "power cycle");
    }

    /// Whether an arriving packet is accepted into a buffer (false: dropped by a fault, or the
    /// device is rebooting).
    pub fn accept_rx(&self) -> bool {
        let mut s = self.state();
        if s.offline_until.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        s.rx_count += 1;
        let n = s.rx_count;
        drop(s);
        !self.faults().drop_rx_every.is_some_and(|every| every > 0 && n.is_multiple_of(every))
    }

    /// Apply the transmit faults to one outgoing answer (its wire bytes): the frames to send
    /// now, in order. Corrupted (one byte changed), sent twice, or held back and sent after the
    /// next answer.
    pub fn outgoing(&self, mut wire: Vec<u8>) -> Vec<Vec<u8>> {
        let n = {
            let mut s = self.state();
            s.tx_count += 1;
            s.tx_count
        };
        // One lock at a time (the state's and the faults' are never held together here).
        let (corrupt, duplicate, reorder) = {
            let f = self.faults();
            let hit = |every: Option<u32>| every.is_some_and(|e| e > 0 && n.is_multiple_of(e));
            (hit(f.corrupt_tx_every), hit(f.duplicate_tx_every), hit(f.reorder_tx_every))
        };
        let mut s = self.state();
        if corrupt && !wire.is_empty() {
            let at = wire.len() / 2;
            // Keep line structure intact on serial (never create or destroy a newline).
            wire[at] = if wire[at] == b'A' { b'B' } else { b'A' };
        }
        if reorder && s.held_tx.is_none() {
            s.held_tx = Some(wire);
            return Vec::new();
        }
        let held = s.held_tx.take();
        let mut out = vec![wire.clone()];
        if duplicate {
            out.push(wire);
        }
        out.extend(held);
        out
    }

    /// Process one SMP packet from a buffer. Sleeps for simulated flash time.
    pub fn handle(&self, packet: &[u8]) -> Outcome {
        if self.state().offline_until.is_some_and(|t| Instant::now() < t) {
            return Outcome::default();
        }
        if packet.len() < 8 {
            return Outcome::default();
        }
        let op = packet[0] & 7;
        let version = (packet[0] >> 3) & 3;
        let group = u16::from_be_bytes([packet[4], packet[5]]);
        let seq = packet[6];
        let id = packet[7];
        let len = u16::from_be_bytes([packet[2], packet[3]]) as usize;
        if op != 0 && op != 2 {
            return Outcome::default();
        }
        let reply = |body: Vec<(Value, Value)>| {
            let mut b = Vec::new();
            let _ = ciborium::into_writer(&Value::Map(body), &mut b);
            let mut out = vec![
                (op + 1) | (version << 3),
                0,
                (b.len() >> 8) as u8,
                b.len() as u8,
                packet[4],
                packet[5],
                seq,
                id,
            ];
            out.extend(b);
            Outcome { reply: Some(out) }
        };
        let rc = |rc: i64| reply(vec![(t("rc"), Value::from(rc))]);
        let recovery = self.state().in_recovery.clone();
        if let Some(rec) = &recovery {
            // boot_serial: a body shorter than the header says is dropped; CBOR it cannot decode
            // is an invalid request.
            if packet.len() < 8 + len {
                return Outcome::default();
            }
            let body = match ciborium::from_reader::<Value, _>(&packet[8..8 + len]) {
                Ok(Value::Map(m)) => Some(m),
                _ => None,
            };
            return self.handle_recovery(rec, op, group, id, body.as_deref(), &reply);
        }
        if self.faults().application_without_smp {
            return Outcome::default();
        }
        if packet.len() != 8 + len {
            return rc(MGMT_EINVAL);
        }
        let body: Vec<(Value, Value)> = if len == 0 {
            Vec::new()
        } else {
            match ciborium::from_reader::<Value, _>(&packet[8..]) {
                Ok(Value::Map(m)) => m,
                _ => return rc(MGMT_EINVAL),
            }
        };
        let write = op == 2;
        match (group, id, write) {
            // Zephyr answers echo as a read and as a write (`os_mgmt_echo` is both handlers).
            (OS, 0, _) => match get(&body, "d") {
                Some(Value::Text(d)) => reply(vec![(t("r"), Value::Text(d.clone()))]),
                _ => rc(MGMT_EINVAL),
            },
            (OS, 5, true) => {
                let out = reply(vec![]);
                self.schedule_reset();
                out
            }
            (OS, 6, false) => reply(vec![
                (t("buf_size"), Value::from(self.config.buf_size as u64)),
                (t("buf_count"), Value::from(self.config.buf_count as u64)),
            ]),
            (OS, 7, false) => match self.os_info(&body) {
                Some(output) => reply(vec![(t("output"), Value::Text(output))]),
                // Zephyr: OS_MGMT_ERR_INVALID_FORMAT in the OS group (v2), EINVAL (v1).
                None if version >= 1 => reply(vec![(
                    t("err"),
                    Value::Map(vec![(t("group"), Value::from(OS)), (t("rc"), Value::from(2))]),
                )]),
                None => rc(MGMT_EINVAL),
            },
            (IMAGE, 0, false) => reply(vec![(t("images"), self.images())]),
            (IMAGE, 0, true) => match self.state_write(&body) {
                Ok(()) => reply(vec![(t("images"), self.images())]),
                Err(e) => e.into_reply(version, reply),
            },
            (IMAGE, 1, true) => match self.upload(&body) {
                Ok(Some(fields)) => reply(fields),
                Ok(None) => Outcome::default(),
                Err(e) => e.into_reply(version, reply),
            },
            (IMAGE, 5, true) => {
                let mut s = self.state();
                if s.secondary_in_use() {
                    drop(s);
                    return ImgErr(IMG_NO_FREE_SLOT).into_reply(version, reply);
                }
                s.slots[1] = None;
                s.upload = None;
                s.session_live = false;
                drop(s);
                std::thread::sleep(self.config.erase_time);
                reply(vec![])
            }
            _ => rc(MGMT_ENOTSUP),
        }
    }

    /// The OS info answer for the request's `format`, as Zephyr builds it: the fields of the
    /// letters given, in Zephyr's order, separated by spaces; `None` for an unknown letter.
    fn os_info(&self, body: &[(Value, Value)]) -> Option<String> {
        let format = match get(body, "format") {
            Some(Value::Text(f)) => f.clone(),
            _ => String::new(),
        };
        let order = ['s', 'n', 'r', 'v', 'm', 'p', 'i', 'o'];
        let mut wanted = Vec::new();
        for c in format.chars() {
            match c {
                'a' => wanted.extend(order),
                c if order.contains(&c) => wanted.push(c),
                _ => return None,
            }
        }
        if wanted.is_empty() {
            wanted.push('s');
        }
        let id = &self.config.identity;
        let release = self.active_image().map(|(_, v)| v).unwrap_or_else(|| "unknown".into());
        let fields: Vec<String> = order
            .iter()
            .filter(|c| wanted.contains(c))
            .map(|c| match c {
                's' | 'o' => "Zephyr".to_string(),
                'n' => id.hostname(),
                'r' => release.clone(),
                'v' => id.kernel_version.clone(),
                'm' => id.machine.clone(),
                'p' => id.processor.clone(),
                _ => id.hardware_platform(),
            })
            .collect();
        Some(fields.join(" "))
    }

    fn images(&self) -> Value {
        let s = self.state();
        let mut out = Vec::new();
        for (i, slot) in s.slots.iter().enumerate() {
            let Some(slot) = slot else { continue };
            let mut m = vec![
                (t("image"), Value::from(0)),
                (t("slot"), Value::from(i as u64)),
                (t("version"), Value::Text(slot.info.version.to_string())),
                (t("hash"), Value::Bytes(slot.info.hash.to_vec())),
                (t("bootable"), Value::Bool(slot.info.valid)),
            ];
            let (pending, confirmed, active, permanent) = if i == 0 {
                (false, s.primary_confirmed, true, false)
            } else {
                // While a test image runs, the secondary holds the image MCUboot reverts to.
                (s.pending.is_some(), !s.primary_confirmed, false, s.pending == Some(true))
            };
            for (k, v) in [
                ("pending", pending),
                ("confirmed", confirmed),
                ("active", active),
                ("permanent", permanent),
            ] {
                if v {
                    m.push((t(k), Value::Bool(true)));
                }
            }
            out.push(Value::Map(m));
        }
        Value::Array(out)
    }

    /// Zephyr's image state write for one image in swap mode (`img_mgmt_state_write` and
    /// `img_mgmt_set_next_boot_slot`): the slot is found by its full hash (none: the running one,
    /// to confirm), then judged by what the next boot is: a pending test allows only the same
    /// test again, a pending permanent swap allows nothing else, and a test boot allows only
    /// confirming the running image (the fallback is already what the next reset boots).
    fn state_write(&self, body: &[(Value, Value)]) -> Result<(), ImgErr> {
        let confirm = matches!(get(body, "confirm"), Some(Value::Bool(true)));
        let hash = match get(body, "hash") {
            Some(Value::Bytes(h)) if h.len() == 32 => Some(h.clone()),
            Some(Value::Bytes(h)) if h.is_empty() => None,
            Some(Value::Bytes(_)) => return Err(ImgErr(IMG_INVALID_HASH)),
            None => None,
            Some(_) => return Err(ImgErr(-MGMT_EINVAL)),
        };
        let mut s = self.state();
        let is = |slot: &Option<Slot>, h: &[u8]| slot.as_ref().is_some_and(|sl| sl.info.hash == h);
        let slot = match hash {
            None if confirm => 0,
            // A test without a hash.
            None => return Err(ImgErr(IMG_INVALID_HASH)),
            Some(h) if is(&s.slots[0], &h) => 0,
            Some(h) if is(&s.slots[1], &h) => 1,
            Some(_) => return Err(ImgErr(IMG_HASH_NOT_FOUND)),
        };
        if !confirm && slot == 0 {
            return Err(ImgErr(IMG_TEST_TO_ACTIVE_DENIED));
        }
        match (s.pending, s.primary_confirmed) {
            // A test of the secondary is pending: testing it again changes nothing.
            (Some(false), _) if !confirm && slot == 1 => return Ok(()),
            (Some(false), _) => return Err(ImgErr(IMG_ALREADY_PENDING)),
            // A permanent swap is pending: confirming it again changes nothing.
            (Some(true), _) if confirm && slot == 1 => return Ok(()),
            (Some(true), _) => return Err(ImgErr(IMG_ALREADY_PENDING)),
            // A test boot: the next reset reverts to the confirmed secondary anyway.
            (None, false) if confirm && slot == 1 => return Ok(()),
            (None, false) if !confirm => return Err(ImgErr(IMG_ALREADY_PENDING)),
            _ => {}
        }
        if slot == 0 {
            s.primary_confirmed = true;
            s.log.push("confirmed the running image".into());
            return Ok(());
        }
        if !s.slots[1].as_ref().is_some_and(|sl| sl.info.valid) {
            return Err(ImgErr(IMG_INVALID_HASH));
        }
        s.pending = Some(confirm);
        s.log.push(format!("secondary marked {}", if confirm { "permanent" } else { "test" }));
        Ok(())
    }

    fn upload(&self, body: &[(Value, Value)]) -> Result<Option<Vec<(Value, Value)>>, ImgErr> {
        let uint = |k| match get(body, k) {
            Some(Value::Integer(i)) => u64::try_from(i128::from(*i)).ok(),
            _ => None,
        };
        let off = uint("off").ok_or(ImgErr(-MGMT_EINVAL))? as usize;
        let Some(Value::Bytes(data)) = get(body, "data") else {
            return Err(ImgErr(-MGMT_EINVAL));
        };
        let off_reply = |off: usize| vec![(t("off"), Value::from(off as u64))];
        let mut s = self.state();
        if off == 0 {
            let len = uint("len").ok_or(ImgErr(21))? as usize;
            if s.secondary_in_use() {
                return Err(ImgErr(IMG_NO_FREE_SLOT));
            }
            if len > self.config.slot_size {
                return Err(ImgErr(30));
            }
            let sha = match get(body, "sha") {
                Some(Value::Bytes(b)) => Some(b.clone()),
                _ => None,
            };
            if let Some(at) = s
                .upload
                .as_ref()
                .filter(|up| sha.is_some() && up.sha == sha && up.len == len)
                .map(|up| up.data.len())
                .filter(|&at| at > 0)
            {
                s.session_live = true;
                s.log.push(format!("upload resumed at {at}"));
                return Ok(Some(off_reply(at)));
            }
            if data.len() >= 4 && data[..4] != mcuboot::IMAGE_MAGIC.to_le_bytes() {
                return Err(ImgErr(23));
            }
            if matches!(get(body, "upgrade"), Some(Value::Bool(true)))
                && let (Some(new), Some(cur)) =
                    (mcuboot::header_version(data), s.slots[0].as_ref().map(|sl| sl.info.version))
                && new <= cur
            {
                return Err(ImgErr(27));
            }
            if data.len() > len {
                return Err(ImgErr(31));
            }
            s.slots[1] = None;
            s.upload = Some(Upload { len, sha, data: Vec::with_capacity(len) });
            s.session_live = true;
            s.log.push(format!("upload started, {len} bytes; erasing"));
            drop(s);
            std::thread::sleep(self.config.erase_time);
            s = self.state();
        } else if !s.session_live || s.upload.is_none() {
            // No session (for example after a reboot): ask for the start, which carries `sha`.
            return Ok(Some(off_reply(0)));
        }
        let up = s.upload.as_mut().ok_or(ImgErr(-MGMT_EINVAL))?;
        if off != up.data.len() {
            let at = up.data.len();
            return Ok(Some(off_reply(at)));
        }
        if off + data.len() > up.len {
            return Err(ImgErr(31));
        }
        let before = up.data.len() as u64;
        up.data.extend_from_slice(data);
        let now = up.data.len() as u64;
        let complete = up.data.len() == up.len;
        drop(s);
        std::thread::sleep(Duration::from_secs_f64(
            data.len() as f64 / self.config.flash_bytes_per_sec.max(1.0),
        ));
        let mut faults = self.faults();
        if let Some(at) = faults.reboot_at
            && before < at
            && now >= at
        {
            faults.reboot_at = None;
            let f = faults.clone();
            drop(faults);
            let mut s = self.state();
            self.boot(&mut s, &f, "fault: reboot mid-upload");
            return Ok(None);
        }
        if let Some((at, stall)) = faults.stall_at
            && before < at
            && now >= at
        {
            faults.stall_at = None;
            drop(faults);
            let mut s = self.state();
            s.log.push(format!("fault: stall for {stall:?}"));
            s.offline_until = Some(Instant::now() + stall);
            return Ok(None);
        }
        drop(faults);
        let mut s = self.state();
        if !complete {
            return Ok(Some(off_reply(now as usize)));
        }
        let up = s.upload.take().ok_or(ImgErr(-MGMT_EINVAL))?;
        s.session_live = false;
        let mut fields = off_reply(up.len);
        if let Some(sha) = &up.sha {
            let ok = Sha256::digest(&up.data).as_slice() == sha.as_slice();
            fields.push((t("match"), Value::Bool(ok)));
            if !ok {
                s.log.push("upload complete but sha mismatch; discarded".into());
                return Ok(Some(fields));
            }
        }
        match mcuboot::parse(&up.data) {
            Some(info) => {
                s.log.push(format!("upload complete: version {}", info.version));
                s.slots[1] = Some(Slot { bytes: up.data, info });
                Ok(Some(fields))
            }
            None => {
                s.log.push("upload complete but not a valid MCUboot image".into());
                Err(ImgErr(5))
            }
        }
    }

    fn schedule_reset(&self) {
        // Answer first, then reset: the transport sends the reply before the device goes away.
        let dev = self.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let faults = dev.faults().clone();
            let mut s = dev.state();
            dev.boot(&mut s, &faults, "reset command");
        });
    }

    fn boot(&self, s: &mut State, faults: &Faults, why: &str) {
        s.boots += 1;
        s.session_live = false;
        s.offline_until = Some(Instant::now() + self.config.reboot_time);
        s.log.push(format!("reboot ({why})"));
        if let Some(permanent) = s.pending.take() {
            s.slots.swap(0, 1);
            s.upload = None;
            if permanent {
                s.primary_confirmed = true;
                s.log.push("swapped in the new image permanently".into());
                return;
            }
            s.primary_confirmed = false;
            s.log.push("test boot of the new image".into());
            if faults.fail_health_check {
                s.log.push("new image failed its health check; watchdog reset; reverted".into());
                s.slots.swap(0, 1);
                s.primary_confirmed = true;
                s.boots += 2;
            } else if faults.power_loss_on_test_boot {
                s.log.push("power lost during the test boot; reverted on power-up".into());
                s.slots.swap(0, 1);
                s.primary_confirmed = true;
                s.boots += 1;
                s.offline_until = Some(Instant::now() + self.config.reboot_time * 3);
            }
        } else if !s.primary_confirmed {
            s.slots.swap(0, 1);
            s.primary_confirmed = true;
            s.log.push("test image was not confirmed: reverted".into());
        }
    }
}

/// An image-group error, answered as `err: {group: 1, rc}` to v2 requests and `rc` to v1.
/// Negative values are generic MCUmgr codes (always `rc`).
#[derive(Debug)]
struct ImgErr(i64);

impl ImgErr {
    fn into_reply(self, version: u8, reply: impl Fn(Vec<(Value, Value)>) -> Outcome) -> Outcome {
        if self.0 < 0 {
            return reply(vec![(t("rc"), Value::from(-self.0))]);
        }
        if version >= 1 {
            reply(vec![(
                t("err"),
                Value::Map(vec![(t("group"), Value::from(IMAGE)), (t("rc"), Value::from(self.0))]),
            )])
        } else {
            // SMP v1 has no group errors; MCUmgr maps them to a generic code.
            reply(vec![(t("rc"), Value::from(1))])
        }
    }
}

fn t(s: &str) -> Value {
    Value::Text(s.to_string())
}

fn get<'a>(map: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    map.iter().find(|(k, _)| k.as_text() == Some(key)).map(|(_, v)| v)
}

/// Paces bytes at a link rate: call [`Pacer::consume`] after moving `n` bytes.
#[derive(Debug)]
pub struct Pacer {
    bytes_per_sec: f64,
    next_free: Instant,
}

impl Pacer {
    pub fn new(bytes_per_sec: f64) -> Pacer {
        Pacer { bytes_per_sec, next_free: Instant::now() }
    }

    /// Account for `n` bytes on the line and sleep until they would have been transmitted.
    pub fn consume(&mut self, n: usize) {
        // A line that was idle gains no credit, but a thread that woke up late (the bytes were
        // already waiting) may catch up: up to 10 ms of lag is carried over.
        let now = Instant::now();
        let max_lag = Duration::from_millis(10);
        if self.next_free + max_lag < now {
            self.next_free = now - max_lag;
        }
        self.next_free += Duration::from_secs_f64(n as f64 / self.bytes_per_sec);
        let wait = self.next_free.saturating_duration_since(Instant::now());
        if wait > Duration::from_micros(200) {
            std::thread::sleep(wait);
        }
    }
}
