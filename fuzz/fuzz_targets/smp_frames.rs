//! SMP over a serial console and UDP: console bytes through the frame decoder (fed in pieces of
//! any size), packet headers, and every command's response parser, on arbitrary bytes. Errors
//! only, never a panic; packets and headers re-encode to what was decoded.
#![no_main]

use fieldpatch_drivers::smp::commands::{
    AppInfo, BootloaderInfo, Command, Echo, ImageErase, ImageStateRead, ImageStateWrite,
    ImageUpload, McumgrParams, Reset, check_error, parse_map,
};
use fieldpatch_drivers::smp::frame::{FrameDecoder, encode};
use fieldpatch_drivers::smp::header::{HEADER_LEN, Header};
use libfuzzer_sys::fuzz_target;

const MAX_PACKET: usize = 2048;

fn responses(packet: &[u8]) {
    let seq = packet.get(6).copied().unwrap_or(0);
    let _ = Echo::parse_response(packet, seq);
    let _ = McumgrParams::parse_response(packet, seq);
    let _ = AppInfo::parse_response(packet, seq);
    let _ = BootloaderInfo::parse_response(packet, seq);
    let _ = Reset::parse_response(packet, seq);
    let _ = ImageStateRead::parse_response(packet, seq);
    let _ = ImageStateWrite::parse_response(packet, seq);
    let _ = ImageUpload::parse_response(packet, seq);
    let _ = ImageErase::parse_response(packet, seq);
    if let Ok(h) = Header::parse(packet) {
        let b = h.to_bytes();
        assert_eq!(b[0], packet[0] & 0x1F, "op and version re-encode");
        assert_eq!(b[1..], packet[1..HEADER_LEN]);
        assert_eq!(Header::parse(&b).expect("an encoded header parses"), h);
    }
    if let Ok(map) = parse_map(packet.get(HEADER_LEN..).unwrap_or_default()) {
        let _ = check_error(&map);
    }
}

fuzz_target!(|data: &[u8]| {
    // UDP: one datagram is one packet.
    responses(data);
    // Serial: console bytes fed in pieces of the size the first byte says.
    let Some((&step, rest)) = data.split_first() else { return };
    let mut decoder = FrameDecoder::new(MAX_PACKET);
    for piece in rest.chunks(usize::from(step).max(1)) {
        for packet in decoder.push(piece).into_iter().flatten() {
            assert!(packet.len() <= MAX_PACKET);
            responses(&packet);
        }
    }
    // Any packet within the limit survives the console framing unchanged.
    let packet = &rest[..rest.len().min(MAX_PACKET)];
    if !packet.is_empty() {
        let mut decoder = FrameDecoder::new(MAX_PACKET);
        let wire = encode(packet);
        let mut got = Vec::new();
        for piece in wire.chunks(usize::from(step).max(1)) {
            got.extend(decoder.push(piece));
        }
        assert!(matches!(got.as_slice(), [Ok(p)] if p == packet), "round trip gave {got:?}");
    }
});
