//! The `signal` fault backend's primitives: `mprotect` + `SIGSEGV`, for runtime-owned memory
//! only.
//!
//! # What this module does
//!
//! Where userfaultfd cannot be opened (seccomp, as under Docker's default profile; no
//! permission) or lacks write protection, CPU touches are trapped with page protections
//! instead:
//!
//! | page state | protection | a CPU access |
//! |---|---|---|
//! | `Host` | `PROT_READ \| PROT_WRITE` | free |
//! | `Shared` | `PROT_READ` | a write faults → `Host` (device copy dropped) |
//! | `Device` | `PROT_NONE`, contents dropped (`MADV_DONTNEED`) | faults → copied back |
//!
//! A `SIGSEGV` handler ([`on_sigsegv`]) checks the address against the table of
//! runtime-owned ranges ([`add_managed`]: every live `Managed<T>`), hands a fault there to
//! the helper thread through a slot (address, access kind) and an eventfd, sleeps on the
//! slot's futex until the helper has copied the data back and changed the protection, and
//! returns: the kernel re-executes the access, which now succeeds (or faults again and is
//! handed over again). Every other fault is chained to the handler that was installed
//! before (`sys::guarded::Chained`).
//!
//! The helper thread (`fault::signal_helper`) takes faults from the slots ([`take_pending`],
//! [`complete`]) and resolves them with the same code as the userfaultfd handler, through the
//! running `trap::Backend`; this backend's `copy` writes through `/proc/self/mem` (below),
//! and its `write_protect` and
//! `wake` are `mprotect` and a poke of the helper.
//!
//! # Why `/proc/self/mem`
//!
//! The page being filled must not become accessible before it holds its data: another
//! thread could read the zeros in between (`UFFDIO_COPY` is atomic for the same reason).
//! A write to `/proc/self/mem` goes through the kernel's `FOLL_FORCE` path, which fills a
//! `PROT_NONE` page of a private mapping without changing its protection; the `mprotect`
//! that follows publishes the finished page. The service checks at start-up that such a
//! write works and refuses this backend otherwise.
//!
//! # Rules for the signal handler (async-signal-safety)
//!
//! - It allocates nothing and takes no lock: the range table and the slots are static
//!   atomics, the eventfd write and the futex calls are raw syscalls (`rustix` does not go
//!   through libc and leaves `errno` alone).
//! - It never waits for anything but the helper, and the helper never waits for a thread
//!   that may be blocked in a fault: the helper takes only the service's gate and the
//!   handler transfer context, which no faulting thread holds (rules of
//!   `docs/architecture.md`, "deadlock-free"). A fault raised on the helper thread itself,
//!   or in a forked child (which has no helper), is chained instead of waited on.
//! - Only `SEGV_ACCERR` faults (a protection refused the access) in a managed range are
//!   taken; `SEGV_MAPERR` (nothing mapped: a use after free), signals sent by `kill`, and
//!   every other address go to the previous handler.
//!
//! # Ordering hazards
//!
//! 1. **Protection and state change together, under a claim.** Whoever changes a page's
//!    protection owns it (`BUSY`). The helper answers a fault on a claimed page with "wait"
//!    and retries when poked: a faulting thread never sees a half-moved page. Even the
//!    helper's defensive re-protection of a page whose fault turned out stale claims it
//!    first, so it cannot undo a launcher's protection that landed meanwhile.
//! 2. **Protect before dropping.** A written binding's pages become `PROT_NONE` *before*
//!    `MADV_DONTNEED`, so a concurrent toucher faults into the helper (and waits on the
//!    claim) instead of reading a fresh zero page.
//! 3. **Fill before publishing.** Data is written through `/proc/self/mem` while the page is
//!    still `PROT_NONE`; only then does `mprotect` open it.
//! 4. **No events.** Unlike userfaultfd, this backend hears nothing of `munmap`,
//!    `madvise` or `mremap`, which is why it serves only memory the runtime owns:
//!    `Managed<T>`'s drop marks its pages gone under the mirror's writer lock and the
//!    service's gate (so that no launch and no helper round is writing into the range)
//!    before it unmaps, and a later write into the reused addresses cannot happen.
//! 5. **Kernel-mode accesses are not served.** A syscall that reads or writes a protected
//!    page (`read(2)` into a `Device` buffer) fails with `EFAULT` instead of faulting: the
//!    kernel does not raise `SIGSEGV` for its own accesses.
//! 6. **Slots are reused only after the waiter left.** The waiter frees its slot after the
//!    helper marked it done; the helper never touches a slot it has marked done.

use std::ffi::c_void;
use std::ops::Range;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use rustix::io::Errno;
use rustix::thread::futex;

use super::uffd::CopyError;
use crate::mirror::plan::page_floor;
use crate::mirror::PAGE;
use crate::sys::guarded::Chained;
use crate::sys::slots::{self, FREE};
use crate::sys::{self, Prot};

// ------------------------------------------------------------------------------------------
// The table of runtime-owned ranges

/// Live `Managed<T>` allocations the table can hold at once.
const MAX_MANAGED: usize = 16384;
/// Bits of a packed entry that hold the page count (the rest: the first page number).
const LEN_BITS: u32 = 28;

/// Each entry is one range packed into one word (first page << 28 | pages), so that the
/// signal handler reads a range in one atomic load and never a torn pair. 0 = free.
static MANAGED: [AtomicU64; MAX_MANAGED] = [const { AtomicU64::new(0) }; MAX_MANAGED];
/// One past the highest entry ever used: the handler scans no further.
static MANAGED_HIGH: AtomicUsize = AtomicUsize::new(0);

fn pack(start: usize, len: usize) -> Option<u64> {
    let (page, pages) = (start / PAGE, len / PAGE);
    let fits = start.is_multiple_of(PAGE)
        && len.is_multiple_of(PAGE)
        && pages > 0
        && (pages as u64) < (1 << LEN_BITS)
        && (page as u64) < (1 << (64 - LEN_BITS));
    fits.then_some(((page as u64) << LEN_BITS) | pages as u64)
}

fn unpack(v: u64) -> Range<usize> {
    let start = (v >> LEN_BITS) as usize * PAGE;
    start..start + (v & ((1 << LEN_BITS) - 1)) as usize * PAGE
}

/// Records `[start, start + len)` (page-aligned) as runtime-owned memory. Returns false if
/// the table is full or the range cannot be represented; the `signal` backend then treats
/// the memory as foreign (a typed error at launch).
pub(crate) fn add_managed(start: usize, len: usize) -> bool {
    let Some(v) = pack(start, len) else {
        return false;
    };
    for (i, e) in MANAGED.iter().enumerate() {
        if e.compare_exchange(0, v, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            MANAGED_HIGH.fetch_max(i + 1, Ordering::AcqRel);
            return true;
        }
    }
    false
}

/// Forgets a range recorded by [`add_managed`].
pub(crate) fn remove_managed(start: usize, len: usize) {
    let Some(v) = pack(start, len) else { return };
    let high = MANAGED_HIGH.load(Ordering::Acquire);
    for e in &MANAGED[..high] {
        if e.compare_exchange(v, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
    }
}

/// The runtime-owned range holding `addr`, if any. Async-signal-safe.
pub(crate) fn managed_range(addr: usize) -> Option<Range<usize>> {
    let high = MANAGED_HIGH.load(Ordering::Acquire).min(MAX_MANAGED);
    MANAGED[..high]
        .iter()
        .map(|e| e.load(Ordering::Acquire))
        .filter(|&v| v != 0)
        .map(unpack)
        .find(|r| r.contains(&addr))
}

/// Whether `span` lies wholly inside one runtime-owned range.
pub(crate) fn is_managed(span: &Range<usize>) -> bool {
    !span.is_empty() && managed_range(span.start).is_some_and(|r| span.end <= r.end)
}

// ------------------------------------------------------------------------------------------
// Fault slots: the handler's mailbox

/// Faults that can wait at once; a thread finding every slot taken waits for a free one.
pub(crate) const SLOTS: usize = 256;

const PENDING: u32 = 2;
const TAKEN: u32 = 3;
const DONE: u32 = 4;

const READ: u32 = 0;
const WRITE: u32 = 1;
/// The architecture does not say (only x86-64 reads the page-fault error code).
const UNKNOWN: u32 = 2;

struct Slot {
    /// `FREE` → `FILLING` (a handler claimed it) → `PENDING` (filled, helper notified) →
    /// `TAKEN` (the helper owns the fault) → `DONE` (resolved; the waiter frees it).
    state: AtomicU32,
    addr: AtomicUsize,
    access: AtomicU32,
}

#[allow(clippy::declare_interior_mutable_const)]
const SLOT_INIT: Slot = Slot {
    state: AtomicU32::new(FREE),
    addr: AtomicUsize::new(0),
    access: AtomicU32::new(READ),
};
static SLOT: [Slot; SLOTS] = [SLOT_INIT; SLOTS];
/// Bumped whenever a slot is freed; threads that found none wait on it.
static FREED: AtomicU32 = AtomicU32::new(0);
static FREE_WAITERS: AtomicU32 = AtomicU32::new(0);

/// The service's eventfd (the helper polls it); -1 before the backend starts.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
/// The helper thread's tid: its own faults are not waited on (it would wait for itself).
static HELPER_TID: AtomicU32 = AtomicU32::new(0);
/// The process that runs the helper: a forked child has none.
static OWNER_PID: AtomicU32 = AtomicU32::new(0);

fn poke_helper() {
    let fd = WAKE_FD.load(Ordering::Acquire);
    if fd >= 0 {
        // SAFETY: the eventfd belongs to the process-wide service, which is never dropped.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
    }
}

fn pid() -> u32 {
    rustix::process::getpid().as_raw_nonzero().get() as u32
}

/// Hands the fault at `page` to the helper and waits until it is resolved.
fn submit(page: usize, access: u32) {
    let first = sys::gettid() as usize % SLOTS;
    let claimed = slots::take(SLOTS, first, |i| &SLOT[i].state);
    let Some(i) = claimed else {
        // Every slot is taken: wait (bounded) for one to be freed, then let the access
        // fault again.
        let seq = FREED.load(Ordering::Acquire);
        FREE_WAITERS.fetch_add(1, Ordering::AcqRel);
        let ms = futex::Timespec {
            tv_sec: 0,
            tv_nsec: 1_000_000,
        };
        let _ = futex::wait(&FREED, futex::Flags::PRIVATE, seq, Some(&ms));
        FREE_WAITERS.fetch_sub(1, Ordering::AcqRel);
        return;
    };
    let slot = &SLOT[i];
    slot.addr.store(page, Ordering::Relaxed);
    slot.access.store(access, Ordering::Relaxed);
    slot.state.store(PENDING, Ordering::Release);
    poke_helper();
    loop {
        let s = slot.state.load(Ordering::Acquire);
        if s == DONE {
            break;
        }
        // EAGAIN (the state moved on) and EINTR simply loop.
        let _ = futex::wait(&slot.state, futex::Flags::PRIVATE, s, None);
    }
    slot.state.store(FREE, Ordering::Release);
    FREED.fetch_add(1, Ordering::AcqRel);
    if FREE_WAITERS.load(Ordering::Acquire) > 0 {
        let _ = futex::wake(&FREED, futex::Flags::PRIVATE, u32::MAX);
    }
}

/// What the access that faulted did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
    /// The architecture does not say (only x86-64 reads the page-fault error code).
    Unknown,
}

/// Makes the calling thread the helper: its own faults are chained, never waited on (it
/// would wait for itself).
pub(crate) fn become_helper() {
    HELPER_TID.store(sys::gettid(), Ordering::Release);
}

/// Takes every fault handed over since the last call (each slot `PENDING` → `TAKEN`) and
/// calls `take` with its slot; the helper then owns it until [`complete`].
pub(crate) fn take_pending(mut take: impl FnMut(usize)) {
    for (i, slot) in SLOT.iter().enumerate() {
        if slot
            .state
            .compare_exchange(PENDING, TAKEN, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            take(i);
        }
    }
}

/// The fault the helper took in slot `i`: its page and access.
pub(crate) fn fault(i: usize) -> (usize, Access) {
    let page = SLOT[i].addr.load(Ordering::Relaxed);
    let access = match SLOT[i].access.load(Ordering::Relaxed) {
        READ => Access::Read,
        WRITE => Access::Write,
        _ => Access::Unknown,
    };
    (page, access)
}

/// The fault in slot `i` is resolved: its thread returns from the handler and retries.
pub(crate) fn complete(i: usize) {
    SLOT[i].state.store(DONE, Ordering::Release);
    let _ = futex::wake(&SLOT[i].state, futex::Flags::PRIVATE, 1);
}

// ------------------------------------------------------------------------------------------
// The SIGSEGV handler

/// The `SIGSEGV` action: ours over whatever was installed before (to which
/// [`on_sigsegv`] passes every fault that is not ours).
static SEGV: Chained = Chained::new();

/// Whether the faulting access was a write.
#[cfg(target_arch = "x86_64")]
fn access_of(uctx: *mut c_void) -> u32 {
    if uctx.is_null() {
        return UNKNOWN;
    }
    // SAFETY: for an SA_SIGINFO handler the kernel passes a valid `ucontext_t`; on x86-64
    // `gregs[REG_ERR]` holds the page-fault error code, whose bit 1 means "write".
    let err =
        unsafe { (*uctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs[libc::REG_ERR as usize] };
    if err & 2 != 0 {
        WRITE
    } else {
        READ
    }
}

/// Whether the faulting access was a write (not known on this architecture).
#[cfg(not(target_arch = "x86_64"))]
fn access_of(_uctx: *mut c_void) -> u32 {
    UNKNOWN
}

/// `si_code` of a fault on a mapped page whose protection refused the access (the uapi
/// value; the `libc` crate does not name it).
const SEGV_ACCERR: libc::c_int = linux_raw_sys::general::SEGV_ACCERR as libc::c_int;

/// The `SIGSEGV` handler. Async-signal-safe: see the module docs.
extern "C" fn on_sigsegv(sig: libc::c_int, info: *mut libc::siginfo_t, uctx: *mut c_void) {
    // SAFETY: the kernel passes a valid `siginfo_t` to an SA_SIGINFO handler; for SIGSEGV
    // `si_addr` is the faulting address.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    let ours = code == SEGV_ACCERR
        && managed_range(addr).is_some()
        && sys::gettid() != HELPER_TID.load(Ordering::Acquire)
        && pid() == OWNER_PID.load(Ordering::Acquire);
    if !ours {
        // SAFETY: `sig`, `info` and `uctx` are what the kernel gave this handler.
        unsafe { SEGV.chain(sig, info, uctx) };
        return;
    }
    submit(page_floor(addr), access_of(uctx));
}

// ------------------------------------------------------------------------------------------
// The backend's memory operations

/// The `signal` backend's handle: `/proc/self/mem`, open for writing.
pub(crate) struct Trap {
    mem: OwnedFd,
}

impl Trap {
    /// Opens `/proc/self/mem` and checks that it can fill a `PROT_NONE` page.
    pub fn open() -> Result<Trap, String> {
        use rustix::fs::{Mode, OFlags};
        let mem = rustix::fs::open(
            "/proc/self/mem",
            OFlags::RDWR | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("cannot open /proc/self/mem for writing: {e}"))?;
        let trap = Trap { mem };
        trap.self_test()?;
        Ok(trap)
    }

    fn self_test(&self) -> Result<(), String> {
        let page = sys::mmap_anon(PAGE).map_err(|e| format!("mmap: {e}"))?;
        let addr = page.as_ptr() as usize;
        let pattern: [u8; 8] = 0x0123_4567_89ab_cdefu64.to_ne_bytes();
        // SAFETY: the page is this function's own fresh mapping; nothing else refers to it.
        let r = unsafe { sys::mprotect(addr, PAGE, Prot::None) }
            .map_err(|e| format!("mprotect: {e}"))
            .and_then(|()| {
                // SAFETY: as above; `pattern` is readable for its length.
                unsafe { self.copy(addr, pattern.as_ptr(), pattern.len(), Prot::Read) }
                    .map_err(|e| format!("writing a PROT_NONE page through /proc/self/mem: {e}"))
            })
            .and_then(|_| {
                // SAFETY: the page is readable now and holds at least 8 initialised bytes.
                let got = unsafe { std::ptr::read(addr as *const [u8; 8]) };
                (got == pattern)
                    .then_some(())
                    .ok_or_else(|| "a /proc/self/mem write did not land".to_owned())
            });
        // SAFETY: our own mapping, no reference into it survives.
        let _ = unsafe { sys::munmap(page, PAGE) };
        r
    }

    /// Fills `[dst, dst + len)` with the bytes at `src` while it stays inaccessible, then
    /// gives it `prot`. Allocates nothing.
    ///
    /// # Safety
    ///
    /// `src..src + len` must be readable and outside protected managed memory;
    /// `dst..dst + len` must be page-aligned managed memory whose pages the caller owns
    /// (claimed): the bytes must form valid values for whatever lives there.
    pub unsafe fn copy(
        &self,
        dst: usize,
        src: *const u8,
        len: usize,
        prot: Prot,
    ) -> Result<usize, CopyError> {
        // SAFETY: the caller guarantees `src` is readable for `len` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(src, len) };
        let mut done = 0;
        while done < len {
            match rustix::io::pwrite(&self.mem, &bytes[done..], (dst + done) as u64) {
                Ok(0) => return Err(CopyError::Gone(Errno::IO)),
                Ok(n) => done += n,
                Err(Errno::INTR) => {}
                // Nothing mapped there any more.
                Err(e @ (Errno::IO | Errno::FAULT)) => return Err(CopyError::Gone(e)),
                Err(e) => return Err(CopyError::Failed(e)),
            }
        }
        // SAFETY: the caller owns the range; its data is in place, so opening it is sound.
        match unsafe { sys::mprotect(dst, len, prot) } {
            Ok(()) => Ok(len),
            Err(e) => Err(CopyError::Gone(
                Errno::from_io_error(&e).unwrap_or(Errno::NOMEM),
            )),
        }
    }

    /// Lets threads waiting on resolved pages go on: the helper re-checks its deferred
    /// faults (on the helper itself a no-op: it checks them after every resolution anyway).
    pub fn wake(&self) {
        if sys::gettid() != HELPER_TID.load(Ordering::Acquire) {
            poke_helper();
        }
    }

    /// Sets the protection of `[addr, addr + len)`.
    pub fn protect(&self, addr: usize, len: usize, prot: Prot) -> std::io::Result<()> {
        // SAFETY: callers pass mirrored (managed) ranges whose pages they own; lowering the
        // protection only makes accesses fault into the helper, which serves them.
        unsafe { sys::mprotect(addr, len, prot) }
    }

    /// Drops the host copy of owned pages: `PROT_NONE` first (hazard 2), then
    /// `MADV_DONTNEED`.
    ///
    /// # Safety
    ///
    /// As [`sys::madvise_dontneed`]: the caller owns the range and has saved its contents.
    pub unsafe fn discard(&self, addr: usize, len: usize) -> std::io::Result<()> {
        self.protect(addr, len, Prot::None)?;
        // SAFETY: forwarded from the caller.
        unsafe { sys::madvise_dontneed(addr, len) }
    }
}

/// Whether this backend can run here: `Err` with the reason if not. Leaves nothing behind
/// (one temporary page and fd).
pub(crate) fn probe() -> Result<(), String> {
    Trap::open().map(drop)
}

/// Starts the backend's process-wide parts: the slots' eventfd and owner, the handler.
pub(crate) fn start(wake_fd: &OwnedFd) -> std::io::Result<()> {
    WAKE_FD.store(wake_fd.as_raw_fd(), Ordering::Release);
    OWNER_PID.store(pid(), Ordering::Release);
    SEGV.install(libc::SIGSEGV, on_sigsegv)
}
