//! What can go wrong with a ledger, typed so callers can tell a plan problem (exit 2), a
//! rule the database refused (a bug or a tampered file) and a database that failed (exit 3).

use thiserror::Error;

/// Where the ledger stands after a failed step. Every step is its own transaction, so a
/// failed step changed nothing: the board keeps the status its last committed step gave it.
pub const UNCHANGED: &str = "the ledger is as it was before this step (each step is its own transaction); re-run to continue from there";

#[derive(Debug, Error)]
pub enum LedgerError {
    /// The station's plan cannot give this board an ID (manifest exhausted, pin conflict…).
    #[error("{0}")]
    Alloc(String),
    /// The ledger file or server holds something this dpskit will not use (another
    /// station's file, a newer schema, not a ledger at all).
    #[error("{0}")]
    Refused(String),
    /// The database refused a write because it breaks one of the ledger's rules (the rules
    /// live in the schema: constraints and triggers).
    #[error("ledger: {during}: the database refused it: {reason}")]
    Rule { during: String, reason: String },
    /// Copying a ledger into another found boards that would break uniqueness; nothing
    /// was copied.
    #[error("ledger: {} conflict{} (same ID on another MAC, or same MAC with another ID); nothing was copied — decide which board keeps each ID, then run again:\n  {}", .0.len(), if .0.len() == 1 { "" } else { "s" }, .0.join("\n  "))]
    Conflicts(Vec<String>),
    /// The database itself failed (disk, lock, server gone). Exit code 3.
    #[error("ledger ({engine}): {during}: {source}; {state}")]
    Database {
        engine: &'static str,
        during: String,
        state: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The shared ledger server could not be reached (at start, or within the reconnect
    /// window mid-batch). Exit code 3.
    #[error("ledger: {0}")]
    Unreachable(String),
}

impl LedgerError {
    /// True when the environment failed (the database, not the input): exit code 3.
    pub fn is_environment(&self) -> bool {
        matches!(
            self,
            LedgerError::Database { .. } | LedgerError::Unreachable(_)
        )
    }
}

pub type Result<T, E = LedgerError> = std::result::Result<T, E>;
