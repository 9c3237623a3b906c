//! The fault service: the threads that resolve CPU faults on mirrored memory.
//!
//! One service per process, shared by every `Runtime`, started with the first one (before any
//! memory is mirrored, so its threads' start-up allocations cannot land on device-resident
//! pages) and alive until the process exits. Starting it chooses the trap backend
//! (`trap::Backend`), makes the process's [`AddressSpace`] and starts, on it:
//!
//! - the thread that resolves faults: the userfaultfd handler ([`uffd_handler`]) or the
//!   `signal` backend's helper ([`signal_helper`]), both resolving with [`resolve`] and
//!   keeping faults that must wait in one kind of queue ([`deferred`]);
//! - on machines with two or more CPUs, its assistant (`pages::halves`), which installs half
//!   of each large window.
//!
//! Migration never calls into this module: it gets the [`AddressSpace`] from the runtime and
//! moves pages with `pages`, as the threads here do.

pub(crate) mod deferred;
pub(crate) mod resolve;
pub(crate) mod signal_helper;
pub(crate) mod uffd_handler;

use std::ops::Range;
use std::sync::OnceLock;

use crate::mirror::PAGE;
use crate::pages::halves;
use crate::space::AddressSpace;
use crate::sys;
use crate::trap::{signal, Backend, Choice};
use crate::{Error, Result};

/// The service once started (or why it could not start: the reason and an errno).
static SERVICE: OnceLock<std::result::Result<&'static AddressSpace, (String, Option<i32>)>> =
    OnceLock::new();

/// The service's address space, started on first use with `choice` (`None`: what
/// `VKHMM_FAULT` asks for). A service that runs already is returned whatever `choice` says.
pub(crate) fn service(choice: Option<Choice>) -> Result<&'static AddressSpace> {
    if let Some(started) = SERVICE.get() {
        return map_started(started);
    }
    let choice = match choice {
        Some(choice) => choice,
        None => Choice::from_env()?,
    };
    map_started(SERVICE.get_or_init(|| start(choice).map_err(|e| (e.to_string(), os_code(&e)))))
}

/// The service if it has been started (never starts it).
pub(crate) fn running() -> Option<&'static AddressSpace> {
    SERVICE.get().and_then(|r| r.as_ref().ok().copied())
}

/// `Managed<T>` memory at `range` is about to be unmapped (`AddressSpace::forget_managed`).
pub(crate) fn forget_managed(range: Range<usize>) {
    signal::remove_managed(range.start, range.len());
    if let Some(space) = running() {
        space.forget_managed(range);
    }
}

fn map_started(
    r: &std::result::Result<&'static AddressSpace, (String, Option<i32>)>,
) -> Result<&'static AddressSpace> {
    r.clone()
        .map_err(|(reason, code)| Error::FaultBackendUnavailable {
            reason,
            source: code.map(std::io::Error::from_raw_os_error),
        })
}

fn start(choice: Choice) -> Result<&'static AddressSpace> {
    if sys::page_size() != PAGE {
        return Err(Error::FaultBackendUnavailable {
            reason: format!(
                "vkhmm tracks {PAGE}-byte pages but this system uses {}",
                sys::page_size()
            ),
            source: None,
        });
    }
    // Before any other handler of this crate, so that they chain to it: copies of
    // bindings that a buggy program unmaps under a launch fail instead of killing it.
    if !sys::guarded::enable() {
        tracing::warn!("copies of program memory are not guarded against unmapping here");
    }
    let space: &'static AddressSpace =
        Box::leak(Box::new(AddressSpace::new(Backend::open(choice)?)?));
    let spawned = match &space.backend {
        Backend::Uffd(uffd) => std::thread::Builder::new()
            .name("vkhmm-fault".into())
            .spawn(move || uffd_handler::Handler::new(space, uffd).run()),
        Backend::Signal(_) => {
            signal::start(&space.wake).map_err(|e| Error::os("sigaction(SIGSEGV)", e))?;
            std::thread::Builder::new()
                .name("vkhmm-fault".into())
                .spawn(move || signal_helper::Helper::new(space).run())
        }
    };
    spawned.map_err(|e| Error::os("spawn the fault handler thread", e))?;
    if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
        // Without it every window is installed by the thread that claimed it.
        halves::spawn_assistant(move |job| resolve::assist_install(space, job));
    }
    Ok(space)
}

fn os_code(e: &Error) -> Option<i32> {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .and_then(std::io::Error::raw_os_error)
}
