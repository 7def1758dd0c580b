//! How failures leave the process: a check that ran and failed exits 1, bad input exits 2,
//! the environment (a port that vanished mid-write, a database, a server) failed exits 3.

use std::fmt;

/// A check ran to the end and found problems (a key mismatch, a failed board). Exit code 1.
/// The details were already printed; this carries the one-line summary.
#[derive(Debug)]
pub struct CheckFailed(pub String);

impl fmt::Display for CheckFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CheckFailed {}

/// The environment failed, not the input: the serial line dropped, a database broke, a server
/// cannot be reached. Exit code 3. The message says what state things were left in.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EnvironmentFailed(pub String);

/// The exit code for an error returned by a command.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<CheckFailed>().is_some() {
        return 1;
    }
    let environment = err.chain().any(|e| {
        e.is::<EnvironmentFailed>()
            || e.downcast_ref::<crate::board::BoardError>()
                .is_some_and(|b| b.environment_failed())
            || e.downcast_ref::<crate::station::ledger::LedgerError>()
                .is_some_and(|l| l.is_environment())
    });
    if environment {
        3
    } else {
        2
    }
}
