//! The fault service's operating-system floor: userfaultfd, capability probing.
//!
//! This room holds the thin wrappers the fault service is built on. [`uffd`] owns one
//! userfaultfd and turns each ioctl into a call that neither allocates nor panics, so the
//! handler thread can use it after start-up (see "Rules that keep the handler
//! deadlock-free" in `docs/architecture.md`). [`probe`] answers, without side effects,
//! which fault backends this process could run (`vkhmm info`).
//!
//! The service itself (handler thread, deferred faults, the `signal` backend) lands here
//! later, on top of these modules.

pub(crate) mod fork;
pub mod probe;
pub(crate) mod service;
pub(crate) mod uffd;
