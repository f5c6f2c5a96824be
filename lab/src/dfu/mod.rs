//! A lab USB DFU device, in-process behind the `fieldpatch_drivers::usb` seam (this machine has
//! no USB bus).
//!
//! [`LabDfu`] is one device that answers control transfers the way DFU 1.1 (and, configured so,
//! ST DfuSe) specifies: standard GET_DESCRIPTOR for its device, configuration and string
//! descriptors (built here byte by byte, not with the driver's decoders), DETACH from run-time
//! mode followed by re-enumeration, DNLOAD with dfuDNLOAD-SYNC / dfuDNBUSY / dfuDNLOAD-IDLE,
//! manifestation for tolerant and non-tolerant devices, UPLOAD, CLRSTATUS, GETSTATE, ABORT, and
//! for DfuSe the address pointer, page / mass erase over a NOR-like memory (writes need erased
//! pages) and leave. [`LabUsbBus`] lists one or several of them (identical boards told apart by
//! their serial numbers, [`LabDfuConfig::serial`]) and opens handles; a handle opened before a
//! re-enumeration answers [`UsbError::Disconnected`], as a real one does.
//!
//! Faults ([`LabDfuFaults`]): errVERIFY at manifestation, errADDRESS for a protected address,
//! a stall on the n-th data DNLOAD, a device stuck in dfuDNBUSY or in dfuMANIFEST, and raw bytes
//! in place of a GETSTATUS answer.

use fieldpatch_drivers::usb::descriptor::MemoryMap;
use fieldpatch_drivers::usb::{Setup, UsbBus, UsbControl, UsbDeviceEntry, UsbDeviceIds, UsbError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

// Wire values, written out here on purpose so the lab does not share the driver's tables.
const DETACH: u8 = 0;
const DNLOAD: u8 = 1;
const UPLOAD: u8 = 2;
const GETSTATUS: u8 = 3;
const CLRSTATUS: u8 = 4;
const GETSTATE: u8 = 5;
const ABORT: u8 = 6;

const APP_IDLE: u8 = 0;
const DFU_IDLE: u8 = 2;
const DNLOAD_SYNC: u8 = 3;
const DNBUSY: u8 = 4;
const DNLOAD_IDLE: u8 = 5;
const MANIFEST_SYNC: u8 = 6;
const MANIFEST: u8 = 7;
const MANIFEST_WAIT_RESET: u8 = 8;
const UPLOAD_IDLE: u8 = 9;
const DFU_ERROR: u8 = 10;

/// DFU status codes the lab reports.
pub const OK: u8 = 0x00;
pub const ERR_CHECK_ERASED: u8 = 0x05;
pub const ERR_VERIFY: u8 = 0x07;
pub const ERR_ADDRESS: u8 = 0x08;
pub const ERR_STALLEDPKT: u8 = 0x0F;

/// Fault injection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabDfuFaults {
    /// Report errVERIFY at the end of manifestation.
    pub verify_error_at_manifest: bool,
    /// DfuSe: any set-address, erase or write touching this address fails with errADDRESS.
    pub protected_address: Option<u32>,
    /// Stall the n-th (1-based) DNLOAD that carries data, and enter dfuERROR / errSTALLEDPKT.
    pub stall_on_data_dnload: Option<usize>,
    /// Stay in dfuMANIFEST forever.
    pub never_leave_manifest: bool,
    /// Stay in dfuDNBUSY forever after a DNLOAD.
    pub busy_forever: bool,
    /// Answer GETSTATUS with these bytes instead of a real status.
    pub raw_status: Option<Vec<u8>>,
}

/// What the lab device is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabDfuConfig {
    pub location: String,
    /// The serial number string (`iSerialNumber`); `None` for a device without one.
    pub serial: Option<String>,
    /// Identity in run-time mode (the application) and in DFU mode (the bootloader).
    pub runtime_ids: UsbDeviceIds,
    pub dfu_ids: UsbDeviceIds,
    /// `bmAttributes` of the functional descriptor.
    pub attributes: u8,
    pub transfer_size: u16,
    pub detach_timeout_ms: u16,
    /// `bcdDFUVersion`: 0x0110 or 0x011A (DfuSe).
    pub dfu_version: u16,
    /// One interface string per DFU-mode alternate setting; DfuSe memory maps for DfuSe.
    pub alt_names: Vec<String>,
    /// Plain DFU: bytes of firmware the device can hold.
    pub capacity: usize,
    /// Start in run-time mode (else in DFU mode).
    pub start_in_runtime: bool,
    /// `bwPollTimeout` reported while busy: the time each block or command keeps the device in
    /// dfuDNBUSY. With 0 a block is done at once (dfuDNLOAD-SYNC goes straight to
    /// dfuDNLOAD-IDLE).
    pub poll_timeout_ms: u32,
    /// How long the device is off the bus while it re-enumerates.
    pub reenumerate_delay: Duration,
    pub faults: LabDfuFaults,
}

impl LabDfuConfig {
    /// An STM32F4-like ROM bootloader: 0483:df11, DfuSe, can download/upload, will detach.
    pub fn stm32_dfuse() -> Self {
        Self {
            location: "1-1.4".into(),
            serial: Some("LAB0001".into()),
            runtime_ids: UsbDeviceIds { vendor_id: 0x0483, product_id: 0x5740, bcd_device: 0x0200 },
            dfu_ids: UsbDeviceIds { vendor_id: 0x0483, product_id: 0xdf11, bcd_device: 0x2200 },
            attributes: 0x0B,
            transfer_size: 2048,
            detach_timeout_ms: 255,
            dfu_version: 0x011A,
            alt_names: vec![
                "@Internal Flash  /0x08000000/04*016Kg,01*064Kg,07*128Kg".into(),
                "@Option Bytes  /0x1FFFC000/01*016 e".into(),
                "@OTP Memory /0x1FFF7800/01*512 e,01*016 e".into(),
                "@Device Feature/0xFFFF0000/01*004 e".into(),
            ],
            capacity: 0,
            start_in_runtime: false,
            poll_timeout_ms: 1,
            reenumerate_delay: Duration::from_millis(30),
            faults: LabDfuFaults::default(),
        }
    }

    /// A plain DFU 1.1 device (vendor 1209 = pid.codes test range), manifestation tolerant,
    /// can upload, starts in run-time mode and needs a host reset after DETACH.
    pub fn plain_dfu() -> Self {
        Self {
            location: "3-2".into(),
            serial: Some("LAB0001".into()),
            runtime_ids: UsbDeviceIds { vendor_id: 0x1209, product_id: 0x0001, bcd_device: 0x0100 },
            dfu_ids: UsbDeviceIds { vendor_id: 0x1209, product_id: 0x0002, bcd_device: 0x0100 },
            attributes: 0x07,
            transfer_size: 1024,
            detach_timeout_ms: 1000,
            dfu_version: 0x0110,
            alt_names: vec!["Application".into()],
            capacity: 256 * 1024,
            start_in_runtime: true,
            poll_timeout_ms: 1,
            reenumerate_delay: Duration::from_millis(30),
            faults: LabDfuFaults::default(),
        }
    }
}

/// Which face the device shows on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabMode {
    Runtime,
    Dfu,
}

#[derive(Debug)]
struct Region {
    start: u32,
    page_size: u32,
    erasable: bool,
    writable: bool,
    readable: bool,
    data: Vec<u8>,
}

impl Region {
    fn end(&self) -> u64 {
        self.start as u64 + self.data.len() as u64
    }
}

#[derive(Debug)]
enum Pending {
    None,
    Write { block: u16, data: Vec<u8> },
    Command(Vec<u8>),
}

#[derive(Debug)]
struct Inner {
    cfg: LabDfuConfig,
    mode: LabMode,
    generation: u64,
    absent_until: Option<Instant>,
    detach_armed: bool,
    alt: u8,
    state: u8,
    status: u8,
    pending: Pending,
    manifest_done: bool,
    leaving: bool,
    /// Plain DFU: bytes received in this download, and the committed firmware.
    received: Vec<u8>,
    firmware: Vec<u8>,
    upload_offset: usize,
    /// DfuSe: memory per alternate setting.
    regions: Vec<Vec<Region>>,
    pointer: u32,
    dnload_requests: usize,
    data_dnloads: usize,
    resets: usize,
}

/// The lab DFU device; clones share the device.
#[derive(Debug, Clone)]
pub struct LabDfu {
    inner: Arc<Mutex<Inner>>,
}

/// Lists the lab devices plugged into it (those on the bus at the moment) and opens handles to
/// them by location.
#[derive(Debug, Clone)]
pub struct LabUsbBus {
    devs: Vec<LabDfu>,
}

/// An opened handle.
#[derive(Debug)]
pub struct LabDfuHandle {
    dev: LabDfu,
    generation: u64,
}

fn push_u16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_le_bytes());
}

impl LabDfu {
    pub fn new(cfg: LabDfuConfig) -> Self {
        let mut regions = Vec::new();
        if cfg.dfu_version == 0x011A {
            for name in &cfg.alt_names {
                let map = MemoryMap::parse(name).ok().flatten();
                let segs = map.map(|m| m.segments).unwrap_or_default();
                regions.push(
                    segs.iter()
                        .map(|s| Region {
                            start: s.start,
                            page_size: s.page_size,
                            erasable: s.erasable,
                            writable: s.writable,
                            readable: s.readable,
                            data: vec![0xFF; (s.pages * s.page_size) as usize],
                        })
                        .collect(),
                );
            }
        }
        let mode = if cfg.start_in_runtime { LabMode::Runtime } else { LabMode::Dfu };
        Self {
            inner: Arc::new(Mutex::new(Inner {
                mode,
                generation: 0,
                absent_until: None,
                detach_armed: false,
                alt: 0,
                state: if mode == LabMode::Dfu { DFU_IDLE } else { APP_IDLE },
                status: OK,
                pending: Pending::None,
                manifest_done: false,
                leaving: false,
                received: Vec::new(),
                firmware: Vec::new(),
                upload_offset: 0,
                regions,
                pointer: 0,
                dnload_requests: 0,
                data_dnloads: 0,
                resets: 0,
                cfg,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock leaves usable state behind.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A bus with this device alone.
    pub fn bus(&self) -> LabUsbBus {
        LabUsbBus::new([self.clone()])
    }
    pub fn location(&self) -> String {
        self.lock().cfg.location.clone()
    }
    /// The serial number it reports (`None`: it has none).
    pub fn serial(&self) -> Option<String> {
        self.lock().cfg.serial.clone()
    }
    pub fn mode(&self) -> LabMode {
        self.lock().mode
    }
    /// Every DNLOAD request received (commands, data and zero-length).
    pub fn dnload_requests(&self) -> usize {
        self.lock().dnload_requests
    }
    pub fn resets(&self) -> usize {
        self.lock().resets
    }
    /// Plain DFU: the firmware committed by the last manifestation.
    pub fn firmware(&self) -> Vec<u8> {
        self.lock().firmware.clone()
    }
    /// DfuSe: `len` bytes of alternate setting `alt`'s memory at `address` (0xFF where unmapped).
    pub fn memory(&self, alt: u8, address: u32, len: usize) -> Vec<u8> {
        let g = self.lock();
        (0..len)
            .map(|i| {
                let a = address as u64 + i as u64;
                g.regions
                    .get(alt as usize)
                    .and_then(|rs| rs.iter().find(|r| (r.start as u64..r.end()).contains(&a)))
                    .map(|r| r.data[(a - r.start as u64) as usize])
                    .unwrap_or(0xFF)
            })
            .collect()
    }
    pub fn set_faults(&self, faults: LabDfuFaults) {
        self.lock().cfg.faults = faults;
    }
    /// The DFU state code the device is in.
    pub fn state(&self) -> u8 {
        self.lock().state
    }
}

impl Inner {
    fn present(&mut self) -> bool {
        match self.absent_until {
            Some(t) if Instant::now() < t => false,
            _ => {
                self.absent_until = None;
                true
            }
        }
    }

    /// Drop off the bus and come back in `mode`.
    fn reenumerate(&mut self, mode: LabMode) {
        self.generation += 1;
        self.mode = mode;
        self.absent_until = Some(Instant::now() + self.cfg.reenumerate_delay);
        self.detach_armed = false;
        self.state = if mode == LabMode::Dfu { DFU_IDLE } else { APP_IDLE };
        self.status = OK;
        self.pending = Pending::None;
        self.manifest_done = false;
        self.leaving = false;
        self.alt = 0;
    }

    fn ids(&self) -> UsbDeviceIds {
        match self.mode {
            LabMode::Runtime => self.cfg.runtime_ids,
            LabMode::Dfu => self.cfg.dfu_ids,
        }
    }

    fn device_descriptor(&self) -> Vec<u8> {
        let ids = self.ids();
        let mut d = vec![18, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 64];
        push_u16(&mut d, ids.vendor_id);
        push_u16(&mut d, ids.product_id);
        push_u16(&mut d, ids.bcd_device);
        let i_serial = if self.cfg.serial.is_some() { 3 } else { 0 };
        d.extend_from_slice(&[1, 2, i_serial, 1]);
        d
    }

    fn functional_descriptor(&self) -> Vec<u8> {
        let mut f = vec![9, 0x21, self.cfg.attributes];
        push_u16(&mut f, self.cfg.detach_timeout_ms);
        push_u16(&mut f, self.cfg.transfer_size);
        push_u16(&mut f, self.cfg.dfu_version);
        f
    }

    fn config_descriptor(&self) -> Vec<u8> {
        let mut body = Vec::new();
        let n_interfaces = match self.mode {
            LabMode::Runtime => {
                // The application's own interface, then the DFU run-time interface.
                body.extend_from_slice(&[9, 0x04, 0, 0, 0, 0xFF, 0x00, 0x00, 0]);
                body.extend_from_slice(&[9, 0x04, 1, 0, 0, 0xFE, 0x01, 0x01, 4]);
                body.extend(self.functional_descriptor());
                2
            }
            LabMode::Dfu => {
                for (alt, _) in self.cfg.alt_names.iter().enumerate() {
                    body.extend_from_slice(&[
                        9,
                        0x04,
                        0,
                        alt as u8,
                        0,
                        0xFE,
                        0x01,
                        0x02,
                        4 + alt as u8,
                    ]);
                }
                body.extend(self.functional_descriptor());
                1
            }
        };
        let total = 9 + body.len() as u16;
        let mut d = vec![9, 0x02];
        push_u16(&mut d, total);
        d.extend_from_slice(&[n_interfaces, 1, 0, 0xC0, 50]);
        d.extend(body);
        d
    }

    fn string_descriptor(&self, index: u8) -> Option<Vec<u8>> {
        let text = match (index, self.mode) {
            (0, _) => return Some(vec![4, 0x03, 0x09, 0x04]),
            (1, _) => "Fieldpatch Lab".to_string(),
            (2, LabMode::Dfu) => "Lab DFU bootloader".to_string(),
            (2, LabMode::Runtime) => "Lab application".to_string(),
            (3, _) => self.cfg.serial.clone()?,
            (4, LabMode::Runtime) => "DFU run-time".to_string(),
            (i, LabMode::Dfu) if i >= 4 => self.cfg.alt_names.get((i - 4) as usize)?.clone(),
            _ => return None,
        };
        let units: Vec<u16> = text.encode_utf16().take(126).collect();
        let mut d = vec![2 + 2 * units.len() as u8, 0x03];
        for u in units {
            push_u16(&mut d, u);
        }
        Some(d)
    }

    fn status_bytes(&self, state: u8) -> Vec<u8> {
        let p = self.cfg.poll_timeout_ms.to_le_bytes();
        vec![self.status, p[0], p[1], p[2], state, 0]
    }

    fn fail(&mut self, status: u8) {
        self.state = DFU_ERROR;
        self.status = status;
    }

    /// Stall a request that is not valid now: dfuERROR / errSTALLEDPKT, as DFU 1.1 requires.
    fn stall(&mut self) -> UsbError {
        if self.mode == LabMode::Dfu {
            self.fail(ERR_STALLEDPKT);
        }
        UsbError::Stall
    }

    fn is_dfuse(&self) -> bool {
        self.cfg.dfu_version == 0x011A
    }

    fn protected(&self, from: u64, len: u64) -> bool {
        self.cfg
            .faults
            .protected_address
            .is_some_and(|p| (from..from + len.max(1)).contains(&(p as u64)))
    }

    /// The regions covering `[address, address+len)`, or errADDRESS.
    fn span(&self, address: u32, len: usize, need: fn(&Region) -> bool) -> Result<(), u8> {
        let rs = self.regions.get(self.alt as usize).ok_or(ERR_ADDRESS)?;
        let end = address as u64 + len as u64;
        let mut at = address as u64;
        while at < end {
            let r = rs
                .iter()
                .find(|r| (r.start as u64..r.end()).contains(&at) && need(r))
                .ok_or(ERR_ADDRESS)?;
            at = r.end();
        }
        Ok(())
    }

    fn for_bytes(&mut self, address: u32, len: usize, mut f: impl FnMut(&mut u8, usize)) {
        let alt = self.alt as usize;
        for i in 0..len {
            let a = address as u64 + i as u64;
            if let Some(r) =
                self.regions[alt].iter_mut().find(|r| (r.start as u64..r.end()).contains(&a))
            {
                let off = (a - r.start as u64) as usize;
                f(&mut r.data[off], i);
            }
        }
    }

    fn dfuse_command(&mut self, cmd: &[u8]) -> Result<(), u8> {
        let addr = |c: &[u8]| -> Result<u32, u8> {
            c.get(1..5).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).ok_or(ERR_STALLEDPKT)
        };
        match cmd.first() {
            Some(0x21) if cmd.len() == 5 => {
                let a = addr(cmd)?;
                if self.protected(a as u64, 1) {
                    return Err(ERR_ADDRESS);
                }
                self.span(a, 1, |_| true)?;
                self.pointer = a;
                Ok(())
            }
            Some(0x41) if cmd.len() == 1 => {
                let alt = self.alt as usize;
                for r in self.regions.get_mut(alt).into_iter().flatten().filter(|r| r.erasable) {
                    r.data.fill(0xFF);
                }
                Ok(())
            }
            Some(0x41) if cmd.len() == 5 => {
                let a = addr(cmd)?;
                let alt = self.alt as usize;
                let r = self.regions[alt]
                    .iter()
                    .find(|r| (r.start as u64..r.end()).contains(&(a as u64)) && r.erasable)
                    .ok_or(ERR_ADDRESS)?;
                let page = (a - r.start) / r.page_size.max(1) * r.page_size;
                if self.protected(r.start as u64 + page as u64, r.page_size as u64) {
                    return Err(ERR_ADDRESS);
                }
                let (start, size) = (r.start + page, r.page_size as usize);
                self.for_bytes(start, size, |b, _| *b = 0xFF);
                Ok(())
            }
            Some(0x92) if cmd.len() == 1 => Ok(()),
            _ => Err(ERR_STALLEDPKT),
        }
    }

    fn dfuse_write(&mut self, block: u16, data: &[u8]) -> Result<(), u8> {
        let a = self.pointer as u64 + (block as u64 - 2) * self.cfg.transfer_size as u64;
        let a = u32::try_from(a).map_err(|_| ERR_ADDRESS)?;
        if self.protected(a as u64, data.len() as u64) {
            return Err(ERR_ADDRESS);
        }
        self.span(a, data.len(), |r| r.writable)?;
        // NOR flash: erasable memory must be erased before it is programmed.
        let alt = self.alt as usize;
        let erased = (0..data.len() as u64).all(|i| {
            let at = a as u64 + i;
            self.regions[alt]
                .iter()
                .find(|r| (r.start as u64..r.end()).contains(&at))
                .is_none_or(|r| !r.erasable || r.data[(at - r.start as u64) as usize] == 0xFF)
        });
        if !erased {
            return Err(ERR_CHECK_ERASED);
        }
        self.for_bytes(a, data.len(), |b, i| *b = data[i]);
        Ok(())
    }

    fn getstatus(&mut self) -> Result<Vec<u8>, UsbError> {
        if let Some(raw) = &self.cfg.faults.raw_status {
            return Ok(raw.clone());
        }
        match self.state {
            DNLOAD_SYNC => {
                let pending = std::mem::replace(&mut self.pending, Pending::None);
                let result = match pending {
                    Pending::Write { block, data } if self.is_dfuse() => {
                        self.dfuse_write(block, &data)
                    }
                    Pending::Write { data, .. } => {
                        if self.received.len() + data.len() > self.cfg.capacity {
                            Err(ERR_ADDRESS)
                        } else {
                            self.received.extend_from_slice(&data);
                            Ok(())
                        }
                    }
                    Pending::Command(c) => self.dfuse_command(&c),
                    Pending::None => Ok(()),
                };
                match result {
                    // A device without a program time has the block done when it answers
                    // (DFU 1.1: "block complete" goes from dfuDNLOAD-SYNC to dfuDNLOAD-IDLE).
                    Ok(()) if self.cfg.poll_timeout_ms == 0 && !self.cfg.faults.busy_forever => {
                        self.state = DNLOAD_IDLE;
                        Ok(self.status_bytes(DNLOAD_IDLE))
                    }
                    Ok(()) => {
                        self.state = DNBUSY;
                        Ok(self.status_bytes(DNBUSY))
                    }
                    Err(status) => {
                        self.fail(status);
                        Ok(self.status_bytes(DFU_ERROR))
                    }
                }
            }
            DNBUSY if self.cfg.faults.busy_forever => Ok(self.status_bytes(DNBUSY)),
            DNBUSY => {
                self.state = DNLOAD_IDLE;
                Ok(self.status_bytes(DNLOAD_IDLE))
            }
            MANIFEST_SYNC if self.manifest_done => {
                self.state = DFU_IDLE;
                self.manifest_done = false;
                Ok(self.status_bytes(DFU_IDLE))
            }
            MANIFEST_SYNC if self.leaving => {
                // DfuSe leave: answer, then jump to the application and drop off the bus.
                let answer = self.status_bytes(MANIFEST);
                self.reenumerate(LabMode::Runtime);
                Ok(answer)
            }
            MANIFEST_SYNC => {
                self.state = MANIFEST;
                Ok(self.status_bytes(MANIFEST))
            }
            MANIFEST => {
                if self.cfg.faults.never_leave_manifest {
                    return Ok(self.status_bytes(MANIFEST));
                }
                if self.cfg.faults.verify_error_at_manifest {
                    self.fail(ERR_VERIFY);
                    return Ok(self.status_bytes(DFU_ERROR));
                }
                self.firmware = std::mem::take(&mut self.received);
                if self.cfg.attributes & 0x04 != 0 {
                    self.manifest_done = true;
                    self.state = MANIFEST_SYNC;
                    Ok(self.status_bytes(MANIFEST_SYNC))
                } else {
                    self.state = MANIFEST_WAIT_RESET;
                    Ok(self.status_bytes(MANIFEST_WAIT_RESET))
                }
            }
            // Only a USB reset gets a device out of dfuMANIFEST-WAIT-RESET.
            MANIFEST_WAIT_RESET => Err(UsbError::Stall),
            s => Ok(self.status_bytes(s)),
        }
    }

    fn dnload(&mut self, block: u16, data: &[u8]) -> Result<usize, UsbError> {
        self.dnload_requests += 1;
        if !data.is_empty() {
            self.data_dnloads += 1;
            if self.cfg.faults.stall_on_data_dnload == Some(self.data_dnloads) {
                self.fail(ERR_STALLEDPKT);
                return Err(UsbError::Stall);
            }
        }
        if self.cfg.attributes & 0x01 == 0 {
            return Err(self.stall());
        }
        match (self.state, data.is_empty()) {
            (DFU_IDLE | DNLOAD_IDLE, false) => {
                if data.len() > self.cfg.transfer_size as usize {
                    return Err(self.stall());
                }
                if self.is_dfuse() {
                    self.pending = match block {
                        0 => Pending::Command(data.to_vec()),
                        1 => return Err(self.stall()),
                        b => Pending::Write { block: b, data: data.to_vec() },
                    };
                } else {
                    if self.state == DFU_IDLE {
                        self.received.clear();
                    }
                    self.pending = Pending::Write { block, data: data.to_vec() };
                }
                self.state = DNLOAD_SYNC;
                Ok(data.len())
            }
            (DNLOAD_IDLE, true) => {
                self.leaving = self.is_dfuse();
                self.state = MANIFEST_SYNC;
                Ok(0)
            }
            // DfuSe leave may also be sent straight from dfuIDLE.
            (DFU_IDLE, true) if self.is_dfuse() => {
                self.leaving = true;
                self.state = MANIFEST_SYNC;
                Ok(0)
            }
            _ => Err(self.stall()),
        }
    }

    fn upload(&mut self, block: u16, buf: &mut [u8]) -> Result<usize, UsbError> {
        if self.cfg.attributes & 0x02 == 0 || !matches!(self.state, DFU_IDLE | UPLOAD_IDLE) {
            return Err(self.stall());
        }
        if self.is_dfuse() {
            if block == 0 {
                let cmds = [0x00, 0x21, 0x41, 0x92];
                let n = cmds.len().min(buf.len());
                buf[..n].copy_from_slice(&cmds[..n]);
                return Ok(n);
            }
            if block == 1 {
                return Err(self.stall());
            }
            // AN3156: ((wBlockNum - 2) x wTransferSize) + the address pointer, whatever the
            // length asked for (the last block of a read may be shorter).
            let a = self.pointer as u64 + (block as u64 - 2) * u64::from(self.cfg.transfer_size);
            let Ok(a) = u32::try_from(a) else { return Err(self.stall()) };
            if self.span(a, buf.len(), |r| r.readable).is_err() {
                self.fail(ERR_ADDRESS);
                return Err(UsbError::Stall);
            }
            let mut tmp = vec![0u8; buf.len()];
            self.for_bytes(a, buf.len(), |b, i| tmp[i] = *b);
            buf.copy_from_slice(&tmp);
            self.state = UPLOAD_IDLE;
            return Ok(buf.len());
        }
        if self.state == DFU_IDLE {
            self.upload_offset = 0;
        }
        let from = self.upload_offset.min(self.firmware.len());
        let n = buf.len().min(self.firmware.len() - from);
        buf[..n].copy_from_slice(&self.firmware[from..from + n]);
        self.upload_offset += n;
        self.state = if n < buf.len() { DFU_IDLE } else { UPLOAD_IDLE };
        Ok(n)
    }
}

impl LabUsbBus {
    /// A bus with `devices` plugged in (each at its own [`LabDfuConfig::location`]).
    pub fn new(devices: impl IntoIterator<Item = LabDfu>) -> Self {
        Self { devs: devices.into_iter().collect() }
    }
}

impl UsbBus for LabUsbBus {
    type Device = LabDfuHandle;

    fn list(&self) -> Result<Vec<UsbDeviceEntry>, UsbError> {
        let mut entries = Vec::new();
        for dev in &self.devs {
            let mut g = dev.lock();
            if !g.present() {
                continue;
            }
            let interfaces = fieldpatch_drivers::usb::descriptor::parse_config_descriptor(
                &g.config_descriptor(),
            )?;
            entries.push(UsbDeviceEntry {
                location: g.cfg.location.clone(),
                ids: g.ids(),
                serial: g.cfg.serial.clone(),
                interfaces,
            });
        }
        Ok(entries)
    }

    fn open(&self, location: &str) -> Result<LabDfuHandle, UsbError> {
        for dev in &self.devs {
            let mut g = dev.lock();
            if g.cfg.location == location && g.present() {
                return Ok(LabDfuHandle { dev: dev.clone(), generation: g.generation });
            }
        }
        Err(UsbError::NotFound)
    }
}

impl LabDfuHandle {
    fn live(&self) -> Result<MutexGuard<'_, Inner>, UsbError> {
        let g = self.dev.lock();
        if g.generation != self.generation { Err(UsbError::Disconnected) } else { Ok(g) }
    }
}

impl UsbControl for LabDfuHandle {
    fn control_in(
        &mut self,
        s: Setup,
        buf: &mut [u8],
        _timeout: Duration,
    ) -> Result<usize, UsbError> {
        let mut g = self.live()?;
        let answer = match (s.request_type, s.request) {
            (0x80, 0x06) => {
                let [kind, index] = [(s.value >> 8) as u8, s.value as u8];
                match kind {
                    0x01 => g.device_descriptor(),
                    0x02 if index == 0 => g.config_descriptor(),
                    0x03 => g.string_descriptor(index).ok_or(UsbError::Stall)?,
                    _ => return Err(UsbError::Stall),
                }
            }
            (0xA1, GETSTATUS) if g.mode == LabMode::Dfu => g.getstatus()?,
            (0xA1, GETSTATUS) => g.status_bytes(APP_IDLE),
            (0xA1, GETSTATE) => vec![g.state],
            (0xA1, UPLOAD) if g.mode == LabMode::Dfu => return g.upload(s.value, buf),
            _ => return Err(g.stall()),
        };
        let n = answer.len().min(buf.len());
        buf[..n].copy_from_slice(&answer[..n]);
        Ok(n)
    }

    fn control_out(
        &mut self,
        s: Setup,
        data: &[u8],
        _timeout: Duration,
    ) -> Result<usize, UsbError> {
        let mut g = self.live()?;
        if s.request_type != 0x21 {
            return Err(g.stall());
        }
        match (g.mode, s.request) {
            (LabMode::Runtime, DETACH) => {
                if g.cfg.attributes & 0x08 != 0 {
                    // bitWillDetach: the device drops off the bus and comes back in DFU mode.
                    g.reenumerate(LabMode::Dfu);
                } else {
                    g.detach_armed = true;
                }
                Ok(0)
            }
            (LabMode::Dfu, DNLOAD) => g.dnload(s.value, data),
            (LabMode::Dfu, CLRSTATUS) if g.state == DFU_ERROR => {
                g.state = DFU_IDLE;
                g.status = OK;
                Ok(0)
            }
            (LabMode::Dfu, ABORT)
                if matches!(
                    g.state,
                    DFU_IDLE | DNLOAD_SYNC | DNLOAD_IDLE | MANIFEST_SYNC | UPLOAD_IDLE
                ) =>
            {
                g.state = DFU_IDLE;
                g.pending = Pending::None;
                g.received.clear();
                Ok(0)
            }
            _ => Err(g.stall()),
        }
    }

    fn select_interface(&mut self, interface: u8, alt_setting: u8) -> Result<(), UsbError> {
        let mut g = self.live()?;
        let alts = match g.mode {
            LabMode::Dfu if interface == 0 => g.cfg.alt_names.len(),
            LabMode::Runtime if interface <= 1 => 1,
            _ => 0,
        };
        if (alt_setting as usize) < alts {
            g.alt = alt_setting;
            Ok(())
        } else {
            Err(UsbError::NotFound)
        }
    }

    fn reset(&mut self) -> Result<(), UsbError> {
        let mut g = self.live()?;
        g.resets += 1;
        let next = match g.mode {
            LabMode::Runtime if g.detach_armed => LabMode::Dfu,
            LabMode::Runtime => LabMode::Runtime,
            // Out of DFU mode: run the (new) firmware.
            LabMode::Dfu => LabMode::Runtime,
        };
        g.reenumerate(next);
        Ok(())
    }
}
