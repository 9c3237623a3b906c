//! A buggy thread unmaps memory a launch is using: the launch may fail or compute garbage,
//! but nothing may happen to memory used correctly afterwards (docs/semantics.md, "free and
//! munmap").
//!
//! After the HMM selftests' `anon_teardown`. Each round maps 4 MiB with `mmap`, and a second
//! thread tears half of it down at a different moment of a launch (a spin of 0–28 µs after
//! the launch starts, stepping through the launch's phases: registration, planning, moving
//! pages, the kernel, settling):
//!
//! - **a later mapping at the same address** (the kernel usually hands the same addresses
//!   back): the thread unmaps the upper half while a launch *reads* the buffer; the next
//!   round maps fresh memory, fills it on the CPU and adds 1 to it with a kernel — every
//!   word must hold its fill plus 1. Once, no device copy of the old range was kept for the
//!   new one, so the upper half kept the CPU's data and the `+1` went to a device copy of
//!   the dead range;
//! - **a new mapping made at once**: after a correct launch on the buffer, the thread waits
//!   until the next launch has begun moving its bindings (its source's pages turn `Shared`),
//!   and then unmaps the upper half of that launch's *written* binding, maps fresh memory
//!   there with `MAP_FIXED_NOREPLACE` and fills it — that fill must be what the new memory
//!   holds after the launch, whatever the launch did (once, the launch dropped the new
//!   mapping's pages and it read as zeros). The lower half, still the launch's, holds the old
//!   words, or the source copied to its start.
//!
//! Both transfer paths. Under the `signal` backend, which serves only runtime-owned memory,
//! `mmap`ed memory is refused with a typed error (checked instead).

mod common;

use common::push::{AddK, N};

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vkhmm::{shaders, Push, Runtime, TransferPath};

const LEN: usize = 4 << 20;
const WORDS: usize = LEN / 4;
const HALF: usize = LEN / 2;
/// Words of the racing launch's source buffer (256 KiB).
const SRC_WORDS: usize = 64 << 10;

fn spin(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// The moment of a round's teardown, after the launch starts.
fn delay(round: u32) -> Duration {
    Duration::from_micros(7 * u64::from(round % 5))
}

fn value(i: usize, round: u32) -> u32 {
    common::pattern(i, round.wrapping_mul(0x9e37))
}

/// Maps `LEN` fresh bytes (anywhere, or exactly at `at` without replacing anything).
fn map(at: Option<usize>) -> Option<&'static mut [u32]> {
    let (hint, flags) = match at {
        Some(a) => (a, libc::MAP_FIXED_NOREPLACE),
        None => (0, 0),
    };
    // SAFETY: a new private anonymous mapping; MAP_FIXED_NOREPLACE never replaces one.
    let p = unsafe {
        libc::mmap(
            hint as *mut libc::c_void,
            at.map_or(LEN, |_| HALF),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED || at.is_some_and(|a| p as usize != a) {
        return None;
    }
    let words = at.map_or(WORDS, |_| HALF / 4);
    // SAFETY: the mapping just made, `words` u32s, ours until unmapped.
    Some(unsafe { std::slice::from_raw_parts_mut(p.cast::<u32>(), words) })
}

/// Unmaps `len` bytes at `addr`.
fn unmap(addr: usize, len: usize) {
    // SAFETY: the test's own mapping (or part of it), not used afterwards.
    assert_eq!(unsafe { libc::munmap(addr as *mut libc::c_void, len) }, 0);
}

fn later_mappings_keep_a_kernels_writes(rt: &Runtime, path: TransferPath) {
    let copy = rt.kernel_wgsl(shaders::COPY_U32_WGSL, "main").unwrap();
    let add = rt.kernel_wgsl(shaders::ADD_K_WGSL, "main").unwrap();
    let mut dst = vec![0u32; WORDS];
    let mut failures = Vec::new();
    for round in 0..60u32 {
        let s = map(None).unwrap();
        let addr = s.as_ptr() as usize;
        for (i, w) in s.iter_mut().enumerate() {
            *w = value(i, round);
        }
        // Odd rounds: a kernel adds 1 to the fresh, CPU-written mapping. Correct use.
        let added = round % 2;
        if added == 1 {
            let push = AddK {
                n: WORDS as u32,
                k: 1,
            };
            rt.launch(&add, [512, 1, 1], (&mut s[..], Push(&push)))
                .unwrap_or_else(|e| panic!("{path:?} round {round}: {e}"));
        }
        let wrong = (0..WORDS)
            .filter(|&i| s[i] != value(i, round) + added)
            .count();
        if wrong > 0 {
            failures.push(format!(
                "round {round}: mapping at {addr:#x}: {wrong} words without the kernel's write"
            ));
        }
        // The misuse: another thread unmaps the upper half while a launch reads it.
        std::thread::scope(|sc| {
            sc.spawn(|| {
                spin(delay(round));
                unmap(addr + HALF, HALF);
            });
            let push = N { n: WORDS as u32 };
            // Fails or copies garbage: either is fine.
            let _ = rt.launch(&copy, [512, 1, 1], (&s[..], &mut dst[..], Push(&push)));
        });
        unmap(addr, HALF);
    }
    assert!(failures.is_empty(), "{path:?}: {failures:#?}");
}

#[test]
fn a_later_mapping_at_the_same_address_keeps_a_kernels_writes() {
    common::each_path_foreign(later_mappings_keep_a_kernels_writes);
}

fn a_new_mapping_keeps_its_data(rt: &Runtime, path: TransferPath) {
    let add = rt.kernel_wgsl(shaders::ADD_K_WGSL, "main").unwrap();
    let copy = rt.kernel_wgsl(shaders::COPY_U32_WGSL, "main").unwrap();
    let mut failures = Vec::new();
    let mut remapped = 0;
    for round in 0..60u32 {
        let s = map(None).unwrap();
        let addr = s.as_ptr() as usize;
        // A correct launch first: the runtime knows the memory (it is registered and
        // mirrored), as a buffer a program works on is.
        let push = AddK {
            n: WORDS as u32,
            k: 1,
        };
        rt.launch(&add, [512, 1, 1], (&mut s[..], Push(&push)))
            .unwrap_or_else(|e| panic!("{path:?} round {round}: {e}"));
        for (i, w) in s.iter_mut().enumerate() {
            *w = value(i, round);
        }
        // The source of the racing launch: mapped after `s`, so below it (the kernel hands
        // out addresses top-down) and moved first; once its pages are `Shared` the launch
        // is moving `s`.
        let mut src: Vec<u32> = (0..SRC_WORDS).map(|i| !value(i, round + 1)).collect();
        src.shrink_to_fit();
        let upper = addr + HALF;
        let done = AtomicBool::new(false);
        // The misuse: once the launch has begun moving the buffers, another thread unmaps
        // the upper half of its written binding, maps fresh memory there at once and
        // fills it.
        let fresh = std::thread::scope(|sc| {
            let watched: &[u32] = &src;
            let fresh = sc.spawn(|| {
                while rt.residency(watched).shared == 0 && !done.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
                spin(delay(round));
                unmap(upper, HALF);
                let new = map(Some(upper))?;
                for (i, w) in new.iter_mut().enumerate() {
                    *w = !value(i, round);
                }
                Some(new)
            });
            let push = N {
                n: SRC_WORDS as u32,
            };
            // Fails or copies garbage: either is fine.
            let _ = rt.launch(&copy, [64, 1, 1], (watched, &mut s[..], Push(&push)));
            done.store(true, Ordering::Release);
            fresh.join().unwrap()
        });
        let Some(new) = fresh else {
            // Somebody else took the address first: nothing to check in the upper half.
            unmap(addr, HALF);
            continue;
        };
        remapped += 1;
        let bad_new = (0..HALF / 4)
            .filter(|&i| new[i] != !value(i, round))
            .count();
        if bad_new > 0 {
            failures.push(format!(
                "round {round}: new mapping at {upper:#x}: {bad_new} words lost their data \
                 (first: {:#x})",
                new[(0..HALF / 4).find(|&i| new[i] != !value(i, round)).unwrap()]
            ));
        }
        // The lower half is still the launch's: untouched, or with the source copied to its
        // start.
        let low = &s[..WORDS / 2];
        let copied = low[0] == src[0];
        let want = |i: usize| {
            if copied && i < SRC_WORDS {
                src[i]
            } else {
                value(i, round)
            }
        };
        if let Some(i) = (0..WORDS / 2).find(|&i| low[i] != want(i)) {
            failures.push(format!(
                "round {round}: lower half word {i} is {:#x}, not {:#x}",
                low[i],
                want(i)
            ));
        }
        unmap(addr, LEN);
    }
    assert!(failures.is_empty(), "{path:?}: {failures:#?}");
    assert!(remapped > 0, "{path:?}: no round could map the fresh half");
}

#[test]
fn a_mapping_made_in_place_of_a_launchs_memory_keeps_its_data() {
    common::each_path_foreign(a_new_mapping_keeps_its_data);
}
