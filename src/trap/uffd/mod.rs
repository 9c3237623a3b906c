//! One userfaultfd: opening, the API handshake, registration, resolution ioctls, events.
//!
//! # What this module does
//!
//! [`Uffd`] owns one userfaultfd file descriptor. It is opened once per process by the fault
//! service, which registers mirrored ranges with it (MISSING + WP), reads its messages on the
//! handler thread and resolves faults with [`Uffd::copy`], [`Uffd::zeropage`],
//! [`Uffd::write_protect`] and [`Uffd::wake`]. The wrappers are built on `rustix` raw
//! syscalls and the uapi types of `linux-raw-sys`; nothing here links libc.
//!
//! # Invariants
//!
//! - **No allocation after [`Uffd::open`].** Every method after `open` works on stack
//!   structs and caller-supplied buffers: the handler thread calls them while freed heap
//!   chunks may be device-resident, and a `malloc` could fault on one of them (rule 2 of
//!   "Rules that keep the handler deadlock-free" in `docs/architecture.md`). Errors are
//!   `Errno`s or `io::Error`s built from a raw errno, neither of which allocates.
//! - **No panics** on any kernel answer: unknown events decode to [`Event::Unknown`],
//!   unknown errnos to [`CopyError::Failed`].
//! - The fd is `O_NONBLOCK | O_CLOEXEC`: [`Uffd::read_events`] never sleeps, the handler
//!   sleeps in `poll` on [`Uffd::as_fd`] (with its own eventfd beside it).
//! - Only [`Uffd::copy`] is `unsafe`: it is the one call that places arbitrary bytes in this
//!   process's memory. `zeropage` only fills pages that read as zero anyway, write-protect
//!   only makes writers wait, and a registration only routes faults to the handler.
//!
//! # Opening: three doors, one handshake
//!
//! [`Uffd::open`] tries, in order, the `userfaultfd(2)` syscall (needs `CAP_SYS_PTRACE` or
//! `vm.unprivileged_userfaultfd=1`), the `/dev/userfaultfd` node with
//! `USERFAULTFD_IOC_NEW` (Linux 6.1+, needs read-write access to the node), and the
//! syscall with `UFFD_USER_MODE_ONLY` (Linux 5.11+, always allowed, but faults raised by the
//! kernel itself — a `read(2)` into a device-resident buffer — fail with `EFAULT` instead of
//! reaching the handler). The errno of every failed door is kept in [`OpenError`].
//!
//! `UFFDIO_API` succeeds only once per fd and fails (`EINVAL`) if a requested feature is not
//! available, so the supported set is learned first on a throw-away fd (a handshake with
//! `features = 0` reports every available feature), and the real fd asks for
//! `wanted & supported`. [`Uffd::features`] is that negotiated set.
//!
//! # Ordering hazards the handler must respect
//!
//! These follow Firecracker's uffd handler rules and the kernel's `fs/userfaultfd.c`; the
//! ones marked *(tested)* are checked by this module's tests on the kernel they run on.
//!
//! 1. **Faults are read before events.** `read(2)` returns pending page faults ahead of
//!    pending `REMOVE`/`UNMAP`/`REMAP` messages, so a fault raised *after* an
//!    `madvise`/`munmap` started can be read *before* that call's message. Drain the fd
//!    (read until it returns 0 messages), apply the batch's `REMOVE`/`UNMAP`/`REMAP` to the
//!    mirror in the order read, then serve the batch's faults against the updated mirror.
//! 2. **`munmap`, `madvise(MADV_DONTNEED/REMOVE)` and `mremap` of a registered range block
//!    until their message is read — not processed** *(tested)*. The zap or move happens
//!    right after the read, concurrently with the handler. From the moment the handler has
//!    *read* a `REMOVE` or `UNMAP`, the pages' contents are gone (a `UFFDIO_COPY` racing the
//!    zap may or may not survive it) and, for `UNMAP`, the address range may be reused by an
//!    unrelated `mmap` at any time: never write to it again. Corollary: **the handler thread
//!    must never unmap, `DONTNEED` or move a registered range itself** — it would wait for
//!    its own read forever (and so would any thread that does it while the handler waits on
//!    that thread). The tests' own teardown has to close the `Uffd` before unmapping.
//! 3. **`mremap` sends two messages, one read at a time** *(tested)*: `REMAP {from, to,
//!    len}` (the registration moves with the pages; absent pages stay absent and later fault
//!    at the new address), and, once that is read, `UNMAP` of the old range `[from, from +
//!    len)`. Apply the `REMAP` (move the mirror) before treating that `UNMAP` as a loss.
//! 4. **`EAGAIN` while the address space changes** *(tested)*. From the queuing of a
//!    non-cooperative message until its read, `UFFDIO_COPY`/`ZEROPAGE`/`WRITEPROTECT` fail
//!    with `EAGAIN` (`mmap_changing`) — for every range of the fd, not only the changing one.
//!    Defer the fault and retry after the next read. A copy that stops part-way also ends in
//!    `EAGAIN`, with the bytes done reported ([`CopyError::Again`]); retrying the rest tells
//!    why it stopped (e.g. `EEXIST`) *(tested)*.
//! 5. **`EEXIST` means already resolved, and wakes nobody** *(tested)*. Two threads faulting
//!    on one page give two messages; a racing resolver or kernel path may have filled the
//!    page. The failing ioctl does not wake the range even without `DONTWAKE`: follow a
//!    [`CopyError::Exists`] with [`Uffd::wake`].
//! 6. **`ENOENT`/`ESRCH`: the range or the whole address space is gone** (unmapped, or the
//!    process is exiting) *(tested: ZEROPAGE after `UNMAP`)*. Drop the fault
//!    ([`CopyError::Gone`]).
//! 7. **Closing the fd (or unregistering) wakes every blocked faulter, which then retries
//!    with no handler** *(tested)*: a missing page becomes a fresh zero page. Dropping the
//!    `Uffd` while the mirror holds device-resident pages silently loses their data.
//! 8. **Write protection is a property of present PTEs** *(tested)*. Without
//!    `UFFD_FEATURE_WP_UNPOPULATED`, protecting an absent page does nothing (a write raises a
//!    MISSING fault), and `MADV_DONTNEED` of a protected page leaves no protection behind
//!    (the next access is a MISSING fault, even with `WP_UNPOPULATED`). With
//!    `WP_UNPOPULATED`, protecting an absent page leaves a marker (pagemap: not present,
//!    "swapped", uffd-wp); a read *or write* of it raises a MISSING fault (not WP);
//!    `UFFDIO_COPY` replaces the marker (protected only with `MODE_WP`), but
//!    **`UFFDIO_ZEROPAGE` refuses it with `EEXIST`** and the woken thread faults again at
//!    once — a handler answering "EEXIST → wake" would spin. Clear the protection first,
//!    or copy a zero page. [`SERVICE_FEATURES`] leaves `WP_UNPOPULATED` out.
//! 9. **Fault addresses are page-aligned** (`UFFD_FEATURE_EXACT_ADDRESS` is not asked for).
//!    With `UFFD_FEATURE_THREAD_ID` each fault names the faulting thread's tid *(tested)*.
//! 10. **`fork()`** without `UFFD_FEATURE_EVENT_FORK` leaves the child's copies of
//!     registered ranges unregistered: an absent page reads as zero there. The service
//!     copies device-resident pages home in a `pthread_atfork` prepare hook instead.
//! 11. **Kernel-mode faults** (a syscall reading or writing a registered absent page) reach
//!     the handler like user faults in [`OpenMode::Syscall`]/[`OpenMode::DevNode`] and fail
//!     with `EFAULT`, with no message, in [`OpenMode::UserModeOnly`] *(tested)*.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use linux_raw_sys::general as uapi;
use rustix::io::Errno;
use rustix::ioctl::{ioctl, opcode, Opcode, Setter, Updater};

// ---------------------------------------------------------------------------- constants

/// Features the fault service asks for: MISSING + WP faults, the non-cooperative events it
/// mirrors, and the faulting thread's id (to tell the handler's own faults apart).
///
/// Not asked for: `EVENT_FORK` (needs `CAP_SYS_PTRACE`; fork is handled by an atfork hook),
/// `SIGBUS` (turns faults into signals), `WP_ASYNC` (resolves WP faults without telling
/// the handler), `EXACT_ADDRESS`.
pub const SERVICE_FEATURES: u64 = (uapi::UFFD_FEATURE_PAGEFAULT_FLAG_WP
    | uapi::UFFD_FEATURE_EVENT_REMOVE
    | uapi::UFFD_FEATURE_EVENT_UNMAP
    | uapi::UFFD_FEATURE_EVENT_REMAP
    | uapi::UFFD_FEATURE_THREAD_ID) as u64;

/// Bit of `UFFDIO_COPY` in an `ioctls` mask returned by [`Uffd::register`].
#[cfg(test)]
pub const IOCTL_COPY: u64 = 1 << uapi::_UFFDIO_COPY;
/// Bit of `UFFDIO_ZEROPAGE` in an `ioctls` mask.
#[cfg(test)]
pub const IOCTL_ZEROPAGE: u64 = 1 << uapi::_UFFDIO_ZEROPAGE;
/// Bit of `UFFDIO_WRITEPROTECT` in an `ioctls` mask.
#[cfg(test)]
pub const IOCTL_WRITEPROTECT: u64 = 1 << uapi::_UFFDIO_WRITEPROTECT;
/// Bit of `UFFDIO_WAKE` in an `ioctls` mask.
#[cfg(test)]
pub const IOCTL_WAKE: u64 = 1 << uapi::_UFFDIO_WAKE;

/// `UFFDIO_WRITEPROTECT_MODE_WP` (`linux-raw-sys` lacks the two writeprotect modes).
const WRITEPROTECT_MODE_WP: u64 = 1 << 0;
/// `UFFDIO_WRITEPROTECT_MODE_DONTWAKE`.
const WRITEPROTECT_MODE_DONTWAKE: u64 = 1 << 1;
/// `UFFDIO_MOVE_MODE_DONTWAKE` (`linux-raw-sys` lacks the move modes).
const MOVE_MODE_DONTWAKE: u64 = 1 << 0;
/// `UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES`.
const MOVE_MODE_ALLOW_SRC_HOLES: u64 = 1 << 1;

/// The path of the userfaultfd device node (Linux 6.1+).
pub const DEV_NODE: &str = "/dev/userfaultfd";

/// Every feature bit the uapi headers name, with the name `vkhmm info` prints.
const FEATURE_NAMES: [(u32, &str); 17] = [
    (uapi::UFFD_FEATURE_PAGEFAULT_FLAG_WP, "pagefault_flag_wp"),
    (uapi::UFFD_FEATURE_EVENT_FORK, "event_fork"),
    (uapi::UFFD_FEATURE_EVENT_REMAP, "event_remap"),
    (uapi::UFFD_FEATURE_EVENT_REMOVE, "event_remove"),
    (uapi::UFFD_FEATURE_MISSING_HUGETLBFS, "missing_hugetlbfs"),
    (uapi::UFFD_FEATURE_MISSING_SHMEM, "missing_shmem"),
    (uapi::UFFD_FEATURE_EVENT_UNMAP, "event_unmap"),
    (uapi::UFFD_FEATURE_SIGBUS, "sigbus"),
    (uapi::UFFD_FEATURE_THREAD_ID, "thread_id"),
    (uapi::UFFD_FEATURE_MINOR_HUGETLBFS, "minor_hugetlbfs"),
    (uapi::UFFD_FEATURE_MINOR_SHMEM, "minor_shmem"),
    (uapi::UFFD_FEATURE_EXACT_ADDRESS, "exact_address"),
    (uapi::UFFD_FEATURE_WP_HUGETLBFS_SHMEM, "wp_hugetlbfs_shmem"),
    (uapi::UFFD_FEATURE_WP_UNPOPULATED, "wp_unpopulated"),
    (uapi::UFFD_FEATURE_POISON, "poison"),
    (uapi::UFFD_FEATURE_WP_ASYNC, "wp_async"),
    (uapi::UFFD_FEATURE_MOVE, "move"),
];

/// Bits of `features` that the uapi headers name.
pub const KNOWN_FEATURES: u64 = {
    let mut bits = 0u64;
    let mut i = 0;
    while i < FEATURE_NAMES.len() {
        bits |= FEATURE_NAMES[i].0 as u64;
        i += 1;
    }
    bits
};

/// The names of the known feature bits set in `features`, lowest bit first. Bits not in
/// [`KNOWN_FEATURES`] are skipped. Does not allocate.
pub fn feature_names(features: u64) -> impl Iterator<Item = &'static str> + Clone {
    FEATURE_NAMES
        .iter()
        .filter(move |(bit, _)| features & u64::from(*bit) != 0)
        .map(|(_, name)| *name)
}

// ---------------------------------------------------------------------------- ioctl numbers

const UFFDIO: u8 = uapi::UFFDIO as u8;
const OP_API: Opcode = opcode::read_write::<uapi::uffdio_api>(UFFDIO, uapi::_UFFDIO_API as u8);
const OP_REGISTER: Opcode =
    opcode::read_write::<uapi::uffdio_register>(UFFDIO, uapi::_UFFDIO_REGISTER as u8);
const OP_UNREGISTER: Opcode =
    opcode::read::<uapi::uffdio_range>(UFFDIO, uapi::_UFFDIO_UNREGISTER as u8);
const OP_WAKE: Opcode = opcode::read::<uapi::uffdio_range>(UFFDIO, uapi::_UFFDIO_WAKE as u8);
const OP_COPY: Opcode = opcode::read_write::<uapi::uffdio_copy>(UFFDIO, uapi::_UFFDIO_COPY as u8);
const OP_ZEROPAGE: Opcode =
    opcode::read_write::<uapi::uffdio_zeropage>(UFFDIO, uapi::_UFFDIO_ZEROPAGE as u8);
const OP_WRITEPROTECT: Opcode =
    opcode::read_write::<uapi::uffdio_writeprotect>(UFFDIO, uapi::_UFFDIO_WRITEPROTECT as u8);
const OP_MOVE: Opcode = opcode::read_write::<uapi::uffdio_move>(UFFDIO, uapi::_UFFDIO_MOVE as u8);
/// `USERFAULTFD_IOC_NEW = _IO(USERFAULTFD_IOC, 0x00)` on `/dev/userfaultfd`.
const OP_IOC_NEW: Opcode = opcode::none(uapi::USERFAULTFD_IOC as u8, 0);

// The numbers computed above must be the kernel's, as `linux-raw-sys` spells them.
const _: () = {
    use linux_raw_sys::ioctl as n;
    assert!(OP_API as u64 == n::UFFDIO_API as u64);
    assert!(OP_REGISTER as u64 == n::UFFDIO_REGISTER as u64);
    assert!(OP_UNREGISTER as u64 == n::UFFDIO_UNREGISTER as u64);
    assert!(OP_WAKE as u64 == n::UFFDIO_WAKE as u64);
    assert!(OP_COPY as u64 == n::UFFDIO_COPY as u64);
    assert!(OP_ZEROPAGE as u64 == n::UFFDIO_ZEROPAGE as u64);
    assert!(OP_WRITEPROTECT as u64 == n::UFFDIO_WRITEPROTECT as u64);
    assert!(core::mem::size_of::<uapi::uffd_msg>() == 32);
};

// ---------------------------------------------------------------------------- Uffd

/// An open, handshaken userfaultfd. Closing it (drop) wakes every thread blocked in a fault
/// on its ranges; they retry as if the range were not registered.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
    // Kept for what `open` learned; the conformance tests read them.
    #[cfg_attr(not(test), allow(dead_code))]
    mode: OpenMode,
    features: u64,
    supported: u64,
    #[cfg_attr(not(test), allow(dead_code))]
    ioctls: u64,
}

/// Why a [`Uffd::copy`] or [`Uffd::zeropage`] did not fill the whole range.
///
/// `copied` counts bytes from the start of the range that this call did fill (and woke,
/// unless asked not to); the rest of the range is untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyError {
    /// `EEXIST`: a page of the range is already present (already resolved by someone
    /// else, or never missing). Wake the faulting thread with [`Uffd::wake`].
    Exists {
        /// Bytes filled before the present page.
        copied: usize,
    },
    /// `EAGAIN`: the address space is changing under a pending non-cooperative event, or
    /// the copy stopped part-way (then `copied > 0`; retrying the rest tells why). Retry
    /// after the next read of the fd.
    Again {
        /// Bytes filled before the call stopped.
        copied: usize,
    },
    /// `ENOENT` (the range is no longer mapped or registered) or `ESRCH` (the address
    /// space is gone): drop the fault.
    Gone(Errno),
    /// Any other errno (`EINVAL` for a bad range, `ENOMEM`, `EFAULT` for an unreadable
    /// source, ...).
    Failed(Errno),
}

impl CopyError {
    /// The raw errno behind this outcome.
    pub fn errno(&self) -> Errno {
        match *self {
            CopyError::Exists { .. } => Errno::EXIST,
            CopyError::Again { .. } => Errno::AGAIN,
            CopyError::Gone(e) | CopyError::Failed(e) => e,
        }
    }

    /// Bytes from the start of the range that the call did fill.
    pub fn copied(&self) -> usize {
        match *self {
            CopyError::Exists { copied } | CopyError::Again { copied } => copied,
            CopyError::Gone(_) | CopyError::Failed(_) => 0,
        }
    }

    fn from_errno(errno: Errno, done: i64) -> Self {
        let copied = usize::try_from(done).unwrap_or(0);
        match errno {
            Errno::EXIST => CopyError::Exists { copied },
            Errno::AGAIN => CopyError::Again { copied },
            Errno::NOENT | Errno::SRCH => CopyError::Gone(errno),
            e => CopyError::Failed(e),
        }
    }
}

impl fmt::Display for CopyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} after {} bytes",
            io::Error::from(self.errno()),
            self.copied()
        )
    }
}

impl std::error::Error for CopyError {}

/// Result of [`Uffd::copy`] and [`Uffd::zeropage`]: `Ok(len)` when the whole range was filled.
pub type CopyResult = Result<usize, CopyError>;

impl Uffd {
    /// The negotiated features (`UFFD_FEATURE_*` bits): the ones asked for that the kernel has.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Whether every bit of `feature` was negotiated.
    pub fn has_feature(&self, feature: u64) -> bool {
        self.features & feature == feature
    }

    /// Every feature the kernel offers, negotiated or not.
    pub fn supported_features(&self) -> u64 {
        self.supported
    }

    #[cfg(test)]
    /// The `ioctls` mask of the API handshake (`1 << _UFFDIO_*` bits valid on the fd).
    pub fn api_ioctls(&self) -> u64 {
        self.ioctls
    }

    #[cfg(test)]
    /// How the fd was opened.
    pub fn mode(&self) -> OpenMode {
        self.mode
    }

    #[cfg(test)]
    /// Whether faults the kernel raises on this process's behalf (syscalls touching a
    /// registered range) reach the handler.
    pub fn kernel_faults(&self) -> bool {
        self.mode.kernel_faults()
    }

    /// Registers `[addr, addr + len)` (page-aligned, inside anonymous private mappings) for
    /// MISSING and/or WP faults. Returns the `ioctls` mask valid on the range
    /// ([`IOCTL_COPY`], [`IOCTL_WRITEPROTECT`], ...).
    ///
    /// `EINVAL` for an unaligned range *(tested)*, memory userfaultfd cannot serve, or no
    /// mode; `EBUSY` if part of the range is registered with another
    /// userfaultfd *(tested)*. Registering a range again with this fd succeeds and adds the
    /// modes asked for, but does not remove any (a WP registration survives a MISSING-only
    /// re-registration; unregister first to drop it) *(tested)*. `UFFDIO_WRITEPROTECT` on a
    /// range without a WP registration fails with `ENOENT`.
    pub fn register(&self, addr: usize, len: usize, missing: bool, wp: bool) -> io::Result<u64> {
        let mut mode = 0u64;
        if missing {
            mode |= u64::from(uapi::UFFDIO_REGISTER_MODE_MISSING);
        }
        if wp {
            mode |= u64::from(uapi::UFFDIO_REGISTER_MODE_WP);
        }
        let mut arg = uapi::uffdio_register {
            range: range(addr, len),
            mode,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes one `uffdio_register`, which `arg` is.
        unsafe { ioctl(&self.fd, Updater::<OP_REGISTER, _>::new(&mut arg)) }?;
        Ok(arg.ioctls)
    }

    /// Unregisters `[addr, addr + len)`. Threads blocked in faults on it are woken and
    /// retry without a handler.
    pub fn unregister(&self, addr: usize, len: usize) -> io::Result<()> {
        // SAFETY: UFFDIO_UNREGISTER only reads one `uffdio_range`.
        unsafe { ioctl(&self.fd, Setter::<OP_UNREGISTER, _>::new(range(addr, len))) }?;
        Ok(())
    }

    /// `UFFDIO_COPY`: atomically places `len` bytes read from `src` into the missing pages
    /// at `dst`, write-protected if `wp` (needs a WP registration), waking the threads
    /// that wait on the range unless `wake` is false. A uffd-wp marker on an absent page
    /// counts as missing and is replaced; the page keeps no protection unless `wp`.
    ///
    /// `Ok(len)` when the whole range was filled; see [`CopyError`] and the module's
    /// ordering hazards for the rest.
    ///
    /// # Safety
    ///
    /// - `src..src + len` must be readable for the duration of the call, and must not lie
    ///   in a range registered with this userfaultfd whose pages may be absent (the kernel
    ///   would raise a fault that only this handler could serve).
    /// - `dst..dst + len` must be page-aligned and lie in a range registered with this
    ///   userfaultfd, in memory whose absent pages the caller owns: the kernel writes the
    ///   bytes where the program would otherwise read zeros, so they must form valid values
    ///   for whatever Rust objects live there.
    pub unsafe fn copy(
        &self,
        dst: usize,
        src: *const u8,
        len: usize,
        wp: bool,
        wake: bool,
    ) -> CopyResult {
        let mut mode = 0u64;
        if wp {
            mode |= u64::from(uapi::UFFDIO_COPY_MODE_WP);
        }
        if !wake {
            mode |= u64::from(uapi::UFFDIO_COPY_MODE_DONTWAKE);
        }
        let mut arg = uapi::uffdio_copy {
            dst: dst as u64,
            src: src as u64,
            len: len as u64,
            mode,
            copy: 0,
        };
        // SAFETY: UFFDIO_COPY reads and writes one `uffdio_copy`, which `arg` is; the caller
        // guarantees the source is readable and the destination theirs to fill.
        match unsafe { ioctl(&self.fd, Updater::<OP_COPY, _>::new(&mut arg)) } {
            Ok(()) => Ok(len),
            Err(errno) => Err(CopyError::from_errno(errno, arg.copy)),
        }
    }

    /// `UFFDIO_ZEROPAGE`: maps zero pages at the missing pages of `[addr, addr + len)`,
    /// waking the threads that wait on the range unless `wake` is false. Outcomes as for
    /// [`Uffd::copy`]. Needs a MISSING registration.
    ///
    /// Unlike `copy`, it refuses a page that holds a uffd-wp marker (`WP_UNPOPULATED`) with
    /// `EEXIST`, although the page is absent and faults as MISSING (hazard 8).
    pub fn zeropage(&self, addr: usize, len: usize, wake: bool) -> CopyResult {
        let mode = if wake {
            0
        } else {
            u64::from(uapi::UFFDIO_ZEROPAGE_MODE_DONTWAKE)
        };
        let mut arg = uapi::uffdio_zeropage {
            range: range(addr, len),
            mode,
            zeropage: 0,
        };
        // SAFETY: UFFDIO_ZEROPAGE reads and writes one `uffdio_zeropage`, which `arg` is. It
        // only fills pages that are absent, which read as zero without a handler too.
        match unsafe { ioctl(&self.fd, Updater::<OP_ZEROPAGE, _>::new(&mut arg)) } {
            Ok(()) => Ok(len),
            Err(errno) => Err(CopyError::from_errno(errno, arg.zeropage)),
        }
    }

    /// `UFFDIO_WRITEPROTECT`: sets (`protect`) or clears write protection on
    /// `[addr, addr + len)` (needs a WP registration).
    ///
    /// `wake` matters only when clearing: it wakes the writers waiting on the range. The
    /// kernel never wakes on protect. Without `UFFD_FEATURE_WP_UNPOPULATED`, protecting an
    /// absent page does nothing (a later write raises a MISSING fault instead); with it, an
    /// absent page gets a marker (hazard 8 of the module docs). `EAGAIN` while the address
    /// space is changing; `ENOENT` without a WP registration.
    pub fn write_protect(
        &self,
        addr: usize,
        len: usize,
        protect: bool,
        wake: bool,
    ) -> io::Result<()> {
        let mode = if protect {
            WRITEPROTECT_MODE_WP
        } else if wake {
            0
        } else {
            WRITEPROTECT_MODE_DONTWAKE
        };
        let mut arg = uapi::uffdio_writeprotect {
            range: range(addr, len),
            mode,
        };
        // SAFETY: UFFDIO_WRITEPROTECT reads one `uffdio_writeprotect`, which `arg` is (the
        // number is _IOWR, so it is passed as mutable).
        unsafe { ioctl(&self.fd, Updater::<OP_WRITEPROTECT, _>::new(&mut arg)) }?;
        Ok(())
    }

    /// `UFFDIO_MOVE` (needs [`uapi::UFFD_FEATURE_MOVE`]): moves the pages of
    /// `[src, src + len)` into the absent pages at `dst` (a range registered with this fd),
    /// leaving the source absent. Holes in the source are skipped (and counted as moved).
    /// Wakes nobody.
    ///
    /// Unlike `madvise(MADV_DONTNEED)` it raises no event and never drops the address
    /// space's lock between finding the mappings and moving their pages, and like every
    /// resolution ioctl it refuses with `EAGAIN` while a non-cooperative event of this fd is
    /// unread (hazard 4): a move that succeeds took its pages from the mapping that was
    /// there when no `munmap`/`mremap`/`madvise` of a registered range was under way.
    /// `EBUSY` for a page shared with another process (after `fork`) or pinned; `EINVAL`
    /// when the two mappings differ in protection, `mlock` or kind.
    ///
    /// # Safety
    ///
    /// The caller owns the pages of both ranges: the source's contents leave it (its next
    /// access reads what a fault there resolves to) and appear at `dst`, where they must
    /// form valid values for whatever lives there.
    pub unsafe fn move_pages(&self, dst: usize, src: usize, len: usize) -> CopyResult {
        let mut arg = uapi::uffdio_move {
            dst: dst as u64,
            src: src as u64,
            len: len as u64,
            mode: MOVE_MODE_DONTWAKE | MOVE_MODE_ALLOW_SRC_HOLES,
            move_: 0,
        };
        // SAFETY: UFFDIO_MOVE reads and writes one `uffdio_move`, which `arg` is; the caller
        // owns the pages of both ranges.
        match unsafe { ioctl(&self.fd, Updater::<OP_MOVE, _>::new(&mut arg)) } {
            Ok(()) => Ok(len),
            Err(errno) => Err(CopyError::from_errno(errno, arg.move_)),
        }
    }

    /// [`Uffd::move_pages`] for a source with no holes (kept pages coming home): a hole
    /// ends the move with `ENOENT` (after `EAGAIN` with the bytes moved before it), so that
    /// nothing at `dst` is left absent while reported moved. Wakes the threads waiting on
    /// the moved pages iff `wake`. Like every page that `UFFDIO_MOVE` places, the pages
    /// arrive writable, whatever protection they had.
    ///
    /// # Safety
    ///
    /// As [`Uffd::move_pages`].
    pub unsafe fn move_whole(&self, dst: usize, src: usize, len: usize, wake: bool) -> CopyResult {
        let mut arg = uapi::uffdio_move {
            dst: dst as u64,
            src: src as u64,
            len: len as u64,
            mode: if wake { 0 } else { MOVE_MODE_DONTWAKE },
            move_: 0,
        };
        // SAFETY: UFFDIO_MOVE reads and writes one `uffdio_move`, which `arg` is; the caller
        // owns the pages of both ranges.
        match unsafe { ioctl(&self.fd, Updater::<OP_MOVE, _>::new(&mut arg)) } {
            Ok(()) => Ok(len),
            Err(errno) => Err(CopyError::from_errno(errno, arg.move_)),
        }
    }

    /// `UFFDIO_WAKE`: wakes the threads blocked in faults on `[addr, addr + len)`; they
    /// retry their access.
    pub fn wake(&self, addr: usize, len: usize) -> io::Result<()> {
        // SAFETY: UFFDIO_WAKE only reads one `uffdio_range`.
        unsafe { ioctl(&self.fd, Setter::<OP_WAKE, _>::new(range(addr, len))) }?;
        Ok(())
    }

    /// Reads as many pending messages as fit in `buf` without blocking; returns how many
    /// were read (0 when none is pending). Interrupted reads are retried.
    pub fn read_events(&self, buf: &mut [UffdMsg]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // SAFETY: `UffdMsg` is a `repr(transparent)` wrapper of the plain-old-data
        // `uffd_msg`, for which every byte pattern is valid; the byte view covers exactly
        // `buf` and lives no longer than the exclusive borrow of it.
        let bytes = unsafe {
            core::slice::from_raw_parts_mut(
                buf.as_mut_ptr().cast::<u8>(),
                core::mem::size_of_val(buf),
            )
        };
        loop {
            match rustix::io::read(&self.fd, &mut *bytes) {
                Ok(n) => return Ok(n / core::mem::size_of::<UffdMsg>()),
                Err(Errno::AGAIN) => return Ok(0),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    #[cfg(test)]
    /// Waits until a message is pending or `timeout` passes (`None`: forever). Returns
    /// whether the fd is readable; an interrupted wait returns `Ok(false)`.
    pub fn wait_readable(&self, timeout: Option<std::time::Duration>) -> io::Result<bool> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let ts = timeout.map(|t| Timespec {
            tv_sec: t.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: t.subsec_nanos().into(),
        });
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
        match poll(&mut fds, ts.as_ref()) {
            Ok(n) => Ok(n > 0 && fds[0].revents().contains(PollFlags::IN)),
            Err(Errno::INTR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Decodes `msg` with this fd's negotiated features.
    pub fn decode(&self, msg: &UffdMsg) -> Event {
        msg.decode(self.has_feature(u64::from(uapi::UFFD_FEATURE_THREAD_ID)))
    }
}

impl AsFd for Uffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn range(addr: usize, len: usize) -> uapi::uffdio_range {
    uapi::uffdio_range {
        start: addr as u64,
        len: len as u64,
    }
}

mod event;
mod open;

pub use event::{Event, UffdMsg};
pub use open::OpenMode;
#[cfg(test)]
use open::{AttemptError, OpenError, OpenStep};

#[cfg(test)]
mod tests;
