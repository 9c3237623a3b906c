//! The examples of vkhmm, each a module whose `run` works on ordinary Rust collections,
//! checks its result against a CPU reference and returns a label of the sizes it ran.
//!
//! Three runners share them, so each runs exactly the same code:
//!
//! - `cargo run --release --example NAME [-- --full]`: the example alone (`examples/main/`
//!   holds one three-line `main` per example, calling [`Example::main`]);
//! - `vkhmm demo [--full]`: all of them in [`ALL`]'s order, one table of what each moved;
//! - `tests/examples.rs`: each at its small size on both transfer paths.
//!
//! `docs/examples.md` says what each example shows.

use vkhmm::Runtime;

pub mod blur;
pub mod histogram;
pub mod linked;
pub mod matmul;
pub mod mmap_file;
pub mod oversubscribe;
pub mod pipeline;
pub mod reduce;
pub mod saxpy;

/// One example, as its runners need it.
#[derive(Debug, Clone, Copy)]
pub struct Example {
    /// Its name: `cargo run --example NAME`, the first column of `vkhmm demo`.
    pub name: &'static str,
    /// Runs it on a runtime, at the large sizes when the flag is set (`--full`); fails
    /// when a result differs from the CPU's, else returns a label of the sizes it ran.
    pub run: fn(&Runtime, bool) -> anyhow::Result<String>,
    /// What a successful run has checked, in words.
    pub checked: &'static str,
    /// The device budget its runtime must have, in bytes (by the `--full` flag), if the
    /// example needs a runtime of its own.
    pub budget: Option<fn(bool) -> u64>,
}

impl Example {
    /// The `main` of `cargo run --example NAME`: `--full` chooses the large sizes; runs the
    /// example on a new runtime (with its budget, if it has one) and prints what it checked
    /// and the runtime's statistics.
    pub fn main(&self) -> anyhow::Result<()> {
        let full = std::env::args().any(|a| a == "--full");
        let mut builder = Runtime::builder();
        if let Some(budget) = self.budget {
            builder = builder.budget(budget(full));
        }
        let rt = builder.build()?;
        let before = rt.stats();
        let size = (self.run)(&rt, full)?;
        println!("{}, {size}: {}", self.name, self.checked);
        println!("{}", rt.stats() - before);
        Ok(())
    }
}

/// Every example, in the order `vkhmm demo` lists them.
pub const ALL: [Example; 9] = [
    saxpy::EXAMPLE,
    reduce::EXAMPLE,
    matmul::EXAMPLE,
    histogram::EXAMPLE,
    mmap_file::EXAMPLE,
    blur::EXAMPLE,
    pipeline::EXAMPLE,
    linked::EXAMPLE,
    oversubscribe::EXAMPLE,
];
