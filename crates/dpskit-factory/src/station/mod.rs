//! The factory bench: provision many boards in parallel from one station file, with a ledger.
//!
//! [`station`] reads and checks `station.toml` as a whole before any board is touched;
//! [`assign`] says which registration ID a board gets (manifest or template); [`ledger`] keeps
//! the SQLite record that makes re-runs idempotent and crash-safe; [`provision`] runs one worker
//! per port through connect → inspect → gates → allocate → derive → build → write → verify →
//! record → reset; [`watch`] is the line mode that provisions boards as their ports appear.

pub mod assign;
pub mod discover;
pub mod file;
pub mod ledger;
pub mod provision;
pub use file::*;
pub mod watch;

/// The files `dpskit init` writes, embedded so a new station needs nothing but the binary.
pub mod templates {
    pub const STATION_TOML: &str = include_str!("../../../../templates/station.toml");
    pub const MANIFEST_CSV: &str = include_str!("../../../../templates/manifest.csv");
    pub const PARTITIONS_CSV: &str = include_str!("../../../../templates/partitions.csv");
}

pub use crate::timestamp::now_rfc3339;
