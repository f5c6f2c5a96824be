//! SMP response packets (as over UDP): every command's parser must return a value or an error,
//! never panic.
#![no_main]

use fieldpatch_drivers::smp::commands::{
    AppInfo, Command, Echo, ImageErase, ImageStateRead, ImageStateWrite, ImageUpload,
    McumgrParams, Reset,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let seq = data.get(6).copied().unwrap_or(0);
    let _ = Echo::parse_response(data, seq);
    let _ = McumgrParams::parse_response(data, seq);
    let _ = AppInfo::parse_response(data, seq);
    let _ = Reset::parse_response(data, seq);
    let _ = ImageStateRead::parse_response(data, seq);
    let _ = ImageStateWrite::parse_response(data, seq);
    let _ = ImageUpload::parse_response(data, seq);
    let _ = ImageErase::parse_response(data, seq);
});
