//! Copies of program memory that survive the memory vanishing under them, and the chained
//! signal actions they (and the `signal` fault backend) are built on.
//!
//! The launch path reads a binding's bytes to upload them and writes a kernel's results into
//! a binding's edge pages. The binding is a live borrow, so in a correct program its pages
//! stay mapped; but a buggy program may `munmap` them while the launch runs, and that must
//! give the launch an error, not kill the process. [`copy`] is a `memcpy` that reports
//! such a fault instead of dying of it, the way the kernel's `copy_from_user` does: it is one
//! `rep movsb` (as fast as `memcpy` for large copies on CPUs with ERMS), and a `SIGSEGV` or
//! `SIGBUS` raised on that instruction is caught by a handler that moves the instruction
//! pointer to a fix-up, which returns the bytes left. Every other fault goes to the action
//! that was installed before ([`Chained`]), so the program's own handlers (and the default
//! death) keep working.
//!
//! A userfaultfd fault inside the copy is not a signal: the thread waits for the fault
//! handler as any access would. On other architectures than x86-64, [`copy`] is a plain
//! copy.
//!
//! The handlers allocate nothing and take no lock: they read atomics and the `ucontext`.

use std::cell::UnsafeCell;
use std::ffi::c_void;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// A copy stopped by a fault: this many bytes were copied before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Faulted {
    /// Bytes copied before the fault (the fault lies at `src + copied` or `dst + copied`).
    pub copied: usize,
}

/// Copies `len` bytes from `src` to `dst`; a fault on either side ends the copy with
/// [`Faulted`] instead of a signal, once [`enable`] has installed the handlers (before that,
/// or where they cannot run, a fault is fatal as for any copy).
///
/// # Safety
///
/// As `ptr::copy_nonoverlapping`, except that either range may be unmapped (or become so)
/// during the call: the ranges do not overlap, and bytes written to `dst` must be valid for
/// whatever lives there.
pub unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) -> Result<(), Faulted> {
    if !ENABLED.load(Ordering::Acquire) {
        // SAFETY: forwarded from the caller.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
        return Ok(());
    }
    // SAFETY: `rep_movsb` copies `len` bytes from `src` to `dst` (the caller's ranges) and
    // returns the bytes left, 0 unless the handler stopped it.
    let left = unsafe { arch::rep_movsb(dst, src, len) };
    match left {
        0 => Ok(()),
        left => Err(Faulted { copied: len - left }),
    }
}

/// Installs the `SIGSEGV` and `SIGBUS` handlers that let [`copy`] survive faults. Once per
/// process; call it before installing any other handler of this crate, so that those chain
/// to it. Returns whether copies are guarded from now on.
pub fn enable() -> bool {
    if ENABLED.load(Ordering::Acquire) {
        return true;
    }
    let Some((insn, fixup)) = arch::landmarks() else {
        return false;
    };
    INSN.store(insn, Ordering::Relaxed);
    FIXUP.store(fixup, Ordering::Relaxed);
    let ok = SEGV.install(libc::SIGSEGV, on_fault).is_ok()
        && BUS.install(libc::SIGBUS, on_fault).is_ok();
    ENABLED.store(ok, Ordering::Release);
    ok
}

static ENABLED: AtomicBool = AtomicBool::new(false);
/// Address of the copy instruction, and of the fix-up that follows a fault on it.
static INSN: AtomicUsize = AtomicUsize::new(0);
static FIXUP: AtomicUsize = AtomicUsize::new(0);
static SEGV: Chained = Chained::new();
static BUS: Chained = Chained::new();

extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, uctx: *mut c_void) {
    if !uctx.is_null()
        && arch::redirect(
            uctx,
            INSN.load(Ordering::Relaxed),
            FIXUP.load(Ordering::Relaxed),
        )
    {
        return;
    }
    let chained = if sig == libc::SIGBUS { &BUS } else { &SEGV };
    // SAFETY: the arguments are what the kernel gave this handler.
    unsafe { chained.chain(sig, info, uctx) };
}

#[cfg(target_arch = "x86_64")]
mod arch {
    use std::ffi::c_void;

    /// `rep movsb` of `len` bytes; returns what is left in `rcx` (0 when done). A fault on
    /// the `rep movsb` (at offset 3) resumes at the fix-up (offset 8), which returns `rcx`.
    #[unsafe(naked)]
    pub(super) unsafe extern "C" fn rep_movsb(dst: *mut u8, src: *const u8, len: usize) -> usize {
        std::arch::naked_asm!(
            "mov rcx, rdx", // +0, 3 bytes
            "rep movsb",    // +3, 2 bytes
            "xor eax, eax", // +5, 2 bytes
            "ret",          // +7
            "mov rax, rcx", // +8: the fix-up
            "ret",
        )
    }

    /// The addresses of the copy instruction and of the fix-up, checked against the bytes
    /// the assembler produced.
    pub(super) fn landmarks() -> Option<(usize, usize)> {
        let f = rep_movsb as *const () as usize;
        // SAFETY: the function's first 12 bytes are code of this crate, readable.
        let code = unsafe { std::slice::from_raw_parts(f as *const u8, 12) };
        let movsb = code[3..5] == [0xf3, 0xa4];
        let fixup = code[8..11] == [0x48, 0x89, 0xc8] || code[8..11] == [0x48, 0x8b, 0xc1];
        (movsb && fixup).then_some((f + 3, f + 8))
    }

    /// Moves a thread stopped on `insn` to `fixup`; whether it was there.
    pub(super) fn redirect(uctx: *mut c_void, insn: usize, fixup: usize) -> bool {
        let uc = uctx.cast::<libc::ucontext_t>();
        // SAFETY: for an SA_SIGINFO handler the kernel passes a valid `ucontext_t`, which
        // the handler may change: the thread resumes with the registers it holds.
        unsafe {
            let rip = &mut (*uc).uc_mcontext.gregs[libc::REG_RIP as usize];
            if *rip as usize != insn || insn == 0 {
                return false;
            }
            *rip = fixup as i64;
        }
        true
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod arch {
    use std::ffi::c_void;

    pub(super) unsafe extern "C" fn rep_movsb(dst: *mut u8, src: *const u8, len: usize) -> usize {
        // SAFETY: forwarded from the caller.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
        0
    }

    pub(super) fn landmarks() -> Option<(usize, usize)> {
        None
    }

    pub(super) fn redirect(_uctx: *mut c_void, _insn: usize, _fixup: usize) -> bool {
        false
    }
}

/// A signal action installed over whatever was there before, keeping that one to pass on
/// what the new one does not take.
pub(crate) struct Chained {
    prev: UnsafeCell<MaybeUninit<libc::sigaction>>,
    prev_set: AtomicBool,
    installed: AtomicBool,
}

// SAFETY: `prev` is written once by `install`, before `prev_set` is published and before
// the new handler (its only other reader) exists; it is only read afterwards.
unsafe impl Sync for Chained {}

/// An `SA_SIGINFO` signal handler.
pub(crate) type Handler = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut c_void);

impl Chained {
    pub(crate) const fn new() -> Self {
        Chained {
            prev: UnsafeCell::new(MaybeUninit::uninit()),
            prev_set: AtomicBool::new(false),
            installed: AtomicBool::new(false),
        }
    }

    /// Installs `handler` for `sig` (once; later calls do nothing), keeping the previous
    /// action for [`chain`](Self::chain).
    pub(crate) fn install(
        &'static self,
        sig: libc::c_int,
        handler: Handler,
    ) -> std::io::Result<()> {
        if self.installed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // SAFETY: querying the current action writes one `sigaction` we own; `prev` is
        // written before `prev_set` is published and before our handler exists.
        unsafe {
            let mut old = MaybeUninit::<libc::sigaction>::zeroed();
            if libc::sigaction(sig, std::ptr::null(), old.as_mut_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            (*self.prev.get()).write(old.assume_init());
        }
        self.prev_set.store(true, Ordering::Release);
        // SAFETY: a zeroed `sigaction` is valid; we fill handler, flags and an empty mask.
        // The handler is `extern "C"`, never unwinds and lives for the whole program.
        // SA_ONSTACK keeps Rust's stack-overflow report working (it runs on the alternate
        // stack).
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = handler as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut act.sa_mask);
            if libc::sigaction(sig, &act, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Passes a signal that is not ours to the previous action: its SA_SIGINFO or plain
    /// handler, or — for `SIG_DFL` and `SIG_IGN` — the default action: it is restored and
    /// the handler returns, so the access faults again and the process dies as it would
    /// have without vkhmm (the kernel also kills for an ignored or blocked forced fault).
    ///
    /// # Safety
    ///
    /// Call only from the signal handler, with its arguments.
    pub(crate) unsafe fn chain(
        &self,
        sig: libc::c_int,
        info: *mut libc::siginfo_t,
        uctx: *mut c_void,
    ) {
        let prev = if self.prev_set.load(Ordering::Acquire) {
            // SAFETY: `prev` was written before `prev_set` was published and is never
            // written again.
            Some(unsafe { (*self.prev.get()).assume_init_ref() })
        } else {
            None
        };
        match prev {
            Some(p) if p.sa_sigaction != libc::SIG_DFL && p.sa_sigaction != libc::SIG_IGN => {
                if p.sa_flags & libc::SA_SIGINFO != 0 {
                    // SAFETY: with SA_SIGINFO, `sa_sigaction` is a three-argument handler.
                    let f: Handler = unsafe { std::mem::transmute(p.sa_sigaction) };
                    f(sig, info, uctx);
                } else {
                    // SAFETY: without SA_SIGINFO, `sa_handler` is a one-argument handler.
                    let f: extern "C" fn(libc::c_int) =
                        unsafe { std::mem::transmute(p.sa_sigaction) };
                    f(sig);
                }
            }
            _ => {
                // SAFETY: a zeroed `sigaction` with `SIG_DFL` is a valid action; sigaction(2)
                // is async-signal-safe.
                unsafe {
                    let mut dfl: libc::sigaction = std::mem::zeroed();
                    dfl.sa_sigaction = libc::SIG_DFL;
                    libc::sigaction(sig, &dfl, std::ptr::null_mut());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{mmap_anon, munmap, page_size};

    #[test]
    fn a_copy_from_or_into_an_unmapped_page_reports_where_it_stopped() {
        assert!(enable(), "guarded copies work on this machine");
        let p = page_size();
        let map = mmap_anon(3 * p).unwrap();
        let base = map.as_ptr() as usize;
        // SAFETY: the middle page of our own mapping; nothing refers to it.
        unsafe { munmap(std::ptr::NonNull::new((base + p) as *mut u8).unwrap(), p) }.unwrap();
        let mut buf = vec![7u8; 2 * p];
        // SAFETY: `buf` is ours; the mapping's first page is readable, the second is not.
        let read = unsafe { copy(buf.as_mut_ptr(), (base + 16) as *const u8, 2 * p) };
        assert_eq!(read, Err(Faulted { copied: p - 16 }));
        assert!(buf[..p - 16].iter().all(|&b| b == 0) && buf[p - 16] == 7);
        // SAFETY: the copy starts in the second page, which is gone.
        let wrote = unsafe { copy((base + 2 * p - 8) as *mut u8, buf.as_ptr(), 64) };
        assert_eq!(wrote, Err(Faulted { copied: 0 }));
        // SAFETY: within the third page.
        let within = unsafe { copy((base + 2 * p) as *mut u8, buf.as_ptr(), 64) };
        assert_eq!(within, Ok(()));
        // SAFETY: the rest of our mapping.
        unsafe { munmap(map, p) }.unwrap();
        // SAFETY: as above.
        unsafe {
            munmap(
                std::ptr::NonNull::new((base + 2 * p) as *mut u8).unwrap(),
                p,
            )
        }
        .unwrap();
    }
}
