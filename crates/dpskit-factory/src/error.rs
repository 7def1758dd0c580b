//! How failures leave the process: bad input exits 2, a check that ran and failed exits 1.

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

/// The exit code for an error returned by a command.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<CheckFailed>().is_some() {
        1
    } else {
        2
    }
}
