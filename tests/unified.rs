//! Unified memory end to end: page states, counters, edges, syscalls, fork, free/munmap.
//!
//! Every test runs on both transfer paths and checks exact patterns (element i holds a
//! function of i), so a stale, zero or misplaced page shows.

mod common;

use common::push::{AddK, Fill, N};

use common::{each_path, each_path_foreign, groups, kernels, pattern, Kernels};
use vkhmm::{Location, Push, Residency, Runtime};

const PAGE: usize = 4096;

fn fill(rt: &Runtime, k: &Kernels, out: &mut [u32], mul: u32, add: u32) {
    let n = out.len() as u32;
    rt.launch(
        &k.fill,
        groups(out.len(), 64),
        (out, Push(&Fill { n, mul, add })),
    )
    .unwrap();
}

fn add(rt: &Runtime, k: &Kernels, data: &mut [u32], by: u32) {
    let n = data.len() as u32;
    rt.launch(
        &k.add,
        groups(data.len(), 64),
        (data, Push(&AddK { n, k: by })),
    )
    .unwrap();
}

fn pages_of<T>(v: &[T]) -> usize {
    let a = v.as_ptr() as usize;
    let b = a + std::mem::size_of_val(v);
    (b.div_ceil(PAGE)) - a / PAGE
}

fn assert_pattern(v: &[u32], f: impl Fn(usize) -> u32, what: &str) {
    if let Some(i) = (0..v.len()).find(|&i| v[i] != f(i)) {
        panic!("{what}: element {i} is {} but should be {}", v[i], f(i));
    }
}

#[test]
fn write_kernel_into_fresh_memory() {
    each_path_foreign(|rt, path| {
        let k = kernels(rt);
        let mut v = vec![0u32; 300_000];
        fill(rt, &k, &mut v, 3, 7);
        let r = rt.residency(&v);
        assert!(
            r.device >= pages_of(&v) - 2,
            "{path:?}: written pages end on the device: {r:?}"
        );
        assert_pattern(&v, |i| i as u32 * 3 + 7, &format!("{path:?}"));

        // Fresh mappings were never touched: nothing is copied, the device copy is zero-filled.
        let mut m = rt.alloc::<u32>(100_000).unwrap();
        let before = rt.stats();
        fill(rt, &k, &mut m, 1, 1);
        let d = rt.stats() - before;
        assert!(
            d.bytes_zero_filled >= 97 * PAGE as u64,
            "{path:?}: fresh pages zero-filled: {d}"
        );
        assert!(
            d.bytes_to_device <= PAGE as u64,
            "{path:?}: only the partial last page copied: {d}"
        );
        // Page-aligned start; the last, partial page is an edge and is copied through.
        assert!(
            rt.residency(&m).device >= pages_of(&m) - 1,
            "{path:?}: Managed is page-aligned"
        );
        assert_pattern(&m, |i| i as u32 + 1, &format!("{path:?} managed"));
    });
}

#[test]
fn read_kernel_over_untouched_zero_and_data_pages() {
    each_path_foreign(|rt, path| {
        let k = kernels(rt);
        let n = 64 * 1024;
        let mut src = vec![0u32; 3 * n]; // all three thirds start untouched
        src[n..2 * n].fill(0); // explicitly written zeros
        let tail = &mut src[2 * n..];
        for (i, x) in tail.iter_mut().enumerate() {
            *x = pattern(i, 5);
        }
        let mut dst = vec![1u32; 3 * n];
        let len = src.len() as u32;
        rt.launch(
            &k.copy,
            groups(3 * n, 256),
            (&src, &mut dst, Push(&N { n: len })),
        )
        .unwrap();
        assert_pattern(
            &dst,
            |i| if i < 2 * n { 0 } else { pattern(i - 2 * n, 5) },
            &format!("{path:?}"),
        );
        let r = rt.residency(&src);
        assert_eq!(r.device + r.host, pages_of(&src) - r.shared);
        assert!(
            r.shared >= 2 * n * 4 / PAGE - 2,
            "{path:?}: data pages are Shared: {r:?}"
        );
        assert_pattern(&src[2 * n..], |i| pattern(i, 5), &format!("{path:?} src"));
    });
}

#[test]
fn round_trips_with_fresh_and_reused_buffers() {
    each_path_foreign(|rt, path| {
        let k = kernels(rt);
        let n = 50_000;
        let mut reused: Vec<u32> = (0..n).map(|i| pattern(i, 1)).collect();
        for round in 0..10u32 {
            add(rt, &k, &mut reused, round + 1);
            let total: u32 = (1..=round + 1).sum();
            assert_pattern(
                &reused,
                |i| pattern(i, 1).wrapping_add(total),
                &format!("{path:?} reused round {round}"),
            );

            let mut fresh: Vec<u32> = (0..n + round as usize * 999)
                .map(|i| pattern(i, round))
                .collect();
            add(rt, &k, &mut fresh, 3);
            assert_pattern(
                &fresh,
                |i| pattern(i, round).wrapping_add(3),
                &format!("{path:?} fresh round {round}"),
            );
        }
    });
}

#[test]
fn mixed_residency_copies_only_what_the_cpu_changed() {
    for path in common::PATHS {
        // Fixed chunks: a sequential read would otherwise grow the chunk past the half.
        let Some(rt) = common::runtime_with(Runtime::builder().transfer(path).fixed_chunks(true))
        else {
            return;
        };
        let rt = &rt;
        let k = kernels(rt);
        let mut v = rt
            .alloc_from(&(0..256 * 1024).map(|i| pattern(i, 9)).collect::<Vec<u32>>())
            .unwrap();
        let pages = pages_of(&v);
        add(rt, &k, &mut v, 1);
        assert_eq!(
            rt.residency(&v),
            Residency {
                host: 0,
                shared: 0,
                device: pages
            }
        );

        // The CPU reads the first half: it comes back Shared (still valid on the device), or
        // Host where chunks are placed from host pages kept for reuse.
        let half = v.len() / 2;
        assert_pattern(
            &v[..half],
            |i| pattern(i, 9) + 1,
            &format!("{path:?} first half"),
        );
        // Chunks are aligned to 64 KiB of address space, so up to one chunk past the half
        // may come back too.
        let r = rt.residency(&v);
        let home = r.shared + r.host;
        assert!(
            home >= pages / 2 && home < pages / 2 + 16 && r.device == pages - home,
            "{path:?}: {r:?}"
        );
        let before = rt.stats();
        add(rt, &k, &mut v, 1);
        let d = rt.stats() - before;
        assert_eq!(
            d.bytes_to_device,
            (r.host * PAGE) as u64,
            "{path:?}: Shared pages are valid on the device, Host ones go again: {d}"
        );

        // The CPU writes the first half: those pages become Host and only they go again.
        for x in &mut v[..half] {
            *x += 10;
        }
        let r = rt.residency(&v);
        // Sequential writes lift protection in windows that grow ahead of the writer: the
        // last one may reach past the half, as far as the pages brought back.
        assert!(
            r.host >= pages / 2 && r.host <= 2 * (pages / 2),
            "{path:?}: {r:?}"
        );
        let before = rt.stats();
        add(rt, &k, &mut v, 1);
        let d = rt.stats() - before;
        assert_eq!(
            d.bytes_to_device,
            (r.host * PAGE) as u64,
            "{path:?}: only the written half: {d}"
        );
        assert_pattern(
            &v,
            |i| pattern(i, 9) + 3 + if i < half { 10 } else { 0 },
            &format!("{path:?} end"),
        );
    }
}

#[test]
fn read_only_binding_stays_readable_without_faults() {
    each_path(|rt, path| {
        let k = kernels(rt);
        let mut src = rt
            .alloc_from(&(0..128 * 1024).map(|i| pattern(i, 2)).collect::<Vec<u32>>())
            .unwrap();
        let pages = pages_of(&src);
        let mut sum = [0u32; 4];
        let n = src.len() as u32;
        rt.launch(
            &k.sum,
            groups(src.len(), 256),
            (&src, &mut sum, Push(&N { n })),
        )
        .unwrap();
        let expect = src.iter().fold(0u32, |a, &x| a.wrapping_add(x));
        assert_eq!(sum[0], expect, "{path:?}: checksum");
        assert_eq!(
            rt.residency(&src),
            Residency {
                host: 0,
                shared: pages,
                device: 0
            }
        );

        let before = rt.stats();
        assert_pattern(&src, |i| pattern(i, 2), &format!("{path:?} read back"));
        assert_eq!(
            (rt.stats() - before).cpu_faults,
            0,
            "{path:?}: Shared pages read freely"
        );

        // A CPU write moves the written chunk to Host and copies nothing back.
        let before = rt.stats();
        src[0] = 42;
        let last = src.len() - 1;
        src[last] = 43;
        let d = rt.stats() - before;
        assert_eq!(d.bytes_to_host, 0, "{path:?}: {d}");
        assert!(d.cpu_faults >= 1, "{path:?}: {d}");
        let r = rt.residency(&src);
        assert!(
            r.host >= 2 && r.host < pages && r.shared == pages - r.host,
            "{path:?}: {r:?}"
        );
        assert_eq!(src[0], 42);
        assert_pattern(
            &src[1..src.len() - 1],
            |i| pattern(i + 1, 2),
            &format!("{path:?} rest"),
        );
    });
}

/// Pages the program gives back with `MADV_FREE` may be reclaimed at any time (here at once,
/// with `MADV_PAGEOUT`); when they were `Shared`, a later read sees its data or zeros (what
/// the kernel allows) and never hangs. The kernel reports `MADV_FREE` as `REMOVE`.
#[test]
fn shared_pages_reclaimed_after_madv_free_read_back() {
    each_path_foreign(|rt, path| {
        let k = kernels(rt);
        let len = 1 << 20;
        let p = common::map_anon(len);
        // SAFETY: `len` mapped, readable and writable bytes.
        let v = unsafe { std::slice::from_raw_parts_mut(p.cast::<u32>(), len / 4) };
        for (i, x) in v.iter_mut().enumerate() {
            *x = pattern(i, 9);
        }
        let mut sum = [0u32; 4];
        let n = v.len() as u32;
        rt.launch(
            &k.sum,
            groups(v.len(), 256),
            (&*v, &mut sum, Push(&N { n })),
        )
        .unwrap();
        assert_eq!(rt.residency(v).shared, pages_of(v));
        // SAFETY: our own mapping; its contents may become zero, which the test allows.
        unsafe {
            assert_eq!(libc::madvise(p, len, libc::MADV_FREE), 0);
            // Reclaims lazily-freed pages now (no swap needed); a no-op on old kernels.
            libc::madvise(p, len, libc::MADV_PAGEOUT);
        }
        for (pg, words) in v.chunks(PAGE / 4).enumerate() {
            let first = pg * PAGE / 4;
            let kept = words
                .iter()
                .enumerate()
                .all(|(j, &x)| x == pattern(first + j, 9));
            assert!(
                kept || words.iter().all(|&x| x == 0),
                "{path:?}: page {pg} is neither its data nor zero"
            );
        }
        // SAFETY: `v` is not used after this.
        assert_eq!(unsafe { libc::munmap(p, len) }, 0);
    });
}

#[test]
fn one_copy_back_per_touched_chunk() {
    for path in common::PATHS {
        let Some(rt) = common::runtime_with(
            Runtime::builder()
                .transfer(path)
                .chunk_size(64 * 1024)
                .fixed_chunks(true),
        ) else {
            return;
        };
        let k = kernels(&rt);
        let chunk_elems = 64 * 1024 / 4;
        let chunks = 32;
        let mut v = rt.alloc::<u32>(chunks * chunk_elems).unwrap();
        fill(&rt, &k, &mut v, 1, 0);
        let before = rt.stats();
        // Touch every page of chunks 0, 2, 4, ... in order.
        let mut touched = 0;
        for c in (0..chunks).step_by(2) {
            for p in 0..16 {
                let i = c * chunk_elems + p * 1024;
                assert_eq!(v[i], i as u32, "{path:?}");
            }
            touched += 1;
        }
        let d = rt.stats() - before;
        assert_eq!(d.cpu_faults, touched, "{path:?}: one fault per chunk: {d}");
        assert_eq!(d.bytes_to_host, touched * 64 * 1024, "{path:?}: {d}");
        let r = rt.residency(&v);
        assert_eq!(
            (r.shared + r.host, r.device),
            (touched as usize * 16, (chunks - touched as usize) * 16)
        );
    }
}

#[test]
fn syscalls_read_into_and_write_out_of_device_resident_buffers() {
    use std::io::{Read, Seek, Write};
    if !vkhmm::diagnostics::probe_fault_capabilities().kernel_faults {
        eprintln!("skipped: this host allows user-mode userfaultfd faults only");
        return;
    }
    each_path_foreign(|rt, path| {
        let k = kernels(rt);
        let n = 200_000;
        let data: Vec<u32> = (0..n).map(|i| pattern(i, 77)).collect();
        let mut file = tempfile();
        file.write_all(bytemuck::cast_slice(&data)).unwrap();

        let mut v = vec![0u32; n];
        fill(rt, &k, &mut v, 1, 0); // device-resident now
        assert!(rt.residency(&v).device > 0);
        file.rewind().unwrap();
        file.read_exact(bytemuck::cast_slice_mut(&mut v)).unwrap(); // kernel-mode faults
        assert_pattern(&v, |i| pattern(i, 77), &format!("{path:?} read(2)"));

        add(rt, &k, &mut v, 5);
        let mut out = tempfile();
        out.write_all(bytemuck::cast_slice(&v)).unwrap(); // write(2) out of device pages
        out.rewind().unwrap();
        let mut back = vec![0u32; n];
        out.read_exact(bytemuck::cast_slice_mut(&mut back)).unwrap();
        assert_pattern(
            &back,
            |i| pattern(i, 77).wrapping_add(5),
            &format!("{path:?} write(2)"),
        );
    });
}

fn tempfile() -> std::fs::File {
    let path = std::env::temp_dir().join(format!(
        "vkhmm-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    f
}

#[test]
fn freed_and_unmapped_device_memory_is_dropped_and_reused_correctly() {
    each_path_foreign(|rt, path| {
        let k = kernels(rt);
        for round in 0..5u32 {
            // free(): the allocator may keep the pages (then they stay mirrored until evicted)
            // or unmap them; either way new memory there must read what it holds.
            let mut v = vec![0u32; 1 << 20];
            fill(rt, &k, &mut v, 1, round);
            drop(v);
            let w: Vec<u32> = (0..1 << 20).map(|i| pattern(i, round)).collect();
            assert_pattern(
                &w,
                |i| pattern(i, round),
                &format!("{path:?} fresh memory round {round}"),
            );
            let z = vec![0u32; 1 << 20];
            assert!(
                z.iter().all(|&x| x == 0),
                "{path:?}: calloc'd memory reads zero"
            );
        }
        let idle = rt.stats().device_bytes_in_use;
        for round in 0..5u32 {
            // munmap(): the mirror dies and its device memory is released.
            let len = 4 << 20;
            let p = common::map_anon(len);
            // SAFETY: the mapping is ours, readable and writable, `len` bytes, page-aligned.
            let v = unsafe { std::slice::from_raw_parts_mut(p.cast::<u32>(), len / 4) };
            fill(rt, &k, v, 1, round);
            // (Not `device_bytes_in_use > idle`: a retired extent the graveyard could not
            // free yet while other tests kept the handler busy may be freed by this launch.)
            assert_eq!(
                rt.residency(v).device,
                len / PAGE,
                "{path:?}: on the device"
            );
            assert_eq!(v[7], 7 + round);
            // SAFETY: `v` is not used after this.
            assert_eq!(unsafe { libc::munmap(p, len) }, 0);
            let q = common::map_anon(len);
            // SAFETY: as above.
            let w = unsafe { std::slice::from_raw_parts_mut(q.cast::<u32>(), len / 4) };
            assert!(
                w.iter().all(|&x| x == 0),
                "{path:?}: fresh mapping reads zero"
            );
            w[3] = 3;
            assert_eq!(w[3], 3);
            // SAFETY: `w` is not used after this.
            assert_eq!(unsafe { libc::munmap(q, len) }, 0);
            let in_use = rt.stats().device_bytes_in_use;
            assert!(
                in_use <= idle,
                "{path:?}: device memory released ({in_use} > {idle})"
            );
        }

        // madvise(DONTNEED) on device-resident memory: the range reads zero afterwards.
        let mut m = rt.alloc::<u32>(64 * 1024).unwrap();
        fill(rt, &k, &mut m, 1, 1);
        let quarter = m.len() / 4;
        let at = m[quarter..].as_ptr() as *mut libc::c_void;
        // SAFETY: a page-aligned range inside our own allocation; its contents are dropped.
        assert_eq!(
            // SAFETY: a page-aligned range inside our own allocation; its contents are dropped.
            unsafe { libc::madvise(at, quarter * 4, libc::MADV_DONTNEED) },
            0
        );
        assert_pattern(&m[..quarter], |i| i as u32 + 1, &format!("{path:?} kept"));
        assert!(
            m[quarter..2 * quarter].iter().all(|&x| x == 0),
            "{path:?}: discarded range reads zero"
        );
        assert_pattern(
            &m[2 * quarter..],
            |i| (i + 2 * quarter) as u32 + 1,
            &format!("{path:?} after"),
        );
        add(rt, &k, &mut m, 1);
        assert!(m[quarter..2 * quarter].iter().all(|&x| x == 1), "{path:?}");
    });
}

#[test]
fn runtime_drop_brings_everything_home() {
    for path in common::PATHS {
        let mut v = vec![0u32; 500_000];
        let mut m = {
            let Some(rt) = common::runtime(path) else {
                return;
            };
            if rt.fault_backend() == vkhmm::FaultBackend::Signal {
                common::assert_foreign_copied_through(&rt, path); // it needs foreign memory to migrate
                continue;
            }
            let k = kernels(&rt);
            fill(&rt, &k, &mut v, 5, 5);
            let mut m = rt.alloc::<u32>(10_000).unwrap();
            fill(&rt, &k, &mut m, 1, 0);
            m
        };
        assert_pattern(&v, |i| i as u32 * 5 + 5, &format!("{path:?} vec"));
        assert_pattern(&m, |i| i as u32, &format!("{path:?} managed"));
        m[0] = 9;
        v[1] = 9;
    }
}

#[test]
fn edges_shared_with_other_data_keep_working() {
    each_path_foreign(|rt, path| {
        let k = kernels(rt);
        let mut v: Vec<u32> = (0..50_000).map(|i| pattern(i, 3)).collect();
        // Bind an unaligned-by-page middle part: its edge pages hold data outside the binding.
        let (lo, hi) = (1000, 40_004);
        add(rt, &k, &mut v[lo..hi], 7);
        assert_pattern(
            &v,
            |i| pattern(i, 3).wrapping_add(if (lo..hi).contains(&i) { 7 } else { 0 }),
            &format!("{path:?}"),
        );
        v[lo - 1] = 1;
        v[hi] = 2;
        add(rt, &k, &mut v[lo..hi], 1);
        assert_eq!(
            (v[lo - 1], v[hi]),
            (1, 2),
            "{path:?}: neighbours keep their writes"
        );
        assert_eq!(v[lo], pattern(lo, 3).wrapping_add(8));
    });
}

#[test]
fn stack_memory_is_copied_through() {
    each_path(|rt, path| {
        let k = kernels(rt);
        // Bindings start 16-byte aligned (minStorageBufferOffsetAlignment), stack ones too.
        #[repr(align(16))]
        struct Aligned([u32; 1000]);
        let mut stack = Aligned([0u32; 1000]);
        let a = &mut stack.0;
        fill(rt, &k, a, 4, 0);
        assert_pattern(a, |i| i as u32 * 4, &format!("{path:?}"));
        assert_eq!(
            rt.residency(a),
            Residency {
                host: pages_of(a),
                shared: 0,
                device: 0
            }
        );
    });
}

#[test]
fn threads_touch_their_own_memory_while_another_launches() {
    each_path_foreign(|rt, path| {
        let k = kernels(rt);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..4u32)
                .map(|t| {
                    let stop = &stop;
                    s.spawn(move || {
                        let mut mine: Vec<u32> = (0..100_000).map(|i| pattern(i, t)).collect();
                        let mut rounds = 0u64;
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            for x in mine.iter_mut().step_by(97) {
                                *x = x.wrapping_add(1);
                            }
                            rounds += 1;
                            assert!(std::time::Instant::now() < deadline, "worker stalled");
                        }
                        (mine, rounds)
                    })
                })
                .collect();
            let mut others: Vec<Vec<u32>> = (0..3)
                .map(|j| (0..200_000).map(|i| pattern(i, 100 + j)).collect())
                .collect();
            for round in 0..10u32 {
                for (j, o) in others.iter_mut().enumerate() {
                    add(rt, &k, o, 1);
                    assert_eq!(
                        o[12345],
                        pattern(12345, 100 + j as u32).wrapping_add(round + 1),
                        "{path:?}"
                    );
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            for (t, w) in workers.into_iter().enumerate() {
                let (mine, rounds) = w.join().unwrap();
                let r = rounds as u32;
                for (i, &x) in mine.iter().enumerate() {
                    let bump = if i % 97 == 0 { r } else { 0 };
                    assert_eq!(
                        x,
                        pattern(i, t as u32).wrapping_add(bump),
                        "{path:?} worker {t}"
                    );
                }
            }
        });
    });
}

#[test]
fn free_and_munmap_racing_a_launch_on_another_thread() {
    each_path_foreign(|rt, path| {
        let k = kernels(rt);
        std::thread::scope(|s| {
            let launcher = s.spawn(|| {
                let mut mine: Vec<u32> = (0..300_000).map(|i| pattern(i, 1)).collect();
                for _ in 0..20 {
                    add(rt, &k, &mut mine, 1);
                }
                assert_pattern(
                    &mine,
                    |i| pattern(i, 1).wrapping_add(20),
                    &format!("{path:?} launcher"),
                );
            });
            for round in 0..20u32 {
                let mut v = vec![round; 1 << 19];
                add(rt, &k, &mut v, 1);
                if round % 2 == 0 {
                    assert_eq!(v[100], round + 1);
                }
                drop(v); // free of device-resident (or half fetched) memory
            }
            launcher.join().unwrap();
        });
    });
}

/// Pages of `v` that are present in host memory (from /proc/self/pagemap; touches nothing).
fn resident_pages(v: &[u32]) -> usize {
    use std::io::{Read, Seek, SeekFrom};
    let first = v.as_ptr() as usize / PAGE;
    let n = pages_of(v);
    let mut f = std::fs::File::open("/proc/self/pagemap").unwrap();
    f.seek(SeekFrom::Start(first as u64 * 8)).unwrap();
    let mut raw = vec![0u8; n * 8];
    f.read_exact(&mut raw).unwrap();
    raw.chunks_exact(8)
        .filter(|e| u64::from_le_bytes((*e).try_into().unwrap()) & (1 << 63) != 0)
        .count()
}

#[test]
fn written_buffers_leave_host_memory() {
    each_path_foreign(|rt, path| {
        let k = kernels(rt);
        let mut v: Vec<u32> = (0..16 << 20).map(|i| pattern(i, 4)).collect(); // 64 MiB
        let pages = pages_of(&v);
        assert!(resident_pages(&v) >= pages - 1);
        add(rt, &k, &mut v, 1);
        let left = resident_pages(&v);
        assert!(
            left * 20 <= pages,
            "{path:?}: {left} of {pages} pages still resident"
        );
        assert_eq!(v[12345], pattern(12345, 4) + 1);
        rt.prefetch(&v, Location::Host).unwrap();
        assert!(
            resident_pages(&v) >= pages - 1,
            "{path:?}: prefetch home makes pages resident"
        );
        assert_eq!(rt.residency(&v).device, 0);
    });
}

#[test]
fn mremap_moves_device_resident_data_with_the_mapping() {
    each_path_foreign(|rt, path| {
        let k = kernels(rt);
        let len = 4 << 20;
        let p = common::map_anon(len);
        // SAFETY: `len` mapped, readable and writable bytes.
        let v = unsafe { std::slice::from_raw_parts_mut(p.cast::<u32>(), len / 4) };
        fill(rt, &k, v, 3, 1);
        assert!(rt.residency(v).device > 0);
        // Grow it so that it must move (what `realloc` of a large buffer does).
        // SAFETY: remaps our own mapping; `v` is not used after this.
        let q = unsafe { libc::mremap(p, len, 2 * len, libc::MREMAP_MAYMOVE) };
        assert_ne!(q, libc::MAP_FAILED);
        // SAFETY: the remapped range: `2 * len` bytes, the first `len` holding the data.
        let w = unsafe { std::slice::from_raw_parts_mut(q.cast::<u32>(), 2 * len / 4) };
        assert_pattern(
            &w[..len / 4],
            |i| i as u32 * 3 + 1,
            &format!("{path:?} moved"),
        );
        assert!(
            w[len / 4..].iter().all(|&x| x == 0),
            "{path:?}: the grown part is zero"
        );
        add(rt, &k, w, 1);
        assert_pattern(
            &w[..len / 4],
            |i| i as u32 * 3 + 2,
            &format!("{path:?} after"),
        );
        // SAFETY: `w` is not used after this.
        assert_eq!(unsafe { libc::munmap(q, 2 * len) }, 0);
    });
}

/// The program splits its mapping after the pages moved (here `madvise` with a flag of its
/// own on an odd page): one `UFFDIO_COPY` may not cross the split, so a fault window that
/// does must be installed in pieces, not given up on (a livelock before the fix).
#[test]
fn a_mapping_split_after_migration_comes_back_whole() {
    each_path_foreign(|rt, path| {
        let k = kernels(rt);
        let len = 4 << 20;
        let p = common::map_anon(len);
        // SAFETY: `len` mapped, readable and writable bytes.
        let v = unsafe { std::slice::from_raw_parts_mut(p.cast::<u32>(), len / 4) };
        fill(rt, &k, v, 5, 2);
        assert!(rt.residency(v).device > 0);
        for split in [37 * PAGE, 301 * PAGE] {
            // SAFETY: changes a flag of our own mapping, not its contents.
            let r = unsafe {
                libc::madvise(
                    p.cast::<u8>().add(split).cast(),
                    PAGE,
                    libc::MADV_NOHUGEPAGE,
                )
            };
            assert_eq!(r, 0);
        }
        assert_pattern(v, |i| i as u32 * 5 + 2, &format!("{path:?} split"));
        add(rt, &k, v, 1);
        assert_pattern(v, |i| i as u32 * 5 + 3, &format!("{path:?} again"));
        // SAFETY: `v` is not used after this.
        assert_eq!(unsafe { libc::munmap(p, len) }, 0);
    });
}

#[test]
fn prefetch_both_ways_counts_bytes() {
    each_path(|rt, path| {
        let m = rt.alloc_from(&vec![1u8; 1 << 20]).unwrap();
        let s0 = rt.stats();
        rt.prefetch(&m, Location::Device).unwrap();
        let s1 = rt.stats();
        rt.prefetch(&m, Location::Host).unwrap();
        let s2 = rt.stats();
        assert_eq!((s1 - s0).bytes_to_device, 1 << 20, "{path:?}");
        assert_eq!((s2 - s1).bytes_to_host, 1 << 20, "{path:?}");
        assert_eq!(rt.residency(&m).shared, 256, "{path:?}");
        assert!(m.iter().all(|&x| x == 1));
    });
}
