//! Each gate refuses the boards it should, says why, and gives them no ID.
// Unix only: virtual boards need pseudo-terminals.
#![cfg(unix)]

mod bench_support;

use bench_support::*;
use dpskit_factory::station::ledger::Ledger;
use dpskit_factory::station::provision::{run_batch, Outcome, RunOptions};
use dpskit_factory::station::Station;
use dpskit_rehearsal::sim::{ChipKind, PsramSize, SimBoardConfig};
use std::sync::atomic::AtomicBool;

/// A 2 MB layout (the default one needs 4 MB).
const SMALL_TABLE: &str = "nvs,data,nvs,0x9000,0x5000,\notadata,data,ota,0xe000,0x2000,\nphy_init,data,phy,0x10000,0x1000,\ndps_cfg,data,nvs,0x11000,0x6000,\nfactory,app,factory,0x20000,0x100000,\n";

#[test]
fn every_gate_refuses_the_right_board_and_says_why() {
    let mut rig = Rig::new();
    let good = SimBoardConfig::default();
    let mut c3 = good.clone();
    c3.profile.chip = ChipKind::Esp32c3;
    let mut no_psram = good.clone();
    no_psram.profile.psram = PsramSize::None;
    let mut small_flash = good.clone().with_flash_size(0x20_0000).unwrap();
    small_flash.partitions_csv = Some(SMALL_TABLE.into());
    let mut other_fw = good.clone();
    other_fw.app.project_name = "blinky".into();
    let mut old_fw = good.clone();
    old_fw.app.version = "0.0.9".into();
    let mut no_cfg_partition = good.clone();
    no_cfg_partition.partitions_csv = Some(SMALL_TABLE.replace("dps_cfg", "storage"));
    let cases: [(&SimBoardConfig, &[&str]); 7] = [
        (&good, &[]),
        (&c3, &["chip: the board is an esp32c3, the station requires an esp32s3 ([gates] chip)"]),
        (&no_psram, &["PSRAM: 0 MB in the package, the station requires at least 2 MB ([gates] min_psram_mb)"]),
        (&small_flash, &["flash: 2MB, the station requires at least 4 MB ([gates] min_flash_mb)"]),
        (&other_fw, &["firmware: project \"blinky\", the station expects \"dpskit-firmware\""]),
        (&old_fw, &["firmware: version 0.0.9 is older than 0.1.0"]),
        (&no_cfg_partition, &["[partition] name: no partition named \"dps_cfg\" on this board (it has: nvs, otadata, phy_init, storage, factory)"]),
    ];
    for (cfg, _) in &cases {
        rig.spawn(1, cfg);
    }
    let station = rig.station(IDS_SEQ, GATES);
    let st = Station::load(&station).unwrap();
    let stop = AtomicBool::new(false);
    let report = run_batch(&st, &rig.ports(), RunOptions::default(), &stop).unwrap();
    let ports = rig.ports();
    for (i, (_, reasons)) in cases.iter().enumerate() {
        let r = report.results.iter().find(|r| r.port == ports[i]).unwrap();
        if i != 1 {
            // (The impersonated ESP32-C3 has no C3 eFuse layout, so its MAC reads blank.)
            assert_eq!(
                r.mac.as_deref(),
                Some(rig.mac(i).as_str()),
                "board {i}: the MAC is reported even when refused"
            );
        }
        if reasons.is_empty() {
            assert_eq!(r.outcome, Outcome::Done, "board {i}: {}", r.reason);
            continue;
        }
        assert_eq!(r.outcome, Outcome::Refused, "board {i}: {r:?}");
        assert!(
            r.registration_id.is_none(),
            "board {i} was refused but got an ID"
        );
        for want in *reasons {
            assert!(
                r.reason.contains(want),
                "board {i}: {:?} does not say {want:?}",
                r.reason
            );
        }
        if i != 6 {
            assert!(
                rig.config_partition(i).iter().all(|b| *b == 0xFF),
                "refused board {i} was written"
            );
        }
        assert_eq!(
            rig.boards[i].stats().flash_bytes_programmed,
            0,
            "refused board {i} was written"
        );
    }
    assert_eq!(report.count(Outcome::Refused), 6);
    assert_eq!(report.failures(), 6);
    // Only the good board holds an ID; the refusals are in the audit trail.
    let ledger = Ledger::open_read_only(&rig.ledger_path()).unwrap();
    let rows = ledger.list().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].mac, rig.mac(0));
    let trail = ledger.attempts_for(&rig.mac(2)).unwrap();
    assert_eq!(trail.len(), 1);
    assert_eq!(trail[0].result, "refused");
    assert!(trail[0].reason.as_deref().unwrap().contains("PSRAM"));
    assert_eq!(check_done_rows_against_flash(&rig), 1);
    rig.stop();
}

#[test]
fn several_failed_gates_are_reported_together() {
    let mut rig = Rig::new();
    let mut bad = SimBoardConfig::default();
    bad.profile.psram = PsramSize::Mb2;
    bad.app.project_name = "blinky".into();
    bad.app.version = "0.0.1".into();
    rig.spawn(1, &bad);
    let gates =
        "min_psram_mb = 4\nfirmware_project = \"dpskit-firmware\"\nmin_firmware_version = \"1.0\"";
    let station = rig.station(IDS_SEQ, gates);
    let st = Station::load(&station).unwrap();
    let report = run_batch(
        &st,
        &rig.ports(),
        RunOptions::default(),
        &AtomicBool::new(false),
    )
    .unwrap();
    let r = &report.results[0];
    assert_eq!(r.outcome, Outcome::Refused);
    for want in [
        "PSRAM: 2 MB",
        "project \"blinky\"",
        "version 0.0.1 is older than 1.0",
    ] {
        assert!(
            r.reason.contains(want),
            "{:?} does not say {want:?}",
            r.reason
        );
    }
    rig.stop();
}
