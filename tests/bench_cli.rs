//! The bench commands as an operator meets them: `init`, a bad station file (every problem at
//! once, exit 2, nothing written), bad flags, and the ledger commands on a missing ledger.
// Unix only: virtual boards need pseudo-terminals.
#![cfg(unix)]

mod bench_support;

use bench_support::*;
use std::path::Path;
use std::process::{Command, Output};

fn dpskit(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dpskit"))
        .args(args)
        .current_dir(dir)
        .env_remove("DPSKIT_GROUP_KEY")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn init_writes_the_templates_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dpskit(dir.path(), &["init", "line-1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let station = dir.path().join("line-1");
    for (name, text) in [
        (
            "station.toml",
            dpskit_factory::station::templates::STATION_TOML,
        ),
        (
            "manifest.csv",
            dpskit_factory::station::templates::MANIFEST_CSV,
        ),
        (
            "partitions.csv",
            dpskit_factory::station::templates::PARTITIONS_CSV,
        ),
    ] {
        assert_eq!(
            std::fs::read_to_string(station.join(name)).unwrap(),
            text,
            "{name}"
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("dpskit provision --station line-1/station.toml --dry-run"),
        "{stdout}"
    );

    // A second init does not overwrite the operator's edits.
    std::fs::write(station.join("station.toml"), "# edited\n").unwrap();
    let again = dpskit(dir.path(), &["init", "line-1"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        stderr(&again).contains("already exist") && stderr(&again).contains("--force"),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        std::fs::read_to_string(station.join("station.toml")).unwrap(),
        "# edited\n"
    );
    assert!(dpskit(dir.path(), &["init", "line-1", "--force"])
        .status
        .success());
    assert_eq!(
        std::fs::read_to_string(station.join("station.toml")).unwrap(),
        dpskit_factory::station::templates::STATION_TOML
    );
}

#[test]
fn the_template_station_only_lacks_what_the_operator_must_supply() {
    let dir = tempfile::tempdir().unwrap();
    assert!(dpskit(dir.path(), &["init"]).status.success());
    let out = dpskit(dir.path(), &["provision", "--dry-run"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    let problems: Vec<&str> = err.lines().skip(1).collect();
    assert_eq!(problems.len(), 2, "{err}");
    assert!(
        err.contains("[group_key] env: the environment variable DPSKIT_GROUP_KEY is not set"),
        "{err}"
    );
    assert!(
        err.contains("[wifi] password_file: cannot read /etc/dpskit/wifi.pass"),
        "{err}"
    );
    assert!(!dir.path().join("ledger.sqlite").exists());
}

#[test]
fn a_bad_station_file_lists_every_problem_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("manifest.csv"),
        "registration_id,mac\ndev-1,34:85:18:00:00:01\ndev-1,\nDev-2,zz\n",
    )
    .unwrap();
    let station = r#"
[station]
name = "line-9"

[dps]
id_scope = "0ne 0000"

[group_key]
env = "DPSKIT_TEST_NOT_SET_ANYWHERE"

[tls]
root_cas = ["baltimore", "no-such-root.pem"]

[partition]
nvs_size = "0x6100"

[ids]
source = "manifest"
manifest = "manifest.csv"

[gates]
chip = "esp32s9"
min_psram_mb = "eight"
min_firmware_version = "latest"

[serial]
before = "sometimes"
baud = 12

[ports]
usb = ["303a"]
paths = ["ttyUSB0"]
parallel = 0

[gate]
chip = "esp32s3"
"#;
    std::fs::write(dir.path().join("station.toml"), station).unwrap();
    let out = dpskit(dir.path(), &["provision"]);
    assert_eq!(out.status.code(), Some(2), "bad input exits 2");
    let err = stderr(&out);
    let wanted = [
        "[gate]: unknown section",
        "[dps] id_scope: ID scope: \"0ne 0000\" contains ' '",
        "[group_key] env: the environment variable DPSKIT_TEST_NOT_SET_ANYWHERE is not set",
        "[tls] root_cas: baltimore: Baltimore CyberTrust Root expired",
        "[tls] root_cas: ",
        "[partition] nvs_size: 0x6100 is not a multiple of 0x1000",
        "manifest.csv line 3: registration ID \"dev-1\" is already on line 2",
        "manifest.csv line 4: registration ID: \"Dev-2\" has upper-case letters",
        "manifest.csv line 4: mac: \"zz\" is not a MAC address",
        "[gates] chip: \"esp32s9\" is not a chip",
        "[gates] min_psram_mb: must be a whole number (no quotes)",
        "[gates] min_firmware_version: \"latest\" is not a version",
        "[serial] baud: 12 is out of range",
        "[serial] before: \"sometimes\" is not a mode",
        "[ports] usb: \"303a\" is not VID:PID",
        "[ports] paths: \"ttyUSB0\" is not an absolute path",
        "[ports] parallel: 0 would provision nothing",
    ];
    for w in wanted {
        assert!(err.contains(w), "missing {w:?} in:\n{err}");
    }
    let first = err.lines().next().unwrap();
    assert!(
        first.contains("station.toml: 17 problems") && first.contains("nothing was written"),
        "{err}"
    );
    // One line per problem.
    assert_eq!(err.lines().count(), 18, "{err}");
    assert!(
        !dir.path().join("ledger.sqlite").exists(),
        "a bad station created the ledger"
    );
}

#[test]
fn the_group_key_itself_is_refused_without_being_echoed() {
    let dir = tempfile::tempdir().unwrap();
    for (section, hint) in [
        (
            format!("[group_key]\nkey = \"{GROUP_KEY}\"\n"),
            "[group_key] key: not allowed",
        ),
        (
            format!("[group_key]\nenv = \"{GROUP_KEY}\"\n"),
            "[group_key] env: this looks like the key itself",
        ),
    ] {
        let text = format!(
            "[dps]\nid_scope = \"0ne0000ABCD\"\n{section}[ids]\ntemplate = \"x-{{mac}}\"\n"
        );
        std::fs::write(dir.path().join("station.toml"), text).unwrap();
        let out = dpskit(dir.path(), &["provision", "--dry-run"]);
        assert_eq!(out.status.code(), Some(2));
        let err = stderr(&out);
        assert!(err.contains(hint), "{err}");
        assert!(
            !err.contains(&GROUP_KEY[..16]),
            "the error message echoed the key: {err}"
        );
    }
}

#[test]
fn bad_flags_and_missing_ledgers_exit_2() {
    let rig = Rig::new();
    let station = rig.station(IDS_SEQ, GATES);
    let s = station.to_str().unwrap();
    let out = dpskit(
        rig.dir.path(),
        &["provision", "--station", s, "--port", "/dev/does-not-exist"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--port: /dev/does-not-exist does not exist"),
        "{}",
        stderr(&out)
    );
    for args in [
        &["ledger", "list", "--station", s][..],
        &["ledger", "export", "--csv", "--station", s][..],
    ] {
        let out = dpskit(rig.dir.path(), args);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            stderr(&out).contains("does not exist; it is created by the first `dpskit provision`"),
            "{}",
            stderr(&out)
        );
    }
    let out = dpskit(rig.dir.path(), &["ledger", "export", "--station", s]);
    assert_eq!(out.status.code(), Some(2), "export needs --csv or --json");
    assert!(!rig.ledger_path().exists());
}

#[test]
fn csv_export_neutralises_formulas_and_filters() {
    use dpskit_factory::station::assign::{IdPlan, Mac, Template};
    use dpskit_factory::station::ledger::{BoardFacts, Ledger};
    let rig = Rig::new();
    let station = rig.station(IDS_SEQ, GATES);
    let s = station.to_str().unwrap();
    let plan = IdPlan::Template(
        Template::parse("{prefix}-{seq:05}", "sensor", "test-bench", 1, false).unwrap(),
    );
    let l = Ledger::open(&rig.ledger_path(), "test-bench").unwrap();
    // Strings a board supplies (its app descriptor) end up in the export.
    for (n, project) in [
        (1u8, "=HYPERLINK(\"http://x\")"),
        (2, "@SUM(A1)"),
        (3, "dpskit-firmware"),
    ] {
        let facts = BoardFacts {
            port: "/dev/ttyX".into(),
            firmware_project: Some(project.into()),
            firmware_version: Some("-1+2".into()),
            ..Default::default()
        };
        l.allocate(&Mac([0x34, 0x85, 0x18, 0, 0, n]), &plan, &facts)
            .unwrap();
    }
    drop(l);
    let out = dpskit(
        rig.dir.path(),
        &["ledger", "export", "--csv", "--station", s],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mut r = csv::Reader::from_reader(out.stdout.as_slice());
    let headers = r.headers().unwrap().clone();
    let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 3);
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (project, version) = (col("firmware_project"), col("firmware_version"));
    assert_eq!(&rows[0][project], "'=HYPERLINK(\"http://x\")");
    assert_eq!(&rows[1][project], "'@SUM(A1)");
    assert_eq!(&rows[2][project], "dpskit-firmware");
    assert!(rows.iter().all(|r| &r[version] == "'-1+2"));
    // Filters: status, and a day on which nothing happened.
    let out = dpskit(
        rig.dir.path(),
        &["ledger", "list", "--status", "allocated", "--station", s],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 board(s)"));
    let out = dpskit(
        rig.dir.path(),
        &[
            "ledger",
            "export",
            "--json",
            "--until",
            "2001-01-01",
            "--station",
            s,
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["boards"].as_array().unwrap().len(), 0);
    assert_eq!(v["filter"]["until"], "2001-01-02T00:00:00Z");
    let out = dpskit(
        rig.dir.path(),
        &["ledger", "list", "--since", "last week", "--station", s],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--since: \"last week\" is not a date"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_broken_ledger_database_exits_3_and_says_what_state_it_is_in() {
    let rig = Rig::new();
    let station = rig.station(IDS_SEQ, GATES);
    std::fs::write(rig.ledger_path(), vec![0x5a; 8192]).unwrap();
    let s = station.to_str().unwrap();
    let out = dpskit(rig.dir.path(), &["ledger", "list", "--station", s]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("ledger (SQLite)") && err.contains("not a database"),
        "{err}"
    );
    assert!(
        err.contains("the ledger is as it was before this step"),
        "{err}"
    );
}
