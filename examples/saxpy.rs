//! The hello world of vkhmm: `y = a·x + y` on two ordinary `Vec<f32>`, one launch, no copies.
//!
//! The vectors come from the ordinary allocator. `launch` moves their pages to the device
//! (`x` is read-only there, so its host pages stay readable; `y` is written, so its host pages
//! are dropped), and reading `y` afterwards faults the result back, chunk by chunk.
//!
//! Run: `cargo run --release --example saxpy [-- --full]`.

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

/// Runs saxpy on 1 Mi elements (16 Mi with `full`) and checks every element exactly.
pub fn run(rt: &Runtime, full: bool) -> anyhow::Result<String> {
    let n: usize = if full { 16 << 20 } else { 1 << 20 };
    // Small integers, so that the f32 results are exact whatever the rounding mode or FMA.
    let x: Vec<f32> = (0..n).map(|i| (i % 1000) as f32).collect();
    let mut y: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();

    let saxpy = rt.kernel_wgsl(shaders::SAXPY_WGSL, "main")?;
    let params = Params {
        a: 2.0,
        n: n as u32,
    };
    rt.launch(&saxpy, [1024, 1, 1], (&x, &mut y, Push(&params)))?;

    // Plain reads of `y`: each first touch of a chunk brings it back from the device.
    for (i, &got) in y.iter().enumerate() {
        let want = 2.0 * (i % 1000) as f32 + (i % 7) as f32;
        anyhow::ensure!(got == want, "saxpy: y[{i}] = {got}, expected {want}");
    }
    Ok(format!("2 x {} Mi f32", n >> 20))
}

/// The example as `cargo run --example saxpy` and `vkhmm demo` run it.
pub const EXAMPLE: Example = Example {
    name: "saxpy",
    run,
    checked: "every element matches the CPU",
    budget: None,
};
