//! The station workflow through the real binary, from `dpskit init` to the audit export, and
//! then the group-key scan: its bytes (raw, base64, hex) appear in no output of the batch — not
//! stdout or stderr, not the ledger, not the exports, not on any board. The derived keys appear
//! only on the boards they belong to.
// Unix only: virtual boards need pseudo-terminals.
#![cfg(unix)]

mod bench_support;

use base64::Engine;
use bench_support::*;
use dpskit_rehearsal::sim::{Faults, PsramSize, SimBoardConfig};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Run {
    args: String,
    out: Output,
}

fn dpskit(dir: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_dpskit"))
        .args(args)
        .current_dir(dir)
        .env("DPSKIT_GROUP_KEY", GROUP_KEY)
        .output()
        .unwrap();
    Run {
        args: args.join(" "),
        out,
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn station_workflow_leaks_no_group_key_anywhere() {
    let mut rig = Rig::new();
    std::fs::remove_file(rig.path("group.key")).unwrap(); // the key comes from the environment here
    rig.spawn(6, &SimBoardConfig::default());
    let mut no_psram = SimBoardConfig::default();
    no_psram.profile.psram = PsramSize::None;
    rig.spawn(1, &no_psram);
    rig.spawn(1, &SimBoardConfig::default()); // its cable is cut mid-write, below
    let dir = rig.dir.path().to_path_buf();
    let mut runs = Vec::new();

    // 1. A new station from the templates, edited the way an operator would.
    runs.push(dpskit(&dir, &["init"]));
    assert!(runs[0].out.status.success());
    std::fs::write(dir.join("wifi.pass"), "factory-floor-pass\n").unwrap();
    std::fs::set_permissions(
        dir.join("wifi.pass"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let ports: Vec<String> = rig.ports().iter().map(|p| format!("{p:?}")).collect();
    let station = std::fs::read_to_string(dir.join("station.toml"))
        .unwrap()
        .replace("id_scope = \"0ne00000000\"", "id_scope = \"0ne0000ABCD\"")
        .replace(
            "password_file = \"/etc/dpskit/wifi.pass\"",
            "password_file = \"wifi.pass\"",
        )
        .replace("before = \"default-reset\"", "before = \"no-reset\"")
        .replace("after = \"hard-reset\"", "after = \"no-reset\"")
        .replace(
            "usb = [\"303a:1001\", \"10c4:ea60\", \"1a86:7523\", \"1a86:55d4\"]",
            "usb = []",
        )
        .replace("paths = []", &format!("paths = [{}]", ports.join(", ")));
    std::fs::write(dir.join("station.toml"), station).unwrap();

    // 2. Dry run: gates and IDs, nothing written.
    let dry = dpskit(&dir, &["provision", "--dry-run"]);
    assert_eq!(dry.out.status.code(), Some(1), "{}", text(&dry.out.stderr));
    assert!(
        text(&dry.out.stdout).contains("8 boards: 7 would write, 1 refused"),
        "{}",
        text(&dry.out.stdout)
    );
    assert!(!rig.ledger_path().exists());
    runs.push(dry);
    // About 10 KB reach a board before its write starts; cut the last one's cable in the write.
    rig.boards[7].inject(Faults {
        drop_after_bytes: Some(11_000),
        ..Default::default()
    });

    // 3. The batch: six done, one refused (no PSRAM), one cut off mid-write. Exit 1.
    let batch = dpskit(&dir, &["provision"]);
    let stdout = text(&batch.out.stdout);
    assert_eq!(
        batch.out.status.code(),
        Some(1),
        "{stdout}{}",
        text(&batch.out.stderr)
    );
    assert!(
        stdout.contains("8 boards: 6 done, 1 refused, 1 failed"),
        "{stdout}"
    );
    assert!(stdout.contains("PSRAM: 0 MB in the package"), "{stdout}");
    assert!(text(&batch.out.stderr).contains("2 of 8 board(s) not provisioned"));
    runs.push(batch);

    // 4. Re-run: the six are left alone; JSON summary.
    rig.boards.iter().for_each(|b| b.reset_to_download());
    let again = dpskit(&dir, &["provision", "--json"]);
    let summary: serde_json::Value = serde_json::from_slice(&again.out.stdout).unwrap();
    let outcomes: Vec<&str> = summary["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == "unchanged").count(),
        6,
        "{summary}"
    );
    runs.push(again);

    // 5. Audit.
    let rows = rig.rows();
    let done = rows
        .iter()
        .find(|r| r.status == dpskit_factory::station::ledger::Status::Done)
        .unwrap()
        .clone();
    for args in [
        vec!["ledger", "list"],
        vec!["ledger", "list", "--status", "failed"],
        vec!["ledger", "show", done.registration_id.as_str()],
        vec!["ledger", "show", done.mac.as_str()],
        vec!["ledger", "export", "--csv", "-o", "audit.csv"],
        vec!["ledger", "export", "--json"],
    ] {
        let r = dpskit(&dir, &args);
        assert!(
            r.out.status.success(),
            "{}: {}",
            r.args,
            text(&r.out.stderr)
        );
        runs.push(r);
    }
    let list = text(&runs[4].out.stdout);
    assert!(
        list.contains(&done.registration_id) && list.contains("7 board(s), 6 done"),
        "{list}"
    );
    assert_eq!(
        text(&runs[5].out.stdout)
            .lines()
            .filter(|l| l.contains("failed"))
            .count(),
        1
    );
    let show = text(&runs[6].out.stdout);
    assert!(
        show.contains(&done.mac) && show.contains("attempts (2):") && show.contains("unchanged"),
        "{show}"
    );
    assert_eq!(
        text(&runs[7].out.stdout),
        show,
        "show by MAC and by ID agree"
    );
    let csv = std::fs::read_to_string(dir.join("audit.csv")).unwrap();
    assert!(csv.starts_with("registration_id,mac,station,"), "{csv}");
    assert_eq!(csv.lines().count(), 8);
    let json: serde_json::Value = serde_json::from_slice(&runs[9].out.stdout).unwrap();
    assert_eq!(json["boards"].as_array().unwrap().len(), 7);
    assert_eq!(json["station"], "line-1");

    // 6. The scan. Every output of every run, every file the station left, every board's flash.
    let key = group_key_bytes();
    let b64 = base64::engine::general_purpose::STANDARD;
    let needles: Vec<(String, Vec<u8>)> = vec![
        ("raw".into(), key.clone()),
        ("raw first half".into(), key[..32].to_vec()),
        ("base64".into(), b64.encode(&key).into_bytes()),
        (
            "base64 unpadded".into(),
            base64::engine::general_purpose::STANDARD_NO_PAD
                .encode(&key)
                .into_bytes(),
        ),
        (
            "base64url".into(),
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(&key)
                .into_bytes(),
        ),
        (
            "base64 prefix".into(),
            b64.encode(&key).as_bytes()[..24].to_vec(),
        ),
        ("hex".into(), hex::encode(&key).into_bytes()),
        ("HEX".into(), hex::encode_upper(&key).into_bytes()),
    ];
    let mut haystacks: Vec<(String, Vec<u8>)> = Vec::new();
    for r in &runs {
        haystacks.push((
            format!("stdout of `dpskit {}`", r.args),
            r.out.stdout.clone(),
        ));
        haystacks.push((
            format!("stderr of `dpskit {}`", r.args),
            r.out.stderr.clone(),
        ));
    }
    let mut files = Vec::new();
    files_under(&dir, &mut files);
    assert!(files.iter().any(|f| f.ends_with("ledger.sqlite")));
    assert_eq!(
        files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "bin"))
            .count(),
        8,
        "{files:?}"
    );
    for f in &files {
        haystacks.push((f.display().to_string(), std::fs::read(f).unwrap()));
    }
    for (what, hay) in &haystacks {
        for (form, needle) in &needles {
            assert!(
                !contains(hay, needle),
                "the group key ({form}) is in {what}"
            );
        }
    }
    // Derived keys: on their own board only; never in the ledger, exports or output.
    let group = dpskit_factory::core::GroupKey::parse(GROUP_KEY, "test").unwrap();
    for row in &rows {
        let dk = group.derive(&row.registration_id).to_base64();
        for (what, hay) in &haystacks {
            let on_own_board = what.ends_with(".bin") && {
                let i = rig
                    .boards
                    .iter()
                    .position(|b| {
                        dpskit_factory::station::assign::Mac(b.mac()).to_string() == row.mac
                    })
                    .unwrap();
                Path::new(what) == rig.boards[i].flash_path()
            };
            assert_eq!(
                contains(hay, dk.as_bytes()),
                on_own_board && row.status == dpskit_factory::station::ledger::Status::Done,
                "{}'s device key vs {what}",
                row.registration_id
            );
        }
    }
    rig.stop();
}
