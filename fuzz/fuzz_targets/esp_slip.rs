//! The ESP ROM loader's serial line: SLIP decoding (fed in pieces of any size, with boot noise
//! and half frames), then request/response packets and their status bytes, on arbitrary bytes.
//! Errors only, never a panic or a frame beyond the limit; packets survive SLIP framing and
//! re-encode to what was decoded.
#![no_main]

use fieldpatch_drivers::esp::protocol::{
    encode_request, encode_response, parse_request, parse_response, status,
};
use fieldpatch_drivers::esp::slip::{SlipDecoder, encode};
use libfuzzer_sys::fuzz_target;

const MAX_FRAME: usize = 1024;

fn packet(p: &[u8]) {
    if let Ok(r) = parse_response(p) {
        let again = encode_response(r.op, r.value, &r.data);
        assert_eq!(again[..], p[..again.len()]);
        for want in [0, 2, 4, 16] {
            if let Ok(d) = status(&r.data, want) {
                assert_eq!(d.len(), want);
            }
        }
    }
    if let Ok(r) = parse_request(p) {
        let again = encode_request(r.op, &r.data, r.checksum);
        assert_eq!(again[..], p[..again.len()]);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else { return };
    let mut decoder = SlipDecoder::new(MAX_FRAME);
    for piece in rest.chunks(usize::from(step).max(1)) {
        for frame in decoder.push(piece).into_iter().flatten() {
            assert!(frame.len() <= MAX_FRAME);
            packet(&frame);
        }
    }
    packet(rest);
    // Any non-empty packet within the limit survives SLIP framing unchanged, after any noise
    // that ends with a delimiter.
    let p = &rest[..rest.len().min(MAX_FRAME)];
    if !p.is_empty() {
        let mut decoder = SlipDecoder::new(MAX_FRAME);
        let mut got = decoder.push(b"boot noise\r\n");
        for piece in encode(p).chunks(usize::from(step).max(1)) {
            got.extend(decoder.push(piece));
        }
        assert!(matches!(got.as_slice(), [Ok(f)] if f == p), "round trip gave {got:?}");
    }
});
