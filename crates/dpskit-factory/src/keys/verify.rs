//! Verification of keys computed elsewhere (PowerShell, Excel, `az iot dps enrollment-group
//! compute-device-key`), read from the CSVs those tools actually produce.

use anyhow::{bail, Context, Result};
use dpskit_core::diagnosis::{check_device_key, KeyCheck};
use dpskit_core::GroupKey;
use serde::Serialize;
use std::path::Path;

/// One row of the user's file.
#[derive(Debug, Clone)]
pub struct KeyRow {
    pub line: usize,
    pub registration_id: String,
    pub device_key: String,
}

/// The verdict on one row.
#[derive(Debug, Clone, Serialize)]
pub struct RowResult {
    pub line: usize,
    pub registration_id: String,
    pub ok: bool,
    /// Plain-words diagnosis when the row does not match.
    pub problem: Option<String>,
}

const ID_HEADERS: &[&str] = &[
    "registration_id",
    "registrationid",
    "id",
    "deviceid",
    "device_id",
    "registration id",
];

/// Reads `registration_id,device_key` rows, tolerating a BOM, PowerShell's `#TYPE` line,
/// quotes, CR LF, padding, and an optional header row.
pub fn read_rows(path: &Path) -> Result<Vec<KeyRow>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("--input: cannot read {}", path.display()))?;
    let text = decode_text(&bytes).with_context(|| format!("--input: {}", path.display()))?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .comment(None)
        .from_reader(text.as_bytes());
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record =
            record.with_context(|| format!("--input: {} is not valid CSV", path.display()))?;
        let line = i + 1;
        let fields: Vec<&str> = record.iter().collect();
        if fields.iter().all(|f| f.is_empty()) || fields[0].starts_with("#TYPE") {
            continue;
        }
        if rows.is_empty() && ID_HEADERS.contains(&fields[0].to_ascii_lowercase().as_str()) {
            continue;
        }
        if fields.len() < 2 || fields[1].is_empty() {
            bail!(
                "--input: {} line {line}: expected 'registration_id,device_key', found {} field(s)",
                path.display(),
                fields.len()
            );
        }
        rows.push(KeyRow {
            line,
            registration_id: fields[0].to_string(),
            device_key: fields[1].to_string(),
        });
    }
    if rows.is_empty() {
        bail!(
            "--input: {} has no rows; expected 'registration_id,device_key' lines",
            path.display()
        );
    }
    Ok(rows)
}

/// UTF-8 (with or without BOM) or UTF-16 with BOM, as `Export-Csv` writes on Windows PowerShell.
fn decode_text(bytes: &[u8]) -> Result<String> {
    if let Some(rest) = bytes.strip_prefix(&[0xFF, 0xFE]) {
        let units: Vec<u16> = rest
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        return String::from_utf16(&units).context("invalid UTF-16");
    }
    if let Some(rest) = bytes.strip_prefix(&[0xFE, 0xFF]) {
        let units: Vec<u16> = rest
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        return String::from_utf16(&units).context("invalid UTF-16");
    }
    let s = std::str::from_utf8(bytes).context("not UTF-8 text")?;
    Ok(s.trim_start_matches('\u{feff}').to_string())
}

/// Checks every row against the derivation; nothing short-circuits, so all problems show.
pub fn verify_rows(
    primary: &GroupKey,
    secondary: Option<&GroupKey>,
    rows: &[KeyRow],
) -> Vec<RowResult> {
    rows.iter()
        .map(|row| {
            let verdict = check_device_key(primary, secondary, &row.registration_id, &row.device_key);
            let problem = match verdict {
                KeyCheck::Match => None,
                KeyCheck::Explained(m) => Some(m.to_string()),
                KeyCheck::Unexplained => Some(
                    "does not match, and no known mistake reproduces it: check that the group key and the registration ID are the ones used".to_string(),
                ),
            };
            RowResult {
                line: row.line,
                registration_id: row.registration_id.clone(),
                ok: problem.is_none(),
                problem,
            }
        })
        .collect()
}
