//! A factory of four stations (four `dpskit provision` processes) on one PostgreSQL ledger,
//! provisioning 25 virtual boards each at the same time: 100 distinct IDs, one per MAC, from
//! one counter without gaps — while one station is killed with SIGKILL mid-batch and
//! restarted, and the server itself is restarted mid-batch. Then the station-file rules for a
//! shared ledger. The server is a throw-away cluster the test starts (tests/pg_support).
#![cfg(unix)]

mod bench_support;
mod pg_support;

use bench_support::*;
use dpskit_factory::station::ledger::{Ledger, LedgerTarget, PgSettings, Status};
use dpskit_rehearsal::sim::SimBoardConfig;
use pg_support::{PgCluster, PASSWORD};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const STATIONS: usize = 4;
const PER_STATION: usize = 25;

fn station_file(dir: &Path, name: &str, pg: &PgCluster, ports: &[String]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let key = dir.join("group.key");
    std::fs::write(&key, format!("{GROUP_KEY}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    pg.password_file(dir);
    let ports: Vec<String> = ports.iter().map(|p| format!("{p:?}")).collect();
    let text = format!(
        r#"
[station]
name = "{name}"

[ledger]
url = "{url}"
password_file = "ledger.pass"
reconnect_secs = 30

[dps]
id_scope = "0ne0000ABCD"

[group_key]
file = "group.key"

[ids]
{IDS_SEQ}

[gates]
{GATES}

[serial]
before = "no-reset"
after = "no-reset"
stub = true

[ports]
paths = [{ports}]
parallel = 4
"#,
        url = pg.url("factory"),
        ports = ports.join(", ")
    );
    let path = dir.join("station.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn provision(station: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_dpskit"))
        .arg("provision")
        .arg("--station")
        .arg(station)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Runs `dpskit ARGS` in `cwd` to the end.
fn dpskit(cwd: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dpskit"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn try_shared(pg: &PgCluster) -> Result<Ledger, dpskit_factory::station::ledger::LedgerError> {
    Ledger::open_target_read_only(&LedgerTarget::Postgres(PgSettings::new(
        pg.url("factory"),
        Some(PASSWORD.into()),
    )))
}

fn shared(pg: &PgCluster) -> Ledger {
    try_shared(pg).unwrap()
}

fn wait_rows(pg: &PgCluster, at_least: usize, children: &mut [Child]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    // Until the first station has created the schema, there is no ledger to count.
    while try_shared(pg)
        .and_then(|l| l.list())
        .map_or(0, |rows| rows.len())
        < at_least
    {
        assert!(Instant::now() < deadline, "the batch never got going");
        for c in children.iter_mut() {
            if let Some(status) = c.try_wait().unwrap() {
                assert!(status.success(), "a station stopped early ({status})");
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn four_stations_one_ledger_survive_a_kill_and_a_server_restart() {
    let started = Instant::now();
    let pg = PgCluster::start();
    pg.create_db("factory");
    let mut rig = Rig::new();
    rig.spawn(STATIONS * PER_STATION, &SimBoardConfig::default());
    let ports = rig.ports();
    let stations: Vec<PathBuf> = (0..STATIONS)
        .map(|s| {
            station_file(
                &rig.path(&format!("st-{}", s + 1)),
                &format!("st-{}", s + 1),
                &pg,
                &ports[s * PER_STATION..(s + 1) * PER_STATION],
            )
        })
        .collect();
    let logs: Vec<PathBuf> = (0..STATIONS)
        .map(|s| rig.path(&format!("st-{}.log", s + 1)))
        .collect();
    let log_text = |i: usize| std::fs::read_to_string(&logs[i]).unwrap_or_default();

    let mut children: Vec<Child> = (0..STATIONS)
        .map(|s| provision(&stations[s], &logs[s]))
        .collect();
    // Mid-batch: kill -9 station 1 …
    wait_rows(&pg, 16, &mut children);
    children[0].kill().unwrap();
    assert!(!children[0].wait().unwrap().success());
    let st1 = shared(&pg)
        .list()
        .unwrap()
        .iter()
        .filter(|r| r.station == "st-1" && r.status == Status::Done)
        .count();
    assert!(st1 < PER_STATION, "killed too late: station 1 had finished");
    // … and restart the server under the other three, while they still work.
    assert!(
        children[1..]
            .iter_mut()
            .any(|c| c.try_wait().unwrap().is_none()),
        "restarted too late: the other stations had finished"
    );
    pg.stop();
    std::thread::sleep(Duration::from_millis(300));
    pg.start_again();
    // Station 1 comes back (its jig resets the boards it cut off mid-command).
    for b in &rig.boards[..PER_STATION] {
        b.reset_to_download();
    }
    let restarted = rig.path("st-1-again.log");
    children[0] = provision(&stations[0], &restarted);
    for (i, c) in children.iter_mut().enumerate() {
        let status = c.wait().unwrap();
        let log = if i == 0 {
            std::fs::read_to_string(&restarted).unwrap()
        } else {
            log_text(i)
        };
        assert!(
            status.success(),
            "station {} failed ({status}):\n{log}",
            i + 1
        );
    }

    let rows = shared(&pg).list().unwrap();
    assert_eq!(rows.len(), STATIONS * PER_STATION);
    assert_unique(&rows);
    assert!(rows.iter().all(|r| r.status == Status::Done), "{rows:#?}");
    // One counter for the factory, and no number burned by the kill or the restart.
    let ids: HashSet<String> = rows.iter().map(|r| r.registration_id.clone()).collect();
    let expected: HashSet<String> = (1..=STATIONS * PER_STATION)
        .map(|n| format!("sensor-{n:05}"))
        .collect();
    assert_eq!(ids, expected);
    // Each board's row names the station that gave it its ID, and the flash agrees.
    for (i, port_group) in ports.chunks(PER_STATION).enumerate() {
        for p in port_group {
            let idx = ports.iter().position(|x| x == p).unwrap();
            let row = rows.iter().find(|r| r.mac == rig.mac(idx)).unwrap();
            assert_eq!(row.station, format!("st-{}", i + 1));
            let cfg = dpskit_factory::blob::nvs::decode_image(&rig.config_partition(idx)).unwrap();
            assert_eq!(cfg.registration_id.as_str(), row.registration_id);
            let md5 = hex::encode(<md5::Md5 as md5::Digest>::digest(rig.config_partition(idx)));
            assert_eq!(row.verified_md5.as_deref(), Some(md5.as_str()));
        }
    }

    // A board moved from station 1 to station 2 keeps its ID.
    let moved = rig.ports()[0].clone();
    let st = |i: usize| stations[i].to_str().unwrap().to_string();
    let out = dpskit(
        rig.dir.path(),
        &["provision", "--station", &st(1), "--port", &moved],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("unchanged"), "{stdout}");
    assert_eq!(shared(&pg).list().unwrap().len(), STATIONS * PER_STATION);

    // Audits over the shared ledger filter by station.
    let out = dpskit(
        rig.dir.path(),
        &[
            "ledger",
            "export",
            "--csv",
            "--station-name",
            "st-3",
            "--station",
            &st(0),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8_lossy(&out.stdout);
    assert_eq!(csv.lines().count(), 1 + PER_STATION, "{csv}");

    // The server down at start: the station refuses to start, exit 3, nothing written.
    pg.stop();
    let out = dpskit(rig.dir.path(), &["provision", "--station", &st(2)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("does not start without it"), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");
    rig.stop();
    eprintln!(
        "four stations x {PER_STATION} boards with a kill and a server restart: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn station_file_rules_for_a_shared_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("group.key");
    std::fs::write(&key, GROUP_KEY).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let check = |ledger: &str| {
        let path = dir.path().join("station.toml");
        std::fs::write(
            &path,
            format!("[dps]\nid_scope = \"0ne0000ABCD\"\n[group_key]\nfile = \"group.key\"\n[ids]\ntemplate = \"x-{{seq}}\"\n{ledger}"),
        )
        .unwrap();
        let out = dpskit(
            dir.path(),
            &[
                "provision",
                "--dry-run",
                "--station",
                path.to_str().unwrap(),
            ],
        );
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // A password in the URL is refused without being echoed.
    let (code, err) =
        check("[ledger]\nurl = \"postgresql://dpskit:hunter2@db/ledger?sslmode=require\"\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("[ledger] url: holds a password") && !err.contains("hunter2"),
        "{err}"
    );
    // Another host without TLS is refused.
    let (code, err) = check("[ledger]\nurl = \"postgresql://dpskit@db.factory.lan/ledger\"\n");
    assert_eq!(code, Some(2));
    assert!(err.contains("sslmode=require"), "{err}");
    // Both ledgers at once, a missing password variable.
    let (code, err) = check("[station]\nledger = \"l.sqlite\"\n[ledger]\nurl = \"postgresql://dpskit@localhost/ledger\"\npassword_env = \"DPSKIT_TEST_UNSET_PW\"\n");
    assert_eq!(code, Some(2));
    assert!(err.contains("set together with [ledger] url"), "{err}");
    assert!(err.contains("DPSKIT_TEST_UNSET_PW is not set"), "{err}");
    // A per-station ledger with a template that is the same on every station: a warning.
    let (_, err) = check("");
    assert!(
        err.contains("warning: [ids] template: \"x-{seq}\" has neither {station} nor {mac}"),
        "{err}"
    );

    // `dpskit init --ledger-url` writes a station for the shared ledger.
    let out = dpskit(
        dir.path(),
        &[
            "init",
            "shared",
            "--ledger-url",
            "postgresql://dpskit@db.factory.lan/dpskit?sslmode=require",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.path().join("shared/station.toml")).unwrap();
    let t: toml::Table = text.parse().unwrap();
    assert_eq!(
        t["ledger"]["url"].as_str(),
        Some("postgresql://dpskit@db.factory.lan/dpskit?sslmode=require")
    );
    assert_eq!(t["ids"]["template"].as_str(), Some("{prefix}-{seq:05}"));
    assert!(t["station"].get("ledger").is_none());
    // Without it, the template carries {station}.
    let default: toml::Table = dpskit_factory::station::templates::STATION_TOML
        .parse()
        .unwrap();
    assert_eq!(
        default["ids"]["template"].as_str(),
        Some("{prefix}-{station}-{seq:05}")
    );
}
