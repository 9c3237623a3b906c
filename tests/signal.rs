//! The `signal` fault backend (mprotect + SIGSEGV), forced with `VKHMM_FAULT=signal`.
//!
//! The fault service is process-wide, so this test binary sets `VKHMM_FAULT` before its first
//! runtime and every test here runs under the signal backend, on both transfer paths, with
//! exact data patterns (element i holds a function of i). `fork()` and handler chaining are
//! in `tests/signal_fork.rs` (a fork brings every device-resident page of the process home,
//! which would disturb the residency these tests assert).

mod common;

use common::push::{AddK, Fill, N};
use common::{groups, kernels, pattern, Kernels, PATHS};
use vkhmm::{Error, FaultBackend, Location, Managed, Push, Runtime};

const PAGE: usize = 4096;
/// Elements per page.
const EPP: usize = PAGE / 4;

/// Forces the signal backend before the first runtime of this binary.
fn force_signal() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // Every test calls this first, so no other thread reads the environment meanwhile.
    ONCE.call_once(|| std::env::set_var("VKHMM_FAULT", "signal"));
}

/// Runs `f` on a signal-backend runtime for each transfer path, under a watchdog.
fn each_path(mut f: impl FnMut(&Runtime, vkhmm::TransferPath)) {
    force_signal();
    common::each_path(|rt, path| {
        assert_eq!(rt.fault_backend(), FaultBackend::Signal);
        f(rt, path)
    });
}

fn fill(rt: &Runtime, k: &Kernels, out: &mut Managed<u32>, mul: u32, add: u32) {
    let n = out.len() as u32;
    rt.launch(
        &k.fill,
        groups(out.len(), 256),
        (out, Push(&Fill { n, mul, add })),
    )
    .unwrap();
}

fn add(rt: &Runtime, k: &Kernels, data: &mut Managed<u32>, by: u32) {
    let n = data.len() as u32;
    rt.launch(
        &k.add,
        groups(data.len(), 256),
        (data, Push(&AddK { n, k: by })),
    )
    .unwrap();
}

/// Pages of `v` resident in host memory (`mincore`), touching none of them.
fn resident_pages(v: &[u32]) -> usize {
    let len = std::mem::size_of_val(v).div_ceil(PAGE) * PAGE;
    let mut vec = vec![0u8; len / PAGE];
    // SAFETY: `v` starts page-aligned (Managed) and `vec` has one byte per page.
    let rc = unsafe { libc::mincore(v.as_ptr() as *mut libc::c_void, len, vec.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore");
    vec.iter().filter(|&&b| b & 1 != 0).count()
}

fn assert_pattern(v: &[u32], f: impl Fn(usize) -> u32, what: &str) {
    if let Some(i) = (0..v.len()).find(|&i| v[i] != f(i)) {
        panic!("{what}: element {i} is {} but should be {}", v[i], f(i));
    }
}

#[test]
fn the_backend_is_signal() {
    force_signal();
    let Some(rt) = common::runtime(PATHS[0]) else {
        return;
    };
    assert_eq!(rt.fault_backend(), FaultBackend::Signal);
    assert_eq!(FaultBackend::Signal.to_string(), "signal");
}

#[test]
fn write_kernel_then_cpu_reads_and_writes_fault_back() {
    each_path(|rt, path| {
        let k = kernels(rt);
        let pages = 256;
        let mut m = rt.alloc::<u32>(pages * EPP).unwrap();
        let before = rt.stats();
        fill(rt, &k, &mut m, 3, 7);
        let r = rt.residency(&m);
        assert_eq!(
            (r.host, r.shared, r.device),
            (0, 0, pages),
            "{path:?}: {r:?}"
        );
        let d = rt.stats() - before;
        assert_eq!(d.launches, 1, "{path:?}");
        assert_eq!(d.cpu_faults, 0, "{path:?}");
        assert_eq!(
            d.bytes_to_device, 0,
            "{path:?}: fresh pages are zero-filled, not copied"
        );

        // CPU reads fault the pages back, in chunks, as Shared.
        let before = rt.stats();
        assert_pattern(&m, |i| i as u32 * 3 + 7, &format!("{path:?} read back"));
        let d = rt.stats() - before;
        assert!(
            d.cpu_faults >= 1 && d.cpu_faults <= (pages / 16) as u64,
            "{path:?}: one fault per chunk at most: {d:?}"
        );
        assert_eq!(d.bytes_to_host, (pages * PAGE) as u64, "{path:?}");
        let r = rt.residency(&m);
        assert_eq!(
            (r.host, r.shared, r.device),
            (0, pages, 0),
            "{path:?}: {r:?}"
        );

        // A write to a Shared page at a new place lifts the protection of that page alone
        // (it turns Host, its device copy stale): one fault, nothing copied.
        let before = rt.stats();
        m[5 * EPP + 3] = 1;
        let d = rt.stats() - before;
        assert_eq!(d.cpu_faults, 1, "{path:?}");
        assert_eq!(d.bytes_to_host, 0, "{path:?}: nothing to copy");
        let r = rt.residency(&m);
        assert_eq!(r.host, 1, "{path:?}: the written page: {r:?}");
        assert_eq!(r.shared, pages - 1, "{path:?}: {r:?}");
        assert_pattern(
            &m,
            |i| {
                if i == 5 * EPP + 3 {
                    1
                } else {
                    i as u32 * 3 + 7
                }
            },
            &format!("{path:?} after the write"),
        );

        // The next launch copies only the Host pages again and sees the CPU's write.
        let before = rt.stats();
        add(rt, &k, &mut m, 10);
        let d = rt.stats() - before;
        assert_eq!(d.bytes_to_device, PAGE as u64, "{path:?}");
        assert_pattern(
            &m,
            |i| {
                if i == 5 * EPP + 3 {
                    11
                } else {
                    i as u32 * 3 + 17
                }
            },
            &format!("{path:?} after add"),
        );
    });
}

#[test]
fn a_cpu_write_to_a_device_page_lands_and_keeps_the_rest() {
    each_path(|rt, path| {
        let k = kernels(rt);
        let pages = 64;
        let mut m = rt.alloc::<u32>(pages * EPP).unwrap();
        fill(rt, &k, &mut m, 1, 5);
        let before = rt.stats();
        // A write first (no read before it), far from any earlier fault: the page comes
        // back, the write lands on it.
        m[40 * EPP + 1] = 99;
        let d = rt.stats() - before;
        assert!(d.cpu_faults >= 1 && d.cpu_faults <= 2, "{path:?}: {d:?}");
        let r = rt.residency(&m);
        assert!(r.host >= 1, "{path:?}: the written page is Host: {r:?}");
        assert_eq!(r.device, pages - 1, "{path:?}: one page came back: {r:?}");
        assert_pattern(
            &m,
            |i| if i == 40 * EPP + 1 { 99 } else { i as u32 + 5 },
            &format!("{path:?}"),
        );
    });
}

#[test]
fn read_kernels_share_pages_and_cpu_reads_do_not_fault() {
    each_path(|rt, path| {
        let k = kernels(rt);
        let pages = 128;
        let n = pages * EPP;
        let mut src = rt.alloc::<u32>(n).unwrap();
        for (i, v) in src.iter_mut().enumerate() {
            *v = pattern(i, 11);
        }
        let mut out = rt.alloc::<u32>(1).unwrap();
        let before = rt.stats();
        rt.launch(
            &k.sum,
            groups(n, 256),
            (&src, &mut out, Push(&N { n: n as u32 })),
        )
        .unwrap();
        let d = rt.stats() - before;
        // The source, and `out`'s 4 bytes (an edge page: copied through).
        assert_eq!(d.bytes_to_device, (n * 4 + 4) as u64, "{path:?}");
        let r = rt.residency(&src);
        assert_eq!(
            (r.host, r.shared, r.device),
            (0, pages, 0),
            "{path:?}: {r:?}"
        );
        let expect = (0..n).fold(0u32, |a, i| a.wrapping_add(pattern(i, 11)));
        assert_eq!(out[0], expect, "{path:?}: checksum");

        // Reading Shared pages is free.
        let before = rt.stats();
        assert_pattern(&src, |i| pattern(i, 11), &format!("{path:?} shared read"));
        assert_eq!((rt.stats() - before).cpu_faults, 0, "{path:?}");

        // A second read launch copies nothing.
        out[0] = 0;
        let before = rt.stats();
        rt.launch(
            &k.sum,
            groups(n, 256),
            (&src, &mut out, Push(&N { n: n as u32 })),
        )
        .unwrap();
        assert_eq!(
            (rt.stats() - before).bytes_to_device,
            4,
            "{path:?}: only `out`"
        );
        assert_eq!(out[0], expect, "{path:?}: checksum again");

        // Copy kernel: Shared source, Device destination.
        let mut dst = rt.alloc::<u32>(n).unwrap();
        rt.launch(
            &k.copy,
            groups(n, 256),
            (&src, &mut dst, Push(&N { n: n as u32 })),
        )
        .unwrap();
        assert_eq!(rt.residency(&dst).device, pages, "{path:?}");
        assert_pattern(&dst, |i| pattern(i, 11), &format!("{path:?} copy"));
        // A kernel reads Device-resident data without bringing it home first.
        let before = rt.stats();
        let mut back = rt.alloc::<u32>(n).unwrap();
        fill(rt, &k, &mut dst, 2, 0);
        rt.launch(
            &k.copy,
            groups(n, 256),
            (&dst, &mut back, Push(&N { n: n as u32 })),
        )
        .unwrap();
        assert_eq!((rt.stats() - before).bytes_to_host, 0, "{path:?}");
        assert_pattern(
            &back,
            |i| i as u32 * 2,
            &format!("{path:?} copy of device data"),
        );
    });
}

#[test]
fn prefetch_both_ways() {
    each_path(|rt, path| {
        let k = kernels(rt);
        let pages = 64;
        let mut m = rt.alloc::<u32>(pages * EPP).unwrap();
        for (i, v) in m.iter_mut().enumerate() {
            *v = pattern(i, 3);
        }
        assert_eq!(resident_pages(&m), pages, "{path:?}: written by the CPU");
        rt.prefetch(&m, Location::Device).unwrap();
        let r = rt.residency(&m);
        assert_eq!(
            (r.host, r.shared, r.device),
            (0, 0, pages),
            "{path:?}: {r:?}"
        );
        assert_eq!(resident_pages(&m), 0, "{path:?}: host copies dropped");
        rt.prefetch(&m, Location::Host).unwrap();
        let r = rt.residency(&m);
        assert_eq!(
            (r.host, r.shared, r.device),
            (0, pages, 0),
            "{path:?}: {r:?}"
        );
        let before = rt.stats();
        assert_pattern(&m, |i| pattern(i, 3), &format!("{path:?} after prefetch"));
        assert_eq!(
            (rt.stats() - before).cpu_faults,
            0,
            "{path:?}: no faults after prefetch"
        );
        // Kernel results prefetched home read without faults too.
        add(rt, &k, &mut m, 1);
        rt.prefetch(&m, Location::Host).unwrap();
        let before = rt.stats();
        assert_pattern(&m, |i| pattern(i, 3).wrapping_add(1), &format!("{path:?}"));
        assert_eq!((rt.stats() - before).cpu_faults, 0, "{path:?}");
        assert_eq!(rt.stats().prefetches, 3, "{path:?}");
    });
}

#[test]
fn foreign_memory_is_copied_through() {
    each_path(|rt, path| {
        let k = kernels(rt);
        let n = 50_000;
        // A `Vec`: the kernel's results reach it, nothing of it migrates or is protected.
        let mut v: Vec<u32> = (0..n).map(|i| pattern(i, 5)).collect();
        let before = rt.stats();
        rt.launch(
            &k.add,
            groups(n, 256),
            (&mut v[..], Push(&AddK { n: n as u32, k: 3 })),
        )
        .unwrap();
        let d = rt.stats() - before;
        assert_eq!(
            (d.bytes_to_device, d.copied_to_device, d.copied_to_host),
            (0, (n * 4) as u64, (n * 4) as u64),
            "{path:?}: {d}"
        );
        assert_pattern(
            &v,
            |i| pattern(i, 5).wrapping_add(3),
            &format!("{path:?} Vec after the launch"),
        );
        let r = rt.residency(&v);
        assert_eq!((r.shared, r.device), (0, 0), "{path:?}: {r:?}");
        // Prefetches have nothing to move: the memory is home, and stays so.
        rt.prefetch(&v, Location::Device).unwrap();
        rt.prefetch(&v, Location::Host).unwrap();
        assert_eq!(rt.residency(&v).device, 0, "{path:?}");
        assert_eq!(rt.stats().cpu_faults, before.cpu_faults, "{path:?}");

        // A mapping the runtime did not make.
        let len = 16 * PAGE;
        let p = common::map_anon(len).cast::<u32>();
        // SAFETY: a fresh private mapping of `len` bytes, unmapped below.
        let mapped = unsafe { std::slice::from_raw_parts_mut(p, len / 4) };
        mapped
            .iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = i as u32);
        rt.launch(
            &k.add,
            groups(len / 4, 256),
            (
                &mut mapped[..],
                Push(&AddK {
                    n: (len / 4) as u32,
                    k: 1,
                }),
            ),
        )
        .unwrap();
        assert_pattern(mapped, |i| i as u32 + 1, &format!("{path:?} mmap"));
        // SAFETY: our own mapping; `mapped` is not used after this.
        assert_eq!(unsafe { libc::munmap(p.cast(), len) }, 0);

        // Managed and foreign together: the Managed buffer migrates, the `Vec` is copied.
        let mut m = rt.alloc::<u32>(4 * EPP).unwrap();
        let before = rt.stats();
        rt.launch(
            &k.copy,
            groups(4 * EPP, 256),
            (&v[..4 * EPP], &mut m, Push(&N { n: 4 * EPP as u32 })),
        )
        .unwrap();
        let d = rt.stats() - before;
        assert_eq!(d.copied_to_device, 4 * PAGE as u64, "{path:?}: {d}");
        assert_eq!(rt.residency(&m).device, 4, "{path:?}");
        assert_pattern(
            &m,
            |i| pattern(i, 5).wrapping_add(3),
            &format!("{path:?} Managed"),
        );
    });
}

#[test]
fn a_syscall_into_a_device_page_fails_with_efault_and_loses_nothing() {
    each_path(|rt, path| {
        let k = kernels(rt);
        let mut m = rt.alloc::<u32>(4 * EPP).unwrap();
        fill(rt, &k, &mut m, 1, 0);
        let mut fds = [0; 2];
        // SAFETY: creates a pipe; both ends are closed below.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let bytes = [7u8; 16];
        // SAFETY: writes 16 readable bytes to our own pipe.
        let wrote = unsafe { libc::write(fds[1], bytes.as_ptr().cast(), 16) };
        assert_eq!(wrote, 16);
        // SAFETY: the kernel writes into `m`'s first page, which is ours; it refuses with
        // EFAULT because the page is PROT_NONE (device-resident).
        let n = unsafe { libc::read(fds[0], m.as_mut_ptr().cast(), 16) };
        let errno = std::io::Error::last_os_error().raw_os_error();
        assert_eq!((n, errno), (-1, Some(libc::EFAULT)), "{path:?}");
        // SAFETY: our own pipe's fds.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        assert_pattern(&m, |i| i as u32, &format!("{path:?}"));
    });
}

#[test]
fn threads_touch_their_own_buffers_while_another_launches() {
    each_path(|rt, path| {
        let k = kernels(rt);
        let pages = 32;
        std::thread::scope(|s| {
            for t in 0..3u32 {
                let k = &k;
                s.spawn(move || {
                    let mut m = rt.alloc::<u32>(pages * EPP).unwrap();
                    for round in 0..6u32 {
                        fill(rt, k, &mut m, t + 1, round);
                        // Read some, write some, then check everything.
                        assert_eq!(m[7], 7 * (t + 1) + round, "{path:?} thread {t}");
                        m[3 * EPP] = 5;
                        assert_pattern(
                            &m,
                            |i| {
                                if i == 3 * EPP {
                                    5
                                } else {
                                    i as u32 * (t + 1) + round
                                }
                            },
                            &format!("{path:?} thread {t} round {round}"),
                        );
                    }
                });
            }
            let mut mine = rt.alloc::<u32>(pages * EPP).unwrap();
            for round in 0..10 {
                add(rt, &k, &mut mine, 1);
                assert_eq!(mine[round * 100], round as u32 + 1, "{path:?} launcher");
            }
            assert_pattern(&mine, |_| 10, &format!("{path:?} launcher"));
        });
    });
}

#[test]
fn many_threads_fault_on_one_buffer_at_once() {
    each_path(|rt, path| {
        let k = kernels(rt);
        let pages = 256;
        let mut m = rt.alloc::<u32>(pages * EPP).unwrap();
        fill(rt, &k, &mut m, 7, 1);
        let m = &m;
        std::thread::scope(|s| {
            for t in 0..4usize {
                s.spawn(move || {
                    // Each thread walks the pages from a different start.
                    for p in 0..pages {
                        let i = ((p + t * 61) % pages) * EPP + t;
                        assert_eq!(m[i], i as u32 * 7 + 1, "{path:?} thread {t}");
                    }
                });
            }
        });
        assert_pattern(m, |i| i as u32 * 7 + 1, &format!("{path:?}"));
        assert_eq!(rt.residency(m).device, 0, "{path:?}");
    });
}

#[test]
fn runtime_drop_brings_device_data_home() {
    force_signal();
    let _watchdog = common::Watchdog::arm_for_this_test(std::time::Duration::from_secs(300));
    for path in PATHS {
        let Some(rt) = common::runtime(path) else {
            continue;
        };
        let k = kernels(&rt);
        let mut m = rt.alloc::<u32>(64 * EPP).unwrap();
        fill(&rt, &k, &mut m, 9, 2);
        assert_eq!(rt.residency(&m).device, 64, "{path:?}");
        drop(k);
        drop(rt);
        // No runtime is left to serve a fault: the pages must be plain memory again.
        assert_pattern(&m, |i| i as u32 * 9 + 2, &format!("{path:?} after drop"));
        m[0] = 1;
        assert_eq!(m[0], 1);
    }
}

#[test]
fn dropping_device_resident_managed_memory_frees_the_device_copy() {
    each_path(|rt, path| {
        let k = kernels(rt);
        let base = rt.stats().device_bytes_in_use;
        for round in 0..4u32 {
            let mut m = rt.alloc::<u32>(64 * EPP).unwrap();
            fill(rt, &k, &mut m, 1, round);
            assert!(rt.stats().device_bytes_in_use > base, "{path:?}");
            assert_eq!(m[100], 100 + round, "{path:?}");
            drop(m);
            // The next allocation likely gets the same addresses: it must start as zeros
            // and serve as fresh memory.
            let fresh = rt.alloc::<u32>(64 * EPP).unwrap();
            assert_pattern(&fresh, |_| 0, &format!("{path:?} fresh round {round}"));
        }
        assert_eq!(rt.stats().device_bytes_in_use, base, "{path:?}: freed");
    });
}

#[test]
fn a_working_set_four_times_the_budget_is_evicted_and_stays_exact() {
    force_signal();
    let _watchdog = common::Watchdog::arm_for_this_test(std::time::Duration::from_secs(300));
    for path in PATHS {
        let budget = 4 << 20;
        let Some(rt) = common::runtime_with(Runtime::builder().transfer(path).budget(budget))
        else {
            continue;
        };
        let k = kernels(&rt);
        let n = (2 << 20) / 4; // eight 2 MiB buffers: 16 MiB
        let mut bufs: Vec<Managed<u32>> = (0..8u32)
            .map(|b| {
                let data: Vec<u32> = (0..n).map(|i| pattern(i, b)).collect();
                rt.alloc_from(&data).unwrap()
            })
            .collect();
        for round in 1..=3u32 {
            for (b, m) in bufs.iter_mut().enumerate() {
                add(&rt, &k, m, 1);
                let s = rt.stats();
                assert!(s.device_bytes_in_use <= budget, "{path:?}: {s}");
                if b % 3 == 0 {
                    let want = pattern(n / 2, b as u32).wrapping_add(round);
                    assert_eq!(m[n / 2], want, "{path:?} buffer {b} round {round}");
                }
            }
        }
        assert!(rt.stats().evictions >= 8, "{path:?}: {}", rt.stats());
        for (b, m) in bufs.iter().enumerate() {
            assert_pattern(
                m,
                |i| pattern(i, b as u32).wrapping_add(3),
                &format!("{path:?} buffer {b}"),
            );
        }
    }
}

#[test]
fn a_touch_from_another_thread_waits_until_an_async_launch_is_settled() {
    each_path(|rt, path| {
        let k = kernels(rt);
        let n = 1 << 20;
        let data: Vec<u32> = (0..n).map(|i| pattern(i, 4)).collect();
        let mut m = rt.alloc_from(&data).unwrap();
        let addr = m.as_ptr() as usize;
        let push = AddK { n: n as u32, k: 5 };
        rt.scope(|s| -> vkhmm::Result<()> {
            let pending = s.launch_async(&k.add, groups(n, 256), (&mut m, Push(&push)))?;
            let reader = std::thread::spawn(move || {
                // SAFETY: an aligned, initialised u32 inside `m`, which outlives the scope;
                // the test reads it concurrently on purpose (the page is claimed by the
                // launch: the fault waits until the launch is settled).
                unsafe { std::ptr::read_volatile((addr as *const u32).add(n / 2)) }
            });
            let seen = reader.join().unwrap();
            pending.wait()?;
            assert_eq!(seen, pattern(n / 2, 4).wrapping_add(5), "{path:?}");
            Ok(())
        })
        .unwrap()
        .unwrap();
        assert_pattern(&m, |i| pattern(i, 4).wrapping_add(5), &format!("{path:?}"));
    });
}

#[test]
fn a_bad_vkhmm_fault_value_is_a_typed_error() {
    // The backend is chosen once per process: check in a fresh one (this test, re-run alone).
    if std::env::var_os("VKHMM_TEST_BAD_FAULT").is_some() {
        match Runtime::new() {
            Err(Error::InvalidConfig(m)) => assert!(m.contains("VKHMM_FAULT"), "{m}"),
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_bad_vkhmm_fault_value_is_a_typed_error",
            "--nocapture",
        ])
        .env("VKHMM_FAULT", "sigsegv")
        .env("VKHMM_TEST_BAD_FAULT", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("1 passed"), "{text}");
}
