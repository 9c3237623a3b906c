//! A working set four times the device budget, processed in slices: the runtime evicts the
//! least recently used data to make room, and the result is still exact.
//!
//! The example needs a runtime with a small budget (`Runtime::builder().budget(..)`, or
//! `VKHMM_BUDGET`): [`EXAMPLE`] names [`budget`], and `cargo run --example oversubscribe` and
//! `vkhmm demo` make one. Two vectors of twice the budget each go through `y = a·x + y` one
//! slice at a time (an eighth of the budget per vector per launch), twice over, so the second
//! pass finds its slices evicted and brings them back.
//!
//! The vectors are runtime-owned (`rt.alloc`, page-aligned) so that the slices are whole
//! pages: slices of an ordinary `Vec` share a page at each boundary, which today makes their
//! device copies merge into one that cannot be evicted piecewise.
//!
//! Checked: every element of `y` exactly (small integers), and that evictions happened.
//!
//! Run: `cargo run --release --example oversubscribe [-- --full]` (`--full`: 64 MiB budget).

use bytemuck::{Pod, Zeroable};
use vkhmm::{shaders, Push, Runtime};

use crate::Example;

/// The push constants of `shaders/saxpy.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    a: f32,
    n: u32,
}

/// The device budget this example is meant for: 16 MiB (64 MiB with `full`).
pub fn budget(full: bool) -> u64 {
    if full {
        64 << 20
    } else {
        16 << 20
    }
}

/// Runs two saxpy passes over `x` and `y` of 2 × budget bytes each, in slices.
///
/// `rt` must have a budget of at most [`budget`]`(full)` (the working set is sized from it).
pub fn run(rt: &Runtime, full: bool) -> anyhow::Result<String> {
    let budget = rt.stats().device_budget;
    let wanted = self::budget(full);
    anyhow::ensure!(
        budget <= wanted,
        "oversubscribe: the runtime's budget is {budget} B; build one with \
         Runtime::builder().budget({wanted}) for this example"
    );
    let n = (2 * budget as usize) / 4; // f32 elements per vector: twice the budget in bytes
    let slice = n / 16; // per launch: an eighth of the budget for each of x and y
    let mut x = rt.alloc::<f32>(n)?;
    let mut y = rt.alloc::<f32>(n)?;
    for (i, (x, y)) in x.iter_mut().zip(y.iter_mut()).enumerate() {
        *x = (i % 1000) as f32;
        *y = (i % 7) as f32;
    }

    let saxpy = rt.kernel_wgsl(shaders::SAXPY_WGSL, "main")?;
    let before = rt.stats();
    for pass in 0..2 {
        for (xs, ys) in x.chunks(slice).zip(y.chunks_mut(slice)) {
            let p = Params {
                a: 2.0,
                n: xs.len() as u32,
            };
            rt.launch(&saxpy, [1024, 1, 1], (xs, ys, Push(&p)))?;
        }
        let s = rt.stats() - before;
        println!(
            "oversubscribe: after pass {}: {} evictions so far, {:.1} of {:.1} MiB of device memory in use",
            pass + 1,
            s.evictions,
            s.device_bytes_in_use as f64 / (1 << 20) as f64,
            budget as f64 / (1 << 20) as f64,
        );
    }
    let moved = rt.stats() - before;

    for (i, &got) in y.iter().enumerate() {
        let want = 4.0 * (i % 1000) as f32 + (i % 7) as f32;
        anyhow::ensure!(
            got == want,
            "oversubscribe: y[{i}] = {got}, expected {want}"
        );
    }
    anyhow::ensure!(
        moved.evictions > 0,
        "oversubscribe: a working set of 4x the budget ran with no eviction"
    );
    Ok(format!(
        "2 x {} MiB f32, budget {} MiB",
        (n * 4) >> 20,
        budget >> 20
    ))
}

/// The example as `cargo run --example oversubscribe` and `vkhmm demo` run it.
pub const EXAMPLE: Example = Example {
    name: "oversubscribe",
    run,
    checked: "every element matches the CPU",
    budget: Some(budget),
};
