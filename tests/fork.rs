//! `fork()` with device-resident data: pages are copied home first, the child reads them.
//!
//! In its own test binary: the fork hook brings every device-resident page of the process
//! home, which would disturb the counters other tests assert.

mod common;

use common::push::{AddK, Fill};

use common::{each_path_foreign, groups};
use vkhmm::{shaders, Push};

#[test]
fn fork_child_reads_device_resident_data() {
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
