//! The emulator's log: every event is one JSON line (for `--log-json`, for `dpskit cloud events`
//! followers, and telemetry also on stdout), and everything but telemetry is also one plain
//! line on stderr for the person watching. Writing happens on one background thread so a slow
//! terminal never stalls a device connection. Keys and tokens never reach it.
//!
//! Bounded: at most `backlog` lines wait for the writer. When stdout or the log file cannot
//! keep up (a terminal paused with Ctrl-S, a full disk), further lines are dropped, counted,
//! and the count is written as a `dropped` event once the writer catches up, so memory stays
//! flat and the gap is visible. Followers of the event stream have their own bounded backlog
//! and are told how many events they missed.

use super::clock::{self, SharedClock};
use serde_json::{json, Map, Value};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};

/// Lines a `cloud events` follower may fall behind before it is told it missed some.
const EVENTS_BACKLOG: usize = 4096;

enum Line {
    Record {
        json: String,
        stdout: bool,
        human: Option<String>,
    },
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Cheap to clone; all clones feed the same writer.
#[derive(Clone)]
pub(crate) struct Journal {
    tx: mpsc::Sender<Line>,
    events: broadcast::Sender<Arc<str>>,
    dropped: Arc<AtomicU64>,
    clock: SharedClock,
}

/// Where the journal writes.
pub(crate) struct Sinks {
    pub log_json: Option<PathBuf>,
    /// Telemetry JSON lines on stdout.
    pub echo_telemetry: bool,
    /// Plain diagnostics on stderr.
    pub human: bool,
    /// Lines that may wait for the writer.
    pub backlog: usize,
}

impl Journal {
    /// Opens the log file and starts the writer thread; it ends when the last clone is dropped.
    pub fn start(sinks: Sinks, clock: SharedClock) -> Result<Journal, super::EmulatorError> {
        let mut file = match &sinks.log_json {
            Some(p) => Some(std::io::BufWriter::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|source| super::EmulatorError::LogFile {
                        path: p.clone(),
                        source,
                    })?,
            )),
            None => None,
        };
        let (tx, mut rx) = mpsc::channel::<Line>(sinks.backlog.max(1));
        let (events, _) = broadcast::channel(EVENTS_BACKLOG);
        let dropped = Arc::new(AtomicU64::new(0));
        let echo = sinks.echo_telemetry;
        let human = sinks.human;
        let counter = dropped.clone();
        let stamp = clock.clone();
        let writer = move || {
            let stdout = std::io::stdout();
            let stderr = std::io::stderr();
            let mut reported = 0u64;
            while let Some(first) = rx.blocking_recv() {
                let mut out = stdout.lock();
                let mut next = Some(first);
                while let Some(line) = next.take() {
                    match line {
                        Line::Record {
                            json,
                            stdout,
                            human: h,
                        } => {
                            if let Some(f) = file.as_mut() {
                                let _ = writeln!(f, "{json}");
                            }
                            if stdout && echo {
                                let _ = writeln!(out, "{json}");
                            }
                            if let (Some(h), true) = (h, human) {
                                let _ = writeln!(stderr.lock(), "{h}");
                            }
                        }
                        Line::Flush(done) => {
                            if let Some(f) = file.as_mut() {
                                let _ = f.flush();
                            }
                            let _ = done.send(());
                        }
                    }
                    next = rx.try_recv().ok();
                }
                let _ = out.flush();
                // Caught up: say how many lines did not fit while it was behind.
                let total = counter.load(Ordering::Relaxed);
                if total > reported {
                    let missed = total - reported;
                    reported = total;
                    let message = format!("{missed} event(s) dropped: the log output (stdout, stderr or --log-json) could not keep up; {total} dropped so far");
                    let record = json!({ "time": clock::rfc3339(stamp.as_ref()), "kind": "dropped", "who": "emulator", "message": message, "dropped": missed, "droppedTotal": total });
                    if let Some(f) = file.as_mut() {
                        let _ = writeln!(f, "{record}");
                    }
                    if human {
                        let _ = writeln!(
                            stderr.lock(),
                            "dpskit emulate: dropped: emulator: {message}"
                        );
                    }
                }
                if let Some(f) = file.as_mut() {
                    let _ = f.flush();
                }
            }
        };
        // A plain thread, not the runtime's: it must outlive no runtime and block on nothing async.
        std::thread::Builder::new()
            .name("dpskit-emulator-log".into())
            .spawn(writer)
            .map_err(super::EmulatorError::Journal)?;
        Ok(Journal {
            tx,
            events,
            dropped,
            clock,
        })
    }

    /// Followers of the event stream (`dpskit cloud events`).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.events.subscribe()
    }

    /// Lines dropped so far because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// A telemetry message (already shaped as its JSON line, `kind` added here).
    pub fn telemetry(&self, mut record: Map<String, Value>) {
        record.insert("kind".into(), "telemetry".into());
        self.emit(record, true, None);
    }

    /// A diagnostic or lifecycle event: `kind` (`connected`, `rejected`, …), who it is about,
    /// and the explanation in plain words.
    pub fn note(&self, kind: &str, who: &str, message: &str, extra: Value) {
        let mut record = Map::new();
        record.insert("kind".into(), kind.into());
        record.insert("who".into(), who.into());
        record.insert("message".into(), message.into());
        if let Value::Object(extra) = extra {
            record.extend(extra);
        }
        let human = format!("dpskit emulate: {kind}: {who}: {message}");
        self.emit(record, false, Some(human));
    }

    fn emit(&self, mut record: Map<String, Value>, stdout: bool, human: Option<String>) {
        let mut full = Map::new();
        full.insert("time".into(), clock::rfc3339(self.clock.as_ref()).into());
        full.append(&mut record);
        let json = Value::Object(full).to_string();
        let _ = self.events.send(Arc::from(json.as_str()));
        let line = Line::Record {
            json,
            stdout,
            human,
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(line) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits until everything logged so far is written.
    pub async fn flush(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(Line::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// An empty extra for [`Journal::note`].
pub(crate) fn none() -> Value {
    json!({})
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::emulator::clock::SystemClock;
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::OpenOptionsExt;

    /// A log output that stops reading (a FIFO nobody drains): the journal keeps its backlog,
    /// drops and counts the rest, and says so once the output reads again.
    #[test]
    fn a_blocked_output_drops_and_counts_instead_of_growing() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("log.fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // Open the reading end first (without blocking), so the journal can open the writer.
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let journal = Journal::start(
            Sinks {
                log_json: Some(fifo.clone()),
                echo_telemetry: false,
                human: false,
                backlog: 4,
            },
            Arc::new(SystemClock),
        )
        .unwrap();
        // Far more than the pipe holds (64 KB) plus the backlog.
        let filler = "x".repeat(500);
        for i in 0..2000 {
            journal.note("warning", "test", &format!("{i} {filler}"), none());
        }
        let dropped = journal.dropped();
        assert!(dropped > 0, "nothing dropped: the output was never behind");
        // Drain the pipe: the writer catches up and reports the gap.
        let flags = nix::fcntl::OFlag::empty();
        use std::os::fd::AsRawFd;
        nix::fcntl::fcntl(reader.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags)).unwrap();
        let mut lines = BufReader::new(reader).lines();
        let report = lines
            .find(|l| l.as_ref().is_ok_and(|l| l.contains(r#""kind":"dropped""#)))
            .expect("a dropped event")
            .unwrap();
        let v: Value = serde_json::from_str(&report).unwrap();
        assert!(v["dropped"].as_u64().unwrap() > 0);
        assert!(v["droppedTotal"].as_u64().unwrap() <= journal.dropped());
        assert!(v["message"].as_str().unwrap().contains("could not keep up"));
    }
}
