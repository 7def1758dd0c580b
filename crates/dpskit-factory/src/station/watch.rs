//! The line mode (`provision --watch`): keep running, and provision each board as its port
//! appears. A port that stays plugged in is provisioned once; unplugging it and plugging the
//! next board in starts the next one. Ctrl-C stops taking new boards, lets the ones in flight
//! finish, and returns the summary.

use super::file::{PortSelection, Station};
use super::ledger::LedgerError;
use super::provision::{discover_ports, BatchReport, Bench, RunOptions};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a port must exist before it is opened (USB enumeration and udev permissions
/// settle in this time on real hubs).
pub const SETTLE: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortState {
    /// Seen at this instant; waiting for [`SETTLE`].
    Appeared(Instant),
    /// A worker is on it.
    InFlight,
    /// Done with the board currently plugged in; forgotten when the port disappears.
    Handled,
}

/// Watches the station's ports (or `explicit`) until `stop` is set, provisioning each new
/// board; returns the summary of every board seen.
pub fn run_watch(
    station: &Station,
    explicit: &[String],
    opts: RunOptions,
    stop: &AtomicBool,
    poll: Duration,
) -> Result<BatchReport, LedgerError> {
    let bench = Bench::new(station, opts, stop)?;
    let selection = if explicit.is_empty() {
        station.ports.clone()
    } else {
        PortSelection {
            paths: explicit.to_vec(),
            parallel: station.ports.parallel,
            ..Default::default()
        }
    };
    let limit = station.ports.parallel.unwrap_or(usize::MAX);
    let states: Mutex<HashMap<String, PortState>> = Mutex::new(HashMap::new());
    let in_flight = AtomicUsize::new(0);
    bench.log(&format!(
        "watching for boards on {}; Ctrl-C stops after the boards in progress",
        describe(&selection)
    ));
    std::thread::scope(|scope| {
        while !bench.stopping() {
            let present = discover_ports(&selection, false);
            let mut to_start = Vec::new();
            {
                let mut st = states.lock().unwrap_or_else(|p| p.into_inner());
                // Ports that went away: the next board on them is a new board.
                st.retain(|port, s| *s == PortState::InFlight || present.contains(port));
                let now = Instant::now();
                for port in &present {
                    let s = st.entry(port.clone()).or_insert(PortState::Appeared(now));
                    if let PortState::Appeared(t) = *s {
                        if now.duration_since(t) >= SETTLE
                            && in_flight.load(Ordering::SeqCst) + to_start.len() < limit
                        {
                            *s = PortState::InFlight;
                            to_start.push(port.clone());
                        }
                    }
                }
            }
            for port in to_start {
                in_flight.fetch_add(1, Ordering::SeqCst);
                bench.expect_boards(1);
                let (bench, states, in_flight) = (&bench, &states, &in_flight);
                scope.spawn(move || {
                    bench.provision_port(&port);
                    states
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(port, PortState::Handled);
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                });
            }
            std::thread::sleep(poll);
        }
        let waiting = in_flight.load(Ordering::SeqCst);
        if waiting > 0 {
            bench.log(&format!(
                "stopping: waiting for {waiting} board(s) in progress"
            ));
        }
    });
    Ok(bench.report())
}

fn describe(sel: &PortSelection) -> String {
    let mut parts: Vec<String> = sel.paths.clone();
    parts.extend(sel.usb.iter().map(|(v, p)| match p {
        Some(p) => format!("USB {v:04x}:{p:04x}"),
        None => format!("USB {v:04x}:*"),
    }));
    if parts.is_empty() {
        "no ports (set [ports] paths or usb)".into()
    } else {
        parts.join(", ")
    }
}
