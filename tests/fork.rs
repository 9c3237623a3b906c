//! `fork()` with device-resident data: pages are copied home first, the child reads them.
//!
//! In its own test binary: the fork hook brings every device-resident page of the process
//! home, which would disturb the counters other tests assert — and the tests here take turns
//! for the same reason.

mod common;

use common::push::{AddK, Fill};

use common::{each_path_foreign, groups};
use vkhmm::{shaders, Push};

/// Held by each test for its whole run: a fork in one would bring the other's pages home.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ALONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn fork_child_reads_device_resident_data() {
    let _alone = alone();
    each_path_foreign(|rt, path| {
        let fill_k = rt.kernel_wgsl(shaders::FILL_INDEX_WGSL, "main").unwrap();
        let add_k = rt.kernel_wgsl(shaders::ADD_K_WGSL, "main").unwrap();
        let n = 100_000u32;
        let mut v = vec![0u32; 100_000];
        rt.launch(
            &fill_k,
            groups(v.len(), 64),
            (&mut v, Push(&Fill { n, mul: 2, add: 1 })),
        )
        .unwrap();
        assert!(rt.residency(&v).device > 0);
        // SAFETY: the child only reads memory and calls `_exit`; no locks are taken there.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let ok = (0..v.len()).all(|i| v[i] == i as u32 * 2 + 1);
            // SAFETY: `_exit` ends the child without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{path:?}: child saw wrong data"
        );
        assert!(
            (0..v.len()).all(|i| v[i] == i as u32 * 2 + 1),
            "{path:?}: parent"
        );
        rt.launch(
            &add_k,
            groups(v.len(), 64),
            (&mut v, Push(&AddK { n, k: 1 })),
        )
        .unwrap(); // the parent keeps working
        assert!(
            (0..v.len()).all(|i| v[i] == i as u32 * 2 + 2),
            "{path:?}: parent after"
        );
    });
}

/// A fork while pages are in every state the newer mechanisms leave: never-written pages
/// whose device copy is known zero, pages a sequential write lifted in a grown window (Host),
/// pages read back (Shared), and device-only data. Parent and child each see exactly their
/// own memory.
#[test]
fn fork_with_zero_grown_window_and_shared_pages() {
    let _alone = alone();
    common::each_path(|rt, path| {
        let k = common::kernels(rt);
        let words = 1024 * 256; // 256 pages
        let mut zero = rt.alloc::<u32>(words).unwrap();
        let mut sum = [0u32; 4];
        let n = words as u32;
        // Never written: read by a kernel, its device copy known zero.
        rt.launch(&k.sum, groups(words, 256), (&*zero, &mut sum, Push(&[n])))
            .unwrap();
        // Written by a kernel, then half read back (Shared), a quarter rewritten in order
        // (grown write windows: Host), the rest left on the device.
        let mut data = rt.alloc::<u32>(words).unwrap();
        rt.launch(
            &k.fill,
            groups(words, 64),
            (&mut *data, Push(&Fill { n, mul: 2, add: 1 })),
        )
        .unwrap();
        assert!(data[..words / 2]
            .iter()
            .enumerate()
            .all(|(i, &x)| x == i as u32 * 2 + 1));
        for x in &mut data[..words / 4] {
            *x += 1;
        }
        zero[3] = 4; // one write into the zero pages
        let expect_data = |i: usize| i as u32 * 2 + 1 + u32::from(i < words / 4);
        let expect_zero = |i: usize| if i == 3 { 4 } else { 0 };
        // SAFETY: the child only reads memory and calls `_exit`; no locks are taken there.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let ok = (0..words).all(|i| data[i] == expect_data(i) && zero[i] == expect_zero(i));
            // SAFETY: `_exit` ends the child without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{path:?}: child saw wrong data"
        );
        let wrong = (0..words).find(|&i| data[i] != expect_data(i) || zero[i] != expect_zero(i));
        assert_eq!(wrong, None, "{path:?}: parent");
        // The parent goes on: a kernel sees both buffers as they are.
        rt.launch(
            &k.add,
            groups(words, 64),
            (&mut *zero, Push(&AddK { n, k: 1 })),
        )
        .unwrap();
        let wrong = (0..words).find(|&i| zero[i] != expect_zero(i) + 1);
        assert_eq!(wrong, None, "{path:?}: parent after");
    });
}
