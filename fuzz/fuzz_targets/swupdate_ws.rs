//! SWUpdate's status channel on arbitrary bytes: the WebSocket upgrade answer's head, RFC 6455
//! frames decoded one after the other from the front of a buffer and put together into messages,
//! and the daemon's JSON status messages. Errors only, never a panic; every length consumed is
//! within what was there, no frame or message is over the bound, a frame is not decoded before
//! its last byte has arrived, and nothing past a head over the bound is read.
//!
//! The bytes are tried as an upgrade answer (for the key of RFC 6455's example, whose accept
//! the seeds carry) with the frames after its head, and as frames on their own.
#![no_main]

use fieldpatch_drivers::swupdate::WsMessage;
use fieldpatch_drivers::swupdate::ws::{
    Event, Handshake, MAX_HEADER, MAX_MESSAGE, Messages, WsError, decode_frame, parse_upgrade,
};
use libfuzzer_sys::fuzz_target;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Decodes frames from the front of `wire` until it runs out or an error, as the client reads
/// them, and parses every message as the daemon's status message.
fn frames(mut wire: &[u8]) {
    let mut messages = Messages::default();
    loop {
        let room = messages.room();
        assert!(room <= MAX_MESSAGE);
        let (frame, used) = match decode_frame(wire, room) {
            Ok(Some(done)) => done,
            Ok(None) | Err(_) => return,
        };
        assert!(used >= 2 && used <= wire.len(), "took {used} of {} bytes", wire.len());
        assert!(frame.payload.len() <= room, "a frame of {} bytes", frame.payload.len());
        assert!(used >= frame.payload.len() + 2);
        // One byte less is a frame not yet whole, never a different frame or an error.
        assert_eq!(decode_frame(&wire[..used - 1], room), Ok(None));
        assert_eq!(decode_frame(&wire[..used], room), Ok(Some((frame.clone(), used))));
        wire = &wire[used..];
        match messages.take(frame) {
            Ok(Some(Event::Text(text))) => {
                // Each byte gives at most one character (invalid ones become U+FFFD).
                assert!(text.chars().count() <= MAX_MESSAGE);
                status(&text);
            }
            Ok(Some(Event::Ping(payload))) => assert!(payload.len() < 126),
            Ok(Some(Event::Close)) => return,
            Ok(None) => {}
            Err(e) => panic!("a frame decoded within the room was refused: {e}"),
        }
    }
}

fn status(text: &str) {
    if let Ok(m) = WsMessage::parse(text) {
        // What the verdict looks at.
        let _ = (m.kind.as_str(), m.status.as_deref(), m.level.as_deref(), m.text.as_deref());
    }
}

fuzz_target!(|data: &[u8]| {
    match parse_upgrade(data, KEY) {
        Ok(Some((handshake, used))) => {
            assert!(used <= data.len() && used <= MAX_HEADER, "a head of {used} bytes");
            assert!(data[..used].ends_with(b"\r\n\r\n"));
            // A head is read as soon as it is whole, the same whatever follows it.
            assert_eq!(parse_upgrade(&data[..used - 1], KEY), Ok(None));
            assert_eq!(parse_upgrade(&data[..used], KEY), Ok(Some((handshake, used))));
            if handshake == Handshake::Switched {
                frames(&data[used..]);
            }
        }
        Ok(None) => assert!(data.len() < MAX_HEADER),
        Err(WsError::HeaderTooLarge) => assert!(data.len() >= MAX_HEADER),
        Err(_) => {}
    }
    frames(data);
    status(&String::from_utf8_lossy(data));
});
