//! Short answers from devices and gateways on the network, on arbitrary bytes: an SWUpdate
//! gateway's `WWW-Authenticate: Digest` challenge and a device's mDNS TXT record. Errors only,
//! never a panic; an answer to a challenge parses back to the challenge's realm and nonce, and a
//! TXT record made from an identity reads back as that identity.
#![no_main]

use fieldpatch_drivers::discovery::mdns::{identity_from_txt, txt_record};
use fieldpatch_drivers::swupdate::digest::Challenge;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(c) = Challenge::parse(&text) {
        let auth = c.authorization_with("admin", "pa\"ss", "POST", "/upload?x=1", "0a4f113b", 1);
        let back = Challenge::parse(&auth).expect("an answer parses as digest parameters");
        assert_eq!((&back.realm, &back.nonce), (&c.realm, &c.nonce), "{auth}");
        assert_eq!(back.opaque, c.opaque, "{auth}");
    }
    // TXT entries: `key=value` strings separated by NUL bytes.
    let txt: BTreeMap<String, String> = text
        .split('\0')
        .filter_map(|e| e.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let identity = identity_from_txt(&txt);
    let record: BTreeMap<String, String> = txt_record(&identity).into_iter().collect();
    for (k, v) in &record {
        assert!(k.len() + 1 + v.len() <= 255, "TXT entry {k} is over 255 bytes");
    }
    let short = [
        &identity.vendor,
        &identity.model,
        &identity.hardware_revision,
        &identity.serial_number,
        &identity.firmware_version,
    ]
    .iter()
    .all(|f| f.as_ref().is_none_or(|v| v.len() <= 240));
    if short {
        assert_eq!(identity_from_txt(&record), identity);
    }
});
