//! The audit archive reader reserves memory for what an archive holds, not for what its tar
//! headers claim: a 1 KiB file whose header announces 200 MiB must not make the verifier reserve
//! 200 MiB. Its own test binary, because it counts allocations with a global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if TRACKING.with(Cell::get) {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// A ustar header for `name` claiming `size` bytes, with its checksum.
fn ustar_header(name: &str, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

#[test]
fn a_header_claiming_more_than_the_archive_holds_reserves_only_what_is_there() {
    // Found by the `audit_archive` fuzz target (with libFuzzer's 128 MiB allocation limit).
    let mut archive = ustar_header("events.jsonl", 200 << 20).to_vec();
    archive.extend_from_slice(&[b'x'; 512]);
    TRACKING.with(|t| t.set(true));
    let unpacked = fieldpatch_proto::audit::unpack(&archive);
    let verified = fieldpatch_proto::audit::verify(&archive, None);
    TRACKING.with(|t| t.set(false));
    assert!(unpacked.is_err(), "a truncated archive is refused");
    assert!(verified.is_err(), "a truncated archive does not verify");
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        largest <= 64 << 10,
        "reading a {}-byte archive reserved {largest} bytes at once",
        archive.len()
    );
}
