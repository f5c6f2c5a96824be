//! Visit-log event envelopes (pushed to the server, read back from the store, carried in audit
//! exports) on arbitrary bytes: decoding returns an error, never panics. Whatever decodes
//! re-encodes to the same event; an unsigned event signed with a key verifies and chains from
//! the genesis hash exactly when it is the log's first event; any edit breaks the signature.
#![no_main]

use ed25519_dalek::SigningKey;
use fieldpatch_proto::event::{Event, GENESIS_HASH, UnsignedEvent, verify_chain};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = serde_json::from_slice::<Event>(data) {
        let bytes = serde_json::to_vec(&event).expect("a decoded event encodes");
        let again: Event = serde_json::from_slice(&bytes).expect("an encoded event decodes");
        assert_eq!(again, event);
        assert_eq!(again.hash(), event.hash());
        let _ = event.verify_signature();
        let _ = verify_chain(std::slice::from_ref(&event), None);
        let _ = event.body.kind.tag();
    }
    if let Ok(mut body) = serde_json::from_slice::<UnsignedEvent>(data) {
        let key = SigningKey::from_bytes(&[5; 32]);
        body.signer = hex_of(key.verifying_key().as_bytes());
        let canonical = body.canonical_bytes();
        let back: UnsignedEvent =
            serde_json::from_slice(&canonical).expect("canonical bytes decode");
        assert_eq!(back, body);
        let event = body.clone().sign(&key);
        assert!(event.verify_signature().is_ok(), "a freshly signed event must verify");
        let first = event.body.seq == 1 && event.body.prev_hash == GENESIS_HASH;
        assert_eq!(verify_chain(std::slice::from_ref(&event), None).is_ok(), first);
        let mut edited = event.clone();
        edited.body.seq = edited.body.seq.wrapping_add(1);
        assert!(edited.verify_signature().is_err(), "an edited event must not verify");
    }
});

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
