"""A kernel and NumPy take turns on the same array, with no copy in the code.

The kernel fills `data`; NumPy patches a slice (one chunk comes back); the next kernel adds
to every element (only the patched pages go up again); NumPy reads a few elements (each
brings one chunk back, readable) and then sums everything (the rest comes home). The
residency after each step shows where the pages are.

Run: python python/examples/pipeline.py
"""

import struct

import numpy as np

import vkhmm

FILL = """
struct P { n: u32, mul: u32, add: u32 }
@group(0) @binding(0) var<storage, read_write> out: array<u32>;
var<immediate> p: P;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
    for (var i = g.x; i < p.n; i += w.x * 256u) { out[i] = i * p.mul + p.add; }
}
"""
ADD = """
struct P { n: u32, k: u32 }
@group(0) @binding(0) var<storage, read_write> data: array<u32>;
var<immediate> p: P;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
    for (var i = g.x; i < p.n; i += w.x * 256u) { data[i] = data[i] + p.k; }
}
"""

rt = vkhmm.Runtime()
fill, add = rt.kernel_wgsl(FILL), rt.kernel_wgsl(ADD)
n = 4 << 20
data = np.zeros(n, dtype=np.uint32)


def step(what):
    r, s = rt.residency(data), rt.stats()
    print(f"{what:34s} pages host {r['host']:5d} shared {r['shared']:5d} device {r['device']:5d}"
          f"   CPU faults so far {s['cpu_faults']}")


step("start")
rt.launch(fill, (1024,), data, push=struct.pack("III", n, 3, 1))
step("1. kernel fills")
data[n // 2 : n // 2 + 1000] = 7  # NumPy writes a slice: its chunk comes back
step("2. NumPy patches 1000 elements")
rt.launch(add, (1024,), data, push=struct.pack("II", n, 5))
step("3. kernel adds 5")
spots = data[:: n // 8].copy()  # eight reads far apart
step("4. NumPy reads 8 elements")
total = int(data.sum(dtype=np.uint64))  # everything comes home
step("5. NumPy sums it all")

want = np.arange(n, dtype=np.uint64) * 3 + 1
want[n // 2 : n // 2 + 1000] = 7
want += 5
assert total == int(want.sum()) and np.array_equal(spots, want[:: n // 8].astype(np.uint32))
print("sum", total, "matches NumPy")
