//! Asynchronous launches in a scope: overlap with CPU work, order, waits, errors, panics.

mod common;

use common::{each_path_foreign, groups, pattern};
use vkhmm::{shaders, Push};

#[test]
fn cpu_work_overlaps_launches_that_run_in_order() {
    each_path_foreign(|rt, path| {
        let add = rt.kernel_wgsl(shaders::ADD_K_WGSL, "main").unwrap();
        let n = 1 << 20;
        let mut a: Vec<u32> = (0..n).map(|i| pattern(i, 1)).collect();
        let mut b: Vec<u32> = (0..n).map(|i| pattern(i, 2)).collect();
        let mut cpu: Vec<u32> = (0..n).map(|i| pattern(i, 3)).collect();
        let push = [n as u32, 1u32];
        let twice = [n as u32, 2u32];
        rt.scope(|s| -> vkhmm::Result<()> {
            let first = s.launch_async(&add, groups(n, 64), (&mut a, Push(&push)))?;
            let _second = s.launch_async(&add, groups(n, 64), (&mut b, Push(&twice)))?;
            for x in cpu.iter_mut() {
                *x = x.wrapping_mul(3); // unrelated memory: never waits for the kernels
            }
            first.wait()
            // `_second` is settled when the scope ends
        })
        .unwrap()
        .unwrap();
        assert!(
            (0..n).all(|i| a[i] == pattern(i, 1).wrapping_add(1)),
            "{path:?}: a"
        );
        assert!(
            (0..n).all(|i| b[i] == pattern(i, 2).wrapping_add(2)),
            "{path:?}: b"
        );
        assert!(
            (0..n).all(|i| cpu[i] == pattern(i, 3).wrapping_mul(3)),
            "{path:?}: cpu"
        );
        assert_eq!(rt.stats().launches, 2);
    });
}

#[test]
fn a_touch_from_another_thread_waits_until_the_launch_is_settled() {
    each_path_foreign(|rt, path| {
        let add = rt.kernel_wgsl(shaders::ADD_K_WGSL, "main").unwrap();
        let n = 4 << 20;
        let mut v: Vec<u32> = (0..n).map(|i| pattern(i, 4)).collect();
        let addr = v.as_ptr() as usize;
        let push = [n as u32, 5u32];
        rt.scope(|s| -> vkhmm::Result<()> {
            let pending = s.launch_async(&add, groups(n, 64), (&mut v, Push(&push)))?;
            let reader = std::thread::spawn(move || {
                // SAFETY: an aligned, initialised u32 inside `v`, which outlives the scope;
                // the test reads it concurrently on purpose (a volatile read of plain memory).
                unsafe { std::ptr::read_volatile((addr as *const u32).add(n / 2)) }
            });
            // The reader blocks until the kernel ends and the launch is settled in the
            // background; it does not need this thread to wait first.
            let seen = reader.join().unwrap();
            pending.wait()?;
            assert_eq!(
                seen,
                pattern(n / 2, 4).wrapping_add(5),
                "{path:?}: the touch saw the result"
            );
            Ok(())
        })
        .unwrap()
        .unwrap();
    });
}

#[test]
fn synchronize_and_sync_launches_settle_async_ones() {
    each_path_foreign(|rt, path| {
        let add = rt.kernel_wgsl(shaders::ADD_K_WGSL, "main").unwrap();
        let n = 100_000;
        let mut a = vec![7u32; n];
        let mut b = vec![1u32; n];
        let push = [n as u32, 1u32];
        rt.scope(|s| {
            let _p = s
                .launch_async(&add, groups(n, 64), (&mut a, Push(&push)))
                .unwrap();
            rt.synchronize().unwrap();
            rt.launch(&add, groups(n, 64), (&mut b, Push(&push)))
                .unwrap();
        })
        .unwrap();
        assert_eq!((a[n - 1], b[0]), (8, 2), "{path:?}");
    });
}

#[test]
fn a_panicking_scope_still_settles_its_launches() {
    each_path_foreign(|rt, path| {
        let add = rt.kernel_wgsl(shaders::ADD_K_WGSL, "main").unwrap();
        let n = 100_000;
        let mut a = vec![1u32; n];
        let push = [n as u32, 1u32];
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.scope(|s| {
                let _p = s
                    .launch_async(&add, groups(n, 64), (&mut a, Push(&push)))
                    .unwrap();
                panic!("user code panics with a launch in flight");
            })
        }));
        assert!(r.is_err());
        assert!(a.iter().all(|&x| x == 2), "{path:?}");
    });
}
