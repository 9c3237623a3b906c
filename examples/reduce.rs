//! Sum of many floats on the device: a multi-pass reduction with workgroup shared memory.
//!
//! `shaders/reduce_sum.wgsl` folds its grid-stride share of the input into one partial sum
//! per workgroup (a register loop, then a shared-memory tree with barriers). The first pass
//! turns the input into at most 1024 partial sums per binding-sized slice, the next passes
//! shrink those until one value is left. Only the final value (a few bytes) comes back to
//! the host; the input stays readable on the host throughout (it is only read on the device).
//!
//! The result is checked against an f64 sum on the CPU with a relative tolerance of 1e-5
//! (f32 accumulation: each invocation adds about 256 values in sequence, then a tree).
//!
//! Run: `cargo run --release --example reduce [-- --full]` (`--full`: 64 Mi floats).

use bytemuck::{Pod, Zeroable};
use vkhmm::{shaders, Kernel, Push, Runtime};

use crate::Example;

/// The push constants of `shaders/reduce_sum.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
}

/// Workgroups per pass at most: also the number of partial sums one pass writes.
const MAX_GROUPS: usize = 1024;
/// Invocations per workgroup (`@workgroup_size(256)` in the shader).
const WORKGROUP: usize = 256;
/// The stated tolerance: |gpu - exact| <= TOLERANCE * |exact|.
const TOLERANCE: f64 = 1e-5;

/// Groups for a pass over `n` values: about 4 values per invocation, at most `MAX_GROUPS`.
fn groups_for(n: usize) -> usize {
    n.div_ceil(4 * WORKGROUP).clamp(1, MAX_GROUPS)
}

/// Writes the partial sums of `src` into `partial` (one per workgroup) and returns how many.
fn pass(rt: &Runtime, k: &Kernel, src: &[f32], partial: &mut [f32]) -> anyhow::Result<usize> {
    let groups = groups_for(src.len());
    let params = Params {
        n: src.len() as u32,
    };
    rt.launch(
        k,
        [groups as u32, 1, 1],
        (src, &mut partial[..groups], Push(&params)),
    )?;
    Ok(groups)
}

/// Sums 4 Mi floats (64 Mi with `full`) and compares with the CPU.
pub fn run(rt: &Runtime, full: bool) -> anyhow::Result<String> {
    let n: usize = if full { 64 << 20 } else { 4 << 20 };
    // Values in [0, 1) from a cheap integer hash, so every element differs.
    let data: Vec<f32> = (0..n)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 8) as f32 / (1u32 << 24) as f32)
        .collect();

    let k = rt.kernel_wgsl(shaders::REDUCE_SUM_WGSL, "main")?;
    // One binding may not exceed the device's limit (128 MiB on lavapipe): the first pass
    // walks the input in slices that fit, each writing its partial sums after the last.
    let max_binding = rt.device_info().limits.max_storage_buffer_range as usize;
    let slice_len = (max_binding / 4).min(n) / WORKGROUP * WORKGROUP;
    let slices = n.div_ceil(slice_len);
    let mut a = vec![0.0f32; slices * MAX_GROUPS];
    let mut b = vec![0.0f32; MAX_GROUPS];
    let mut len = 0;
    for chunk in data.chunks(slice_len) {
        len += pass(rt, &k, chunk, &mut a[len..])?;
    }
    // Later passes: partial sums of partial sums, ping-ponging between `a` and `b`.
    let mut passes = 1;
    while len > 1 {
        len = pass(rt, &k, &a[..len], &mut b)?;
        std::mem::swap(&mut a, &mut b);
        passes += 1;
    }
    let gpu = a[0] as f64;

    let cpu: f64 = data.iter().map(|&v| v as f64).sum();
    let error = (gpu - cpu).abs() / cpu.abs();
    anyhow::ensure!(
        error <= TOLERANCE,
        "reduce: device sum {gpu} vs CPU {cpu}: relative error {error:.2e} > {TOLERANCE:.0e}"
    );
    println!(
        "reduce: {passes} passes, sum {gpu:.1} (CPU f64: {cpu:.1}, relative error {error:.1e})"
    );
    Ok(format!("{} Mi f32", n >> 20))
}

/// The example as `cargo run --example reduce` and `vkhmm demo` run it.
pub const EXAMPLE: Example = Example {
    name: "reduce",
    run,
    checked: "the sum matches the CPU within a relative 1e-5", // TOLERANCE
    budget: None,
};

#[cfg(test)]
mod tests {
    #[test]
    fn what_is_checked_names_the_tolerance() {
        let tolerance = format!("{:.0e}", super::TOLERANCE);
        assert!(super::EXAMPLE.checked.ends_with(&tolerance), "{tolerance}");
    }
}
