//! `vkhmm bench`: bandwidthTest-style figures, each beside its baseline, in one run.
//!
//! The measurement routines are the criterion benches' own (`benches/measure/`, included
//! below by path), so the CLI and `cargo bench` time the same code. The wgpu baseline is a
//! separate binary of the workspace member `baselines/wgpu-saxpy` (vkhmm never depends on
//! wgpu); it is run as a child process when built, and reported as "not built" otherwise.
//!
//! Progress goes to stderr; the table (or with `--json` one JSON object) to stdout.
//!
//! [`run`] takes the [`Args`] (`args`), measures the groups of [`scenarios`] that `--only`
//! leaves, runs the [`wgpu`] child, and prints the [`report`].

#[path = "../../../benches/measure/mod.rs"]
mod measure;

mod args;
mod report;
mod scenarios;
mod wgpu;

use std::time::Instant;

use anyhow::Context;
use measure::{raw_ash, size_name, Budget, KIB, MIB};
use vkhmm::TransferPath;

pub use args::Args;
use report::Report;

/// The size every target is stated at (docs/performance.md).
pub(crate) const TARGET_SIZE: usize = 64 * MIB;

/// Progress on stderr: each step with the time since the start.
pub(crate) struct Progress {
    start: Instant,
    quiet: bool,
}

impl Progress {
    /// One line on stderr, stamped with the time since the start.
    pub(crate) fn say(&self, what: &str) {
        if !self.quiet {
            eprintln!("[{:6.1}s] {what}", self.start.elapsed().as_secs_f64());
        }
    }
}

/// Runs the benchmarks and prints the table.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let budget = if args.quick {
        Budget::QUICK
    } else {
        Budget::DEFAULT
    };
    let mut sizes = if !args.sizes.is_empty() {
        args.sizes.clone()
    } else if args.quick {
        vec![64 * KIB, 4 * MIB, 64 * MIB]
    } else {
        vec![4 * KIB, 64 * KIB, MIB, 16 * MIB, 64 * MIB]
    };
    if !sizes.contains(&TARGET_SIZE) {
        sizes.push(TARGET_SIZE);
    }
    sizes.sort_unstable();
    sizes.dedup();
    let p = Progress {
        start: Instant::now(),
        quiet: false,
    };
    let mut r = Report::default();
    let direct = measure::runtime(TransferPath::Direct).context("runtime on the Direct path")?;
    let staged = measure::runtime(TransferPath::Staged).context("runtime on the Staged path")?;
    r.device = direct.device_info().name.clone();
    p.say(&format!("device {}; sizes {}", r.device, names(&sizes)));
    let vk = raw_ash::Vk::new(Some(&r.device)).context("raw ash baseline device")?;

    if args.wants("sweep") {
        scenarios::sweep(&mut r, &p, budget, &sizes, &direct, &staged, &vk)?;
    }
    if args.wants("chunks") {
        scenarios::chunks(&mut r, &p, budget, args.quick)?;
    }
    if args.wants("touch") {
        scenarios::touch(&mut r, &p, args.quick)?;
    }
    if args.wants("launch") {
        scenarios::launch(&mut r, &p, args.quick, &direct, &staged, &vk)?;
    }
    if args.wants("saxpy") {
        let saxpy_n = args.saxpy_mib * MIB / 4;
        scenarios::saxpy(&mut r, &p, args.quick, saxpy_n, &direct, &staged, &vk)?;
    }
    if args.wants("rss") {
        scenarios::resident(&mut r, &p, &direct, &staged)?;
    }
    if args.wants("oversub") {
        scenarios::oversub(&mut r, &p, args.quick)?;
    }
    if args.wants("thrash") {
        scenarios::thrash(&mut r, &p, args.quick)?;
    }
    if args.wants("workloads") {
        scenarios::workloads(&mut r, &p, args.quick, &direct, &staged, &vk)?;
    }
    if args.wants("copythrough") {
        scenarios::copythrough(&mut r, &p, args.quick, &direct, &staged, &vk)?;
    }
    drop(vk);
    drop((direct, staged));
    if !args.no_wgpu && args.wants("wgpu") {
        wgpu::run(&mut r, &p, args, &sizes)?;
    }
    report::targets_table(&mut r, args.saxpy_mib);
    let elapsed = p.start.elapsed().as_secs_f64();
    p.say("done");
    if let Some(path) = &args.save_json {
        std::fs::write(path, report::json(&r, args.quick, elapsed) + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{}", report::json(&r, args.quick, elapsed));
    } else {
        print!("{}", report::table(&r, elapsed));
    }
    Ok(())
}

/// `64 KiB, 4 MiB, 64 MiB`.
fn names(sizes: &[usize]) -> String {
    sizes
        .iter()
        .map(|&s| size_name(s))
        .collect::<Vec<_>>()
        .join(", ")
}
