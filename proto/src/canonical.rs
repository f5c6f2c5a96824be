//! Canonical JSON: the exact bytes that signatures cover (bundle manifests, trust stores, catalog
//! listings, rollback approvals), shared by the laptop and the inventory server.
//!
//! Objects have their keys sorted by byte order, there is no whitespace, strings use serde_json's
//! escaping, and numbers must be integers (floats have more than one spelling, so they are refused;
//! decimal values such as CVSS scores are carried as strings). Parsing first runs a visitor that
//! finds duplicate object keys, because serde_json keeps the last of two equal keys silently.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::collections::HashSet;
use std::fmt;

/// Why bytes are not canonical JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CanonicalIssue {
    /// Not JSON at all (syntax error, bad UTF-8, too deeply nested).
    Syntax(String),
    /// An object names the same key twice.
    DuplicateKey(String),
    /// A floating-point number appears.
    Float,
    /// Valid JSON, but not in canonical form (whitespace, key order, escaping).
    NotCanonical,
}

/// Serialize `value` canonically. Fails only when a float appears.
pub fn to_canonical(value: &Value) -> Result<Vec<u8>, CanonicalIssue> {
    let mut out = Vec::new();
    write_value(value, &mut out)?;
    Ok(out)
}

/// Serialize any serializable value canonically.
pub fn to_canonical_of<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, CanonicalIssue> {
    let v = serde_json::to_value(value).map_err(|e| CanonicalIssue::Syntax(e.to_string()))?;
    to_canonical(&v)
}

fn write_value(value: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalIssue> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => {
            if n.is_f64() {
                return Err(CanonicalIssue::Float);
            }
            out.extend_from_slice(n.to_string().as_bytes());
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                write_value(&map[k], out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    // serde_json's string escaping is deterministic; serializing a &str cannot fail.
    let escaped = serde_json::to_string(s).unwrap_or_default();
    out.extend_from_slice(escaped.as_bytes());
}

/// Parse `bytes` as JSON, insisting that it has no duplicate keys and is exactly canonical.
pub fn parse_canonical(bytes: &[u8]) -> Result<Value, CanonicalIssue> {
    if let Some(key) = find_duplicate_key(bytes)? {
        return Err(CanonicalIssue::DuplicateKey(key));
    }
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| CanonicalIssue::Syntax(e.to_string()))?;
    if to_canonical(&value)? != bytes {
        return Err(CanonicalIssue::NotCanonical);
    }
    Ok(value)
}

/// Parse `bytes` as JSON (any formatting) but refuse duplicate keys.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, CanonicalIssue> {
    if let Some(key) = find_duplicate_key(bytes)? {
        return Err(CanonicalIssue::DuplicateKey(key));
    }
    serde_json::from_slice(bytes).map_err(|e| CanonicalIssue::Syntax(e.to_string()))
}

/// The first duplicate object key in `bytes`, if any (nested objects included).
pub fn find_duplicate_key(bytes: &[u8]) -> Result<Option<String>, CanonicalIssue> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let found = DupScan::deserialize(&mut de).map_err(|e| CanonicalIssue::Syntax(e.to_string()))?;
    de.end().map_err(|e| CanonicalIssue::Syntax(e.to_string()))?;
    Ok(found.0)
}

/// Deserializes any JSON value, remembering the first duplicate key found.
struct DupScan(Option<String>);

impl<'de> Deserialize<'de> for DupScan {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DupVisitor)
    }
}

struct DupVisitor;

impl<'de> Visitor<'de> for DupVisitor {
    type Value = DupScan;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<DupScan, E> {
        Ok(DupScan(None))
    }
    fn visit_i64<E>(self, _: i64) -> Result<DupScan, E> {
        Ok(DupScan(None))
    }
    fn visit_u64<E>(self, _: u64) -> Result<DupScan, E> {
        Ok(DupScan(None))
    }
    fn visit_f64<E>(self, _: f64) -> Result<DupScan, E> {
        Ok(DupScan(None))
    }
    fn visit_str<E>(self, _: &str) -> Result<DupScan, E> {
        Ok(DupScan(None))
    }
    fn visit_unit<E>(self) -> Result<DupScan, E> {
        Ok(DupScan(None))
    }
    fn visit_none<E>(self) -> Result<DupScan, E> {
        Ok(DupScan(None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<DupScan, A::Error> {
        let mut first = None;
        while let Some(DupScan(d)) = seq.next_element::<DupScan>()? {
            if first.is_none() {
                first = d;
            }
        }
        Ok(DupScan(first))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DupScan, A::Error> {
        let mut seen = HashSet::new();
        let mut first = None;
        while let Some(key) = map.next_key::<String>()? {
            let DupScan(inner) = map.next_value::<DupScan>()?;
            if first.is_none() {
                if !seen.insert(key.clone()) {
                    first = Some(key);
                } else {
                    first = inner;
                }
            }
        }
        Ok(DupScan(first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_sorts_keys_and_strips_whitespace() {
        let v: Value =
            serde_json::from_str(r#"{ "b": 1, "a": {"d": [1, "x"], "c": null} }"#).unwrap();
        let c = to_canonical(&v).unwrap();
        assert_eq!(c, br#"{"a":{"c":null,"d":[1,"x"]},"b":1}"#);
        assert_eq!(parse_canonical(&c).unwrap(), v);
        assert_eq!(parse_canonical(br#"{"b":1,"a":2}"#).unwrap_err(), CanonicalIssue::NotCanonical);
        assert_eq!(
            to_canonical(&serde_json::json!({"x": 1.5})).unwrap_err(),
            CanonicalIssue::Float
        );
    }

    #[test]
    fn duplicate_keys_are_found_at_any_depth() {
        assert_eq!(
            parse_canonical(br#"{"a":1,"a":2}"#).unwrap_err(),
            CanonicalIssue::DuplicateKey("a".into())
        );
        assert_eq!(
            find_duplicate_key(br#"{"a":[{"k":1,"z":{"q":1,"q":2}}],"b":1}"#).unwrap(),
            Some("q".into())
        );
        assert_eq!(find_duplicate_key(br#"{"a":{"a":1}}"#).unwrap(), None);
        assert!(matches!(find_duplicate_key(b"{"), Err(CanonicalIssue::Syntax(_))));
        assert!(matches!(find_duplicate_key(b"{} x"), Err(CanonicalIssue::Syntax(_))));
    }
}
