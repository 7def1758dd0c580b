//! A cold board, from connect to a verified config, on the chip's real ROM and on the model.
//!
//! `cargo bench --bench cold_board` (needs `ESP_QEMU_DIR`, Espressif's QEMU with the S3 ROM):
//! 1. per cold board (a fresh ROM boot each), 921600 baud, rounds alternating between jobs:
//!    `dpskit write-config` and `dpskit inspect` with the ROM loader and with `--stub`, and
//!    Espressif's Python chain for the same job (NVS generator + `esptool write-flash`) —
//!    on the real ROM and on virtual boards that use the ROM timing model;
//! 2. the model against the real ROM, per ROM command;
//! 3. batches: 1, 10, 50 real-ROM boards at once, 1 and 100 virtual boards (ROM model).
//!
//! Arguments after `--`: `rounds=N` (default 5), `batch=1,10,50` (real-ROM batch sizes),
//! `virtual-batch=1,100`, `virtual` (no QEMU: virtual boards only), `calibrate` (only part 2).
//! Under `cargo test --all-targets` (no `--bench`) it runs a smoke pass on virtual boards, so
//! the harness is known to work without the emulator.

mod harness;
#[path = "../common/station.rs"]
mod station;

use harness::{Board, Job, Op, Rig};
use std::time::Duration;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn arg_list(argv: &[String], name: &str, default: &[usize]) -> Vec<usize> {
    argv.iter()
        .find_map(|a| a.strip_prefix(&format!("{name}=")))
        .map(|v| v.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let benchmarking = argv.iter().any(|a| a == "--bench");
    let virtual_only = !benchmarking || argv.iter().any(|a| a == "virtual");
    let rounds = arg_list(&argv, "rounds", &[if benchmarking { 5 } else { 1 }])[0].max(1);
    let rigs: Vec<Rig> = if virtual_only {
        vec![Rig::Model]
    } else {
        // Fail here, not later, when the emulator is not there.
        dpskit_rehearsal::sim::qemu::qemu_dir()?;
        vec![Rig::RealRom, Rig::Model]
    };
    let dpskit = harness::dpskit();
    let work = tempfile::tempdir()?;

    if !argv.iter().any(|a| a == "calibrate") {
        let jobs = [
            Job::WriteConfig { stub: false },
            Job::WriteConfig { stub: true },
            Job::Inspect { stub: false },
            Job::Inspect { stub: true },
            Job::PythonChain,
        ];
        println!("Per cold board, 921600 baud, median (best) of {rounds} rounds alternating jobs:");
        println!(
            "{:<46} {:>26} {:>26}",
            "job",
            Rig::RealRom.name(),
            Rig::Model.name()
        );
        let mut results: Vec<Vec<Vec<Duration>>> = vec![vec![Vec::new(); rigs.len()]; jobs.len()];
        for _ in 0..rounds {
            for (j, job) in jobs.iter().enumerate() {
                for (r, rig) in rigs.iter().enumerate() {
                    let board = Board::cold(*rig, 0)?;
                    results[j][r].push(harness::run_job(&dpskit, *job, &board, work.path())?);
                }
            }
        }
        let mut medians = vec![vec![Duration::ZERO; rigs.len()]; jobs.len()];
        for (j, job) in jobs.iter().enumerate() {
            let mut cols = Vec::new();
            for r in [Rig::RealRom, Rig::Model] {
                match rigs.iter().position(|x| *x == r) {
                    Some(i) => {
                        let v = &mut results[j][i];
                        let m = harness::median(v);
                        medians[j][i] = m;
                        cols.push(format!("{:>8.0} ms ({:>5.0} ms)", ms(m), ms(v[0])));
                    }
                    None => cols.push("-".into()),
                }
            }
            println!("{:<46} {:>26} {:>26}", job.name(), cols[0], cols[1]);
        }
        for (i, rig) in rigs.iter().enumerate() {
            let ours = medians[0][i];
            let theirs = medians[4][i];
            println!(
                "{}: the Python chain takes {:.1}x dpskit write-config's time (ROM loader)",
                rig.name(),
                theirs.as_secs_f64() / ours.as_secs_f64()
            );
        }
        if rigs.len() == 2 {
            for (j, job) in jobs.iter().enumerate() {
                let (real, model) = (medians[j][0], medians[j][1]);
                println!(
                    "model error, {}: {:+.0} %",
                    job.name(),
                    (ms(model) / ms(real) - 1.0) * 100.0
                );
            }
        }
    }

    println!(
        "\nPer ROM command at 921600 baud (median of {} on one board):",
        10 * rounds
    );
    println!(
        "{:<44} {:>16} {:>16} {:>8}",
        "command", "real ROM", "model", "error"
    );
    let mut per_rig: Vec<Vec<Duration>> = Vec::new();
    for rig in &rigs {
        let board = Board::cold(*rig, 0)?;
        let mut c = harness::rom_connection(&board.port())?;
        per_rig.push(
            Op::ALL
                .iter()
                .map(|op| harness::time_op(&mut c, *op, 10 * rounds))
                .collect::<anyhow::Result<_>>()?,
        );
    }
    for (i, op) in Op::ALL.iter().enumerate() {
        let get = |r: Rig| rigs.iter().position(|x| *x == r).map(|k| per_rig[k][i]);
        let (real, model) = (get(Rig::RealRom), get(Rig::Model));
        let show = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.2} ms", ms(d)));
        let err = match (real, model) {
            (Some(r), Some(m)) => format!("{:+.0} %", (ms(m) / ms(r) - 1.0) * 100.0),
            _ => "-".into(),
        };
        println!(
            "{:<44} {:>16} {:>16} {:>8}",
            op.name(),
            show(real),
            show(model),
            err
        );
    }
    if argv.iter().any(|a| a == "calibrate") {
        return Ok(());
    }

    println!("\nBatches: dpskit provision (ROM loader, 921600 baud) on N cold boards at once, wall time:");
    let mut sizes: Vec<(Rig, usize)> = Vec::new();
    if rigs.contains(&Rig::RealRom) {
        sizes.extend(
            arg_list(&argv, "batch", &[1, 10, 50])
                .into_iter()
                .map(|n| (Rig::RealRom, n)),
        );
    }
    let virtual_sizes: &[usize] = if benchmarking { &[1, 100] } else { &[1, 3] };
    sizes.extend(
        arg_list(&argv, "virtual-batch", virtual_sizes)
            .into_iter()
            .map(|n| (Rig::Model, n)),
    );
    let mut base: Option<(Rig, Duration)> = None;
    for (rig, n) in sizes {
        let boards = match (0..n)
            .map(|i| Board::cold(rig, i))
            .collect::<anyhow::Result<Vec<_>>>()
        {
            Ok(b) => b,
            Err(e) => {
                println!(
                    "{:<28} {n:>4} boards: could not start them all on this machine: {e:#}",
                    rig.name()
                );
                continue;
            }
        };
        let rounds_here = if n > 10 { 1 } else { rounds.min(3) };
        // Round 0 uses the boards started above; later rounds start fresh ones.
        let mut times: Vec<Duration> = Vec::new();
        times.push(harness::batch(&boards, false)?);
        drop(boards);
        for _ in 1..rounds_here {
            let fresh = (0..n)
                .map(|i| Board::cold(rig, i))
                .collect::<anyhow::Result<Vec<_>>>()?;
            times.push(harness::batch(&fresh, false)?);
        }
        let m = harness::median(&mut times);
        let b = match base {
            Some((r, d)) if r == rig => d,
            _ => {
                base = Some((rig, m));
                m
            }
        };
        println!(
            "{:<28} {n:>4} boards: {:>8.0} ms  ({:.1}x one board)",
            rig.name(),
            ms(m),
            m.as_secs_f64() / b.as_secs_f64()
        );
    }
    Ok(())
}
