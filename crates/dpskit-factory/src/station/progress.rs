//! What the operator sees while a batch runs: a bar per board and one for the batch on
//! stderr (indicatif; hidden when stderr is not a terminal), and log lines above them.
//! Kept apart from the pipeline so the decisions never depend on the display.

use super::discover::short_port;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct BenchUi {
    multi: MultiProgress,
    overall: ProgressBar,
}

impl BenchUi {
    /// Bars on stderr when `visible`, else plain log lines only.
    pub fn new(visible: bool) -> BenchUi {
        let target = if visible {
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
        BenchUi { multi, overall }
    }

    /// Prints a line above the bars (or plainly on stderr when there are none).
    pub fn log(&self, line: &str) {
        if self.multi.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.multi.println(line);
        }
    }

    /// Adds `n` boards to the batch bar's length.
    pub fn expect_boards(&self, n: u64) {
        self.overall.inc_length(n);
    }

    /// A new line for the board on `port`: text until the write, whose chunks then fill it
    /// as a bar (BarProgress's style).
    pub fn board(&self, port: &str) -> ProgressBar {
        let bar = self.multi.insert_before(&self.overall, ProgressBar::new(0));
        bar.set_style(
            ProgressStyle::with_template("{prefix:>14} {elapsed:>3} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(short_port(port));
        bar
    }

    /// The board's line is done: its last message is logged and the batch bar advances.
    pub fn board_finished(&self, port: &str, bar: &ProgressBar, text: String) {
        bar.finish_with_message(text.clone());
        self.multi.remove(bar);
        self.log(&format!("{port}: {text}"));
        self.overall.inc(1);
    }

    /// A board that never started still counts towards the batch.
    pub fn board_skipped(&self) {
        self.overall.inc(1);
    }

    pub fn finish(&self) {
        self.overall.finish_and_clear();
    }
}
