//! Which registration ID a board gets: a row of a manifest CSV (pre-assigned IDs, optionally
//! pinned to MACs) or a template such as `{prefix}-{mac}` or `{prefix}-{seq:05}`.
//!
//! This module only describes and checks the plan; handing an ID to a board happens inside a
//! ledger transaction ([`crate::station::ledger::Ledger::allocate`]), so an ID is never given twice.

use dpskit_core::RegistrationId;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A board's base MAC (eFuse BLOCK1), the identity the ledger keys boards by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Parses `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff` or `aabbccddeeff` (any case).
    pub fn parse(text: &str) -> Result<Mac, String> {
        let t = text.trim();
        let hex: String = t.chars().filter(|c| *c != ':' && *c != '-').collect();
        let separated = hex.len() != t.len();
        if hex.len() != 12
            || !hex.chars().all(|c| c.is_ascii_hexdigit())
            || (separated && t.len() != 17)
        {
            return Err(format!(
                "{text:?} is not a MAC address; write it like 34:85:18:aa:bb:cc"
            ));
        }
        let mut out = [0u8; 6];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        Ok(Mac(out))
    }

    /// Twelve lower-case hex digits, no separators: what `{mac}` expands to.
    pub fn compact(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// How a station assigns registration IDs.
#[derive(Debug, Clone)]
pub enum IdPlan {
    Manifest(Manifest),
    Template(Template),
}

impl IdPlan {
    /// The longest ID this plan can hand out (for checking that the config fits its partition).
    pub fn longest_sample(&self) -> String {
        match self {
            IdPlan::Manifest(m) => m
                .rows
                .iter()
                .map(|r| r.id.as_str().to_string())
                .max_by_key(|s| s.len())
                .unwrap_or_default(),
            IdPlan::Template(t) => t.expand(&Mac([0xff; 6]), Some(9_999_999)),
        }
    }
}

/// One row of `manifest.csv`.
#[derive(Debug, Clone)]
pub struct ManifestRow {
    /// 1-based line in the file, for messages.
    pub line: usize,
    pub id: RegistrationId,
    /// When set, only the board with this MAC may get `id`.
    pub mac: Option<Mac>,
}

/// Pre-assigned registration IDs. Rows with a MAC are pinned to that board; rows without form
/// a pool handed out in file order to boards whose MAC is not pinned.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub path: PathBuf,
    pub rows: Vec<ManifestRow>,
}

impl Manifest {
    /// Reads and checks the whole file; every problem is returned, each naming its line.
    pub fn load(path: &Path, allow_uppercase: bool) -> Result<Manifest, Vec<String>> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![format!("[ids] manifest: cannot read {shown} ({e}); give the path of the manifest CSV (relative to station.toml)")]
        })?;
        Manifest::parse(&text, path, allow_uppercase)
    }

    /// Parses manifest text: a header `registration_id,mac` (mac optional), `#` comments.
    pub fn parse(text: &str, path: &Path, allow_uppercase: bool) -> Result<Manifest, Vec<String>> {
        let shown = path.display().to_string();
        let mut problems = Vec::new();
        let mut reader = csv::ReaderBuilder::new()
            .comment(Some(b'#'))
            .trim(csv::Trim::All)
            .flexible(true)
            .from_reader(text.trim_start_matches('\u{feff}').as_bytes());
        let headers: Vec<String> = match reader.headers() {
            Ok(h) => h.iter().map(|s| s.to_ascii_lowercase()).collect(),
            Err(e) => return Err(vec![format!("{shown}: cannot read the header ({e}); the first line must be `registration_id,mac`")]),
        };
        let Some(id_col) = headers.iter().position(|h| h == "registration_id") else {
            return Err(vec![format!(
                "{shown}: no `registration_id` column (found: {}); the first line must be `registration_id,mac`",
                headers.join(", ")
            )]);
        };
        let mac_col = headers.iter().position(|h| h == "mac");
        let mut rows = Vec::new();
        let mut ids: HashMap<String, usize> = HashMap::new();
        let mut macs: HashMap<Mac, usize> = HashMap::new();
        for record in reader.records() {
            let record = match record {
                Ok(r) => r,
                Err(e) => {
                    problems.push(format!("{shown}: {e}; fix the CSV"));
                    continue;
                }
            };
            let line = record.position().map(|p| p.line() as usize).unwrap_or(0);
            let raw_id = record.get(id_col).unwrap_or("");
            if raw_id.is_empty() && record.iter().all(str::is_empty) {
                continue;
            }
            let id = match RegistrationId::parse(raw_id, allow_uppercase) {
                Ok(id) => Some(id),
                Err(e) => {
                    let e = e
                        .to_string()
                        .replace("pass --allow-uppercase", "set [ids] allow_uppercase = true");
                    problems.push(format!("{shown} line {line}: {e}"));
                    None
                }
            };
            if id.is_some() {
                if let Some(first) = ids.insert(raw_id.to_ascii_lowercase(), line) {
                    problems.push(format!(
                        "{shown} line {line}: registration ID {raw_id:?} is already on line {first}; DPS ignores case and each board needs its own ID, so remove one"
                    ));
                }
            }
            let mac = match mac_col
                .and_then(|c| record.get(c))
                .filter(|m| !m.is_empty())
            {
                None => None,
                Some(m) => match Mac::parse(m) {
                    Ok(mac) => {
                        if let Some(first) = macs.insert(mac, line) {
                            problems.push(format!(
                                "{shown} line {line}: MAC {mac} is already pinned on line {first}; a board gets one ID, so remove one"
                            ));
                        }
                        Some(mac)
                    }
                    Err(e) => {
                        problems.push(format!("{shown} line {line}: mac: {e}"));
                        None
                    }
                },
            };
            let Some(id) = id else { continue };
            rows.push(ManifestRow { line, id, mac });
        }
        if rows.is_empty() && problems.is_empty() {
            problems.push(format!(
                "{shown}: no registration IDs; add one row per board (`registration_id,mac`)"
            ));
        }
        if problems.is_empty() {
            Ok(Manifest {
                path: path.to_path_buf(),
                rows,
            })
        } else {
            Err(problems)
        }
    }

    /// The row pinned to `mac`, if any.
    pub fn pinned(&self, mac: &Mac) -> Option<&ManifestRow> {
        self.rows.iter().find(|r| r.mac.as_ref() == Some(mac))
    }

    /// The unpinned rows, in file order.
    pub fn pool(&self) -> impl Iterator<Item = &ManifestRow> {
        self.rows.iter().filter(|r| r.mac.is_none())
    }
}

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Prefix,
    Station,
    Mac,
    /// `{seq}` or `{seq:05}`: a counter kept in the ledger, zero-padded to `width`.
    Seq {
        width: usize,
    },
}

/// A registration-ID template: `{prefix}`, `{station}`, `{mac}` (12 lower-case hex digits) and
/// `{seq}` / `{seq:0N}` (the station's counter, zero-padded to N digits).
#[derive(Debug, Clone)]
pub struct Template {
    pub text: String,
    parts: Vec<Part>,
    pub prefix: String,
    pub station: String,
    /// The first `{seq}` value a fresh ledger hands out.
    pub first_seq: u64,
    pub allow_uppercase: bool,
}

impl Template {
    /// Parses and checks a template; `Err` holds every problem found.
    pub fn parse(
        text: &str,
        prefix: &str,
        station: &str,
        first_seq: u64,
        allow_uppercase: bool,
    ) -> Result<Template, Vec<String>> {
        let mut problems = Vec::new();
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find('{') {
                None => {
                    if rest.contains('}') {
                        problems.push(format!("[ids] template: {text:?} has a '}}' without '{{'; placeholders look like {{prefix}}-{{seq:05}}"));
                    }
                    parts.push(Part::Lit(rest.to_string()));
                    rest = "";
                }
                Some(open) => {
                    if open > 0 {
                        parts.push(Part::Lit(rest[..open].to_string()));
                    }
                    let Some(close) = rest[open..].find('}') else {
                        problems.push(format!("[ids] template: {text:?} has a '{{' without '}}'; placeholders look like {{prefix}}-{{seq:05}}"));
                        break;
                    };
                    let name = &rest[open + 1..open + close];
                    match name {
                        "prefix" => parts.push(Part::Prefix),
                        "station" => parts.push(Part::Station),
                        "mac" => parts.push(Part::Mac),
                        "seq" => parts.push(Part::Seq { width: 0 }),
                        other => match other.strip_prefix("seq:").map(|w| w.parse::<usize>()) {
                            Some(Ok(width)) if width <= 12 => parts.push(Part::Seq { width }),
                            _ => problems.push(format!(
                                "[ids] template: unknown placeholder {{{other}}}; use {{prefix}}, {{station}}, {{mac}}, {{seq}} or {{seq:05}}"
                            )),
                        },
                    }
                    rest = &rest[open + close + 1..];
                }
            }
        }
        let unique = parts
            .iter()
            .any(|p| matches!(p, Part::Mac | Part::Seq { .. }));
        if problems.is_empty() && !unique {
            problems.push(format!(
                "[ids] template: {text:?} has neither {{mac}} nor {{seq}}, so every board would get the same ID; add one, e.g. \"{{prefix}}-{{seq:05}}\""
            ));
        }
        if parts
            .iter()
            .filter(|p| matches!(p, Part::Seq { .. }))
            .count()
            > 1
        {
            problems.push("[ids] template: {seq} appears more than once; use it once".to_string());
        }
        if parts.contains(&Part::Prefix) && prefix.is_empty() {
            problems.push("[ids] prefix: the template uses {prefix} but prefix is not set; add prefix = \"sensor\" under [ids]".to_string());
        }
        let t = Template {
            text: text.into(),
            parts,
            prefix: prefix.into(),
            station: station.into(),
            first_seq,
            allow_uppercase,
        };
        if problems.is_empty() {
            // Every expansion must be a valid ID; a sample with both extremes shows it.
            for (mac, seq) in [
                (Mac([0; 6]), first_seq),
                (Mac([0xff; 6]), first_seq.max(99_999)),
            ] {
                let sample = t.expand(&mac, Some(seq));
                if let Err(e) = RegistrationId::parse(&sample, allow_uppercase) {
                    let e = e
                        .to_string()
                        .replace("pass --allow-uppercase", "set [ids] allow_uppercase = true");
                    problems.push(format!(
                        "[ids] template: {text:?} gives IDs like {sample:?}, which DPS refuses: {e}"
                    ));
                    break;
                }
            }
        }
        if problems.is_empty() {
            Ok(t)
        } else {
            Err(problems)
        }
    }

    /// True when the template takes a sequence number from the ledger.
    /// True when two stations with their own ledgers can never produce the same ID: the
    /// template holds `{station}` or `{mac}`.
    pub fn unique_across_stations(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Station | Part::Mac))
    }

    pub fn uses_seq(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Seq { .. }))
    }

    /// The ID for a board; `seq` is required when [`Template::uses_seq`].
    pub fn expand(&self, mac: &Mac, seq: Option<u64>) -> String {
        let mut s = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(l) => s.push_str(l),
                Part::Prefix => s.push_str(&self.prefix),
                Part::Station => s.push_str(&self.station),
                Part::Mac => s.push_str(&mac.compact()),
                Part::Seq { width } => {
                    s.push_str(&format!("{:0width$}", seq.unwrap_or(0), width = *width))
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        let m = Mac::parse("34:85:18:AA:bb:0c").unwrap();
        assert_eq!(m.to_string(), "34:85:18:aa:bb:0c");
        assert_eq!(Mac::parse("34-85-18-aa-bb-0c").unwrap(), m);
        assert_eq!(Mac::parse("348518aabb0c").unwrap(), m);
        assert_eq!(m.compact(), "348518aabb0c");
        for bad in ["34:85:18:aa:bb", "34:85:18:aa:bb:zz", "3485:18aa:bb0c", ""] {
            assert!(Mac::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn templates_expand_and_check() {
        let t = Template::parse("{prefix}-{seq:05}", "sensor", "line-1", 1, false).unwrap();
        assert!(t.uses_seq());
        assert_eq!(t.expand(&Mac([0; 6]), Some(42)), "sensor-00042");
        let t = Template::parse("{station}.{mac}", "", "line-1", 1, false).unwrap();
        assert_eq!(
            t.expand(&Mac([0x34, 0x85, 0x18, 1, 2, 3]), None),
            "line-1.348518010203"
        );
        let errs = |s: &str, p: &str| {
            Template::parse(s, p, "st", 1, false)
                .unwrap_err()
                .join("\n")
        };
        assert!(errs("{prefix}-{serial}", "x").contains("unknown placeholder {serial}"));
        assert!(errs("{prefix}-fixed", "x").contains("neither {mac} nor {seq}"));
        assert!(errs("{prefix}-{mac}", "").contains("[ids] prefix"));
        assert!(errs("{prefix}-{mac", "x").contains("without '}'"));
        assert!(errs("{prefix} {mac}", "x").contains("DPS refuses"));
        assert!(errs("{prefix}-{mac}", "Sensor").contains("upper-case"));
        assert!(Template::parse("{prefix}-{mac}", "Sensor", "st", 1, true).is_ok());
    }

    #[test]
    fn manifests_report_every_problem() {
        let p = Path::new("manifest.csv");
        let m = Manifest::parse(
            "# pinned and pooled\nregistration_id,mac\ndev-1,34:85:18:00:00:01\ndev-2,\n\ndev-3\n",
            p,
            false,
        )
        .unwrap();
        assert_eq!(m.rows.len(), 3);
        assert_eq!(
            m.pinned(&Mac::parse("34:85:18:00:00:01").unwrap())
                .unwrap()
                .id
                .as_str(),
            "dev-1"
        );
        assert_eq!(
            m.pool().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["dev-2", "dev-3"]
        );
        let text = "registration_id,mac\ndev-1,34:85:18:00:00:01\nDEV-1,\ndev 2,\ndev-3,34:85:18:00:00:01\ndev-4,nope\n";
        let e = Manifest::parse(text, p, false).unwrap_err();
        assert_eq!(e.len(), 4, "{e:#?}");
        assert!(
            e[0].contains("line 3") && e[0].contains("upper-case"),
            "{}",
            e[0]
        );
        assert!(e[1].contains("line 4") && e[1].contains("' '"), "{}", e[1]);
        assert!(
            e[2].contains("line 5") && e[2].contains("already pinned on line 2"),
            "{}",
            e[2]
        );
        assert!(
            e[3].contains("line 6") && e[3].contains("not a MAC"),
            "{}",
            e[3]
        );
        assert!(Manifest::parse("id,mac\nx,\n", p, false).unwrap_err()[0]
            .contains("no `registration_id` column"));
        assert!(
            Manifest::parse("registration_id,mac\n", p, false).unwrap_err()[0]
                .contains("no registration IDs")
        );
    }
}
