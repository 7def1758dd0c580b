//! The ledger's rules hold in the database itself, in both engines: plain SQL — what any other
//! program, a script or a tired operator could send — is refused when it breaks one. And a
//! ledger of the first schema is upgraded (a `done` row without a verified MD5 leaves `done`).
// Unix only: the PostgreSQL half starts a throw-away cluster with initdb/pg_ctl.
#![cfg(unix)]

mod pg_support;

use dpskit_factory::station::assign::{IdPlan, Mac, Template};
use dpskit_factory::station::ledger::{
    migrations, BoardFacts, Ledger, LedgerError, LedgerTarget, PgSettings, Status,
};
use pg_support::PgCluster;

const SHA: &str = "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";
const MD5: &str = "0cc175b9c0f1b6a831c399e269772661";

fn mac(n: u8) -> Mac {
    Mac([0x34, 0x85, 0x18, 0, 0, n])
}

fn facts() -> BoardFacts {
    BoardFacts {
        port: "/dev/ttyX".into(),
        chip: Some("esp32s3".into()),
        ..Default::default()
    }
}

/// Plain SQL against either engine.
trait Sql {
    fn run(&mut self, sql: &str) -> Result<u64, String>;
}

impl Sql for rusqlite::Connection {
    fn run(&mut self, sql: &str) -> Result<u64, String> {
        self.execute(sql, [])
            .map(|n| n as u64)
            .map_err(|e| e.to_string())
    }
}

impl Sql for postgres::Client {
    fn run(&mut self, sql: &str) -> Result<u64, String> {
        self.execute(sql, &[]).map_err(|e| {
            e.as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| e.to_string())
        })
    }
}

/// Every rule, checked with plain SQL on a ledger holding boards 1 (allocated) and 2.
fn rules_hold(l: &Ledger, db: &mut dyn Sql) {
    let plan = IdPlan::Template(Template::parse("x-{mac}", "", "st", 1, false).unwrap());
    l.allocate(&mac(1), &plan, &facts()).unwrap();
    l.allocate(&mac(2), &plan, &facts()).unwrap();
    let refused = |db: &mut dyn Sql, sql: &str, why: &str| {
        let e = db.run(sql).expect_err(&format!("accepted: {sql}"));
        assert!(e.contains(why), "{sql}: {e}");
    };
    let now = "'2026-01-01T00:00:00Z'";
    // One ID, any case, one board; one board, one ID.
    refused(db, &format!("INSERT INTO boards (registration_id, mac, station, status, allocated_at, updated_at) VALUES ('X-348518000001', 'aa', 'st', 'allocated', {now}, {now})"), "");
    refused(db, &format!("INSERT INTO boards (registration_id, mac, station, status, allocated_at, updated_at) VALUES ('y-1', '34:85:18:00:00:01', 'st', 'allocated', {now}, {now})"), "");
    // Identity never changes, rows are never deleted.
    refused(
        db,
        "UPDATE boards SET mac = 'zz' WHERE mac = '34:85:18:00:00:01'",
        "never change",
    );
    refused(
        db,
        "UPDATE boards SET registration_id = 'other' WHERE mac = '34:85:18:00:00:01'",
        "never change",
    );
    refused(db, "DELETE FROM boards", "never deleted");
    // A new row starts allocated.
    refused(db, &format!("INSERT INTO boards (registration_id, mac, station, status, image_sha256, verified_md5, allocated_at, updated_at, done_at) VALUES ('new-1', '34:85:18:00:00:09', 'st', 'done', '{SHA}', '{MD5}', {now}, {now}, {now})"), "starts as allocated");
    // `done` needs the SHA-256 and a 32-hex-digit MD5.
    for md5 in [
        "NULL",
        "''",
        "'0cc175b9c0f1b6a831c399e26977266'",
        "'0CC175B9C0F1B6A831C399E269772661'",
        "'0cc175b9c0f1b6a831c399e26977266z'",
    ] {
        let e = db
            .run(&format!("UPDATE boards SET status = 'done', image_sha256 = '{SHA}', verified_md5 = {md5}, done_at = {now} WHERE mac = '34:85:18:00:00:01'"))
            .expect_err(md5);
        assert!(
            e.contains("boards_done_is_verified") || e.contains("CHECK"),
            "{md5}: {e}"
        );
    }
    refused(db, &format!("UPDATE boards SET status = 'done', image_sha256 = 'sha', verified_md5 = '{MD5}', done_at = {now} WHERE mac = '34:85:18:00:00:01'"), "");
    // The state machine: allocated → writing → done → (re-verification fails) failed.
    assert_eq!(
        db.run("UPDATE boards SET status = 'writing' WHERE mac = '34:85:18:00:00:01'"),
        Ok(1)
    );
    refused(
        db,
        "UPDATE boards SET status = 'allocated' WHERE mac = '34:85:18:00:00:01'",
        "status change not allowed",
    );
    assert_eq!(db.run(&format!("UPDATE boards SET status = 'done', image_sha256 = '{SHA}', verified_md5 = '{MD5}', done_at = {now} WHERE mac = '34:85:18:00:00:01'")), Ok(1));
    refused(
        db,
        "UPDATE boards SET status = 'allocated' WHERE mac = '34:85:18:00:00:01'",
        "status change not allowed",
    );
    // Through the library, the same rules.
    assert!(matches!(
        l.mark_done(&mac(2), SHA, ""),
        Err(LedgerError::Rule { .. })
    ));
    assert!(matches!(
        l.mark_done(&mac(2), SHA, "0cc175b9"),
        Err(LedgerError::Rule { .. })
    ));
    l.mark_failed(
        &mac(1),
        "re-verification: the board no longer holds its image",
    )
    .unwrap();
    let row = l.find_by_mac(&mac(1)).unwrap().unwrap();
    assert_eq!((row.status, row.verified_md5), (Status::Failed, None));
    // The history is append-only.
    l.record_attempt(&dpskit_factory::station::ledger::Attempt {
        at: "2026-01-01T00:00:00Z".into(),
        station: "st".into(),
        port: "/dev/ttyX".into(),
        mac: Some(mac(1).to_string()),
        registration_id: None,
        result: "failed".into(),
        reason: None,
        duration_ms: Some(5),
    })
    .unwrap();
    refused(db, "UPDATE attempts SET result = 'done'", "append-only");
    refused(db, "DELETE FROM attempts", "append-only");
}

#[test]
fn sqlite_refuses_plain_sql_that_breaks_a_rule() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.sqlite");
    let l = Ledger::open(&path, "st").unwrap();
    let mut db = rusqlite::Connection::open(&path).unwrap();
    rules_hold(&l, &mut db);
}

#[test]
fn postgres_refuses_the_same_sql() {
    let pg = PgCluster::start();
    pg.create_db("rules");
    let dir = tempfile::tempdir().unwrap();
    let pw = std::fs::read_to_string(pg.password_file(dir.path())).unwrap();
    let target = LedgerTarget::Postgres(PgSettings::new(pg.url("rules"), Some(pw.trim().into())));
    let l = Ledger::open_target(&target, "st").unwrap();
    let mut db = pg.client("rules");
    rules_hold(&l, &mut db);
    refused_truncate(&mut db);
    // Both engines are at the same schema version, from the same list of migrations.
    let versions: Vec<i64> = db
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, (1..=migrations::latest()).collect::<Vec<_>>());
}

fn refused_truncate(db: &mut postgres::Client) {
    for t in ["boards", "attempts"] {
        assert!(db.run(&format!("TRUNCATE {t}")).is_err(), "TRUNCATE {t}");
    }
}

#[test]
fn a_first_schema_ledger_is_upgraded_and_a_done_row_without_md5_leaves_done() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sqlite");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(migrations::MIGRATIONS[0].sqlite).unwrap();
        c.execute_batch(&format!(
            "INSERT INTO meta VALUES ('schema', '1'), ('station', 'st'), ('next_seq', '3');
             INSERT INTO boards (registration_id, mac, station, seq, status, image_sha256, verified_md5, attempts, allocated_at, updated_at, done_at)
               VALUES ('s-1', '34:85:18:00:00:01', 'st', 1, 'done', '{SHA}', '', 1, 't', 't', 't'),
                      ('s-2', '34:85:18:00:00:02', 'st', 2, 'done', '{SHA}', '{MD5}', 1, 't', 't', 't');
             INSERT INTO attempts (at, station, port, mac, result) VALUES ('t', 'st', 'p', '34:85:18:00:00:01', 'done');"
        ))
        .unwrap();
    }
    let bytes_before = std::fs::read(&path).unwrap();
    // An audit reads it as it is, upgraded in memory; the file is not touched.
    let ro = Ledger::open_read_only(&path).unwrap();
    let rows = ro.list().unwrap();
    assert_eq!(
        rows.iter().map(|r| r.status).collect::<Vec<_>>(),
        [Status::Failed, Status::Done]
    );
    assert_eq!(ro.attempts_for("34:85:18:00:00:01").unwrap().len(), 1);
    drop(ro);
    assert_eq!(std::fs::read(&path).unwrap(), bytes_before);
    // A station opening it upgrades the file.
    let l = Ledger::open(&path, "st").unwrap();
    let rows = l.list().unwrap();
    assert_eq!(rows[0].status, Status::Failed);
    assert!(rows[0]
        .failure
        .as_deref()
        .unwrap()
        .contains("without a verified MD5"));
    assert_eq!(
        (rows[1].status, rows[1].verified_md5.as_deref()),
        (Status::Done, Some(MD5))
    );
    assert_eq!(l.next_seq().unwrap(), Some(3));
    let c = rusqlite::Connection::open(&path).unwrap();
    let n: i64 = c
        .query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(n, migrations::latest());
    // The upgraded file has every rule.
    assert!(c
        .execute(
            "UPDATE boards SET status = 'allocated' WHERE registration_id = 's-2'",
            []
        )
        .unwrap_err()
        .to_string()
        .contains("status change not allowed"));
}
