//! Tiled matrix multiply with workgroup shared memory and barriers: `c = a · b`.
//!
//! `shaders/matmul_tiled.wgsl` gives each workgroup of 16×16 invocations one 64×64 tile of
//! `c` (a 4×4 block per invocation). The workgroup walks the inner dimension 16 at a time,
//! staging a 64×16 tile of `a` and a 16×64 tile of `b` in shared memory between two
//! `workgroupBarrier`s, so each element loaded from memory is used 64 times. The matrices
//! are plain row-major `Vec<f32>`.
//!
//! The entries are small integers (-2..=2), so every product and sum is exact in f32 and the
//! result must equal the CPU's bit for bit.
//!
//! Run: `cargo run --release --example matmul [-- --full]` (`--full`: 2048×2048).

use bytemuck::{Pod, Zeroable};
use vkhmm::{shaders, Push, Runtime};

use crate::Example;

/// The push constants of `shaders/matmul_tiled.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
}

/// The edge of the tile of `c` one workgroup computes.
const TILE: usize = 64;

/// A small integer in -2..=2 from a hash of `i` and `seed`.
fn entry(i: usize, seed: u32) -> f32 {
    let h = (i as u32 ^ seed).wrapping_mul(2_654_435_761) >> 16;
    (h % 5) as f32 - 2.0
}

/// `c = a · b` on the CPU (i-k-j order, so the inner loop runs along rows).
fn reference(a: &[f32], b: &[f32], n: usize) -> Vec<f32> {
    let mut c = vec![0.0f32; n * n];
    for (a_row, c_row) in a.chunks(n).zip(c.chunks_mut(n)) {
        for (&a_ik, b_row) in a_row.iter().zip(b.chunks(n)) {
            for (c_ij, &b_kj) in c_row.iter_mut().zip(b_row) {
                *c_ij += a_ik * b_kj;
            }
        }
    }
    c
}

/// Multiplies two 500×500 matrices (2048×2048 with `full`) and compares with the CPU.
pub fn run(rt: &Runtime, full: bool) -> anyhow::Result<String> {
    // 500 is not a multiple of the 64-wide tile, so the ragged edge tiles are exercised too.
    let n: usize = if full { 2048 } else { 500 };
    let a: Vec<f32> = (0..n * n).map(|i| entry(i, 1)).collect();
    let b: Vec<f32> = (0..n * n).map(|i| entry(i, 2)).collect();
    let mut c = vec![0.0f32; n * n];

    let k = rt.kernel_wgsl(shaders::MATMUL_TILED_WGSL, "main")?;
    let tiles = n.div_ceil(TILE).min(65535) as u32;
    let params = Params {
        m: n as u32,
        n: n as u32,
        k: n as u32,
    };
    rt.launch(&k, [tiles, tiles, 1], (&a, &b, &mut c, Push(&params)))?;

    let want = reference(&a, &b, n);
    if let Some(i) = (0..n * n).find(|&i| c[i] != want[i]) {
        anyhow::bail!(
            "matmul: c[{}][{}] = {}, expected {}",
            i / n,
            i % n,
            c[i],
            want[i]
        );
    }
    Ok(format!("{n}x{n} f32"))
}

/// The example as `cargo run --example matmul` and `vkhmm demo` run it.
pub const EXAMPLE: Example = Example {
    name: "matmul",
    run,
    checked: "every element matches the CPU exactly",
    budget: None,
};
