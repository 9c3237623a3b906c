//! The `signal` fault backend with `fork()` and with a `SIGSEGV` handler the program
//! installed before vkhmm.
//!
//! One test in its own binary: the program's handler must be in place before the first
//! runtime starts the fault service, and a fork brings every device-resident page of the
//! process home (which would disturb the residency other tests assert).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use common::groups;
use common::push::{AddK, Fill};
use vkhmm::{shaders, FaultBackend, Push};

const PAGE: usize = 4096;

/// The page the program's own handler serves (by making it readable and writable).
static OWN_PAGE: AtomicUsize = AtomicUsize::new(0);
/// How many faults the program's handler served.
static OWN_FAULTS: AtomicUsize = AtomicUsize::new(0);

/// The program's handler: serves `OWN_PAGE`, sends every other fault to the default action.
extern "C" fn own_handler(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    let page = OWN_PAGE.load(Ordering::Acquire);
    if page != 0 && (page..page + PAGE).contains(&addr) {
        OWN_FAULTS.fetch_add(1, Ordering::AcqRel);
        // SAFETY: the page is the test's own mapping.
        unsafe {
            libc::mprotect(
                page as *mut libc::c_void,
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        return;
    }
    // SAFETY: restoring the default action is async-signal-safe; returning re-raises.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(sig, &dfl, std::ptr::null_mut());
    }
}

fn install_own_handler() {
    // SAFETY: installs an `extern "C"` handler that lives for the whole program.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = own_handler as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut act.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGSEGV, &act, std::ptr::null_mut()),
            0
        );
    }
}

fn protected_page() -> *mut u32 {
    let p = common::map_anon(PAGE);
    // SAFETY: the test's own fresh mapping.
    assert_eq!(unsafe { libc::mprotect(p, PAGE, libc::PROT_NONE) }, 0);
    p.cast()
}

/// Runs `child` in a forked child and returns its wait status.
fn in_child(child: impl FnOnce() -> bool) -> i32 {
    // SAFETY: the child only reads and writes memory and calls `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let ok = child();
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

#[test]
fn fork_and_chaining_under_the_signal_backend() {
    // Before the first runtime: the backend, and the program's own handler.
    std::env::set_var("VKHMM_FAULT", "signal");
    install_own_handler();
    common::each_path(|rt, path| {
        assert_eq!(rt.fault_backend(), FaultBackend::Signal);

        // A fault outside vkhmm's memory reaches the program's handler (chained).
        let own = protected_page();
        OWN_PAGE.store(own as usize, Ordering::Release);
        let before = OWN_FAULTS.load(Ordering::Acquire);
        // SAFETY: `own` is a live mapping; the program's handler makes it accessible.
        unsafe { own.write_volatile(5) };
        // SAFETY: as above, now readable.
        assert_eq!(unsafe { own.read_volatile() }, 5, "{path:?}");
        assert_eq!(OWN_FAULTS.load(Ordering::Acquire), before + 1, "{path:?}");
        OWN_PAGE.store(0, Ordering::Release);
        // SAFETY: our own mapping.
        unsafe { libc::munmap(own.cast(), PAGE) };

        // fork() with device-resident Managed data: the child reads and writes it.
        let fill_k = rt.kernel_wgsl(shaders::FILL_INDEX_WGSL, "main").unwrap();
        let add_k = rt.kernel_wgsl(shaders::ADD_K_WGSL, "main").unwrap();
        let n = 64 * 1024;
        let mut m = rt.alloc::<u32>(n).unwrap();
        rt.launch(
            &fill_k,
            groups(n, 256),
            (
                &mut m,
                Push(&Fill {
                    n: n as u32,
                    mul: 2,
                    add: 1,
                }),
            ),
        )
        .unwrap();
        assert_eq!(rt.residency(&m).device, n / 1024, "{path:?}");
        let mp = m.as_mut_ptr() as usize;
        let status = in_child(|| {
            // SAFETY: the child's copy of `m` (no other thread exists in the child).
            let v = unsafe { std::slice::from_raw_parts_mut(mp as *mut u32, n) };
            let read_ok = (0..n).all(|i| v[i] == i as u32 * 2 + 1);
            v.iter_mut().for_each(|x| *x = 0);
            read_ok && v.iter().all(|&x| x == 0)
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{path:?}: the child saw wrong data or could not write (status {status:#x})"
        );
        assert!((0..n).all(|i| m[i] == i as u32 * 2 + 1), "{path:?}: parent");
        rt.launch(
            &add_k,
            groups(n, 256),
            (&mut m, Push(&AddK { n: n as u32, k: 1 })),
        )
        .unwrap();
        assert!(
            (0..n).all(|i| m[i] == i as u32 * 2 + 2),
            "{path:?}: parent after"
        );

        // A foreign fault nobody serves still kills (here: in a child, by SIGSEGV).
        let status = in_child(|| {
            let p = protected_page();
            // SAFETY: deliberately touches a PROT_NONE page: the child must die here.
            unsafe { p.read_volatile() == 0 }
        });
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSEGV,
            "{path:?}: status {status:#x}"
        );
    });
}
