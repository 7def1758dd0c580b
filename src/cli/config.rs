//! `dpskit config build|show` (placeholder until the blob module lands).

#[derive(clap::Subcommand, Debug)]
pub enum ConfigCommand {}

pub fn run(c: ConfigCommand) -> anyhow::Result<()> {
    match c {}
}
