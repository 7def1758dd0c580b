//! kill -9 of `dpskit provision` mid-batch, then a re-run: no ID on two boards, no board
//! marked done without verification, and every board finished.
// Unix only: virtual boards need pseudo-terminals.
#![cfg(unix)]

mod bench_support;

use bench_support::*;
use dpskit_factory::station::ledger::{Ledger, Status};
use dpskit_rehearsal::sim::SimBoardConfig;
use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BOARDS: usize = 24;

fn provision(rig: &Rig, station: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dpskit"));
    cmd.arg("provision")
        .arg("--station")
        .arg(station)
        .current_dir(rig.dir.path())
        .stdin(Stdio::null());
    cmd
}

/// Rows in the ledger now (0 while it does not exist yet).
fn row_count(rig: &Rig) -> usize {
    if !rig.ledger_path().exists() {
        return 0;
    }
    Ledger::open_read_only(&rig.ledger_path())
        .and_then(|l| l.list())
        .map(|r| r.len())
        .unwrap_or(0)
}

#[test]
fn kill_9_mid_batch_then_rerun_finishes_without_duplicates() {
    let mut rig = Rig::new();
    rig.spawn(BOARDS, &SimBoardConfig::default());
    let station = rig.station(IDS_SEQ, GATES);
    // Three at a time, so the batch is still running when it is killed.
    let text = std::fs::read_to_string(&station).unwrap() + "parallel = 3\n";
    std::fs::write(&station, text).unwrap();

    let mut child = provision(&rig, &station)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while row_count(&rig) < 7 {
        assert!(Instant::now() < deadline, "the batch never got going");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("dpskit exited ({status}) before it could be killed");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success());

    // What the crash left: some boards done, some in flight, none done without its MD5.
    let mid = rig.rows();
    assert_unique(&mid);
    assert!(
        mid.len() < BOARDS,
        "killed too late: every board already had a row"
    );
    let unfinished = mid.iter().filter(|r| r.status != Status::Done).count();
    let done_then = check_done_rows_against_flash(&rig);
    assert_eq!(done_then + unfinished, mid.len());
    eprintln!(
        "after kill -9: {} rows, {done_then} done, {unfinished} unfinished",
        mid.len()
    );

    // The jig resets every board (some were cut off mid-command); run again to the end.
    rig.boards.iter().for_each(|b| b.reset_to_download());
    let out = provision(&rig, &station).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "re-run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let rows = rig.rows();
    assert_eq!(rows.len(), BOARDS);
    assert_unique(&rows);
    assert!(rows.iter().all(|r| r.status == Status::Done), "{rows:#?}");
    assert_eq!(check_done_rows_against_flash(&rig), BOARDS);
    // Boards that had an ID before the crash kept it.
    for r in &mid {
        assert_eq!(
            rows.iter()
                .find(|x| x.mac == r.mac)
                .unwrap()
                .registration_id,
            r.registration_id
        );
    }
    // And on the boards themselves: every flash holds a different ID.
    let on_flash: HashSet<String> = (0..BOARDS)
        .map(|i| {
            dpskit_factory::blob::nvs::decode_image(&rig.config_partition(i))
                .unwrap()
                .registration_id
                .to_string()
        })
        .collect();
    assert_eq!(on_flash.len(), BOARDS);
    // IDs are handed out without gaps: a crash does not burn sequence numbers twice.
    let expected: HashSet<String> = (1..=BOARDS).map(|n| format!("sensor-{n:05}")).collect();
    assert_eq!(on_flash, expected);
    // The summary of the re-run lists every board once.
    for p in rig.ports() {
        assert_eq!(
            stdout
                .lines()
                .filter(|l| l.starts_with(&format!("{p} ")))
                .count(),
            1,
            "{stdout}"
        );
    }
    rig.stop();
}
