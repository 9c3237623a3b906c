"""saxpy on two NumPy arrays: y = a*x + y on the device, read back by NumPy, no copy in this code.

Run: python python/examples/saxpy.py
"""

import struct

import numpy as np

import vkhmm

rt = vkhmm.Runtime()
k = rt.kernel_wgsl(vkhmm.SAXPY_WGSL, "main")
n = 1 << 20
x = np.arange(n, dtype=np.float32)
y = np.ones_like(x)
rt.launch(k, (1024,), x, y, push=struct.pack("fI", 2.0, n))
assert np.array_equal(y, 2.0 * np.arange(n, dtype=np.float32) + 1.0)
print("y[:4] =", y[:4])
print({k: v for k, v in rt.stats().items() if v})
