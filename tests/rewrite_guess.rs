//! An input the CPU rewrites after every launch is left writable (`Host`) by the launches
//! that follow, so its rewrites take no fault; every rewrite still reaches the next kernel,
//! and one launch in a while protects it again to look. Scattered writes never trigger it.
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
