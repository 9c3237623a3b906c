//! `Advice::AccessInPlace`: the device reads and writes host pages where they are
//! (VK_EXT_external_memory_host, which lavapipe has). Zero bytes moved, every page `Host`,
//! exact results; clear errors for memory it cannot take; back to migration on `Unset` or
//! when the pages go away.

mod common;

use common::push::{AddK, N};
use common::{groups, map_anon, pattern};
use vkhmm::{shaders, Advice, Error, Location, MemoryReason, Push, Runtime};

const PAGES: usize = 64;
const WORDS: usize = PAGES * 4096 / 4;

fn holds(v: &[u32], f: impl Fn(usize) -> u32) -> bool {
    v.iter().enumerate().all(|(i, &x)| x == f(i))
}

fn copy(rt: &Runtime, src: &[u32], dst: &mut [u32]) -> vkhmm::Result<()> {
    let k = rt.kernel_wgsl(shaders::COPY_U32_WGSL, "main").unwrap();
    let n = N {
        n: src.len() as u32,
    };
    rt.launch(&k, groups(src.len(), 256), (src, dst, Push(&n)))
}

fn add(rt: &Runtime, v: &mut [u32], k: u32) -> vkhmm::Result<()> {
    let kernel = rt.kernel_wgsl(shaders::ADD_K_WGSL, "main").unwrap();
    let p = AddK {
        n: v.len() as u32,
        k,
    };
    rt.launch(&kernel, groups(v.len(), 64), (v, Push(&p)))
}

fn moved(s: &vkhmm::Stats) -> u64 {
    s.bytes_to_device + s.bytes_to_host + s.bytes_zero_filled
}

#[test]
fn kernels_read_and_write_in_place_and_nothing_moves() {
    common::each_path(|rt, path| {
        let mut src = rt.alloc::<u32>(WORDS).unwrap();
        let mut dst = rt.alloc::<u32>(WORDS).unwrap();
        src.iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = pattern(i, 1));
        dst.iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = pattern(i, 7));
        rt.advise(&src[..], Advice::AccessInPlace).unwrap();
        rt.advise(&dst[..], Advice::AccessInPlace).unwrap();
        let before = rt.stats();
        copy(rt, &src, &mut dst).unwrap();
        add(rt, &mut dst, 5).unwrap();
        assert!(holds(&dst, |i| pattern(i, 1).wrapping_add(5)), "{path:?}");
        // The CPU writes, the kernel sees it at once; and the other way round.
        src.iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = pattern(i, 3));
        copy(rt, &src, &mut dst).unwrap();
        assert!(holds(&dst, |i| pattern(i, 3)), "{path:?}");
        let s = rt.stats() - before;
        assert_eq!(moved(&s), 0, "{path:?}: {s:?}");
        assert_eq!(s.cpu_faults, 0, "{path:?}: {s:?}");
        assert_eq!(s.launches, 3, "{path:?}");
        assert_eq!(rt.residency(&dst[..]).host, PAGES, "{path:?}");
        assert_eq!(rt.residency(&src[..]).host, PAGES, "{path:?}");
        // A prefetch to the device of memory accessed in place has nothing to do.
        rt.prefetch(&dst[..], Location::Device).unwrap();
        assert_eq!(rt.residency(&dst[..]).host, PAGES, "{path:?}");
        assert_eq!(rt.stats().device_bytes_in_use, 0, "{path:?}");
    });
}

#[test]
fn advice_on_device_resident_data_brings_it_home_first() {
    common::each_path(|rt, path| {
        let mut v = rt.alloc::<u32>(WORDS).unwrap();
        v.iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = pattern(i, 2));
        add(rt, &mut v, 1).unwrap(); // migrated: `Device`
        assert_eq!(rt.residency(&v[..]).device, PAGES, "{path:?}");
        rt.advise(&v[..], Advice::AccessInPlace).unwrap();
        assert_eq!(rt.residency(&v[..]).host, PAGES, "{path:?}");
        assert_eq!(
            rt.stats().device_bytes_in_use,
            0,
            "{path:?}: the extent was not freed"
        );
        let before = rt.stats();
        add(rt, &mut v, 1).unwrap();
        assert!(holds(&v, |i| pattern(i, 2).wrapping_add(2)), "{path:?}");
        assert_eq!(moved(&(rt.stats() - before)), 0, "{path:?}");
    });
}

#[test]
fn unset_goes_back_to_migration() {
    common::each_path(|rt, path| {
        let mut v = rt.alloc::<u32>(WORDS).unwrap();
        v.iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = pattern(i, 4));
        rt.advise(&v[..], Advice::AccessInPlace).unwrap();
        add(rt, &mut v, 1).unwrap();
        for next in [Advice::Unset, Advice::ReadMostly] {
            rt.advise(&v[..], next).unwrap();
            let before = rt.stats();
            add(rt, &mut v, 1).unwrap();
            let s = rt.stats() - before;
            assert!(
                s.bytes_to_device > 0,
                "{path:?} {next:?}: nothing migrated: {s:?}"
            );
            assert_eq!(rt.residency(&v[..]).device, PAGES, "{path:?} {next:?}");
            rt.advise(&v[..], Advice::AccessInPlace).unwrap();
        }
        assert!(holds(&v, |i| pattern(i, 4).wrapping_add(3)), "{path:?}");
    });
}

#[test]
fn memory_it_cannot_take_gives_typed_errors_and_stays_intact() {
    common::each_path_foreign(|rt, path| {
        // A heap `Vec`: not page-aligned.
        let mut v: Vec<u32> = (0..WORDS + 3).map(|i| pattern(i, 5)).collect();
        let start = if (v.as_ptr() as usize).is_multiple_of(4096) {
            1
        } else {
            0
        };
        let got = rt.advise(&v[start..], Advice::AccessInPlace);
        assert!(
            matches!(
                got,
                Err(Error::UnsupportedMemory {
                    reason: MemoryReason::ImportAlignment { .. },
                    ..
                })
            ),
            "{path:?}: {got:?}"
        );
        add(rt, &mut v, 1).unwrap(); // still an ordinary buffer
        assert!(holds(&v, |i| pattern(i, 5).wrapping_add(1)), "{path:?}");

        // A binding that lies partly in an in-place range.
        let len = 2 * PAGES * 4096;
        let p = map_anon(len);
        // SAFETY: `len` bytes of a fresh mapping, ours alone until unmapped below.
        let all = unsafe { std::slice::from_raw_parts_mut(p as *mut u32, len / 4) };
        all.iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = pattern(i, 6));
        rt.advise(&all[..WORDS], Advice::AccessInPlace).unwrap();
        let got = add(rt, &mut all[WORDS / 2..], 1);
        assert!(
            matches!(
                got,
                Err(Error::UnsupportedMemory {
                    reason: MemoryReason::PartlyInPlace,
                    ..
                })
            ),
            "{path:?}: {got:?}"
        );
        assert!(
            holds(all, |i| pattern(i, 6)),
            "{path:?}: a refused launch changed data"
        );
        // Each half on its own works: one in place, one migrated.
        let before = rt.stats();
        add(rt, &mut all[..WORDS], 1).unwrap();
        assert_eq!(moved(&(rt.stats() - before)), 0, "{path:?}");
        add(rt, &mut all[WORDS..], 2).unwrap();
        assert!(
            rt.stats().bytes_to_device > before.bytes_to_device,
            "{path:?}"
        );
        assert!(
            holds(all, |i| pattern(i, 6).wrapping_add(if i < WORDS {
                1
            } else {
                2
            })),
            "{path:?}"
        );
        // SAFETY: `all` is not used after this.
        assert_eq!(unsafe { libc::munmap(p, len) }, 0);
    });
}

#[test]
fn unmapped_in_place_memory_is_forgotten() {
    common::each_path_foreign(|rt, path| {
        let len = PAGES * 4096;
        for discard in [false, true] {
            let p = map_anon(len);
            // SAFETY: a fresh mapping of `len` bytes, ours until unmapped.
            let v = unsafe { std::slice::from_raw_parts_mut(p as *mut u32, WORDS) };
            v.iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = pattern(i, 8));
            rt.advise(&v[..], Advice::AccessInPlace).unwrap();
            add(rt, v, 1).unwrap();
            let q = if discard {
                // SAFETY: our own mapping; its pages read as zero afterwards.
                assert_eq!(unsafe { libc::madvise(p, len, libc::MADV_DONTNEED) }, 0);
                p
            } else {
                // SAFETY: replaces our own mapping with fresh memory in one step (an unmap of
                // it, for the runtime); `v` is not used again. (An munmap and a second mmap
                // would leave the address free in between, for another test's allocation.)
                let q = unsafe {
                    libc::mmap(
                        p,
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                        -1,
                        0,
                    )
                };
                assert_eq!(q, p);
                q
            };
            // SAFETY: the (new) mapping of `len` bytes at `q`.
            let v = unsafe { std::slice::from_raw_parts_mut(q as *mut u32, WORDS) };
            assert!(v.iter().all(|&x| x == 0), "{path:?} discard {discard}");
            v.iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = pattern(i, 9));
            let before = rt.stats();
            add(rt, v, 1).unwrap();
            // The import is gone: the new memory is migrated like any other.
            assert!(
                rt.stats().bytes_to_device > before.bytes_to_device,
                "{path:?} discard {discard}: still in place"
            );
            assert!(
                holds(v, |i| pattern(i, 9).wrapping_add(1)),
                "{path:?} discard {discard}"
            );
            // SAFETY: `v` is not used after this.
            assert_eq!(unsafe { libc::munmap(q, len) }, 0);
        }
    });
}

/// Launch, then read every element on the CPU, `rounds` times; returns the stats of each
/// round.
fn ping_pong(rt: &Runtime, v: &mut [u32], rounds: u32, seed: u32) -> Vec<vkhmm::Stats> {
    (1..=rounds)
        .map(|r| {
            let before = rt.stats();
            add(rt, v, 1).unwrap();
            assert!(holds(v, |i| pattern(i, seed).wrapping_add(r)), "round {r}");
            rt.stats() - before
        })
        .collect()
}

#[test]
fn a_buffer_that_thrashes_is_settled_in_place() {
    common::each_path(|rt, path| {
        let mut v = rt.alloc::<u32>(WORDS).unwrap();
        v.iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = pattern(i, 10));
        let rounds = ping_pong(rt, &mut v, 12, 10);
        let settled: u64 = rounds.iter().map(|s| s.thrash_settled).sum();
        assert_eq!(settled, 1, "{path:?}: {rounds:?}");
        // The first rounds migrate and fault back; once settled, nothing moves.
        assert!(
            rounds[0].bytes_to_device > 0 && rounds[0].cpu_faults > 0,
            "{path:?}"
        );
        let last = rounds.last().unwrap();
        assert_eq!((moved(last), last.cpu_faults), (0, 0), "{path:?}: {last:?}");
        assert_eq!(rt.residency(&v[..]).host, PAGES, "{path:?}");
    });
}

#[test]
fn thrashing_that_cannot_be_settled_keeps_migrating() {
    common::each_path_foreign(|rt, path| {
        // Memory that is not page-aligned cannot be imported, so it stays migrated. (A heap
        // `Vec` of this size is rarely page-aligned, but can be: start 16 bytes in then, as
        // far as a binding's alignment allows.)
        let mut heap: Vec<u32> = vec![0; WORDS + 4];
        let skip = 4 * usize::from((heap.as_ptr() as usize).is_multiple_of(4096));
        let v = &mut heap[skip..skip + WORDS];
        v.iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = pattern(i, 11));
        let rounds = ping_pong(rt, v, 8, 11);
        assert!(rounds.iter().all(|s| s.thrash_settled == 0), "{path:?}");
        assert!(
            rounds.iter().all(|s| s.bytes_to_device > 0),
            "{path:?}: {rounds:?}"
        );
    });
    // Detection off: a page-aligned buffer keeps migrating too.
    for path in common::PATHS {
        let Some(rt) =
            common::runtime_with(Runtime::builder().transfer(path).thrash_detection(false))
        else {
            return;
        };
        let mut v = rt.alloc::<u32>(WORDS).unwrap();
        v.iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = pattern(i, 12));
        let rounds = ping_pong(&rt, &mut v, 8, 12);
        assert!(rounds.iter().all(|s| s.thrash_settled == 0), "{path:?}");
        assert!(
            rounds.iter().all(|s| s.cpu_faults > 0),
            "{path:?}: {rounds:?}"
        );
    }
}
