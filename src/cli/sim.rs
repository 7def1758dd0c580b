//! `dpskit sim` (placeholder until the virtual boards land).

#[derive(clap::Args, Debug)]
pub struct SimArgs {}

pub fn run(_a: SimArgs) -> anyhow::Result<()> {
    anyhow::bail!("dpskit sim: virtual boards are not built yet")
}
