//! Memory nothing ever wrote: a launch that only reads it zero-fills the device copy, and
//! bringing it home copies nothing from the device — yet every later write, by the CPU or by
//! a kernel, is seen exactly as on any other page.
//!
//! The tests on runtime-allocated memory run under both fault backends (`.ci/test` runs this
//! binary again with `VKHMM_FAULT=signal`); the ones on `Vec`s and `mmap` need userfaultfd.

mod common;

use common::push::{Fill, N};
use common::{each_path, each_path_foreign, groups, kernels, map_anon, pattern, Kernels};
use vkhmm::{Location, Push, Runtime};

const PAGE: usize = 4096;
/// Elements per page.
const EPP: usize = PAGE / 4;

/// A kernel that only reads `src` (its checksum).
fn read(rt: &Runtime, k: &Kernels, src: &[u32]) -> u32 {
    let mut sum = [0u32; 4];
    let n = src.len() as u32;
    rt.launch(
        &k.sum,
        groups(src.len(), 256),
        (src, &mut sum, Push(&N { n })),
    )
    .unwrap();
    sum[0]
}

/// A kernel that copies `src` into `dst`.
fn copy(rt: &Runtime, k: &Kernels, src: &[u32], dst: &mut [u32]) {
    let n = src.len() as u32;
    rt.launch(&k.copy, groups(src.len(), 256), (src, dst, Push(&N { n })))
        .unwrap();
}

#[test]
fn never_written_memory_comes_home_as_zeros_without_copies() {
    each_path(|rt, path| {
        let k = kernels(rt);
        let pages = 256;
        let mut m = rt.alloc::<u32>(pages * EPP).unwrap();
        let before = rt.stats();
        assert_eq!(read(rt, &k, &m), 0, "{path:?}");
        let d = rt.stats() - before;
        assert_eq!(d.bytes_zero_filled, (pages * PAGE) as u64, "{path:?}: {d}");
        assert_eq!(rt.residency(&m).device, pages, "{path:?}");

        // The CPU reads it all: zeros, and not one byte read from the device.
        let before = rt.stats();
        assert!(m.iter().all(|&x| x == 0), "{path:?}");
        let d = rt.stats() - before;
        assert_eq!(d.bytes_to_host, 0, "{path:?}: {d}");
        assert!(d.cpu_faults >= 1, "{path:?}: {d}");
        let r = rt.residency(&m);
        assert_eq!((r.host, r.shared, r.device), (0, pages, 0), "{path:?}");

        // A write lands on a Shared page like any other: that page turns Host at once, and
        // the next kernel sees it and nothing else changed.
        m[5 * EPP + 3] = 9;
        let r = rt.residency(&m);
        assert_eq!((r.host, r.shared), (1, pages - 1), "{path:?}");
        let mut out = rt.alloc::<u32>(m.len()).unwrap();
        let before = rt.stats();
        copy(rt, &k, &m, &mut out);
        let d = rt.stats() - before;
        assert_eq!(
            d.bytes_to_device, PAGE as u64,
            "{path:?}: only the written page: {d}"
        );
        let wrong = (0..out.len()).find(|&i| out[i] != if i == 5 * EPP + 3 { 9 } else { 0 });
        assert_eq!(wrong, None, "{path:?}");
    });
}

#[test]
fn a_write_fault_on_never_written_memory_keeps_the_write() {
    each_path(|rt, path| {
        let k = kernels(rt);
        let pages = 64;
        let mut m = rt.alloc::<u32>(pages * EPP).unwrap();
        read(rt, &k, &m);
        // The first touch is a write, in the middle of a page.
        let before = rt.stats();
        m[7 * EPP + 100] = 5;
        let d = rt.stats() - before;
        assert_eq!(d.bytes_to_host, 0, "{path:?}: {d}");
        // `residency` right after the write: the written page is Host, the rest of what the
        // fault brought back Shared, the remainder still on the device.
        let r = rt.residency(&m);
        assert_eq!(r.host, 1, "{path:?}: {r:?}");
        assert_eq!(r.host + r.shared + r.device, pages, "{path:?}: {r:?}");
        // Every page, whatever it holds, reads right.
        let wrong = (0..m.len()).find(|&i| m[i] != if i == 7 * EPP + 100 { 5 } else { 0 });
        assert_eq!(wrong, None, "{path:?}");
        assert_eq!((rt.stats() - before).bytes_to_host, 0, "{path:?}");
        assert_eq!(read(rt, &k, &m), 5, "{path:?}: the kernel sees the write");
    });
}

#[test]
fn a_writing_kernel_ends_the_zero_guarantee() {
    each_path(|rt, path| {
        let k = kernels(rt);
        let pages = 64;
        let mut m = rt.alloc::<u32>(pages * EPP).unwrap();
        read(rt, &k, &m);
        // A kernel now writes the same pages: their device copies hold data.
        let n = m.len() as u32;
        rt.launch(
            &k.fill,
            groups(m.len(), 64),
            (&mut *m, Push(&Fill { n, mul: 3, add: 1 })),
        )
        .unwrap();
        let before = rt.stats();
        let wrong = (0..m.len()).find(|&i| m[i] != i as u32 * 3 + 1);
        assert_eq!(wrong, None, "{path:?}");
        let d = rt.stats() - before;
        assert_eq!(d.bytes_to_host, (pages * PAGE) as u64, "{path:?}: {d}");
    });
}

#[test]
fn prefetch_of_never_written_memory_moves_no_bytes() {
    each_path(|rt, path| {
        let pages = 128;
        let m = rt.alloc::<u32>(pages * EPP).unwrap();
        let before = rt.stats();
        rt.prefetch(&m, Location::Device).unwrap();
        rt.prefetch(&m, Location::Host).unwrap();
        let d = rt.stats() - before;
        assert_eq!(
            (d.bytes_to_device, d.bytes_to_host),
            (0, 0),
            "{path:?}: {d}"
        );
        assert_eq!(rt.residency(&m).shared, pages, "{path:?}");
        assert!(m.iter().all(|&x| x == 0), "{path:?}");
    });
}

#[test]
fn a_calloc_vec_read_by_a_kernel_is_rewritten_without_copies_home() {
    each_path_foreign(|rt, path| {
        let k = kernels(rt);
        // 40 MiB: above glibc's largest mmap threshold (32 MiB), so always a mapping of its
        // own that nobody touched (a smaller one may reuse heap memory calloc must clear).
        let n = 10 << 20;
        let mut v = vec![0u32; n];
        assert_eq!(read(rt, &k, &v), 0, "{path:?}");
        let before = rt.stats();
        for (i, x) in v.iter_mut().enumerate() {
            *x = pattern(i, 4);
        }
        let d = rt.stats() - before;
        assert_eq!(d.bytes_to_host, 0, "{path:?}: {d}");
        let mut out = vec![0u32; n];
        copy(rt, &k, &v, &mut out);
        let wrong = (0..n).find(|&i| out[i] != pattern(i, 4));
        assert_eq!(wrong, None, "{path:?}");
    });
}

#[test]
fn memory_mapped_over_zero_pages_is_read_afresh() {
    each_path_foreign(|rt, path| {
        let k = kernels(rt);
        let len = 64 * PAGE;
        let addr = map_anon(len) as usize;
        // SAFETY: a fresh private mapping of `len` bytes, ours alone.
        let v = unsafe { std::slice::from_raw_parts(addr as *const u32, len / 4) };
        read(rt, &k, v);
        assert_eq!(rt.residency(v).device, 64, "{path:?}");
        // SAFETY: replaces our own mapping with fresh memory in one step (an unmap of it);
        // `v` is not used again. (An munmap and a second mmap would leave the address free in
        // between, for another test's allocation.)
        let again = unsafe {
            libc::mmap(
                addr as *mut _,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        assert_eq!(again as usize, addr);
        // SAFETY: the new mapping, `len` bytes, ours alone.
        let w = unsafe { std::slice::from_raw_parts_mut(addr as *mut u32, len / 4) };
        for (i, x) in w.iter_mut().enumerate() {
            *x = pattern(i, 8);
        }
        let mut out = vec![0u32; len / 4];
        copy(rt, &k, w, &mut out);
        let wrong = (0..out.len()).find(|&i| out[i] != pattern(i, 8));
        assert_eq!(wrong, None, "{path:?}: the kernel read the new memory");
        // SAFETY: our mapping, not used after this.
        assert_eq!(unsafe { libc::munmap(addr as *mut _, len) }, 0);
    });
}
