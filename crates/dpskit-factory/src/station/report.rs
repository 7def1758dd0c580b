//! What a batch did: per board the outcome, reason and stage timings, and the final table.

use serde::Serialize;

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
    /// Set when the ledger's database failed during the batch (exit code 3): what failed,
    /// and that boards not recorded as done are finished by the next run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ledger_fault: Option<String>,
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
