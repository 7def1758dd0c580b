//! Which serial ports a station provisions right now: explicit paths (with `*`/`?` in the
//! file name), USB ports matching `VID:PID` filters, minus exclusions. On Windows a path is a
//! port name (`COM8`), listed whether or not it can be seen as a file.

use super::file::PortSelection;
use crate::board::ports;
use std::path::{Path, PathBuf};

/// `/dev/ttyUSB12` → `ttyUSB12`, `/dev/pts/3` → `pts/3`, for bar prefixes.
pub(crate) fn short_port(port: &str) -> String {
    let p = Path::new(port);
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| port.into());
    match p.parent().and_then(Path::file_name) {
        Some(dir) if name.chars().all(|c| c.is_ascii_digit()) => {
            format!("{}/{name}", dir.to_string_lossy())
        }
        _ => name,
    }
}

/// Sorts `ttyUSB2` before `ttyUSB10`.
pub(crate) fn natural_key(s: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut num: Option<u64> = None;
    for c in s.chars() {
        if let Some(d) = c.to_digit(10) {
            num = Some(num.unwrap_or(0).saturating_mul(10).saturating_add(d as u64));
        } else {
            if let Some(n) = num.take() {
                out.push((std::mem::take(&mut text), n));
            }
            text.push(c);
        }
    }
    out.push((text, num.unwrap_or(0)));
    out
}

/// The station's ports right now: explicit paths (shell-style `*`/`?` in the file name),
/// then USB ports matching a VID:PID filter, minus exclusions; sorted, without duplicates.
/// An explicit path without wildcards is listed even when missing, so it is reported.
pub fn discover_ports(sel: &PortSelection, include_missing: bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for pattern in &sel.paths {
        if has_wildcard(pattern) {
            out.extend(glob(pattern));
        } else if include_missing || ports::exists(pattern) {
            out.push(pattern.clone());
        }
    }
    if !sel.usb.is_empty() {
        for p in ports::list().unwrap_or_default() {
            if let Some((vid, pid)) = p.usb {
                if sel
                    .usb
                    .iter()
                    .any(|(v, want)| *v == vid && want.is_none_or(|want| want == pid))
                {
                    out.push(p.port);
                }
            }
        }
    }
    out.retain(|p| {
        !sel.exclude.iter().any(|x| {
            if has_wildcard(x) {
                glob_match(x, p)
            } else {
                x == p
            }
        })
    });
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(std::fs::canonicalize(p).unwrap_or_else(|_| PathBuf::from(p))));
    out.sort_by_key(|p| natural_key(p));
    out
}

fn has_wildcard(p: &str) -> bool {
    p.contains(['*', '?'])
}

/// Paths matching `pattern`, where only the file-name part may have wildcards. Each match is
/// the pattern's own folder text plus the file name, so it reads as the operator wrote it
/// (and `\` or `/` on Windows stay as given).
fn glob(pattern: &str) -> Vec<String> {
    let is_sep = |c: char| c == '/' || (cfg!(windows) && c == '\\');
    let Some(cut) = pattern.rfind(is_sep) else {
        return Vec::new();
    };
    let (dir, name_pattern) = (&pattern[..=cut], &pattern[cut + 1..]);
    if name_pattern.is_empty() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|name| glob_match(name_pattern, name))
        .map(|name| format!("{dir}{name}"))
        .collect()
}

/// `*` matches any run of characters except `/`, `?` one character.
fn glob_match(pattern: &str, text: &str) -> bool {
    fn go(p: &[char], t: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('*', rest)) => (0..=t.len())
                .take_while(|&i| i == 0 || t[i - 1] != '/')
                .any(|i| go(rest, &t[i..])),
            Some(('?', rest)) => t.first().is_some_and(|c| *c != '/') && go(rest, &t[1..]),
            Some((c, rest)) => t.first() == Some(c) && go(rest, &t[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    go(&p, &t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globbing() {
        assert!(glob_match("/dev/ttyUSB*", "/dev/ttyUSB12"));
        assert!(!glob_match("/dev/ttyUSB*", "/dev/ttyACM0"));
        assert!(glob_match("/tmp/b/board-?", "/tmp/b/board-7"));
        assert!(!glob_match("/tmp/*", "/tmp/b/board-7"));
        let mut v = vec!["ttyUSB10", "ttyUSB2", "ttyACM1"];
        v.sort_by_key(|p| natural_key(p));
        assert_eq!(v, ["ttyACM1", "ttyUSB2", "ttyUSB10"]);
    }

    #[test]
    fn discovery_uses_paths_globs_and_exclusions() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["board-1", "board-2", "board-10", "other"] {
            std::fs::write(dir.path().join(n), b"").unwrap();
        }
        let d = dir.path().display();
        let sel = PortSelection {
            paths: vec![
                format!("{d}/board-*"),
                format!("{d}/board-2"),
                format!("{d}/missing"),
            ],
            exclude: vec![format!("{d}/board-1")],
            ..Default::default()
        };
        let names = |v: Vec<String>| v.into_iter().map(|p| short_port(&p)).collect::<Vec<_>>();
        assert_eq!(
            names(discover_ports(&sel, true)),
            ["board-2", "board-10", "missing"]
        );
        assert_eq!(names(discover_ports(&sel, false)), ["board-2", "board-10"]);
    }
}
