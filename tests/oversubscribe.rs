//! Oversubscription: a working set larger than the device budget, evicted LRU-first.

mod common;

use common::{groups, pattern};
use vkhmm::{shaders, Push, Runtime};

#[test]
fn a_working_set_four_times_the_budget_stays_exact() {
    let budget = 4 << 20;
    common::each_path_foreign_with(
        |path| Runtime::builder().transfer(path).budget(budget),
        |rt, path| {
            let add = rt.kernel_wgsl(shaders::ADD_K_WGSL, "main").unwrap();
            let n = (2 << 20) / 4; // 2 MiB buffers, eight of them: 16 MiB in all
            let mut bufs: Vec<Vec<u32>> = (0..8)
                .map(|b| (0..n).map(|i| pattern(i, b)).collect())
                .collect();
            for round in 1..=3u32 {
                for (b, v) in bufs.iter_mut().enumerate() {
                    rt.launch(&add, groups(n, 64), (&mut *v, Push(&[n as u32, 1u32])))
                        .unwrap();
                    let s = rt.stats();
                    assert!(
                        s.device_bytes_in_use <= budget,
                        "{path:?}: {} in use over a budget of {budget}",
                        s.device_bytes_in_use
                    );
                    // Touch a little of every buffer now and then: evicted or not, data is right.
                    if b % 3 == 0 {
                        assert_eq!(
                            v[n / 2],
                            pattern(n / 2, b as u32).wrapping_add(round),
                            "{path:?}"
                        );
                    }
                }
            }
            let s = rt.stats();
            assert!(s.evictions >= 8, "{path:?}: evictions counted: {s}");
            for (b, v) in bufs.iter().enumerate() {
                assert!(
                    (0..n).all(|i| v[i] == pattern(i, b as u32).wrapping_add(3)),
                    "{path:?}: buffer {b}"
                );
            }
        },
    );
}

#[test]
fn eviction_skips_the_bindings_of_the_launch_itself() {
    let budget = 6 << 20;
    common::each_path_foreign_with(
        |path| Runtime::builder().transfer(path).budget(budget),
        |rt, path| {
            let copy = rt.kernel_wgsl(shaders::COPY_U32_WGSL, "main").unwrap();
            let n = (2 << 20) / 4;
            let a: Vec<u32> = (0..n).map(|i| pattern(i, 1)).collect();
            let mut b = vec![0u32; n];
            let mut c = vec![0u32; n];
            rt.launch(&copy, groups(n, 256), (&a, &mut b, Push(&(n as u32))))
                .unwrap();
            // b and a are resident; this launch needs b and c and must evict a, never b.
            rt.launch(&copy, groups(n, 256), (&b, &mut c, Push(&(n as u32))))
                .unwrap();
            assert!((0..n).all(|i| c[i] == pattern(i, 1)), "{path:?}");
            assert!((0..n).all(|i| a[i] == pattern(i, 1)), "{path:?}");
        },
    );
}
