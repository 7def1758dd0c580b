//! `dpskit derive`, `dpskit verify`, `dpskit sas` (being written).
#[derive(clap::Args, Debug)]
pub struct DeriveArgs {}
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {}
#[derive(clap::Subcommand, Debug)]
pub enum SasCommand {}
pub fn derive(_a: DeriveArgs) -> anyhow::Result<()> { anyhow::bail!("todo") }
pub fn verify(_a: VerifyArgs) -> anyhow::Result<()> { anyhow::bail!("todo") }
pub fn sas(c: SasCommand) -> anyhow::Result<()> { match c {} }
