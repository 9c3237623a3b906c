//! The `vkhmm` command-line tool: `info`, `demo`, `bench`.
fn main() -> anyhow::Result<()> {
    Ok(())
}
