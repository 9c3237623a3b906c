//! Chunks brought home into host pages kept for reuse (under userfaultfd with
//! `UFFDIO_MOVE`): such a chunk arrives writable and comes home `Host`, so a CPU write racing
//! the read that brings it home must reach the next kernel, and a chunk read home goes to
//! the device again exactly as its `Host` pages say.
//!
//! Runs under both fault backends (`.ci/test` runs this binary again with
//! `VKHMM_FAULT=signal`, where no pages are kept and chunks come home `Shared`), on
//! runtime-allocated memory.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};

use common::{add_to_each, each_path, each_runtime, fill_3i_plus_1, groups, kernels, PATHS};
use vkhmm::{Push, Runtime};

const PAGE: usize = 4096;
/// Elements per page.
const EPP: usize = PAGE / 4;

#[test]
fn writes_racing_a_sequential_read_home_reach_the_next_kernel() {
    // No settling on the host: every round migrates again.
    let builder = |path| Runtime::builder().transfer(path).thrash_detection(false);
    each_runtime(&PATHS, builder, |rt, path| {
        let k = kernels(rt);
        let pages = 4096; // 16 MiB: chunks grow to 2 MiB and are read ahead
        let mut v = rt.alloc::<u32>(pages * EPP).unwrap();
        for round in 0..3u32 {
            fill_3i_plus_1(rt, &k, &mut v);
            assert_eq!(rt.residency(&v).device, pages, "{path:?} round {round}");
            let marker = |j: usize| 0xF000_0000 | (round << 20) | j as u32;
            // One thread reads the buffer from the start; another writes one word on every
            // 7th page from the end, so that its writes meet chunks being placed.
            let words: &[AtomicU32] = {
                let p = v.as_mut_ptr().cast::<AtomicU32>();
                // SAFETY: `AtomicU32` has the layout of `u32`; the view lives in this scope,
                // while `v` is not otherwise used.
                unsafe { std::slice::from_raw_parts(p, v.len()) }
            };
            let written: Vec<usize> = (0..pages).rev().step_by(7).collect();
            let sum = std::thread::scope(|s| {
                let reader = s.spawn(|| {
                    (0..words.len())
                        .step_by(EPP / 4)
                        .map(|i| u64::from(words[i].load(Ordering::Relaxed)))
                        .sum::<u64>()
                });
                for &j in &written {
                    words[j * EPP + 5].store(marker(j), Ordering::Relaxed);
                }
                reader.join().unwrap()
            });
            assert!(sum > 0, "{path:?}");
            add_to_each(rt, &k, &mut v, 2);
            let expect = |i: usize| {
                let (j, w) = (i / EPP, i % EPP);
                let base = if w == 5 && (pages - 1 - j).is_multiple_of(7) {
                    marker(j)
                } else {
                    i as u32 * 3 + 1
                };
                base.wrapping_add(2)
            };
            let wrong = (0..v.len()).find(|&i| v[i] != expect(i));
            assert_eq!(wrong, None, "{path:?} round {round}");
        }
    });
}

#[test]
fn a_chunk_read_home_goes_again_as_its_host_pages_say() {
    each_path(|rt, path| {
        let k = kernels(rt);
        let pages = 2048;
        let mut v = rt.alloc::<u32>(pages * EPP).unwrap();
        fill_3i_plus_1(rt, &k, &mut v);
        // Read all of it (sequential chunks of 64 KiB and more).
        let ok = (0..v.len()).all(|i| v[i] == i as u32 * 3 + 1);
        assert!(ok, "{path:?}");
        let r = rt.residency(&v);
        assert_eq!((r.device, r.host + r.shared), (0, pages), "{path:?}");
        if common::signal_backend() {
            assert_eq!(r.shared, pages, "{path:?}: no kept pages: Shared");
        }
        let before = rt.stats();
        add_to_each(rt, &k, &mut v, 1);
        let d = rt.stats() - before;
        assert_eq!(d.bytes_to_device, (r.host * PAGE) as u64, "{path:?}: {d}");
        let ok = (0..v.len()).all(|i| v[i] == i as u32 * 3 + 2);
        assert!(ok, "{path:?}");
    });
}

#[test]
fn read_mostly_advice_keeps_chunks_read_home_shared() {
    each_path(|rt, path| {
        let k = kernels(rt);
        let pages = 2048;
        let mut v = rt.alloc::<u32>(pages * EPP).unwrap();
        rt.advise(&v[..], vkhmm::Advice::ReadMostly).unwrap();
        fill_3i_plus_1(rt, &k, &mut v);
        let ok = (0..v.len()).all(|i| v[i] == i as u32 * 3 + 1);
        assert!(ok, "{path:?}");
        let r = rt.residency(&v);
        assert_eq!(
            (r.shared, r.device),
            (pages, 0),
            "{path:?}: duplicates kept"
        );
        let before = rt.stats();
        add_to_each(rt, &k, &mut v, 1);
        let d = rt.stats() - before;
        assert_eq!(d.bytes_to_device, 0, "{path:?}: nothing to upload: {d}");
        let ok = (0..v.len()).all(|i| v[i] == i as u32 * 3 + 2);
        assert!(ok, "{path:?}");

        // Advice given while the buffer's pages are on the device applies to its next read.
        let mut w = rt.alloc::<u32>(pages * EPP).unwrap();
        fill_3i_plus_1(rt, &k, &mut w);
        rt.advise(&w[..], vkhmm::Advice::ReadMostly).unwrap();
        assert!((0..w.len()).all(|i| w[i] == i as u32 * 3 + 1), "{path:?}");
        let r = rt.residency(&w);
        assert_eq!((r.shared, r.device), (pages, 0), "{path:?}: advised late");
    });
}

/// Whether this machine has swap (`/proc/swaps` lists a device or file).
fn swap_on() -> bool {
    std::fs::read_to_string("/proc/swaps").is_ok_and(|s| s.lines().count() > 1)
}

#[test]
fn write_protected_pages_swapped_out_before_a_launch_drops_them_come_back() {
    // A `Shared` (write-protected) page swapped out moves into the kept pages as a swap entry
    // that keeps its protection; copying into it later must not fault into the handler.
    if !swap_on() {
        eprintln!("not run: no swap on this machine");
        return;
    }
    each_path(|rt, path| {
        let k = kernels(rt);
        let pages = 1024;
        let mut v = rt.alloc::<u32>(pages * EPP).unwrap();
        let mut out = rt.alloc::<u32>(pages * EPP).unwrap();
        for round in 0..3u32 {
            v.iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = i as u32 ^ round);
            // A kernel reads `v`: its pages become `Shared`, write-protected.
            let n = v.len() as u32;
            rt.launch(
                &k.copy,
                groups(v.len(), 256),
                (&v[..], &mut out[..], Push(&common::push::N { n })),
            )
            .unwrap();
            // SAFETY: advice on our own allocation; paging out changes no contents.
            let r =
                unsafe { libc::madvise(v.as_mut_ptr().cast(), v.len() * 4, libc::MADV_PAGEOUT) };
            assert_eq!(r, 0, "{path:?}");
            // A kernel writes `v`: its host pages are dropped (kept for reuse).
            fill_3i_plus_1(rt, &k, &mut v);
            // The CPU reads it all: chunks come home through the kept pages.
            let ok = (0..v.len()).all(|i| v[i] == i as u32 * 3 + 1);
            assert!(ok, "{path:?} round {round}");
        }
    });
}
