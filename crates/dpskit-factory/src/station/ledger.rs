//! The station ledger: one SQLite file per station that says which board got which
//! registration ID and how far it got.
//!
//! The rules live in the schema, not only in code, so no bug and no second process can break
//! them: `UNIQUE(registration_id COLLATE NOCASE)` and `UNIQUE(mac)` (an ID is never given to two
//! boards, a board never gets two IDs), triggers that forbid changing a board's ID or MAC and
//! deleting rows (an ID once handed out stays taken), and a CHECK that a row can only be `done`
//! with the SHA-256 of the written image and the MD5 the board reported for it.
//!
//! Status: `allocated` (ID reserved, nothing written) → `writing` (the flash may hold a partial
//! image) → `done` (MD5-verified) or `failed`. Every step is its own committed transaction
//! (WAL, `synchronous=FULL`), so a kill -9 or a pulled cable leaves a ledger the next run
//! finishes from: same MAC, same ID. `attempts` keeps the history, refusals included.
//! No secret is ever stored: no key, no image bytes.

use super::assign::{IdPlan, Mac};
use super::now_rfc3339;
use anyhow::{anyhow, bail, Context, Result};
use dpskit_core::RegistrationId;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior};
use serde::Serialize;
use std::path::Path;
use std::time::Duration;

/// Bumped when the schema changes meaning.
pub const SCHEMA_VERSION: &str = "1";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS boards (
    registration_id  TEXT NOT NULL UNIQUE COLLATE NOCASE,
    mac              TEXT NOT NULL UNIQUE,
    station          TEXT NOT NULL,
    seq              INTEGER,
    status           TEXT NOT NULL CHECK (status IN ('allocated', 'writing', 'done', 'failed')),
    failure          TEXT,
    port             TEXT,
    chip             TEXT,
    revision         TEXT,
    flash_size       TEXT,
    psram_mb         INTEGER,
    firmware_project TEXT,
    firmware_version TEXT,
    partition        TEXT,
    partition_offset INTEGER,
    image_sha256     TEXT,
    verified_md5     TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    allocated_at     TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    done_at          TEXT,
    CHECK (status <> 'done' OR (image_sha256 IS NOT NULL AND verified_md5 IS NOT NULL AND done_at IS NOT NULL))
);
CREATE TRIGGER IF NOT EXISTS boards_identity_is_permanent
BEFORE UPDATE OF registration_id, mac ON boards
BEGIN
    SELECT RAISE(ABORT, 'ledger: a board''s registration ID and MAC never change');
END;
CREATE TRIGGER IF NOT EXISTS boards_are_never_deleted
BEFORE DELETE ON boards
BEGIN
    SELECT RAISE(ABORT, 'ledger: rows are never deleted (an ID once handed out stays taken)');
END;
CREATE TABLE IF NOT EXISTS attempts (
    id              INTEGER PRIMARY KEY,
    at              TEXT NOT NULL,
    station         TEXT NOT NULL,
    port            TEXT NOT NULL,
    mac             TEXT,
    registration_id TEXT,
    result          TEXT NOT NULL,
    reason          TEXT,
    duration_ms     INTEGER
);
CREATE INDEX IF NOT EXISTS attempts_by_mac ON attempts (mac);
";

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
    fn from_row(r: &Row) -> rusqlite::Result<BoardRow> {
        let status: String = r.get(4)?;
        Ok(BoardRow {
            registration_id: r.get(0)?,
            mac: r.get(1)?,
            station: r.get(2)?,
            seq: r.get(3)?,
            status: Status::parse(&status).unwrap_or(Status::Failed),
            failure: r.get(5)?,
            port: r.get(6)?,
            chip: r.get(7)?,
            revision: r.get(8)?,
            flash_size: r.get(9)?,
            psram_mb: r.get(10)?,
            firmware_project: r.get(11)?,
            firmware_version: r.get(12)?,
            partition: r.get(13)?,
            partition_offset: r.get(14)?,
            image_sha256: r.get(15)?,
            verified_md5: r.get(16)?,
            attempts: r.get(17)?,
            allocated_at: r.get(18)?,
            updated_at: r.get(19)?,
            done_at: r.get(20)?,
        })
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
#[derive(Debug, Clone, Serialize)]
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

/// Why a board could not be given an ID (a plan problem, not a ledger fault).
#[derive(Debug)]
pub struct AllocError(pub String);

impl std::fmt::Display for AllocError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AllocError {}

/// An open ledger.
pub struct Ledger {
    conn: Connection,
    station: String,
}

fn tune(conn: &Connection) -> Result<()> {
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

impl Ledger {
    /// Opens (creating if needed) the ledger of `station` at `path`.
    pub fn open(path: &Path, station: &str) -> Result<Ledger> {
        let conn = Connection::open(path).with_context(|| {
            format!("[station] ledger: cannot open {} as SQLite; check the path and that its folder exists and is writable", path.display())
        })?;
        tune(&conn)?;
        // WAL: readers (ledger list, a second station tool) never block writers. FULL: a
        // committed allocation survives power loss, so a {seq} is never handed out twice.
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            bail!("[station] ledger: {} cannot use write-ahead logging (got {mode}); put the ledger on a local disk", path.display());
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        let mut ledger = Ledger {
            conn,
            station: station.into(),
        };
        ledger.init(path)?;
        Ok(ledger)
    }

    /// An in-memory copy of the ledger at `path` (empty if there is none): `--dry-run`
    /// allocates against it exactly as a real run would, and nothing reaches the disk.
    pub fn dry_run_copy(path: &Path, station: &str) -> Result<Ledger> {
        let conn = Connection::open_in_memory()?;
        tune(&conn)?;
        let mut ledger = Ledger {
            conn,
            station: station.into(),
        };
        ledger.init(Path::new(":memory:"))?;
        if path.exists() {
            let uri = format!("file:{}?mode=ro", path.display());
            ledger
                .conn
                .execute("ATTACH DATABASE ?1 AS src", [&uri])
                .with_context(|| format!("cannot read the ledger {}", path.display()))?;
            ledger.conn.execute_batch(&format!(
                "INSERT INTO main.boards ({BOARD_COLUMNS}) SELECT {BOARD_COLUMNS} FROM src.boards;
                 INSERT OR REPLACE INTO main.meta SELECT key, value FROM src.meta;
                 DETACH DATABASE src;"
            ))?;
        }
        Ok(ledger)
    }

    /// Opens an existing ledger for reading only (the audit commands).
    pub fn open_read_only(path: &Path) -> Result<Ledger> {
        if !path.exists() {
            bail!("ledger: {} does not exist; it is created by the first `dpskit provision` (or give --ledger PATH)", path.display());
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        )
        .with_context(|| format!("ledger: cannot open {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(30))?;
        let version: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| anyhow!("ledger: {} is not a dpskit ledger ({e})", path.display()))?;
        let station: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'station'", [], |r| {
                r.get(0)
            })
            .optional()?;
        if version.is_none() {
            bail!(
                "ledger: {} is not a dpskit ledger (no schema version)",
                path.display()
            );
        }
        Ok(Ledger {
            conn,
            station: station.unwrap_or_default(),
        })
    }

    fn init(&mut self, path: &Path) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(SCHEMA)?;
        let version: Option<String> = tx
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })
            .optional()?;
        match version.as_deref() {
            None => {
                tx.execute("INSERT INTO meta (key, value) VALUES ('schema', ?1)", [SCHEMA_VERSION])?;
                tx.execute("INSERT INTO meta (key, value) VALUES ('station', ?1)", [&self.station])?;
                tx.execute("INSERT INTO meta (key, value) VALUES ('created_at', ?1)", [now_rfc3339()])?;
            }
            Some(SCHEMA_VERSION) => {
                let owner: Option<String> = tx.query_row("SELECT value FROM meta WHERE key = 'station'", [], |r| r.get(0)).optional()?;
                if let Some(owner) = owner.filter(|o| *o != self.station) {
                    bail!(
                        "[station] ledger: {} belongs to station {owner:?}, not {:?}; each station keeps its own ledger, so set [station] ledger to another file (or fix [station] name)",
                        path.display(),
                        self.station
                    );
                }
            }
            Some(v) => bail!("ledger: {} has schema version {v}; this dpskit reads {SCHEMA_VERSION}; use a matching dpskit", path.display()),
        }
        tx.commit()?;
        Ok(())
    }

    pub fn station(&self) -> &str {
        &self.station
    }

    /// The board with this MAC, if it was ever given an ID.
    pub fn find_by_mac(&self, mac: &Mac) -> Result<Option<BoardRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {BOARD_COLUMNS} FROM boards WHERE mac = ?1"),
                [mac.to_string()],
                BoardRow::from_row,
            )
            .optional()?)
    }

    /// A board by registration ID (any case) or MAC.
    pub fn find(&self, id_or_mac: &str) -> Result<Option<BoardRow>> {
        if let Ok(mac) = Mac::parse(id_or_mac) {
            if let Some(row) = self.find_by_mac(&mac)? {
                return Ok(Some(row));
            }
        }
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {BOARD_COLUMNS} FROM boards WHERE registration_id = ?1"),
                [id_or_mac],
                BoardRow::from_row,
            )
            .optional()?)
    }

    /// Every board, in the order IDs were handed out.
    pub fn list(&self) -> Result<Vec<BoardRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {BOARD_COLUMNS} FROM boards ORDER BY rowid"
        ))?;
        let rows = stmt
            .query_map([], BoardRow::from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// The attempts made on a board (by MAC), oldest first.
    pub fn attempts_for(&self, mac: &str) -> Result<Vec<Attempt>> {
        let mut stmt = self.conn.prepare(
            "SELECT at, station, port, mac, registration_id, result, reason, duration_ms FROM attempts WHERE mac = ?1 ORDER BY id",
        )?;
        let rows = stmt
            .query_map([mac], |r| {
                Ok(Attempt {
                    at: r.get(0)?,
                    station: r.get(1)?,
                    port: r.get(2)?,
                    mac: r.get(3)?,
                    registration_id: r.get(4)?,
                    result: r.get(5)?,
                    reason: r.get(6)?,
                    duration_ms: r.get(7)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Gives the board with `mac` its registration ID, in one IMMEDIATE transaction: the
    /// board's existing ID if it has one, else the next one the plan allows. The board's
    /// facts are refreshed and its attempt counter bumped either way.
    pub fn allocate(&mut self, mac: &Mac, plan: &IdPlan, facts: &BoardFacts) -> Result<Allocation> {
        let now = now_rfc3339();
        let mac_text = mac.to_string();
        let station = self.station.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let existing = tx
            .query_row(
                &format!("SELECT {BOARD_COLUMNS} FROM boards WHERE mac = ?1"),
                [&mac_text],
                BoardRow::from_row,
            )
            .optional()?;
        let taken = |id: &str| -> Result<Option<String>> {
            Ok(tx
                .query_row(
                    "SELECT mac FROM boards WHERE registration_id = ?1",
                    [id],
                    |r| r.get::<_, String>(0),
                )
                .optional()?)
        };
        let allocation = if let Some(row) = existing {
            if let IdPlan::Manifest(m) = plan {
                if let Some(pin) = m.pinned(mac) {
                    if !pin.id.as_str().eq_ignore_ascii_case(&row.registration_id) {
                        return Err(AllocError(format!(
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
                anyhow!(
                    "ledger: stored ID {:?} is invalid ({e})",
                    row.registration_id
                )
            })?;
            Allocation {
                registration_id: id,
                new: false,
                status: row.status,
                image_sha256: row.image_sha256,
                verified_md5: row.verified_md5,
            }
        } else {
            let (id, seq) = match plan {
                IdPlan::Manifest(m) => {
                    if let Some(pin) = m.pinned(mac) {
                        if let Some(other) = taken(pin.id.as_str())? {
                            return Err(AllocError(format!(
                                "{} line {} pins {mac} to {}, but the ledger gave that ID to {other}; an ID goes to one board only, so fix the manifest",
                                m.path.display(),
                                pin.line,
                                pin.id
                            ))
                            .into());
                        }
                        (pin.id.clone(), None)
                    } else {
                        let mut free = None;
                        for row in m.pool() {
                            if taken(row.id.as_str())?.is_none() {
                                free = Some(row.id.clone());
                                break;
                            }
                        }
                        let Some(id) = free else {
                            let pool = m.pool().count();
                            let why = if pool == 0 {
                                format!("{mac} is not in {} and the manifest has no unpinned IDs; add a row for it", m.path.display())
                            } else {
                                format!("all {pool} unpinned IDs in {} are taken; add rows to the manifest", m.path.display())
                            };
                            return Err(AllocError(why).into());
                        };
                        (id, None)
                    }
                }
                IdPlan::Template(t) => {
                    let (text, seq) = if t.uses_seq() {
                        let stored: Option<String> = tx
                            .query_row("SELECT value FROM meta WHERE key = 'next_seq'", [], |r| {
                                r.get(0)
                            })
                            .optional()?;
                        let mut seq = stored
                            .and_then(|s| s.parse::<u64>().ok())
                            .unwrap_or(t.first_seq)
                            .max(t.first_seq);
                        // Skip numbers whose ID is taken (e.g. first_seq was lowered).
                        let text = loop {
                            let candidate = t.expand(mac, Some(seq));
                            if taken(&candidate)?.is_none() {
                                break candidate;
                            }
                            seq += 1;
                        };
                        tx.execute(
                            "INSERT OR REPLACE INTO meta (key, value) VALUES ('next_seq', ?1)",
                            [(seq + 1).to_string()],
                        )?;
                        (text, Some(seq))
                    } else {
                        let text = t.expand(mac, None);
                        if let Some(other) = taken(&text)? {
                            return Err(AllocError(format!("the template gives {text}, which the ledger gave to {other}; change [ids] template")).into());
                        }
                        (text, None)
                    };
                    let id = RegistrationId::parse(&text, t.allow_uppercase)
                        .map_err(|e| AllocError(format!("[ids] template gives {text:?}: {e}")))?;
                    (id, seq)
                }
            };
            tx.execute(
                "INSERT INTO boards (registration_id, mac, station, seq, status, allocated_at, updated_at) VALUES (?1, ?2, ?3, ?4, 'allocated', ?5, ?5)",
                params![id.as_str(), mac_text, station, seq.map(|s| s as i64), now],
            )?;
            Allocation {
                registration_id: id,
                new: true,
                status: Status::Allocated,
                image_sha256: None,
                verified_md5: None,
            }
        };
        tx.execute(
            "UPDATE boards SET port = ?2, chip = ?3, revision = ?4, flash_size = ?5, psram_mb = ?6, firmware_project = ?7,
                 firmware_version = ?8, partition = ?9, partition_offset = ?10, attempts = attempts + 1, updated_at = ?11
             WHERE mac = ?1",
            params![
                mac_text,
                facts.port,
                facts.chip,
                facts.revision,
                facts.flash_size,
                facts.psram_mb,
                facts.firmware_project,
                facts.firmware_version,
                facts.partition,
                facts.partition_offset,
                now
            ],
        )?;
        tx.commit()?;
        Ok(allocation)
    }

    fn update_status(&self, mac: &Mac, sql: &str, extra: &[&dyn rusqlite::ToSql]) -> Result<()> {
        let now = now_rfc3339();
        let mac_text = mac.to_string();
        let mut p: Vec<&dyn rusqlite::ToSql> = vec![&mac_text, &now];
        p.extend_from_slice(extra);
        let n = self.conn.execute(sql, p.as_slice())?;
        if n != 1 {
            bail!("ledger: no board with MAC {mac}");
        }
        Ok(())
    }

    /// About to write `image_sha256` to the board: from here on its flash may be partial.
    pub fn mark_writing(&self, mac: &Mac, image_sha256: &str) -> Result<()> {
        self.update_status(
            mac,
            "UPDATE boards SET status = 'writing', failure = NULL, image_sha256 = ?3, verified_md5 = NULL, done_at = NULL, updated_at = ?2 WHERE mac = ?1",
            &[&image_sha256],
        )
    }

    /// The board reported `md5` over the partition holding the image `image_sha256`, and it
    /// matched: the only way to `done`.
    pub fn mark_done(&self, mac: &Mac, image_sha256: &str, md5: &str) -> Result<()> {
        self.update_status(
            mac,
            "UPDATE boards SET status = 'done', failure = NULL, image_sha256 = ?3, verified_md5 = ?4, done_at = ?2, updated_at = ?2 WHERE mac = ?1",
            &[&image_sha256, &md5],
        )
    }

    /// The attempt failed after the ID was allocated; the ID stays with the board.
    pub fn mark_failed(&self, mac: &Mac, reason: &str) -> Result<()> {
        self.update_status(
            mac,
            "UPDATE boards SET status = 'failed', failure = ?3, verified_md5 = NULL, done_at = NULL, updated_at = ?2 WHERE mac = ?1",
            &[&reason],
        )
    }

    /// Appends to the audit trail.
    pub fn record_attempt(&self, a: &Attempt) -> Result<()> {
        self.conn.execute(
            "INSERT INTO attempts (at, station, port, mac, registration_id, result, reason, duration_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![a.at, a.station, a.port, a.mac, a.registration_id, a.result, a.reason, a.duration_ms],
        )?;
        Ok(())
    }

    /// Direct access for tests and audits that need SQL.
    pub fn connection(&self) -> &Connection {
        &self.conn
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

    fn mac(n: u8) -> Mac {
        Mac([0x34, 0x85, 0x18, 0, 0, n])
    }

    #[test]
    fn seq_ids_are_sticky_and_unique() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sqlite");
        let plan =
            IdPlan::Template(Template::parse("{prefix}-{seq:03}", "s", "st", 1, false).unwrap());
        let mut l = Ledger::open(&path, "st").unwrap();
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
        let mut l = Ledger::open(&path, "st").unwrap();
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
        let mut l = Ledger::open(&dir.path().join("l.sqlite"), "st").unwrap();
        l.allocate(&mac(1), &plan, &facts()).unwrap();
        l.allocate(&mac(2), &plan, &facts()).unwrap();
        let c = l.connection();
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
        assert!(l.mark_done(&mac(1), "sha", "").is_ok());
        l.mark_writing(&mac(2), "sha").unwrap();
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
        let mut l = Ledger::open(&dir.path().join("l.sqlite"), "st").unwrap();
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
        assert!(e
            .downcast_ref::<AllocError>()
            .unwrap()
            .0
            .contains("all 2 unpinned IDs"));
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
        let mut copy = Ledger::dry_run_copy(&path, "st").unwrap();
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
        Ledger::dry_run_copy(&dir.path().join("nope.sqlite"), "st").unwrap();
        assert!(!dir.path().join("nope.sqlite").exists());
    }
}
