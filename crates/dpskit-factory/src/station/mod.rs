//! The factory bench: provision many boards in parallel from one station file, with a ledger.
//!
//! [`file`] reads and checks `station.toml` as a whole before any board is touched;
//! [`assign`] says which registration ID a board gets (manifest or template); [`ledger`] keeps
//! the record (SQLite per station, or PostgreSQL shared by a factory) that makes re-runs
//! idempotent and crash-safe; [`decide`] holds the gates and what to do with a board;
//! [`provision`] runs one worker per port through connect → inspect → gates → allocate →
//! derive → build → write → verify → record → reset, shown by [`progress`] and summed up in
//! [`report`]; [`watch`] is the line mode that provisions boards as their ports appear.

pub mod assign;
pub mod decide;
pub mod discover;
pub mod file;
pub mod ledger;
pub mod progress;
pub mod provision;
pub mod report;
pub use file::*;
pub mod watch;

/// The files `dpskit init` writes, embedded so a new station needs nothing but the binary.
pub mod templates {
    pub const STATION_TOML: &str = include_str!("../../../../templates/station.toml");
    pub const MANIFEST_CSV: &str = include_str!("../../../../templates/manifest.csv");
    pub const PARTITIONS_CSV: &str = include_str!("../../../../templates/partitions.csv");

    /// The station file for a station sharing the PostgreSQL ledger at `url`: `[ledger] url`
    /// set, and a template without `{station}` (the server keeps IDs unique factory-wide).
    pub fn shared_ledger(url: &str) -> String {
        let quoted = toml::Value::String(url.into()).to_string();
        STATION_TOML
            .replace(
                "ledger = \"ledger.sqlite\"\n",
                "# ledger = \"ledger.sqlite\"   (this station uses the shared [ledger] below)\n",
            )
            .replace("# [ledger]\n", "[ledger]\n")
            .replace(
                "# url = \"postgresql://dpskit@db.factory.lan/dpskit?sslmode=require\"",
                &format!("url = {quoted}"),
            )
            .replace(
                "template = \"{prefix}-{station}-{seq:05}\"",
                "template = \"{prefix}-{seq:05}\"",
            )
    }
}

pub use crate::timestamp::now_rfc3339;
