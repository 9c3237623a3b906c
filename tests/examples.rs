//! The examples (the crate vkhmm-examples in `examples/`) at their small sizes, on both
//! transfer paths: each `run` verifies its own result against a CPU reference and fails on
//! any mismatch.
//!
//! These are the functions that `cargo run --example NAME` and `vkhmm demo` run, so the
//! tests run exactly their code.

mod common;

use vkhmm::{shaders, Push, Runtime};
use vkhmm_examples::{
    blur, histogram, linked, matmul, mmap_file, oversubscribe, pipeline, reduce, saxpy,
};

/// Runs one example on each transfer path, panicking with its error.
fn on_both_paths(name: &str, run: fn(&Runtime, bool) -> anyhow::Result<String>) {
    // The examples use `Vec`s, which the signal fault backend refuses.
    common::each_path_foreign(|rt, path| {
        let before = rt.stats();
        match run(rt, false) {
            Ok(size) => eprintln!("{name} {path:?}, {size}: {}", rt.stats() - before),
            Err(e) => panic!("{name} on {path:?}: {e:#}"),
        }
    });
}

#[test]
fn saxpy() {
    on_both_paths("saxpy", saxpy::run);
}

#[test]
fn reduce() {
    on_both_paths("reduce", reduce::run);
}

#[test]
fn matmul() {
    on_both_paths("matmul", matmul::run);
}

#[test]
fn histogram() {
    on_both_paths("histogram", histogram::run);
}

/// A file mapping is copied through under either fault backend: it runs under both.
#[test]
fn mmap_file() {
    common::each_path(|rt, path| {
        let before = rt.stats();
        match mmap_file::run(rt, false) {
            Ok(size) => {
                let d = rt.stats() - before;
                eprintln!("mmap_file {path:?}, {size}: {d}");
                assert!(d.copied_to_device >= 32 << 20, "{path:?}: {d}");
            }
            Err(e) => panic!("mmap_file on {path:?}: {e:#}"),
        }
    });
}

#[test]
fn blur() {
    on_both_paths("blur", blur::run);
    let dir = std::env::var_os("VKHMM_OUT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    for name in ["vkhmm-blur-input.png", "vkhmm-blur-output.png"] {
        let meta = std::fs::metadata(dir.join(name)).expect("the PNG was written");
        assert!(meta.len() > 1000, "{name} is {} bytes", meta.len());
    }
}

#[test]
fn pipeline() {
    on_both_paths("pipeline", pipeline::run);
}

#[test]
fn linked() {
    on_both_paths("linked", linked::run);
}

#[test]
fn oversubscribe() {
    for path in common::PATHS {
        let builder = Runtime::builder()
            .transfer(path)
            .budget(oversubscribe::budget(false));
        let Some(rt) = common::runtime_with(builder) else {
            return;
        };
        let before = rt.stats();
        match oversubscribe::run(&rt, false) {
            Ok(size) => eprintln!("oversubscribe {path:?}, {size}: {}", rt.stats() - before),
            Err(e) => panic!("oversubscribe on {path:?}: {e:#}"),
        }
    }
}

/// Slices of one ordinary (not page-aligned) `Vec`, processed in turn with a budget smaller
/// than the `Vec`: what the oversubscribe example does, minus `Managed`.
///
/// Neighbouring slices share the page at their boundary, so each launch's extent absorbs the
/// previous slice's extent and the extent grows toward the whole `Vec`; eviction may not take
/// it (it is the launch's own), and the launch fails with `OutOfDeviceMemory` although each
/// slice is an eighth of the budget.
#[test]
fn oversubscribe_slices_of_one_vec() {
    for path in common::PATHS {
        let budget = 16 << 20;
        let Some(rt) = common::runtime_with(Runtime::builder().transfer(path).budget(budget))
        else {
            return;
        };
        if rt.fault_backend() == vkhmm::FaultBackend::Signal {
            common::assert_foreign_copied_through(&rt, path); // it needs foreign memory to migrate
            continue;
        }
        let add = rt.kernel_wgsl(shaders::ADD_K_WGSL, "main").unwrap();
        let n = (32 << 20) / 4; // 32 MiB: twice the budget
        let slice = n / 16; // 2 MiB per launch
        let mut data: Vec<u32> = (0..n).map(|i| common::pattern(i, 1)).collect();
        for (k, s) in data.chunks_mut(slice).enumerate() {
            let p = [s.len() as u32, 1u32];
            if let Err(e) = rt.launch(&add, common::groups(s.len(), 64), (s, Push(&p))) {
                // Dropping the runtime after this error hangs (see the test below).
                std::mem::forget(rt);
                panic!("{path:?}: slice {k} of 16: {e}");
            }
        }
        assert!((0..n).all(|i| data[i] == common::pattern(i, 1).wrapping_add(1)));
    }
}

/// A launch with two bindings that fails as in the test above (the first binding's extent
/// is merged, then the second one's allocation fails) leaves the first binding's pages
/// claimed: dropping the runtime afterwards never returns, spinning in
/// `migrate::claim_all` (from `to_host` in `Runtime::drop`).
#[test]
fn runtime_drop_after_a_failed_launch_returns() {
    let (done, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Some(rt) = common::runtime_with(Runtime::builder().budget(16 << 20)) else {
            return done.send(()).unwrap();
        };
        let saxpy = rt.kernel_wgsl(shaders::SAXPY_WGSL, "main").unwrap();
        let n = (32 << 20) / 4;
        let x = vec![1.0f32; n];
        let mut y = vec![2.0f32; n];
        let failed = x.chunks(n / 16).zip(y.chunks_mut(n / 16)).any(|(xs, ys)| {
            let p = (3.0f32, xs.len() as u32);
            let p = [p.0.to_bits(), p.1];
            rt.launch(&saxpy, common::groups(xs.len(), 256), (xs, ys, Push(&p)))
                .is_err()
        });
        eprintln!("a launch failed: {failed}");
        drop(rt);
        done.send(()).unwrap();
    });
    wait.recv_timeout(std::time::Duration::from_secs(60))
        .expect("Runtime::drop returns within a minute");
}

/// Eviction copies device-only data home, and `Stats::bytes_to_host` counts it, so the
/// oversubscribe example reports the traffic that happened.
#[test]
fn eviction_counts_the_bytes_it_brings_home() {
    for path in common::PATHS {
        let Some(rt) = common::runtime_with(Runtime::builder().transfer(path).budget(16 << 20))
        else {
            return;
        };
        let fill = rt.kernel_wgsl(shaders::FILL_INDEX_WGSL, "main").unwrap();
        let n = (12 << 20) / 4;
        let mut a = rt.alloc::<u32>(n).unwrap();
        let mut b = rt.alloc::<u32>(n).unwrap();
        let p = [n as u32, 1, 0];
        rt.launch(&fill, common::groups(n, 64), (&mut a, Push(&p)))
            .unwrap();
        let before = rt.stats();
        // `a` is device-only; `b` does not fit beside it, so `a` is evicted (copied home).
        rt.launch(&fill, common::groups(n, 64), (&mut b, Push(&p)))
            .unwrap();
        let d = rt.stats() - before;
        assert!(d.evictions >= 1, "{path:?}: {d}");
        assert!(
            d.bytes_to_host >= (12 << 20),
            "{path:?}: 12 MiB evicted, {} B counted to host ({d})",
            d.bytes_to_host
        );
        assert!((0..n).all(|i| a[i] == i as u32), "{path:?}");
    }
}

/// `pipeline` after `linked` in the same process (one thread, a fresh runtime per example
/// and path) used to hang about one run in four: `pipeline`'s vectors reuse a malloc heap
/// that had been split into several VMAs, and a fault window crossing a split was given up
/// on (`UFFDIO_COPY` may not cross VMAs). A watchdog turns a hang into a failure.
#[test]
fn pipeline_after_linked_does_not_hang() {
    let (done, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // One runtime per example and path, dropped after it, as the tests above do.
        common::each_path_foreign(|rt, _| drop(linked::run(rt, false).unwrap()));
        common::each_path_foreign(|rt, _| drop(pipeline::run(rt, false).unwrap()));
        done.send(()).unwrap();
    });
    wait.recv_timeout(std::time::Duration::from_secs(60))
        .expect("linked then pipeline finish within a minute");
}
