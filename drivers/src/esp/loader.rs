//! The ROM loader client: connect (reset + SYNC), chip detection, SPI flash set-up, flash
//! download with the block checksum, the MD5 check and the baud change.

use super::EspError;
use super::bootlog::{self, BootLog, Listen};
use super::chip::{CHIP_DETECT_MAGIC_REG, Chip, ESP32_EFUSE_RD_BASE, ESP32_RTCCALICFG1, SpiRegs};
use super::port::EspPort;
use super::protocol::{
    self, Command, FLASH_SECTOR_SIZE, FLASH_WRITE_SIZE, Response, StatusError, rom_error,
};
use super::reset::{self, ResetMode};
use crate::progress::{Progress, TransferProgress};
use crate::transport::TransportError;
use md5::{Digest, Md5};
use std::time::{Duration, Instant};

/// Waits of the loader client; the defaults are esptool's.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// One SYNC.
    pub sync: Duration,
    /// An ordinary command.
    pub command: Duration,
    /// FLASH_BEGIN erases the whole region before answering: this much per MiB (at least
    /// `command`).
    pub erase_per_mib: Duration,
    /// SPI_FLASH_MD5 reads the whole region: this much per MiB (at least `command`).
    pub md5_per_mib: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            sync: Duration::from_millis(100),
            command: Duration::from_secs(3),
            erase_per_mib: Duration::from_secs(30),
            md5_per_mib: Duration::from_secs(8),
        }
    }
}

impl Timeouts {
    fn per_mib(&self, per: Duration, bytes: usize) -> Duration {
        per.mul_f64(bytes as f64 / (1024.0 * 1024.0)).max(self.command)
    }
}

/// How to connect.
#[derive(Debug, Clone, Copy)]
pub struct ConnectOptions {
    pub reset: ResetMode,
    /// Reset-and-sync rounds (each sends up to five SYNCs).
    pub attempts: u32,
    pub timeouts: Timeouts,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions { reset: ResetMode::Classic, attempts: 7, timeouts: Timeouts::default() }
    }
}

/// What the device said about itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChipInfo {
    pub chip: Chip,
    /// The base MAC address (read from eFuse where this driver knows where it is).
    pub mac: Option<[u8; 6]>,
}

/// The SPI flash's JEDEC identification (RDID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct FlashId {
    pub manufacturer: u8,
    /// Memory type and capacity bytes.
    pub device: u16,
    /// The size the capacity byte gives, where it follows the common encoding.
    pub size: Option<u32>,
}

/// Bytes one SPI user command reads back (the controller's sixteen data registers W0..W15).
pub const SPI_READ_MAX: usize = 64;
/// Bytes [`EspLoader::read_flash`] reads in one call.
pub const FLASH_READ_MAX: usize = 1024 * 1024;
/// SPI flash opcodes: JEDEC id, standard read (24-bit address, no dummy cycles).
const SPI_FLASH_RDID: u8 = 0x9F;
const SPI_FLASH_READ: u8 = 0x03;
/// SPI_CMD: start a user command (clears when it is done); SPI_USR phases; SPI_USR1 address length.
const SPI_CMD_USR: u32 = 1 << 18;
const USR_COMMAND: u32 = 1 << 31;
const USR_ADDR: u32 = 1 << 30;
const USR_MISO: u32 = 1 << 28;
const USR1_ADDR_LEN_SHIFT: u32 = 26;

/// Attempts at one FLASH_DATA block before giving up.
const BLOCK_ATTEMPTS: u32 = 3;

/// A connected ROM loader.
#[derive(Debug)]
pub struct EspLoader<P: EspPort> {
    port: P,
    reset: ResetMode,
    timeouts: Timeouts,
    chip: Option<Chip>,
    flash_size: Option<u32>,
    stub: bool,
    garbled: u64,
}

impl<P: EspPort> EspLoader<P> {
    /// Reset the chip into its ROM loader (per `opts.reset`) and sync with it.
    pub async fn connect(mut port: P, opts: ConnectOptions) -> Result<Self, EspError> {
        let mut loader = EspLoader {
            port: {
                reset::enter_loader(&mut port, opts.reset).await?;
                port
            },
            reset: opts.reset,
            timeouts: opts.timeouts,
            chip: None,
            flash_size: None,
            stub: false,
            garbled: 0,
        };
        let mut attempts = 0;
        loop {
            for _ in 0..5 {
                match loader.sync().await {
                    Ok(()) => return Ok(loader),
                    Err(e) if e.is_transient() || matches!(e, EspError::Malformed { .. }) => {}
                    Err(e) => return Err(e),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            attempts += 1;
            if attempts >= opts.attempts.max(1) {
                return Err(EspError::NoSync { attempts, reset: opts.reset.name() });
            }
            reset::enter_loader(&mut loader.port, opts.reset).await?;
        }
    }

    /// The port (for example to read its baud rate).
    pub fn port(&self) -> &P {
        &self.port
    }

    /// Give the port back.
    pub fn into_port(self) -> P {
        self.port
    }

    /// The chip, once [`Self::detect_chip`] ran.
    pub fn chip(&self) -> Option<Chip> {
        self.chip
    }

    /// Whether SYNC was answered by esptool's flasher stub rather than the ROM.
    pub fn is_stub(&self) -> bool {
        self.stub
    }

    /// Frames that arrived garbled or unparsable and were skipped.
    pub fn garbled_frames(&self) -> u64 {
        self.garbled
    }

    /// Send one command and wait for the response with the same opcode.
    pub async fn command(
        &mut self,
        cmd: Command,
        data: &[u8],
        checksum: u32,
        timeout: Duration,
    ) -> Result<Response, EspError> {
        self.port.drain();
        let packet = protocol::encode_request(cmd.op(), data, checksum);
        self.port.send(&packet).await?;
        let wait = timeout + self.port.wire_time(packet.len());
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(EspError::Timeout { command: cmd.name(), after: wait });
            }
            match self.port.recv(left).await {
                Ok(frame) => match protocol::parse_response(&frame) {
                    Ok(r) if r.op == cmd.op() => return Ok(r),
                    Ok(r) => {
                        // The ROM answers a request it does not know with INVALID_MESSAGE.
                        if r.data.len() >= 2
                            && r.data[0] != 0
                            && r.data[1] == rom_error::INVALID_MESSAGE
                            && cmd != Command::Sync
                        {
                            return Err(EspError::Unsupported { command: cmd.name() });
                        }
                        // A late answer to an earlier request: skip it.
                    }
                    Err(_) => self.garbled += 1,
                },
                Err(TransportError::Timeout(_)) => {
                    return Err(EspError::Timeout { command: cmd.name(), after: wait });
                }
                Err(TransportError::BadFrame(_)) => self.garbled += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Send a command and check its status; returns the response value and the data before the
    /// status bytes.
    async fn check(
        &mut self,
        cmd: Command,
        data: &[u8],
        checksum: u32,
        resp_data_len: usize,
        timeout: Duration,
    ) -> Result<(u32, Vec<u8>), EspError> {
        let r = self.command(cmd, data, checksum, timeout).await?;
        match protocol::status(&r.data, resp_data_len) {
            Ok(d) => Ok((r.value, d.to_vec())),
            Err(StatusError::Rom(code)) => Err(EspError::rom(cmd, code)),
            Err(StatusError::Short { len, needed }) => Err(EspError::Malformed {
                command: cmd.name(),
                detail: format!("{len} data bytes, expected at least {needed}"),
            }),
        }
    }

    /// One SYNC exchange; the ROM answers it eight times, the extra answers are discarded.
    pub async fn sync(&mut self) -> Result<(), EspError> {
        let r =
            self.command(Command::Sync, &protocol::sync_payload(), 0, self.timeouts.sync).await?;
        let mut stub = r.value == 0;
        for _ in 0..7 {
            match self.port.recv(self.timeouts.sync).await {
                Ok(frame) => {
                    if let Ok(extra) = protocol::parse_response(&frame) {
                        stub &= extra.value == 0;
                    }
                }
                Err(_) => break,
            }
        }
        self.stub = stub;
        self.port.drain();
        Ok(())
    }

    /// Read a 32-bit word of the chip's address space.
    pub async fn read_reg(&mut self, addr: u32) -> Result<u32, EspError> {
        let t = self.timeouts.command;
        Ok(self.check(Command::ReadReg, &addr.to_le_bytes(), 0, 0, t).await?.0)
    }

    /// Write a 32-bit word of the chip's address space.
    pub async fn write_reg(&mut self, addr: u32, value: u32) -> Result<(), EspError> {
        let mut data = Vec::with_capacity(16);
        for w in [addr, value, u32::MAX, 0] {
            data.extend_from_slice(&w.to_le_bytes());
        }
        let t = self.timeouts.command;
        self.check(Command::WriteReg, &data, 0, 0, t).await.map(|_| ())
    }

    /// The chip id from GET_SECURITY_INFO: `Ok(None)` where the ROM does not report one
    /// (ESP32-S2) or does not have the command (ESP8266, ESP32).
    pub async fn security_chip_id(&mut self) -> Result<Option<u32>, EspError> {
        let t = self.timeouts.command;
        let r = match self.command(Command::GetSecurityInfo, &[], 0, t).await {
            Ok(r) => r,
            Err(EspError::Unsupported { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        match protocol::status(&r.data, 20) {
            Ok(d) => Ok(Some(u32::from_le_bytes([d[12], d[13], d[14], d[15]]))),
            Err(StatusError::Short { .. }) if protocol::status(&r.data, 12).is_ok() => Ok(None),
            Err(StatusError::Rom(rom_error::INVALID_MESSAGE)) => {
                // Some ROMs repeat the refusal: let the line go quiet before the next command.
                let quiet = self.timeouts.sync.min(Duration::from_millis(50));
                for _ in 0..16 {
                    if self.port.recv(quiet).await.is_err() {
                        break;
                    }
                }
                self.port.drain();
                Ok(None)
            }
            Err(StatusError::Rom(code)) => Err(EspError::rom(Command::GetSecurityInfo, code)),
            Err(StatusError::Short { len, needed }) => Err(EspError::Malformed {
                command: Command::GetSecurityInfo.name(),
                detail: format!("{len} data bytes, expected at least {needed}"),
            }),
        }
    }

    /// Detect the chip: its chip id where the ROM reports one, else the magic word.
    pub async fn detect_chip(&mut self) -> Result<ChipInfo, EspError> {
        let chip = match self.security_chip_id().await? {
            Some(id) => Chip::from_chip_id(id).ok_or_else(|| EspError::UnknownChip {
                detail: format!("GET_SECURITY_INFO reports chip id {id}"),
            })?,
            None => {
                let magic = self.read_reg(CHIP_DETECT_MAGIC_REG).await?;
                Chip::from_magic(magic).ok_or_else(|| EspError::UnknownChip {
                    detail: format!("chip-detect register holds 0x{magic:08X}"),
                })?
            }
        };
        self.chip = Some(chip);
        let mac = if chip == Chip::Esp32 {
            let w1 = self.read_reg(ESP32_EFUSE_RD_BASE + 4).await?;
            let w2 = self.read_reg(ESP32_EFUSE_RD_BASE + 8).await?;
            let mut bytes = [0u8; 8];
            bytes[..4].copy_from_slice(&w2.to_be_bytes());
            bytes[4..].copy_from_slice(&w1.to_be_bytes());
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&bytes[2..8]);
            Some(mac)
        } else {
            None
        };
        Ok(ChipInfo { chip, mac })
    }

    /// Read the SPI flash's JEDEC id (RDID) through the SPI controller's user-command registers,
    /// as esptool does; the capacity byte gives the flash size. Needs [`Self::detect_chip`].
    pub async fn flash_id(&mut self) -> Result<FlashId, EspError> {
        let regs = self
            .chip
            .and_then(Chip::spi_regs)
            .ok_or(EspError::Unsupported { command: "reading the flash id on this chip" })?;
        let saved = self.spi_save(&regs).await?;
        let result = self.spi_read_command(&regs, SPI_FLASH_RDID, None, 3).await;
        self.spi_restore(&regs, saved).await?;
        let b = result?;
        let id = u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16;
        let capacity = (id >> 16) as u8;
        let size = match capacity {
            0x12..=0x1C => Some(1u32 << capacity),
            0x20..=0x22 => Some(1u32 << (capacity - 6)),
            _ => None,
        };
        Ok(FlashId {
            manufacturer: id as u8,
            device: (((id >> 8) & 0xFF) << 8 | (id >> 16) & 0xFF) as u16,
            size,
        })
    }

    /// Read `len` bytes of flash at `offset` with the flash's standard READ command (0x03, 24-bit
    /// address), run through the SPI controller's user-command registers in pieces of at most
    /// [`SPI_READ_MAX`] bytes (the controller's data registers W0..W15). The ROM loader of the
    /// newer chips has no flash read command of its own; this works on every chip whose SPI
    /// registers [`Chip::spi_regs`] knows. Bounded: at most [`FLASH_READ_MAX`] bytes per call,
    /// inside the flash (its size, once known) and the READ command's 16 MiB. Needs
    /// [`Self::detect_chip`] and [`Self::spi_attach`].
    pub async fn read_flash(&mut self, offset: u32, len: usize) -> Result<Vec<u8>, EspError> {
        let refuse = |reason: String| EspError::FlashRead { offset, len, reason };
        if len > FLASH_READ_MAX {
            return Err(refuse(format!(
                "at most {FLASH_READ_MAX} bytes are read at a time through the SPI registers"
            )));
        }
        let end = u64::from(offset) + len as u64;
        if let Some(size) = self.flash_size
            && end > u64::from(size)
        {
            return Err(refuse(format!("that reaches past the device's {size}-byte flash")));
        }
        if end > 1 << 24 {
            return Err(refuse(
                "the READ command's 24-bit address reaches only the first 16 MiB".into(),
            ));
        }
        let regs = self.chip.and_then(Chip::spi_regs).ok_or(EspError::Unsupported {
            command: "reading flash through the SPI registers on this chip",
        })?;
        let saved = self.spi_save(&regs).await?;
        let mut out = Vec::with_capacity(len);
        let mut result = Ok(());
        while out.len() < len {
            let n = (len - out.len()).min(SPI_READ_MAX);
            let at = offset + out.len() as u32;
            match self.spi_read_command(&regs, SPI_FLASH_READ, Some(at), n).await {
                Ok(piece) => out.extend_from_slice(&piece),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        // Put the controller back as the ROM had it, also after a failed piece.
        let restored = self.spi_restore(&regs, saved).await;
        result?;
        restored?;
        Ok(out)
    }

    async fn spi_save(&mut self, regs: &SpiRegs) -> Result<[u32; 3], EspError> {
        Ok([
            self.read_reg(regs.usr).await?,
            self.read_reg(regs.usr1).await?,
            self.read_reg(regs.usr2).await?,
        ])
    }

    async fn spi_restore(&mut self, regs: &SpiRegs, saved: [u32; 3]) -> Result<(), EspError> {
        self.write_reg(regs.usr, saved[0]).await?;
        self.write_reg(regs.usr1, saved[1]).await?;
        self.write_reg(regs.usr2, saved[2]).await
    }

    /// Run one SPI flash command that sends `opcode`, then (with `addr`) a 24-bit address, and
    /// reads `len` (1 to 64) bytes back through W0.. (the first byte in the low byte of W0), as
    /// esptool's `run_spiflash_command` sets the user-command registers up.
    async fn spi_read_command(
        &mut self,
        regs: &SpiRegs,
        opcode: u8,
        addr: Option<u32>,
        len: usize,
    ) -> Result<Vec<u8>, EspError> {
        debug_assert!((1..=SPI_READ_MAX).contains(&len));
        let len = len.clamp(1, SPI_READ_MAX);
        self.write_reg(regs.miso_dlen, (len * 8 - 1) as u32).await?;
        let mut usr = USR_COMMAND | USR_MISO;
        if addr.is_some() {
            usr |= USR_ADDR;
        }
        self.write_reg(regs.usr, usr).await?;
        if addr.is_some() {
            self.write_reg(regs.usr1, (24 - 1) << USR1_ADDR_LEN_SHIFT).await?;
        }
        self.write_reg(regs.usr2, (7 << 28) | u32::from(opcode)).await?;
        if let Some(a) = addr {
            self.write_reg(regs.addr, if regs.addr_msb { a << 8 } else { a }).await?;
        }
        self.write_reg(regs.w0, 0).await?;
        self.write_reg(regs.base, SPI_CMD_USR).await?;
        let mut done = false;
        for _ in 0..10 {
            if self.read_reg(regs.base).await? & SPI_CMD_USR == 0 {
                done = true;
                break;
            }
        }
        if !done {
            return Err(EspError::Malformed {
                command: "READ_REG",
                detail: format!(
                    "the SPI flash command 0x{opcode:02X} did not complete (the controller kept \
                     its busy bit after 10 reads): reset the device into download mode and try again"
                ),
            });
        }
        let mut out = Vec::with_capacity(len.div_ceil(4) * 4);
        for i in 0..len.div_ceil(4) {
            out.extend_from_slice(&self.read_reg(regs.w0 + 4 * i as u32).await?.to_le_bytes());
        }
        out.truncate(len);
        Ok(out)
    }

    /// Attach the SPI flash on its default pins (ESP32 family ROMs need this before flash
    /// commands; the ESP8266 ROM does it on FLASH_BEGIN).
    pub async fn spi_attach(&mut self) -> Result<(), EspError> {
        let data: &[u8] = if self.stub { &[0; 4] } else { &[0; 8] };
        let t = self.timeouts.command;
        self.check(Command::SpiAttach, data, 0, 0, t).await.map(|_| ())
    }

    /// Tell the ROM the flash geometry (total size; 64 KiB blocks, 4 KiB sectors, 256-byte pages).
    pub async fn spi_set_params(&mut self, flash_size: u32) -> Result<(), EspError> {
        let mut data = Vec::with_capacity(24);
        for w in [0, flash_size, 64 * 1024, 4 * 1024, 256, 0xFFFF] {
            data.extend_from_slice(&u32::to_le_bytes(w));
        }
        let t = self.timeouts.command;
        self.check(Command::SpiSetParams, &data, 0, 0, t).await?;
        self.flash_size = Some(flash_size);
        Ok(())
    }

    /// Write `data` to flash at `offset` (a multiple of 4 KiB): FLASH_BEGIN erases the region,
    /// FLASH_DATA sends 1 KiB blocks (the last one padded with 0xFF), each with its checksum. A
    /// block the line corrupted or lost is sent again; a flash write error is reported.
    pub async fn write_flash(
        &mut self,
        offset: u32,
        data: &[u8],
        progress: &dyn Progress,
    ) -> Result<(), EspError> {
        if !offset.is_multiple_of(FLASH_SECTOR_SIZE) {
            return Err(EspError::Unaligned { offset });
        }
        let len = data.len().div_ceil(4) * 4;
        let end = u64::from(offset) + len as u64;
        if let Some(size) = self.flash_size
            && end > u64::from(size)
        {
            return Err(EspError::TooLarge { offset, len: data.len(), flash_size: size });
        }
        if end > u64::from(u32::MAX) {
            return Err(EspError::TooLarge { offset, len: data.len(), flash_size: u32::MAX });
        }
        let blocks = data.len().div_ceil(FLASH_WRITE_SIZE);
        let mut begin = Vec::with_capacity(20);
        for w in [len as u32, blocks as u32, FLASH_WRITE_SIZE as u32, offset] {
            begin.extend_from_slice(&w.to_le_bytes());
        }
        if self.stub || self.chip.is_some_and(Chip::flash_begin_has_encrypt_flag) {
            begin.extend_from_slice(&0u32.to_le_bytes());
        }
        progress.phase("erase");
        let t = self.timeouts.per_mib(self.timeouts.erase_per_mib, len);
        self.check(Command::FlashBegin, &begin, 0, 0, t).await?;
        progress.phase("upload");
        let started = Instant::now();
        let total = data.len() as u64;
        let mut done = 0u64;
        for (seq, chunk) in data.chunks(FLASH_WRITE_SIZE).enumerate() {
            let mut payload = Vec::with_capacity(16 + FLASH_WRITE_SIZE);
            for w in [FLASH_WRITE_SIZE as u32, seq as u32, 0, 0] {
                payload.extend_from_slice(&w.to_le_bytes());
            }
            payload.extend_from_slice(chunk);
            payload.resize(16 + FLASH_WRITE_SIZE, 0xFF);
            let sum = protocol::checksum(&payload[16..]);
            let mut attempt = 1;
            loop {
                let t = self.timeouts.command;
                match self.check(Command::FlashData, &payload, sum, 0, t).await {
                    Ok(_) => break,
                    Err(e) if attempt < BLOCK_ATTEMPTS && e.is_transient() => {
                        progress.note(&format!(
                            "block {seq} at 0x{:X}: {e}; sending it again",
                            u64::from(offset) + (seq * FLASH_WRITE_SIZE) as u64
                        ));
                        attempt += 1;
                    }
                    Err(EspError::Rom { code: rom_error::FLASH_WRITE, .. }) => {
                        return Err(EspError::FlashWrite {
                            address: offset + (seq * FLASH_WRITE_SIZE) as u32,
                        });
                    }
                    Err(e) => return Err(e),
                }
            }
            done += chunk.len() as u64;
            progress.transfer(TransferProgress { done, total, elapsed: started.elapsed() });
        }
        Ok(())
    }

    /// The MD5 of `len` bytes of flash at `offset`, computed by the device.
    pub async fn flash_md5(&mut self, offset: u32, len: u32) -> Result<[u8; 16], EspError> {
        let mut data = Vec::with_capacity(16);
        for w in [offset, len, 0, 0] {
            data.extend_from_slice(&w.to_le_bytes());
        }
        let t = self.timeouts.per_mib(self.timeouts.md5_per_mib, len as usize);
        let r = self.command(Command::SpiFlashMd5, &data, 0, t).await?;
        let malformed = |detail: String| EspError::Malformed { command: "SPI_FLASH_MD5", detail };
        // The ROM sends 32 hex characters, the flasher stub 16 raw bytes.
        let (hex_ok, raw_ok) = (protocol::status(&r.data, 32), protocol::status(&r.data, 16));
        if let Ok(text) = hex_ok
            && let Ok(text) = std::str::from_utf8(text)
            && let Ok(bytes) = hex::decode(text)
            && let Ok(md5) = <[u8; 16]>::try_from(bytes.as_slice())
        {
            return Ok(md5);
        }
        match raw_ok {
            Ok(raw) if !self.is_rom_md5_len(&r.data) => {
                <[u8; 16]>::try_from(raw).map_err(|_| malformed("MD5 of wrong length".into()))
            }
            Err(StatusError::Rom(code)) => Err(EspError::rom(Command::SpiFlashMd5, code)),
            _ => Err(malformed(format!(
                "expected 32 hex digits or 16 bytes of MD5, got {} bytes",
                r.data.len()
            ))),
        }
    }

    fn is_rom_md5_len(&self, data: &[u8]) -> bool {
        data.len() >= 34
    }

    /// Write `data` at `offset`, then have the device hash the region and compare it with the MD5
    /// of the bytes sent (padded to 4 bytes with 0xFF, as written). Returns that MD5.
    pub async fn write_verified(
        &mut self,
        offset: u32,
        data: &[u8],
        progress: &dyn Progress,
    ) -> Result<[u8; 16], EspError> {
        self.write_flash(offset, data, progress).await?;
        progress.phase("verify");
        let mut hasher = Md5::new();
        hasher.update(data);
        let pad = data.len().div_ceil(4) * 4 - data.len();
        hasher.update(&[0xFFu8; 3][..pad]);
        let expected: [u8; 16] = hasher.finalize().into();
        let len = (data.len() + pad) as u32;
        let device = self.flash_md5(offset, len).await?;
        if device != expected {
            return Err(EspError::Md5Mismatch {
                offset,
                len,
                expected: hex::encode(expected),
                device: hex::encode(device),
            });
        }
        Ok(expected)
    }

    /// Switch the line to `baud`: CHANGE_BAUDRATE (answered at the old rate), then the host port.
    ///
    /// The ESP32's ROM derives its UART divisor from its internal 8 MHz clock's calibration,
    /// which drifts from the crystal; like esptool, the requested rate is scaled by the ROM's
    /// own idea of the crystal frequency so the line ends up at `baud`.
    pub async fn change_baud(&mut self, baud: u32) -> Result<(), EspError> {
        if !(9600..=5_000_000).contains(&baud) {
            return Err(EspError::BadBaud(baud));
        }
        let mut rom_baud = baud;
        if self.chip == Some(Chip::Esp32) && !self.stub {
            let cali = (self.read_reg(ESP32_RTCCALICFG1).await? >> 7) & 0x01FF_FFFF;
            let ck8m = self.read_reg(ESP32_EFUSE_RD_BASE + 16).await? & 0xFF;
            let rom_freq = u64::from(cali) * 15_625 * u64::from(ck8m) / 40;
            let valid = if rom_freq > 33_000_000 { 40_000_000 } else { 26_000_000 };
            let scaled = u64::from(baud) * rom_freq / valid;
            if scaled > 0 {
                rom_baud = scaled.min(u64::from(u32::MAX)) as u32;
            }
        }
        let old = if self.stub { self.port.baud() } else { 0 };
        let mut data = rom_baud.to_le_bytes().to_vec();
        data.extend_from_slice(&old.to_le_bytes());
        let t = self.timeouts.command;
        self.check(Command::ChangeBaudrate, &data, 0, 0, t).await?;
        self.port.set_baud(baud)?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.port.drain();
        Ok(())
    }

    /// Reset the device into its application (EN pulsed through the reset lines) and listen to
    /// what it prints (see [`super::bootlog`]): the host side is switched to the console's baud
    /// rate first, so the boot log is read from its first byte. The ROM loader is left; a device
    /// without reset lines ([`ResetMode::NoReset`]) cannot be reset from here and is refused.
    pub async fn boot_and_listen(&mut self, listen: &Listen) -> Result<BootLog, EspError> {
        if self.reset == ResetMode::NoReset {
            return Err(EspError::NoResetLine { mode: self.reset.name() });
        }
        self.port.set_baud(listen.console_baud)?;
        self.port.drain();
        reset::hard_reset(&mut self.port, self.reset).await?;
        bootlog::listen(&mut self.port, listen).await
    }

    /// Leave the loader and start the application: pulse EN where the adapter has the lines,
    /// else ask the ROM to run the user code (FLASH_BEGIN of nothing, then FLASH_END).
    pub async fn run_app(&mut self) -> Result<(), EspError> {
        if self.reset != ResetMode::NoReset {
            return reset::hard_reset(&mut self.port, self.reset).await;
        }
        let mut begin = Vec::with_capacity(20);
        for w in [0u32, 0, FLASH_WRITE_SIZE as u32, 0] {
            begin.extend_from_slice(&w.to_le_bytes());
        }
        if self.stub || self.chip.is_some_and(Chip::flash_begin_has_encrypt_flag) {
            begin.extend_from_slice(&0u32.to_le_bytes());
        }
        let t = self.timeouts.command;
        self.check(Command::FlashBegin, &begin, 0, 0, t).await?;
        // FLASH_END with 1: run the user code (0 would reboot).
        self.check(Command::FlashEnd, &1u32.to_le_bytes(), 0, 0, t).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::esp::protocol::{encode_response, parse_request};
    use std::collections::VecDeque;

    /// A port whose device answers each request with `answer(op, data)`.
    struct Scripted {
        answer: fn(u8, &[u8]) -> Vec<Vec<u8>>,
        queue: VecDeque<Vec<u8>>,
        sent: Vec<u8>,
    }

    impl crate::transport::Link for Scripted {
        fn packet_budget(&self, buf_size: usize) -> usize {
            buf_size
        }
        async fn send(&mut self, packet: &[u8]) -> Result<(), TransportError> {
            let req = parse_request(packet).unwrap();
            self.sent.push(req.op);
            self.queue.extend((self.answer)(req.op, &req.data));
            Ok(())
        }
        async fn recv(&mut self, timeout: Duration) -> Result<Vec<u8>, TransportError> {
            self.queue.pop_front().ok_or(TransportError::Timeout(timeout))
        }
    }

    impl EspPort for Scripted {
        fn set_dtr(&mut self, _: bool) -> std::io::Result<()> {
            Ok(())
        }
        fn set_rts(&mut self, _: bool) -> std::io::Result<()> {
            Ok(())
        }
        fn set_baud(&mut self, _: u32) -> Result<(), TransportError> {
            Ok(())
        }
        fn baud(&self) -> u32 {
            115_200
        }
        async fn recv_raw(&mut self, timeout: Duration) -> Result<Vec<u8>, TransportError> {
            Err(TransportError::Timeout(timeout))
        }
    }

    /// An ESP32-S3 answering like esptool's flasher stub: two status bytes, raw MD5.
    fn s3_stub(op: u8, _data: &[u8]) -> Vec<Vec<u8>> {
        match Command::from_op(op) {
            Some(Command::Sync) => (0..8).map(|_| encode_response(op, 0, &[0, 0])).collect(),
            Some(Command::GetSecurityInfo) => {
                let mut d = vec![0u8; 20];
                d[12..16].copy_from_slice(&9u32.to_le_bytes());
                d.extend_from_slice(&[0, 0]);
                vec![encode_response(op, 0, &d)]
            }
            Some(Command::SpiFlashMd5) => {
                let mut d: Vec<u8> = (0..16).collect();
                d.extend_from_slice(&[0, 0]);
                vec![
                    b"\x01\x08garbage".to_vec(),
                    encode_response(Command::ReadReg.op(), 1, &[0, 0]),
                    encode_response(op, 0, &d),
                ]
            }
            _ => vec![encode_response(op, 0, &[1, rom_error::FAILED_TO_ACT])],
        }
    }

    fn port(answer: fn(u8, &[u8]) -> Vec<Vec<u8>>) -> Scripted {
        Scripted { answer, queue: VecDeque::new(), sent: Vec::new() }
    }

    fn opts() -> ConnectOptions {
        ConnectOptions { reset: ResetMode::NoReset, attempts: 1, timeouts: Timeouts::default() }
    }

    #[tokio::test]
    async fn chip_id_from_security_info_stub_status_and_raw_md5() {
        let mut l = EspLoader::connect(port(s3_stub), opts()).await.unwrap();
        assert!(l.is_stub());
        let info = l.detect_chip().await.unwrap();
        assert_eq!(info, ChipInfo { chip: Chip::Esp32S3, mac: None });
        // Garbage and a stale answer to another command are skipped.
        let md5 = l.flash_md5(0, 16).await.unwrap();
        assert_eq!(md5.to_vec(), (0..16).collect::<Vec<u8>>());
        assert_eq!(l.garbled_frames(), 1);
        let err = l.spi_attach().await.unwrap_err();
        assert!(matches!(err, EspError::Rom { code: 0x06, command: "SPI_ATTACH", .. }), "{err}");
        // No magic-word read was needed.
        assert!(!l.port.sent.contains(&Command::ReadReg.op()));
    }

    #[tokio::test]
    async fn an_unknown_chip_is_named_not_guessed() {
        fn unknown(op: u8, _: &[u8]) -> Vec<Vec<u8>> {
            match Command::from_op(op) {
                Some(Command::Sync) => vec![encode_response(op, 7, &[0, 0, 0, 0])],
                Some(Command::ReadReg) => vec![encode_response(op, 0xDEAD_BEEF, &[0, 0, 0, 0])],
                _ => vec![encode_response(op, 0, &[1, rom_error::INVALID_MESSAGE, 0, 0])],
            }
        }
        let mut l = EspLoader::connect(port(unknown), opts()).await.unwrap();
        assert!(!l.is_stub());
        let err = l.detect_chip().await.unwrap_err();
        assert!(err.to_string().contains("0xDEADBEEF"), "{err}");
        assert_eq!(err.code(), "esp_unknown_chip");
    }
}
