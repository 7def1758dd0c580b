//! `dpskit demo`: factory bench to IoT Hub on one PC, everything embedded.

use anyhow::Result;
use dpskit_factory::error::CheckFailed;
use dpskit_rehearsal::demo::{self, DemoOptions};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// How many virtual boards to provision and connect.
    #[arg(long, default_value_t = 3)]
    pub boards: usize,
    /// Keep the station, ledger, board images and emulator state here (default: a temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: DemoArgs) -> Result<()> {
    let opts = DemoOptions {
        boards: a.boards,
        dir: a.dir.clone(),
        progress: !a.json,
    };
    let report = demo::run(&opts, |line| eprintln!("{line}"))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", demo::render(&report));
    }
    let failed = report.boards.iter().filter(|j| !j.ok()).count();
    if failed > 0 {
        return Err(CheckFailed(format!(
            "{failed} of {} boards did not make it to IoT Hub",
            report.boards.len()
        ))
        .into());
    }
    Ok(())
}
