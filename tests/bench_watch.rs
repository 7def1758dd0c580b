//! `provision --watch`: boards are provisioned as their ports appear, a board plugged in again
//! is recognised, and Ctrl-C lets the board in flight finish before the summary.
// Unix only: virtual boards need pseudo-terminals.
#![cfg(unix)]

mod bench_support;

use bench_support::*;
use dpskit_factory::station::ledger::{Ledger, Status};
use dpskit_rehearsal::sim::SimBoardConfig;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the child if the test fails before it exits.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn ledger(rig: &Rig) -> Option<Ledger> {
    rig.ledger_path()
        .exists()
        .then(|| Ledger::open_read_only(&rig.ledger_path()).ok())
        .flatten()
}

fn done(rig: &Rig) -> usize {
    ledger(rig)
        .and_then(|l| l.list().ok())
        .map(|rows| rows.iter().filter(|r| r.status == Status::Done).count())
        .unwrap_or(0)
}

fn attempts(rig: &Rig, i: usize) -> usize {
    ledger(rig)
        .and_then(|l| l.attempts_for(&rig.mac(i)).ok())
        .map(|a| a.len())
        .unwrap_or(0)
}

#[test]
fn watch_provisions_boards_as_they_appear_and_ctrl_c_finishes_the_one_in_flight() {
    let mut rig = Rig::new();
    rig.spawn(5, &SimBoardConfig::default());
    let slots = rig.path("ports");
    std::fs::create_dir(&slots).unwrap();
    let slot = |i: usize| -> PathBuf { slots.join(format!("board-{i}")) };
    let plug = |rig: &Rig, i: usize| {
        std::os::unix::fs::symlink(rig.boards[i].pty_path(), slot(i)).unwrap()
    };
    let station = rig.station(IDS_SEQ, GATES);
    let text = std::fs::read_to_string(&station).unwrap();
    let start = text.find("paths = [").unwrap();
    let text = format!(
        "{}paths = [{:?}]\n",
        &text[..start],
        format!("{}/board-*", slots.display())
    );
    std::fs::write(&station, text).unwrap();

    let child = Command::new(env!("CARGO_BIN_EXE_dpskit"))
        .args(["provision", "--watch", "--station"])
        .arg(&station)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Guard(child);

    plug(&rig, 0);
    plug(&rig, 1);
    wait_until("two boards", || done(&rig) == 2);
    plug(&rig, 2);
    plug(&rig, 3);
    wait_until("four boards", || done(&rig) == 4);

    // Board 0 is unplugged and plugged in again: seen again, recognised, left alone.
    std::fs::remove_file(slot(0)).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    plug(&rig, 0);
    wait_until("board 0 seen again", || attempts(&rig, 0) == 2);

    // Ctrl-C while board 4 is being provisioned: it finishes, then the summary.
    plug(&rig, 4);
    wait_until("board 4 allocated", || {
        ledger(&rig)
            .and_then(|l| l.find(&rig.mac(4)).ok().flatten())
            .is_some()
    });
    kill(Pid::from_raw(child.0.id() as i32), Signal::SIGINT).unwrap();
    let status = child.0.wait().unwrap();
    let mut stdout = String::new();
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let mut stderr = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "exit {status}\n{stdout}\n{stderr}");
    assert!(stderr.contains("watching for boards on"), "{stderr}");

    let rows = rig.rows();
    assert_eq!(rows.len(), 5);
    assert_unique(&rows);
    assert!(rows.iter().all(|r| r.status == Status::Done), "{rows:#?}");
    assert_eq!(check_done_rows_against_flash(&rig), 5);
    assert!(stdout.contains("6 boards: 5 done, 1 unchanged"), "{stdout}");
    for i in 0..5 {
        let n = stdout
            .lines()
            .filter(|l| l.starts_with(&format!("{} ", slot(i).display())))
            .count();
        assert_eq!(n, if i == 0 { 2 } else { 1 }, "board {i} in:\n{stdout}");
    }
    drop(child);
    rig.stop();
}
