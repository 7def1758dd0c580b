//! The ledger under load: ID allocations per second, and the wall time of 4 × 25 boards —
//! SQLite (one station, 100 boards) against PostgreSQL (four stations, 25 boards each, one
//! shared database; four ledgers in four threads, each with its own connection).
//!
//! `cargo bench --bench ledger`. PostgreSQL is a throw-away cluster on a Unix socket
//! (tests/pg_support; Debian's postgresql package, installed by scripts/setup.sh). Without
//! `--bench` (as `cargo test --all-targets` runs it) a small smoke pass checks it still works.

#[path = "../tests/pg_support/mod.rs"]
mod pg_support;

use dpskit_factory::station::assign::{IdPlan, Mac, Template};
use dpskit_factory::station::ledger::{BoardFacts, Ledger, LedgerTarget, PgSettings};
use dpskit_factory::station::provision::{run_batch, Outcome, RunOptions};
use dpskit_factory::station::Station;
use dpskit_rehearsal::sim::{SimBoardConfig, VirtualBoard};
use pg_support::{PgCluster, PASSWORD};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

const GROUP_KEY: &str =
    "6p7c62kKPwxAl8Roba6V0AV+u8WtUbIHz7i6XZJm899K1LoWVDkcqFXJ3IafdQRnBpdazaBDoggKr/TO+YFMqA==";

fn plan() -> IdPlan {
    IdPlan::Template(Template::parse("{prefix}-{seq:06}", "sensor", "bench", 1, false).unwrap())
}

fn facts() -> BoardFacts {
    BoardFacts {
        port: "/dev/ttyX".into(),
        chip: Some("esp32s3".into()),
        ..Default::default()
    }
}

/// `n` allocations split over `stations` ledgers (threads), each a new board.
fn allocations(targets: &[LedgerTarget], n: usize) -> Duration {
    let per = n / targets.len();
    let start = Instant::now();
    std::thread::scope(|s| {
        for (t, target) in targets.iter().enumerate() {
            s.spawn(move || {
                let l = Ledger::open_target(target, &format!("st-{t}")).unwrap();
                let plan = plan();
                for i in 0..per {
                    let k = (t * per + i) as u32;
                    let mac = Mac([
                        0x34,
                        0x85,
                        t as u8,
                        (k >> 16) as u8,
                        (k >> 8) as u8,
                        k as u8,
                    ]);
                    l.allocate(&mac, &plan, &facts()).unwrap();
                }
            });
        }
    });
    start.elapsed()
}

fn station_text(name: &str, ledger: &str, ports: &[String]) -> String {
    let ports: Vec<String> = ports.iter().map(|p| format!("{p:?}")).collect();
    format!(
        "[station]\nname = \"{name}\"\n{ledger}\n[dps]\nid_scope = \"0ne0000ABCD\"\n[group_key]\nfile = \"group.key\"\n[ids]\ntemplate = \"{{prefix}}-{{seq:05}}\"\nprefix = \"sensor\"\n[gates]\nchip = \"esp32s3\"\n[serial]\nbefore = \"no-reset\"\nafter = \"no-reset\"\nstub = true\n[ports]\npaths = [{}]\n",
        ports.join(", ")
    )
}

/// Wall time of `stations` × `per` boards, all stations at once, and how many ended done.
fn batch(
    dir: &Path,
    stations: usize,
    per: usize,
    pg: Option<(&PgCluster, &str)>,
) -> (Duration, usize) {
    let key = dir.join("group.key");
    std::fs::write(&key, GROUP_KEY).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let flash = dir.join("flash");
    std::fs::create_dir_all(&flash).unwrap();
    let mut boards: Vec<VirtualBoard> = (0..stations * per)
        .map(|i| VirtualBoard::spawn(SimBoardConfig::default().for_batch(i, &flash)).unwrap())
        .collect();
    let ports: Vec<String> = boards
        .iter()
        .map(|b| b.pty_path().display().to_string())
        .collect();
    let loaded: Vec<Station> = (0..stations)
        .map(|s| {
            let ledger = match pg {
                Some((pg, db)) => {
                    pg.password_file(dir);
                    format!(
                        "[ledger]\nurl = \"{}\"\npassword_file = \"ledger.pass\"",
                        pg.url(db)
                    )
                }
                None => "ledger = \"ledger.sqlite\"".into(),
            };
            let path = dir.join(format!("st-{s}.toml"));
            std::fs::write(
                &path,
                station_text(&format!("st-{s}"), &ledger, &ports[s * per..(s + 1) * per]),
            )
            .unwrap();
            Station::load(&path).unwrap()
        })
        .collect();
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let done: usize = std::thread::scope(|s| {
        let runs: Vec<_> = loaded
            .iter()
            .enumerate()
            .map(|(i, st)| {
                let (stop, ports) = (&stop, &ports);
                s.spawn(move || {
                    run_batch(
                        st,
                        &ports[i * per..(i + 1) * per],
                        RunOptions::default(),
                        stop,
                    )
                    .unwrap()
                    .count(Outcome::Done)
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).sum()
    });
    let wall = start.elapsed();
    for b in &mut boards {
        b.stop();
    }
    (wall, done)
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let (allocs, stations, per, rounds) = if benchmarking {
        (2000, 4, 25, 3)
    } else {
        (40, 2, 2, 1)
    };
    let pg = PgCluster::start();
    println!("ledger: {allocs} ID allocations ({{seq}} template); batches of {stations} x {per} virtual boards; median of {rounds}");
    let mut sqlite_alloc = Vec::new();
    let mut pg_alloc = Vec::new();
    let mut sqlite_batch = Vec::new();
    let mut pg_batch = Vec::new();
    let (mut sqlite_done, mut pg_done) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let dir = tempfile::tempdir().unwrap();
        let t = LedgerTarget::Sqlite(dir.path().join("alloc.sqlite"));
        sqlite_alloc.push(allocations(&[t], allocs));
        let db = format!("alloc{r}");
        pg.create_db(&db);
        let t = LedgerTarget::Postgres(PgSettings::new(pg.url(&db), Some(PASSWORD.into())));
        pg_alloc.push(allocations(&vec![t; stations], allocs));

        let dir = tempfile::tempdir().unwrap();
        let (wall, done) = batch(dir.path(), 1, stations * per, None);
        sqlite_batch.push(wall);
        sqlite_done.push(done);
        let db = format!("batch{r}");
        pg.create_db(&db);
        let dir = tempfile::tempdir().unwrap();
        let (wall, done) = batch(dir.path(), stations, per, Some((&pg, &db)));
        pg_batch.push(wall);
        pg_done.push(done);
    }
    // A board whose stub upload missed the loader's deadline on a starved CPU fails and is
    // finished by the next run (see the batch benchmark); the smoke pass must have none.
    let total = stations * per;
    if !benchmarking {
        assert!(
            sqlite_done.iter().chain(&pg_done).all(|d| *d == total),
            "a board was not provisioned"
        );
    }
    let med = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (sa, pa) = (med(&mut sqlite_alloc), med(&mut pg_alloc));
    let (sb, pb) = (med(&mut sqlite_batch), med(&mut pg_batch));
    let done = |v: &[usize]| format!("{}/{}", v.iter().sum::<usize>(), total * v.len());
    println!(
        "{:<40} {:>14} {:>16} {:>12}",
        "", "allocations/s", "batch wall time", "boards done"
    );
    println!(
        "{:<40} {:>14.0} {:>14.2} s {:>12}",
        "SQLite, one station",
        allocs as f64 / sa.as_secs_f64(),
        sb.as_secs_f64(),
        done(&sqlite_done)
    );
    println!(
        "{:<40} {:>14.0} {:>14.2} s {:>12}",
        format!("PostgreSQL, {stations} stations on one database"),
        allocs as f64 / pa.as_secs_f64(),
        pb.as_secs_f64(),
        done(&pg_done)
    );
}
