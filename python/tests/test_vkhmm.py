"""vkhmm from Python, on both transfer paths: exact results against NumPy, arrays of every
kind NumPy hands out, memory reused between launches, NumPy reading a kernel's results,
another thread reading while a launch runs, and bad input raising the documented exception
with the array unchanged."""

import struct
import threading

import numpy as np
import pytest

import vkhmm

ADD_K = """
struct P { n: u32, k: u32 }
@group(0) @binding(0) var<storage, read_write> data: array<u32>;
var<immediate> p: P;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
    for (var i = g.x; i < p.n; i += w.x * 256u) { data[i] = data[i] + p.k; }
}
"""

SUM = """
struct P { n: u32 }
@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> out: array<atomic<u32>>;
var<immediate> p: P;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
    var s = 0u;
    for (var i = g.x; i < p.n; i += w.x * 256u) { s += src[i]; }
    atomicAdd(&out[0], s);
}
"""

MUL = """
struct P { n: u32 }
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
var<immediate> p: P;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
    for (var i = g.x; i < p.n; i += w.x * 256u) { c[i] = a[i] * b[i]; }
}
"""


def groups(n):
    return (max(1, min((n + 255) // 256, 1024)),)


def saxpy(rt, x, y, a=2.0):
    k = rt.kernel_wgsl(vkhmm.SAXPY_WGSL)
    rt.launch(k, groups(x.size), x, y, push=struct.pack("fI", a, x.size))


def add_k(rt, data, k):
    rt.launch(rt.kernel_wgsl(ADD_K), groups(data.size), data, push=struct.pack("II", data.size, k))


def test_saxpy_is_exact(rt):
    n = 1 << 20
    x = np.arange(n, dtype=np.float32)
    y = np.full(n, 3.0, dtype=np.float32)
    saxpy(rt, x, y)
    assert np.array_equal(y, np.float32(2.0) * np.arange(n, dtype=np.float32) + np.float32(3.0))
    assert rt.stats()["launches"] >= 1


def test_a_reduction_is_exact(rt):
    rng = np.random.default_rng(1)
    src = rng.integers(0, 1 << 20, size=3 << 20, dtype=np.uint32)
    out = np.zeros(1, dtype=np.uint32)
    rt.launch(rt.kernel_wgsl(SUM), groups(src.size), src, out, push=struct.pack("I", src.size))
    assert int(out[0]) == int(src.sum(dtype=np.uint64)) & 0xFFFFFFFF


def test_an_elementwise_kernel_with_three_arrays_is_exact(rt):
    n = 777_777
    a = np.linspace(-3, 3, n, dtype=np.float32)
    b = np.cos(a).astype(np.float32)
    c = np.empty(n, dtype=np.float32)  # np.empty: whatever the allocator had
    rt.launch(rt.kernel_wgsl(MUL), groups(n), a, b, c, push=struct.pack("I", n))
    assert np.array_equal(c, a * b)


def test_slices_and_views_are_bindings(rt):
    base = np.arange(1 << 20, dtype=np.uint32)
    part = base[1000:300_000]  # a contiguous slice, not page-aligned
    add_k(rt, part, 5)
    want = np.arange(1 << 20, dtype=np.uint32)
    want[1000:300_000] += 5
    assert np.array_equal(base, want)
    as_bytes = base.view(np.uint8)  # another dtype over the same memory
    add_k(rt, as_bytes.view(np.uint32)[:10], 1)
    assert np.array_equal(base[:10], want[:10] + 1)
    two_d = np.zeros((512, 1024), dtype=np.uint32)
    add_k(rt, two_d, 9)
    assert (two_d == 9).all()


def test_arrays_freed_and_reallocated_between_launches(rt):
    for round in range(6):
        a = np.full(3 << 20, round, dtype=np.uint32)  # likely the same address each round
        add_k(rt, a, 100)
        assert (a == round + 100).all(), f"round {round}"
        del a


def test_numpy_reads_a_kernels_results_by_faulting_them_back(rt):
    # NumPy's own array migrates under userfaultfd; under the signal backend it is copied
    # through, and only runtime memory (`rt.alloc`) migrates.
    migrates = rt.device_info()["fault_backend"] != "signal"
    arrays = [(np.zeros(4 << 20, dtype=np.uint32), False), (rt.alloc(4 << 20, np.uint32), True)]
    for data, runtime_memory in arrays:
        moves = migrates or runtime_memory
        add_k(rt, data, 3)
        if moves:
            assert rt.residency(data)["device"] > 0
        before = rt.stats()["cpu_faults"]
        assert int(data.sum(dtype=np.uint64)) == 3 * data.size
        if moves:
            assert rt.stats()["cpu_faults"] > before
        assert rt.residency(data)["device"] == 0


def test_another_thread_reads_an_array_while_a_launch_runs(rt):
    busy = np.zeros(8 << 20, dtype=np.uint32)
    other = np.arange(4 << 20, dtype=np.uint32)
    add_k(rt, other, 1)  # `other` lives on the device now
    seen = []
    ready = threading.Event()

    def reader():
        ready.set()
        seen.append(int(other.sum(dtype=np.uint64)))

    t = threading.Thread(target=reader)
    t.start()
    ready.wait()
    add_k(rt, busy, 2)  # releases the GIL: the reader faults `other` back meanwhile
    t.join()
    assert seen == [int(np.arange(4 << 20, dtype=np.uint64).sum()) + (4 << 20)]
    assert (busy == 2).all()


COPY = """
struct P { n: u32 }
@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
var<immediate> p: P;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
    for (var i = g.x; i < p.n; i += w.x * 256u) { dst[i] = src[i]; }
}
"""


def test_launch_async_holds_its_arrays_until_done(rt):
    n = 2 << 20
    src = np.arange(n, dtype=np.uint32)
    dst = np.zeros(n, dtype=np.uint32)
    pending = rt.launch_async(rt.kernel_wgsl(COPY), groups(n), src, dst, push=struct.pack("I", n))
    del src  # the launch keeps the array alive: its bytes still reach `dst`
    junk = [np.full(n, 0xDEAD, dtype=np.uint32) for _ in range(4)]  # memory a freed array would lend
    pending.wait()
    assert pending.done()
    assert np.array_equal(dst, np.arange(n, dtype=np.uint32))
    del junk


def test_alloc_gives_a_numpy_array_in_runtime_memory(rt):
    a = rt.alloc((256, 1024), dtype=np.uint32)
    assert a.shape == (256, 1024) and a.dtype == np.uint32 and (a == 0).all()
    a[:] = 7
    add_k(rt, a, 1)
    assert rt.residency(a)["device"] == a.nbytes // 4096
    assert (a == 8).all()


def test_prefetch_advise_residency_and_info(rt):
    data = np.ones(1 << 20, dtype=np.float32)
    rt.prefetch(data, "device")
    r = rt.residency(data)
    if rt.device_info()["fault_backend"] == "signal":
        assert r["device"] == 0  # NumPy memory is copied through there: nothing moves
    else:
        assert r["device"] >= data.nbytes // 4096 - 1  # all but an edge page
    rt.prefetch(data, "host")
    assert rt.residency(data)["device"] == 0
    assert (data == 1).all()
    rt.advise(data, "read_mostly")
    rt.advise(data, "unset")
    info = rt.device_info()
    assert info["name"] and info["transfer_path"] in ("Direct", "Staged", "direct", "staged")
    assert rt.stats()["prefetches"] >= 2


def test_a_non_contiguous_array_is_a_value_error_and_unchanged(rt):
    a = np.arange(2000, dtype=np.uint32)
    with pytest.raises(ValueError, match="not C-contiguous"):
        add_k(rt, a[::2], 1)
    assert np.array_equal(a, np.arange(2000, dtype=np.uint32))


def test_a_read_only_array_for_a_written_binding_is_a_value_error(rt):
    a = np.arange(2000, dtype=np.uint32)
    a.flags.writeable = False
    with pytest.raises(vkhmm.ArgumentError, match="read-only"):
        add_k(rt, a, 1)
    assert np.array_equal(a, np.arange(2000, dtype=np.uint32))
    # As a read binding it is fine.
    out = np.zeros(1, dtype=np.uint32)
    rt.launch(rt.kernel_wgsl(SUM), groups(a.size), a, out, push=struct.pack("I", a.size))
    assert int(out[0]) == int(a.sum())


def test_wrong_argument_count_and_push_size_raise_the_crates_errors(rt):
    a = np.arange(2000, dtype=np.uint32)
    k = rt.kernel_wgsl(ADD_K)
    with pytest.raises(vkhmm.ArgumentError, match="buffer bindings"):
        rt.launch(k, groups(a.size), a, a.copy(), push=struct.pack("II", a.size, 1))
    with pytest.raises(vkhmm.ArgumentError, match="push"):
        rt.launch(k, groups(a.size), a, push=struct.pack("I", 1))
    with pytest.raises(vkhmm.ArgumentError):
        rt.launch(k, groups(a.size), "not an array", push=struct.pack("II", 1, 1))
    with pytest.raises(vkhmm.ArgumentError):
        rt.kernel_wgsl("fn main( {")
    assert np.array_equal(a, np.arange(2000, dtype=np.uint32))
    assert issubclass(vkhmm.ArgumentError, ValueError)
    assert issubclass(vkhmm.UnsupportedMemoryError, vkhmm.Error)
