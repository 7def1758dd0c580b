//! The per-board pipeline and the batch around it: one worker per port, in parallel.
//!
//! Per board: connect → inspect → gates → allocate the registration ID in the ledger → derive
//! → build the blob → write → verify → record → reset. All reads happen before the write,
//! because in ROM mode FLASH_END ends the loader. A board counts as done only after the MD5
//! the board computed over its config partition matched the image; that MD5 goes into the
//! ledger. The group key stays in this process's memory: it is never logged, never stored.

use super::assign::Mac;
pub use super::discover::discover_ports;
use super::discover::{natural_key, short_port};
use super::file::{Gates, Station, Version};
use super::ledger::{AllocError, Attempt, BoardFacts, Ledger, Status};
use super::now_rfc3339;
use crate::blob::nvs;
use crate::board::inspect::{self, BoardReport, ConfigState, Expectations};
use crate::board::progress::BarProgress;
use crate::board::{write, BoardLink, LinkOptions};
use anyhow::{anyhow, bail, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use md5::Md5;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// What happened to one board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Written and MD5-verified in this run (or found holding exactly its image, verified).
    Done,
    /// Already provisioned and intact; nothing written.
    Unchanged,
    /// `--dry-run`: passed every gate and would be written.
    WouldWrite,
    /// Failed a gate; no ID was given.
    Refused,
    /// Something went wrong; see the reason. A re-run picks it up.
    Failed,
    /// Never started (interrupted).
    Skipped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Unchanged => "unchanged",
            Outcome::WouldWrite => "would write",
            Outcome::Refused => "refused",
            Outcome::Failed => "FAILED",
            Outcome::Skipped => "skipped",
        }
    }

    /// Whether the run as a whole may still exit 0.
    pub fn is_success(self) -> bool {
        matches!(
            self,
            Outcome::Done | Outcome::Unchanged | Outcome::WouldWrite
        )
    }
}

/// One row of the final table.
#[derive(Debug, Clone, Serialize)]
pub struct BoardResult {
    pub port: String,
    pub mac: Option<String>,
    pub registration_id: Option<String>,
    pub outcome: Outcome,
    /// Why it was refused or failed, or a note on success.
    pub reason: String,
    pub duration_ms: u64,
    /// Milliseconds spent in each stage, in order (connect, inspect, allocate, build, check,
    /// write, reset): where a slow bench loses its time.
    pub stages_ms: Vec<(&'static str, u64)>,
}

/// Everything a batch did.
#[derive(Debug, Clone, Serialize)]
pub struct BatchReport {
    pub station: String,
    pub dry_run: bool,
    pub results: Vec<BoardResult>,
    pub elapsed_ms: u64,
}

impl BatchReport {
    pub fn count(&self, o: Outcome) -> usize {
        self.results.iter().filter(|r| r.outcome == o).count()
    }

    /// Boards that did not end done/unchanged/would-write.
    pub fn failures(&self) -> usize {
        self.results
            .iter()
            .filter(|r| !r.outcome.is_success())
            .count()
    }

    /// The final table: port, MAC, registration ID, result, reason; then the totals.
    pub fn render(&self) -> String {
        let headers = ["PORT", "MAC", "REGISTRATION ID", "RESULT", "REASON"];
        let rows: Vec<[String; 5]> = self
            .results
            .iter()
            .map(|r| {
                [
                    r.port.clone(),
                    r.mac.clone().unwrap_or_else(|| "-".into()),
                    r.registration_id.clone().unwrap_or_else(|| "-".into()),
                    r.outcome.as_str().into(),
                    r.reason.clone(),
                ]
            })
            .collect();
        let mut s = crate::table::render(&headers, &rows);
        let mut totals: Vec<String> = Vec::new();
        for o in [
            Outcome::Done,
            Outcome::Unchanged,
            Outcome::WouldWrite,
            Outcome::Refused,
            Outcome::Failed,
            Outcome::Skipped,
        ] {
            let n = self.count(o);
            if n > 0 {
                totals.push(format!("{n} {}", o.as_str().to_lowercase()));
            }
        }
        s += &format!(
            "\n{} board{}: {} in {:.1} s{}\n",
            self.results.len(),
            if self.results.len() == 1 { "" } else { "s" },
            if totals.is_empty() {
                "nothing to do".into()
            } else {
                totals.join(", ")
            },
            self.elapsed_ms as f64 / 1000.0,
            if self.dry_run {
                " (dry run: nothing written, no ledger change)"
            } else {
                ""
            }
        );
        s
    }
}

/// How to run a batch.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Rewrite boards the ledger marks done, and boards holding a config this ledger did not write.
    pub force: bool,
    /// Inspect and gate, allocate against an in-memory copy of the ledger, write nothing.
    pub dry_run: bool,
    /// Draw indicatif bars on stderr (they hide themselves when stderr is not a terminal).
    pub progress: bool,
}

/// What every worker shares.
pub struct Bench<'a> {
    pub station: &'a Station,
    ledger: Mutex<Ledger>,
    opts: RunOptions,
    multi: MultiProgress,
    overall: ProgressBar,
    stop: &'a AtomicBool,
    results: Mutex<Vec<BoardResult>>,
    started: Instant,
}

impl<'a> Bench<'a> {
    /// Opens the station's ledger (or, for a dry run, an in-memory copy of it).
    pub fn new(station: &'a Station, opts: RunOptions, stop: &'a AtomicBool) -> Result<Bench<'a>> {
        let ledger = if opts.dry_run {
            Ledger::dry_run_copy(&station.ledger_path, &station.name)?
        } else {
            Ledger::open(&station.ledger_path, &station.name)?
        };
        let target = if opts.progress {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let multi = MultiProgress::with_draw_target(target);
        let overall = multi.add(ProgressBar::new(0));
        overall.set_style(
            ProgressStyle::with_template(
                "{prefix:>14} [{bar:30}] {pos}/{len} boards  {elapsed}  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("## "),
        );
        overall.set_prefix("batch");
        Ok(Bench {
            station,
            ledger: Mutex::new(ledger),
            opts,
            multi,
            overall,
            stop,
            results: Mutex::new(Vec::new()),
            started: Instant::now(),
        })
    }

    /// Prints a line above the bars (or plainly on stderr when there are none).
    pub fn log(&self, line: &str) {
        if self.multi.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.multi.println(line);
        }
    }

    /// True once Ctrl-C was pressed: no new board starts.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Adds `n` boards to the overall bar's length.
    pub fn expect_boards(&self, n: u64) {
        self.overall.inc_length(n);
    }

    /// Runs one board start to end; never panics the batch, always yields a result.
    pub fn provision_port(&self, port: &str) -> BoardResult {
        let bar = self.multi.insert_before(&self.overall, ProgressBar::new(0));
        // Text only until the write, whose chunks then fill a bar (BarProgress's style).
        bar.set_style(
            ProgressStyle::with_template("{prefix:>14} {elapsed:>3} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(short_port(port));
        let start = Instant::now();
        let mut st = State::default();
        let mut link = None;
        let outcome = self.pipeline(port, &bar, &mut st, &mut link);
        // Leave the board as the station asks (reset into the app, or back in the ROM loader),
        // refused boards too, unless the line itself failed.
        let reset = match link {
            Some(link) if st.link_ok => {
                st.stage("reset");
                bar.set_message("resetting");
                link.finish().err()
            }
            _ => None,
        };
        st.stage("");
        let (outcome, reason) = match outcome {
            Ok((o, note)) => match reset {
                Some(e) if o == Outcome::Done => (o, format!("written and verified, but {e:#}")),
                _ => (o, note),
            },
            Err(e) => {
                let reason = one_line(&e);
                if let Some(r) = e.downcast_ref::<Refusal>() {
                    (Outcome::Refused, r.0.clone())
                } else {
                    if let (true, Some(mac)) = (st.owns_row, &st.mac) {
                        if let Err(le) = self.lock().mark_failed(mac, &reason) {
                            self.log(&format!(
                                "{port}: could not record the failure in the ledger: {le:#}"
                            ));
                        }
                    }
                    (Outcome::Failed, reason)
                }
            }
        };
        let result = BoardResult {
            port: port.into(),
            mac: st.mac.map(|m| m.to_string()),
            registration_id: st.id.clone(),
            outcome,
            reason,
            duration_ms: start.elapsed().as_millis() as u64,
            stages_ms: std::mem::take(&mut st.stages),
        };
        let attempt = Attempt {
            at: now_rfc3339(),
            station: self.station.name.clone(),
            port: port.into(),
            mac: result.mac.clone(),
            registration_id: result.registration_id.clone(),
            result: result.outcome.as_str().to_lowercase(),
            reason: (!result.reason.is_empty()).then(|| result.reason.clone()),
            duration_ms: Some(result.duration_ms as i64),
        };
        if let Err(e) = self.lock().record_attempt(&attempt) {
            self.log(&format!(
                "{port}: could not record the attempt in the ledger: {e:#}"
            ));
        }
        let label = match (&result.registration_id, &result.mac) {
            (Some(id), Some(mac)) => format!("{id} ({mac})"),
            (None, Some(mac)) => mac.clone(),
            _ => String::new(),
        };
        let mut text = result.outcome.as_str().to_string();
        if !label.is_empty() {
            text = format!("{text} {label}");
        }
        if !result.reason.is_empty() {
            text = format!("{text}: {}", result.reason);
        }
        bar.finish_with_message(text.clone());
        self.multi.remove(&bar);
        self.log(&format!("{port}: {text}"));
        self.overall.inc(1);
        self.results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(result.clone());
        result
    }

    /// Records a board that was never started.
    pub fn skip(&self, port: &str, why: &str) {
        self.overall.inc(1);
        self.results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(BoardResult {
                port: port.into(),
                mac: None,
                registration_id: None,
                outcome: Outcome::Skipped,
                reason: why.into(),
                duration_ms: 0,
                stages_ms: Vec::new(),
            });
    }

    /// The report so far, in port order.
    pub fn report(&self) -> BatchReport {
        self.overall.finish_and_clear();
        let mut results = self
            .results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        results.sort_by_key(|r| natural_key(&r.port));
        BatchReport {
            station: self.station.name.clone(),
            dry_run: self.opts.dry_run,
            results,
            elapsed_ms: self.started.elapsed().as_millis() as u64,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pipeline(
        &self,
        port: &str,
        bar: &ProgressBar,
        st: &mut State,
        slot: &mut Option<BoardLink>,
    ) -> Result<(Outcome, String)> {
        let s = self.station;
        st.stage("connect");
        bar.set_message("connecting");
        let link_opts = LinkOptions {
            port: port.into(),
            baud: s.serial.baud,
            before: s.serial.before,
            after: s.serial.after,
            use_stub: s.serial.use_stub,
            // The chip gate is checked below, so a wrong board is reported with its MAC.
            chip: None,
        };
        // One retry: a busy host can miss the loader's short deadlines (MEM_END is 50 ms).
        let opened = BoardLink::open(&link_opts).or_else(|first| {
            if !Path::new(port).exists() {
                return Err(first);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            BoardLink::open(&link_opts).map_err(|_| first)
        });
        let link = slot.insert(opened?);
        st.link_ok = true;
        st.stage("inspect");
        bar.set_message("inspecting");
        let expect = Expectations {
            partition_table_offset: s.table_offset,
            config_partition: s.partition.clone(),
            id_scope: Some(s.id_scope.to_string()),
        };
        st.link_ok = false;
        let report = inspect::inspect(link, &expect)?;
        st.link_ok = true;
        let mac = report
            .mac
            .as_deref()
            .ok_or_else(|| {
                anyhow!("the board reported no MAC address; it cannot be tracked in the ledger")
            })
            .and_then(|m| Mac::parse(m).map_err(|e| anyhow!("board MAC: {e}")))?;
        st.mac = Some(mac);

        // Gates: refuse before any ID is handed out.
        let mut refusals = check_gates(&s.gates, &report);
        if mac.0 == [0; 6] || mac.0 == [0xff; 6] {
            // Every blank board would share one ledger row: refuse rather than guess.
            refusals.push(format!(
                "MAC: reads as {mac} (blank eFuse?), so the board cannot be told apart from others"
            ));
        }
        let part = config_partition(&report, &s.partition, s.nvs_size);
        if let Err(why) = &part {
            refusals.push(why.clone());
        }
        let known = self.lock().find_by_mac(&mac)?;
        if let (None, Some(ConfigState::Present { config, .. }), false) =
            (&known, &report.config, self.opts.force)
        {
            refusals.push(format!(
                "already holds a config for {} (scope {}) that this station's ledger did not write; re-run with --force to overwrite it",
                config.registration_id, config.id_scope
            ));
        }
        if !refusals.is_empty() {
            return Err(Refusal(refusals.join("; ")).into());
        }
        let (part_offset, part_size) = part.map_err(|e| anyhow!(e))?;

        st.stage("allocate");
        bar.set_message("allocating ID");
        let facts = BoardFacts {
            port: port.into(),
            chip: Some(report.chip.clone()),
            revision: report.revision.clone(),
            flash_size: Some(report.flash_size.clone()),
            psram_mb: report.embedded.as_ref().map(|m| m.psram_mb),
            firmware_project: report
                .app
                .as_ref()
                .and_then(|a| a.descriptor.as_ref().ok())
                .map(|d| d.project_name.clone()),
            firmware_version: report
                .app
                .as_ref()
                .and_then(|a| a.descriptor.as_ref().ok())
                .map(|d| d.version.clone()),
            partition: Some(s.partition.clone()),
            partition_offset: Some(part_offset),
        };
        let alloc = self.lock().allocate(&mac, &s.ids, &facts).map_err(|e| {
            match e.downcast::<AllocError>() {
                Ok(a) => anyhow!("no registration ID: {a}"),
                Err(e) => e,
            }
        })?;
        let id = alloc.registration_id.clone();
        st.id = Some(id.to_string());
        let was_done = alloc.status == Status::Done;
        st.owns_row = !was_done || self.opts.force;

        // Derive and build in memory; only hashes of the image ever leave this function.
        st.stage("build");
        bar.set_message(format!("{id}: building"));
        let cfg = s.config_for(&id);
        let image = nvs::build_image(&cfg, s.nvs_size)?;
        let mut full = image.clone();
        full.resize(part_size as usize, 0xFF);
        let sha = hex::encode(Sha256::digest(&full));
        let md5 = hex::encode(Md5::digest(&full));

        st.stage("check");
        bar.set_message(format!("{id}: checking"));
        st.link_ok = false;
        // Inspection already asked the board for this MD5; ask again only if it could not.
        let on_board = match report.config_partition_md5.clone() {
            Some(m) => m,
            None => hex::encode(link.md5(part_offset, part_size)?),
        };
        st.link_ok = true;
        if was_done && !self.opts.force {
            let recorded = alloc.verified_md5.as_deref().unwrap_or_default();
            if on_board == recorded {
                let note = if alloc.image_sha256.as_deref() != Some(sha.as_str()) {
                    "already provisioned; the station config changed since (--force rewrites it)"
                } else {
                    "already provisioned and verified by MD5; nothing written"
                };
                return Ok((Outcome::Unchanged, note.into()));
            }
            bail!(
                "the ledger says done, but {} no longer holds the image recorded for {id} (board MD5 {on_board}, ledger {recorded}); check the board, then re-run with --force to write it again with the same ID",
                s.partition
            );
        }
        if on_board == md5 && !self.opts.force {
            // The image is already there (e.g. a run died between writing and recording):
            // the board's own MD5 just verified it, so record it without rewriting.
            let note = "image already on the board (verified by MD5); recorded without rewriting";
            if self.opts.dry_run {
                return Ok((
                    Outcome::WouldWrite,
                    "image already on the board; would only record it".into(),
                ));
            }
            self.lock().mark_done(&mac, &sha, &md5)?;
            return Ok((Outcome::Done, note.into()));
        }
        if self.opts.dry_run {
            return Ok((Outcome::WouldWrite, String::new()));
        }

        self.lock().mark_writing(&mac, &sha)?;
        st.stage("write");
        bar.set_message(format!("{id}: writing"));
        st.link_ok = false;
        let mut progress = BarProgress::new(bar.clone());
        // Inspection read the table on this link a moment ago: write where it said.
        let target = write::Target {
            partition: s.partition.clone(),
            offset: part_offset,
            size: part_size,
        };
        let outcome =
            write::write_config_at(link, &target, &image, write::Proof::Md5, &mut progress)?;
        st.link_ok = true;
        if outcome.md5 != md5 {
            bail!("internal: the verified image is not the one built for {id}; the board is NOT provisioned");
        }
        match &outcome.read_back {
            ConfigState::Present { config, .. } if config.registration_id == id.as_str() => {}
            other => bail!("read-back after the write does not show {id} ({other:?}); the board is NOT provisioned"),
        }
        self.lock().mark_done(&mac, &sha, &outcome.md5)?;
        Ok((Outcome::Done, String::new()))
    }
}

/// Per-attempt bookkeeping for the error path.
#[derive(Default)]
struct State {
    mac: Option<Mac>,
    id: Option<String>,
    /// True when a failure should be written to the board's ledger row.
    owns_row: bool,
    /// False while a command is in flight on the link, so a link that failed is not reused.
    link_ok: bool,
    stages: Vec<(&'static str, u64)>,
    current: Option<(&'static str, Instant)>,
}

impl State {
    /// Closes the running stage and starts `name` ("" just closes).
    fn stage(&mut self, name: &'static str) {
        if let Some((prev, since)) = self.current.take() {
            self.stages.push((prev, since.elapsed().as_millis() as u64));
        }
        if !name.is_empty() {
            self.current = Some((name, Instant::now()));
        }
    }
}

/// A gate refused the board (no ID was handed out).
#[derive(Debug)]
pub struct Refusal(pub String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

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
fn flash_mb(s: &str) -> Option<f64> {
    if let Some(n) = s.strip_suffix("MB") {
        n.parse::<f64>().ok()
    } else {
        s.strip_suffix("KB")
            .and_then(|n| n.parse::<f64>().ok())
            .map(|k| k / 1024.0)
    }
}

/// The config partition's (offset, size), or why the board cannot take this station's blob.
fn config_partition(
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

/// An error as one line: its chain joined, with no newlines.
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

/// Provisions `ports` with at most `[ports] parallel` boards at once (default: all at once).
/// Ctrl-C (`stop`) lets running boards finish and skips the rest.
pub fn run_batch(
    station: &Station,
    ports: &[String],
    opts: RunOptions,
    stop: &AtomicBool,
) -> Result<BatchReport> {
    let bench = Bench::new(station, opts, stop)?;
    bench.expect_boards(ports.len() as u64);
    let queue = Mutex::new(ports.iter().cloned().collect::<VecDeque<_>>());
    let workers = station
        .ports
        .parallel
        .unwrap_or(ports.len())
        .clamp(1, ports.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                let Some(port) = next else { break };
                if bench.stopping() {
                    bench.skip(&port, "not started: interrupted");
                    continue;
                }
                bench.provision_port(&port);
            });
        }
    });
    Ok(bench.report())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flash_sizes() {
        assert_eq!(flash_mb("4MB"), Some(4.0));
        assert_eq!(flash_mb("512KB"), Some(0.5));
    }
}
