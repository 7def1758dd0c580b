//! Wall time of a provisioning batch against virtual boards: 1, 10, 50 and 100 boards, each in
//! a fresh station (new ledger, factory-fresh flash), all ports at once.
//!
//! `cargo bench --bench batch` (add `-- 1 10` for other sizes, `-- rom` for the ROM loader,
//! `-- paced` for line-rate boards). The goal: 100 boards in at most twice the time of one.
//! By default virtual boards answer at CPU speed, so this measures dpskit's own cost per board
//! (espflash protocol, stub upload, inspection, NVS image, MD5, SQLite) and how well it
//! overlaps. With `paced` each board's line runs at its baud rate (115200, then the station's
//! 921600), as a real UART does, so a board's time is mostly the line's, as on a real bench.

mod common {
    pub mod station;
}

use dpskit_factory::station::provision::{run_batch, Outcome, RunOptions};
use dpskit_rehearsal::sim::{SimBoardConfig, VirtualBoard};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

const ROUNDS: usize = 3;

struct Sample {
    wall: Duration,
    /// CPU time of the whole process (dpskit workers and the virtual boards' threads).
    cpu: Duration,
    /// Mean milliseconds per board in each stage.
    stages: String,
    /// Reasons of boards that did not end done.
    failed: Vec<String>,
    board_median: Duration,
    board_max: Duration,
}

fn one_batch(n: usize, stub: bool, paced: bool, parallel: Option<usize>) -> Sample {
    let dir = tempfile::tempdir().unwrap();
    let flash = dir.path().join("flash");
    std::fs::create_dir(&flash).unwrap();
    let template = SimBoardConfig {
        line_rate: paced,
        ..SimBoardConfig::default()
    };
    let mut boards: Vec<VirtualBoard> = (0..n)
        .map(|i| VirtualBoard::spawn(template.for_batch(i, &flash)).unwrap())
        .collect();
    let ports: Vec<String> = boards
        .iter()
        .map(|b| b.pty_path().display().to_string())
        .collect();
    let st = common::station::bench_station(dir.path(), stub, paced.then_some(921_600), parallel);
    let stop = AtomicBool::new(false);
    let (start, cpu0) = (Instant::now(), cpu_time());
    let report = run_batch(&st, &ports, RunOptions::default(), &stop).unwrap();
    let (wall, cpu) = (start.elapsed(), cpu_time() - cpu0);
    let failed: Vec<String> = report
        .results
        .iter()
        .filter(|r| r.outcome != Outcome::Done)
        .map(|r| r.reason.clone())
        .collect();
    let mut per: Vec<u64> = report.results.iter().map(|r| r.duration_ms).collect();
    per.sort_unstable();
    for b in &mut boards {
        b.stop();
    }
    let mut stages: Vec<(&str, u64)> = Vec::new();
    for r in &report.results {
        for (name, ms) in &r.stages_ms {
            match stages.iter_mut().find(|(n, _)| n == name) {
                Some(s) => s.1 += ms,
                None => stages.push((name, *ms)),
            }
        }
    }
    Sample {
        wall,
        cpu,
        failed,
        stages: stages
            .into_iter()
            .map(|(name, ms)| format!("{name} {}", ms / n as u64))
            .collect::<Vec<_>>()
            .join(", "),
        board_median: Duration::from_millis(per[per.len() / 2]),
        board_max: Duration::from_millis(*per.last().unwrap()),
    }
}

/// User + system CPU time of this process so far, from /proc/self/stat (in 10 ms ticks).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = after_name
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // Fields 14 and 15 of the file: 12th and 13th after the command name.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    // USER_HZ: 100 on Linux whatever the kernel's own tick rate.
    Duration::from_millis(ticks * 10)
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let stub = !argv.iter().any(|a| a == "rom");
    let paced = argv.iter().any(|a| a == "paced");
    let args: Vec<usize> = argv.iter().filter_map(|a| a.parse().ok()).collect();
    let parallel: Option<usize> = argv
        .iter()
        .find_map(|a| a.strip_prefix("parallel=")?.parse().ok());
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it,
    // and then a smoke pass (1 and 3 boards) checks the benchmark still works.
    let benchmarking = argv.iter().any(|a| a == "--bench");
    let sizes = match (args.is_empty(), benchmarking) {
        (false, _) => args,
        (true, true) => vec![1, 10, 50, 100],
        (true, false) => vec![1, 3],
    };
    let mode = if stub {
        "flasher stub"
    } else {
        "ROM loader (no stub)"
    };
    let width = parallel.map_or("all ports at once".to_string(), |p| {
        format!("at most {p} at once")
    });
    let line = if paced {
        "line-rate boards (115200, then 921600 baud)"
    } else {
        "boards at CPU speed"
    };
    println!("dpskit provision: virtual ESP32-S3 {line}, {mode}, {width}; best and median of {ROUNDS} rounds");
    println!(
        "{:>6}  {:>10}  {:>10}  {:>10}  {:>12}  {:>12}  {:>9}  mean ms per board by stage",
        "boards", "wall best", "wall med", "CPU/board", "board median", "board max", "vs 1 board"
    );
    let mut base: Option<Duration> = None;
    for n in sizes {
        let mut samples: Vec<Sample> = (0..ROUNDS)
            .map(|_| one_batch(n, stub, paced, parallel))
            .collect();
        samples.sort_by_key(|s| s.wall);
        let best = &samples[0];
        let med = &samples[ROUNDS / 2];
        let b = *base.get_or_insert(med.wall);
        println!(
            "{n:>6}  {:>8.0}ms  {:>8.0}ms  {:>8.0}ms  {:>10.0}ms  {:>10.0}ms  {:>8.1}x  {}",
            best.wall.as_secs_f64() * 1e3,
            med.wall.as_secs_f64() * 1e3,
            med.cpu.as_secs_f64() * 1e3 / n as f64,
            med.board_median.as_secs_f64() * 1e3,
            med.board_max.as_secs_f64() * 1e3,
            med.wall.as_secs_f64() / b.as_secs_f64(),
            med.stages
        );
        for (round, s) in samples.iter().enumerate() {
            for reason in &s.failed {
                println!("        a board failed (one of {ROUNDS} rounds, #{round} by wall time): {reason}");
            }
        }
    }
}
