//! Importing sites and devices from CSV or JSON files (admin CLI).
//!
//! JSON files hold an array of objects with the API's field names. CSV files (read with the
//! `csv` crate, as spreadsheets export them: RFC 4180 quoting, `""` for a quote inside quotes,
//! line breaks inside quoted fields, an optional UTF-8 byte-order mark) have a header row naming
//! the same fields in any order. Unknown or repeated columns are an error so typos do not pass
//! silently; an empty field means "not set". Errors name the row (as a spreadsheet numbers it,
//! the header being row 1), the line it starts on, and the column.

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

/// The columns of one kind of record: all it may have, and those every row must fill.
struct Columns {
    what: &'static str,
    allowed: &'static [&'static str],
    required: &'static [&'static str],
}

/// Where a CSV record starts, for messages: `row N (line L)`.
fn at(row: u64, pos: Option<&csv::Position>) -> String {
    match pos {
        Some(p) if p.line() != row => format!("row {row} (line {})", p.line()),
        _ => format!("row {row}"),
    }
}

fn csv_error(e: &csv::Error, row: u64) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths { pos, expected_len, len } => format!(
            "{}: {len} fields, but the header names {expected_len}; quote fields that contain commas",
            at(row, pos.as_ref())
        ),
        csv::ErrorKind::Utf8 { pos, err } => {
            let field = err.field() + 1;
            format!(
                "{}, field {field}: not UTF-8 text; save the file as UTF-8",
                at(row, pos.as_ref())
            )
        }
        csv::ErrorKind::Io(err) => format!("cannot read: {err}"),
        _ => format!("row {row}: {e}"),
    }
}

fn read_rows<T: DeserializeOwned>(path: &Path, columns: &Columns) -> Result<Vec<T>, ImportError> {
    let p = path.display().to_string();
    let bytes =
        std::fs::read(path).map_err(|source| ImportError::Read { path: p.clone(), source })?;
    let fmt = |detail: String| ImportError::Format { path: p.clone(), detail };
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let is_json = path.extension().map(|e| e.eq_ignore_ascii_case("json")).unwrap_or(false)
        || body.trim_ascii_start().starts_with(b"[");
    if is_json {
        return serde_json::from_slice(body)
            .map_err(|e| fmt(format!("not a JSON array of {}s: {e}", columns.what)));
    }
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(body);
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| fmt(csv_error(&e, 1)))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    if header.iter().all(|h| h.is_empty()) {
        return Err(fmt(format!(
            "empty file: expected a header row naming some of {}",
            columns.allowed.join(", ")
        )));
    }
    for (i, h) in header.iter().enumerate() {
        let column = i + 1;
        if !columns.allowed.contains(&h.as_str()) {
            return Err(fmt(format!(
                "row 1, column {column}: unknown column {h:?}; expected some of {}",
                columns.allowed.join(", ")
            )));
        }
        if header[..i].contains(h) {
            return Err(fmt(format!("row 1, column {column}: column {h:?} appears twice")));
        }
    }
    for r in columns.required {
        if !header.iter().any(|h| h == r) {
            return Err(fmt(format!("row 1: no column {r:?}; every {} needs one", columns.what)));
        }
    }
    let mut out = Vec::new();
    let mut record = csv::StringRecord::new();
    let mut row = 1u64;
    loop {
        row += 1;
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(fmt(csv_error(&e, row))),
        }
        // A blank line (spreadsheets add them at the end) is no record.
        if record.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        let here = at(row, record.position());
        let mut obj: BTreeMap<&str, serde_json::Value> = BTreeMap::new();
        for (h, v) in header.iter().zip(record.iter()) {
            if v.is_empty() {
                if columns.required.contains(&h.as_str()) {
                    return Err(fmt(format!(
                        "{here}, column {h:?}: empty, but every {} needs one",
                        columns.what
                    )));
                }
                continue;
            }
            obj.insert(h.as_str(), serde_json::Value::String(v.to_string()));
        }
        let value = serde_json::to_value(obj).map_err(|e| fmt(format!("{here}: {e}")))?;
        out.push(serde_json::from_value(value).map_err(|e| fmt(format!("{here}: {e}")))?);
    }
    Ok(out)
}

/// Read sites (`id,name,address`) from a CSV or JSON file.
pub fn read_sites(path: &Path) -> Result<Vec<Site>, ImportError> {
    read_rows(
        path,
        &Columns { what: "site", allowed: &["id", "name", "address"], required: &["id", "name"] },
    )
}

/// Read devices from a CSV or JSON file.
pub fn read_devices(path: &Path) -> Result<Vec<Device>, ImportError> {
    read_rows(
        path,
        &Columns {
            what: "device",
            allowed: &[
                "id",
                "site_id",
                "vendor",
                "model",
                "hardware_revision",
                "serial_number",
                "approved_version",
                "current_firmware",
            ],
            required: &["id", "site_id"],
        },
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
        assert!(e.contains("row 1, column 2: unknown column \"site\""), "{e}");
        std::fs::write(&p, "id,name\nx\n").unwrap();
        let e = read_sites(&p).unwrap_err().to_string();
        assert!(e.contains("row 2: 1 fields, but the header names 2"), "{e}");

        let j = dir.path().join("sites.json");
        std::fs::write(&j, b"\xEF\xBB\xBF[{\"id\":\"s0\",\"name\":\"BOM\"}]").unwrap();
        assert_eq!(read_sites(&j).unwrap()[0].name, "BOM");
        std::fs::write(&j, r#"[{"id":"s1","name":"Plant 1"}]"#).unwrap();
        assert_eq!(read_sites(&j).unwrap()[0].name, "Plant 1");
    }

    #[test]
    fn a_spreadsheet_export_with_a_bom_and_line_breaks_in_quotes_imports() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sites.csv");
        // What spreadsheets write: a UTF-8 byte-order mark, CRLF line ends, a quoted address
        // over two lines, a quote inside quotes, a trailing blank line.
        std::fs::write(
            &p,
            "\u{FEFF}id,name,address\r\n\
             s1,\"Plant \"\"North\"\"\",\"Hauptstr. 1\r\n12345 Musterstadt\"\r\n\
             s2,Plant South,\r\n\
             \r\n",
        )
        .unwrap();
        let sites = read_sites(&p).unwrap();
        assert_eq!(sites.len(), 2);
        assert_eq!(sites[0].id, "s1", "the byte-order mark is not part of the first column");
        assert_eq!(sites[0].name, "Plant \"North\"");
        assert_eq!(sites[0].address.as_deref(), Some("Hauptstr. 1\r\n12345 Musterstadt"));
        assert_eq!((sites[1].name.as_str(), sites[1].address.as_deref()), ("Plant South", None));
    }

    #[test]
    fn errors_name_the_row_and_the_column() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("devices.csv");
        // Row 3 starts on line 4: row 2's quoted model holds a line break.
        std::fs::write(&p, "id,site_id,model\nd1,s1,\"gw\n2\"\nd2,,gw-3\n").unwrap();
        let e = read_devices(&p).unwrap_err().to_string();
        assert!(e.contains("row 3 (line 4), column \"site_id\": empty"), "{e}");
        std::fs::write(&p, "id,model\nd1,gw\n").unwrap();
        let e = read_devices(&p).unwrap_err().to_string();
        assert!(e.contains("no column \"site_id\""), "{e}");
        std::fs::write(&p, "id,site_id,id\nd1,s1,d1\n").unwrap();
        let e = read_devices(&p).unwrap_err().to_string();
        assert!(e.contains("row 1, column 3: column \"id\" appears twice"), "{e}");
        std::fs::write(&p, b"id,site_id,vendor\nd1,s1,Acme\nd2,s1,\xFFcme\n").unwrap();
        let e = read_devices(&p).unwrap_err().to_string();
        assert!(e.contains("row 3, field 3: not UTF-8"), "{e}");
        std::fs::write(&p, "id,site_id\nd1,s1,extra\n").unwrap();
        let e = read_devices(&p).unwrap_err().to_string();
        assert!(e.contains("row 2: 3 fields, but the header names 2"), "{e}");
        std::fs::write(&p, "").unwrap();
        let e = read_devices(&p).unwrap_err().to_string();
        assert!(e.contains("empty file"), "{e}");
    }
}
