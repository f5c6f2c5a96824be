//! Serial console bytes from a device: the frame decoder must never panic, and every packet it
//! yields goes on to the response parsers.
#![no_main]

use fieldpatch_drivers::smp::commands::{Command, ImageStateRead, ImageUpload, McumgrParams};
use fieldpatch_drivers::smp::frame::FrameDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let mut decoder = FrameDecoder::new(4096);
    let step = usize::from(split).max(1);
    for piece in rest.chunks(step) {
        for packet in decoder.push(piece).into_iter().flatten() {
            assert!(packet.len() <= 4096);
            let seq = packet.get(6).copied().unwrap_or(0);
            let _ = ImageUpload::parse_response(&packet, seq);
            let _ = ImageStateRead::parse_response(&packet, seq);
            let _ = McumgrParams::parse_response(&packet, seq);
        }
    }
});
