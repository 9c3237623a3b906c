//! The `vkhmm` command-line tool.
//!
//! - `vkhmm info`: the device, its memory, the pool and transfer path, and which fault
//!   mechanisms this host allows;
//! - `vkhmm demo`: runs the bundled examples on unified memory and prints one table;
//! - `vkhmm bench`: bandwidth and latency figures side by side with their baselines;
//! - `vkhmm report trace.json`: what a trace (`VKHMM_TRACE`) says, ranked, with hints.
//!
//! Device selection and tuning come from the environment (`VKHMM_DEVICE`, `VKHMM_TRANSFER`,
//! `VKHMM_BUDGET`, `VKHMM_CHUNK`), as for any program using the crate.

mod bench;
mod demo;
mod info;
mod report;

use clap::{Parser, Subcommand};

/// vkhmm: user-space HMM on Vulkan.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show the Vulkan device, its memory, the transfer path and the fault mechanisms.
    Info,
    /// Run the compute-shader examples on unified memory and print what moved.
    Demo(demo::Args),
    /// Measure bandwidth and latency against memcpy, raw userfaultfd and hand-written ash.
    Bench(bench::Args),
    /// Summarize a trace written with VKHMM_TRACE: call sites by bytes moved and time
    /// waited on faults, buffers that bounced, hints; --svg draws the timeline.
    Report(report::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Info => info::run(),
        Command::Demo(args) => demo::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Report(args) => report::run(&args),
    }
}
