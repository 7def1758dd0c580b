//! `dpskit sim` and `dpskit demo` where there are no pseudo-terminals (Windows): virtual boards
//! need one per board, so both commands say so and exit 2. Everything else works here.

use anyhow::{bail, Result};

/// Accepts the command's arguments as they are, so `--help` still shows the command.
#[derive(clap::Args, Debug)]
pub struct UnixOnlyArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub rest: Vec<String>,
}

#[allow(dead_code)] // each of the two modules built from this file uses one
pub type SimArgs = UnixOnlyArgs;
#[allow(dead_code)]
pub type DemoArgs = UnixOnlyArgs;

pub fn run(_: UnixOnlyArgs) -> Result<()> {
    bail!("virtual boards need pseudo-terminals, which this OS does not have (Linux and macOS do); provision real boards on COM ports here, and rehearse against the emulator with `dpskit emulate` and `dpskit device run`")
}
