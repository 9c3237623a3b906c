//! `VKHMM_FAULT` unset (auto) where seccomp forbids userfaultfd, as Docker's default profile
//! does: the fault service falls back to the `signal` backend by itself.
//!
//! One test in its own binary: it installs a seccomp filter on the whole process (refusing
//! `userfaultfd(2)` and `USERFAULTFD_IOC_NEW` on `/dev/userfaultfd` with `EPERM`) before the
//! first runtime.

mod common;

use common::push::Fill;
use common::{groups, PATHS};
use vkhmm::{shaders, FaultBackend, Push};

/// Refuses userfaultfd the way a container profile does (x86-64; elsewhere the test says
/// it was skipped).
fn forbid_userfaultfd() -> bool {
    if !cfg!(target_arch = "x86_64") {
        return false;
    }
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const USERFAULTFD_IOC_NEW: u32 = 0xAA00;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let mut prog = [
        op(LD_W_ABS, 0, 0, 4), // arch
        op(JEQ_K, 0, 6, AUDIT_ARCH_X86_64),
        op(LD_W_ABS, 0, 0, 0), // syscall number
        op(JEQ_K, 3, 0, libc::SYS_userfaultfd as u32),
        op(JEQ_K, 0, 3, libc::SYS_ioctl as u32),
        op(LD_W_ABS, 0, 0, 24), // args[1], low half
        op(JEQ_K, 0, 1, USERFAULTFD_IOC_NEW),
        op(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        op(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integers; seccomp(2) reads `fprog` and the
    // filter it points to, both alive for the call. TSYNC applies it to every thread.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        let rc = libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            &fprog as *const libc::sock_fprog,
        );
        assert_eq!(rc, 0, "seccomp: {}", std::io::Error::last_os_error());
    }
    true
}

#[test]
fn without_userfaultfd_auto_falls_back_to_the_signal_backend() {
    let _watchdog = common::Watchdog::arm_for_this_test(std::time::Duration::from_secs(300));
    std::env::remove_var("VKHMM_FAULT");
    if !forbid_userfaultfd() {
        eprintln!("skipped: the seccomp filter of this test is written for x86-64");
        return;
    }
    let caps = vkhmm::diagnostics::probe_fault_capabilities();
    assert_eq!(caps.userfaultfd, None, "{caps}");
    assert_eq!(caps.backend, Ok(FaultBackend::Signal), "{caps}");
    for path in PATHS {
        let Some(rt) = common::runtime(path) else {
            continue;
        };
        assert_eq!(rt.fault_backend(), FaultBackend::Signal, "{path:?}");
        let fill = rt.kernel_wgsl(shaders::FILL_INDEX_WGSL, "main").unwrap();
        let n = 64 * 1024;
        let mut m = rt.alloc::<u32>(n).unwrap();
        let push = Fill {
            n: n as u32,
            mul: 5,
            add: 3,
        };
        rt.launch(&fill, groups(n, 256), (&mut m, Push(&push)))
            .unwrap();
        assert_eq!(rt.residency(&m).device, n / 1024, "{path:?}");
        assert!(
            (0..n).all(|i| m[i] == i as u32 * 5 + 3),
            "{path:?}: read back"
        );
        assert!(rt.stats().cpu_faults > 0, "{path:?}");
        common::assert_foreign_copied_through(&rt, path);
    }
}
