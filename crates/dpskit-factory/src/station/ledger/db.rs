//! The little the ledger needs from a database, so its logic is written once for SQLite and
//! PostgreSQL: run statements with positional parameters (`?1`, `?2`, … in the SQL; the
//! PostgreSQL engine rewrites them to `$1`) inside a transaction the engine opens, retries
//! (PostgreSQL, after a lost connection) and commits.

use super::error::LedgerError;

/// A parameter or a column value. The ledger stores only text and integers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    Null,
    Int(i64),
    Text(String),
}

impl From<&str> for Val {
    fn from(s: &str) -> Val {
        Val::Text(s.into())
    }
}
impl From<&String> for Val {
    fn from(s: &String) -> Val {
        Val::Text(s.clone())
    }
}
impl From<String> for Val {
    fn from(s: String) -> Val {
        Val::Text(s)
    }
}
impl From<i64> for Val {
    fn from(i: i64) -> Val {
        Val::Int(i)
    }
}
impl<T: Into<Val>> From<Option<T>> for Val {
    fn from(o: Option<T>) -> Val {
        o.map_or(Val::Null, Into::into)
    }
}
impl From<&Option<String>> for Val {
    fn from(o: &Option<String>) -> Val {
        o.as_ref().map_or(Val::Null, |s| Val::Text(s.clone()))
    }
}

/// One result row.
#[derive(Debug, Clone)]
pub(crate) struct DbRow(pub Vec<Val>);

impl DbRow {
    pub fn opt_text(&self, i: usize) -> Option<String> {
        match self.0.get(i) {
            Some(Val::Text(s)) => Some(s.clone()),
            Some(Val::Int(n)) => Some(n.to_string()),
            _ => None,
        }
    }
    pub fn text(&self, i: usize) -> String {
        self.opt_text(i).unwrap_or_default()
    }
    pub fn opt_int(&self, i: usize) -> Option<i64> {
        match self.0.get(i) {
            Some(Val::Int(n)) => Some(*n),
            Some(Val::Text(s)) => s.parse().ok(),
            _ => None,
        }
    }
    pub fn int(&self, i: usize) -> i64 {
        self.opt_int(i).unwrap_or_default()
    }
}

/// How a statement failed, as the engine sees it.
#[derive(Debug)]
pub(crate) enum DbErr {
    /// A constraint or trigger refused the write: one of the ledger's rules.
    Rule(String),
    /// The connection to the server was lost; the engine reconnects and runs the whole
    /// transaction again (every ledger step is idempotent per MAC). Only a server loses it.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Lost(Box<dyn std::error::Error + Send + Sync>),
    /// Anything else the database reported.
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

/// Why a transaction body stopped: the database, or the ledger's own logic.
#[derive(Debug)]
pub(crate) enum Abort {
    Db(DbErr),
    Ledger(LedgerError),
}

impl From<DbErr> for Abort {
    fn from(e: DbErr) -> Abort {
        Abort::Db(e)
    }
}
impl From<LedgerError> for Abort {
    fn from(e: LedgerError) -> Abort {
        Abort::Ledger(e)
    }
}

/// Statements inside one open transaction.
pub(crate) trait Tx {
    /// Runs a statement; returns the rows it changed.
    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64, DbErr>;
    /// Runs a query; returns every row.
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<DbRow>, DbErr>;
    /// Runs several statements without parameters (migrations).
    fn batch(&mut self, sql: &str) -> Result<(), DbErr>;
    /// "sqlite" or "postgres": the migration text to use.
    fn engine(&self) -> &'static str;

    fn one(&mut self, sql: &str, params: &[Val]) -> Result<Option<DbRow>, DbErr> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
}

/// What a transaction is for: writes take the engine's write lock up front (SQLite's
/// BEGIN IMMEDIATE; a PostgreSQL advisory lock), so allocations from every station are
/// serialised and a counter is never read twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Read,
    Write,
}

/// Turns a failed transaction into the ledger's error, naming the step and the state the
/// ledger was left in.
pub(crate) fn ledger_error(engine: &'static str, during: &str, abort: Abort) -> LedgerError {
    match abort {
        Abort::Ledger(e) => e,
        Abort::Db(DbErr::Rule(reason)) => LedgerError::Rule {
            during: during.into(),
            reason,
        },
        Abort::Db(DbErr::Lost(source) | DbErr::Failed(source)) => LedgerError::Database {
            engine,
            during: during.into(),
            state: super::error::UNCHANGED.into(),
            source,
        },
    }
}
