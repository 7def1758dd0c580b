//! The station ledger: which board got which registration ID and how far it got — one SQLite
//! file per station (the embedded default), or one PostgreSQL database shared by every
//! station of a factory (`[ledger] url`).
//!
//! The rules live in the schema ([`migrations`]), the same in both engines, so no bug, no
//! second process and no hand-written SQL can break them: an ID is never given to two boards
//! (unique, case-insensitive) nor a board two IDs, a board's ID and MAC never change, rows are
//! never deleted, status follows the state machine, and a row is `done` only with the SHA-256
//! of the written image and the 32-hex-digit MD5 the board reported for it.
//!
//! Status: `allocated` (ID reserved, nothing written) → `writing` (the flash may hold a partial
//! image) → `done` (MD5-verified) or `failed`. Every step is its own committed transaction
//! (SQLite: WAL, `synchronous=FULL`), so a kill -9 or a pulled cable leaves a ledger the next
//! run finishes from: same MAC, same ID. `attempts` keeps the history, refusals included.
//! No secret is ever stored: no key, no image bytes. The logic below is written once over
//! [`db::Tx`]; [`sqlite`] and `pg` are the engines.

mod db;
pub mod error;
pub mod export;
pub mod migrations;
#[cfg(feature = "postgres")]
mod pg;
mod sqlite;

use super::assign::{IdPlan, Mac};
use super::now_rfc3339;
use db::{Abort, DbRow, Mode, Tx, Val};
use dpskit_core::RegistrationId;
pub use error::LedgerError;
use error::Result;
pub use export::Filter;
use serde::Serialize;
use std::cell::RefCell;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The schema version this dpskit writes (see [`migrations`]).
pub fn schema_version() -> i64 {
    migrations::latest()
}

/// Where a station's ledger is.
#[derive(Clone)]
pub enum LedgerTarget {
    /// One SQLite file for this station (`[station] ledger`).
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by the factory's stations (`[ledger] url`).
    Postgres(PgSettings),
}

impl LedgerTarget {
    /// True when several stations share this ledger.
    pub fn is_shared(&self) -> bool {
        matches!(self, LedgerTarget::Postgres(_))
    }
}

impl fmt::Display for LedgerTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LedgerTarget::Sqlite(p) => write!(f, "{}", p.display()),
            LedgerTarget::Postgres(s) => write!(f, "{} (shared)", s.url),
        }
    }
}

impl fmt::Debug for LedgerTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// How to reach the shared PostgreSQL ledger. The URL never holds the password; it comes
/// from an environment variable or an owner-only file and is never printed.
#[derive(Clone)]
pub struct PgSettings {
    /// `postgresql://user@host:port/db?sslmode=require` (or `host=/socket/dir` for a local
    /// server): no password in it.
    pub url: String,
    password: Option<String>,
    /// PEM file with the server's CA for TLS; default: the roots dpskit bundles for Azure.
    pub ca_file: Option<PathBuf>,
    /// How long a lost connection is retried before the step fails.
    pub reconnect_window: Duration,
}

impl PgSettings {
    pub fn new(url: impl Into<String>, password: Option<String>) -> PgSettings {
        PgSettings {
            url: url.into(),
            password,
            ca_file: None,
            reconnect_window: Duration::from_secs(60),
        }
    }

    /// The password, for the connection only. Never print it.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }
}

impl fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgSettings")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "(hidden)"))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// How far a board got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Allocated,
    Writing,
    Done,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Allocated => "allocated",
            Status::Writing => "writing",
            Status::Done => "done",
            Status::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "allocated" => Status::Allocated,
            "writing" => Status::Writing,
            "done" => Status::Done,
            "failed" => Status::Failed,
            _ => return None,
        })
    }
}

/// One board as the ledger knows it. Nothing here is secret.
#[derive(Debug, Clone, Serialize)]
pub struct BoardRow {
    pub registration_id: String,
    pub mac: String,
    pub station: String,
    pub seq: Option<i64>,
    pub status: Status,
    pub failure: Option<String>,
    pub port: Option<String>,
    pub chip: Option<String>,
    pub revision: Option<String>,
    pub flash_size: Option<String>,
    pub psram_mb: Option<i64>,
    pub firmware_project: Option<String>,
    pub firmware_version: Option<String>,
    pub partition: Option<String>,
    pub partition_offset: Option<i64>,
    pub image_sha256: Option<String>,
    pub verified_md5: Option<String>,
    pub attempts: i64,
    pub allocated_at: String,
    pub updated_at: String,
    pub done_at: Option<String>,
}

const BOARD_COLUMNS: &str = "registration_id, mac, station, seq, status, failure, port, chip, revision, flash_size, psram_mb, firmware_project, firmware_version, partition, partition_offset, image_sha256, verified_md5, attempts, allocated_at, updated_at, done_at";

/// Column names of [`BoardRow`] in export order.
pub const EXPORT_COLUMNS: &[&str] = &[
    "registration_id",
    "mac",
    "station",
    "seq",
    "status",
    "failure",
    "port",
    "chip",
    "revision",
    "flash_size",
    "psram_mb",
    "firmware_project",
    "firmware_version",
    "partition",
    "partition_offset",
    "image_sha256",
    "verified_md5",
    "attempts",
    "allocated_at",
    "updated_at",
    "done_at",
];

impl BoardRow {
    fn from_db(r: &DbRow) -> BoardRow {
        BoardRow {
            registration_id: r.text(0),
            mac: r.text(1),
            station: r.text(2),
            seq: r.opt_int(3),
            status: Status::parse(&r.text(4)).unwrap_or(Status::Failed),
            failure: r.opt_text(5),
            port: r.opt_text(6),
            chip: r.opt_text(7),
            revision: r.opt_text(8),
            flash_size: r.opt_text(9),
            psram_mb: r.opt_int(10),
            firmware_project: r.opt_text(11),
            firmware_version: r.opt_text(12),
            partition: r.opt_text(13),
            partition_offset: r.opt_int(14),
            image_sha256: r.opt_text(15),
            verified_md5: r.opt_text(16),
            attempts: r.int(17),
            allocated_at: r.text(18),
            updated_at: r.text(19),
            done_at: r.opt_text(20),
        }
    }

    /// The fields as strings, in [`EXPORT_COLUMNS`] order.
    pub fn fields(&self) -> Vec<String> {
        let o = |v: &Option<String>| v.clone().unwrap_or_default();
        let n = |v: &Option<i64>| v.map(|x| x.to_string()).unwrap_or_default();
        vec![
            self.registration_id.clone(),
            self.mac.clone(),
            self.station.clone(),
            n(&self.seq),
            self.status.as_str().into(),
            o(&self.failure),
            o(&self.port),
            o(&self.chip),
            o(&self.revision),
            o(&self.flash_size),
            n(&self.psram_mb),
            o(&self.firmware_project),
            o(&self.firmware_version),
            o(&self.partition),
            n(&self.partition_offset),
            o(&self.image_sha256),
            o(&self.verified_md5),
            self.attempts.to_string(),
            self.allocated_at.clone(),
            self.updated_at.clone(),
            o(&self.done_at),
        ]
    }
}

/// One provisioning attempt (refusals included), for the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attempt {
    pub at: String,
    pub station: String,
    pub port: String,
    pub mac: Option<String>,
    pub registration_id: Option<String>,
    pub result: String,
    pub reason: Option<String>,
    pub duration_ms: Option<i64>,
}

/// What inspection found, stored with the board.
#[derive(Debug, Clone, Default)]
pub struct BoardFacts {
    pub port: String,
    pub chip: Option<String>,
    pub revision: Option<String>,
    pub flash_size: Option<String>,
    pub psram_mb: Option<u32>,
    pub firmware_project: Option<String>,
    pub firmware_version: Option<String>,
    pub partition: Option<String>,
    pub partition_offset: Option<u32>,
}

/// The ID a board holds in the ledger, and where it stands.
#[derive(Debug, Clone)]
pub struct Allocation {
    pub registration_id: RegistrationId,
    /// True when this call handed the ID out; false when the board already had it.
    pub new: bool,
    pub status: Status,
    pub image_sha256: Option<String>,
    pub verified_md5: Option<String>,
}

/// What [`Ledger::import`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportReport {
    /// Boards copied.
    pub copied: usize,
    /// Boards the target already had with the same ID and MAC.
    pub already: usize,
    /// History rows copied.
    pub attempts: usize,
}

enum Engine {
    Sqlite(sqlite::SqliteDb),
    #[cfg(feature = "postgres")]
    Postgres(Box<pg::PgDb>),
}

impl Engine {
    fn transact<T>(
        &mut self,
        during: &str,
        mode: Mode,
        f: impl FnMut(&mut dyn Tx) -> std::result::Result<T, Abort>,
    ) -> Result<T> {
        match self {
            Engine::Sqlite(d) => d.transact(during, mode, f),
            #[cfg(feature = "postgres")]
            Engine::Postgres(d) => d.transact(during, mode, f),
        }
    }

    fn connect(target: &LedgerTarget, read_only: bool) -> Result<Engine> {
        match target {
            LedgerTarget::Sqlite(path) if read_only => {
                Ok(Engine::Sqlite(sqlite::SqliteDb::open_read_only(path)?))
            }
            LedgerTarget::Sqlite(path) => Ok(Engine::Sqlite(sqlite::SqliteDb::open(path)?)),
            #[cfg(feature = "postgres")]
            LedgerTarget::Postgres(s) => Ok(Engine::Postgres(Box::new(pg::PgDb::connect(s)?))),
            #[cfg(not(feature = "postgres"))]
            LedgerTarget::Postgres(_) => Err(LedgerError::Refused(
                "[ledger] url: this dpskit was built without PostgreSQL support (feature `postgres`); use a build with it, or a [station] ledger file".into(),
            )),
        }
    }
}

/// An open ledger. Methods take `&self`; a station shares one behind a mutex.
pub struct Ledger {
    engine: RefCell<Engine>,
    station: String,
    target: String,
}

const ATTEMPT_COLUMNS: &str =
    "at, station, port, mac, registration_id, result, reason, duration_ms";

/// The column that orders rows as they were handed out.
fn order(tx: &dyn Tx) -> &'static str {
    if tx.engine() == "postgres" {
        "id"
    } else {
        "rowid"
    }
}

fn attempt_from_db(r: &DbRow) -> Attempt {
    Attempt {
        at: r.text(0),
        station: r.text(1),
        port: r.text(2),
        mac: r.opt_text(3),
        registration_id: r.opt_text(4),
        result: r.text(5),
        reason: r.opt_text(6),
        duration_ms: r.opt_int(7),
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Ledger {
    /// Opens (creating if needed) the SQLite ledger of `station` at `path`.
    pub fn open(path: &Path, station: &str) -> Result<Ledger> {
        Ledger::open_target(&LedgerTarget::Sqlite(path.into()), station)
    }

    /// Opens the station's ledger for provisioning: brings its schema up to date and, for a
    /// SQLite file, checks it belongs to `station`. A shared server that cannot be reached is
    /// an error ([`LedgerError::Unreachable`]): the station never falls back to a local file.
    pub fn open_target(target: &LedgerTarget, station: &str) -> Result<Ledger> {
        let engine = Engine::connect(target, false)?;
        let ledger = Ledger {
            engine: RefCell::new(engine),
            station: station.into(),
            target: target.to_string(),
        };
        ledger.init(matches!(target, LedgerTarget::Sqlite(_)))?;
        Ok(ledger)
    }

    fn init(&self, per_station: bool) -> Result<()> {
        let now = now_rfc3339();
        let station = self.station.clone();
        let target = self.target.clone();
        self.transact("bringing the schema up to date", Mode::Write, |tx| {
            let version = migrations::current(tx)?;
            let legacy = if version == 0 {
                legacy_schema(tx)?
            } else {
                None
            };
            if let Some(v) = legacy.as_deref() {
                if v != "1" {
                    return Err(LedgerError::Refused(format!("ledger: {target} has schema version {v}; this dpskit reads {}; use a matching dpskit", migrations::latest())).into());
                }
            }
            let version = migrations::apply(tx, &now)?;
            tx.exec(
                "DELETE FROM meta WHERE key = 'schema'",
                &[],
            )?;
            tx.exec(
                "INSERT INTO meta (key, value) VALUES ('schema', ?1)",
                &[version.to_string().into()],
            )?;
            if per_station {
                match tx
                    .one("SELECT value FROM meta WHERE key = 'station'", &[])?
                    .map(|r| r.text(0))
                {
                    None => {
                        tx.exec(
                            "INSERT INTO meta (key, value) VALUES ('station', ?1)",
                            &[station.as_str().into()],
                        )?;
                    }
                    Some(owner) if owner == station => {}
                    Some(owner) => {
                        return Err(LedgerError::Refused(format!(
                            "[station] ledger: {target} belongs to station {owner:?}, not {station:?}; each station keeps its own ledger, so set [station] ledger to another file (or fix [station] name)"
                        ))
                        .into())
                    }
                }
            }
            Ok(())
        })
    }

    /// An in-memory copy of the station's ledger (empty if there is none yet): `--dry-run`
    /// allocates against it exactly as a real run would, and nothing reaches the disk or the
    /// server.
    pub fn dry_run_copy(target: &LedgerTarget, station: &str) -> Result<Ledger> {
        let copy = Ledger::in_memory(station)?;
        let exists = match target {
            LedgerTarget::Sqlite(p) => p.exists(),
            LedgerTarget::Postgres(_) => true,
        };
        if exists {
            if let Some(src) = Ledger::read_only(target, true)? {
                copy.import_from(&src)?;
            }
        }
        Ok(copy)
    }

    fn in_memory(station: &str) -> Result<Ledger> {
        let ledger = Ledger {
            engine: RefCell::new(Engine::Sqlite(sqlite::SqliteDb::in_memory()?)),
            station: station.into(),
            target: ":memory:".into(),
        };
        ledger.init(true)?;
        Ok(ledger)
    }

    /// Opens an existing SQLite ledger for reading only (the audit commands).
    pub fn open_read_only(path: &Path) -> Result<Ledger> {
        Ledger::open_target_read_only(&LedgerTarget::Sqlite(path.into()))
    }

    /// Opens a ledger for reading only. A SQLite ledger of an older schema is read into
    /// memory and upgraded there, so audits of old files work and the file stays untouched.
    pub fn open_target_read_only(target: &LedgerTarget) -> Result<Ledger> {
        Ledger::read_only(target, false)?.ok_or_else(|| {
            LedgerError::Refused(format!(
                "ledger: {target} holds no ledger yet; the first `dpskit provision` creates it"
            ))
        })
    }

    /// A read-only ledger; `None` for a database with no ledger in it yet when `empty_ok`.
    fn read_only(target: &LedgerTarget, empty_ok: bool) -> Result<Option<Ledger>> {
        if let LedgerTarget::Sqlite(path) = target {
            if !path.exists() {
                return Err(LedgerError::Refused(format!("ledger: {} does not exist; it is created by the first `dpskit provision` (or give --ledger PATH)", path.display())));
            }
        }
        let engine = Engine::connect(target, true)?;
        let ledger = Ledger {
            engine: RefCell::new(engine),
            station: String::new(),
            target: target.to_string(),
        };
        let (version, legacy, station) =
            ledger.transact("reading the schema version", Mode::Read, |tx| {
                let version = migrations::current(tx)?;
                let legacy = if version == 0 {
                    legacy_schema(tx)?
                } else {
                    None
                };
                let station = if version > 0 || legacy.is_some() {
                    tx.one("SELECT value FROM meta WHERE key = 'station'", &[])?
                        .map(|r| r.text(0))
                } else {
                    None
                };
                Ok((version, legacy, station))
            })?;
        let mut ledger = ledger;
        ledger.station = station.unwrap_or_default();
        if version == migrations::latest() {
            return Ok(Some(ledger));
        }
        if version > migrations::latest() {
            return Err(LedgerError::Refused(format!("ledger: {target} has schema version {version}; this dpskit reads up to {}; use a newer dpskit", migrations::latest())));
        }
        if version == 0 && legacy.is_none() {
            if empty_ok {
                return Ok(None);
            }
            return Err(LedgerError::Refused(format!(
                "ledger: {target} is not a dpskit ledger (no schema version)"
            )));
        }
        // An older ledger: read it as it is, upgrade the copy in memory.
        let copy = Ledger::in_memory(&ledger.station)?;
        copy.import_from(&ledger)?;
        Ok(Some(copy))
    }

    fn transact<T>(
        &self,
        during: &str,
        mode: Mode,
        f: impl FnMut(&mut dyn Tx) -> std::result::Result<T, Abort>,
    ) -> Result<T> {
        self.engine.borrow_mut().transact(during, mode, f)
    }

    /// The station this ledger belongs to (SQLite), or the one using it (PostgreSQL).
    pub fn station(&self) -> &str {
        &self.station
    }

    /// Where the ledger is, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The board with this MAC, if it was ever given an ID.
    pub fn find_by_mac(&self, mac: &Mac) -> Result<Option<BoardRow>> {
        let mac = mac.to_string();
        self.transact("looking up a board", Mode::Read, |tx| {
            Ok(tx
                .one(
                    &format!("SELECT {BOARD_COLUMNS} FROM boards WHERE mac = ?1"),
                    &[mac.as_str().into()],
                )?
                .map(|r| BoardRow::from_db(&r)))
        })
    }

    /// A board by registration ID (any case) or MAC.
    pub fn find(&self, id_or_mac: &str) -> Result<Option<BoardRow>> {
        if let Ok(mac) = Mac::parse(id_or_mac) {
            if let Some(row) = self.find_by_mac(&mac)? {
                return Ok(Some(row));
            }
        }
        self.transact("looking up a board", Mode::Read, |tx| {
            Ok(tx
                .one(
                    &format!(
                        "SELECT {BOARD_COLUMNS} FROM boards WHERE lower(registration_id) = lower(?1)"
                    ),
                    &[id_or_mac.into()],
                )?
                .map(|r| BoardRow::from_db(&r)))
        })
    }

    /// Every board, in the order IDs were handed out.
    pub fn list(&self) -> Result<Vec<BoardRow>> {
        self.list_filtered(&Filter::default())
    }

    /// The boards `filter` selects, in the order IDs were handed out.
    pub fn list_filtered(&self, filter: &Filter) -> Result<Vec<BoardRow>> {
        let (clause, params) = filter.sql();
        self.transact("listing boards", Mode::Read, |tx| {
            let sql = format!(
                "SELECT {BOARD_COLUMNS} FROM boards{clause} ORDER BY {}",
                order(tx)
            );
            Ok(tx
                .query(&sql, &params)?
                .iter()
                .map(BoardRow::from_db)
                .collect())
        })
    }

    /// The attempts made on a board (by MAC), oldest first.
    pub fn attempts_for(&self, mac: &str) -> Result<Vec<Attempt>> {
        self.transact("reading the attempts", Mode::Read, |tx| {
            Ok(tx
                .query(
                    &format!("SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE mac = ?1 ORDER BY id"),
                    &[mac.into()],
                )?
                .iter()
                .map(attempt_from_db)
                .collect())
        })
    }

    /// The whole history, oldest first.
    pub fn all_attempts(&self) -> Result<Vec<Attempt>> {
        self.transact("reading the attempts", Mode::Read, |tx| {
            Ok(tx
                .query(
                    &format!("SELECT {ATTEMPT_COLUMNS} FROM attempts ORDER BY id"),
                    &[],
                )?
                .iter()
                .map(attempt_from_db)
                .collect())
        })
    }

    /// The next `{seq}` the ledger would hand out, if it has counted any.
    pub fn next_seq(&self) -> Result<Option<i64>> {
        self.transact("reading the counter", Mode::Read, |tx| {
            Ok(tx
                .one("SELECT value FROM meta WHERE key = 'next_seq'", &[])?
                .and_then(|r| r.text(0).parse().ok()))
        })
    }

    /// Gives the board with `mac` its registration ID, in one transaction that holds the
    /// write lock (every station's allocations are serialised): the board's existing ID if it
    /// has one — whichever station gave it — else the next one the plan allows. The board's
    /// facts are refreshed and its attempt counter bumped either way. Run again after a lost
    /// connection, it finds the board's row and hands out nothing new.
    pub fn allocate(&self, mac: &Mac, plan: &IdPlan, facts: &BoardFacts) -> Result<Allocation> {
        let now = now_rfc3339();
        let mac_text = mac.to_string();
        let station = self.station.clone();
        let during = format!("allocating an ID for {mac}");
        self.transact(&during, Mode::Write, |tx| {
            let existing = tx
                .one(
                    &format!("SELECT {BOARD_COLUMNS} FROM boards WHERE mac = ?1"),
                    &[mac_text.as_str().into()],
                )?
                .map(|r| BoardRow::from_db(&r));
            let allocation = match existing {
                Some(row) => existing_allocation(mac, plan, row)?,
                None => {
                    let (id, seq) = next_id(tx, mac, plan)?;
                    tx.exec(
                        "INSERT INTO boards (registration_id, mac, station, seq, status, allocated_at, updated_at) VALUES (?1, ?2, ?3, ?4, 'allocated', ?5, ?5)",
                        &[
                            id.as_str().into(),
                            mac_text.as_str().into(),
                            station.as_str().into(),
                            seq.map(|s| s as i64).into(),
                            now.as_str().into(),
                        ],
                    )?;
                    Allocation {
                        registration_id: id,
                        new: true,
                        status: Status::Allocated,
                        image_sha256: None,
                        verified_md5: None,
                    }
                }
            };
            tx.exec(
                "UPDATE boards SET port = ?2, chip = ?3, revision = ?4, flash_size = ?5, psram_mb = ?6, firmware_project = ?7,
                     firmware_version = ?8, partition = ?9, partition_offset = ?10, attempts = attempts + 1, updated_at = ?11
                 WHERE mac = ?1",
                &[
                    mac_text.as_str().into(),
                    facts.port.as_str().into(),
                    (&facts.chip).into(),
                    (&facts.revision).into(),
                    (&facts.flash_size).into(),
                    facts.psram_mb.map(i64::from).into(),
                    (&facts.firmware_project).into(),
                    (&facts.firmware_version).into(),
                    (&facts.partition).into(),
                    facts.partition_offset.map(i64::from).into(),
                    now.as_str().into(),
                ],
            )?;
            Ok(allocation)
        })
    }

    fn update_status(&self, mac: &Mac, during: &str, sql: &str, extra: &[Val]) -> Result<()> {
        let now = now_rfc3339();
        let mut p: Vec<Val> = vec![mac.to_string().into(), now.into()];
        p.extend_from_slice(extra);
        let mac_text = mac.to_string();
        self.transact(during, Mode::Write, |tx| {
            if tx.exec(sql, &p)? != 1 {
                return Err(
                    LedgerError::Refused(format!("ledger: no board with MAC {mac_text}")).into(),
                );
            }
            Ok(())
        })
    }

    /// About to write `image_sha256` to the board: from here on its flash may be partial.
    pub fn mark_writing(&self, mac: &Mac, image_sha256: &str) -> Result<()> {
        self.update_status(
            mac,
            &format!("recording {mac} as writing"),
            "UPDATE boards SET status = 'writing', failure = NULL, image_sha256 = ?3, verified_md5 = NULL, done_at = NULL, updated_at = ?2 WHERE mac = ?1",
            &[image_sha256.into()],
        )
    }

    /// The board reported `md5` over the partition holding the image `image_sha256`, and it
    /// matched: the only way to `done`. The database refuses anything but a 32-hex-digit MD5.
    pub fn mark_done(&self, mac: &Mac, image_sha256: &str, md5: &str) -> Result<()> {
        self.update_status(
            mac,
            &format!("recording {mac} as done"),
            "UPDATE boards SET status = 'done', failure = NULL, image_sha256 = ?3, verified_md5 = ?4, done_at = ?2, updated_at = ?2 WHERE mac = ?1",
            &[image_sha256.into(), md5.into()],
        )
    }

    /// The attempt failed after the ID was allocated (or a done board no longer holds its
    /// image); the ID stays with the board, which is no longer `done`.
    pub fn mark_failed(&self, mac: &Mac, reason: &str) -> Result<()> {
        self.update_status(
            mac,
            &format!("recording {mac} as failed"),
            "UPDATE boards SET status = 'failed', failure = ?3, verified_md5 = NULL, done_at = NULL, updated_at = ?2 WHERE mac = ?1",
            &[reason.into()],
        )
    }

    /// Appends to the audit trail.
    pub fn record_attempt(&self, a: &Attempt) -> Result<()> {
        self.transact("recording the attempt", Mode::Write, |tx| {
            insert_attempt(tx, a)?;
            Ok(())
        })
    }

    /// Copies every board and the history of `src` into this ledger in one transaction:
    /// boards this ledger already has (same ID, same MAC) are left as they are; a board whose
    /// ID or MAC is held here by another board is a conflict, and any conflict copies nothing
    /// ([`LedgerError::Conflicts`]). Statuses are replayed through the state machine, so the
    /// copy obeys the same rules; a `done` row without a valid MD5 (an old ledger) arrives
    /// `failed`, to be verified by the next run. The `{seq}` counter takes the larger value.
    pub fn import_from(&self, src: &Ledger) -> Result<ImportReport> {
        let boards = src.list()?;
        let attempts = src.all_attempts()?;
        let next_seq = src.next_seq()?;
        let during = format!("copying the ledger {} into {}", src.target, self.target);
        self.transact(&during, Mode::Write, |tx| {
            let mut report = ImportReport::default();
            let mut conflicts = Vec::new();
            for b in &boards {
                let by_mac = tx
                    .one(
                        "SELECT registration_id FROM boards WHERE mac = ?1",
                        &[b.mac.as_str().into()],
                    )?
                    .map(|r| r.text(0));
                let by_id = tx
                    .one(
                        "SELECT mac FROM boards WHERE lower(registration_id) = lower(?1)",
                        &[b.registration_id.as_str().into()],
                    )?
                    .map(|r| r.text(0));
                match (by_mac, by_id) {
                    (Some(id), Some(mac))
                        if id.eq_ignore_ascii_case(&b.registration_id) && mac == b.mac =>
                    {
                        report.already += 1;
                        continue;
                    }
                    (Some(id), _) => {
                        conflicts.push(format!(
                            "MAC {}: {} here, {id} in {}",
                            b.mac, b.registration_id, self.target
                        ));
                        continue;
                    }
                    (None, Some(mac)) => {
                        conflicts.push(format!(
                            "ID {}: MAC {} here, {mac} in {}",
                            b.registration_id, b.mac, self.target
                        ));
                        continue;
                    }
                    (None, None) => {}
                }
                insert_board(tx, b)?;
                report.copied += 1;
            }
            if !conflicts.is_empty() {
                return Err(LedgerError::Conflicts(conflicts).into());
            }
            for a in &attempts {
                // A re-run copies no history twice.
                if attempt_exists(tx, a)? {
                    continue;
                }
                insert_attempt(tx, a)?;
                report.attempts += 1;
            }
            if let Some(n) = next_seq {
                let here = tx
                    .one("SELECT value FROM meta WHERE key = 'next_seq'", &[])?
                    .and_then(|r| r.text(0).parse::<i64>().ok());
                if here.is_none_or(|h| h < n) {
                    tx.exec("DELETE FROM meta WHERE key = 'next_seq'", &[])?;
                    tx.exec(
                        "INSERT INTO meta (key, value) VALUES ('next_seq', ?1)",
                        &[n.to_string().into()],
                    )?;
                }
            }
            Ok(report)
        })
    }
}

/// `meta.schema` of a first-generation ledger (before `schema_migrations`), if any.
fn legacy_schema(tx: &mut dyn Tx) -> std::result::Result<Option<String>, Abort> {
    let has_meta = if tx.engine() == "postgres" {
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'meta' AND table_schema = current_schema()"
    } else {
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    };
    if tx.one(has_meta, &[])?.map_or(0, |r| r.int(0)) == 0 {
        return Ok(None);
    }
    Ok(tx
        .one("SELECT value FROM meta WHERE key = 'schema'", &[])?
        .map(|r| r.text(0)))
}

fn insert_attempt(tx: &mut dyn Tx, a: &Attempt) -> std::result::Result<(), Abort> {
    tx.exec(
        &format!(
            "INSERT INTO attempts ({ATTEMPT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
        ),
        &[
            a.at.as_str().into(),
            a.station.as_str().into(),
            a.port.as_str().into(),
            (&a.mac).into(),
            (&a.registration_id).into(),
            a.result.as_str().into(),
            (&a.reason).into(),
            a.duration_ms.into(),
        ],
    )?;
    Ok(())
}

fn attempt_exists(tx: &mut dyn Tx, a: &Attempt) -> std::result::Result<bool, Abort> {
    Ok(tx
        .one(
            "SELECT 1 FROM attempts WHERE at = ?1 AND station = ?2 AND port = ?3 AND mac IS NOT DISTINCT FROM ?4 AND result = ?5",
            &[
                a.at.as_str().into(),
                a.station.as_str().into(),
                a.port.as_str().into(),
                (&a.mac).into(),
                a.result.as_str().into(),
            ],
        )?
        .is_some())
}

/// Inserts a copied board: as `allocated`, then its status replayed through the state machine.
fn insert_board(tx: &mut dyn Tx, b: &BoardRow) -> std::result::Result<(), Abort> {
    let verified = b.status != Status::Done
        || (b.image_sha256.as_deref().is_some_and(|s| is_hex(s, 64))
            && b.verified_md5.as_deref().is_some_and(|s| is_hex(s, 32))
            && b.done_at.is_some());
    let (status, failure, md5, done_at) = if verified {
        (
            b.status,
            b.failure.clone(),
            b.verified_md5.clone(),
            b.done_at.clone(),
        )
    } else {
        (
            Status::Failed,
            Some(
                "ledger copy: was done without a verified MD5; the next run verifies the board"
                    .into(),
            ),
            None,
            None,
        )
    };
    tx.exec(
        &format!("INSERT INTO boards ({BOARD_COLUMNS}) VALUES (?1, ?2, ?3, ?4, 'allocated', ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"),
        &[
            b.registration_id.as_str().into(),
            b.mac.as_str().into(),
            b.station.as_str().into(),
            b.seq.into(),
            (&failure).into(),
            (&b.port).into(),
            (&b.chip).into(),
            (&b.revision).into(),
            (&b.flash_size).into(),
            b.psram_mb.into(),
            (&b.firmware_project).into(),
            (&b.firmware_version).into(),
            (&b.partition).into(),
            b.partition_offset.into(),
            (&b.image_sha256).into(),
            (&md5).into(),
            b.attempts.into(),
            b.allocated_at.as_str().into(),
            b.updated_at.as_str().into(),
            (&done_at).into(),
        ],
    )?;
    if status != Status::Allocated {
        tx.exec(
            "UPDATE boards SET status = ?2 WHERE mac = ?1",
            &[b.mac.as_str().into(), status.as_str().into()],
        )?;
    }
    Ok(())
}

/// The ID a board that is already in the ledger keeps (a manifest that now pins it elsewhere
/// is refused: an ID is never changed).
fn existing_allocation(
    mac: &Mac,
    plan: &IdPlan,
    row: BoardRow,
) -> std::result::Result<Allocation, Abort> {
    if let IdPlan::Manifest(m) = plan {
        if let Some(pin) = m.pinned(mac) {
            if !pin.id.as_str().eq_ignore_ascii_case(&row.registration_id) {
                return Err(LedgerError::Alloc(format!(
                    "{} line {} pins {mac} to {}, but the ledger gave this board {} earlier; an ID is never changed, so fix the manifest row",
                    m.path.display(),
                    pin.line,
                    pin.id,
                    row.registration_id
                ))
                .into());
            }
        }
    }
    let id = RegistrationId::parse(&row.registration_id, true).map_err(|e| {
        LedgerError::Refused(format!(
            "ledger: stored ID {:?} is invalid ({e})",
            row.registration_id
        ))
    })?;
    Ok(Allocation {
        registration_id: id,
        new: false,
        status: row.status,
        image_sha256: row.image_sha256,
        verified_md5: row.verified_md5,
    })
}

/// The MAC holding `id` (any case), if any.
fn taken(tx: &mut dyn Tx, id: &str) -> std::result::Result<Option<String>, Abort> {
    Ok(tx
        .one(
            "SELECT mac FROM boards WHERE lower(registration_id) = lower(?1)",
            &[id.into()],
        )?
        .map(|r| r.text(0)))
}

/// The next ID the plan gives a board the ledger has never seen, and its `{seq}`. The
/// counter is read and advanced inside the caller's transaction, so a crash burns no number.
fn next_id(
    tx: &mut dyn Tx,
    mac: &Mac,
    plan: &IdPlan,
) -> std::result::Result<(RegistrationId, Option<u64>), Abort> {
    match plan {
        IdPlan::Manifest(m) => {
            if let Some(pin) = m.pinned(mac) {
                if let Some(other) = taken(tx, pin.id.as_str())? {
                    return Err(LedgerError::Alloc(format!(
                        "{} line {} pins {mac} to {}, but the ledger gave that ID to {other}; an ID goes to one board only, so fix the manifest",
                        m.path.display(),
                        pin.line,
                        pin.id
                    ))
                    .into());
                }
                return Ok((pin.id.clone(), None));
            }
            for row in m.pool() {
                if taken(tx, row.id.as_str())?.is_none() {
                    return Ok((row.id.clone(), None));
                }
            }
            let pool = m.pool().count();
            let why = if pool == 0 {
                format!(
                    "{mac} is not in {} and the manifest has no unpinned IDs; add a row for it",
                    m.path.display()
                )
            } else {
                format!(
                    "all {pool} unpinned IDs in {} are taken; add rows to the manifest",
                    m.path.display()
                )
            };
            Err(LedgerError::Alloc(why).into())
        }
        IdPlan::Template(t) => {
            let (text, seq) = if t.uses_seq() {
                let stored = tx
                    .one("SELECT value FROM meta WHERE key = 'next_seq'", &[])?
                    .and_then(|r| r.text(0).parse::<u64>().ok());
                let mut seq = stored.unwrap_or(t.first_seq).max(t.first_seq);
                // Skip numbers whose ID is taken (e.g. first_seq was lowered).
                let text = loop {
                    let candidate = t.expand(mac, Some(seq));
                    if taken(tx, &candidate)?.is_none() {
                        break candidate;
                    }
                    seq += 1;
                };
                tx.exec("DELETE FROM meta WHERE key = 'next_seq'", &[])?;
                tx.exec(
                    "INSERT INTO meta (key, value) VALUES ('next_seq', ?1)",
                    &[(seq + 1).to_string().into()],
                )?;
                (text, Some(seq))
            } else {
                let text = t.expand(mac, None);
                if let Some(other) = taken(tx, &text)? {
                    return Err(LedgerError::Alloc(format!(
                        "the template gives {text}, which the ledger gave to {other}; change [ids] template"
                    ))
                    .into());
                }
                (text, None)
            };
            let id = RegistrationId::parse(&text, t.allow_uppercase)
                .map_err(|e| LedgerError::Alloc(format!("[ids] template gives {text:?}: {e}")))?;
            Ok((id, seq))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::station::assign::{Manifest, Template};

    fn facts() -> BoardFacts {
        BoardFacts {
            port: "/dev/ttyX".into(),
            chip: Some("esp32s3".into()),
            ..Default::default()
        }
    }

    const SHA: &str = "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";
    const MD5: &str = "0cc175b9c0f1b6a831c399e269772661";

    fn mac(n: u8) -> Mac {
        Mac([0x34, 0x85, 0x18, 0, 0, n])
    }

    #[test]
    fn seq_ids_are_sticky_and_unique() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sqlite");
        let plan =
            IdPlan::Template(Template::parse("{prefix}-{seq:03}", "s", "st", 1, false).unwrap());
        let l = Ledger::open(&path, "st").unwrap();
        let a = l.allocate(&mac(1), &plan, &facts()).unwrap();
        let b = l.allocate(&mac(2), &plan, &facts()).unwrap();
        let a2 = l.allocate(&mac(1), &plan, &facts()).unwrap();
        assert_eq!(
            (a.registration_id.as_str(), b.registration_id.as_str()),
            ("s-001", "s-002")
        );
        assert!(a.new && !a2.new);
        assert_eq!(a2.registration_id, a.registration_id);
        assert_eq!(l.find_by_mac(&mac(1)).unwrap().unwrap().attempts, 2);
        drop(l);
        // Reopened, the counter carries on.
        let l = Ledger::open(&path, "st").unwrap();
        assert_eq!(
            l.allocate(&mac(3), &plan, &facts())
                .unwrap()
                .registration_id
                .as_str(),
            "s-003"
        );
        // Another station may not use this file.
        assert!(Ledger::open(&path, "other")
            .err()
            .unwrap()
            .to_string()
            .contains("belongs to station"));
    }

    #[test]
    fn schema_enforces_the_rules() {
        let dir = tempfile::tempdir().unwrap();
        let plan = IdPlan::Template(Template::parse("x-{mac}", "", "st", 1, false).unwrap());
        let path = dir.path().join("l.sqlite");
        let l = Ledger::open(&path, "st").unwrap();
        l.allocate(&mac(1), &plan, &facts()).unwrap();
        l.allocate(&mac(2), &plan, &facts()).unwrap();
        // Plain SQL on the file, as any other program could write it.
        let c = rusqlite::Connection::open(&path).unwrap();
        // Same ID (any case) for another MAC.
        let dup = c.execute(
            "INSERT INTO boards (registration_id, mac, station, status, allocated_at, updated_at) VALUES ('X-348518000001', 'aa', 'st', 'allocated', 'now', 'now')",
            [],
        );
        assert!(dup.unwrap_err().to_string().contains("UNIQUE"));
        // Re-pointing an ID, deleting a row, `done` without verification: all refused.
        assert!(c
            .execute("UPDATE boards SET mac = 'zz' WHERE rowid = 1", [])
            .unwrap_err()
            .to_string()
            .contains("never change"));
        assert!(c
            .execute("DELETE FROM boards", [])
            .unwrap_err()
            .to_string()
            .contains("never deleted"));
        assert!(c
            .execute(
                "UPDATE boards SET status = 'done', done_at = 'now' WHERE rowid = 1",
                []
            )
            .unwrap_err()
            .to_string()
            .contains("CHECK"));
        // `done` needs the image's SHA-256 and a 32-hex-digit MD5 (issue #11: an empty MD5
        // used to pass).
        assert!(matches!(
            l.mark_done(&mac(1), "sha", ""),
            Err(LedgerError::Rule { .. })
        ));
        l.mark_writing(&mac(2), SHA).unwrap();
        l.mark_done(&mac(2), SHA, MD5).unwrap();
        // A later re-verification failed: out of `done`.
        l.mark_failed(&mac(2), "line dropped").unwrap();
        let row = l.find("x-348518000002").unwrap().unwrap();
        assert_eq!(
            (row.status, row.failure.as_deref()),
            (Status::Failed, Some("line dropped"))
        );
    }

    #[test]
    fn manifest_pins_and_pool() {
        let dir = tempfile::tempdir().unwrap();
        let m = Manifest::parse(
            "registration_id,mac\npin-1,34:85:18:00:00:01\npool-1,\npool-2,\n",
            Path::new("m.csv"),
            false,
        )
        .unwrap();
        let plan = IdPlan::Manifest(m);
        let l = Ledger::open(&dir.path().join("l.sqlite"), "st").unwrap();
        let ids: Vec<String> = [9, 1, 8, 1]
            .iter()
            .map(|n| {
                l.allocate(&mac(*n), &plan, &facts())
                    .unwrap()
                    .registration_id
                    .to_string()
            })
            .collect();
        assert_eq!(ids, ["pool-1", "pin-1", "pool-2", "pin-1"]);
        let e = l.allocate(&mac(7), &plan, &facts()).unwrap_err();
        assert!(matches!(&e, LedgerError::Alloc(m) if m.contains("all 2 unpinned IDs")));
        // Nothing was written for the refused board.
        assert!(l.find_by_mac(&mac(7)).unwrap().is_none());
        // The manifest changed to pin an allocated board elsewhere: refused, ID unchanged.
        let m2 = Manifest::parse(
            "registration_id,mac\nnew-9,34:85:18:00:00:09\n",
            Path::new("m.csv"),
            false,
        )
        .unwrap();
        let e = l
            .allocate(&mac(9), &IdPlan::Manifest(m2), &facts())
            .unwrap_err()
            .to_string();
        assert!(e.contains("never changed"), "{e}");
    }

    #[test]
    fn dry_run_copy_leaves_the_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sqlite");
        let plan = IdPlan::Template(Template::parse("d-{seq}", "", "st", 5, false).unwrap());
        Ledger::open(&path, "st")
            .unwrap()
            .allocate(&mac(1), &plan, &facts())
            .unwrap();
        let copy = Ledger::dry_run_copy(&LedgerTarget::Sqlite(path.clone()), "st").unwrap();
        assert_eq!(
            copy.allocate(&mac(1), &plan, &facts())
                .unwrap()
                .registration_id
                .as_str(),
            "d-5"
        );
        assert_eq!(
            copy.allocate(&mac(2), &plan, &facts())
                .unwrap()
                .registration_id
                .as_str(),
            "d-6"
        );
        let real = Ledger::open_read_only(&path).unwrap();
        assert_eq!(real.list().unwrap().len(), 1);
        assert!(!dir.path().join("nope.sqlite").exists());
        Ledger::dry_run_copy(&LedgerTarget::Sqlite(dir.path().join("nope.sqlite")), "st").unwrap();
        assert!(!dir.path().join("nope.sqlite").exists());
    }
}
