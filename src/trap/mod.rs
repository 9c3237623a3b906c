//! Trapping CPU accesses to pages whose data is on the device: the two ways vkhmm can do
//! it, as primitives that know nothing of the mirror.
//!
//! - [`uffd`]: one userfaultfd — opening it, the ioctls that resolve faults (each neither
//!   allocates nor panics, so the fault handler can use them after start-up), its events;
//!   `uffd/tests.rs` is a conformance suite of the kernel behaviour the rest relies on.
//! - [`signal`]: `mprotect` + a `SIGSEGV` handler that hands faults to a helper thread, for
//!   runtime-owned `Managed<T>` memory only (where seccomp forbids userfaultfd, as Docker's
//!   default profile does).
//! - [`probe`]: which of them this process could run, without side effects (`vkhmm info`).
//!
//! [`Backend`] is the running one, chosen once per process ([`Choice`]: the builder's
//! `fault_backend`, else `VKHMM_FAULT`); the layers above call its memory operations and
//! never a backend directly, so migration does not know which one runs.

pub mod probe;
pub(crate) mod signal;
pub(crate) mod uffd;

use signal::Trap;
use uffd::{CopyResult, Uffd};

use crate::sys;
use crate::{Error, Result};

/// Features the service needs from userfaultfd.
pub(crate) const REQUIRED: u64 = (linux_raw_sys::general::UFFD_FEATURE_PAGEFAULT_FLAG_WP
    | linux_raw_sys::general::UFFD_FEATURE_EVENT_REMOVE
    | linux_raw_sys::general::UFFD_FEATURE_EVENT_UNMAP
    | linux_raw_sys::general::UFFD_FEATURE_EVENT_REMAP) as u64;

/// Features it uses when present (`MOVE`: dropping host pages through the parking,
/// `fault::parking`).
const WANTED: u64 = REQUIRED
    | linux_raw_sys::general::UFFD_FEATURE_THREAD_ID as u64
    | linux_raw_sys::general::UFFD_FEATURE_MOVE as u64;

/// Which fault backend serves CPU touches of device-resident pages (one per process,
/// chosen when the first [`Runtime`](crate::Runtime) starts the fault service,
/// `VKHMM_FAULT=auto|uffd|signal`, default `auto`: userfaultfd where it can be opened).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FaultBackend {
    /// userfaultfd (MISSING + WP faults, a handler thread): serves any private anonymous
    /// memory, and syscalls touching device-resident pages unless the fd is user-mode-only.
    Userfaultfd,
    /// `mprotect` + `SIGSEGV` with a helper thread: serves only memory from
    /// [`Runtime::alloc`](crate::Runtime::alloc) (`Managed<T>`); a syscall touching a
    /// device-resident page fails with `EFAULT`.
    Signal,
}

impl FaultBackend {
    /// `"uffd"` or `"signal"`, as `VKHMM_FAULT` spells them.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultBackend::Userfaultfd => "uffd",
            FaultBackend::Signal => "signal",
        }
    }
}

impl std::fmt::Display for FaultBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `VKHMM_FAULT` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Choice {
    /// userfaultfd, falling back to `signal` where it cannot be opened or lacks features.
    Auto,
    /// userfaultfd or nothing.
    Uffd,
    /// `signal`, even where userfaultfd works.
    Signal,
}

impl Choice {
    /// Reads `VKHMM_FAULT` (`auto` when unset).
    pub fn from_env() -> Result<Choice> {
        Choice::from_value(std::env::var_os("VKHMM_FAULT"))
    }

    /// Parses a `VKHMM_FAULT` value; a bad one is [`Error::InvalidConfig`].
    pub fn from_value(v: Option<std::ffi::OsString>) -> Result<Choice> {
        let Some(v) = v else {
            return Ok(Choice::Auto);
        };
        v.to_str().and_then(Choice::parse).ok_or_else(|| {
            Error::InvalidConfig(format!(
                "VKHMM_FAULT={v:?} is not one of `uffd`, `signal`, `auto`"
            ))
        })
    }

    fn parse(v: &str) -> Option<Choice> {
        match v.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Some(Choice::Auto),
            "uffd" | "userfaultfd" => Some(Choice::Uffd),
            "signal" => Some(Choice::Signal),
            _ => None,
        }
    }
}

/// The trapping mechanism of the running service, with the memory operations the
/// migration code needs, each done the backend's way.
pub(crate) enum Backend {
    /// userfaultfd.
    Uffd(Uffd),
    /// `mprotect` + `SIGSEGV` (module `signal`).
    Signal(Trap),
}

impl Backend {
    /// Opens the backend `choice` asks for (`Auto`: userfaultfd, else `signal`).
    pub fn open(choice: Choice) -> Result<Backend> {
        let signal = || {
            Trap::open()
                .map(Backend::Signal)
                .map_err(|reason| Error::FaultBackendUnavailable {
                    reason: format!("the signal fault backend cannot run: {reason}"),
                    source: None,
                })
        };
        match choice {
            Choice::Uffd => Ok(Backend::Uffd(open_uffd()?)),
            Choice::Signal => signal(),
            Choice::Auto => match open_uffd() {
                Ok(u) => Ok(Backend::Uffd(u)),
                Err(uffd_err) => match signal() {
                    Ok(b) => {
                        tracing::info!(reason = %uffd_err, "userfaultfd unavailable; using the signal fault backend");
                        Ok(b)
                    }
                    Err(sig_err) => Err(Error::FaultBackendUnavailable {
                        reason: format!("{uffd_err}; {sig_err}"),
                        source: None,
                    }),
                },
            },
        }
    }

    /// Which backend this is.
    pub fn kind(&self) -> FaultBackend {
        match self {
            Backend::Uffd(_) => FaultBackend::Userfaultfd,
            Backend::Signal(_) => FaultBackend::Signal,
        }
    }

    /// The `signal` backend's handle, if that is the backend.
    pub fn signal(&self) -> Option<&Trap> {
        match self {
            Backend::Signal(t) => Some(t),
            Backend::Uffd(_) => None,
        }
    }

    /// Fills the absent (or, for `signal`, protected and dropped) claimed pages at `dst`
    /// with `len` bytes from `src`, write-protected iff `wp`; wakes their waiters iff
    /// `wake`. Outcomes as for [`Uffd::copy`].
    ///
    /// # Safety
    ///
    /// As [`Uffd::copy`]: `src` readable and not in mirrored memory that may fault;
    /// `dst..dst + len` page-aligned mirrored memory whose pages the caller has claimed.
    pub unsafe fn copy(
        &self,
        dst: usize,
        src: *const u8,
        len: usize,
        wp: bool,
        wake: bool,
    ) -> CopyResult {
        match self {
            // SAFETY: forwarded from the caller.
            Backend::Uffd(u) => unsafe { u.copy(dst, src, len, wp, wake) },
            Backend::Signal(t) => {
                let prot = if wp {
                    sys::Prot::Read
                } else {
                    sys::Prot::ReadWrite
                };
                // SAFETY: forwarded from the caller.
                let r = unsafe { t.copy(dst, src, len, prot) };
                if wake {
                    t.wake();
                }
                r
            }
        }
    }

    /// Wakes threads waiting in faults on `[addr, addr + len)`.
    pub fn wake(&self, addr: usize, len: usize) -> std::io::Result<()> {
        match self {
            Backend::Uffd(u) => u.wake(addr, len),
            Backend::Signal(t) => {
                t.wake();
                Ok(())
            }
        }
    }

    /// Sets (`protect`) or clears write protection of present pages; `wake` wakes writers
    /// when clearing.
    pub fn write_protect(
        &self,
        addr: usize,
        len: usize,
        protect: bool,
        wake: bool,
    ) -> std::io::Result<()> {
        match self {
            Backend::Uffd(u) => u.write_protect(addr, len, protect, wake),
            Backend::Signal(t) => {
                let prot = if protect {
                    sys::Prot::Read
                } else {
                    sys::Prot::ReadWrite
                };
                t.protect(addr, len, prot)?;
                if wake && !protect {
                    t.wake();
                }
                Ok(())
            }
        }
    }

    /// Stops trapping `[addr, addr + len)` (its pages are `Host` by now).
    pub fn unregister(&self, addr: usize, len: usize) -> std::io::Result<()> {
        match self {
            Backend::Uffd(u) => u.unregister(addr, len),
            Backend::Signal(_) => Ok(()),
        }
    }

    /// Claimed pages that are absent on the host became `Device`: make a touch fault.
    /// (userfaultfd: an absent registered page faults already; signal: `PROT_NONE`.)
    pub fn trap_absent(&self, addr: usize, len: usize) -> std::io::Result<()> {
        match self {
            Backend::Uffd(_) => Ok(()),
            Backend::Signal(t) => t.protect(addr, len, sys::Prot::None),
        }
    }
}

/// Opens the service's userfaultfd and checks it has what the handler needs.
fn open_uffd() -> Result<Uffd> {
    let uffd = Uffd::open(WANTED).map_err(Error::from)?;
    if uffd.features() & REQUIRED != REQUIRED {
        return Err(Error::FaultBackendUnavailable {
            reason: format!(
                "userfaultfd lacks write-protect or REMOVE/UNMAP/REMAP events (features {:#x})",
                uffd.features()
            ),
            source: None,
        });
    }
    Ok(uffd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vkhmm_fault_values() {
        let parse = |v: Option<&str>| Choice::from_value(v.map(Into::into));
        assert_eq!(parse(None).unwrap(), Choice::Auto);
        assert_eq!(parse(Some("auto")).unwrap(), Choice::Auto);
        assert_eq!(parse(Some("")).unwrap(), Choice::Auto);
        assert_eq!(parse(Some("uffd")).unwrap(), Choice::Uffd);
        assert_eq!(parse(Some("userfaultfd")).unwrap(), Choice::Uffd);
        assert_eq!(parse(Some(" Signal ")).unwrap(), Choice::Signal);
        match parse(Some("sigsegv")) {
            Err(Error::InvalidConfig(m)) => assert!(m.contains("VKHMM_FAULT"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
