//! What fault backends this process could run, found without side effects.
//!
//! [`probe`] tries every way of opening a userfaultfd (each on its own throw-away fds, all
//! closed before it returns), performs the API handshake to learn the kernel's features,
//! and reads the few `/proc` values that explain a failure: `vm.unprivileged_userfaultfd`,
//! access to `/dev/userfaultfd`, the seccomp mode. `vkhmm info` prints the result; the
//! fault service does not depend on it (it opens its own fd with [`Uffd::open`]).
//!
//! Nothing here is `unsafe`; the probe registers no memory and leaves no fd open.

use std::fmt;
use std::io;

pub use super::uffd::OpenMode;
use super::uffd::{feature_names, Uffd, DEV_NODE, KNOWN_FEATURES, SERVICE_FEATURES};
use super::{Choice, FaultBackend, REQUIRED};

/// What the machine and this process allow the fault service to do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FaultCapabilities {
    /// How the fault service would open its userfaultfd (the first mode that worked), or
    /// `None` if userfaultfd cannot be used at all.
    pub userfaultfd: Option<OpenMode>,
    /// Whether faults raised inside syscalls (a `read(2)` into a device-resident buffer)
    /// reach the handler. `false` in user-mode-only mode and without userfaultfd.
    pub kernel_faults: bool,
    /// Every opening mode, in the order the service tries them, with its outcome.
    pub attempts: Vec<ProbeAttempt>,
    /// The `UFFD_FEATURE_*` bits the kernel offers (0 without userfaultfd).
    pub supported_feature_bits: u64,
    /// Names of the features the kernel offers, e.g. `"pagefault_flag_wp"`, `"event_remove"`.
    pub supported_features: Vec<&'static str>,
    /// Names of the features the fault service asks for and gets.
    pub negotiated_features: Vec<&'static str>,
    /// Offered feature bits this crate has no name for (a newer kernel).
    pub unknown_feature_bits: u64,
    /// The `vm.unprivileged_userfaultfd` sysctl, if readable.
    pub unprivileged_userfaultfd: Option<u32>,
    /// Whether `/dev/userfaultfd` can be opened read-write.
    pub dev_userfaultfd: DevNodeAccess,
    /// The process's seccomp mode (`Seccomp:` in `/proc/self/status`).
    pub seccomp: SeccompMode,
    /// Whether the `signal` backend (mprotect + SIGSEGV, writes through `/proc/self/mem`)
    /// can run here.
    pub signal_fallback: bool,
    /// Why the `signal` backend cannot run, if it cannot.
    pub signal_error: Option<String>,
    /// The backend a runtime started now would get, given `VKHMM_FAULT` (or why none).
    pub backend: Result<FaultBackend, String>,
}

/// The outcome of one way of opening a userfaultfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeAttempt {
    /// The mode tried.
    pub mode: OpenMode,
    /// `Ok` if a handshaken fd was obtained (and closed again).
    pub result: Result<(), ProbeFailure>,
}

/// Which call of an opening attempt failed, and with what errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeFailure {
    /// The call, e.g. `"userfaultfd()"`, `"open(/dev/userfaultfd)"`, `"UFFDIO_API"`.
    pub call: &'static str,
    /// The raw errno.
    pub errno: i32,
    /// The usual cause of this errno here, if there is one.
    pub hint: Option<&'static str>,
}

impl ProbeFailure {
    /// The errno as an `io::Error`.
    pub fn io_error(&self) -> io::Error {
        io::Error::from_raw_os_error(self.errno)
    }
}

/// Whether `/dev/userfaultfd` can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevNodeAccess {
    /// It opens read-write.
    Accessible,
    /// It does not exist (Linux < 6.1, or not in this container).
    Missing,
    /// Opening it failed with this errno (usually `EACCES`).
    Denied {
        /// The raw errno.
        errno: i32,
    },
}

/// The seccomp mode of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeccompMode {
    /// No seccomp.
    Disabled,
    /// Strict mode (only read, write, exit, sigreturn).
    Strict,
    /// A BPF filter is installed; it may or may not forbid `userfaultfd(2)` (Docker's default
    /// profile does, answering `EPERM` or `ENOSYS`).
    Filter,
    /// `/proc/self/status` did not say.
    Unknown,
}

/// Probes the fault backends. Opens and closes a few userfaultfds; registers nothing.
pub fn probe() -> FaultCapabilities {
    let mut attempts = Vec::with_capacity(OpenMode::ALL.len());
    let mut chosen: Option<(OpenMode, u64, u64)> = None;
    for mode in OpenMode::ALL {
        // The fd (and the throw-away fd of its handshake) are closed at the end of this
        // statement: the probe leaves nothing open.
        let result = match Uffd::open_mode(mode, SERVICE_FEATURES) {
            Ok(uffd) => {
                if chosen.is_none() {
                    chosen = Some((mode, uffd.supported_features(), uffd.features()));
                }
                Ok(())
            }
            Err(e) => Err(ProbeFailure {
                call: e.step.as_str(),
                errno: e.errno.raw_os_error(),
                hint: e.hint(),
            }),
        };
        attempts.push(ProbeAttempt { mode, result });
    }
    let (supported, negotiated) = chosen.map_or((0, 0), |(_, s, n)| (s, n));
    let signal_error = super::signal::probe().err();
    let uffd_ok = chosen.is_some() && negotiated & REQUIRED == REQUIRED;
    let backend = match Choice::from_env() {
        Err(e) => Err(e.to_string()),
        Ok(choice) => match (choice, uffd_ok, &signal_error) {
            (Choice::Uffd | Choice::Auto, true, _) => Ok(FaultBackend::Userfaultfd),
            (Choice::Uffd, false, _) => Err("userfaultfd is unusable (VKHMM_FAULT=uffd)".into()),
            (Choice::Signal | Choice::Auto, _, None) => Ok(FaultBackend::Signal),
            (_, _, Some(e)) => Err(format!("the signal backend cannot run: {e}")),
        },
    };
    FaultCapabilities {
        userfaultfd: chosen.map(|(m, _, _)| m),
        kernel_faults: chosen.is_some_and(|(m, _, _)| m.kernel_faults()),
        attempts,
        supported_feature_bits: supported,
        supported_features: feature_names(supported).collect(),
        negotiated_features: feature_names(negotiated).collect(),
        unknown_feature_bits: supported & !KNOWN_FEATURES,
        unprivileged_userfaultfd: read_unprivileged_sysctl(),
        dev_userfaultfd: dev_node_access(),
        seccomp: seccomp_mode(),
        signal_fallback: signal_error.is_none(),
        signal_error,
        backend,
    }
}

fn read_unprivileged_sysctl() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn dev_node_access() -> DevNodeAccess {
    use rustix::fs::{open, Mode, OFlags};
    match open(DEV_NODE, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()) {
        Ok(_fd) => DevNodeAccess::Accessible,
        Err(rustix::io::Errno::NOENT) => DevNodeAccess::Missing,
        Err(e) => DevNodeAccess::Denied {
            errno: e.raw_os_error(),
        },
    }
}

fn seccomp_mode() -> SeccompMode {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_seccomp(&s))
        .unwrap_or(SeccompMode::Unknown)
}

fn parse_seccomp(status: &str) -> Option<SeccompMode> {
    let value = status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))?
        .trim();
    Some(match value {
        "0" => SeccompMode::Disabled,
        "1" => SeccompMode::Strict,
        "2" => SeccompMode::Filter,
        _ => SeccompMode::Unknown,
    })
}

impl fmt::Display for DevNodeAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DevNodeAccess::Accessible => f.write_str("accessible"),
            DevNodeAccess::Missing => f.write_str("missing"),
            DevNodeAccess::Denied { errno } => {
                write!(
                    f,
                    "not accessible ({})",
                    io::Error::from_raw_os_error(*errno)
                )
            }
        }
    }
}

impl fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SeccompMode::Disabled => "disabled",
            SeccompMode::Strict => "strict",
            SeccompMode::Filter => "filter (may block userfaultfd)",
            SeccompMode::Unknown => "unknown",
        })
    }
}

impl fmt::Display for FaultCapabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.userfaultfd {
            Some(mode) => writeln!(f, "userfaultfd:        available via {mode}")?,
            None => writeln!(f, "userfaultfd:        unavailable")?,
        }
        if self.kernel_faults {
            writeln!(
                f,
                "kernel-mode faults: served (syscalls may touch device-resident memory)"
            )?;
        } else if self.userfaultfd.is_some() {
            writeln!(
                f,
                "kernel-mode faults: not served (user-mode only: syscalls on device-resident \
                 memory fail with EFAULT)"
            )?;
        } else {
            writeln!(f, "kernel-mode faults: not served")?;
        }
        for a in &self.attempts {
            match &a.result {
                Ok(()) => writeln!(f, "  {:<42} ok", a.mode.to_string())?,
                Err(e) => {
                    write!(
                        f,
                        "  {:<42} {} failed: {}",
                        a.mode.to_string(),
                        e.call,
                        e.io_error()
                    )?;
                    if let Some(hint) = e.hint {
                        write!(f, " ({hint})")?;
                    }
                    writeln!(f)?;
                }
            }
        }
        if self.userfaultfd.is_some() {
            writeln!(
                f,
                "features supported: {}",
                self.supported_features.join(", ")
            )?;
            if self.unknown_feature_bits != 0 {
                writeln!(
                    f,
                    "                    + unknown bits {:#x}",
                    self.unknown_feature_bits
                )?;
            }
            writeln!(
                f,
                "features used:      {}",
                self.negotiated_features.join(", ")
            )?;
        }
        match self.unprivileged_userfaultfd {
            Some(v) => writeln!(f, "vm.unprivileged_userfaultfd = {v}")?,
            None => writeln!(f, "vm.unprivileged_userfaultfd: unreadable")?,
        }
        writeln!(f, "/dev/userfaultfd:   {}", self.dev_userfaultfd)?;
        writeln!(f, "seccomp:            {}", self.seccomp)?;
        writeln!(
            f,
            "signal fallback:    {}",
            match &self.signal_error {
                None => "available (mprotect + SIGSEGV)".to_string(),
                Some(e) => format!("unavailable: {e}"),
            }
        )?;
        match &self.backend {
            Ok(b) => write!(f, "backend chosen:     {b}"),
            Err(e) => write!(f, "backend chosen:     none ({e})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_userfaultfds() -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy().contains("[userfaultfd]"))
            .count()
    }

    #[test]
    fn probe_finds_userfaultfd_and_says_whether_kernel_faults_are_served() {
        let caps = probe();
        let mode = caps
            .userfaultfd
            .expect("userfaultfd is usable on this machine");
        assert_eq!(caps.kernel_faults, mode.kernel_faults());
        assert_eq!(caps.attempts.len(), 3);
        assert_eq!(
            caps.attempts.iter().map(|a| a.mode).collect::<Vec<_>>(),
            OpenMode::ALL
        );
        let first_ok = caps.attempts.iter().find(|a| a.result.is_ok()).unwrap();
        assert_eq!(first_ok.mode, mode);
        for name in [
            "pagefault_flag_wp",
            "event_remove",
            "event_unmap",
            "event_remap",
            "thread_id",
        ] {
            assert!(
                caps.supported_features.contains(&name),
                "{name} missing: {caps}"
            );
            assert!(
                caps.negotiated_features.contains(&name),
                "{name} not used: {caps}"
            );
        }
        assert!(caps.signal_fallback);
        let text = caps.to_string();
        assert!(text.contains("kernel-mode faults:"), "{text}");
        assert!(text.contains(&mode.to_string()), "{text}");
        assert!(text.contains("vm.unprivileged_userfaultfd"), "{text}");
        assert!(text.contains("seccomp:"), "{text}");
        if caps.kernel_faults {
            assert!(text.contains("kernel-mode faults: served"), "{text}");
        }
    }

    #[test]
    fn probe_reads_this_machines_settings() {
        let caps = probe();
        let sysctl = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd").ok();
        assert_eq!(
            caps.unprivileged_userfaultfd,
            sysctl.and_then(|s| s.trim().parse().ok())
        );
        let node = std::path::Path::new(DEV_NODE);
        assert_eq!(
            caps.dev_userfaultfd == DevNodeAccess::Missing,
            !node.exists()
        );
        assert_ne!(caps.seccomp, SeccompMode::Unknown);
        if caps.dev_userfaultfd == DevNodeAccess::Accessible {
            assert!(caps.attempts[1].result.is_ok(), "{caps}");
        }
    }

    #[test]
    fn probe_leaves_no_userfaultfd_open() {
        // Other tests open userfaultfds concurrently, a handful at a time; a leak of two fds
        // per probe would show as dozens.
        let before = open_userfaultfds();
        for _ in 0..20 {
            let _ = probe();
        }
        let after = open_userfaultfds();
        assert!(
            after < before + 10,
            "{before} userfaultfds open before 20 probes, {after} after"
        );
    }

    #[test]
    fn seccomp_modes_parse() {
        assert_eq!(
            parse_seccomp("Name:\tx\nSeccomp:\t2\nSeccomp_filters:\t1\n"),
            Some(SeccompMode::Filter)
        );
        assert_eq!(parse_seccomp("Seccomp:\t0\n"), Some(SeccompMode::Disabled));
        assert_eq!(parse_seccomp("Seccomp:\t1\n"), Some(SeccompMode::Strict));
        assert_eq!(parse_seccomp("Name:\tx\n"), None);
    }

    #[test]
    fn display_explains_an_unusable_machine() {
        let caps = FaultCapabilities {
            userfaultfd: None,
            kernel_faults: false,
            attempts: vec![ProbeAttempt {
                mode: OpenMode::Syscall,
                result: Err(ProbeFailure {
                    call: "userfaultfd()",
                    errno: 38,
                    hint: Some("blocked by seccomp"),
                }),
            }],
            supported_feature_bits: 0,
            supported_features: vec![],
            negotiated_features: vec![],
            unknown_feature_bits: 0,
            unprivileged_userfaultfd: None,
            dev_userfaultfd: DevNodeAccess::Denied { errno: 13 },
            seccomp: SeccompMode::Filter,
            signal_fallback: true,
            signal_error: None,
            backend: Ok(FaultBackend::Signal),
        };
        let text = caps.to_string();
        assert!(text.contains("backend chosen:     signal"), "{text}");
        assert!(text.contains("userfaultfd:        unavailable"), "{text}");
        assert!(text.contains("kernel-mode faults: not served"), "{text}");
        assert!(text.contains("blocked by seccomp"), "{text}");
        assert!(text.contains("not accessible"), "{text}");
        assert!(text.contains("mprotect + SIGSEGV"), "{text}");
    }
}
