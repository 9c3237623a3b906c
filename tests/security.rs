//! Security checks: no data leaks between allocations, out-of-bounds kernel writes stay
//! inside their binding (robustBufferAccess), and faults on memory the runtime does not
//! mirror are never written by it.
//!
//! Every test runs on both transfer paths.

mod common;

use common::push::{AddK, Fill, N};

use bytemuck::{Pod, Zeroable};
use common::{each_path_foreign, groups, pattern};
use vkhmm::{shaders, Location, Managed, Push};

const PAGE: usize = 4096;

/// Writes `val` at `idx` of its binding, however far past the end that is (the WGSL
/// compiler's own buffer bounds checks are off in vkhmm: robustBufferAccess guards it).
const POKE_WGSL: &str = r"
struct Params { idx: u32, val: u32 }
@group(0) @binding(0) var<storage, read_write> data: array<u32>;
var<immediate> params: Params;
@compute @workgroup_size(1)
fn main() {
    data[params.idx] = params.val;
}
";

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Poke {
    idx: u32,
    val: u32,
}

/// A new allocation never shows an earlier one's bytes: a kernel writes a pattern into
/// buffers whose device copies are then freed; new buffers (fresh `Managed`, fresh large
/// `Vec`) are read by a kernel (COPY into a checked buffer, CHECKSUM) and by the CPU, and
/// hold zeros only.
#[test]
fn new_allocations_never_see_old_bytes() {
    each_path_foreign(|rt, path| {
        let fill = rt.kernel_wgsl(shaders::FILL_INDEX_WGSL, "main").unwrap();
        let copy = rt.kernel_wgsl(shaders::COPY_U32_WGSL, "main").unwrap();
        let sum = rt.kernel_wgsl(shaders::CHECKSUM_WGSL, "main").unwrap();
        let n = 256 * 1024; // 1 MiB each
        for round in 0..4u32 {
            // Secrets on the device, then freed (munmap: their device copies are released).
            let mut secrets: Vec<Managed<u32>> = (0..4).map(|_| rt.alloc(n).unwrap()).collect();
            for (j, s) in secrets.iter_mut().enumerate() {
                let push = Fill {
                    n: n as u32,
                    mul: 7,
                    add: 0xdead_0000 + round * 16 + j as u32,
                };
                rt.launch(&fill, groups(n, 64), (&mut s[..], Push(&push)))
                    .unwrap();
            }
            let mut v = vec![0u32; n];
            let push = Fill {
                n: n as u32,
                mul: 3,
                add: 0xbeef_0000,
            };
            rt.launch(&fill, groups(n, 64), (&mut v[..], Push(&push)))
                .unwrap();
            drop(secrets);
            drop(v);
            let used = rt.stats().device_bytes_in_use;

            // New memory: a Managed and a large Vec (fresh pages), read by kernels.
            let fresh_m: Managed<u32> = rt.alloc(n).unwrap();
            let fresh_v = vec![0u32; n];
            for (what, src) in [("Managed", &fresh_m[..]), ("Vec", &fresh_v[..])] {
                let mut out = vec![1u32; n];
                rt.launch(
                    &copy,
                    groups(n, 256),
                    (src, &mut out, Push(&N { n: n as u32 })),
                )
                .unwrap();
                if let Some(i) = out.iter().position(|&x| x != 0) {
                    panic!(
                        "{path:?} round {round}: a kernel reading a fresh {what} saw {:#x} at \
                         {i} (device bytes in use before: {used})",
                        out[i]
                    );
                }
                let mut total = vec![0u32; 4];
                rt.launch(
                    &sum,
                    groups(n, 256),
                    (src, &mut total, Push(&N { n: n as u32 })),
                )
                .unwrap();
                assert_eq!(
                    total, [0; 4],
                    "{path:?} round {round}: checksum of a fresh {what}"
                );
                assert!(
                    src.iter().all(|&x| x == 0),
                    "{path:?} round {round}: the CPU reads a fresh {what} as non-zero"
                );
            }
            // A fresh buffer prefetched to the device and read back by the CPU.
            let fresh = rt.alloc::<u32>(n).unwrap();
            rt.prefetch(&fresh[..], Location::Device).unwrap();
            assert!(
                fresh.iter().all(|&x| x == 0),
                "{path:?} round {round}: a fresh Managed prefetched to the device reads back \
                 non-zero"
            );
        }
    });
}

/// A kernel writing past the end of its binding (indices from a push constant) does not reach
/// a neighbouring allocation: neither one adjacent in host memory (and in the same device
/// extent, after a prefetch of both), nor the rest of the same page, nor other buffers.
#[test]
fn out_of_bounds_kernel_writes_do_not_reach_neighbours() {
    each_path_foreign(|rt, path| {
        let poke = rt.kernel_wgsl(POKE_WGSL, "main").unwrap();
        // One mapping, split in two: `a` (1000 words, ends mid-page) and `b` right after it.
        let total = 16 * 1024;
        let mut whole = rt.alloc::<u32>(total).unwrap();
        for (i, x) in whole.iter_mut().enumerate() {
            *x = pattern(i, 77);
        }
        let others: Vec<Managed<u32>> = (0..3)
            .map(|j| {
                let mut m = rt.alloc::<u32>(4096).unwrap();
                m.iter_mut()
                    .enumerate()
                    .for_each(|(i, x)| *x = pattern(i, j));
                rt.prefetch(&m[..], Location::Device).unwrap();
                m
            })
            .collect();
        let a_len = 1000;
        // Both halves on the device in one extent.
        rt.prefetch(&whole[..], Location::Device).unwrap();
        let mut expect: Vec<u32> = (0..total).map(|i| pattern(i, 77)).collect();
        let (a, _) = whole.split_at_mut(a_len);
        let oob = [
            a_len as u32,
            a_len as u32 + 1,
            a_len as u32 + 24,
            1024,
            1030,
            4096,
            8191,
            total as u32,
            1 << 20,
            (1 << 28) - 1,
            u32::MAX / 4,
            u32::MAX,
        ];
        for (j, &idx) in oob.iter().enumerate() {
            let push = Poke {
                idx,
                val: 0xbad0_0000 + j as u32,
            };
            rt.launch(&poke, [1, 1, 1], (&mut *a, Push(&push))).unwrap();
        }
        // An in-bounds write to show the kernel works.
        let push = Poke {
            idx: 5,
            val: 0x600d,
        };
        rt.launch(&poke, [1, 1, 1], (&mut *a, Push(&push))).unwrap();
        expect[5] = 0x600d;
        for (i, (&got, &want)) in whole.iter().zip(&expect).enumerate() {
            assert_eq!(
                got,
                want,
                "{path:?}: word {i} ({}) changed by an out-of-bounds write",
                if i < a_len { "inside a" } else { "outside a" }
            );
        }
        for (j, m) in others.iter().enumerate() {
            if let Some(i) = (0..m.len()).find(|&i| m[i] != pattern(i, j as u32)) {
                panic!("{path:?}: buffer {j} word {i} changed by an out-of-bounds write");
            }
        }
        // The same with a heap Vec whose page other heap data shares.
        let mut v: Vec<u32> = (0..10).map(|i| pattern(i, 5)).collect();
        let neighbour: Vec<u32> = (0..10).map(|i| pattern(i, 6)).collect();
        for (j, &idx) in oob.iter().enumerate() {
            let push = Poke {
                idx,
                val: 0xbad1_0000 + j as u32,
            };
            rt.launch(&poke, [1, 1, 1], (&mut v, Push(&push))).unwrap();
        }
        assert!(
            v.iter().enumerate().all(|(i, &x)| x == pattern(i, 5)),
            "{path:?}: the Vec itself changed: {v:?}"
        );
        assert!(
            neighbour
                .iter()
                .enumerate()
                .all(|(i, &x)| x == pattern(i, 6)),
            "{path:?}: a heap neighbour changed: {neighbour:?}"
        );
    });
}

/// Anonymous memory that the runtime does not mirror, mapped right next to memory it does,
/// is never written by it and its faults are not counted as the runtime's: pages before and
/// after a mirrored range, and fresh memory mapped where mirrored memory was unmapped.
#[test]
fn faults_on_unmirrored_memory_are_not_touched() {
    each_path_foreign(|rt, path| {
        let add = rt.kernel_wgsl(shaders::ADD_K_WGSL, "main").unwrap();
        let pages = 12;
        let len = pages * PAGE;
        let base = common::map_anon(len);
        let base = base as usize;
        let words = PAGE / 4;
        // SAFETY: the mapping is ours, `len` bytes, page-aligned; the three slices below are
        // disjoint (pages 0..4, 4..8, 8..12).
        let (before, middle, after) = unsafe {
            let p = base as *mut u32;
            (
                std::slice::from_raw_parts_mut(p, 4 * words),
                std::slice::from_raw_parts_mut(p.add(4 * words), 4 * words),
                std::slice::from_raw_parts_mut(p.add(8 * words), 4 * words),
            )
        };
        // Pages 1 and 9 stay untouched (zero, absent); pages 0 and 8 hold data.
        before[..words].fill(0x1111_1111);
        after[..words].fill(0x2222_2222);
        // Mirror the middle four pages: they go to the device.
        middle.fill(1);
        let push = AddK {
            n: middle.len() as u32,
            k: 1,
        };
        rt.launch(&add, groups(middle.len(), 64), (&mut *middle, Push(&push)))
            .unwrap();
        let faults = rt.stats().cpu_faults;
        // Touch the unmirrored neighbours: reads of absent pages, writes, and data pages.
        assert!(before.iter().skip(words).all(|&x| x == 0));
        assert!(after.iter().skip(words).all(|&x| x == 0));
        assert!(before[..words].iter().all(|&x| x == 0x1111_1111));
        assert!(after[..words].iter().all(|&x| x == 0x2222_2222));
        before[2 * words] = 5;
        after[3 * words + 7] = 6;
        assert_eq!(
            rt.stats().cpu_faults,
            faults,
            "{path:?}: touching unmirrored neighbours counted runtime faults"
        );
        assert!(middle.iter().all(|&x| x == 2), "{path:?}: mirrored pages");
        assert!(
            rt.stats().cpu_faults > faults,
            "{path:?}: the middle faulted back"
        );
        assert_eq!(before[2 * words], 5);
        assert_eq!(after[3 * words + 7], 6);

        // Unmap the mirrored middle (device-resident again), map fresh memory at the same
        // address, and touch it: zeros, and not the runtime's fault.
        rt.prefetch(&middle[..], Location::Device).unwrap();
        let mid = base + 4 * PAGE;
        // SAFETY: the middle four pages are ours; no reference to them is used after this.
        unsafe {
            assert_eq!(libc::munmap(mid as *mut libc::c_void, 4 * PAGE), 0);
            let p = libc::mmap(
                mid as *mut libc::c_void,
                4 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            );
            assert_eq!(p as usize, mid, "could not map at the old address");
        }
        let _ = rt.stats(); // a runtime call: reaps the dead extent
        let faults = rt.stats().cpu_faults;
        // SAFETY: the fresh mapping at `mid`, 4 pages, ours.
        let fresh = unsafe { std::slice::from_raw_parts_mut(mid as *mut u32, 4 * words) };
        assert!(
            fresh.iter().all(|&x| x == 0),
            "{path:?}: memory mapped where mirrored memory was is not zero"
        );
        fresh[words] = 9;
        assert_eq!(fresh[words], 9);
        assert_eq!(
            rt.stats().cpu_faults,
            faults,
            "{path:?}: faults on fresh memory at a formerly mirrored address counted as runtime faults"
        );
        // SAFETY: the whole mapping is ours and no reference into it is used afterwards.
        unsafe { libc::munmap(base as *mut libc::c_void, len) };
    });
}
