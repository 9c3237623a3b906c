//! A pointer-rich structure on the device: breadth-first search over a graph in CSR form
//! (arrays of indices), built by ordinary Rust code, rewired on the CPU, searched again.
//!
//! The graph is two `Vec<u32>`: `offsets[v]..offsets[v + 1]` is the range of node `v`'s
//! edges in `targets`. `shaders/bfs_step.wgsl` expands one BFS level per launch; the host
//! loop reads one counter per level to know when to stop — a few bytes — while the graph and
//! the levels stay on the device. Then the CPU rewires the edges of a small window of nodes:
//! only the chunks of `targets` it wrote go back up for the second search.
//!
//! Checked: every node's level against a CPU BFS, both times.
//!
//! Run: `cargo run --release --example linked [-- --full]` (`--full`: 4 Mi nodes).

use std::collections::VecDeque;

use bytemuck::{Pod, Zeroable};
use vkhmm::{shaders, Push, Runtime};

use crate::Example;

/// The push constants of `shaders/bfs_step.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    nodes: u32,
    level: u32,
}

/// Level of a node not reached (yet).
const UNSEEN: u32 = u32::MAX;
/// Edges per node: one to the next node (so every node is reachable), the rest random.
const DEGREE: usize = 6;
/// Nodes whose edges the CPU rewires between the two searches.
const REWIRED: usize = 4096;

/// A hash of two numbers, for the random edges.
fn hash(a: usize, b: usize) -> usize {
    let h = (a as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (b as u64).wrapping_mul(0xc2b2_ae3d);
    (h ^ (h >> 29)) as usize
}

/// The graph in CSR form: `(offsets, targets)`.
fn build(nodes: usize) -> (Vec<u32>, Vec<u32>) {
    let mut offsets = Vec::with_capacity(nodes + 1);
    let mut targets = Vec::with_capacity(nodes * DEGREE);
    for v in 0..nodes {
        offsets.push(targets.len() as u32);
        targets.push(((v + 1) % nodes) as u32);
        // Random edges, mostly short (a window of 1 Ki nodes) and a few long shortcuts.
        for e in 1..DEGREE {
            let h = hash(v, e);
            let to = if e == 1 { h % nodes } else { v + h % 1024 };
            targets.push((to % nodes) as u32);
        }
    }
    offsets.push(targets.len() as u32);
    (offsets, targets)
}

/// BFS levels on the CPU.
fn bfs_cpu(offsets: &[u32], targets: &[u32], source: usize) -> Vec<u32> {
    let mut levels = vec![UNSEEN; offsets.len() - 1];
    let mut queue = VecDeque::from([source]);
    levels[source] = 0;
    while let Some(v) = queue.pop_front() {
        for &u in &targets[offsets[v] as usize..offsets[v + 1] as usize] {
            if levels[u as usize] == UNSEEN {
                levels[u as usize] = levels[v] + 1;
                queue.push_back(u as usize);
            }
        }
    }
    levels
}

/// BFS on the device, one launch per level; returns the number of levels.
fn bfs_gpu(
    rt: &Runtime,
    offsets: &[u32],
    targets: &[u32],
    levels: &mut Vec<u32>,
    source: usize,
) -> anyhow::Result<u32> {
    let k = rt.kernel_wgsl(shaders::BFS_STEP_WGSL, "main")?;
    levels.fill(UNSEEN);
    levels[source] = 0;
    let mut found = vec![0u32; 1];
    for level in 0.. {
        found[0] = 0;
        let p = Params {
            nodes: levels.len() as u32,
            level,
        };
        rt.launch(
            &k,
            [256, 1, 1],
            (offsets, targets, &mut *levels, &mut found, Push(&p)),
        )?;
        if found[0] == 0 {
            return Ok(level);
        }
    }
    unreachable!("a u32 level counter wraps only after 4 Gi levels")
}

/// Compares device and CPU levels.
fn check(levels: &[u32], want: &[u32], search: &str) -> anyhow::Result<()> {
    if let Some(v) = (0..want.len()).find(|&v| levels[v] != want[v]) {
        anyhow::bail!(
            "linked: {search} search: node {v} at level {}, expected {}",
            levels[v],
            want[v]
        );
    }
    Ok(())
}

/// Builds a graph of 1 Mi nodes (4 Mi with `full`), searches, rewires, searches again.
pub fn run(rt: &Runtime, full: bool) -> anyhow::Result<String> {
    let nodes: usize = if full { 4 << 20 } else { 1 << 20 };
    let (offsets, mut targets) = build(nodes);
    let mut levels = vec![UNSEEN; nodes];

    let before = rt.stats();
    let depth = bfs_gpu(rt, &offsets, &targets, &mut levels, 0)?;
    let first = rt.stats() - before;
    check(&levels, &bfs_cpu(&offsets, &targets, 0), "first")?;
    println!(
        "linked: first search: {depth} levels, {} launches, {} B to device, {} B to host",
        first.launches, first.bytes_to_device, first.bytes_to_host
    );

    // The CPU rewires every random edge of a window of nodes near the source: writes to a
    // few pages of `targets`, which were read-only on the device (shared), so only those
    // pages turn host-only and travel again.
    for v in 1..=REWIRED {
        let edges = offsets[v] as usize + 1..offsets[v + 1] as usize;
        for (e, t) in edges.clone().zip(&mut targets[edges]) {
            *t = (hash(e, 7) % nodes) as u32;
        }
    }
    let r = rt.residency(&targets);
    let before = rt.stats();
    let depth = bfs_gpu(rt, &offsets, &targets, &mut levels, 0)?;
    let second = rt.stats() - before;
    let want = bfs_cpu(&offsets, &targets, 0);
    check(&levels, &want, "second")?;
    println!(
        "linked: rewired {REWIRED} nodes ({} of {} pages of targets host-only), second search: \
         {depth} levels, {} B to device, {} B to host",
        r.host,
        r.pages(),
        second.bytes_to_device,
        second.bytes_to_host
    );
    Ok(format!(
        "{} Mi nodes, {} Mi edges",
        nodes >> 20,
        (nodes * DEGREE) >> 20
    ))
}

/// The example as `cargo run --example linked` and `vkhmm demo` run it.
pub const EXAMPLE: Example = Example {
    name: "linked",
    run,
    checked: "both searches match a CPU BFS",
    budget: None,
};
