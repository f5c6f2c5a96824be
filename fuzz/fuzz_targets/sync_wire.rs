//! The sync API's bodies (what the server reads from laptops and laptops read from the server)
//! on arbitrary bytes: `serde_json` decoding returns an error, never panics. Whatever decodes
//! re-encodes to a document that decodes to the same value, and the checks run on received
//! bodies (event chains, countersigned checkpoints, sealed credentials' keys) decide cleanly.
#![no_main]

use fieldpatch_proto::event::{Event, verify_chain};
use fieldpatch_proto::wire::{
    ApiErrorBody, Checkpoint, Device, PlannedNotPatched, PullResponse, PushAck, PushRequest,
    SignedCheckpoint, Site, WorkOrder, parse_key,
};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

/// JSON values equal up to the last bit of a float: `serde_json` parses decimal floats to the
/// nearest value only with its `float_roundtrip` feature, which the product does not turn on.
fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value as V;
    match (a, b) {
        (V::Number(x), V::Number(y)) if x.is_f64() || y.is_f64() => {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x == y || ((x - y) / x.abs().max(y.abs())).abs() < 1e-14,
                _ => false,
            }
        }
        (V::Array(x), V::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (V::Object(x), V::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// Decode `data` as `T`; when it decodes, check that encoding and decoding again is faithful.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(data: &[u8]) -> Option<T> {
    let value: T = serde_json::from_slice(data).ok()?;
    let bytes = serde_json::to_vec(&value).expect("a decoded body encodes");
    let again: T = serde_json::from_slice(&bytes).expect("an encoded body decodes");
    if again != value {
        let a = serde_json::to_value(&value).expect("encodes");
        let b = serde_json::to_value(&again).expect("encodes");
        assert!(same_json(&a, &b), "round trip changed the value:\n{value:?}\n{again:?}");
    }
    Some(value)
}

fn check_events(events: &[Event]) {
    let _ = verify_chain(events, None);
    if let Some(first) = events.first() {
        let _ = verify_chain(events, Some((first.body.seq, first.body.prev_hash.clone())));
    }
    for e in events.iter().take(16) {
        let _ = e.verify_signature();
        assert_eq!(e.hash().len(), 64);
    }
}

fn check_checkpoint(cp: &SignedCheckpoint) {
    let _ = cp.verify(&cp.server_key);
    let _ = cp.verify(&"00".repeat(32));
    let _ = parse_key(&cp.server_key);
    assert!(cp.checkpoint.canonical_bytes().starts_with(fieldpatch_proto::wire::CHECKPOINT_DOMAIN));
}

fuzz_target!(|data: &[u8]| {
    if let Some(req) = round_trip::<PushRequest>(data) {
        check_events(&req.events);
    }
    if let Some(ack) = round_trip::<PushAck>(data) {
        ack.checkpoints.iter().for_each(check_checkpoint);
    }
    if let Some(pull) = round_trip::<PullResponse>(data) {
        let _ = parse_key(&pull.server_key);
        if let Some(doc) = &pull.trust_store {
            let _ = fieldpatch_proto::trust::SignedTrustStore::from_value(doc);
        }
        if let Some(doc) = &pull.catalog_listing {
            let _ = fieldpatch_proto::listing::SignedCatalogListing::from_value(doc);
        }
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        for c in pull.credentials.iter().take(16) {
            let _ = c.open(&key, &pull.technician_id);
        }
    }
    if let Some(cp) = round_trip::<SignedCheckpoint>(data) {
        check_checkpoint(&cp);
    }
    let _ = round_trip::<Checkpoint>(data);
    let _ = round_trip::<ApiErrorBody>(data);
    let _ = round_trip::<Vec<Event>>(data).map(|events| check_events(&events));
    let _ = round_trip::<Vec<Site>>(data);
    let _ = round_trip::<Vec<Device>>(data);
    let _ = round_trip::<Vec<WorkOrder>>(data);
    let _ = round_trip::<Vec<PlannedNotPatched>>(data);
});
