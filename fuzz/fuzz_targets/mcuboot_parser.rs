//! MCUboot image parser and checks on arbitrary bytes: errors only, never a panic.
//!
//! Each input is parsed as is and again behind a valid header magic, so the fuzzer spends its time
//! on header fields and TLV areas rather than on finding the magic.
#![no_main]

use ed25519_dalek::SigningKey;
use fieldpatch_core::image::mcuboot::{IMAGE_MAGIC, McubootImage};
use libfuzzer_sys::fuzz_target;

fn check(data: &[u8]) {
    if let Ok(img) = McubootImage::parse(data) {
        let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
        let _ = img.verify_hash();
        let _ = img.verify_ed25519(&[key]);
        let _ = img.dependencies();
        let _ = img.summary();
        assert!(img.total_len() <= data.len());
        assert!(img.body().len() == img.header.img_size as usize);
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut with_magic = IMAGE_MAGIC.to_le_bytes().to_vec();
    with_magic.extend_from_slice(data);
    check(&with_magic);
});
