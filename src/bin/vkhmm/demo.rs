//! `vkhmm demo`: the examples on unified memory, one summary table.

/// Options of `vkhmm demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run the large sizes (64 Mi floats, 2048² matrices, ...).
    #[arg(long)]
    pub full: bool,
}

/// Runs every example and prints the table.
pub fn run(_args: &Args) -> anyhow::Result<()> {
    anyhow::bail!("the demo is not written yet")
}
