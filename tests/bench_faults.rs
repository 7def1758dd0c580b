//! Fault injection: a dropped line mid-write, a stalled board and corrupt replies fail only
//! those boards; after the faults are cleared a re-run completes them with the IDs they were
//! given, and leaves the others alone.
// Unix only: virtual boards need pseudo-terminals.
#![cfg(unix)]

mod bench_support;

use bench_support::*;
use dpskit_factory::station::ledger::Status;
use dpskit_factory::station::provision::{run_batch, Outcome, RunOptions};
use dpskit_factory::station::Station;
use dpskit_rehearsal::sim::{CorruptReply, Faults, SimBoardConfig, VirtualBoard};
use std::sync::atomic::AtomicBool;

/// The stub's `READ_FLASH`: the board goes silent while it is being inspected. (Stalls later
/// on are caught too, but espflash waits at least 10 s on the size-scaled commands.)
const READ_FLASH: u8 = 0xD2;

#[test]
fn faults_fail_only_their_boards_and_a_rerun_completes_them() {
    let mut rig = Rig::new();
    let healthy = SimBoardConfig::default();
    rig.spawn(5, &healthy);
    // About 10 KB reach a board before its write starts (sync, stub upload, inspection);
    // the write itself is a few KB more. Cut the cable in the middle of it.
    let mut drop_mid_write = healthy.clone();
    drop_mid_write.faults = Faults {
        drop_after_bytes: Some(11_000),
        ..Default::default()
    };
    let mut stall = healthy.clone();
    stall.faults = Faults {
        stall_at_command: Some(READ_FLASH),
        ..Default::default()
    };
    let mut bad_md5 = healthy.clone();
    bad_md5.faults = Faults {
        corrupt_md5: true,
        ..Default::default()
    };
    let mut garbled = healthy.clone();
    // Reply 40 falls in the connection phase; byte 8 is its status byte, turned into an error.
    garbled.faults = Faults {
        corrupt_reply: Some(CorruptReply { nth: 40, offset: 8 }),
        ..Default::default()
    };
    for f in [&drop_mid_write, &stall, &bad_md5, &garbled] {
        rig.spawn(1, f);
    }
    let faulty = 5..9;
    let station = rig.station(IDS_SEQ, GATES);
    let st = Station::load(&station).unwrap();
    let stop = AtomicBool::new(false);
    let report = run_batch(&st, &rig.ports(), RunOptions::default(), &stop).unwrap();
    for r in &report.results {
        println!(
            "{} {:?} {} ms: {}",
            r.port, r.outcome, r.duration_ms, r.reason
        );
    }
    let ports = rig.ports();
    for (i, port) in ports.iter().enumerate() {
        let r = report.results.iter().find(|r| &r.port == port).unwrap();
        if faulty.contains(&i) {
            assert_eq!(
                r.outcome,
                Outcome::Failed,
                "faulty board {i} did not fail: {r:?}"
            );
            assert!(!r.reason.is_empty());
        } else {
            assert_eq!(r.outcome, Outcome::Done, "healthy board {i}: {r:?}");
        }
    }
    let first = rig.rows();
    assert_unique(&first);
    assert_eq!(first.iter().filter(|r| r.status == Status::Done).count(), 5);
    for i in faulty.clone() {
        let row = first.iter().find(|r| r.mac == rig.mac(i));
        if let Some(row) = row {
            assert_eq!(row.status, Status::Failed, "board {i}");
            assert!(
                row.failure.is_some() && row.verified_md5.is_none(),
                "board {i}: {row:?}"
            );
        }
    }
    // The board whose line dropped mid-write got its ID before failing.
    let cut = first
        .iter()
        .find(|r| r.mac == rig.mac(5))
        .expect("board 5 has a ledger row");
    assert_eq!(cut.status, Status::Failed);
    assert_eq!(check_done_rows_against_flash(&rig), 5);

    // Fix the faults: the cable is plugged back in (a new port, same board and flash), the
    // stalled and noisy boards are reset.
    let flash_dir = rig.path("flash");
    rig.boards[5].stop();
    let mut replug = healthy.for_batch(5, &flash_dir);
    replug.keep_existing_image = true;
    rig.boards[5] = VirtualBoard::spawn(replug).unwrap();
    for b in &rig.boards {
        b.inject(Faults::default());
        b.reset_to_download();
    }
    let again = run_batch(&st, &rig.ports(), RunOptions::default(), &stop).unwrap();
    assert_eq!(again.failures(), 0, "{}", again.render());
    assert_eq!(again.count(Outcome::Unchanged), 5, "{}", again.render());
    assert_eq!(again.count(Outcome::Done), 4);
    let rows = rig.rows();
    assert_eq!(rows.len(), 9);
    assert_unique(&rows);
    for r in &first {
        let now = rows.iter().find(|x| x.mac == r.mac).unwrap();
        assert_eq!(
            now.registration_id, r.registration_id,
            "a board's ID changed across runs"
        );
    }
    assert!(rows.iter().all(|r| r.status == Status::Done));
    assert_eq!(check_done_rows_against_flash(&rig), 9);
    rig.stop();
}
