//! MCUboot image parser and checks on arbitrary bytes: errors only, never a panic.
#![no_main]

use ed25519_dalek::SigningKey;
use fieldpatch_core::image::mcuboot::McubootImage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = McubootImage::parse(data) {
        let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
        let _ = img.verify_hash();
        let _ = img.verify_ed25519(&[key]);
        let _ = img.dependencies();
        let _ = img.summary();
        assert!(img.total_len() <= data.len());
        assert!(img.body().len() == img.header.img_size as usize);
    }
});
