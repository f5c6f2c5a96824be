//! A fake MCUboot-like device and an in-memory event sink for the pipeline's and the session's
//! unit tests (end-to-end tests use the lab devices over real ptys and sockets).
//!
//! Other crates' tests get it with the `test-utils` feature of fieldpatch-core.

use super::*;
use crate::visitlog::EventKind;

#[derive(Debug, Default)]
struct Inner {
    active: (Version, Vec<u8>),
    confirmed: bool,
    previous: Option<(Version, Vec<u8>)>,
    uploaded: Option<(Version, Vec<u8>)>,
    pending_test: bool,
    fail_boot: bool,
    corrupt_upload: bool,
    interrupt_uploads: u32,
    lose_test_boot_answers: u32,
    uploads: u32,
}

/// A shared fake device; [`FakeDevice::open`] gives a connection to it.
#[derive(Debug, Clone, Default)]
pub struct FakeDevice(Arc<Mutex<Inner>>);

impl FakeDevice {
    /// A device running `version`, which must parse: it is a literal of the test using the fake.
    #[allow(
        clippy::expect_used,
        reason = "a test double built from a test's literal: a version that does not parse is the test's bug"
    )]
    pub fn new(version: &str) -> Self {
        let v: Version = version.parse().expect("the fake device's version parses");
        let d = FakeDevice::default();
        d.0.lock().unwrap_or_else(|e| e.into_inner()).active =
            (v, Sha256::digest(version.as_bytes()).to_vec());
        d.0.lock().unwrap_or_else(|e| e.into_inner()).confirmed = true;
        d
    }
    pub fn set_fail_boot(&self, on: bool) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).fail_boot = on;
    }
    pub fn set_corrupt_upload(&self, on: bool) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).corrupt_upload = on;
    }
    pub fn set_interrupt_uploads(&self, n: u32) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).interrupt_uploads = n;
    }
    /// The next `n` test-boot requests mark the image pending but their answer is lost (no
    /// reset follows).
    pub fn set_lose_test_boot_answers(&self, n: u32) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).lose_test_boot_answers = n;
    }
    pub fn uploads(&self) -> u32 {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).uploads
    }
    pub fn snapshot(&self) -> DeviceState {
        let i = self.0.lock().unwrap_or_else(|e| e.into_inner());
        DeviceState {
            running_version: Some(i.active.0),
            running_hash: Some(i.active.1.clone()),
            confirmed: i.confirmed,
            pending_hash: i
                .uploaded
                .as_ref()
                .filter(|u| i.pending_test && u.1 != i.active.1)
                .map(|u| u.1.clone()),
        }
    }
    pub fn open(&self) -> FakeTarget {
        FakeTarget(self.clone())
    }
}

#[derive(Debug)]
pub struct FakeTarget(FakeDevice);

#[async_trait]
impl FlashTarget for FakeTarget {
    fn describe(&self) -> String {
        "fake device".into()
    }
    async fn state(&mut self) -> Result<DeviceState, TargetError> {
        Ok(self.0.snapshot())
    }
    async fn upload(
        &mut self,
        image: &[u8],
        progress: &dyn Progress,
    ) -> Result<UploadReport, TargetError> {
        let total = image.len() as u64;
        {
            let mut i = self.0.0.lock().unwrap_or_else(|e| e.into_inner());
            i.uploads += 1;
            if i.interrupt_uploads > 0 {
                i.interrupt_uploads -= 1;
                return Err(TargetError::Timeout(Duration::from_millis(10)));
            }
        }
        for done in (0..=total).step_by((total as usize / 8).max(1)) {
            progress.transfer(TransferProgress {
                done,
                total,
                elapsed: Duration::from_millis(done),
            });
        }
        progress.transfer(TransferProgress {
            done: total,
            total,
            elapsed: Duration::from_millis(total),
        });
        let mut i = self.0.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut hash = Sha256::digest(image).to_vec();
        if i.corrupt_upload {
            hash[0] ^= 1;
        }
        let v = Version::new(2, 0, 0, 0);
        i.uploaded = Some((v, hash.clone()));
        Ok(UploadReport { device_hash: Some(hash), check: HashCheck::DeviceReported })
    }
    fn supports_test_boot(&self) -> bool {
        true
    }
    async fn test_boot(&mut self, image_hash: &[u8]) -> Result<(), TargetError> {
        let mut i = self.0.0.lock().unwrap_or_else(|e| e.into_inner());
        let up = i.uploaded.clone().ok_or(TargetError::reported_transient("no image in slot 1"))?;
        if up.1 != image_hash {
            return Err(TargetError::reported_transient("hash does not match slot 1"));
        }
        i.pending_test = true;
        if i.lose_test_boot_answers > 0 {
            i.lose_test_boot_answers -= 1;
            return Err(TargetError::Timeout(Duration::from_millis(10)));
        }
        // Reset: MCUboot swaps in the test image unless it fails to boot.
        if !i.fail_boot {
            let old = std::mem::replace(&mut i.active, up);
            i.previous = Some(old);
            i.confirmed = false;
        }
        Ok(())
    }
    async fn confirm(&mut self, image_hash: &[u8]) -> Result<(), TargetError> {
        let mut i = self.0.0.lock().unwrap_or_else(|e| e.into_inner());
        if i.active.1 != image_hash {
            return Err(TargetError::reported_transient("not running that image"));
        }
        i.confirmed = true;
        i.pending_test = false;
        Ok(())
    }
    async fn revert(&mut self) -> Result<(), TargetError> {
        let mut i = self.0.0.lock().unwrap_or_else(|e| e.into_inner());
        if !i.confirmed {
            if let Some(prev) = i.previous.take() {
                i.active = prev;
            }
            i.confirmed = true;
        }
        i.pending_test = false;
        Ok(())
    }
    async fn reconnect(&mut self, _timeout: Duration) -> Result<DeviceState, TargetError> {
        Ok(self.0.snapshot())
    }
}

/// Records event kinds in memory.
#[derive(Debug, Default)]
pub struct MemorySink(pub Mutex<Vec<(String, EventKind)>>);

impl MemorySink {
    pub fn tags(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(_, k)| k.tag().to_string())
            .collect()
    }
    pub fn for_device(&self, id: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(d, _)| d == id)
            .map(|(_, k)| k.tag().to_string())
            .collect()
    }
}

#[async_trait]
impl EventSink for MemorySink {
    async fn record(&self, device: &str, kind: EventKind) -> Result<(), SinkError> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push((device.to_string(), kind));
        Ok(())
    }
}
