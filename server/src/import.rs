//! Importing sites and devices from CSV or JSON files (admin CLI).
//!
//! JSON files hold an array of objects with the API's field names. CSV files have a header row
//! naming the same fields (any order; unknown columns are an error so typos do not pass silently);
//! fields may be quoted with `"` (a doubled `""` inside quotes is one quote).

use fieldpatch_proto::wire::{Device, Site};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::path::Path;

/// Why an import file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {detail}")]
    Format { path: String, detail: String },
}

fn parse_csv_line(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cur.push(c),
            (false, '"') if cur.is_empty() && !was_quoted => {
                quoted = true;
                was_quoted = true;
            }
            (false, ',') => {
                out.push(std::mem::take(&mut cur));
                was_quoted = false;
            }
            (false, c) => cur.push(c),
        }
    }
    if quoted {
        return Err("unterminated quoted field".into());
    }
    out.push(cur);
    Ok(out)
}

fn read_rows<T: DeserializeOwned>(path: &Path, allowed: &[&str]) -> Result<Vec<T>, ImportError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|source| ImportError::Read { path: p.clone(), source })?;
    let fmt = |detail: String| ImportError::Format { path: p.clone(), detail };
    let is_json = path.extension().map(|e| e.eq_ignore_ascii_case("json")).unwrap_or(false)
        || text.trim_start().starts_with('[');
    if is_json {
        return serde_json::from_str(&text)
            .map_err(|e| fmt(format!("not a JSON array of records: {e}")));
    }
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (_, header) =
        lines.next().ok_or_else(|| fmt("empty file: expected a header row".into()))?;
    let header: Vec<String> = parse_csv_line(header)
        .map_err(|e| fmt(format!("line 1: {e}")))?
        .into_iter()
        .map(|h| h.trim().to_string())
        .collect();
    for h in &header {
        if !allowed.contains(&h.as_str()) {
            return Err(fmt(format!(
                "unknown column {h:?}; expected some of {}",
                allowed.join(", ")
            )));
        }
    }
    let mut out = Vec::new();
    for (i, line) in lines {
        let fields = parse_csv_line(line).map_err(|e| fmt(format!("line {}: {e}", i + 1)))?;
        if fields.len() != header.len() {
            return Err(fmt(format!(
                "line {}: {} fields, but the header names {}",
                i + 1,
                fields.len(),
                header.len()
            )));
        }
        let obj: BTreeMap<&str, serde_json::Value> = header
            .iter()
            .zip(fields)
            .filter(|(_, v)| !v.is_empty())
            .map(|(h, v)| (h.as_str(), serde_json::Value::String(v)))
            .collect();
        let value = serde_json::to_value(obj).map_err(|e| fmt(e.to_string()))?;
        out.push(serde_json::from_value(value).map_err(|e| fmt(format!("line {}: {e}", i + 1)))?);
    }
    Ok(out)
}

/// Read sites (`id,name,address`) from a CSV or JSON file.
pub fn read_sites(path: &Path) -> Result<Vec<Site>, ImportError> {
    read_rows(path, &["id", "name", "address"])
}

/// Read devices from a CSV or JSON file.
pub fn read_devices(path: &Path) -> Result<Vec<Device>, ImportError> {
    read_rows(
        path,
        &[
            "id",
            "site_id",
            "vendor",
            "model",
            "hardware_revision",
            "serial_number",
            "approved_version",
            "current_firmware",
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_with_quotes_and_empty_fields_imports_and_typos_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("devices.csv");
        std::fs::write(
            &p,
            "id,site_id,vendor,model,serial_number,approved_version\n\
             d1,s1,\"Acme, Inc.\",gw-2,SN1,1.2.0\n\
             d2,s1,,\"say \"\"hi\"\"\",SN2,\n",
        )
        .unwrap();
        let devices = read_devices(&p).unwrap();
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[0].vendor.as_deref(), Some("Acme, Inc."));
        assert_eq!(devices[1].vendor, None);
        assert_eq!(devices[1].model.as_deref(), Some("say \"hi\""));
        assert_eq!(devices[1].approved_version, None);

        std::fs::write(&p, "id,site,name\nx,y,z\n").unwrap();
        let e = read_devices(&p).unwrap_err().to_string();
        assert!(e.contains("unknown column \"site\""), "{e}");
        std::fs::write(&p, "id,name\nx\n").unwrap();
        let e = read_sites(&p).unwrap_err().to_string();
        assert!(e.contains("line 2: 1 fields"), "{e}");

        let j = dir.path().join("sites.json");
        std::fs::write(&j, r#"[{"id":"s1","name":"Plant 1"}]"#).unwrap();
        assert_eq!(read_sites(&j).unwrap()[0].name, "Plant 1");
    }
}
