//! The station's decisions about one board, apart from the I/O and the progress display:
//! which gates it fails, where its config partition is, and — once the board's MD5 is known —
//! whether to leave it, record it, or write it.

use super::file::{Gates, Version};
use crate::board::inspect::{BoardReport, ConfigState};

/// A gate refused the board (no ID was handed out).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// Every gate the board fails, each saying what was found and what the station requires.
pub fn check_gates(g: &Gates, r: &BoardReport) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(chip) = g.chip {
        if r.chip != chip.to_string() {
            out.push(format!(
                "chip: the board is an {}, the station requires an {chip} ([gates] chip)",
                r.chip
            ));
        }
    }
    if let Some(min) = g.min_psram_mb {
        match &r.embedded {
            Some(m) if m.psram_mb >= min => {}
            Some(m) => out.push(format!(
                "PSRAM: {} MB in the package, the station requires at least {min} MB ([gates] min_psram_mb)",
                m.psram_mb
            )),
            None => out.push(format!("PSRAM: unknown on an {}, the station requires at least {min} MB ([gates] min_psram_mb)", r.chip)),
        }
    }
    if let Some(min) = g.min_flash_mb {
        match flash_mb(&r.flash_size) {
            Some(mb) if mb >= min as f64 => {}
            Some(_) => out.push(format!("flash: {}, the station requires at least {min} MB ([gates] min_flash_mb)", r.flash_size)),
            None => out.push(format!("flash: size {:?} unknown, the station requires at least {min} MB ([gates] min_flash_mb)", r.flash_size)),
        }
    }
    if g.firmware_project.is_some() || g.min_firmware_version.is_some() {
        match r.app.as_ref().map(|a| &a.descriptor) {
            None => out.push("firmware: no app partition found; flash the product firmware first ([gates] firmware_project)".into()),
            Some(Err(e)) => out.push(format!("firmware: {e} ([gates] firmware_project)")),
            Some(Ok(d)) => {
                if let Some(want) = &g.firmware_project {
                    if &d.project_name != want {
                        out.push(format!(
                            "firmware: project {:?}, the station expects {want:?}; flash the product firmware first ([gates] firmware_project)",
                            d.project_name
                        ));
                    }
                }
                if let Some(min) = &g.min_firmware_version {
                    match Version::parse(&d.version) {
                        Some(v) if v.at_least(min) => {}
                        Some(_) => out.push(format!(
                            "firmware: version {} is older than {min}; update the firmware first ([gates] min_firmware_version)",
                            d.version
                        )),
                        None => out.push(format!(
                            "firmware: version {:?} is not a version number, the station requires at least {min} ([gates] min_firmware_version)",
                            d.version
                        )),
                    }
                }
            }
        }
    }
    out
}

/// "4MB" / "512KB" as MB.
pub(crate) fn flash_mb(s: &str) -> Option<f64> {
    if let Some(n) = s.strip_suffix("MB") {
        n.parse::<f64>().ok()
    } else {
        s.strip_suffix("KB")
            .and_then(|n| n.parse::<f64>().ok())
            .map(|k| k / 1024.0)
    }
}

/// The config partition's (offset, size), or why the board cannot take this station's blob.
pub fn config_partition(
    r: &BoardReport,
    name: &str,
    nvs_size: usize,
) -> std::result::Result<(u32, u32), String> {
    let rows = r
        .partitions
        .as_ref()
        .map_err(|e| format!("partition table: {e}"))?;
    if let Some(ConfigState::Missing { reason, .. }) = &r.config {
        return Err(format!(
            "[partition] name: {}",
            reason.trim_start_matches("--partition: ")
        ));
    }
    let p = rows
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| format!("no partition {name:?} on the board; flash a partition table with it (templates/partitions.csv)"))?;
    if (p.size as usize) < nvs_size {
        return Err(format!(
            "partition {name:?} is {:#x} bytes, smaller than [partition] nvs_size {nvs_size:#x}; set nvs_size to {:#x} or reflash the table",
            p.size, p.size
        ));
    }
    Ok((p.offset, p.size))
}

/// What to do with a board that has its ID, given what the ledger and the board say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Done before and the board still holds exactly the recorded image: nothing to write.
    Unchanged(&'static str),
    /// Done before, but the board's MD5 no longer matches the ledger: the row leaves `done`.
    Reverify(String),
    /// Its image is already on the board (verified by the board's MD5): record it only.
    RecordOnly,
    /// `--dry-run`: stop here.
    WouldWrite(&'static str),
    /// Write the image.
    Write,
}

/// Facts about one board at the moment of deciding.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// The ledger marks the board done.
    pub was_done: bool,
    /// The MD5 the ledger recorded for it.
    pub recorded_md5: Option<&'a str>,
    /// The SHA-256 of the image the ledger recorded.
    pub recorded_sha: Option<&'a str>,
    /// MD5 the board reported over its config partition now.
    pub on_board: &'a str,
    /// MD5 and SHA-256 of the image built for it now.
    pub md5: &'a str,
    pub sha: &'a str,
    pub force: bool,
    pub dry_run: bool,
}

/// The one place that says when a board is written, left alone or taken out of `done`.
pub fn action(f: &Facts, partition: &str, id: &str) -> Action {
    if f.was_done && !f.force {
        let recorded = f.recorded_md5.unwrap_or_default();
        if f.on_board == recorded {
            return Action::Unchanged(if f.recorded_sha != Some(f.sha) {
                "already provisioned; the station config changed since (--force rewrites it)"
            } else {
                "already provisioned and verified by MD5; nothing written"
            });
        }
        return Action::Reverify(format!(
            "the ledger said done, but {partition} no longer holds the image recorded for {id} (board MD5 {}, ledger {recorded}); the ledger now marks it failed — check the board, then re-run with --force to write it again with the same ID",
            f.on_board
        ));
    }
    if f.on_board == f.md5 && !f.force {
        if f.dry_run {
            return Action::WouldWrite("image already on the board; would only record it");
        }
        return Action::RecordOnly;
    }
    if f.dry_run {
        return Action::WouldWrite("");
    }
    Action::Write
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flash_sizes() {
        assert_eq!(flash_mb("4MB"), Some(4.0));
        assert_eq!(flash_mb("512KB"), Some(0.5));
    }

    #[test]
    fn actions() {
        let base = Facts {
            was_done: true,
            recorded_md5: Some("aa"),
            recorded_sha: Some("s"),
            on_board: "aa",
            md5: "aa",
            sha: "s",
            force: false,
            dry_run: false,
        };
        assert!(
            matches!(action(&base, "dps_cfg", "x"), Action::Unchanged(n) if n.contains("verified"))
        );
        let changed = Facts {
            on_board: "bb",
            ..base.clone()
        };
        assert!(
            matches!(action(&changed, "dps_cfg", "x"), Action::Reverify(m) if m.contains("marks it failed"))
        );
        let forced = Facts {
            force: true,
            ..changed.clone()
        };
        assert_eq!(action(&forced, "dps_cfg", "x"), Action::Write);
        let fresh = Facts {
            was_done: false,
            on_board: "ff",
            ..base.clone()
        };
        assert_eq!(action(&fresh, "dps_cfg", "x"), Action::Write);
        let there = Facts {
            was_done: false,
            ..base.clone()
        };
        assert_eq!(action(&there, "dps_cfg", "x"), Action::RecordOnly);
        let dry = Facts {
            dry_run: true,
            ..fresh
        };
        assert_eq!(action(&dry, "dps_cfg", "x"), Action::WouldWrite(""));
    }
}
