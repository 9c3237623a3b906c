//! Scattered CPU touches of a kernel's result: each isolated touch brings back its own page,
//! and the next launch, which drops the host copies of those pages around the device-only
//! ones in between, loses none of the CPU's writes and none of the kernel's.
//!
//! Runs under both fault backends (`.ci/test` runs this binary again with
//! `VKHMM_FAULT=signal`) on runtime-allocated memory, and on a `Vec` where userfaultfd serves
//! it.

mod common;

use common::{
    add_to_each, each_path_foreign_with, each_runtime, fill_3i_plus_1, kernels, Kernels, PATHS,
};
use vkhmm::{Runtime, TransferPath};

const PAGE: usize = 4096;
/// Elements per page.
const EPP: usize = PAGE / 4;
/// Pages of the buffer.
const PAGES: usize = 1024;
/// A runtime on `path` that never settles a bouncing buffer on the host: each pass must
/// migrate again.
fn builder(path: TransferPath) -> vkhmm::RuntimeBuilder {
    Runtime::builder().transfer(path).thrash_detection(false)
}

/// Pages apart of two consecutive touches: far enough that none counts as near the last.
const STRIDE: usize = 16;

/// The scattered round on `data` (`PAGES` pages): the kernel fills it, the CPU reads a word on
/// every `STRIDE`th page and writes one on the pages halfway between, a kernel adds 5; every
/// word must then hold the kernel's value, plus the CPU's edit where it wrote.
fn round(rt: &Runtime, k: &Kernels, data: &mut [u32], what: &str) {
    let fresh = |i: usize| i as u32 * 3 + 1;
    fill_3i_plus_1(rt, k, data);
    let read_at = |j: usize| j * STRIDE * EPP + 7;
    let write_at = |j: usize| (j * STRIDE + STRIDE / 2) * EPP + 11;
    let touches = PAGES / STRIDE;

    let before = rt.stats();
    for j in 0..touches {
        assert_eq!(data[read_at(j)], fresh(read_at(j)), "{what}: read {j}");
    }
    for j in 0..touches {
        data[write_at(j)] = 1_000_000 + j as u32;
    }
    let d = rt.stats() - before;
    assert!(
        d.bytes_to_host <= (2 * touches * PAGE) as u64,
        "{what}: each isolated touch brings back its page only: {d}"
    );
    let r = rt.residency(data);
    assert!(
        r.host >= touches && r.host + r.shared <= 2 * touches + 2,
        "{what}: {r:?}"
    );

    add_to_each(rt, k, data, 5);
    let r = rt.residency(data);
    assert!(r.host + r.shared <= 2, "{what}: all on the device: {r:?}");
    let expected = |i: usize| {
        let edited = (0..touches).find(|&j| write_at(j) == i);
        edited.map_or(fresh(i), |j| 1_000_000 + j as u32) + 5
    };
    let wrong = (0..data.len()).find(|&i| data[i] != expected(i));
    assert_eq!(
        wrong.map(|i| (i, data[i], expected(i))),
        None,
        "{what}: (index, found, expected)"
    );
}

#[test]
fn scattered_edits_of_a_result_reach_the_next_kernel_and_nothing_else_changes() {
    each_runtime(&PATHS, builder, |rt, path| {
        let k = kernels(rt);
        let mut m = rt.alloc::<u32>(PAGES * EPP).unwrap();
        for pass in 0..3 {
            round(rt, &k, &mut m, &format!("{path:?}, Managed, pass {pass}"));
        }
    });
}

#[test]
fn scattered_edits_of_a_vec_reach_the_next_kernel_and_nothing_else_changes() {
    each_path_foreign_with(builder, |rt, path| {
        let k = kernels(rt);
        let mut v = vec![0u32; PAGES * EPP];
        for pass in 0..3 {
            round(rt, &k, &mut v, &format!("{path:?}, Vec, pass {pass}"));
        }
    });
}
