//! A simulated ESP32 in its ROM serial bootloader ("download mode"), speaking the ROM's SLIP
//! protocol the way esptool `--no-stub` expects it, on a real pty ([`serial`]).
//!
//! What it models:
//! - the ROM's command set: SYNC (answered eight times), READ_REG / WRITE_REG over a register
//!   file holding the chip-detect magic word, eFuse words (MAC, package, revision), the UART
//!   divisor and the RTC calibration esptool reads, and the SPI controller's user-command
//!   registers (RDID answers the flash's JEDEC id, which is how esptool sizes the flash);
//!   SPI_ATTACH, SPI_SET_PARAMS, FLASH_BEGIN (erases whole 4 KiB sectors), FLASH_DATA (checks the
//!   XOR checksum, writes like NOR flash: bits only go from 1 to 0, reads back and compares),
//!   FLASH_END (leaves the loader: runs the application), SPI_FLASH_MD5 (32 lowercase hex digits),
//!   READ_FLASH_SLOW, CHANGE_BAUDRATE (on a pty the rate is nominal: answered at the old rate,
//!   then the pacing, if any, follows the new one), MEM_BEGIN/DATA/END (accepted; running RAM
//!   code, such as esptool's flasher stub, leaves the loader, so clients must use `--no-stub`);
//!   anything else is refused with the ESP32 ROM's "invalid message" (0x05), as is
//!   GET_SECURITY_INFO, which the ESP32's ROM does not have;
//! - four status bytes (status, error, two reserved), as the ESP32 ROM sends;
//! - a flash of a set size, in memory or written through to a file;
//! - the SPI controller's user commands as a NOR flash answers them:
//!   RDID, the status registers, READ (0x03) and FAST_READ (0x0B) with a 24-bit address (in the
//!   top bits of SPI_ADDR, as on the ESP32) into W0..W15, up to 64 bytes, and the SFDP table
//!   (0x5A); a command whose address or dummy phase does not fit it reads as the idle line;
//! - faults ([`EspFaults`]): dropped frames, blocks that arrive with a bad checksum, a flash that
//!   fails to keep a block (error 0x08) or silently keeps it corrupted, a stall, and an
//!   application that crashes at boot;
//! - the reset into the application ([`EspDevice::boot_app`], simulated by [`boot`]): the ROM,
//!   ESP-IDF's second-stage bootloader (partition table, OTA data, slot choice, image check,
//!   rollback when enabled) and the application's start, printed as ESP-IDF's boot log.
//!
//! A pty has no DTR/RTS, so the resets are [`EspDevice::enter_download_mode`] (what a technician
//! does with the BOOT and EN buttons) and [`EspDevice::boot_app`]; [`serial::WiredPort`] is a
//! port whose DTR/RTS drive EN and GPIO0 of the module through the classic auto-reset circuit.

pub mod boot;
pub mod serial;

use fieldpatch_drivers::esp::chip::{
    CHIP_DETECT_MAGIC_REG, Chip, ESP32_EFUSE_RD_BASE, ESP32_RTCCALICFG1,
};
use fieldpatch_drivers::esp::protocol::{self, Command, rom_error};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

/// ESP32 SPI0/1 controller registers (user commands run through them).
const SPI_REG_BASE: u32 = 0x3FF4_2000;
const SPI_CMD_REG: u32 = SPI_REG_BASE;
const SPI_ADDR_REG: u32 = SPI_REG_BASE + 0x04;
const SPI_USR_REG: u32 = SPI_REG_BASE + 0x1C;
const SPI_USR1_REG: u32 = SPI_REG_BASE + 0x20;
const SPI_USR2_REG: u32 = SPI_REG_BASE + 0x24;
const SPI_MISO_DLEN_REG: u32 = SPI_REG_BASE + 0x2C;
const SPI_W0_REG: u32 = SPI_REG_BASE + 0x80;
const SPI_CMD_USR: u32 = 1 << 18;
/// SPI_USR: which phases a user command has.
const USR_ADDR: u32 = 1 << 30;
const USR_DUMMY: u32 = 1 << 29;
const USR_MISO: u32 = 1 << 28;
/// The data registers W0..W15.
const SPI_DATA_BYTES: usize = 64;
/// UART0 clock divisor (esptool estimates the crystal from it and the baud rate).
const UART_CLKDIV_REG: u32 = 0x3FF4_0014;
/// APB_CTL_DATE (its top bit is part of the chip revision).
const APB_CTL_DATE_ADDR: u32 = 0x3FF6_607C;
/// The crystal of the simulated module.
const XTAL_HZ: u64 = 40_000_000;
/// JEDEC manufacturer id of the simulated flash (Winbond) and its memory type.
const FLASH_VENDOR: u32 = 0xEF;
const FLASH_TYPE: u32 = 0x40;
/// What the ROM's SYNC answers carry in their value field.
const SYNC_VALUE: u32 = 0x2012_0707;

/// The simulated module.
#[derive(Debug, Clone)]
pub struct EspConfig {
    /// Flash size in bytes (a power of two, 256 KiB to 16 MiB).
    pub flash_size: u32,
    /// The base MAC address burnt into eFuse.
    pub mac: [u8; 6],
    /// Keep the flash in this file (created filled with 0xFF when missing or of another size).
    pub flash_file: Option<PathBuf>,
    /// Pace the pty at the current baud rate (8N1), as a real UART would.
    pub paced: bool,
    /// The second-stage bootloader in flash was built with application rollback
    /// (`CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE`): see [`boot`].
    pub rollback: bool,
}

impl Default for EspConfig {
    fn default() -> Self {
        EspConfig {
            flash_size: 4 * 1024 * 1024,
            mac: [0x24, 0x0A, 0xC4, 0x12, 0x34, 0x56],
            flash_file: None,
            paced: false,
            rollback: false,
        }
    }
}

/// Faults to inject; all off by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EspFaults {
    /// Lose this many incoming frames (as if the line dropped them), starting with the
    /// FLASH_DATA of sequence number `drop_at_seq`, or with the next frame of any kind.
    pub drop_frames: u32,
    pub drop_at_seq: Option<u32>,
    /// Answer this many FLASH_DATA blocks, starting at sequence `bad_checksum_at_seq`, with the
    /// checksum error (0x07), as if the line corrupted them.
    pub bad_checksum_blocks: u32,
    pub bad_checksum_at_seq: u32,
    /// The flash never keeps the block with this sequence number: FLASH_DATA answers 0x08.
    pub flash_write_fail_at_seq: Option<u32>,
    /// The flash keeps the block with this sequence number with one bit flipped and the ROM
    /// does not notice (only an MD5 check does).
    pub corrupt_at_seq: Option<u32>,
    /// Answer this many more commands, then nothing at all.
    pub stall_after: Option<u32>,
    /// An application whose descriptor reports this version panics at boot (and the chip
    /// reboots), see [`boot`].
    pub crash_version: Option<String>,
}

/// What the device does with the line after a frame.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Response packets (not yet SLIP-framed), in order.
    pub replies: Vec<Vec<u8>>,
    /// Bytes to put on the line after the replies (console text).
    pub text: Vec<u8>,
    /// The line's new baud rate, effective after the replies.
    pub baud_after: Option<u32>,
}

#[derive(Debug)]
struct Download {
    offset: u32,
    block_size: u32,
}

#[derive(Debug)]
struct State {
    config: EspConfig,
    faults: EspFaults,
    flash: Vec<u8>,
    regs: HashMap<u32, u32>,
    in_loader: bool,
    /// EN held low: the chip is in reset and answers nothing.
    held: bool,
    /// The flash offset of the application running since the last reset into it.
    running: Option<u32>,
    download: Option<Download>,
    params_size: Option<u32>,
    baud: u32,
    boots: u32,
    commands: Vec<Command>,
    flash_data_frames: u64,
    dropped: u64,
    stalled: bool,
}

/// The simulated device; clones share it.
#[derive(Debug, Clone)]
pub struct EspDevice {
    state: Arc<Mutex<State>>,
}

/// Errors setting up the device.
#[derive(Debug, thiserror::Error)]
pub enum EspLabError {
    #[error("flash size {0} is not a power of two between 256 KiB and 16 MiB")]
    FlashSize(u32),
    #[error("cannot use the flash file {path}: {source}")]
    FlashFile { path: PathBuf, source: std::io::Error },
}

impl EspDevice {
    /// A module in download mode with erased flash (or the flash file's contents).
    pub fn new(config: EspConfig) -> Result<EspDevice, EspLabError> {
        let size = config.flash_size;
        if !size.is_power_of_two() || !(256 * 1024..=16 * 1024 * 1024).contains(&size) {
            return Err(EspLabError::FlashSize(size));
        }
        let mut flash = vec![0xFF; size as usize];
        if let Some(path) = &config.flash_file {
            let err = |source| EspLabError::FlashFile { path: path.clone(), source };
            match std::fs::read(path) {
                Ok(bytes) if bytes.len() == flash.len() => flash = bytes,
                Ok(_) => std::fs::write(path, &flash).map_err(err)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::write(path, &flash).map_err(err)?
                }
                Err(e) => return Err(err(e)),
            }
        }
        let mut regs = HashMap::new();
        regs.insert(CHIP_DETECT_MAGIC_REG, Chip::Esp32.magic().unwrap_or_default());
        let m = config.mac;
        // eFuse BLK0: word 1 and 2 hold the MAC (word 2's top byte pair is its CRC).
        regs.insert(ESP32_EFUSE_RD_BASE + 4, u32::from_be_bytes([m[2], m[3], m[4], m[5]]));
        let crc = mac_crc8(&m);
        regs.insert(ESP32_EFUSE_RD_BASE + 8, u32::from_be_bytes([0, crc, m[0], m[1]]));
        // Word 3: package ESP32-D0WD (1), revision bit 0; word 5: revision bit 1, minor 1.
        regs.insert(ESP32_EFUSE_RD_BASE + 12, (1 << 9) | (1 << 15));
        regs.insert(ESP32_EFUSE_RD_BASE + 20, (1 << 20) | (1 << 24));
        regs.insert(APB_CTL_DATE_ADDR, 1 << 31);
        // The 8 MHz clock calibration: with these the ROM's idea of the crystal is 40 MHz.
        regs.insert(ESP32_EFUSE_RD_BASE + 16, 128);
        regs.insert(ESP32_RTCCALICFG1, 800 << 7);
        regs.insert(UART_CLKDIV_REG, (XTAL_HZ / 115_200) as u32);
        let state = State {
            config,
            faults: EspFaults::default(),
            flash,
            regs,
            in_loader: true,
            held: false,
            running: None,
            download: None,
            params_size: None,
            baud: 115_200,
            boots: 0,
            commands: Vec::new(),
            flash_data_frames: 0,
            dropped: 0,
            stalled: false,
        };
        Ok(EspDevice { state: Arc::new(Mutex::new(state)) })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Set the faults to inject from now on.
    pub fn set_faults(&self, faults: EspFaults) {
        let mut s = self.lock();
        s.faults = faults;
        s.stalled = false;
    }

    /// `len` bytes of flash at `offset` (clipped to the flash).
    pub fn flash(&self, offset: u32, len: usize) -> Vec<u8> {
        let s = self.lock();
        let start = (offset as usize).min(s.flash.len());
        let end = start.saturating_add(len).min(s.flash.len());
        s.flash[start..end].to_vec()
    }

    /// Put bytes into flash directly (a module that left the factory with firmware).
    pub fn preload(&self, offset: u32, bytes: &[u8]) {
        let mut s = self.lock();
        let start = (offset as usize).min(s.flash.len());
        let end = start.saturating_add(bytes.len()).min(s.flash.len());
        let n = end - start;
        s.flash[start..end].copy_from_slice(&bytes[..n]);
        persist(&s, start, end);
    }

    /// Whether the ROM loader is running (not the application).
    pub fn in_loader(&self) -> bool {
        self.lock().in_loader
    }

    /// How often the device left the loader for its application.
    pub fn boots(&self) -> u32 {
        self.lock().boots
    }

    /// The commands answered so far, in order (SYNC once per exchange).
    pub fn commands(&self) -> Vec<Command> {
        self.lock().commands.clone()
    }

    /// FLASH_DATA frames received (dropped ones not counted).
    pub fn flash_data_frames(&self) -> u64 {
        self.lock().flash_data_frames
    }

    /// Frames the drop fault lost.
    pub fn dropped_frames(&self) -> u64 {
        self.lock().dropped
    }

    /// The line's current (nominal) baud rate.
    pub fn baud(&self) -> u32 {
        self.lock().baud
    }

    /// The flash offset of the application the last reset into it left running (`None`: in the
    /// loader, or no application runs).
    pub fn running(&self) -> Option<u32> {
        self.lock().running
    }

    /// Hold the chip in reset (EN low): it answers nothing until [`Self::release`].
    pub fn hold(&self) {
        let mut s = self.lock();
        s.held = true;
        s.in_loader = false;
        s.running = None;
    }

    /// Release EN: the chip starts in download mode when GPIO0 is held low, else from flash
    /// ([`Self::boot_app`]). Returns what it prints.
    pub fn release(&self, gpio0_low: bool) -> Vec<u8> {
        self.lock().held = false;
        if gpio0_low { self.enter_download_mode() } else { self.boot_app() }
    }

    /// Start from flash, as a reset with GPIO0 high does: the ROM, the second-stage bootloader
    /// and the application as [`boot`] simulates them, at 115200 baud. Returns the boot log.
    pub fn boot_app(&self) -> Vec<u8> {
        let mut s = self.lock();
        s.in_loader = false;
        s.held = false;
        s.download = None;
        s.params_size = None;
        s.baud = 115_200;
        s.regs.insert(UART_CLKDIV_REG, (XTAL_HZ / 115_200) as u32);
        s.boots += 1;
        let rollback = s.config.rollback;
        let crash = s.faults.crash_version.clone();
        let run = boot::boot(&mut s.flash, rollback, crash.as_deref());
        for &(start, end) in &run.writes {
            persist(&s, start, end);
        }
        s.running = run.running;
        run.text
    }

    /// Reset into download mode, as holding BOOT and pressing EN does: the loader runs at
    /// 115200 baud again and any download in progress is forgotten. Returns the ROM's banner.
    pub fn enter_download_mode(&self) -> Vec<u8> {
        let mut s = self.lock();
        s.in_loader = true;
        s.held = false;
        s.running = None;
        s.download = None;
        s.params_size = None;
        s.baud = 115_200;
        s.regs.insert(UART_CLKDIV_REG, (XTAL_HZ / 115_200) as u32);
        s.stalled = false;
        rom_banner()
    }

    /// Handle one decoded SLIP frame.
    pub fn handle(&self, frame: &[u8]) -> Outcome {
        let mut s = self.lock();
        let mut out = Outcome::default();
        if !s.in_loader || s.held || s.stalled {
            return out;
        }
        let Ok(req) = protocol::parse_request(frame) else {
            // A frame the ROM cannot parse: refused with "invalid message" when it has an
            // opcode, ignored when it is not even a request.
            if frame.len() >= 2 && frame[0] == 0 {
                out.replies.push(status_reply(frame[1], 0, Some(rom_error::INVALID_MESSAGE)));
            }
            return out;
        };
        // The drop fault: the frame never arrived.
        if s.faults.drop_frames > 0 {
            let seq = flash_data_seq(&req);
            let armed = match s.faults.drop_at_seq {
                None => true,
                Some(at) => seq == Some(at),
            };
            if armed {
                s.faults.drop_frames -= 1;
                s.faults.drop_at_seq = None;
                s.dropped += 1;
                return out;
            }
        }
        if let Some(left) = s.faults.stall_after {
            if left == 0 {
                s.stalled = true;
                return out;
            }
            s.faults.stall_after = Some(left - 1);
        }
        let Some(cmd) = Command::from_op(req.op) else {
            out.replies.push(status_reply(req.op, 0, Some(rom_error::INVALID_MESSAGE)));
            return out;
        };
        s.commands.push(cmd);
        s.run(cmd, &req, &mut out);
        out
    }
}

fn flash_data_seq(req: &protocol::Request) -> Option<u32> {
    (req.op == Command::FlashData.op() && req.data.len() >= 8).then(|| word(&req.data, 1))
}

fn word(data: &[u8], i: usize) -> u32 {
    let b = &data[i * 4..i * 4 + 4];
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// A response with the ESP32 ROM's four status bytes (`error` None for success).
fn status_reply(op: u8, value: u32, error: Option<u8>) -> Vec<u8> {
    let st = match error {
        None => [0, 0, 0, 0],
        Some(code) => [1, code, 0, 0],
    };
    protocol::encode_response(op, value, &st)
}

fn rom_banner() -> Vec<u8> {
    b"ets Jun  8 2016 00:22:57\r\n\r\nrst:0x1 (POWERON_RESET),boot:0x3 \
      (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))\r\nwaiting for download\r\n"
        .to_vec()
}

/// The flash's SFDP table: the header (signature "SFDP", revision 1.6, one parameter header),
/// the basic flash parameter table's header pointing at 0x30, and its density word (size in bits
/// minus one); everything else reads as erased.
fn sfdp_byte(at: usize, flash_size: usize) -> u8 {
    const HEAD: [u8; 16] =
        [b'S', b'F', b'D', b'P', 0x06, 0x01, 0x00, 0xFF, 0x00, 0x06, 0x01, 0x10, 0x30, 0, 0, 0xFF];
    if let Some(b) = HEAD.get(at) {
        return *b;
    }
    let density = ((flash_size as u64 * 8).saturating_sub(1) as u32).to_le_bytes();
    match at {
        0x34..=0x37 => density[at - 0x34],
        _ => 0xFF,
    }
}

/// The CRC-8 esp-idf keeps beside the factory MAC (polynomial 0x8C, reflected).
fn mac_crc8(mac: &[u8; 6]) -> u8 {
    let mut crc = 0u8;
    for &b in mac {
        let mut x = crc ^ b;
        for _ in 0..8 {
            x = if x & 1 != 0 { (x >> 1) ^ 0x8C } else { x >> 1 };
        }
        crc = x;
    }
    crc
}

fn persist(s: &State, start: usize, end: usize) {
    if let Some(path) = &s.config.flash_file {
        use std::io::{Seek, SeekFrom, Write};
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(path) {
            let _ = f.seek(SeekFrom::Start(start as u64));
            let _ = f.write_all(&s.flash[start..end]);
        }
    }
}

impl State {
    fn run(&mut self, cmd: Command, req: &protocol::Request, out: &mut Outcome) {
        let op = req.op;
        let d = &req.data;
        let invalid = || status_reply(op, 0, Some(rom_error::INVALID_MESSAGE));
        let reply = match cmd {
            Command::Sync => {
                if *d != protocol::sync_payload() {
                    invalid()
                } else {
                    for _ in 0..7 {
                        out.replies.push(status_reply(op, SYNC_VALUE, None));
                    }
                    status_reply(op, SYNC_VALUE, None)
                }
            }
            Command::ReadReg if d.len() == 4 => {
                let addr = word(d, 0);
                status_reply(op, self.regs.get(&addr).copied().unwrap_or(0), None)
            }
            Command::WriteReg if !d.is_empty() && d.len().is_multiple_of(16) => {
                for i in (0..d.len() / 4).step_by(4) {
                    let (addr, value, mask) = (word(d, i), word(d, i + 1), word(d, i + 2));
                    let old = self.regs.get(&addr).copied().unwrap_or(0);
                    self.regs.insert(addr, (old & !mask) | (value & mask));
                    if addr == SPI_CMD_REG && value & mask & SPI_CMD_USR != 0 {
                        self.spi_user_command();
                    }
                }
                status_reply(op, 0, None)
            }
            Command::SpiAttach if d.len() == 4 || d.len() == 8 => status_reply(op, 0, None),
            Command::SpiSetParams if d.len() == 24 => {
                self.params_size = Some(word(d, 1));
                status_reply(op, 0, None)
            }
            Command::FlashBegin if d.len() == 16 || d.len() == 20 => self.flash_begin(op, d),
            Command::FlashData if d.len() >= 16 => self.flash_data(op, req),
            Command::FlashEnd if d.len() == 4 => {
                self.download = None;
                // 0: reboot, 1: run the user code; either way the loader is left.
                self.in_loader = false;
                self.boots += 1;
                out.text = b"\r\nI (29) boot: ESP-IDF application starting\r\n".to_vec();
                status_reply(op, 0, None)
            }
            Command::SpiFlashMd5 if d.len() == 16 => {
                let (addr, len) = (word(d, 0) as usize, word(d, 1) as usize);
                match addr.checked_add(len) {
                    Some(end) if end <= self.flash.len() => {
                        use md5::{Digest, Md5};
                        let digest = Md5::digest(&self.flash[addr..end]);
                        let mut data = hex::encode(digest).into_bytes();
                        data.extend_from_slice(&[0, 0, 0, 0]);
                        protocol::encode_response(op, 0, &data)
                    }
                    _ => status_reply(op, 0, Some(rom_error::FLASH_READ)),
                }
            }
            Command::ReadFlashSlow if d.len() == 8 => {
                let (addr, len) = (word(d, 0) as usize, word(d, 1) as usize);
                match addr.checked_add(len) {
                    Some(end) if len <= 64 && end <= self.flash.len() => {
                        let mut data = self.flash[addr..end].to_vec();
                        data.resize(64, 0);
                        data.extend_from_slice(&[0, 0, 0, 0]);
                        protocol::encode_response(op, 0, &data)
                    }
                    Some(_) if len > 64 => status_reply(op, 0, Some(rom_error::FLASH_READ_LENGTH)),
                    _ => status_reply(op, 0, Some(rom_error::FLASH_READ)),
                }
            }
            Command::ChangeBaudrate if d.len() == 8 => {
                let requested = word(d, 0);
                if requested == 0 {
                    status_reply(op, 0, Some(rom_error::INVALID_PARAMETER))
                } else {
                    // The ROM's crystal estimate is exactly 40 MHz here, so the line runs at
                    // the requested rate.
                    self.baud = requested;
                    self.regs.insert(UART_CLKDIV_REG, (XTAL_HZ / u64::from(requested)) as u32);
                    out.baud_after = Some(requested);
                    status_reply(op, 0, None)
                }
            }
            Command::MemBegin if d.len() == 16 => status_reply(op, 0, None),
            Command::MemData if d.len() >= 16 => {
                let len = word(d, 0) as usize;
                if d.len() - 16 != len {
                    invalid()
                } else if protocol::checksum(&d[16..]) != req.checksum & 0xFF {
                    status_reply(op, 0, Some(rom_error::CHECKSUM))
                } else {
                    status_reply(op, 0, None)
                }
            }
            Command::MemEnd if d.len() == 8 => {
                if word(d, 0) == 0 {
                    // Execute: the RAM code (which this simulation cannot run) takes over.
                    self.in_loader = false;
                }
                status_reply(op, 0, None)
            }
            // Not in the ESP32's ROM (GET_SECURITY_INFO, compressed downloads are ESP32 ROM
            // commands, but this simulation does not inflate), or a malformed length.
            _ => invalid(),
        };
        out.replies.push(reply);
    }

    /// Run the SPI user command the registers describe, as the controller and a NOR flash would:
    /// the opcode (SPI_USR2), an address phase of SPI_USR1's length (the address in the top bits
    /// of SPI_ADDR on the ESP32), dummy cycles, and SPI_MISO_DLEN + 1 bits read into W0..W15
    /// (the first byte in W0's low byte; at most 64 bytes, what the data registers hold).
    fn spi_user_command(&mut self) {
        let reg = |regs: &HashMap<u32, u32>, a: u32| regs.get(&a).copied().unwrap_or(0);
        let usr = reg(&self.regs, SPI_USR_REG);
        let usr1 = reg(&self.regs, SPI_USR1_REG);
        let opcode = (reg(&self.regs, SPI_USR2_REG) & 0xFF) as u8;
        let miso = if usr & USR_MISO != 0 {
            ((reg(&self.regs, SPI_MISO_DLEN_REG) as usize & 0x00FF_FFFF) + 1)
                .div_ceil(8)
                .min(SPI_DATA_BYTES)
        } else {
            0
        };
        let addr = (usr & USR_ADDR != 0).then(|| {
            let bits = (usr1 >> 26) + 1;
            (reg(&self.regs, SPI_ADDR_REG) >> (32 - bits), bits)
        });
        let dummy = if usr & USR_DUMMY != 0 { (usr1 & 0xFF) + 1 } else { 0 };
        let size = self.flash.len();
        // What the flash drives on MISO; a command sent with the wrong address or dummy phase
        // reads as the idle line (all ones), as would an opcode this flash does not know.
        let idle = vec![0xFFu8; miso];
        let data: Vec<u8> = match (opcode, addr, dummy) {
            // RDID: manufacturer, memory type, capacity (log2 of the size).
            (0x9F, None, 0) => {
                let id = [FLASH_VENDOR as u8, FLASH_TYPE as u8, size.trailing_zeros() as u8];
                (0..miso).map(|i| id.get(i).copied().unwrap_or(0xFF)).collect()
            }
            // RDSR, RDSR2, RDSR3: nothing busy, nothing protected.
            (0x05 | 0x35 | 0x15, None, 0) => vec![0; miso],
            // READ (no dummy) and FAST_READ (8 dummy cycles): the address wraps at the flash's
            // end, as a NOR flash's internal counter does.
            (0x03, Some((a, 24)), 0) | (0x0B, Some((a, 24)), 8) => {
                (0..miso).map(|i| self.flash[(a as usize + i) % size]).collect()
            }
            // RDSFDP: 24-bit address, 8 dummy cycles.
            (0x5A, Some((a, 24)), 8) => {
                (0..miso).map(|i| sfdp_byte(a as usize + i, size)).collect()
            }
            _ => idle,
        };
        for (i, word) in data.chunks(4).enumerate() {
            let mut w = [0u8; 4];
            w[..word.len()].copy_from_slice(word);
            self.regs.insert(SPI_W0_REG + 4 * i as u32, u32::from_le_bytes(w));
        }
        let cmd = reg(&self.regs, SPI_CMD_REG);
        self.regs.insert(SPI_CMD_REG, cmd & !SPI_CMD_USR);
    }

    fn flash_begin(&mut self, op: u8, d: &[u8]) -> Vec<u8> {
        let (erase, _blocks, block_size, offset) = (word(d, 0), word(d, 1), word(d, 2), word(d, 3));
        if block_size == 0 || block_size > 0x4000 {
            return status_reply(op, 0, Some(rom_error::INVALID_PARAMETER));
        }
        let limit = self.params_size.unwrap_or(self.flash.len() as u32) as u64;
        let end = u64::from(offset) + u64::from(erase);
        if end > limit.min(self.flash.len() as u64) {
            return status_reply(op, 0, Some(rom_error::FAILED_TO_ACT));
        }
        if erase > 0 {
            // The ROM erases every sector the region touches.
            let sector = u64::from(protocol::FLASH_SECTOR_SIZE);
            let start = u64::from(offset) / sector * sector;
            let stop = end.div_ceil(sector) * sector;
            let stop = stop.min(self.flash.len() as u64);
            self.flash[start as usize..stop as usize].fill(0xFF);
            persist(self, start as usize, stop as usize);
        }
        self.download = Some(Download { offset, block_size });
        status_reply(op, 0, None)
    }

    fn flash_data(&mut self, op: u8, req: &protocol::Request) -> Vec<u8> {
        let d = &req.data;
        let (len, seq) = (word(d, 0) as usize, word(d, 1));
        self.flash_data_frames += 1;
        let Some(dl) = &self.download else {
            return status_reply(op, 0, Some(rom_error::FAILED_TO_ACT));
        };
        if d.len() - 16 != len || len > dl.block_size as usize {
            return status_reply(op, 0, Some(rom_error::INVALID_MESSAGE));
        }
        let block = &d[16..];
        let f = &mut self.faults;
        if f.bad_checksum_blocks > 0 && seq >= f.bad_checksum_at_seq {
            f.bad_checksum_blocks -= 1;
            return status_reply(op, 0, Some(rom_error::CHECKSUM));
        }
        if protocol::checksum(block) != req.checksum & 0xFF {
            return status_reply(op, 0, Some(rom_error::CHECKSUM));
        }
        let start = u64::from(dl.offset) + u64::from(seq) * u64::from(dl.block_size);
        let end = start + len as u64;
        if end > self.flash.len() as u64 {
            return status_reply(op, 0, Some(rom_error::FLASH_WRITE));
        }
        let (start, end) = (start as usize, end as usize);
        if self.faults.flash_write_fail_at_seq == Some(seq) {
            return status_reply(op, 0, Some(rom_error::FLASH_WRITE));
        }
        // NOR flash: programming only clears bits.
        for (cell, b) in self.flash[start..end].iter_mut().zip(block) {
            *cell &= *b;
        }
        if self.faults.corrupt_at_seq == Some(seq) {
            self.flash[start] ^= 0x01;
        } else if self.flash[start..end] != *block {
            // Read back differs: the region was not erased.
            persist(self, start, end);
            return status_reply(op, 0, Some(rom_error::FLASH_WRITE));
        }
        persist(self, start, end);
        status_reply(op, 0, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldpatch_drivers::esp::protocol::{encode_request, parse_response, sync_payload};

    fn ask(dev: &EspDevice, cmd: Command, data: &[u8], chk: u32) -> Vec<protocol::Response> {
        let out = dev.handle(&encode_request(cmd.op(), data, chk));
        out.replies.iter().map(|r| parse_response(r).unwrap()).collect()
    }

    fn words(ws: &[u32]) -> Vec<u8> {
        ws.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn sync_is_answered_eight_times_and_magic_identifies_an_esp32() {
        let dev = EspDevice::new(EspConfig::default()).unwrap();
        let r = ask(&dev, Command::Sync, &sync_payload(), 0);
        assert_eq!(r.len(), 8);
        assert!(r.iter().all(|r| r.op == 0x08 && r.value != 0 && r.data == [0, 0, 0, 0]));
        let r = ask(&dev, Command::ReadReg, &CHIP_DETECT_MAGIC_REG.to_le_bytes(), 0);
        assert_eq!(r[0].value, 0x00F0_1D83);
        let r = ask(&dev, Command::GetSecurityInfo, &[], 0);
        assert_eq!(r[0].data, [1, rom_error::INVALID_MESSAGE, 0, 0]);
    }

    #[test]
    fn rdid_through_the_spi_registers_reports_the_flash_size() {
        let dev = EspDevice::new(EspConfig { flash_size: 2 * 1024 * 1024, ..Default::default() })
            .unwrap();
        ask(&dev, Command::WriteReg, &words(&[SPI_MISO_DLEN_REG, 23, u32::MAX, 0]), 0);
        ask(&dev, Command::WriteReg, &words(&[SPI_USR_REG, (1 << 31) | USR_MISO, u32::MAX, 0]), 0);
        ask(&dev, Command::WriteReg, &words(&[SPI_USR2_REG, (7 << 28) | 0x9F, u32::MAX, 0]), 0);
        ask(&dev, Command::WriteReg, &words(&[SPI_CMD_REG, SPI_CMD_USR, u32::MAX, 0]), 0);
        let r = ask(&dev, Command::ReadReg, &SPI_CMD_REG.to_le_bytes(), 0);
        assert_eq!(r[0].value & SPI_CMD_USR, 0);
        let r = ask(&dev, Command::ReadReg, &SPI_W0_REG.to_le_bytes(), 0);
        assert_eq!(r[0].value, 0x15_40EF);
    }

    #[test]
    fn flash_begin_erases_sectors_and_data_is_checked() {
        let dev = EspDevice::new(EspConfig::default()).unwrap();
        dev.preload(0x1000, &[0u8; 0x2000]);
        let r = ask(&dev, Command::FlashBegin, &words(&[0x400, 1, 0x400, 0x1000]), 0);
        assert_eq!(r[0].data, [0, 0, 0, 0]);
        // The whole first sector is erased, the next one is not.
        assert_eq!(dev.flash(0x1000, 0x1000), vec![0xFF; 0x1000]);
        assert_eq!(dev.flash(0x2000, 4), vec![0; 4]);
        let block = vec![0x5A; 0x400];
        let mut data = words(&[0x400, 0, 0, 0]);
        data.extend_from_slice(&block);
        let bad = ask(&dev, Command::FlashData, &data, 0x00);
        assert_eq!(bad[0].data, [1, rom_error::CHECKSUM, 0, 0]);
        let ok = ask(&dev, Command::FlashData, &data, protocol::checksum(&block));
        assert_eq!(ok[0].data, [0, 0, 0, 0]);
        assert_eq!(dev.flash(0x1000, 0x400), block);
        // Writing over programmed cells without an erase fails the read-back (NOR flash).
        ask(&dev, Command::FlashBegin, &words(&[0, 1, 0x400, 0x2000]), 0);
        let r = ask(&dev, Command::FlashData, &data, protocol::checksum(&block));
        assert_eq!(r[0].data, [1, rom_error::FLASH_WRITE, 0, 0]);
    }

    #[test]
    fn md5_is_lowercase_hex_with_status() {
        let dev = EspDevice::new(EspConfig::default()).unwrap();
        let r = ask(&dev, Command::SpiFlashMd5, &words(&[0, 0x1000, 0, 0]), 0);
        use md5::{Digest, Md5};
        let expected = hex::encode(Md5::digest(vec![0xFF; 0x1000]));
        assert_eq!(&r[0].data[..32], expected.as_bytes());
        assert_eq!(&r[0].data[32..], [0, 0, 0, 0]);
        let r = ask(&dev, Command::SpiFlashMd5, &words(&[0x3F_F000, 0x2000, 0, 0]), 0);
        assert_eq!(r[0].data, [1, rom_error::FLASH_READ, 0, 0]);
    }

    #[test]
    fn a_flash_file_keeps_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flash.bin");
        let config = EspConfig {
            flash_size: 256 * 1024,
            flash_file: Some(path.clone()),
            ..Default::default()
        };
        let dev = EspDevice::new(config.clone()).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), vec![0xFF; 256 * 1024]);
        ask(&dev, Command::FlashBegin, &words(&[0x400, 1, 0x400, 0x8000]), 0);
        let block: Vec<u8> = (0..0x400u32).map(|i| (i * 7) as u8).collect();
        let mut data = words(&[0x400, 0, 0, 0]);
        data.extend_from_slice(&block);
        let r = ask(&dev, Command::FlashData, &data, protocol::checksum(&block));
        assert_eq!(r[0].data, [0, 0, 0, 0]);
        let again = EspDevice::new(config).unwrap();
        assert_eq!(again.flash(0x8000, 0x400), block);
        assert_eq!(std::fs::read(&path).unwrap()[0x8000..0x8400], block[..]);
    }

    #[test]
    fn malformed_frames_never_panic() {
        let dev = EspDevice::new(EspConfig::default()).unwrap();
        let mut x: u32 = 7;
        for n in 0..3000usize {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let len = n % 40;
            let mut frame: Vec<u8> = (0..len).map(|i| (x >> (i % 24)) as u8).collect();
            if len > 1 {
                frame[0] = 0;
                frame[1] = (x % 0x16) as u8;
            }
            let _ = dev.handle(&frame);
            if !dev.in_loader() {
                dev.enter_download_mode();
            }
        }
        dev.set_faults(EspFaults::default());
        let r = ask(&dev, Command::Sync, &sync_payload(), 0);
        assert_eq!(r.len(), 8, "the device still syncs after garbage");
    }
}
