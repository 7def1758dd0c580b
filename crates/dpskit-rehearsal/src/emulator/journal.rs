//! The emulator's log: every event is one JSON line (for `--log-json`, for `dpskit cloud events`
//! followers, and telemetry also on stdout), and everything but telemetry is also one plain
//! line on stderr for the person watching. Writing happens on one background task so a slow
//! terminal never stalls a device connection. Keys and tokens never reach it.

use serde_json::{json, Map, Value};
use std::io::Write;
use std::path::PathBuf;
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
    tx: mpsc::UnboundedSender<Line>,
    events: broadcast::Sender<Arc<str>>,
}

/// Where the journal writes.
pub(crate) struct Sinks {
    pub log_json: Option<PathBuf>,
    /// Telemetry JSON lines on stdout.
    pub echo_telemetry: bool,
    /// Plain diagnostics on stderr.
    pub human: bool,
}

impl Journal {
    /// Starts the writer thread; it ends when the last clone is dropped.
    pub fn start(sinks: Sinks) -> anyhow::Result<Journal> {
        let mut file = match &sinks.log_json {
            Some(p) => Some(std::io::BufWriter::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| anyhow::anyhow!("--log-json: cannot open {}: {e}", p.display()))?,
            )),
            None => None,
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<Line>();
        let (events, _) = broadcast::channel(EVENTS_BACKLOG);
        let echo = sinks.echo_telemetry;
        let human = sinks.human;
        let writer = move || {
            let stdout = std::io::stdout();
            let stderr = std::io::stderr();
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
                if let Some(f) = file.as_mut() {
                    let _ = f.flush();
                }
            }
        };
        // A plain thread, not the runtime's: it must outlive no runtime and block on nothing async.
        std::thread::Builder::new()
            .name("dpskit-emulator-log".into())
            .spawn(writer)?;
        Ok(Journal { tx, events })
    }

    /// Followers of the event stream (`dpskit cloud events`).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.events.subscribe()
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
        full.insert("time".into(), now_rfc3339().into());
        full.append(&mut record);
        let json = Value::Object(full).to_string();
        let _ = self.events.send(Arc::from(json.as_str()));
        let _ = self.tx.send(Line::Record {
            json,
            stdout,
            human,
        });
    }

    /// Waits until everything logged so far is written.
    pub async fn flush(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(Line::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

pub(crate) use dpskit_factory::timestamp::now_rfc3339_millis as now_rfc3339;

/// An empty extra for [`Journal::note`].
pub(crate) fn none() -> Value {
    json!({})
}
