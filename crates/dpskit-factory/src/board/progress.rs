//! indicatif progress bars fed by espflash's progress callbacks.

use espflash::target::ProgressCallbacks;
use indicatif::{ProgressBar, ProgressStyle};

/// One bar for one board's write; hidden when stderr is not a terminal.
pub struct BarProgress {
    pub bar: ProgressBar,
}

impl BarProgress {
    /// A bar of its own for the board on `port`, drawn on stderr when `visible`.
    pub fn for_port(port: &str, visible: bool) -> Self {
        let bar = ProgressBar::new(0);
        if !visible {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let progress = BarProgress::new(bar);
        progress.bar.set_prefix(port.to_string());
        progress
    }

    pub fn new(bar: ProgressBar) -> Self {
        bar.set_style(
            ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        BarProgress { bar }
    }
}

impl ProgressCallbacks for BarProgress {
    fn init(&mut self, addr: u32, total: usize) {
        self.bar.set_length(total as u64);
        self.bar.set_position(0);
        self.bar.set_message(format!("writing at {addr:#x}"));
    }
    fn update(&mut self, current: usize) {
        self.bar.set_position(current as u64);
    }
    fn verifying(&mut self) {
        self.bar.set_message("verifying (MD5)");
    }
    fn finish(&mut self, skipped: bool) {
        self.bar
            .set_message(if skipped { "unchanged" } else { "written" });
    }
}
