//! `vkhmm bench`: bandwidthTest-style figures, each beside its baseline.

/// Options of `vkhmm bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Runs the benchmarks and prints the table.
pub fn run(_args: &Args) -> anyhow::Result<()> {
    anyhow::bail!("the benches are not written yet")
}
