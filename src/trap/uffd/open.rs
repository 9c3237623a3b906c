//! Opening a userfaultfd: three doors, one handshake (see the parent module's doc), and the
//! errors that say which door failed and why.

use std::ffi::c_void;
use std::fmt;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use linux_raw_sys::general as uapi;
use rustix::io::Errno;
use rustix::ioctl::{ioctl, Ioctl, IoctlOutput, Opcode, Updater};

use super::{Uffd, DEV_NODE, OP_API, OP_IOC_NEW};

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
    pub(super) attempts: [Option<AttemptError>; 3],
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
