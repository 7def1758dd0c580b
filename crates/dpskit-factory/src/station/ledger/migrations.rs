//! The ledger's schema as one list of versioned migrations for both engines. Each version
//! carries its SQL for SQLite and for PostgreSQL side by side (the dialects differ in trigger
//! syntax and types, not in meaning); `schema_migrations` records what was applied, so a
//! ledger of any earlier version is brought up to date when a station opens it.
//!
//! The rules live here, in the database, so no bug, no second process and no hand-written SQL
//! can break them: an ID is never given to two boards (unique, case-insensitive) nor a board
//! two IDs; a board's ID and MAC never change; rows are never deleted; status follows the state
//! machine; `done` needs the image's SHA-256 and the 32-hex-digit MD5 the board reported; the
//! attempts history is append-only.

use super::db::{Abort, Tx, Val};
use super::error::LedgerError;

/// One schema version.
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

/// The newest version this dpskit knows.
pub fn latest() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "boards, attempts, identity rules",
        // Exactly the schema of the first ledgers, so opening one of those is a no-op here.
        sqlite: "
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
",
        postgres: "
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE boards (
    id               BIGSERIAL PRIMARY KEY,
    registration_id  TEXT NOT NULL,
    mac              TEXT NOT NULL CONSTRAINT boards_mac_key UNIQUE,
    station          TEXT NOT NULL,
    seq              BIGINT,
    status           TEXT NOT NULL CONSTRAINT boards_status_known CHECK (status IN ('allocated', 'writing', 'done', 'failed')),
    failure          TEXT,
    port             TEXT,
    chip             TEXT,
    revision         TEXT,
    flash_size       TEXT,
    psram_mb         BIGINT,
    firmware_project TEXT,
    firmware_version TEXT,
    partition        TEXT,
    partition_offset BIGINT,
    image_sha256     TEXT,
    verified_md5     TEXT,
    attempts         BIGINT NOT NULL DEFAULT 0,
    allocated_at     TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    done_at          TEXT,
    CONSTRAINT boards_done_is_verified CHECK (status <> 'done' OR (image_sha256 IS NOT NULL AND verified_md5 IS NOT NULL AND done_at IS NOT NULL))
);
-- DPS ignores case: one ID in any case is one ID.
CREATE UNIQUE INDEX boards_registration_id_key ON boards (lower(registration_id));
CREATE FUNCTION dpskit_identity_is_permanent() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.registration_id IS DISTINCT FROM OLD.registration_id OR NEW.mac IS DISTINCT FROM OLD.mac THEN
        RAISE EXCEPTION 'ledger: a board''s registration ID and MAC never change';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER boards_identity_is_permanent BEFORE UPDATE OF registration_id, mac ON boards
    FOR EACH ROW EXECUTE FUNCTION dpskit_identity_is_permanent();
CREATE FUNCTION dpskit_never_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger: rows are never deleted (an ID once handed out stays taken)';
END $$;
CREATE TRIGGER boards_are_never_deleted BEFORE DELETE ON boards
    FOR EACH ROW EXECUTE FUNCTION dpskit_never_deleted();
CREATE TRIGGER boards_are_never_truncated BEFORE TRUNCATE ON boards
    FOR EACH STATEMENT EXECUTE FUNCTION dpskit_never_deleted();
CREATE TABLE attempts (
    id              BIGSERIAL PRIMARY KEY,
    at              TEXT NOT NULL,
    station         TEXT NOT NULL,
    port            TEXT NOT NULL,
    mac             TEXT,
    registration_id TEXT,
    result          TEXT NOT NULL,
    reason          TEXT,
    duration_ms     BIGINT
);
CREATE INDEX attempts_by_mac ON attempts (mac);
",
    },
    Migration {
        version: 2,
        name: "state machine, verified MD5, append-only history",
        sqlite: "
UPDATE boards SET status = 'failed',
       failure = 'ledger upgrade: was done without a verified MD5; the next run verifies the board',
       verified_md5 = NULL, done_at = NULL
 WHERE status = 'done' AND NOT (
       image_sha256 IS NOT NULL AND length(image_sha256) = 64 AND image_sha256 NOT GLOB '*[^0-9a-f]*'
       AND verified_md5 IS NOT NULL AND length(verified_md5) = 32 AND verified_md5 NOT GLOB '*[^0-9a-f]*');
DROP TRIGGER IF EXISTS boards_identity_is_permanent;
DROP TRIGGER IF EXISTS boards_are_never_deleted;
CREATE TABLE boards_v2 (
    id               INTEGER PRIMARY KEY,
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
    CONSTRAINT boards_done_is_verified CHECK (status <> 'done' OR (
        image_sha256 IS NOT NULL AND length(image_sha256) = 64 AND image_sha256 NOT GLOB '*[^0-9a-f]*'
        AND verified_md5 IS NOT NULL AND length(verified_md5) = 32 AND verified_md5 NOT GLOB '*[^0-9a-f]*'
        AND done_at IS NOT NULL))
);
INSERT INTO boards_v2 (id, registration_id, mac, station, seq, status, failure, port, chip, revision, flash_size, psram_mb,
                       firmware_project, firmware_version, partition, partition_offset, image_sha256, verified_md5,
                       attempts, allocated_at, updated_at, done_at)
SELECT rowid, registration_id, mac, station, seq, status, failure, port, chip, revision, flash_size, psram_mb,
       firmware_project, firmware_version, partition, partition_offset, image_sha256, verified_md5,
       attempts, allocated_at, updated_at, done_at
  FROM boards ORDER BY rowid;
DROP TABLE boards;
ALTER TABLE boards_v2 RENAME TO boards;
CREATE TRIGGER boards_identity_is_permanent
BEFORE UPDATE OF registration_id, mac ON boards
BEGIN
    SELECT RAISE(ABORT, 'ledger: a board''s registration ID and MAC never change');
END;
CREATE TRIGGER boards_are_never_deleted
BEFORE DELETE ON boards
BEGIN
    SELECT RAISE(ABORT, 'ledger: rows are never deleted (an ID once handed out stays taken)');
END;
CREATE TRIGGER boards_start_allocated
BEFORE INSERT ON boards WHEN NEW.status <> 'allocated'
BEGIN
    SELECT RAISE(ABORT, 'ledger: a new board row starts as allocated');
END;
CREATE TRIGGER boards_status_follows_the_state_machine
BEFORE UPDATE OF status ON boards
WHEN NEW.status <> OLD.status AND NOT (
       (OLD.status = 'allocated' AND NEW.status IN ('writing', 'done', 'failed'))
    OR (OLD.status = 'writing'   AND NEW.status IN ('done', 'failed'))
    OR (OLD.status = 'failed'    AND NEW.status IN ('writing', 'done'))
    OR (OLD.status = 'done'      AND NEW.status IN ('writing', 'failed')))
BEGIN
    SELECT RAISE(ABORT, 'ledger: status change not allowed (allocated -> writing|done|failed, writing -> done|failed, failed -> writing|done, done -> writing|failed)');
END;
CREATE TRIGGER attempts_are_append_only
BEFORE UPDATE ON attempts
BEGIN
    SELECT RAISE(ABORT, 'ledger: the attempts history is append-only');
END;
CREATE TRIGGER attempts_are_never_deleted
BEFORE DELETE ON attempts
BEGIN
    SELECT RAISE(ABORT, 'ledger: the attempts history is append-only');
END;
",
        postgres: "
ALTER TABLE boards DROP CONSTRAINT boards_done_is_verified;
UPDATE boards SET status = 'failed',
       failure = 'ledger upgrade: was done without a verified MD5; the next run verifies the board',
       verified_md5 = NULL, done_at = NULL
 WHERE status = 'done' AND NOT (
       image_sha256 IS NOT NULL AND image_sha256 ~ '^[0-9a-f]{64}$'
       AND verified_md5 IS NOT NULL AND verified_md5 ~ '^[0-9a-f]{32}$');
ALTER TABLE boards ADD CONSTRAINT boards_done_is_verified CHECK (status <> 'done' OR (
        image_sha256 IS NOT NULL AND image_sha256 ~ '^[0-9a-f]{64}$'
        AND verified_md5 IS NOT NULL AND verified_md5 ~ '^[0-9a-f]{32}$'
        AND done_at IS NOT NULL));
CREATE FUNCTION dpskit_status_machine() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status <> 'allocated' THEN
            RAISE EXCEPTION 'ledger: a new board row starts as allocated';
        END IF;
    ELSIF NEW.status <> OLD.status AND NOT (
           (OLD.status = 'allocated' AND NEW.status IN ('writing', 'done', 'failed'))
        OR (OLD.status = 'writing'   AND NEW.status IN ('done', 'failed'))
        OR (OLD.status = 'failed'    AND NEW.status IN ('writing', 'done'))
        OR (OLD.status = 'done'      AND NEW.status IN ('writing', 'failed'))) THEN
        RAISE EXCEPTION 'ledger: status change not allowed (allocated -> writing|done|failed, writing -> done|failed, failed -> writing|done, done -> writing|failed)';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER boards_status_follows_the_state_machine BEFORE INSERT OR UPDATE OF status ON boards
    FOR EACH ROW EXECUTE FUNCTION dpskit_status_machine();
CREATE FUNCTION dpskit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger: the attempts history is append-only';
END $$;
CREATE TRIGGER attempts_are_append_only BEFORE UPDATE OR DELETE ON attempts
    FOR EACH ROW EXECUTE FUNCTION dpskit_append_only();
CREATE TRIGGER attempts_are_never_truncated BEFORE TRUNCATE ON attempts
    FOR EACH STATEMENT EXECUTE FUNCTION dpskit_append_only();
",
    },
];

/// The version a ledger is at (0: empty, or a first-generation SQLite ledger).
/// Reads only, so it works on a ledger opened read-only.
pub(crate) fn current(tx: &mut dyn Tx) -> Result<i64, Abort> {
    let exists = if tx.engine() == "postgres" {
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'schema_migrations' AND table_schema = current_schema()"
    } else {
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    };
    if tx.one(exists, &[])?.map_or(0, |r| r.int(0)) == 0 {
        return Ok(0);
    }
    Ok(tx
        .one("SELECT MAX(version) FROM schema_migrations", &[])?
        .and_then(|r| r.opt_int(0))
        .unwrap_or(0))
}

fn create_table(tx: &mut dyn Tx) -> Result<(), Abort> {
    let int = if tx.engine() == "postgres" {
        "BIGINT"
    } else {
        "INTEGER"
    };
    tx.batch(&format!(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version {int} PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    ))?;
    Ok(())
}

/// Applies every migration newer than the ledger, in one transaction (the caller's).
/// Refuses a ledger newer than this dpskit.
pub(crate) fn apply(tx: &mut dyn Tx, now: &str) -> Result<i64, Abort> {
    create_table(tx)?;
    let at = current(tx)?;
    if at > latest() {
        return Err(LedgerError::Refused(format!(
            "ledger: its schema is version {at}, newer than this dpskit knows ({}); use the dpskit that wrote it or a newer one",
            latest()
        ))
        .into());
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > at) {
        let sql = if tx.engine() == "postgres" {
            m.postgres
        } else {
            m.sqlite
        };
        tx.batch(sql)?;
        tx.exec(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            &[Val::Int(m.version), m.name.into(), now.into()],
        )?;
    }
    Ok(latest())
}
