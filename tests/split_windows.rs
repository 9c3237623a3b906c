//! Ranges installed in two halves at once (a fault-back window, a run of `prefetch(Host)`),
//! counted exactly.
//!
//! Alone in their binary, and one at a time within it (`ALONE`), on purpose: one userfaultfd
//! and one fault-handler assistant serve the whole process.
//! - While an event of any other thread's `munmap`/`madvise` of registered memory is unread
//!   the kernel refuses `UFFDIO_COPY` with `EAGAIN`. A refused half is left on the device (the
//!   fault is retried; the faulting thread may already be awake), so a test beside others that
//!   free buffers could not assert which pages one fault brought back.
//! - A bulk move home hands its upper half to the assistant only when the assistant is free
//!   (`Assist::try_post`: nobody waits for it); beside tests that fault on large windows it is
//!   often taken, and the move is done whole on one thread, correctly but not split (failed a
//!   CI run in tests/adaptive.rs).
//!
//! tests/adaptive.rs races the split against discards and threads instead, asserting only what
//! holds under that.

mod common;

use common::{groups, pattern};
use vkhmm::{shaders, Location, Push};

/// Held by each test for its whole run: the tests of this binary must not overlap either.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn large_windows_are_installed_in_two_halves_exactly() {
    let _alone = ALONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let two_cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
    for parallel in [true, false] {
        for path in common::PATHS {
            let Some(rt) = common::runtime_with(
                vkhmm::Runtime::builder()
                    .transfer(path)
                    .chunk_size(2 << 20)
                    .fixed_chunks(true)
                    .parallel_fault_back(parallel),
            ) else {
                return;
            };
            let add = rt.kernel_wgsl(shaders::ADD_K_WGSL, "main").unwrap();
            let len = 8 << 20;
            let src: Vec<u32> = (0..len / 4).map(|i| pattern(i, 3)).collect();
            let mut v = rt.alloc_from(&src).unwrap();
            rt.prefetch(&v, Location::Device).unwrap();
            // The first 2 MiB-aligned window inside the buffer: one fault brings it back, the
            // lower 256 pages by the handler, the upper 256 by its assistant.
            let base = v.as_ptr() as usize;
            let window = (base.next_multiple_of(2 << 20) - base) / 4; // in u32s
            let page = 1024; // u32s per page
            let before = rt.stats();
            // A write fault on a page of the upper half: that page is installed writable by
            // the assistant, the rest write-protected.
            let upper = window + 300 * page + 5;
            v[upper] = 7;
            let s = rt.stats() - before;
            let expect_split = u64::from(parallel && two_cpus);
            assert_eq!(s.parallel_installs, expect_split, "{path:?} {parallel}");
            assert_eq!(s.bytes_to_host, 2 << 20, "{path:?} {parallel}: one window");
            // Where chunks come home as the only copy (host pages kept for reuse, under
            // userfaultfd with UFFDIO_MOVE) every page is `Host`; else the written page alone
            // (the `signal` run of the suite covers that case).
            let r = rt.residency(&v[window..window + 512 * page]);
            let home = r.host == 512;
            if !home {
                assert_eq!(
                    (r.host, r.shared, r.device),
                    (1, 511, 0),
                    "{path:?} {parallel}"
                );
            }
            // Writes to write-protected pages of both halves: each lifts its own page (write
            // windows do not follow the copy chunk).
            let (lower, upper2) = (window + 10 * page, window + 400 * page + 9);
            v[lower] = 11;
            v[upper2] = 13;
            let r = rt.residency(&v[window..window + 512 * page]);
            let want = if home { (512, 0) } else { (3, 509) };
            assert_eq!((r.host, r.shared), want, "{path:?} {parallel}");
            // The device sees every write; the other windows come back whole.
            let n = v.len() as u32;
            rt.launch(&add, groups(v.len(), 64), (&mut *v, Push(&[n, 1u32])))
                .unwrap();
            let wrong = (0..v.len()).find(|&i| {
                let before = match i {
                    _ if i == upper => 7,
                    _ if i == lower => 11,
                    _ if i == upper2 => 13,
                    _ => src[i],
                };
                v[i] != before.wrapping_add(1)
            });
            assert_eq!(wrong, None, "{path:?} {parallel}");
        }
    }
}

#[test]
fn prefetch_home_in_two_halves_is_exact() {
    let _alone = ALONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let two_cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
    for parallel in [true, false] {
        common::each_runtime(
            &common::PATHS,
            |path| {
                vkhmm::Runtime::builder()
                    .transfer(path)
                    .parallel_fault_back(parallel)
            },
            |rt, path| {
                let add = rt.kernel_wgsl(shaders::ADD_K_WGSL, "main").unwrap();
                let words = (8 << 20) / 4;
                let src: Vec<u32> = (0..words).map(|i| pattern(i, 5)).collect();
                let mut v = rt.alloc_from(&src).unwrap();
                rt.prefetch(&v, Location::Device).unwrap();
                let before = rt.stats();
                // One run of 2048 device pages: the launcher installs the lower half, the
                // fault handler's assistant the upper one.
                rt.prefetch(&v, Location::Host).unwrap();
                let s = rt.stats() - before;
                assert_eq!(s.bytes_to_host, 8 << 20, "{path:?} {parallel}");
                assert_eq!(s.cpu_faults, 0, "{path:?} {parallel}");
                if parallel && two_cpus {
                    assert!(s.parallel_installs >= 1, "{path:?}: not split");
                } else {
                    assert_eq!(s.parallel_installs, 0, "{path:?}");
                }
                let r = rt.residency(&v[..]);
                assert_eq!((r.shared, r.device), (2048, 0), "{path:?} {parallel}");
                // Reads fault nothing; a write to the upper half is caught (write-protected)
                // and reaches the device.
                assert!(
                    v.iter().zip(&src).all(|(a, b)| a == b),
                    "{path:?} {parallel}"
                );
                let at = 3 * words / 4 + 3;
                v[at] = 17;
                let n = v.len() as u32;
                rt.launch(&add, groups(v.len(), 64), (&mut *v, Push(&[n, 1u32])))
                    .unwrap();
                let wrong =
                    (0..words).find(|&i| v[i] != if i == at { 17 } else { src[i] }.wrapping_add(1));
                assert_eq!(wrong, None, "{path:?} {parallel}");
            },
        );
    }
}
