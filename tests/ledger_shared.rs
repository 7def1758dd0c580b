//! One PostgreSQL ledger shared by several stations, through the library against a real
//! server: factory-wide IDs from one counter, a board moved between stations keeps its ID, two
//! stations racing for the same manifest rows, no start without the server, a server restart
//! in the middle of a step, and `ledger migrate` (copy, re-run, conflicts).
#![cfg(unix)]

mod pg_support;

use dpskit_factory::station::assign::{IdPlan, Mac, Manifest, Template};
use dpskit_factory::station::ledger::{
    BoardFacts, Filter, Ledger, LedgerError, LedgerTarget, PgSettings, Status,
};
use pg_support::{PgCluster, PASSWORD};
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

const SHA: &str = "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";
const MD5: &str = "0cc175b9c0f1b6a831c399e269772661";

fn mac(n: u16) -> Mac {
    Mac([0x34, 0x85, 0x18, 0, (n >> 8) as u8, n as u8])
}

fn facts() -> BoardFacts {
    BoardFacts {
        port: "/dev/ttyX".into(),
        ..Default::default()
    }
}

fn target(pg: &PgCluster, db: &str) -> LedgerTarget {
    let mut s = PgSettings::new(pg.url(db), Some(PASSWORD.into()));
    s.reconnect_window = Duration::from_secs(20);
    LedgerTarget::Postgres(s)
}

fn seq_plan(station: &str) -> IdPlan {
    IdPlan::Template(Template::parse("{prefix}-{seq:05}", "sensor", station, 1, false).unwrap())
}

#[test]
fn shared_ledger_behaviour() {
    let pg = PgCluster::start();

    // --- Two stations, one counter: IDs unique across the factory, no gaps.
    pg.create_db("ids");
    let a = Ledger::open_target(&target(&pg, "ids"), "st-a").unwrap();
    let b = Ledger::open_target(&target(&pg, "ids"), "st-b").unwrap();
    let mut ids = Vec::new();
    for n in 0..10u16 {
        let (l, st) = if n % 2 == 0 {
            (&a, "st-a")
        } else {
            (&b, "st-b")
        };
        ids.push(
            l.allocate(&mac(n), &seq_plan(st), &facts())
                .unwrap()
                .registration_id
                .to_string(),
        );
    }
    let expected: Vec<String> = (1..=10).map(|n| format!("sensor-{n:05}")).collect();
    assert_eq!(ids, expected);
    // A board moved from A to B is recognised by its MAC: same ID, nothing new handed out.
    let again = b.allocate(&mac(0), &seq_plan("st-b"), &facts()).unwrap();
    assert_eq!(
        (again.registration_id.as_str(), again.new),
        ("sensor-00001", false)
    );
    assert_eq!(b.next_seq().unwrap(), Some(11));
    // Filters over the shared ledger: by station and state.
    a.mark_writing(&mac(0), SHA).unwrap();
    a.mark_done(&mac(0), SHA, MD5).unwrap();
    let by_a = a
        .list_filtered(&Filter {
            station: Some("st-a".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(by_a.len(), 5);
    let done = a
        .list_filtered(&Filter {
            status: Some(Status::Done),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(done.len(), 1);

    // --- Two stations racing for the same manifest pool: each ID goes to one board.
    pg.create_db("race");
    let manifest = Manifest::parse(
        &format!(
            "registration_id,mac\n{}",
            (1..=20).map(|n| format!("m-{n:02},\n")).collect::<String>()
        ),
        Path::new("manifest.csv"),
        false,
    )
    .unwrap();
    let plan = IdPlan::Manifest(manifest);
    let t = target(&pg, "race");
    let got: Vec<(Mac, String)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4u16)
            .map(|w| {
                let (t, plan) = (&t, &plan);
                s.spawn(move || {
                    let l = Ledger::open_target(t, &format!("st-{w}")).unwrap();
                    (0..5u16)
                        .map(|i| {
                            let m = mac(100 + w * 5 + i);
                            (
                                m,
                                l.allocate(&m, plan, &facts())
                                    .unwrap()
                                    .registration_id
                                    .to_string(),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let distinct: HashSet<&str> = got.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(distinct.len(), 20, "{got:?}");
    // The pool is used up: the next board is refused with the reason, nothing written.
    let l = Ledger::open_target(&t, "st-9").unwrap();
    assert!(
        matches!(l.allocate(&mac(999), &plan, &facts()), Err(LedgerError::Alloc(m)) if m.contains("all 20 unpinned IDs"))
    );
    assert!(l.find_by_mac(&mac(999)).unwrap().is_none());

    // --- The server restarts in the middle: the step waits, reconnects, and lands once.
    let l = Ledger::open_target(&target(&pg, "ids"), "st-a").unwrap();
    pg.stop();
    let (l, done) = std::thread::scope(|s| {
        let h = s.spawn(move || {
            let r = l
                .mark_writing(&mac(2), SHA)
                .and_then(|_| l.mark_done(&mac(2), SHA, MD5));
            (l, r)
        });
        std::thread::sleep(Duration::from_millis(500));
        pg.start_again();
        h.join().unwrap()
    });
    done.unwrap();
    assert_eq!(
        l.find_by_mac(&mac(2)).unwrap().unwrap().status,
        Status::Done
    );

    // --- No server at start: the station refuses to start (exit code 3 upstream).
    pg.stop();
    let mut quick = PgSettings::new(pg.url("ids"), Some(PASSWORD.into()));
    quick.reconnect_window = Duration::from_secs(1);
    let e = Ledger::open_target(&LedgerTarget::Postgres(quick), "st-a")
        .err()
        .unwrap();
    assert!(matches!(e, LedgerError::Unreachable(_)), "{e}");
    assert!(e.is_environment());
    assert!(e.to_string().contains("does not start without it"), "{e}");
    assert!(!e.to_string().contains(PASSWORD));
    pg.start_again();
    pg.wait_ready();

    // --- `ledger migrate`: a station's SQLite ledger into the shared one.
    pg.create_db("shared");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("line-1.sqlite");
    let old = Ledger::open(&path, "line-1").unwrap();
    let plan1 = IdPlan::Template(
        Template::parse("{prefix}-{station}-{seq:05}", "sensor", "line-1", 1, false).unwrap(),
    );
    for n in 0..3 {
        old.allocate(&mac(500 + n), &plan1, &facts()).unwrap();
    }
    old.mark_writing(&mac(500), SHA).unwrap();
    old.mark_done(&mac(500), SHA, MD5).unwrap();
    drop(old);
    let src = Ledger::open_read_only(&path).unwrap();
    let shared = Ledger::open_target(&target(&pg, "shared"), "line-2").unwrap();
    let r = shared.import_from(&src).unwrap();
    assert_eq!((r.copied, r.already), (3, 0));
    let rows = shared.list().unwrap();
    assert_eq!(rows[0].status, Status::Done);
    assert_eq!(rows[0].verified_md5.as_deref(), Some(MD5));
    assert_eq!(shared.next_seq().unwrap(), Some(4));
    // Again: nothing new.
    let r = shared.import_from(&src).unwrap();
    assert_eq!((r.copied, r.already, r.attempts), (0, 3, 0));
    // A conflict (the shared ledger gave sensor-line-1-00002's MAC another ID): nothing copied.
    pg.create_db("conflict");
    let other = Ledger::open_target(&target(&pg, "conflict"), "line-2").unwrap();
    other
        .allocate(&mac(501), &seq_plan("line-2"), &facts())
        .unwrap();
    let e = other.import_from(&src).unwrap_err();
    let LedgerError::Conflicts(list) = &e else {
        panic!("{e}")
    };
    assert_eq!(list.len(), 1, "{list:?}");
    assert!(list[0].contains("34:85:18:00:01:f5"), "{list:?}");
    assert_eq!(other.list().unwrap().len(), 1);
}

#[test]
fn tls_to_the_server_with_its_ca_and_no_way_around_it() {
    let (pg, ca, port) = PgCluster::start_tls();
    pg.create_db("tls");
    let url = |mode: &str| format!("postgresql://dpskit@localhost:{port}/tls?sslmode={mode}");
    // With the server's CA: TLS (the server accepts TCP only over TLS), and the ledger works.
    let mut s = PgSettings::new(url("require"), Some(PASSWORD.into()));
    s.ca_file = Some(ca.clone());
    let l = Ledger::open_target(&LedgerTarget::Postgres(s), "st-tls").unwrap();
    let id = l.allocate(&mac(1), &seq_plan("st-tls"), &facts()).unwrap();
    assert_eq!(id.registration_id.as_str(), "sensor-00001");
    // Without it, the bundled Azure roots do not vouch for this server: refused, and said so.
    let s = PgSettings::new(url("require"), Some(PASSWORD.into()));
    let e = Ledger::open_target(&LedgerTarget::Postgres(s), "st-tls")
        .err()
        .unwrap();
    assert!(matches!(e, LedgerError::Unreachable(_)), "{e}");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    // And plain TCP is not accepted by this server at all.
    let s = PgSettings::new(url("disable"), Some(PASSWORD.into()));
    assert!(Ledger::open_target(&LedgerTarget::Postgres(s), "st-tls").is_err());
}
