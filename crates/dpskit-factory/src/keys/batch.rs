//! The registration IDs of a batch: from `--id`, an `--ids` file, or a `--range` pattern.
//! Every ID is validated and duplicates are refused before any key is derived.

use anyhow::{bail, Context, Result};
use dpskit_core::RegistrationId;
use std::collections::HashMap;
use std::path::Path;

/// Most IDs one `--range` may expand to; a typo like `{1..1000000000}` should not hang.
pub const MAX_RANGE: u64 = 100_000;

/// Where an ID came from, for error messages.
#[derive(Debug, Clone)]
pub struct Origin(pub String);

/// Collects IDs from all sources, validates them, and refuses duplicates.
pub fn collect(
    ids: &[String],
    ids_file: Option<&Path>,
    range: Option<&str>,
    allow_uppercase: bool,
) -> Result<Vec<RegistrationId>> {
    let mut raw: Vec<(String, Origin)> = ids
        .iter()
        .map(|i| (i.clone(), Origin("--id".into())))
        .collect();
    if let Some(path) = ids_file {
        raw.extend(read_ids_file(path)?);
    }
    if let Some(pattern) = range {
        raw.extend(
            expand_range(pattern)?
                .into_iter()
                .map(|i| (i, Origin("--range".into()))),
        );
    }
    if raw.is_empty() {
        bail!(
            "registration IDs: none given; use --id ID, --ids FILE or --range 'sn-{{0001..0100}}'"
        );
    }
    let mut seen: HashMap<String, Origin> = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for (value, origin) in raw {
        let id = RegistrationId::parse(&value, allow_uppercase)
            .map_err(|e| anyhow::anyhow!("{} ({}): {e}", origin.0, value))?;
        if let Some(first) = seen.get(&value.to_ascii_lowercase()) {
            bail!(
                "registration ID {value:?} appears twice ({} and {}); DPS treats IDs case-insensitively and each device needs its own",
                first.0,
                origin.0
            );
        }
        seen.insert(value.to_ascii_lowercase(), origin);
        out.push(id);
    }
    Ok(out)
}

/// One ID per line; blank lines and `#` comments skipped; BOM and CR LF tolerated.
fn read_ids_file(path: &Path) -> Result<Vec<(String, Origin)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--ids: cannot read {}", path.display()))?;
    Ok(text
        .trim_start_matches('\u{feff}')
        .lines()
        .enumerate()
        .filter_map(|(n, line)| {
            let t = line.trim();
            (!t.is_empty() && !t.starts_with('#')).then(|| {
                (
                    t.to_string(),
                    Origin(format!("{} line {}", path.display(), n + 1)),
                )
            })
        })
        .collect())
}

/// Expands `prefix{A..B}suffix` with zero padding when `A` has a leading zero.
pub fn expand_range(pattern: &str) -> Result<Vec<String>> {
    let bad = || {
        anyhow::anyhow!(
            "--range: {pattern:?} is not a pattern like 'sn-{{0001..0100}}' (one {{START..END}} with START <= END)"
        )
    };
    let (prefix, rest) = pattern.split_once('{').ok_or_else(bad)?;
    let (inner, suffix) = rest.split_once('}').ok_or_else(bad)?;
    if suffix.contains('{') {
        return Err(bad());
    }
    let (a, b) = inner.split_once("..").ok_or_else(bad)?;
    let start: u64 = a.parse().map_err(|_| bad())?;
    let end: u64 = b.parse().map_err(|_| bad())?;
    if start > end {
        return Err(bad());
    }
    if end - start + 1 > MAX_RANGE {
        bail!(
            "--range: {} IDs; at most {MAX_RANGE} per batch",
            end - start + 1
        );
    }
    let width = if a.len() > 1 && a.starts_with('0') {
        a.len().max(b.len())
    } else {
        0
    };
    Ok((start..=end)
        .map(|n| format!("{prefix}{n:0width$}{suffix}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(
            expand_range("sn-{0001..0003}").unwrap(),
            ["sn-0001", "sn-0002", "sn-0003"]
        );
        assert_eq!(expand_range("d{8..10}x").unwrap(), ["d8x", "d9x", "d10x"]);
        assert!(expand_range("sn-{3..1}").is_err());
        assert!(expand_range("sn-0001").is_err());
        assert!(expand_range("sn-{1..2}{3..4}").is_err());
        assert!(expand_range("sn-{1..1000000}").is_err());
    }

    #[test]
    fn duplicates_and_case() {
        let e = collect(&["a-1".into(), "A-1".into()], None, None, true).unwrap_err();
        assert!(e.to_string().contains("appears twice"), "{e}");
        let e = collect(&["A-1".into()], None, None, false).unwrap_err();
        assert!(e.to_string().contains("upper-case"), "{e}");
        assert!(collect(&[], None, None, false).is_err());
    }
}
