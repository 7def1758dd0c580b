//! The embedded engine: one SQLite file per station (WAL, `synchronous=FULL`).

use super::db::{ledger_error, Abort, DbErr, DbRow, Mode, Tx, Val};
use super::error::{LedgerError, Result};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};
use std::path::Path;
use std::time::Duration;

pub(crate) struct SqliteDb {
    conn: Connection,
}

fn failed(during: &str, e: rusqlite::Error) -> LedgerError {
    ledger_error("SQLite", during, Abort::Db(classify(e)))
}

fn classify(e: rusqlite::Error) -> DbErr {
    match &e {
        rusqlite::Error::SqliteFailure(f, msg) if f.code == ErrorCode::ConstraintViolation => {
            DbErr::Rule(msg.clone().unwrap_or_else(|| e.to_string()))
        }
        _ => DbErr::Failed(Box::new(e)),
    }
}

impl SqliteDb {
    /// Opens (creating if needed) a ledger file for writing.
    pub fn open(path: &Path) -> Result<SqliteDb> {
        let during = format!("opening {}", path.display());
        let conn = Connection::open(path).map_err(|e| {
            LedgerError::Refused(format!("[station] ledger: cannot open {} as SQLite ({e}); check the path and that its folder exists and is writable", path.display()))
        })?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(|e| failed(&during, e))?;
        // WAL: readers (ledger list, a second station tool) never block writers. FULL: a
        // committed allocation survives power loss, so a {seq} is never handed out twice.
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| failed(&during, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(LedgerError::Refused(format!("[station] ledger: {} cannot use write-ahead logging (got {mode}); put the ledger on a local disk", path.display())));
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| failed(&during, e))?;
        Ok(SqliteDb { conn })
    }

    /// Opens an existing file read-only (the audit commands never change it).
    pub fn open_read_only(path: &Path) -> Result<SqliteDb> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(|e| {
            LedgerError::Refused(format!("ledger: cannot open {} ({e})", path.display()))
        })?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(|e| failed("opening the ledger", e))?;
        Ok(SqliteDb { conn })
    }

    /// A private in-memory database (dry runs, and reading a ledger of an older schema).
    pub fn in_memory() -> Result<SqliteDb> {
        let conn = Connection::open_in_memory().map_err(|e| failed("opening memory", e))?;
        Ok(SqliteDb { conn })
    }

    pub fn transact<T>(
        &mut self,
        during: &str,
        mode: Mode,
        mut f: impl FnMut(&mut dyn Tx) -> std::result::Result<T, Abort>,
    ) -> Result<T> {
        let behavior = match mode {
            Mode::Read => TransactionBehavior::Deferred,
            Mode::Write => TransactionBehavior::Immediate,
        };
        let tx = self
            .conn
            .transaction_with_behavior(behavior)
            .map_err(|e| failed(during, e))?;
        let mut t = SqliteTx(&tx);
        let out = f(&mut t).map_err(|a| ledger_error("SQLite", during, a))?;
        tx.commit().map_err(|e| failed(during, e))?;
        Ok(out)
    }
}

struct SqliteTx<'a>(&'a Connection);

impl rusqlite::ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Val::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Val::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Val::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

fn params(p: &[Val]) -> Vec<&dyn rusqlite::ToSql> {
    p.iter().map(|v| v as &dyn rusqlite::ToSql).collect()
}

impl Tx for SqliteTx<'_> {
    fn exec(&mut self, sql: &str, p: &[Val]) -> std::result::Result<u64, DbErr> {
        self.0
            .execute(sql, params(p).as_slice())
            .map(|n| n as u64)
            .map_err(classify)
    }

    fn query(&mut self, sql: &str, p: &[Val]) -> std::result::Result<Vec<DbRow>, DbErr> {
        let mut stmt = self.0.prepare(sql).map_err(classify)?;
        let n = stmt.column_count();
        let rows = stmt
            .query_map(params(p).as_slice(), |r| {
                let mut out = Vec::with_capacity(n);
                for i in 0..n {
                    out.push(match r.get_ref(i)? {
                        ValueRef::Null => Val::Null,
                        ValueRef::Integer(i) => Val::Int(i),
                        ValueRef::Real(f) => Val::Text(f.to_string()),
                        ValueRef::Text(t) | ValueRef::Blob(t) => {
                            Val::Text(String::from_utf8_lossy(t).into_owned())
                        }
                    });
                }
                Ok(DbRow(out))
            })
            .map_err(classify)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(classify)?;
        Ok(rows)
    }

    fn batch(&mut self, sql: &str) -> std::result::Result<(), DbErr> {
        self.0.execute_batch(sql).map_err(classify)
    }

    fn engine(&self) -> &'static str {
        "sqlite"
    }
}
