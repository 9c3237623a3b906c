//! The fault service: userfaultfd, capability probing, the handler, `fork()`.
//!
//! This room holds the thin wrappers the fault service is built on. [`uffd`] owns one
//! userfaultfd and turns each ioctl into a call that neither allocates nor panics, so the
//! handler thread can use it after start-up (see "Rules that keep the handler
//! deadlock-free" in `docs/architecture.md`). [`probe`] answers, without side effects,
//! which fault backends this process could run (`vkhmm info`).
//!
//! [`service`] is the fault service on top of them (the handler thread, deferred faults, the
//! mirror), and [`fork`] brings device-resident pages home before `fork()`.
//!
//! The service runs one of two backends, chosen once per process (`VKHMM_FAULT`):
//! userfaultfd ([`uffd`]), or — where userfaultfd cannot be opened, e.g. under Docker's
//! default seccomp profile — [`signal`]: `mprotect` + a `SIGSEGV` handler that hands faults
//! to a helper thread, for runtime-owned `Managed<T>` memory only.

pub(crate) mod assist;
pub(crate) mod fork;
pub(crate) mod parking;
pub mod probe;
pub(crate) mod service;
pub(crate) mod signal;
pub(crate) mod uffd;
pub(crate) mod watch;
