"""saxpy end to end from Python against the same launch from Rust, side by side in one process.

Both sides launch the bundled saxpy kernel on two arrays of N floats (16 Mi by default) that
already live where the previous launch left them, as a loop of launches does (each side
launches once untimed first); the Rust side runs in the extension
(`Runtime._saxpy_from_rust`, on Rust `Vec`s) in blocks alternated with the Python side's, so
both see the same machine. Prints the median of each and their ratio.

Run: python python/examples/bench_saxpy.py [N] [RUNS]
"""

import statistics
import struct
import sys
import time

import numpy as np

import vkhmm

n = int(sys.argv[1]) if len(sys.argv) > 1 else 16 << 20
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
rounds = 4
rt = vkhmm.Runtime()
k = rt.kernel_wgsl(vkhmm.SAXPY_WGSL)
x = np.arange(n, dtype=np.float32)
y = np.ones(n, dtype=np.float32)
push = struct.pack("fI", 2.0, n)
groups = (min((n + 255) // 256, 65535),)
rt.launch(k, groups, x, y, push=push)  # warm up: both arrays on the device
py_times, rust_times = [], []
for _ in range(rounds):
    for _ in range(runs):
        t = time.perf_counter()
        rt.launch(k, groups, x, y, push=push)
        py_times.append(time.perf_counter() - t)
    rust_times += rt._saxpy_from_rust(k, n, runs)
p, r = statistics.median(py_times), statistics.median(rust_times)
print(f"saxpy 2x{n} floats: from Python {p * 1e3:.2f} ms, from Rust {r * 1e3:.2f} ms, "
      f"ratio {p / r:.2f} (median of {len(py_times)} each, in alternated blocks of {runs})")
