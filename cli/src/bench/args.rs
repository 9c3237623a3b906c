//! The options of `vkhmm bench`.

use std::path::PathBuf;

use super::measure;

/// Options of `vkhmm bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Fewer sizes and runs (about 4× faster; the 64 MiB target figures are kept).
    #[arg(long)]
    pub quick: bool,
    /// Transfer sizes for the bandwidth sweep, e.g. `4K,64K,1M,16M,64M,256M`
    /// (default 4K,64K,1M,16M,64M; 64M is always added for the targets).
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    pub sizes: Vec<usize>,
    /// MiB per vector of the end-to-end saxpy (the target is stated for 64).
    #[arg(long, default_value_t = 64)]
    pub saxpy_mib: usize,
    /// Also write the JSON object to this file (the table still goes to stdout), so that
    /// one run gives both; `benches/perf_chart.py` draws the charts from it.
    #[arg(long, value_name = "PATH")]
    pub save_json: Option<PathBuf>,
    /// Skip the wgpu baseline even when it is built.
    #[arg(long)]
    pub no_wgpu: bool,
    /// Path of the `wgpu-saxpy` baseline binary (default: next to this executable, or
    /// `$VKHMM_WGPU_BASELINE`).
    #[arg(long)]
    pub wgpu: Option<PathBuf>,
    /// Run only these groups (for profiling): sweep, chunks, touch, launch, saxpy, rss,
    /// oversub, thrash, workloads, copythrough, wgpu.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

impl Args {
    /// Whether the group `group` runs (`--only`).
    pub(crate) fn wants(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|g| g == group)
    }
}

fn parse_size(v: &str) -> Result<usize, String> {
    let bytes =
        measure::parse_size(v).ok_or_else(|| format!("{v:?}: expected a size like 4K or 64M"))?;
    if bytes < measure::PAGE || bytes % measure::PAGE != 0 {
        return Err(format!("{v:?}: sizes are whole pages (multiples of 4K)"));
    }
    Ok(bytes)
}
