//! The per-board pipeline and the batch around it: one worker per port, in parallel.
//!
//! Per board: connect → inspect → gates → allocate the registration ID in the ledger → derive
//! → build the blob → write → verify → record → reset. All reads happen before the write,
//! because in ROM mode FLASH_END ends the loader. A board counts as done only after the MD5
//! the board computed over its config partition matched the image; that MD5 goes into the
//! ledger. The group key stays in this process's memory: it is never logged, never stored.

use super::assign::Mac;
use super::decide::{self, check_gates, config_partition, Action, Refusal};
pub use super::discover::discover_ports;
use super::discover::natural_key;
use super::file::Station;
use super::ledger::{Attempt, BoardFacts, Ledger, LedgerError, Status};
use super::now_rfc3339;
use super::progress::BenchUi;
pub use super::report::{BatchReport, BoardResult, Outcome};
use crate::blob::nvs;
use crate::board::inspect::{self, ConfigState, Expectations};
use crate::board::progress::BarProgress;
use crate::board::{write, BoardLink, LinkOptions};
use anyhow::{anyhow, bail, Result};
use indicatif::ProgressBar;
use md5::Md5;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

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
    ui: BenchUi,
    stop: &'a AtomicBool,
    results: Mutex<Vec<BoardResult>>,
    /// The first failure of the ledger's database in this batch (exit code 3).
    ledger_fault: Mutex<Option<String>>,
    started: Instant,
}

impl<'a> Bench<'a> {
    /// Opens the station's ledger (or, for a dry run, an in-memory copy of it). A shared
    /// ledger that cannot be reached stops the station here.
    pub fn new(
        station: &'a Station,
        opts: RunOptions,
        stop: &'a AtomicBool,
    ) -> Result<Bench<'a>, LedgerError> {
        let ledger = if opts.dry_run {
            Ledger::dry_run_copy(&station.ledger, &station.name)?
        } else {
            Ledger::open_target(&station.ledger, &station.name)?
        };
        Ok(Bench {
            station,
            ledger: Mutex::new(ledger),
            ui: BenchUi::new(opts.progress),
            opts,
            stop,
            results: Mutex::new(Vec::new()),
            ledger_fault: Mutex::new(None),
            started: Instant::now(),
        })
    }

    /// Prints a line above the bars (or plainly on stderr when there are none).
    pub fn log(&self, line: &str) {
        self.ui.log(line);
    }

    /// True once Ctrl-C was pressed: no new board starts.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Adds `n` boards to the overall bar's length.
    pub fn expect_boards(&self, n: u64) {
        self.ui.expect_boards(n);
    }

    /// Runs one board start to end; never panics the batch, always yields a result.
    pub fn provision_port(&self, port: &str) -> BoardResult {
        let bar = self.ui.board(port);
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
                    self.note_ledger_fault(&e);
                    if let (true, Some(mac)) = (st.owns_row, &st.mac) {
                        if let Err(le) = self.lock().mark_failed(mac, &reason) {
                            self.log(&format!(
                                "{port}: could not record the failure in the ledger: {le:#}"
                            ));
                            self.note_ledger_fault(&le.into());
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
            self.note_ledger_fault(&e.into());
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
        self.ui.board_finished(port, &bar, text);
        self.results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(result.clone());
        result
    }

    /// Records a board that was never started.
    pub fn skip(&self, port: &str, why: &str) {
        self.ui.board_skipped();
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
        self.ui.finish();
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
            ledger_fault: self
                .ledger_fault
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// Remembers the first failure of the ledger's database (not a plan refusal).
    fn note_ledger_fault(&self, e: &anyhow::Error) {
        if let Some(le) = e.downcast_ref::<LedgerError>() {
            if le.is_environment() {
                self.ledger_fault
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert_with(|| le.to_string());
            }
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
        let alloc = self
            .lock()
            .allocate(&mac, &s.ids, &facts)
            .map_err(|e| match e {
                LedgerError::Alloc(a) => anyhow!("no registration ID: {a}"),
                e => e.into(),
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
        let facts = decide::Facts {
            was_done,
            recorded_md5: alloc.verified_md5.as_deref(),
            recorded_sha: alloc.image_sha256.as_deref(),
            on_board: &on_board,
            md5: &md5,
            sha: &sha,
            force: self.opts.force,
            dry_run: self.opts.dry_run,
        };
        match decide::action(&facts, &s.partition, id.as_str()) {
            Action::Unchanged(note) => return Ok((Outcome::Unchanged, note.into())),
            Action::Reverify(why) => {
                // The board no longer holds what the ledger says: out of `done` (the error
                // path records the failure on the row).
                st.owns_row = !self.opts.dry_run;
                bail!(why);
            }
            Action::WouldWrite(note) => return Ok((Outcome::WouldWrite, note.into())),
            Action::RecordOnly => {
                // The image is already there (e.g. a run died between writing and
                // recording): the board's own MD5 just verified it, so record it without
                // rewriting.
                self.lock().mark_done(&mac, &sha, &md5)?;
                return Ok((
                    Outcome::Done,
                    "image already on the board (verified by MD5); recorded without rewriting"
                        .into(),
                ));
            }
            Action::Write => {}
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
) -> Result<BatchReport, LedgerError> {
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
