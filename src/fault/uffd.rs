//! One userfaultfd: opening, the API handshake, registration, resolution ioctls, events.
//!
//! # What this room does
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

// Most of the API is for the fault service's handler, which lands after this room.
#![allow(dead_code)]

use std::ffi::c_void;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use linux_raw_sys::general as uapi;
use rustix::io::Errno;
use rustix::ioctl::{ioctl, opcode, Ioctl, IoctlOutput, Opcode, Setter, Updater};

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
pub const IOCTL_COPY: u64 = 1 << uapi::_UFFDIO_COPY;
/// Bit of `UFFDIO_ZEROPAGE` in an `ioctls` mask.
pub const IOCTL_ZEROPAGE: u64 = 1 << uapi::_UFFDIO_ZEROPAGE;
/// Bit of `UFFDIO_WRITEPROTECT` in an `ioctls` mask.
pub const IOCTL_WRITEPROTECT: u64 = 1 << uapi::_UFFDIO_WRITEPROTECT;
/// Bit of `UFFDIO_WAKE` in an `ioctls` mask.
pub const IOCTL_WAKE: u64 = 1 << uapi::_UFFDIO_WAKE;
/// Bit of `UFFDIO_MOVE` in an `ioctls` mask.
pub const IOCTL_MOVE: u64 = 1 << uapi::_UFFDIO_MOVE;

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

/// `USERFAULTFD_IOC_NEW`: the flags travel as the integer argument, the new fd comes back
/// as the ioctl's return value (rustix's `IntegerSetter` discards that value).
struct IocNew {
    flags: usize,
}

// SAFETY: `USERFAULTFD_IOC_NEW` takes its flags as the argument value itself and reads or
// writes no user memory (`IS_MUTATING = false` holds); on success its return value is a
// new file descriptor owned by nobody else, which `output_from_ptr` takes ownership of.
unsafe impl Ioctl for IocNew {
    type Output = OwnedFd;
    const IS_MUTATING: bool = false;

    fn opcode(&self) -> Opcode {
        OP_IOC_NEW
    }

    fn as_ptr(&mut self) -> *mut c_void {
        self.flags as *mut c_void
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut c_void) -> rustix::io::Result<OwnedFd> {
        // SAFETY: the ioctl succeeded, so `out` is a freshly installed fd that this process
        // owns and that nothing else refers to.
        Ok(unsafe { OwnedFd::from_raw_fd(out) })
    }
}

// ---------------------------------------------------------------------------- opening

/// How a userfaultfd was created (the fault service tries the modes in [`OpenMode::ALL`] order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpenMode {
    /// `userfaultfd(2)`: kernel-mode faults are served.
    Syscall,
    /// `/dev/userfaultfd` + `USERFAULTFD_IOC_NEW`: kernel-mode faults are served.
    DevNode,
    /// `userfaultfd(2)` with `UFFD_USER_MODE_ONLY`: only faults raised by user-space
    /// instructions reach the handler; a syscall that touches an absent page (e.g. `read(2)`
    /// into a device-resident buffer) fails with `EFAULT`.
    UserModeOnly,
}

impl OpenMode {
    /// The order in which the fault service tries the modes.
    pub const ALL: [OpenMode; 3] = [OpenMode::Syscall, OpenMode::DevNode, OpenMode::UserModeOnly];

    /// Whether faults raised by the kernel on this process's behalf reach the handler.
    pub fn kernel_faults(self) -> bool {
        !matches!(self, OpenMode::UserModeOnly)
    }

    /// A short name: `syscall`, `dev-node`, `user-mode-only`.
    pub fn as_str(self) -> &'static str {
        match self {
            OpenMode::Syscall => "syscall",
            OpenMode::DevNode => "dev-node",
            OpenMode::UserModeOnly => "user-mode-only",
        }
    }

    fn index(self) -> usize {
        match self {
            OpenMode::Syscall => 0,
            OpenMode::DevNode => 1,
            OpenMode::UserModeOnly => 2,
        }
    }
}

impl fmt::Display for OpenMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OpenMode::Syscall => "userfaultfd(2)",
            OpenMode::DevNode => "/dev/userfaultfd",
            OpenMode::UserModeOnly => "userfaultfd(2) with UFFD_USER_MODE_ONLY",
        })
    }
}

/// The step of one opening attempt that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpenStep {
    /// The `userfaultfd(2)` call.
    Syscall,
    /// `open("/dev/userfaultfd", O_RDWR)`.
    OpenDevNode,
    /// `ioctl(USERFAULTFD_IOC_NEW)` on the device node.
    IocNew,
    /// The `UFFDIO_API` handshake.
    Handshake,
}

impl OpenStep {
    /// The call that failed, as `vkhmm info` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            OpenStep::Syscall => "userfaultfd()",
            OpenStep::OpenDevNode => "open(/dev/userfaultfd)",
            OpenStep::IocNew => "USERFAULTFD_IOC_NEW",
            OpenStep::Handshake => "UFFDIO_API",
        }
    }
}

/// One failed way of opening a userfaultfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptError {
    /// The mode that was tried.
    pub mode: OpenMode,
    /// The call that failed.
    pub step: OpenStep,
    /// Its errno.
    pub errno: Errno,
}

impl AttemptError {
    /// What the errno most likely means here, if there is a usual cause.
    pub fn hint(&self) -> Option<&'static str> {
        const NEEDS_PTRACE: &str =
            "kernel-mode fault handling needs CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1";
        const SECCOMP: &str =
            "blocked by seccomp (e.g. Docker's default profile) or no CONFIG_USERFAULTFD";
        const OLD_KERNEL: &str = "flag not supported (UFFD_USER_MODE_ONLY needs Linux 5.11)";
        const NO_NODE: &str = "no /dev/userfaultfd (Linux < 6.1, or not in this container)";
        const NODE_DENIED: &str =
            "no read-write access to /dev/userfaultfd (grant it to this user)";
        match (self.step, self.errno) {
            (OpenStep::Syscall, Errno::PERM) if self.mode == OpenMode::Syscall => {
                Some(NEEDS_PTRACE)
            }
            (OpenStep::Syscall, Errno::PERM) => Some("refused by a security module"),
            (OpenStep::Syscall, Errno::NOSYS) => Some(SECCOMP),
            (OpenStep::Syscall, Errno::INVAL) => Some(OLD_KERNEL),
            (OpenStep::OpenDevNode, Errno::NOENT) => Some(NO_NODE),
            (OpenStep::OpenDevNode, Errno::ACCESS | Errno::PERM) => Some(NODE_DENIED),
            (OpenStep::Handshake, Errno::PERM) => Some("a requested feature needs CAP_SYS_PTRACE"),
            (OpenStep::Handshake, Errno::INVAL) => Some("the kernel rejected the API or features"),
            _ => None,
        }
    }
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} failed: {}",
            self.mode,
            self.step.as_str(),
            io::Error::from(self.errno)
        )?;
        if let Some(hint) = self.hint() {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for AttemptError {}

/// Every way of opening a userfaultfd failed; one [`AttemptError`] per mode tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenError {
    attempts: [Option<AttemptError>; 3],
}

impl OpenError {
    /// The failed attempts, in the order they were made.
    pub fn attempts(&self) -> impl Iterator<Item = &AttemptError> {
        self.attempts.iter().flatten()
    }

    /// The failed attempt of `mode`, if it was tried.
    pub fn attempt(&self, mode: OpenMode) -> Option<&AttemptError> {
        self.attempts[mode.index()].as_ref()
    }

    /// The errno of `mode`'s attempt, if it was tried.
    pub fn errno(&self, mode: OpenMode) -> Option<Errno> {
        self.attempt(mode).map(|a| a.errno)
    }
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("userfaultfd cannot be opened")?;
        for (i, a) in self.attempts().enumerate() {
            f.write_str(if i == 0 { ": " } else { "; " })?;
            write!(f, "{a}")?;
        }
        Ok(())
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.attempts()
            .last()
            .map(|a| a as &(dyn std::error::Error + 'static))
    }
}

impl From<OpenError> for crate::Error {
    fn from(e: OpenError) -> Self {
        let source = e.attempts().last().map(|a| io::Error::from(a.errno));
        crate::Error::FaultBackendUnavailable {
            reason: e.to_string(),
            source,
        }
    }
}

// ---------------------------------------------------------------------------- Uffd

/// An open, handshaken userfaultfd. Closing it (drop) wakes every thread blocked in a fault
/// on its ranges; they retry as if the range were not registered.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
    mode: OpenMode,
    features: u64,
    supported: u64,
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
    /// Opens a userfaultfd, trying `userfaultfd(2)`, `/dev/userfaultfd` and
    /// `UFFD_USER_MODE_ONLY` in that order, and negotiates `wanted & supported` features.
    ///
    /// Allocates nothing on success; the error carries each attempt's errno.
    pub fn open(wanted_features: u64) -> Result<Uffd, OpenError> {
        let mut error = OpenError {
            attempts: [None; 3],
        };
        for mode in OpenMode::ALL {
            match Uffd::open_mode(mode, wanted_features) {
                Ok(uffd) => return Ok(uffd),
                Err(e) => error.attempts[mode.index()] = Some(e),
            }
        }
        Err(error)
    }

    /// Opens a userfaultfd the one way `mode` names (see [`Uffd::open`]).
    pub fn open_mode(mode: OpenMode, wanted_features: u64) -> Result<Uffd, AttemptError> {
        let fail = |step| move |errno| AttemptError { mode, step, errno };
        // The API handshake works once per fd: learn what is available on a throw-away fd.
        let supported = {
            let probe_fd = create(mode)?;
            handshake(&probe_fd, 0)
                .map_err(fail(OpenStep::Handshake))?
                .features
        };
        let features = wanted_features & supported;
        let fd = create(mode)?;
        let api = handshake(&fd, features).map_err(fail(OpenStep::Handshake))?;
        Ok(Uffd {
            fd,
            mode,
            features,
            supported,
            ioctls: api.ioctls,
        })
    }

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

    /// The `ioctls` mask of the API handshake (`1 << _UFFDIO_*` bits valid on the fd).
    pub fn api_ioctls(&self) -> u64 {
        self.ioctls
    }

    /// How the fd was opened.
    pub fn mode(&self) -> OpenMode {
        self.mode
    }

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

    /// Waits until a message is pending or `timeout` passes (`None`: forever). Returns
    /// whether the fd is readable; an interrupted wait returns `Ok(false)`.
    pub fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<bool> {
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

/// Creates one unhandshaken userfaultfd the way `mode` says.
fn create(mode: OpenMode) -> Result<OwnedFd, AttemptError> {
    use rustix::mm::{userfaultfd, UserfaultfdFlags};
    let base = UserfaultfdFlags::CLOEXEC | UserfaultfdFlags::NONBLOCK;
    let fail = |step| move |errno| AttemptError { mode, step, errno };
    match mode {
        // SAFETY: creating the fd is harmless in itself; what it can do to this process's
        // memory is reached only through `Uffd`, whose memory-writing call is unsafe.
        OpenMode::Syscall => unsafe { userfaultfd(base) }.map_err(fail(OpenStep::Syscall)),
        OpenMode::UserModeOnly => {
            let flags = base | UserfaultfdFlags::from_bits_retain(uapi::UFFD_USER_MODE_ONLY);
            // SAFETY: as above.
            unsafe { userfaultfd(flags) }.map_err(fail(OpenStep::Syscall))
        }
        OpenMode::DevNode => {
            use rustix::fs::{open, Mode, OFlags};
            let node = open(DEV_NODE, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
                .map_err(fail(OpenStep::OpenDevNode))?;
            let flags = IocNew {
                flags: base.bits() as usize,
            };
            // SAFETY: `node` is the userfaultfd device, whose USERFAULTFD_IOC_NEW is what
            // `IocNew` describes; the new fd is harmless in itself (see above).
            unsafe { ioctl(&node, flags) }.map_err(fail(OpenStep::IocNew))
        }
    }
}

/// `UFFDIO_API` with `features`; the answer holds every available feature and the fd's
/// ioctls.
fn handshake(fd: &OwnedFd, features: u64) -> rustix::io::Result<uapi::uffdio_api> {
    let mut api = uapi::uffdio_api {
        api: u64::from(uapi::UFFD_API),
        features,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes one `uffdio_api`, which `api` is.
    unsafe { ioctl(fd, Updater::<OP_API, _>::new(&mut api)) }?;
    Ok(api)
}

// ---------------------------------------------------------------------------- messages

/// One raw message read from a userfaultfd (32 bytes). Decode it with [`Uffd::decode`] or
/// [`UffdMsg::decode`]; a buffer of them is filled by [`Uffd::read_events`].
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct UffdMsg(uapi::uffd_msg);

impl UffdMsg {
    /// An all-zero message (event 0, which no real message carries), for filling buffers.
    pub const ZEROED: UffdMsg = UffdMsg(uapi::uffd_msg {
        event: 0,
        reserved1: 0,
        reserved2: 0,
        reserved3: 0,
        arg: uapi::uffd_msg__bindgen_ty_1 {
            reserved: uapi::uffd_msg__bindgen_ty_1__bindgen_ty_5 {
                reserved1: 0,
                reserved2: 0,
                reserved3: 0,
            },
        },
    });

    /// Wraps a raw message.
    pub fn from_raw(raw: uapi::uffd_msg) -> Self {
        UffdMsg(raw)
    }

    /// The raw message.
    pub fn raw(&self) -> &uapi::uffd_msg {
        &self.0
    }

    /// Decodes the message. `thread_id` says whether `UFFD_FEATURE_THREAD_ID` was
    /// negotiated (the tid field is zero otherwise). Does not allocate.
    pub fn decode(&self, thread_id: bool) -> Event {
        let event = self.0.event;
        // Copy the union out of the packed struct before looking at a variant.
        let arg = self.0.arg;
        match u32::from(event) {
            uapi::UFFD_EVENT_PAGEFAULT => {
                // SAFETY: every variant of the union is plain integers, valid for any bits;
                // the event byte says this one is meant.
                let pf = unsafe { arg.pagefault };
                // SAFETY: as above; `ptid` is a plain u32.
                let ptid = unsafe { pf.feat.ptid };
                let flags = pf.flags;
                Event::PageFault {
                    addr: pf.address as usize,
                    write: flags & u64::from(uapi::UFFD_PAGEFAULT_FLAG_WRITE) != 0,
                    wp: flags & u64::from(uapi::UFFD_PAGEFAULT_FLAG_WP) != 0,
                    minor: flags & u64::from(uapi::UFFD_PAGEFAULT_FLAG_MINOR) != 0,
                    tid: thread_id.then_some(ptid),
                }
            }
            uapi::UFFD_EVENT_REMOVE | uapi::UFFD_EVENT_UNMAP => {
                // SAFETY: plain integers, valid for any bits (see above).
                let r = unsafe { arg.remove };
                let (start, end) = (r.start as usize, r.end as usize);
                if u32::from(event) == uapi::UFFD_EVENT_REMOVE {
                    Event::Remove { start, end }
                } else {
                    Event::Unmap { start, end }
                }
            }
            uapi::UFFD_EVENT_REMAP => {
                // SAFETY: plain integers, valid for any bits (see above).
                let r = unsafe { arg.remap };
                Event::Remap {
                    from: r.from as usize,
                    to: r.to as usize,
                    len: r.len as usize,
                }
            }
            uapi::UFFD_EVENT_FORK => {
                // SAFETY: plain integers, valid for any bits (see above).
                let f = unsafe { arg.fork };
                Event::Fork { fd: f.ufd as RawFd }
            }
            _ => Event::Unknown(event),
        }
    }
}

impl Default for UffdMsg {
    fn default() -> Self {
        UffdMsg::ZEROED
    }
}

impl fmt::Debug for UffdMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let arg = self.0.arg;
        // SAFETY: the `reserved` view is three plain u64s covering the whole union.
        let words = unsafe { arg.reserved };
        let (a, b, c) = (words.reserved1, words.reserved2, words.reserved3);
        f.debug_struct("UffdMsg")
            .field("event", &self.0.event)
            .field("arg", &[a, b, c])
            .finish()
    }
}

/// A decoded userfaultfd message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A thread faulted on a registered page and sleeps until it is resolved or woken.
    PageFault {
        /// The faulting address, rounded down to its page.
        addr: usize,
        /// The access was a write.
        write: bool,
        /// A write-protect fault (the page is present and write-protected); otherwise a
        /// MISSING fault.
        wp: bool,
        /// A minor fault (shmem/hugetlbfs MINOR registrations only).
        minor: bool,
        /// The faulting thread's id, when `UFFD_FEATURE_THREAD_ID` was negotiated.
        tid: Option<u32>,
    },
    /// `madvise(MADV_DONTNEED / MADV_REMOVE)` on `[start, end)`: the pages are being dropped.
    Remove {
        /// First byte.
        start: usize,
        /// One past the last byte.
        end: usize,
    },
    /// `munmap` (or an overlapping `mmap(MAP_FIXED)`, or `mremap` shrinking) of `[start, end)`.
    Unmap {
        /// First byte.
        start: usize,
        /// One past the last byte.
        end: usize,
    },
    /// `mremap` moved `len` bytes from `from` to `to`; the registration moved with them.
    Remap {
        /// Old start.
        from: usize,
        /// New start.
        to: usize,
        /// Length (the old length).
        len: usize,
    },
    /// `fork()` with `UFFD_FEATURE_EVENT_FORK`: `fd` is a new userfaultfd for the child,
    /// now open in this process. The reader owns it and must close it.
    Fork {
        /// The child's userfaultfd.
        fd: RawFd,
    },
    /// An event this code does not know (a newer kernel).
    Unknown(u8),
}

#[cfg(test)]
mod tests {
    //! Real kernel round trips: mmap, register, fault from a thread, read the event here,
    //! resolve. Every wait is bounded (poll with a timeout, `recv_timeout`), and a failing
    //! test drops its `Uffd` while unwinding, which wakes any thread still blocked in a fault.

    use std::ptr::NonNull;
    use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
    use std::thread;
    use std::time::Duration;

    use super::*;
    use crate::sys::testing::{peek, poke, Region};
    use crate::sys::{self, page_size, PageEntry, Pagemap};

    /// How long any test waits for something that should happen.
    const TIMEOUT: Duration = Duration::from_secs(5);
    /// How long a test waits to be confident something does *not* happen.
    const QUIET: Duration = Duration::from_millis(150);

    const WP: u64 = uapi::UFFD_FEATURE_PAGEFAULT_FLAG_WP as u64;
    const WP_UNPOPULATED: u64 = uapi::UFFD_FEATURE_WP_UNPOPULATED as u64;

    fn open() -> Uffd {
        Uffd::open(SERVICE_FEATURES).expect("userfaultfd opens on this machine")
    }

    /// A test that needs kernel-mode faults served cannot run without them: it says so and
    /// passes, except under CI, where it fails.
    fn require_kernel_faults(uffd: &Uffd) -> bool {
        if uffd.kernel_faults() {
            return true;
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must serve kernel-mode faults; got {:?}",
            uffd.mode()
        );
        eprintln!(
            "skipped: userfaultfd is user-mode only here ({:?})",
            uffd.mode()
        );
        false
    }

    /// Waits (bounded) for the next message and decodes it.
    fn next_event(uffd: &Uffd) -> Event {
        assert!(
            uffd.wait_readable(Some(TIMEOUT)).unwrap(),
            "no userfaultfd message within {TIMEOUT:?}"
        );
        let mut buf = [UffdMsg::ZEROED; 1];
        assert_eq!(uffd.read_events(&mut buf).unwrap(), 1);
        uffd.decode(&buf[0])
    }

    fn assert_no_event(uffd: &Uffd) {
        assert!(
            !uffd.wait_readable(Some(QUIET)).unwrap(),
            "unexpected message"
        );
    }

    /// Spawns a thread that reports its tid, then reads the byte at `addr` and reports it.
    fn spawn_read(addr: usize) -> (u32, Receiver<u8>) {
        spawn_access(addr, None)
    }

    /// Spawns a thread that reports its tid, then writes `value` at `addr`, reads it back and
    /// reports what it read.
    fn spawn_write(addr: usize, value: u8) -> (u32, Receiver<u8>) {
        spawn_access(addr, Some(value))
    }

    fn spawn_access(addr: usize, value: Option<u8>) -> (u32, Receiver<u8>) {
        let (tid_tx, tid_rx) = mpsc::channel();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            tid_tx.send(sys::gettid()).unwrap();
            if let Some(v) = value {
                poke(addr, v);
            }
            let _ = tx.send(peek(addr));
        });
        (tid_rx.recv_timeout(TIMEOUT).unwrap(), rx)
    }

    /// Runs `f` on a helper thread (for calls that block until their event is read).
    fn spawn_call(f: impl FnOnce() -> io::Result<()> + Send + 'static) -> Receiver<io::Result<()>> {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx
    }

    fn still_blocked<T: fmt::Debug>(rx: &Receiver<T>) {
        assert_eq!(
            rx.recv_timeout(QUIET).unwrap_err(),
            RecvTimeoutError::Timeout,
            "the thread should still be blocked"
        );
    }

    /// A page of `i as u8 ^ seed`.
    fn pattern(seed: u8) -> Vec<u8> {
        (0..page_size()).map(|i| i as u8 ^ seed).collect()
    }

    fn entry(pagemap: &Pagemap, addr: usize) -> PageEntry {
        let mut e = [PageEntry::default()];
        pagemap.query(addr, &mut e).unwrap();
        e[0]
    }

    fn page_fault(addr: usize, write: bool, wp: bool, tid: u32) -> Event {
        Event::PageFault {
            addr,
            write,
            wp,
            minor: false,
            tid: Some(tid),
        }
    }

    // ------------------------------------------------------------------ opening

    #[test]
    fn open_negotiates_the_service_features() {
        let uffd = open();
        for (bit, name) in [
            (uapi::UFFD_FEATURE_PAGEFAULT_FLAG_WP, "wp"),
            (uapi::UFFD_FEATURE_EVENT_REMOVE, "event_remove"),
            (uapi::UFFD_FEATURE_EVENT_UNMAP, "event_unmap"),
            (uapi::UFFD_FEATURE_EVENT_REMAP, "event_remap"),
            (uapi::UFFD_FEATURE_THREAD_ID, "thread_id"),
        ] {
            assert!(
                uffd.has_feature(u64::from(bit)),
                "{name} not negotiated: {:#x}",
                uffd.features()
            );
        }
        assert_eq!(
            uffd.features(),
            SERVICE_FEATURES,
            "nothing more than asked for"
        );
        assert_eq!(uffd.features() & !uffd.supported_features(), 0);
        // The handshake's ioctls are the fd-level ones: API, REGISTER, UNREGISTER.
        for op in [
            uapi::_UFFDIO_API,
            uapi::_UFFDIO_REGISTER,
            uapi::_UFFDIO_UNREGISTER,
        ] {
            assert_ne!(uffd.api_ioctls() & (1 << op), 0);
        }
        assert_eq!(uffd.kernel_faults(), uffd.mode() != OpenMode::UserModeOnly);
    }

    #[test]
    fn features_beyond_the_kernel_are_masked_not_refused() {
        let uffd = Uffd::open(!u64::from(
            uapi::UFFD_FEATURE_EVENT_FORK | uapi::UFFD_FEATURE_SIGBUS,
        ))
        .expect("open with every feature but fork and sigbus");
        assert_eq!(uffd.features() & !uffd.supported_features(), 0);
        assert!(
            uffd.has_feature(WP_UNPOPULATED) || uffd.supported_features() & WP_UNPOPULATED == 0
        );
    }

    #[test]
    fn every_mode_opens_or_names_its_failure() {
        for mode in OpenMode::ALL {
            match Uffd::open_mode(mode, SERVICE_FEATURES) {
                Ok(u) => {
                    assert_eq!(u.mode(), mode);
                    assert_eq!(u.kernel_faults(), mode != OpenMode::UserModeOnly);
                    assert!(u.has_feature(WP));
                }
                Err(e) => {
                    assert_eq!(e.mode, mode);
                    assert!(e.to_string().contains(e.step.as_str()), "{e}");
                }
            }
        }
        // UFFD_USER_MODE_ONLY is allowed to everyone (unless seccomp forbids the syscall).
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        if status
            .lines()
            .any(|l| l.starts_with("Seccomp:") && l.ends_with('0'))
        {
            Uffd::open_mode(OpenMode::UserModeOnly, SERVICE_FEATURES)
                .expect("user-mode-only always opens");
        }
    }

    #[test]
    fn an_unprivileged_thread_falls_back_to_user_mode_only() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root to drop privileges on one thread");
            return;
        }
        // Credentials are per thread in the kernel; rustix's raw setresuid changes only the
        // calling thread, which then exits. The change of euid also clears the process-wide
        // "dumpable" flag, which is restored afterwards.
        use rustix::process::{dumpable_behavior, set_dumpable_behavior};
        let dumpable = dumpable_behavior().unwrap();
        let handle = thread::spawn(|| {
            let nobody = rustix::process::Uid::from_raw(65534);
            rustix::thread::set_thread_res_uid(nobody, nobody, nobody).expect("setresuid");
            let caps = crate::fault::probe::probe();
            let uffd = Uffd::open(SERVICE_FEATURES).map(|u| (u.mode(), u.kernel_faults()));
            (caps, uffd)
        });
        let (caps, uffd) = handle.join().unwrap();
        set_dumpable_behavior(dumpable).unwrap();
        let unprivileged =
            std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd").unwrap();
        if unprivileged.trim() != "0" {
            eprintln!("skipped: vm.unprivileged_userfaultfd is not 0");
            return;
        }
        assert_eq!(uffd.unwrap(), (OpenMode::UserModeOnly, false));
        assert_eq!(caps.userfaultfd, Some(OpenMode::UserModeOnly));
        assert!(!caps.kernel_faults);
        let syscall = caps.attempts[0].result.unwrap_err();
        assert_eq!(
            (syscall.call, syscall.errno),
            ("userfaultfd()", Errno::PERM.raw_os_error())
        );
        assert!(syscall.hint.unwrap().contains("CAP_SYS_PTRACE"));
        if std::path::Path::new(DEV_NODE).exists() {
            let node = caps.attempts[1].result.unwrap_err();
            assert_eq!(
                (node.call, node.errno),
                ("open(/dev/userfaultfd)", Errno::ACCESS.raw_os_error())
            );
        }
        assert!(caps.attempts[2].result.is_ok());
        assert!(
            caps.to_string().contains("kernel-mode faults: not served"),
            "{caps}"
        );
    }

    #[test]
    fn open_error_explains_each_attempt_and_converts() {
        let err = OpenError {
            attempts: [
                Some(AttemptError {
                    mode: OpenMode::Syscall,
                    step: OpenStep::Syscall,
                    errno: Errno::NOSYS,
                }),
                Some(AttemptError {
                    mode: OpenMode::DevNode,
                    step: OpenStep::OpenDevNode,
                    errno: Errno::NOENT,
                }),
                Some(AttemptError {
                    mode: OpenMode::UserModeOnly,
                    step: OpenStep::Syscall,
                    errno: Errno::NOSYS,
                }),
            ],
        };
        let text = err.to_string();
        assert!(text.contains("seccomp"), "{text}");
        assert!(text.contains("no /dev/userfaultfd"), "{text}");
        assert!(text.contains("UFFD_USER_MODE_ONLY"), "{text}");
        assert_eq!(err.errno(OpenMode::DevNode), Some(Errno::NOENT));
        assert_eq!(err.attempts().count(), 3);
        let e: crate::Error = err.into();
        assert!(
            matches!(&e, crate::Error::FaultBackendUnavailable { source: Some(s), .. }
            if s.raw_os_error() == Some(Errno::NOSYS.raw_os_error()))
        );
        assert!(e
            .to_string()
            .starts_with("no fault backend is available: userfaultfd cannot be opened"));
    }

    #[test]
    fn feature_names_are_the_uapi_names() {
        let names: Vec<_> = feature_names(SERVICE_FEATURES).collect();
        assert_eq!(
            names,
            [
                "pagefault_flag_wp",
                "event_remap",
                "event_remove",
                "event_unmap",
                "thread_id"
            ]
        );
        assert_eq!(feature_names(1 << 40).count(), 0);
        assert_eq!(KNOWN_FEATURES, (1 << 17) - 1);
    }

    // ------------------------------------------------------------------ decoding

    fn msg(event: u32, words: [u64; 3]) -> UffdMsg {
        let mut raw = *UffdMsg::ZEROED.raw();
        raw.event = event as u8;
        raw.arg.reserved = uapi::uffd_msg__bindgen_ty_1__bindgen_ty_5 {
            reserved1: words[0],
            reserved2: words[1],
            reserved3: words[2],
        };
        UffdMsg::from_raw(raw)
    }

    #[test]
    fn messages_decode_without_a_kernel() {
        let flags = u64::from(uapi::UFFD_PAGEFAULT_FLAG_WRITE | uapi::UFFD_PAGEFAULT_FLAG_WP);
        let pf = msg(uapi::UFFD_EVENT_PAGEFAULT, [flags, 0x7000, 4242]);
        assert_eq!(pf.decode(true), page_fault(0x7000, true, true, 4242));
        assert!(matches!(
            pf.decode(false),
            Event::PageFault { tid: None, .. }
        ));
        let minor = msg(
            uapi::UFFD_EVENT_PAGEFAULT,
            [u64::from(uapi::UFFD_PAGEFAULT_FLAG_MINOR), 0x1000, 0],
        );
        assert!(matches!(
            minor.decode(false),
            Event::PageFault {
                minor: true,
                write: false,
                wp: false,
                ..
            }
        ));
        assert_eq!(
            msg(uapi::UFFD_EVENT_REMOVE, [0x1000, 0x3000, 0]).decode(true),
            Event::Remove {
                start: 0x1000,
                end: 0x3000
            }
        );
        assert_eq!(
            msg(uapi::UFFD_EVENT_UNMAP, [0x1000, 0x3000, 0]).decode(true),
            Event::Unmap {
                start: 0x1000,
                end: 0x3000
            }
        );
        assert_eq!(
            msg(uapi::UFFD_EVENT_REMAP, [0x1000, 0x9000, 0x2000]).decode(true),
            Event::Remap {
                from: 0x1000,
                to: 0x9000,
                len: 0x2000
            }
        );
        assert_eq!(
            msg(uapi::UFFD_EVENT_FORK, [7, 0, 0]).decode(true),
            Event::Fork { fd: 7 }
        );
        assert_eq!(msg(99, [0; 3]).decode(true), Event::Unknown(99));
        assert_eq!(UffdMsg::default().decode(true), Event::Unknown(0));
        assert!(format!("{pf:?}").contains("event: 18"));
    }

    // ------------------------------------------------------------------ round trips

    #[test]
    fn missing_fault_is_resolved_by_copy_and_a_second_copy_is_eexist() {
        let region = Region::new(4);
        let uffd = open();
        let ioctls = uffd
            .register(region.addr(), region.len(), true, true)
            .unwrap();
        for bit in [IOCTL_COPY, IOCTL_ZEROPAGE, IOCTL_WRITEPROTECT, IOCTL_WAKE] {
            assert_ne!(ioctls & bit, 0, "range ioctls {ioctls:#x}");
        }

        let target = region.page(1) + 100;
        let (tid, rx) = spawn_read(target);
        assert_eq!(
            next_event(&uffd),
            page_fault(region.page(1), false, false, tid)
        );
        let src = pattern(0x5a);
        // SAFETY: `src` is a readable page; page 1 is registered, absent and ours.
        let copied = unsafe { uffd.copy(region.page(1), src.as_ptr(), page_size(), false, true) };
        assert_eq!(copied, Ok(page_size()));
        assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), src[100]);
        assert_eq!(peek(region.page(1) + 4095), src[4095]);

        // The page is present now: a second copy is EEXIST with nothing copied.
        // SAFETY: as above.
        let again = unsafe { uffd.copy(region.page(1), src.as_ptr(), page_size(), false, true) };
        assert_eq!(again, Err(CopyError::Exists { copied: 0 }));
        assert_no_event(&uffd);
    }

    #[test]
    fn a_copy_that_runs_into_a_present_page_reports_the_bytes_before_it() {
        let region = Region::new(3);
        let uffd = open();
        uffd.register(region.addr(), region.len(), true, false)
            .unwrap();
        let src = [pattern(1), pattern(2), pattern(3)].concat();
        // SAFETY: `src` is readable for 3 pages; the range is registered and ours.
        let copied = unsafe { uffd.copy(region.page(1), src.as_ptr(), page_size(), false, true) };
        assert_eq!(copied, Ok(page_size()));
        // SAFETY: as above.
        let r = unsafe { uffd.copy(region.addr(), src.as_ptr(), 3 * page_size(), false, true) };
        // The kernel reports a partial copy as EAGAIN with the bytes done; the EEXIST that
        // stopped it shows when the rest is retried.
        assert_eq!(
            r,
            Err(CopyError::Again {
                copied: page_size()
            })
        );
        // SAFETY: as above.
        let rest = unsafe {
            uffd.copy(
                region.page(1),
                src[page_size()..].as_ptr(),
                2 * page_size(),
                false,
                true,
            )
        };
        assert_eq!(rest, Err(CopyError::Exists { copied: 0 }));
        assert_eq!(peek(region.page(0) + 7), src[7]);
        assert_eq!(
            peek(region.page(1) + 7),
            pattern(1)[7],
            "the present page is untouched"
        );
    }

    #[test]
    fn zeropage_resolves_a_missing_fault() {
        let region = Region::new(2);
        let uffd = open();
        uffd.register(region.addr(), region.len(), true, false)
            .unwrap();
        let (tid, rx) = spawn_write(region.page(1) + 9, 0xee);
        assert_eq!(
            next_event(&uffd),
            page_fault(region.page(1), true, false, tid)
        );
        assert_eq!(
            uffd.zeropage(region.page(1), page_size(), true),
            Ok(page_size())
        );
        // The writer retries: the zero page is replaced by a private copy holding its byte.
        assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0xee);
        assert_eq!(peek(region.page(1) + 8), 0);
        assert_eq!(
            uffd.zeropage(region.page(1), page_size(), true),
            Err(CopyError::Exists { copied: 0 })
        );
        assert_no_event(&uffd);
    }

    #[test]
    fn eexist_needs_a_wake_when_the_copy_did_not_wake() {
        let region = Region::new(1);
        let uffd = open();
        uffd.register(region.addr(), region.len(), true, false)
            .unwrap();
        let (tid, rx) = spawn_read(region.addr());
        assert_eq!(
            next_event(&uffd),
            page_fault(region.addr(), false, false, tid)
        );
        let src = pattern(9);
        // SAFETY: `src` is a readable page; the page is registered, absent and ours.
        let copied = unsafe { uffd.copy(region.addr(), src.as_ptr(), page_size(), false, false) };
        assert_eq!(copied, Ok(page_size()));
        still_blocked(&rx);
        // SAFETY: as above.
        let r = unsafe { uffd.copy(region.addr(), src.as_ptr(), page_size(), false, true) };
        assert_eq!(
            r,
            Err(CopyError::Exists { copied: 0 }),
            "EEXIST does not wake either"
        );
        still_blocked(&rx);
        uffd.wake(region.addr(), page_size()).unwrap();
        assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), src[0]);
    }

    #[test]
    fn several_faults_are_drained_in_one_read() {
        let region = Region::new(4);
        let uffd = open();
        uffd.register(region.addr(), region.len(), true, false)
            .unwrap();
        let waiters: Vec<_> = (0..3).map(|i| spawn_read(region.page(i))).collect();
        let mut buf = [UffdMsg::ZEROED; 8];
        let mut events = Vec::new();
        let deadline = std::time::Instant::now() + TIMEOUT;
        while events.len() < 3 {
            assert!(std::time::Instant::now() < deadline, "got only {events:?}");
            uffd.wait_readable(Some(TIMEOUT)).unwrap();
            let n = uffd.read_events(&mut buf).unwrap();
            events.extend(buf[..n].iter().map(|m| uffd.decode(m)));
        }
        assert_eq!(
            uffd.read_events(&mut buf).unwrap(),
            0,
            "drained: EAGAIN reads as 0"
        );
        let mut addrs: Vec<_> = events
            .iter()
            .map(|e| match *e {
                Event::PageFault { addr, .. } => addr,
                other => panic!("{other:?}"),
            })
            .collect();
        addrs.sort_unstable();
        assert_eq!(addrs, [region.page(0), region.page(1), region.page(2)]);
        assert_eq!(
            uffd.zeropage(region.addr(), 3 * page_size(), true),
            Ok(3 * page_size())
        );
        for (_, rx) in waiters {
            assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0);
        }
    }

    #[test]
    fn write_protect_blocks_a_writer_until_unprotect_wakes_it() {
        let region = Region::new(2);
        let uffd = open();
        uffd.register(region.addr(), region.len(), true, true)
            .unwrap();
        let src = pattern(3);
        // SAFETY: `src` is a readable page; page 0 is registered, absent and ours.
        let copied = unsafe { uffd.copy(region.addr(), src.as_ptr(), page_size(), false, true) };
        assert_eq!(copied, Ok(page_size()));
        uffd.write_protect(region.addr(), page_size(), true, false)
            .unwrap();
        let pagemap = Pagemap::open().unwrap();
        assert!(entry(&pagemap, region.addr()).uffd_wp());

        let (tid, rx) = spawn_write(region.addr() + 10, 0xab);
        assert_eq!(
            next_event(&uffd),
            page_fault(region.addr(), true, true, tid)
        );
        assert_eq!(
            peek(region.addr() + 10),
            src[10],
            "reads pass, the write waits"
        );
        still_blocked(&rx);
        uffd.write_protect(region.addr(), page_size(), false, true)
            .unwrap();
        assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0xab);
        assert_eq!(peek(region.addr() + 10), 0xab);
        assert!(!entry(&pagemap, region.addr()).uffd_wp());
    }

    #[test]
    fn copy_with_wp_installs_a_write_protected_page() {
        let region = Region::new(1);
        let uffd = open();
        uffd.register(region.addr(), region.len(), true, true)
            .unwrap();
        let src = pattern(4);
        // SAFETY: `src` is a readable page; the page is registered, absent and ours.
        let copied = unsafe { uffd.copy(region.addr(), src.as_ptr(), page_size(), true, true) };
        assert_eq!(copied, Ok(page_size()));
        let (tid, rx) = spawn_write(region.addr() + 1, 0x11);
        assert_eq!(
            next_event(&uffd),
            page_fault(region.addr(), true, true, tid)
        );
        uffd.write_protect(region.addr(), page_size(), false, true)
            .unwrap();
        assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0x11);
        assert_eq!(peek(region.addr()), src[0]);
    }

    /// `UFFDIO_MOVE` of one page.
    fn move_page(uffd: &Uffd, dst: usize, src: usize) -> CopyResult {
        // SAFETY: both pages are the test's own.
        unsafe { uffd.move_pages(dst, src, page_size()) }
    }

    /// Why the runtime installs `Shared` pages with `UFFDIO_COPY_MODE_WP` and does not recycle
    /// pages with `UFFDIO_MOVE` (docs/performance.md, "Sequential fault-back against its
    /// ceiling"): a moved page arrives writable, whatever protection its source had, and a
    /// write-protect marker placed first makes the move fail. Protecting it after the move
    /// leaves a window in which another thread's write lands unseen, and the page would be
    /// called `Shared` with a stale device copy.
    #[test]
    fn a_moved_page_arrives_writable_and_a_wp_marker_refuses_the_move() {
        const MOVE: u64 = uapi::UFFD_FEATURE_MOVE as u64;
        // The regions outlive the fd (declared first, dropped last): an unmap of a registered
        // range waits until its event is read.
        let (region, parked) = (Region::new(2), Region::new(2));
        let uffd = Uffd::open(SERVICE_FEATURES | WP_UNPOPULATED | MOVE).unwrap();
        if !uffd.has_feature(MOVE | WP_UNPOPULATED) {
            eprintln!("skipped: kernel lacks UFFD_FEATURE_MOVE or WP_UNPOPULATED");
            return;
        }
        let src = pattern(6);
        for (i, b) in src.iter().enumerate() {
            poke(parked.page(0) + i, *b);
            poke(parked.page(1) + i, *b);
        }
        uffd.register(region.addr(), region.len(), true, true)
            .unwrap();
        // The source may itself be write-protected: the protection does not travel.
        uffd.register(parked.addr(), parked.len(), true, true)
            .unwrap();
        let pagemap = Pagemap::open().unwrap();
        uffd.write_protect(parked.page(0), page_size(), true, false)
            .unwrap();
        assert!(entry(&pagemap, parked.page(0)).uffd_wp());
        assert_eq!(
            move_page(&uffd, region.page(0), parked.page(0)),
            Ok(page_size())
        );
        let e = entry(&pagemap, region.page(0));
        assert!(e.present() && !e.uffd_wp(), "{e:?}");
        // A write now raises no fault at all.
        let (_, rx) = spawn_write(region.page(0) + 1, 0x77);
        assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0x77);
        assert_no_event(&uffd);
        assert_eq!(peek(region.page(0)), src[0]);

        // Protecting the destination first leaves a marker, and the move refuses it.
        uffd.write_protect(region.page(1), page_size(), true, false)
            .unwrap();
        assert_eq!(
            move_page(&uffd, region.page(1), parked.page(1)),
            Err(CopyError::Exists { copied: 0 })
        );
        assert!(
            entry(&pagemap, parked.page(1)).present(),
            "the source stays"
        );
    }

    /// How the runtime drops the host copy of a migrated run without touching a mapping
    /// that may have replaced it: it moves the pages out with `UFFDIO_MOVE` while no thread
    /// reads this fd's events. The move refuses with `EAGAIN` while an `UNMAP` of another
    /// registered range is unread (so it cannot act on an address space whose `munmap` has
    /// begun), and once the event is read it moves present pages and the zero page, skips
    /// holes, and leaves the source absent: its next access is a MISSING fault.
    #[test]
    fn a_move_refuses_while_an_unmap_is_unread_and_leaves_its_source_absent() {
        const MOVE: u64 = uapi::UFFD_FEATURE_MOVE as u64;
        // The regions outlive the fd (declared first, dropped last).
        let (gone, region, parked) = (Region::new(1), Region::new(4), Region::new(4));
        let uffd = Uffd::open(SERVICE_FEATURES | MOVE).unwrap();
        if !uffd.has_feature(MOVE) {
            eprintln!("skipped: kernel lacks UFFD_FEATURE_MOVE");
            return;
        }
        let src = [pattern(1), pattern(2)];
        for (k, page) in src.iter().enumerate() {
            for (i, b) in page.iter().enumerate() {
                poke(region.page(k) + i, *b);
            }
        }
        assert_eq!(peek(region.page(2)), 0); // page 2 maps the zero page; page 3 is a hole
        for r in [&gone, &region, &parked] {
            uffd.register(r.addr(), r.len(), true, true).unwrap();
        }
        let (addr, len) = (gone.addr(), gone.len());
        gone.forget();
        let done = spawn_call(move || {
            // SAFETY: the test owns this mapping and forgot it; nothing refers to it.
            unsafe { sys::munmap(NonNull::new(addr as *mut u8).unwrap(), len) }
        });
        assert!(uffd.wait_readable(Some(TIMEOUT)).unwrap());
        still_blocked(&done);
        // SAFETY: both ranges are the test's own.
        let refused = unsafe { uffd.move_pages(parked.addr(), region.addr(), region.len()) };
        assert_eq!(refused, Err(CopyError::Again { copied: 0 }));
        assert_eq!(
            next_event(&uffd),
            Event::Unmap {
                start: addr,
                end: addr + len
            }
        );
        done.recv_timeout(TIMEOUT).unwrap().unwrap();

        // SAFETY: as above.
        let moved = unsafe { uffd.move_pages(parked.addr(), region.addr(), region.len()) };
        assert_eq!(moved, Ok(region.len()));
        let pagemap = Pagemap::open().unwrap();
        for k in 0..4 {
            assert!(entry(&pagemap, region.page(k)).absent(), "source page {k}");
        }
        for (k, page) in src.iter().enumerate() {
            assert!(entry(&pagemap, parked.page(k)).present());
            assert_eq!(peek(parked.page(k) + 5), page[5]);
        }
        assert!(
            entry(&pagemap, parked.page(3)).absent(),
            "a hole moves nothing"
        );
        let (tid, rx) = spawn_read(region.page(0) + 5);
        assert_eq!(
            next_event(&uffd),
            page_fault(region.page(0), false, false, tid)
        );
        assert_eq!(
            uffd.zeropage(region.page(0), page_size(), true),
            Ok(page_size())
        );
        assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0);
    }

    #[test]
    fn write_protecting_an_absent_page_without_wp_unpopulated_does_nothing() {
        let region = Region::new(1);
        let uffd = open();
        assert!(!uffd.has_feature(WP_UNPOPULATED));
        uffd.register(region.addr(), region.len(), true, true)
            .unwrap();
        uffd.write_protect(region.addr(), page_size(), true, false)
            .unwrap();
        let pagemap = Pagemap::open().unwrap();
        assert!(entry(&pagemap, region.addr()).absent());
        // The write raises a MISSING fault, not a WP fault.
        let (tid, rx) = spawn_write(region.addr(), 0x22);
        assert_eq!(
            next_event(&uffd),
            page_fault(region.addr(), true, false, tid)
        );
        assert_eq!(
            uffd.zeropage(region.addr(), page_size(), true),
            Ok(page_size())
        );
        assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0x22);
    }

    #[test]
    fn wp_unpopulated_markers_fault_as_missing_and_fills_replace_them() {
        let region = Region::new(3);
        let uffd = Uffd::open(SERVICE_FEATURES | WP_UNPOPULATED).unwrap();
        if !uffd.has_feature(WP_UNPOPULATED) {
            eprintln!("skipped: kernel lacks UFFD_FEATURE_WP_UNPOPULATED");
            return;
        }
        uffd.register(region.addr(), region.len(), true, true)
            .unwrap();
        uffd.write_protect(region.addr(), region.len(), true, false)
            .unwrap();
        let pagemap = Pagemap::open().unwrap();
        let marker = entry(&pagemap, region.addr());
        assert!(
            !marker.present() && marker.swapped() && marker.uffd_wp(),
            "{marker:?}"
        );
        assert!(!marker.absent(), "a marker counts as holding data");

        // A write to a marked (absent) page is a MISSING fault, not a WP fault. ZEROPAGE
        // refuses a marker with EEXIST, and a woken thread faults again at once: a handler
        // that answers "EEXIST → wake" would spin. Un-protecting removes the marker.
        let (tid, rx) = spawn_write(region.page(0), 0x33);
        assert_eq!(
            next_event(&uffd),
            page_fault(region.page(0), true, false, tid)
        );
        assert_eq!(
            uffd.zeropage(region.page(0), page_size(), true),
            Err(CopyError::Exists { copied: 0 })
        );
        uffd.wake(region.page(0), page_size()).unwrap();
        assert_eq!(
            next_event(&uffd),
            page_fault(region.page(0), true, false, tid)
        );
        uffd.write_protect(region.page(0), page_size(), false, false)
            .unwrap();
        assert!(entry(&pagemap, region.page(0)).absent());
        assert_eq!(
            uffd.zeropage(region.page(0), page_size(), true),
            Ok(page_size())
        );
        assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0x33);
        assert_no_event(&uffd);

        // A copy without MODE_WP replaces the marker and drops the protection.

        let src = pattern(5);
        let (tid, rx) = spawn_write(region.page(1), 0x44);
        assert_eq!(
            next_event(&uffd),
            page_fault(region.page(1), true, false, tid)
        );
        // SAFETY: `src` is a readable page; page 1 is registered, absent (marker) and ours.
        let copied = unsafe { uffd.copy(region.page(1), src.as_ptr(), page_size(), false, true) };
        assert_eq!(copied, Ok(page_size()));
        assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0x44);
        let e = entry(&pagemap, region.page(1));
        assert!(e.present() && !e.uffd_wp(), "{e:?}");
        assert_eq!(peek(region.page(1) + 1), src[1]);

        // A read is a MISSING fault too; a copy with MODE_WP keeps the page protected.
        let (tid, rx) = spawn_read(region.page(2));
        assert_eq!(
            next_event(&uffd),
            page_fault(region.page(2), false, false, tid)
        );
        // SAFETY: as above, page 2.
        let copied = unsafe { uffd.copy(region.page(2), src.as_ptr(), page_size(), true, true) };
        assert_eq!(copied, Ok(page_size()));
        assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), src[0]);
        assert!(entry(&pagemap, region.page(2)).uffd_wp());
        let (tid, rx) = spawn_write(region.page(2), 0x55);
        assert_eq!(
            next_event(&uffd),
            page_fault(region.page(2), true, true, tid)
        );
        uffd.write_protect(region.page(2), page_size(), false, true)
            .unwrap();
        assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0x55);

        // MADV_DONTNEED of a write-protected page leaves no marker behind, even with
        // WP_UNPOPULATED: the next access is a plain MISSING fault.
        uffd.write_protect(region.page(1), page_size(), true, false)
            .unwrap();
        let page1 = region.page(1);
        // SAFETY: the test owns the page and discards its contents on purpose.
        let done = spawn_call(move || unsafe { sys::madvise_dontneed(page1, page_size()) });
        assert_eq!(
            next_event(&uffd),
            Event::Remove {
                start: page1,
                end: page1 + page_size()
            }
        );
        done.recv_timeout(TIMEOUT).unwrap().unwrap();
        assert_eq!(entry(&pagemap, page1).raw(), 0);
        let (tid, rx) = spawn_write(page1, 0x66);
        assert_eq!(next_event(&uffd), page_fault(page1, true, false, tid));
        assert_eq!(uffd.zeropage(page1, page_size(), true), Ok(page_size()));
        assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0x66);
    }

    #[test]
    fn munmap_blocks_until_its_unmap_event_is_read() {
        let region = Region::new(2);
        let uffd = open();
        uffd.register(region.addr(), region.len(), true, true)
            .unwrap();
        let (addr, len) = (region.addr(), region.len());
        region.forget();
        let done = spawn_call(move || {
            // SAFETY: the test owns this mapping and forgot it; nothing refers to it.
            unsafe { sys::munmap(NonNull::new(addr as *mut u8).unwrap(), len) }
        });
        assert!(uffd.wait_readable(Some(TIMEOUT)).unwrap());
        still_blocked(&done);
        assert_eq!(
            next_event(&uffd),
            Event::Unmap {
                start: addr,
                end: addr + len
            }
        );
        done.recv_timeout(TIMEOUT).unwrap().unwrap();
        // The range is gone: resolution ioctls say so, and so does clearing write
        // protection there (`migrate::write_protect` takes that as done).
        assert_eq!(
            uffd.zeropage(addr, page_size(), true),
            Err(CopyError::Gone(Errno::NOENT))
        );
        let unprotect = uffd.write_protect(addr, len, false, false);
        assert_eq!(
            unprotect.map_err(|e| e.raw_os_error()),
            Err(Some(linux_raw_sys::errno::ENOENT as i32))
        );
    }

    #[test]
    fn madvise_dontneed_gives_remove_and_later_reads_fault_again() {
        let region = Region::new(2);
        let uffd = open();
        uffd.register(region.addr(), region.len(), true, true)
            .unwrap();
        let src = [pattern(6), pattern(7)].concat();
        // SAFETY: `src` is readable for 2 pages; the range is registered, absent and ours.
        let copied = unsafe { uffd.copy(region.addr(), src.as_ptr(), region.len(), true, true) };
        assert_eq!(copied, Ok(region.len()));
        let (addr, len) = (region.addr(), region.len());
        // SAFETY: the test owns the range and discards its contents on purpose.
        let done = spawn_call(move || unsafe { sys::madvise_dontneed(addr, len) });
        assert!(uffd.wait_readable(Some(TIMEOUT)).unwrap());
        still_blocked(&done);
        assert_eq!(
            next_event(&uffd),
            Event::Remove {
                start: addr,
                end: addr + len
            }
        );
        done.recv_timeout(TIMEOUT).unwrap().unwrap();

        // The pages and their write protection are gone: the next access is a MISSING fault.
        let pagemap = Pagemap::open().unwrap();
        assert_eq!(entry(&pagemap, addr).raw(), 0);
        assert_eq!(entry(&pagemap, addr + page_size()).raw(), 0);
        let (tid, rx) = spawn_read(addr + 5);
        assert_eq!(next_event(&uffd), page_fault(addr, false, false, tid));
        // SAFETY: as above.
        let copied = unsafe { uffd.copy(addr, src.as_ptr(), page_size(), false, true) };
        assert_eq!(copied, Ok(page_size()));
        assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), src[5]);
        let (tid, rx) = spawn_write(addr + page_size(), 0x77);
        assert_eq!(
            next_event(&uffd),
            page_fault(addr + page_size(), true, false, tid)
        );
        assert_eq!(
            uffd.zeropage(addr + page_size(), page_size(), true),
            Ok(page_size())
        );
        assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0x77);
    }

    #[test]
    fn mremap_gives_remap_then_unmap_of_the_old_range_and_the_registration_moves() {
        let region = Region::new(2);
        let dest = Region::new(2);
        let uffd = open();
        uffd.register(region.addr(), region.len(), true, false)
            .unwrap();
        let (from, to, len) = (region.addr(), dest.addr(), region.len());
        region.forget();
        let done = spawn_call(move || {
            use rustix::mm::{mremap_fixed, MremapFlags};
            // SAFETY: both mappings belong to the test, nothing refers into them; the
            // destination mapping is replaced by the moved one.
            unsafe {
                mremap_fixed(
                    from as *mut c_void,
                    len,
                    len,
                    MremapFlags::MAYMOVE,
                    to as *mut c_void,
                )
            }?;
            Ok(())
        });
        assert!(uffd.wait_readable(Some(TIMEOUT)).unwrap());
        still_blocked(&done);
        assert_eq!(next_event(&uffd), Event::Remap { from, to, len });
        // Then the old range is reported unmapped, and mremap waits for that read too.
        still_blocked(&done);
        assert_eq!(
            next_event(&uffd),
            Event::Unmap {
                start: from,
                end: from + len
            }
        );
        done.recv_timeout(TIMEOUT).unwrap().unwrap();
        // Faults now arrive at the new address.
        let (tid, rx) = spawn_read(to + page_size());
        assert_eq!(
            next_event(&uffd),
            page_fault(to + page_size(), false, false, tid)
        );
        assert_eq!(
            uffd.zeropage(to + page_size(), page_size(), true),
            Ok(page_size())
        );
        assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0);
    }

    #[test]
    fn resolution_returns_eagain_while_an_event_is_unread() {
        let doomed = Region::new(1);
        let kept = Region::new(1);
        let uffd = open();
        uffd.register(doomed.addr(), doomed.len(), true, false)
            .unwrap();
        uffd.register(kept.addr(), kept.len(), true, true).unwrap();
        let (addr, len) = (doomed.addr(), doomed.len());
        doomed.forget();
        // SAFETY: the test owns this mapping and forgot it; nothing refers to it.
        let done =
            spawn_call(move || unsafe { sys::munmap(NonNull::new(addr as *mut u8).unwrap(), len) });
        assert!(uffd.wait_readable(Some(TIMEOUT)).unwrap());
        assert_eq!(
            uffd.zeropage(kept.addr(), page_size(), true),
            Err(CopyError::Again { copied: 0 })
        );
        assert_eq!(
            uffd.write_protect(kept.addr(), page_size(), true, false)
                .unwrap_err()
                .raw_os_error(),
            Some(Errno::AGAIN.raw_os_error())
        );
        assert_eq!(
            next_event(&uffd),
            Event::Unmap {
                start: addr,
                end: addr + len
            }
        );
        done.recv_timeout(TIMEOUT).unwrap().unwrap();
        assert_eq!(
            uffd.zeropage(kept.addr(), page_size(), true),
            Ok(page_size())
        );
    }

    #[test]
    fn kernel_mode_faults_reach_the_handler() {
        let region = Region::new(1);
        let uffd = open();
        if !require_kernel_faults(&uffd) {
            return;
        }
        uffd.register(region.addr(), region.len(), true, false)
            .unwrap();
        let efd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
        let efd = std::sync::Arc::new(efd);
        let writer = efd.clone();
        let addr = region.addr();
        let (tid_tx, tid_rx) = mpsc::channel();
        // write(2) on an eventfd copies 8 bytes from the registered page inside the kernel.
        let done = spawn_call(move || {
            tid_tx.send(sys::gettid()).unwrap();
            // SAFETY: the page belongs to the test's live mapping; the kernel only reads it.
            let bytes = unsafe { core::slice::from_raw_parts(addr as *const u8, 8) };
            rustix::io::write(&*writer, bytes)?;
            Ok(())
        });
        let tid = tid_rx.recv_timeout(TIMEOUT).unwrap();
        assert_eq!(next_event(&uffd), page_fault(addr, false, false, tid));
        let mut src = vec![0u8; page_size()];
        src[..8].copy_from_slice(&0x0102_0304_0506_0708u64.to_ne_bytes());
        // SAFETY: `src` is a readable page; the page is registered, absent and ours.
        let copied = unsafe { uffd.copy(addr, src.as_ptr(), page_size(), false, true) };
        assert_eq!(copied, Ok(page_size()));
        done.recv_timeout(TIMEOUT).unwrap().unwrap();
        let mut value = [0u8; 8];
        rustix::io::read(&*efd, &mut value).unwrap();
        assert_eq!(u64::from_ne_bytes(value), 0x0102_0304_0506_0708);
    }

    #[test]
    fn user_mode_only_turns_kernel_faults_into_efault() {
        let region = Region::new(1);
        let Ok(uffd) = Uffd::open_mode(OpenMode::UserModeOnly, SERVICE_FEATURES) else {
            eprintln!("skipped: UFFD_USER_MODE_ONLY is not available");
            return;
        };
        assert!(!uffd.kernel_faults());
        uffd.register(region.addr(), region.len(), true, false)
            .unwrap();
        let efd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
        // SAFETY: the page belongs to the test's live mapping; the kernel only reads it.
        let bytes = unsafe { core::slice::from_raw_parts(region.addr() as *const u8, 8) };
        assert_eq!(rustix::io::write(&efd, bytes), Err(Errno::FAULT));
        assert_no_event(&uffd);
        // A user-mode access still reaches the handler.
        let (tid, rx) = spawn_read(region.addr());
        assert_eq!(
            next_event(&uffd),
            page_fault(region.addr(), false, false, tid)
        );
        assert_eq!(
            uffd.zeropage(region.addr(), page_size(), true),
            Ok(page_size())
        );
        assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0);
    }

    #[test]
    fn closing_the_fd_wakes_faulters_with_zero_pages() {
        let region = Region::new(1);
        let uffd = open();
        uffd.register(region.addr(), region.len(), true, false)
            .unwrap();
        let (tid, rx) = spawn_read(region.addr());
        assert_eq!(
            next_event(&uffd),
            page_fault(region.addr(), false, false, tid)
        );
        still_blocked(&rx);
        drop(uffd);
        assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0);
    }

    #[test]
    fn unregister_wakes_faulters_and_stops_faults() {
        let region = Region::new(1);
        let uffd = open();
        uffd.register(region.addr(), region.len(), true, false)
            .unwrap();
        let (tid, rx) = spawn_read(region.addr());
        assert_eq!(
            next_event(&uffd),
            page_fault(region.addr(), false, false, tid)
        );
        uffd.unregister(region.addr(), region.len()).unwrap();
        assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0);
        poke(region.addr() + 1, 1);
        assert_no_event(&uffd);
    }

    #[test]
    fn registration_errors_are_errnos() {
        let region = Region::new(1);
        let uffd = open();
        let e = uffd
            .register(region.addr() + 1, page_size(), true, false)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(Errno::INVAL.raw_os_error()));
        let other = open();
        uffd.register(region.addr(), region.len(), true, false)
            .unwrap();
        let e = other
            .register(region.addr(), region.len(), true, false)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(Errno::BUSY.raw_os_error()));
        assert_eq!(uffd.read_events(&mut []).unwrap(), 0);
        // Registering again with the same fd adds modes ...
        let e = uffd
            .write_protect(region.addr(), page_size(), true, false)
            .unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(Errno::NOENT.raw_os_error()),
            "no WP registration yet"
        );
        uffd.register(region.addr(), region.len(), true, true)
            .unwrap();
        uffd.write_protect(region.addr(), page_size(), true, false)
            .unwrap();
        uffd.register(region.addr(), region.len(), true, false)
            .unwrap();
        // ... but does not remove any: WP is still in force.
        uffd.write_protect(region.addr(), page_size(), false, false)
            .unwrap();
    }
}
