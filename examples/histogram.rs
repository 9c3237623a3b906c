//! A 256-bin histogram of bytes with atomics: shared-memory bins per workgroup, then global.
//!
//! `shaders/histogram256.wgsl` reads the bytes four to a `u32` word, counts each into the
//! workgroup's own 256 bins with workgroup atomics, and adds every non-zero bin to the global
//! `bins` with one `atomicAdd`. The data is an ordinary `Vec<u8>`; inputs larger than one
//! binding may be (128 MiB on lavapipe) go in slices that add into the same bins.
//!
//! The counts must equal a CPU histogram exactly.
//!
//! Run: `cargo run --release --example histogram [-- --full]` (`--full`: 256 MiB).

use bytemuck::{Pod, Zeroable};
use vkhmm::{shaders, Push, Runtime};

use crate::Example;

/// The push constants of `shaders/histogram256.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    words: u32,
}

/// Counts the bytes of 16 MiB of skewed data (256 MiB with `full`) and compares with the CPU.
pub fn run(rt: &Runtime, full: bool) -> anyhow::Result<String> {
    let n: usize = if full { 256 << 20 } else { 16 << 20 };
    // A skewed distribution (the smaller of two hash bytes), so the bins differ in height.
    let data: Vec<u8> = (0..n)
        .map(|i| {
            let h = (i as u32).wrapping_mul(2_654_435_761);
            ((h >> 24) as u8).min((h >> 8) as u8)
        })
        .collect();
    let mut bins = vec![0u32; 256];

    let k = rt.kernel_wgsl(shaders::HISTOGRAM256_WGSL, "main")?;
    // Slices of whole words, each within the device's binding limit.
    let max_binding = rt.device_info().limits.max_storage_buffer_range as usize;
    let slice_len = max_binding.min(n) / 4 * 4;
    for slice in data.chunks(slice_len) {
        let params = Params {
            words: (slice.len() / 4) as u32,
        };
        rt.launch(&k, [512, 1, 1], (slice, &mut bins, Push(&params)))?;
    }

    let mut want = [0u32; 256];
    for &b in &data {
        want[b as usize] += 1;
    }
    if let Some(b) = (0..256).find(|&b| bins[b] != want[b]) {
        anyhow::bail!("histogram: bin {b} = {}, expected {}", bins[b], want[b]);
    }
    let (lo, hi) = (want.iter().min().unwrap(), want.iter().max().unwrap());
    println!("histogram: bins hold {lo} to {hi} bytes each");
    Ok(format!("{} MiB u8", n >> 20))
}

/// The example as `cargo run --example histogram` and `vkhmm demo` run it.
pub const EXAMPLE: Example = Example {
    name: "histogram",
    run,
    checked: "all 256 bins match the CPU exactly",
    budget: None,
};
