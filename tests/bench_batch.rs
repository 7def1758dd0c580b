//! A batch of virtual boards provisioned in parallel: distinct IDs, verified flash, idempotent
//! re-runs, manifest and template assignment, dry runs and foreign configs.
// Unix only: virtual boards need pseudo-terminals.
#![cfg(unix)]

mod bench_support;

use bench_support::*;
use dpskit_factory::station::ledger::{Ledger, Status};
use dpskit_factory::station::provision::{run_batch, BatchReport, Outcome, RunOptions};
use dpskit_factory::station::Station;
use dpskit_rehearsal::sim::SimBoardConfig;
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::AtomicBool;

fn run_with(station: &Path, ports: &[String], opts: RunOptions) -> BatchReport {
    let st = Station::load(station).unwrap();
    let stop = AtomicBool::new(false);
    run_batch(&st, ports, opts, &stop).unwrap()
}

fn run(station: &Path, ports: &[String]) -> BatchReport {
    run_with(station, ports, RunOptions::default())
}

fn outcome_of<'r>(
    report: &'r BatchReport,
    port: &str,
) -> &'r dpskit_factory::station::provision::BoardResult {
    report.results.iter().find(|r| r.port == port).unwrap()
}

#[test]
fn twenty_boards_get_twenty_distinct_verified_ids_and_reruns_change_nothing() {
    let mut rig = Rig::new();
    rig.spawn(20, &SimBoardConfig::default());
    let station = rig.station(IDS_SEQ, GATES);
    let report = run(&station, &rig.ports());
    assert_eq!(report.count(Outcome::Done), 20, "{}", report.render());
    assert_eq!(report.failures(), 0);

    let rows = rig.rows();
    assert_eq!(rows.len(), 20);
    assert_unique(&rows);
    let ids: HashSet<&str> = rows.iter().map(|r| r.registration_id.as_str()).collect();
    let expected: HashSet<String> = (1..=20).map(|n| format!("sensor-{n:05}")).collect();
    assert_eq!(ids, expected.iter().map(String::as_str).collect());
    assert!(rows
        .iter()
        .all(|r| r.status == Status::Done && r.attempts == 1));
    assert!(rows
        .iter()
        .all(|r| r.chip.as_deref() == Some("esp32s3") && r.psram_mb == Some(8)));
    assert!(rows
        .iter()
        .all(|r| r.firmware_project.as_deref() == Some("dpskit-firmware")
            && r.firmware_version.as_deref() == Some("0.1.0")));
    assert_eq!(check_done_rows_against_flash(&rig), 20);
    // The table names each board's port, MAC and ID.
    let table = report.render();
    for (i, port) in rig.ports().iter().enumerate() {
        let r = outcome_of(&report, port);
        assert_eq!(r.mac.as_deref(), Some(rig.mac(i).as_str()));
        assert!(
            table.contains(port.as_str()) && table.contains(r.registration_id.as_deref().unwrap())
        );
    }

    // Re-run (the jig resets the boards into download mode): nothing is rewritten.
    let programmed: Vec<u64> = rig
        .boards
        .iter()
        .map(|b| b.stats().flash_bytes_programmed)
        .collect();
    rig.boards.iter().for_each(|b| b.reset_to_download());
    let again = run(&station, &rig.ports());
    assert_eq!(again.count(Outcome::Unchanged), 20, "{}", again.render());
    let after: Vec<u64> = rig
        .boards
        .iter()
        .map(|b| b.stats().flash_bytes_programmed)
        .collect();
    assert_eq!(programmed, after, "an unchanged board was written to");
    let rows2 = rig.rows();
    for r in &rows {
        let r2 = rows2.iter().find(|x| x.mac == r.mac).unwrap();
        assert_eq!(
            (
                &r2.registration_id,
                &r2.image_sha256,
                r2.status,
                r2.attempts
            ),
            (&r.registration_id, &r.image_sha256, Status::Done, 2)
        );
    }

    // --force rewrites, with the same ID.
    rig.boards[3].reset_to_download();
    let forced = run_with(
        &station,
        &rig.ports()[3..4],
        RunOptions {
            force: true,
            ..Default::default()
        },
    );
    assert_eq!(forced.count(Outcome::Done), 1, "{}", forced.render());
    assert!(rig.boards[3].stats().flash_bytes_programmed > programmed[3]);
    let row = Ledger::open_read_only(&rig.ledger_path())
        .unwrap()
        .find(&rig.mac(3))
        .unwrap()
        .unwrap();
    assert_eq!(
        row.registration_id,
        rows.iter()
            .find(|r| r.mac == rig.mac(3))
            .unwrap()
            .registration_id
    );
    assert_eq!(check_done_rows_against_flash(&rig), 20);
    rig.stop();
}

#[test]
fn manifest_pins_macs_and_hands_out_the_pool_once() {
    let mut rig = Rig::new();
    rig.spawn(4, &SimBoardConfig::default());
    let manifest = format!(
        "registration_id,mac\n# board 2 is pinned\npinned-a,{}\npool-1,\npool-2,\n",
        rig.mac(2)
    );
    std::fs::write(rig.path("manifest.csv"), manifest).unwrap();
    let station = rig.station("source = \"manifest\"\nmanifest = \"manifest.csv\"", GATES);
    let report = run(&station, &rig.ports());
    // Three IDs for four boards: one unpinned board finds the pool empty.
    assert_eq!(report.count(Outcome::Done), 3, "{}", report.render());
    assert_eq!(report.count(Outcome::Failed), 1);
    let pinned = outcome_of(&report, &rig.ports()[2]);
    assert_eq!(pinned.registration_id.as_deref(), Some("pinned-a"));
    let failed = report
        .results
        .iter()
        .find(|r| r.outcome == Outcome::Failed)
        .unwrap();
    assert!(
        failed.reason.contains("all 2 unpinned IDs") && failed.registration_id.is_none(),
        "{failed:?}"
    );
    let rows = rig.rows();
    assert_eq!(rows.len(), 3, "no ledger row for the board that got no ID");
    assert_unique(&rows);
    let ids: HashSet<&str> = rows.iter().map(|r| r.registration_id.as_str()).collect();
    assert_eq!(ids, HashSet::from(["pinned-a", "pool-1", "pool-2"]));
    assert_eq!(check_done_rows_against_flash(&rig), 3);

    // One more pool row: the re-run finishes the fourth board and leaves the rest alone.
    std::fs::write(
        rig.path("manifest.csv"),
        format!(
            "registration_id,mac\npinned-a,{}\npool-1,\npool-2,\npool-3,\n",
            rig.mac(2)
        ),
    )
    .unwrap();
    rig.boards.iter().for_each(|b| b.reset_to_download());
    let again = run(&station, &rig.ports());
    assert_eq!(
        (again.count(Outcome::Done), again.count(Outcome::Unchanged)),
        (1, 3),
        "{}",
        again.render()
    );
    assert_eq!(
        outcome_of(&again, &failed.port).registration_id.as_deref(),
        Some("pool-3")
    );
    assert_eq!(check_done_rows_against_flash(&rig), 4);
    rig.stop();
}

#[test]
fn mac_template_gives_each_board_its_mac_id() {
    let mut rig = Rig::new();
    rig.spawn(3, &SimBoardConfig::default());
    let station = rig.station("template = \"{prefix}-{mac}\"\nprefix = \"dev\"", GATES);
    let report = run(&station, &rig.ports());
    assert_eq!(report.count(Outcome::Done), 3, "{}", report.render());
    for (i, port) in rig.ports().iter().enumerate() {
        let want = format!("dev-{}", rig.mac(i).replace(':', ""));
        assert_eq!(
            outcome_of(&report, port).registration_id.as_deref(),
            Some(want.as_str())
        );
    }
    assert_eq!(check_done_rows_against_flash(&rig), 3);
    rig.stop();
}

#[test]
fn dry_run_shows_the_ids_and_writes_nothing() {
    let mut rig = Rig::new();
    rig.spawn(3, &SimBoardConfig::default());
    let station = rig.station(IDS_SEQ, GATES);
    let report = run_with(
        &station,
        &rig.ports(),
        RunOptions {
            dry_run: true,
            ..Default::default()
        },
    );
    assert_eq!(report.count(Outcome::WouldWrite), 3, "{}", report.render());
    let ids: HashSet<String> = report
        .results
        .iter()
        .filter_map(|r| r.registration_id.clone())
        .collect();
    assert_eq!(
        ids.len(),
        3,
        "dry-run IDs are distinct, as a real run would give"
    );
    assert!(!rig.ledger_path().exists(), "a dry run created the ledger");
    for i in 0..3 {
        assert!(
            rig.config_partition(i).iter().all(|b| *b == 0xFF),
            "a dry run wrote to board {i}"
        );
        assert_eq!(rig.boards[i].stats().flash_bytes_programmed, 0);
    }
    rig.stop();
}

#[test]
fn a_board_provisioned_elsewhere_is_refused_unless_forced() {
    let mut rig = Rig::new();
    rig.spawn(1, &SimBoardConfig::default());
    let station = rig.station(IDS_SEQ, GATES);
    assert_eq!(run(&station, &rig.ports()).count(Outcome::Done), 1);
    let first_id = rig.rows()[0].registration_id.clone();

    // Another station (its own ledger) meets the same board.
    let other = std::fs::read_to_string(&station)
        .unwrap()
        .replace("name = \"test-bench\"", "name = \"bench-2\"")
        .replace("ledger.sqlite", "ledger-2.sqlite");
    let other_path = rig.path("station-2.toml");
    std::fs::write(&other_path, other).unwrap();
    rig.boards[0].reset_to_download();
    let refused = run(&other_path, &rig.ports());
    let r = &refused.results[0];
    assert_eq!(r.outcome, Outcome::Refused, "{}", refused.render());
    assert!(
        r.reason.contains(&first_id) && r.reason.contains("--force"),
        "{}",
        r.reason
    );
    assert!(Ledger::open_read_only(&rig.path("ledger-2.sqlite"))
        .unwrap()
        .list()
        .unwrap()
        .is_empty());

    rig.boards[0].reset_to_download();
    let forced = run_with(
        &other_path,
        &rig.ports(),
        RunOptions {
            force: true,
            ..Default::default()
        },
    );
    assert_eq!(forced.count(Outcome::Done), 1, "{}", forced.render());
    let cfg = dpskit_factory::blob::nvs::decode_image(&rig.config_partition(0)).unwrap();
    assert_eq!(cfg.registration_id.as_str(), "sensor-00001");
    rig.stop();
}

#[test]
fn rom_mode_without_the_stub_reads_first_then_writes_last() {
    let mut rig = Rig::new();
    rig.spawn(2, &SimBoardConfig::default());
    let station = rig.station(IDS_SEQ, GATES);
    let text = std::fs::read_to_string(&station)
        .unwrap()
        .replace("stub = true", "stub = false");
    std::fs::write(&station, text).unwrap();
    let report = run(&station, &rig.ports());
    assert_eq!(report.count(Outcome::Done), 2, "{}", report.render());
    assert_eq!(check_done_rows_against_flash(&rig), 2);
    assert!(rig.boards.iter().all(|b| b.stats().stub_starts == 0));
    // FLASH_END ended the loader; the jig brings the boards back and a re-run changes nothing.
    for b in &rig.boards {
        assert!(b.wait_for(
            dpskit_rehearsal::sim::BoardState::Rom,
            std::time::Duration::from_secs(5)
        ));
    }
    let again = run(&station, &rig.ports());
    assert_eq!(again.count(Outcome::Unchanged), 2, "{}", again.render());
    rig.stop();
}

#[test]
fn the_station_passes_ntp_server_and_token_ttl_into_every_board() {
    let mut rig = Rig::new();
    rig.spawn(2, &SimBoardConfig::default());
    let station = rig.station(IDS_SEQ, GATES);
    let text = std::fs::read_to_string(&station).unwrap().replace(
        "[dps]\nid_scope = \"0ne0000ABCD\"\n",
        "[dps]\nid_scope = \"0ne0000ABCD\"\nntp_server = \"time.factory.lan:1123\"\ntoken_ttl = 7200\n",
    );
    std::fs::write(&station, text).unwrap();
    let report = run(&station, &rig.ports());
    assert_eq!(report.count(Outcome::Done), 2, "{}", report.render());
    for i in 0..2 {
        let cfg = dpskit_factory::blob::nvs::decode_image(&rig.config_partition(i)).unwrap();
        assert_eq!(cfg.ntp_server.as_deref(), Some("time.factory.lan:1123"));
        assert_eq!(cfg.token_ttl_secs, Some(7200));
    }
    // Bad values are station-file problems naming the key (exit 2, nothing touched).
    let bad = std::fs::read_to_string(&station)
        .unwrap()
        .replace("time.factory.lan:1123", "http://pool.ntp.org")
        .replace("7200", "60");
    std::fs::write(&station, bad).unwrap();
    let e = Station::load(&station).unwrap_err().to_string();
    assert!(e.contains("[dps] ntp_server:"), "{e}");
    assert!(e.contains("[dps] token_ttl: 60 s"), "{e}");
    rig.stop();
}

#[test]
fn a_board_whose_flash_no_longer_matches_leaves_done() {
    let mut rig = Rig::new();
    rig.spawn(1, &SimBoardConfig::default());
    let station = rig.station(IDS_SEQ, GATES);
    assert_eq!(run(&station, &rig.ports()).count(Outcome::Done), 1);
    // Someone rewrote the config partition behind the ledger's back.
    let part = rig.config_partition(0);
    let table =
        dpskit_factory::board::partition::parse(&rig.boards[0].read_flash(0x8000, 0x1000).unwrap())
            .unwrap();
    let offset = table.find("dps_cfg").unwrap().offset();
    let mut changed = part.clone();
    changed[100] ^= 0xff;
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(rig.boards[0].flash_path())
            .unwrap();
        f.write_all_at(&changed, offset.into()).unwrap();
    }
    rig.boards[0].reset_to_download();
    let report = run(&station, &rig.ports());
    let r = &report.results[0];
    assert_eq!(r.outcome, Outcome::Failed, "{}", report.render());
    assert!(r.reason.contains("now marks it failed"), "{}", r.reason);
    let row = &rig.rows()[0];
    assert_eq!(
        (row.status, row.verified_md5.as_deref()),
        (Status::Failed, None)
    );
    // --force writes it again, same ID, verified.
    rig.boards[0].reset_to_download();
    let report = run_with(
        &station,
        &rig.ports(),
        RunOptions {
            force: true,
            ..Default::default()
        },
    );
    assert_eq!(report.count(Outcome::Done), 1, "{}", report.render());
    assert_eq!(rig.rows()[0].registration_id, "sensor-00001");
    assert_eq!(check_done_rows_against_flash(&rig), 1);
    rig.stop();
}
