//! An input the CPU rewrites after every launch is left writable (`Host`) by the launches
//! that follow, so its rewrites take no fault; every rewrite still reaches the next kernel,
//! and one launch in a while protects it again to look. Scattered writes never trigger it.
//! The first rewrite after a launch lifts protection ahead of a sequential writer, which
//! halves its faults and lifts at most four times what it wrote.
//!
//! Runs under both fault backends (`.ci/test` runs this binary again with
//! `VKHMM_FAULT=signal`), on runtime-allocated memory.

mod common;

use common::push::N;
use common::{each_path, each_runtime, groups, kernels, Kernels, PATHS};
use vkhmm::{Push, Runtime};

const PAGE: usize = 4096;
/// Elements per page.
const EPP: usize = PAGE / 4;
/// Launches that trust a rewrite before one looks again (`mirror::rewrite::TRUST`).
const TRUST: usize = 8;

/// A kernel copies `src` into `dst`.
fn copy(rt: &Runtime, k: &Kernels, src: &[u32], dst: &mut [u32]) {
    let n = src.len() as u32;
    rt.launch(&k.copy, groups(src.len(), 256), (src, dst, Push(&N { n })))
        .unwrap();
}

#[test]
fn an_input_rewritten_every_step_is_left_writable_and_every_rewrite_arrives() {
    each_path(|rt, path| {
        let k = kernels(rt);
        let pages = 256;
        let mut x = rt.alloc::<u32>(pages * EPP).unwrap();
        let mut out = rt.alloc::<u32>(pages * EPP).unwrap();
        let mut writable_launches = 0;
        let mut left_writable = false;
        for step in 0..2 * TRUST + 4 {
            let value = |i: usize| (step * 1_000_003 + i) as u32;
            let before = rt.stats();
            for (i, v) in x.iter_mut().enumerate() {
                *v = value(i);
            }
            let rewrite_faults = (rt.stats() - before).cpu_faults;
            if left_writable {
                assert_eq!(
                    rewrite_faults, 0,
                    "{path:?} step {step}: x was left writable"
                );
            }
            copy(rt, &k, &x, &mut out);
            let wrong = (0..out.len()).find(|&i| out[i] != value(i));
            assert_eq!(wrong, None, "{path:?} step {step}");
            let r = rt.residency(&x);
            left_writable = r.host == pages;
            if left_writable {
                writable_launches += 1;
            } else {
                assert_eq!(r.shared, pages, "{path:?} step {step}: {r:?}");
            }
        }
        // Steps 0 and 1 protect (nothing seen, then one rewrite seen); then TRUST launches
        // trust it, one looks, TRUST more trust it.
        assert!(
            writable_launches >= 2 * TRUST - 2,
            "{path:?}: {writable_launches} launches left x writable"
        );
    });
}

#[test]
fn scattered_writes_leave_an_input_shared() {
    // No settling on the host for a buffer the CPU keeps touching: that is another rule.
    let builder = |path| Runtime::builder().transfer(path).thrash_detection(false);
    each_runtime(&PATHS, builder, |rt, path| {
        let k = kernels(rt);
        let pages = 256;
        let mut x = rt.alloc::<u32>(pages * EPP).unwrap();
        let mut out = rt.alloc::<u32>(pages * EPP).unwrap();
        x.iter_mut().enumerate().for_each(|(i, v)| *v = i as u32);
        for step in 1..6u32 {
            // One word on an eighth of the pages, far apart and out of order (as edits
            // are): each write lifts its own page.
            let written: Vec<usize> = (0..pages / 8).map(|j| j * 37 % pages).collect();
            for &p in &written {
                x[p * EPP + 1] = step;
            }
            copy(rt, &k, &x, &mut out);
            assert!(out.iter().zip(x.iter()).all(|(a, b)| a == b), "{path:?}");
            // The launch uploaded the written pages again and protected them.
            let r = rt.residency(&x);
            assert_eq!((r.shared, r.host), (pages, 0), "{path:?} step {step}");
            assert!(written.len() < pages / 4);
        }
    });
}

#[test]
fn read_mostly_advice_keeps_a_rewritten_input_shared() {
    each_path(|rt, path| {
        let k = kernels(rt);
        let pages = 64;
        let mut x = rt.alloc::<u32>(pages * EPP).unwrap();
        let mut out = rt.alloc::<u32>(pages * EPP).unwrap();
        rt.advise(&x[..], vkhmm::Advice::ReadMostly).unwrap();
        for step in 0..4usize {
            for (i, v) in x.iter_mut().enumerate() {
                *v = (step + i) as u32;
            }
            copy(rt, &k, &x, &mut out);
            assert!(out.iter().zip(x.iter()).all(|(a, b)| a == b), "{path:?}");
            assert_eq!(rt.residency(&x).shared, pages, "{path:?} step {step}");
        }
    });
}

#[test]
fn a_sequential_rewrite_of_shared_pages_is_lifted_ahead_of_the_writer() {
    each_path(|rt, path| {
        let k = kernels(rt);
        let pages = 1024;
        let mut x = rt.alloc::<u32>(pages * EPP).unwrap();
        let mut out = rt.alloc::<u32>(pages * EPP).unwrap();
        x.iter_mut().enumerate().for_each(|(i, v)| *v = i as u32);
        copy(rt, &k, &x, &mut out);
        assert_eq!(rt.residency(&x).shared, pages, "{path:?}");

        // The whole buffer in order: windows of 1, then 2 + 4 ahead, 8 + 16 ahead, ... (6
        // faults for 1,024 pages, where doubling alone takes 11).
        let before = rt.stats();
        x.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = 7 * i as u32);
        let faults = (rt.stats() - before).cpu_faults;
        assert!(faults <= 7, "{path:?}: {faults} faults");
        assert_eq!(rt.residency(&x).host, pages, "{path:?}");
        copy(rt, &k, &x, &mut out);
        let wrong = (0..out.len()).find(|&i| out[i] != 7 * i as u32);
        assert_eq!(wrong, None, "{path:?}");

        // A writer that stops early (on a buffer of its own: the whole rewrite above has the
        // launch trust x to be rewritten again): what was lifted ahead and not written stays
        // exact, and the next launch uploads exactly the lifted pages.
        let mut y = rt.alloc::<u32>(pages * EPP).unwrap();
        y.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = 7 * i as u32);
        copy(rt, &k, &y, &mut out);
        assert_eq!(rt.residency(&y).shared, pages, "{path:?}");
        // 32 pages written: the fault at page 31 lifts up to page 63 and, ahead, to page 127,
        // the most a writer that stops early leaves lifted (four times what it wrote).
        let written = 32;
        y[..written * EPP].iter_mut().for_each(|v| *v += 1);
        let r = rt.residency(&y);
        assert!(
            r.host >= written && r.host <= 4 * written,
            "{path:?}: {r:?} after writing {written} pages"
        );
        let before = rt.stats();
        copy(rt, &k, &y, &mut out);
        let d = rt.stats() - before;
        assert_eq!(d.bytes_to_device, (r.host * PAGE) as u64, "{path:?}: {d}");
        let want = |i: usize| 7 * i as u32 + u32::from(i < written * EPP);
        let wrong = (0..out.len()).find(|&i| out[i] != want(i));
        assert_eq!(wrong, None, "{path:?}");

        // A buffer advised ReadMostly keeps its duplicates: no window is lifted ahead, so the
        // same writes lift at most twice what they wrote.
        let mut z = rt.alloc::<u32>(pages * EPP).unwrap();
        z.iter_mut().enumerate().for_each(|(i, v)| *v = i as u32);
        rt.advise(&z[..], vkhmm::Advice::ReadMostly).unwrap();
        copy(rt, &k, &z, &mut out);
        z[..written * EPP].iter_mut().for_each(|v| *v += 1);
        let r = rt.residency(&z);
        assert!(
            r.host >= written && r.host <= 2 * written,
            "{path:?}: {r:?} after writing {written} pages of a ReadMostly buffer"
        );
    });
}
