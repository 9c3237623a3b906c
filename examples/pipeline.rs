//! Several kernels in a row with small CPU steps in between: untouched data stays on the
//! device, and only the chunks the CPU touches travel.
//!
//! One `Vec<u32>` goes through `fill_index` → CPU patch → `add_k` → CPU spot checks →
//! `copy_u32` → `checksum`. After each step the example prints where the vector's pages are
//! (`Runtime::residency`) and what moved. A CPU write to a device-resident page faults back
//! one chunk (64 KiB by default), not the vector; the next kernel re-uploads only that chunk.
//!
//! Checked: the checksum and every element against the CPU, and that the CPU steps brought
//! back only a small part of the data.
//!
//! Run: `cargo run --release --example pipeline [-- --full]` (`--full`: 64 MiB).

use bytemuck::{Pod, Zeroable};
use vkhmm::{shaders, Push, Runtime, Stats};

use crate::Example;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Fill {
    n: u32,
    mul: u32,
    add: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AddK {
    n: u32,
    k: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Len {
    n: u32,
}

const MUL: u32 = 3;
const ADD: u32 = 7;
const K: u32 = 100;
/// Where the CPU patches the data, and how many elements.
const PATCH_LEN: usize = 1000;
/// How many elements the CPU spot-checks, spread over the whole vector.
const SPOTS: usize = 8;

/// Prints the residency of `data` and what moved since `before`; returns the new snapshot.
fn report(rt: &Runtime, step: &str, data: &[u32], before: Stats) -> Stats {
    let now = rt.stats();
    let r = rt.residency(data);
    let d = now - before;
    println!(
        "pipeline: {step:<34} data: {:>5} host {:>5} shared {:>5} device pages | moved {:>8} B to device, {:>8} B to host",
        r.host, r.shared, r.device, d.bytes_to_device, d.bytes_to_host
    );
    now
}

/// Runs the pipeline on 4 Mi `u32` (16 Mi with `full`) and checks it.
pub fn run(rt: &Runtime, full: bool) -> anyhow::Result<String> {
    let n: usize = if full { 16 << 20 } else { 4 << 20 };
    let groups = [1024, 1, 1];
    let fill = rt.kernel_wgsl(shaders::FILL_INDEX_WGSL, "main")?;
    let add_k = rt.kernel_wgsl(shaders::ADD_K_WGSL, "main")?;
    let copy = rt.kernel_wgsl(shaders::COPY_U32_WGSL, "main")?;
    let checksum = rt.kernel_wgsl(shaders::CHECKSUM_WGSL, "main")?;

    let mut data = vec![0u32; n];
    let mut s = report(rt, "start (zeroed Vec)", &data, rt.stats());

    // 1. A kernel writes every element: the pages move to the device.
    let p = Fill {
        n: n as u32,
        mul: MUL,
        add: ADD,
    };
    rt.launch(&fill, groups, (&mut data, Push(&p)))?;
    s = report(rt, "1. fill_index (kernel)", &data, s);

    // 2. The CPU patches a few elements in the middle: only their chunk comes back.
    let at = n / 2;
    for (j, v) in data[at..at + PATCH_LEN].iter_mut().enumerate() {
        *v = u32::MAX - j as u32;
    }
    let touched = rt.stats() - s;
    s = report(rt, "2. CPU patches 1000 elements", &data, s);

    // 3. The next kernel re-uploads the patched chunk only.
    let p = AddK { n: n as u32, k: K };
    rt.launch(&add_k, groups, (&mut data, Push(&p)))?;
    let reupload = rt.stats() - s;
    s = report(rt, "3. add_k (kernel)", &data, s);

    // 4. The CPU reads a few elements: each read brings one chunk back, readable (shared).
    let expected = |i: usize| -> u32 {
        if (at..at + PATCH_LEN).contains(&i) {
            (u32::MAX - (i - at) as u32).wrapping_add(K)
        } else {
            (i as u32)
                .wrapping_mul(MUL)
                .wrapping_add(ADD)
                .wrapping_add(K)
        }
    };
    for i in (0..SPOTS).map(|j| j * (n / SPOTS) + 12345) {
        anyhow::ensure!(data[i] == expected(i), "pipeline: spot check of data[{i}]");
    }
    let spots = rt.stats() - s;
    s = report(rt, "4. CPU reads 8 elements", &data, s);

    // 5. Two more kernels: copy into a second vector, and sum the copy.
    let mut copied = vec![0u32; n];
    let mut sum = vec![0u32; 1];
    let p = Len { n: n as u32 };
    rt.launch(&copy, groups, (&data, &mut copied, Push(&p)))?;
    rt.launch(&checksum, groups, (&copied, &mut sum, Push(&p)))?;
    s = report(rt, "5. copy_u32, checksum (kernels)", &data, s);
    let want_sum = (0..n).fold(0u32, |acc, i| acc.wrapping_add(expected(i)));
    anyhow::ensure!(
        sum[0] == want_sum,
        "pipeline: checksum {:#x}, expected {want_sum:#x}",
        sum[0]
    );
    report(rt, "6. CPU reads the checksum", &data, s);

    // The CPU steps moved little: one chunk grown at most to 2 MiB per touch.
    let little = (2 << 20) as u64;
    anyhow::ensure!(
        touched.bytes_to_host <= little && reupload.bytes_to_device <= little,
        "pipeline: the patch moved {} B back and {} B up again",
        touched.bytes_to_host,
        reupload.bytes_to_device
    );
    anyhow::ensure!(
        spots.bytes_to_host <= SPOTS as u64 * little,
        "pipeline: 8 reads moved {} B back",
        spots.bytes_to_host
    );

    // Finally every element, on both vectors (this brings everything home).
    for (i, (&d, &c)) in data.iter().zip(&copied).enumerate() {
        anyhow::ensure!(
            d == expected(i) && c == d,
            "pipeline: data[{i}] = {d}, copy {c}, expected {}",
            expected(i)
        );
    }
    Ok(format!("{} Mi u32", n >> 20))
}

/// The example as `cargo run --example pipeline` and `vkhmm demo` run it.
pub const EXAMPLE: Example = Example {
    name: "pipeline",
    run,
    checked: "checksum and every element match the CPU",
    budget: None,
};
