//! Fault-back policy: chunks grow on sequential reads and stay small on random ones;
//! transparent huge pages migrate and come back correctly.

mod common;

use common::{groups, pattern};
use vkhmm::{shaders, Location, Push};

const CHUNK: usize = 64 * 1024;

#[test]
fn sequential_reads_grow_the_chunk_and_random_reads_do_not() {
    for path in common::PATHS {
        let Some(rt) = common::runtime(path) else {
            return;
        };
        let len = 16 << 20; // 16 MiB: 256 base chunks
        let src: Vec<u32> = (0..len / 4).map(|i| pattern(i, 1)).collect();
        let mut v = rt.alloc_from(&src).unwrap();

        rt.prefetch(&v, Location::Device).unwrap();
        let before = rt.stats();
        assert!(
            (0..v.len()).step_by(1024).all(|i| v[i] == src[i]),
            "{path:?}"
        );
        let seq = rt.stats() - before;
        // Doubling from 64 KiB to 2 MiB takes 6 faults, then 2 MiB per fault: about 12, against
        // 256 at a fixed 64 KiB (a retried chunk may restart the doubling).
        assert!(
            seq.cpu_faults <= 32,
            "{path:?}: sequential read took {} faults",
            seq.cpu_faults
        );
        assert_eq!(seq.bytes_to_host, len as u64, "{path:?}");

        rt.prefetch(&v, Location::Device).unwrap();
        let before = rt.stats();
        // Every 7th chunk, backwards: no two touches are sequential.
        let touched: Vec<usize> = (0..len / CHUNK).rev().step_by(7).collect();
        for &c in &touched {
            let i = c * CHUNK / 4 + 100;
            assert_eq!(v[i], src[i], "{path:?}");
        }
        let random = rt.stats() - before;
        assert_eq!(
            random.cpu_faults,
            touched.len() as u64,
            "{path:?}: one fault per chunk"
        );
        assert!(
            random.bytes_to_host <= (touched.len() * CHUNK) as u64,
            "{path:?}: {random}"
        );
        v[0] = 1;
    }
}

#[test]
fn two_halves_read_side_by_side_each_grow_their_chunks() {
    for path in common::PATHS {
        let Some(rt) = common::runtime(path) else {
            return;
        };
        // One buffer, so one extent: a loop over two halves in step (as `x.iter().zip(&y)`
        // over two buffers that lie next to each other) is two streams in it.
        let half = 4 << 20; // words: 16 MiB each
        let src: Vec<u32> = (0..2 * half).map(|i| pattern(i, 3)).collect();
        let v = rt.alloc_from(&src).unwrap();
        rt.prefetch(&v, Location::Device).unwrap();
        let before = rt.stats();
        let wrong = (0..half)
            .step_by(1024)
            .find(|&i| v[i] != src[i] || v[half + i] != src[half + i]);
        assert_eq!(wrong, None, "{path:?}");
        let d = rt.stats() - before;
        // Each half alone: about 12 faults (see above); one stream between them would
        // restart at a page per fault, thousands.
        assert!(
            d.cpu_faults <= 64,
            "{path:?}: two side-by-side reads took {} faults",
            d.cpu_faults
        );
        assert_eq!(d.bytes_to_host, 2 * half as u64 * 4, "{path:?}");
        drop(v);
    }
}

#[test]
fn transparent_huge_pages_migrate_and_come_back() {
    common::each_path_foreign(|rt, path| {
        let add = rt.kernel_wgsl(shaders::ADD_K_WGSL, "main").unwrap();
        let len = 8 << 20;
        let p = common::map_anon(len);
        // SAFETY: our own mapping; asking for huge pages changes no contents.
        assert_eq!(unsafe { libc::madvise(p, len, libc::MADV_HUGEPAGE) }, 0);
        // SAFETY: `len` mapped, readable and writable bytes, page-aligned.
        let v = unsafe { std::slice::from_raw_parts_mut(p.cast::<u32>(), len / 4) };
        for (i, x) in v.iter_mut().enumerate() {
            *x = pattern(i, 2);
        }
        for round in 1..=3u32 {
            let push = [v.len() as u32, 1u32];
            rt.launch(&add, groups(v.len(), 64), (&mut *v, Push(&push)))
                .unwrap();
            let ok = (0..v.len()).all(|i| v[i] == pattern(i, 2).wrapping_add(round));
            assert!(ok, "{path:?}: round {round}");
        }
        // SAFETY: `v` is not used after this.
        assert_eq!(unsafe { libc::munmap(p, len) }, 0);
    });
}

#[test]
fn a_stream_of_full_windows_is_read_ahead() {
    common::each_path(|rt, path| {
        let len = 64 << 20; // 32 windows of 2 MiB once the chunk has grown
        let src: Vec<u32> = (0..len / 4).map(|i| pattern(i, 2)).collect();
        let v = rt.alloc_from(&src).unwrap();
        rt.prefetch(&v, Location::Device).unwrap();
        let before = rt.stats();
        // One load per page, in order, as a streaming reader does.
        assert!(
            (0..v.len()).step_by(1024).all(|i| v[i] == src[i]),
            "{path:?}"
        );
        let s = rt.stats() - before;
        // 6 faults grow the chunk to 2 MiB, then one per 2 MiB window: 37 without read-ahead.
        // With it the handler installs the window after each one it faulted in, so at most
        // every other window faults: about 21 (a touch that lands while a window is being
        // read ahead can restart the stream, so a few more).
        // The count depends on scheduling (21-31 seen), so it is reported, not asserted.
        eprintln!("{path:?}: {} faults for 64 MiB", s.cpu_faults);
        assert!(s.cpu_faults <= 40, "{path:?}: {} faults", s.cpu_faults);
        assert_eq!(
            s.bytes_to_host, len as u64,
            "{path:?}: read-ahead copied past the buffer"
        );
        // Read ahead like a read fault: home, none left on the device (`Shared`, or `Host`
        // where a chunk was placed from host pages kept for reuse).
        let r = rt.residency(&v[..]);
        assert_eq!((r.device, r.pages()), (0, len / 4096), "{path:?}");
        assert!(v.iter().zip(&src).all(|(a, b)| a == b), "{path:?}");
    });
}

#[test]
fn a_discard_racing_split_windows_reads_old_or_zero() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // A sequential reader pulls 2 MiB windows back (installed in halves by the handler and
    // its assistant) while another thread `MADV_DONTNEED`s the middle of the buffer at a
    // different point of the stream each round: every load sees the data or zero, never
    // anything else, and once the discard returned its range reads zero.
    common::each_path_foreign(|rt, path| {
        let len = 8 << 20;
        let words = len / 4;
        let page = 1024; // u32s per page
        let (lo, hi) = (words / 4, 3 * words / 4);
        let before = rt.stats();
        for round in 0..16usize {
            let p = common::map_anon(len);
            // SAFETY: `len` mapped, readable and writable bytes, page-aligned, ours alone
            // until the munmap below.
            let v = unsafe { std::slice::from_raw_parts_mut(p.cast::<u32>(), words) };
            let want = |i: usize| pattern(i, 4) | 1; // never zero
            for (i, x) in v.iter_mut().enumerate() {
                *x = want(i);
            }
            rt.prefetch(v, Location::Device).unwrap();
            let progress = AtomicUsize::new(0);
            let at = round * (words / page) / 16; // the page the discard waits for
            let v = &*v;
            std::thread::scope(|s| {
                let reader = s.spawn(|| {
                    let mut bad = None;
                    for (n, i) in (0..words).step_by(page).enumerate() {
                        let x = v[i];
                        if x != want(i) && x != 0 && bad.is_none() {
                            bad = Some((i, x));
                        }
                        progress.store(n, Ordering::Relaxed);
                    }
                    bad
                });
                while progress.load(Ordering::Relaxed) < at && !reader.is_finished() {
                    std::hint::spin_loop();
                }
                // SAFETY: the middle half of our own mapping; the reader only loads, and a
                // discarded page reads zero, a valid u32.
                let r = unsafe {
                    libc::madvise(
                        p.cast::<u8>().add(lo * 4).cast(),
                        (hi - lo) * 4,
                        libc::MADV_DONTNEED,
                    )
                };
                assert_eq!(r, 0);
                let bad = reader.join().unwrap();
                assert_eq!(
                    bad, None,
                    "{path:?} round {round}: a load saw neither data nor zero"
                );
            });
            let wrong =
                (0..words).find(|&i| v[i] != if (lo..hi).contains(&i) { 0 } else { want(i) });
            assert_eq!(wrong, None, "{path:?} round {round}");
            // SAFETY: `v` is not used after this.
            assert_eq!(unsafe { libc::munmap(p, len) }, 0);
        }
        let s = rt.stats() - before;
        eprintln!("{path:?}: {s}, {} windows in halves", s.parallel_installs);
        if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
            assert!(s.parallel_installs > 0, "{path:?}: no window was split");
        }
    });
}

#[test]
fn threads_faulting_across_both_halves_of_windows_lose_nothing() {
    use std::sync::atomic::{AtomicU32, Ordering};
    // Four threads fault on the same 2 MiB windows at once — some on pages the handler
    // installs, some on pages its assistant installs, some while both halves are in flight —
    // each writing its own words; between rounds a kernel adds 1 to every word and the buffer
    // goes back to the device. Every word must end exactly as counted.
    const THREADS: usize = 4;
    const ROUNDS: u32 = 12;
    common::each_runtime(
        &common::PATHS,
        |path| {
            vkhmm::Runtime::builder()
                .transfer(path)
                .chunk_size(2 << 20)
                .fixed_chunks(true)
                .thrash_detection(false)
        },
        |rt, path| {
            let add = rt.kernel_wgsl(shaders::ADD_K_WGSL, "main").unwrap();
            let words = (16 << 20) / 4;
            let page = 1024;
            let mut m = rt.alloc::<u32>(words).unwrap();
            m.iter_mut().for_each(|x| *x = 0);
            let before = rt.stats();
            for round in 0..ROUNDS {
                rt.prefetch(&m, Location::Device).unwrap();
                {
                    // SAFETY: the threads below only touch the buffer through these atomics
                    // (same size and alignment as u32) while no kernel runs on it.
                    let cells = unsafe {
                        std::slice::from_raw_parts(m.as_ptr().cast::<AtomicU32>(), words)
                    };
                    std::thread::scope(|s| {
                        for t in 0..THREADS {
                            s.spawn(move || {
                                // Pages in a scattered order, the same set for every thread,
                                // so threads meet in the same windows; word `t` of each page
                                // is this thread's.
                                let pages = words / page;
                                for k in 0..pages {
                                    let p = (k * 97 + round as usize * 31 + t * 7) % pages;
                                    cells[p * page + t].fetch_add(1, Ordering::Relaxed);
                                    let _ = cells[p * page + 512].load(Ordering::Relaxed);
                                }
                            });
                        }
                    });
                }
                let n = m.len() as u32;
                rt.launch(&add, groups(words, 64), (&mut *m, Push(&[n, 1u32])))
                    .unwrap();
            }
            // Word `t < THREADS` of every page: one CPU increment and one kernel add a round.
            let want = |i: usize| ROUNDS * if i % page < THREADS { 2 } else { 1 };
            let wrong = (0..words).find(|&i| m[i] != want(i));
            assert_eq!(wrong, None, "{path:?}");
            let s = rt.stats() - before;
            eprintln!("{path:?}: {s}, {} windows in halves", s.parallel_installs);
            if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
                assert!(s.parallel_installs > 0, "{path:?}: no window was split");
            }
        },
    );
}
