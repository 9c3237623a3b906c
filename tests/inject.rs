//! Fault injection (`vkhmm::inject`, feature `fault-injection`): the driver out of memory in
//! the middle of a migration, a staging slot that cannot be readied, a refused submission,
//! a panic in the fault handler. Each must end in a typed error or a correct retry, with
//! every byte intact, no hang, and the pool empty once the buffers are gone.
//!
//! Arming is process-wide, so the tests of this file run one at a time (`SERIAL`); nothing
//! else runs in this test binary.

mod common;

use std::sync::{Mutex, MutexGuard};

use common::push::N;
use common::{groups, pattern};
use vkhmm::inject::{self, Site};
use vkhmm::{shaders, Error, Kernel, Location, Managed, Push, Runtime, TransferPath};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn disarm_all() {
    for s in [
        Site::PoolAlloc,
        Site::StagingSlot,
        Site::Submit,
        Site::FaultHandler,
    ] {
        inject::arm(s, 0, 0);
    }
}

/// Runs `f` on a runtime of each of `paths`, with a copy kernel, holding the injection
/// sites for itself (`SERIAL`); every site is disarmed afterwards, also when `f` fails
/// half-way.
fn with_sites(paths: &[TransferPath], f: impl FnMut(&Runtime, TransferPath, &Kernel)) {
    with_sites_on(paths, |path| Runtime::builder().transfer(path), f)
}

/// [`with_sites`] on the runtimes `builder(path)` builds.
fn with_sites_on(
    paths: &[TransferPath],
    builder: impl Fn(TransferPath) -> vkhmm::RuntimeBuilder,
    mut f: impl FnMut(&Runtime, TransferPath, &Kernel),
) {
    let _serial = serial();
    let _disarm = Disarm;
    common::each_runtime(paths, builder, |rt, path| {
        let k = rt.kernel_wgsl(shaders::COPY_U32_WGSL, "main").unwrap();
        f(rt, path, &k)
    });
}

/// Disarms every site when dropped.
struct Disarm;

impl Drop for Disarm {
    fn drop(&mut self) {
        disarm_all();
    }
}

const N_ELEMS: usize = (1 << 20) / 4; // 1 MiB of u32 per buffer

/// `src` (pattern seed 1) and `dst` (seed 7), runtime-owned.
fn buffers(rt: &Runtime) -> (Managed<u32>, Managed<u32>) {
    let mut src = rt.alloc::<u32>(N_ELEMS).unwrap();
    let mut dst = rt.alloc::<u32>(N_ELEMS).unwrap();
    for i in 0..N_ELEMS {
        src[i] = pattern(i, 1);
        dst[i] = pattern(i, 7);
    }
    (src, dst)
}

fn holds(v: &[u32], seed: u32) -> bool {
    v.iter().enumerate().all(|(i, &x)| x == pattern(i, seed))
}

/// `dst := src` with the copy kernel.
fn copy(
    rt: &Runtime,
    k: &vkhmm::Kernel,
    src: &Managed<u32>,
    dst: &mut Managed<u32>,
) -> vkhmm::Result<()> {
    let n = N { n: N_ELEMS as u32 };
    rt.launch(k, groups(N_ELEMS, 256), (src, dst, Push(&n)))
}

/// After a failed launch the buffers hold what they held before it; after a successful
/// one, the copy. Either way a launch with nothing armed then works, and dropping the
/// buffers empties the pool.
fn check_and_recover(
    rt: &Runtime,
    path: TransferPath,
    k: &vkhmm::Kernel,
    got: vkhmm::Result<()>,
    src: Managed<u32>,
    mut dst: Managed<u32>,
) {
    assert!(holds(&src, 1), "{path:?}: src changed");
    match &got {
        Ok(()) => assert!(
            holds(&dst, 1),
            "{path:?}: the launch succeeded but dst is not the copy"
        ),
        Err(e) => {
            assert!(
                !e.is_misuse(),
                "{path:?}: an injected failure reported as misuse: {e}"
            );
            assert!(
                holds(&dst, 7),
                "{path:?}: the launch failed ({e}) but dst changed"
            );
        }
    }
    disarm_all();
    for (i, x) in dst.iter_mut().enumerate() {
        *x = pattern(i, 9);
    }
    copy(rt, k, &src, &mut dst).unwrap();
    assert!(
        holds(&dst, 1),
        "{path:?}: the launch after the failure is wrong"
    );
    drop((src, dst));
    assert_eq!(
        rt.stats().device_bytes_in_use,
        0,
        "{path:?}: device memory leaked"
    );
}

#[test]
fn pool_allocation_fails_in_the_middle_of_a_migration() {
    with_sites(&common::PATHS, |rt, path, k| {
        // Once: the launch evicts what it can and tries again, which works.
        // For good: the launch fails with the allocator's error.
        for fail in [1, u32::MAX] {
            let (src, mut dst) = buffers(rt);
            // The first block (src) is allocated, the second (dst) fails.
            inject::arm(Site::PoolAlloc, 1, fail);
            let got = copy(rt, k, &src, &mut dst);
            assert!(
                inject::fired(Site::PoolAlloc) >= 1,
                "{path:?}: the site was never hit"
            );
            if fail == u32::MAX {
                assert!(
                    matches!(got, Err(Error::OutOfDeviceMemory { .. })),
                    "{path:?}: {got:?}"
                );
            } else {
                assert!(
                    got.is_ok(),
                    "{path:?}: a single failure was not retried: {got:?}"
                );
            }
            check_and_recover(rt, path, k, got, src, dst);
        }
    });
}

#[test]
fn a_staging_slot_cannot_be_readied() {
    with_sites(&[TransferPath::Staged], |rt, _, k| {
        // Each `skip` lets a different number of slots through first: the failure lands at a
        // different point of the upload of src and dst.
        for skip in 0..4 {
            let (src, mut dst) = buffers(rt);
            inject::arm(Site::StagingSlot, skip, u32::MAX);
            let got = copy(rt, k, &src, &mut dst);
            assert!(
                skip > 0 || inject::fired(Site::StagingSlot) == 1,
                "never hit"
            );
            if inject::fired(Site::StagingSlot) == 0 {
                // The launch needed fewer slots: it must simply have worked.
                assert!(got.is_ok(), "skip {skip}: {got:?}");
            } else {
                assert!(
                    got.is_err(),
                    "skip {skip}: a launch without staging succeeded"
                );
            }
            check_and_recover(rt, TransferPath::Staged, k, got, src, dst);
        }
        // Prefetches fail the same way and lose nothing.
        let (src, dst) = buffers(rt);
        inject::arm(Site::StagingSlot, 0, u32::MAX);
        assert!(rt.prefetch(&src[..], Location::Device).is_err());
        inject::arm(Site::StagingSlot, 0, 0);
        assert!(holds(&src, 1) && holds(&dst, 7));
        drop((src, dst));
        assert_eq!(rt.stats().device_bytes_in_use, 0, "device memory leaked");
    });
}

#[test]
fn a_refused_submission_fails_the_launch_and_loses_nothing() {
    with_sites(&common::PATHS, |rt, path, k| {
        // Submission 0 is the first of the launch (an upload on the Staged path, the
        // dispatch on the Direct path); later ones reach the dispatch and the copy-back.
        for skip in 0..4 {
            let (src, mut dst) = buffers(rt);
            inject::arm(Site::Submit, skip, 1);
            let got = copy(rt, k, &src, &mut dst);
            assert!(
                skip > 0 || inject::fired(Site::Submit) == 1,
                "{path:?}: never hit"
            );
            if inject::fired(Site::Submit) == 0 {
                // The launch needed fewer submissions: it must simply have worked.
                assert!(got.is_ok(), "{path:?} skip {skip}: {got:?}");
            } else if let Err(e) = &got {
                assert!(
                    matches!(
                        e,
                        Error::Vulkan {
                            call: "vkQueueSubmit",
                            ..
                        }
                    ),
                    "{path:?} skip {skip}: {e:?}"
                );
            }
            check_and_recover(rt, path, k, got, src, dst);
        }
    });
}

#[test]
fn a_panic_in_the_fault_handler_is_retried() {
    with_sites(&common::PATHS, |rt, path, k| {
        let (src, mut dst) = buffers(rt);
        copy(rt, k, &src, &mut dst).unwrap(); // dst is on the device now
        let before = rt.stats();
        // The first three attempts to serve the CPU's read of dst panic.
        inject::arm(Site::FaultHandler, 0, 3);
        assert!(
            holds(&dst, 1),
            "{path:?}: wrong data after the handler panicked"
        );
        assert_eq!(inject::fired(Site::FaultHandler), 3, "{path:?}");
        let s = rt.stats() - before;
        assert_eq!(s.handler_panics, 3, "{path:?}: {s:?}");
        // The handler still serves faults, and the pool empties.
        rt.prefetch(&dst[..], Location::Device).unwrap();
        assert!(holds(&dst, 1), "{path:?}");
        drop((src, dst));
        assert_eq!(
            rt.stats().device_bytes_in_use,
            0,
            "{path:?}: device memory leaked"
        );
    });
}

#[test]
fn a_refused_download_leaves_the_pages_on_the_device() {
    // The fault handler reads the pool through its mapping wherever it can (lavapipe: always,
    // see `fault_transfer` in src/runtime/builder.rs), so the staging ring's downloads are
    // those of `prefetch(Host)` and eviction. A 64 KiB ring takes many submits per download,
    // so a refused one comes after pages of the same download are in place.
    let small_ring = |path| Runtime::builder().transfer(path).staging_bytes(64 << 10);
    with_sites_on(&[TransferPath::Staged], small_ring, |rt, _, k| {
        for skip in [0, 1, 2, 5, 11] {
            let (src, mut dst) = buffers(rt);
            copy(rt, k, &src, &mut dst).unwrap();
            let pages = rt.residency(&dst[..]).device;
            assert_eq!(pages, N_ELEMS * 4 / 4096, "dst is not on the device");
            inject::arm(Site::Submit, skip, u32::MAX);
            let got = rt.prefetch(&dst[..], Location::Host);
            let fired = inject::fired(Site::Submit);
            disarm_all();
            assert!(skip > 0 || fired == 1, "skip 0: never hit");
            if fired == 0 {
                assert!(got.is_ok(), "skip {skip}: {got:?}");
            } else {
                assert!(
                    matches!(
                        got,
                        Err(Error::Vulkan {
                            call: "vkQueueSubmit",
                            ..
                        })
                    ),
                    "skip {skip}: {got:?}"
                );
                // Whatever did not come home is still on the device, and faults back.
                let r = rt.residency(&dst[..]);
                assert!(r.device > 0, "skip {skip}: {r:?}");
            }
            assert!(
                holds(&dst, 1),
                "skip {skip}: wrong data after a refused download"
            );
            assert!(holds(&src, 1), "skip {skip}");
            // Pages that did come home are what the mirror says: a CPU write to each page
            // reaches the next kernel.
            for i in (0..N_ELEMS).step_by(1024) {
                dst[i] = pattern(i, 9);
            }
            let mut out = rt.alloc::<u32>(N_ELEMS).unwrap();
            let n = N { n: N_ELEMS as u32 };
            rt.launch(k, groups(N_ELEMS, 256), (&dst, &mut out, Push(&n)))
                .unwrap();
            let wrong = (0..N_ELEMS).find(|&i| {
                out[i]
                    != if i % 1024 == 0 {
                        pattern(i, 9)
                    } else {
                        pattern(i, 1)
                    }
            });
            assert_eq!(
                wrong, None,
                "skip {skip}: a CPU write after the refused download"
            );
            drop(out);
            drop((src, dst));
            assert_eq!(
                rt.stats().device_bytes_in_use,
                0,
                "skip {skip}: device memory leaked"
            );
        }
    });
}
