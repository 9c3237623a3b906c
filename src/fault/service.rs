//! The process-wide fault service: one userfaultfd, one handler thread, the mirror.
//!
//! Every `Runtime` of the process shares this service: the mirror is a property of the
//! address space, not of a device. It starts with the first `Runtime` (before any memory is
//! mirrored, so the handler's own start-up allocations cannot land on device-resident pages)
//! and lives until the process exits.
//!
//! ## The handler loop
//!
//! ```text
//! loop {
//!     idle  → poll(uffd, wake eventfd)            // holds no reference into the mirror
//!     busy  → lock the gate
//!             read every pending message; handle REMOVE/UNMAP/REMAP first, then faults
//!             retry deferred faults
//!             unlock the gate
//! }
//! ```
//!
//! Ordering hazards, written down as the kernel's own selftests and Firecracker do:
//!
//! - A thread that calls `munmap`, `madvise(DONTNEED)` or `mremap` on a registered range
//!   blocks until the handler has *read* the event, not until it has processed it. Launchers
//!   that need the mirror to reflect such a call take the gate ([`FaultService::sync_events`]):
//!   the handler holds it from before the read until after the processing.
//! - `REMOVE` and page-fault messages of one batch may be out of causal order. Events are
//!   handled first: a fault on a page that was discarded meanwhile then finds `Host|GONE` and
//!   gets a zero page, which is what the discard means.
//! - The runtime's own `MADV_DONTNEED` (dropping pages after upload) raises `REMOVE` too; those
//!   pages are claimed (`BUSY`) by the launcher, and `REMOVE` never touches claimed pages.
//! - `EEXIST` from `UFFDIO_COPY`/`ZEROPAGE`: somebody resolved the page first; wake waiters.
//!   `EAGAIN`: the address space is changing; defer and retry on a short timer.
//!
//! ## What the handler must never do (docs/architecture.md, "deadlock-free")
//!
//! Wait for a thread that may itself be blocked in a fault: so it takes no lock a launcher
//! holds while touching memory (it reads the mirror through a snapshot and changes pages by
//! CAS), allocates nothing after start-up (a `malloc` might carve a freed chunk whose pages
//! are still on the device), never frees an extent (the mirror's graveyard does that on the
//! writer side), and uses its own transfer context per device.

use std::ops::Range;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use super::assist::{Assist, Halves, Job, Kind};
use super::parking::{Dropped, Parking};
use super::signal::{self, Trap};
use super::uffd::{CopyError, CopyResult, Event, Uffd, UffdMsg};
use super::watch::{Change, LaunchWatch, Watches};
use crate::device::Transfer;
use crate::migrate::{
    install, install_in_place, Counters, DeviceCopy, Ext, InstallStop, Installed,
};
use crate::mirror::map::MirrorMap;
use crate::mirror::page::Residence;
use crate::mirror::plan::page_floor;
use crate::mirror::policy::{fault_window, split_point};
use crate::mirror::PAGE;
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

/// Messages read per `read(2)`.
const BATCH: usize = 64;
/// Faults that can wait at once (one per blocked thread).
const MAX_DEFERRED: usize = 4096;

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

/// The process-wide fault service.
pub(crate) struct FaultService {
    pub backend: Backend,
    pub mirror: MirrorMap<DeviceCopy>,
    pub pagemap: sys::Pagemap,
    /// Ranges watched for unmaps: in-place ranges and the bindings of launches in flight
    /// (`fault::watch`).
    pub watches: Watches,
    /// Where host pages are moved to be dropped (userfaultfd with `UFFDIO_MOVE` only).
    parking: Option<Parking>,
    /// A page registered for write protection that nothing uses: an ioctl on it tells
    /// whether an event is unread ([`quiesce`](Self::quiesce); userfaultfd only).
    sentinel: Option<usize>,
    /// The process that started the service (a forked child must not use it).
    pub pid: u32,
    /// The second thread that installs half of each large fault-back window (`fault::assist`).
    assist: Assist,
    /// Whether the assistant runs (the machine has more than one CPU and it started).
    assisted: AtomicBool,
    /// Whether the thread that resolves faults holds deferred faults, waiting for claimed
    /// pages: only then does [`poke`](Self::poke) wake it.
    deferring: AtomicBool,
    pub(super) wake: OwnedFd,
    pub(super) gate: Mutex<()>,
}

static SERVICE: OnceLock<std::result::Result<&'static FaultService, (String, Option<i32>)>> =
    OnceLock::new();

impl FaultService {
    /// The service, started on first use with the backend `VKHMM_FAULT` asks for.
    pub fn get() -> Result<&'static FaultService> {
        Self::get_with(None)
    }

    /// The service, started on first use with `choice` (`None`: what `VKHMM_FAULT` asks
    /// for). A service that runs already is returned whatever `choice` says.
    pub fn get_with(choice: Option<Choice>) -> Result<&'static FaultService> {
        if let Some(started) = SERVICE.get() {
            return Self::map_started(started);
        }
        let choice = match choice {
            Some(choice) => choice,
            None => Choice::from_env()?,
        };
        Self::map_started(
            SERVICE.get_or_init(|| Self::start(choice).map_err(|e| (e.to_string(), os_code(&e)))),
        )
    }

    /// The service if it has been started (never starts it).
    pub fn running() -> Option<&'static FaultService> {
        SERVICE.get().and_then(|r| r.as_ref().ok().copied())
    }

    fn map_started(
        r: &std::result::Result<&'static FaultService, (String, Option<i32>)>,
    ) -> Result<&'static FaultService> {
        r.clone()
            .map_err(|(reason, code)| Error::FaultBackendUnavailable {
                reason,
                source: code.map(std::io::Error::from_raw_os_error),
            })
    }

    fn start(choice: Choice) -> Result<&'static FaultService> {
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
        let signal = || {
            Trap::open()
                .map(Backend::Signal)
                .map_err(|reason| Error::FaultBackendUnavailable {
                    reason: format!("the signal fault backend cannot run: {reason}"),
                    source: None,
                })
        };
        let backend = match choice {
            Choice::Uffd => Backend::Uffd(open_uffd()?),
            Choice::Signal => signal()?,
            Choice::Auto => match open_uffd() {
                Ok(u) => Backend::Uffd(u),
                Err(uffd_err) => match signal() {
                    Ok(b) => {
                        tracing::info!(reason = %uffd_err, "userfaultfd unavailable; using the signal fault backend");
                        b
                    }
                    Err(sig_err) => {
                        return Err(Error::FaultBackendUnavailable {
                            reason: format!("{uffd_err}; {sig_err}"),
                            source: None,
                        })
                    }
                },
            },
        };
        let wake = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .map_err(|e| Error::os("eventfd", e))?;
        let pagemap = sys::Pagemap::open().map_err(|e| Error::os("open /proc/self/pagemap", e))?;
        let parking = match &backend {
            Backend::Uffd(u) if u.has_feature(linux_raw_sys::general::UFFD_FEATURE_MOVE as u64) => {
                Parking::open(u)
                    .map_err(|e| tracing::warn!(error = %e, "no parking; host pages are dropped with MADV_DONTNEED"))
                    .ok()
            }
            _ => None,
        };
        let sentinel = match &backend {
            Backend::Uffd(u) => {
                let page = sys::mmap_anon(PAGE)
                    .map_err(|e| Error::os("mmap", e))?
                    .as_ptr() as usize;
                u.register(page, PAGE, true, true)
                    .map_err(|e| Error::os("UFFDIO_REGISTER", e))?;
                Some(page)
            }
            Backend::Signal(_) => None,
        };
        let svc: &'static FaultService = Box::leak(Box::new(FaultService {
            backend,
            mirror: MirrorMap::new(),
            pagemap,
            watches: Watches::new(),
            parking,
            sentinel,
            pid: rustix::process::getpid().as_raw_nonzero().get() as u32,
            assist: Assist::new(),
            assisted: AtomicBool::new(false),
            deferring: AtomicBool::new(false),
            wake,
            gate: Mutex::new(()),
        }));
        let spawned = match &svc.backend {
            Backend::Uffd(uffd) => std::thread::Builder::new()
                .name("vkhmm-fault".into())
                .spawn(move || Handler::new(svc, uffd).run()),
            Backend::Signal(_) => {
                signal::start(&svc.wake).map_err(|e| Error::os("sigaction(SIGSEGV)", e))?;
                std::thread::Builder::new()
                    .name("vkhmm-fault".into())
                    .spawn(move || signal::Helper::new(svc).run())
            }
        };
        spawned.map_err(|e| Error::os("spawn the fault handler thread", e))?;
        if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
            let assistant = std::thread::Builder::new()
                .name("vkhmm-assist".into())
                .spawn(move || svc.assist.run(|job| assist_install(svc, job)));
            // Without it every window is installed by the handler alone.
            svc.assisted.store(assistant.is_ok(), Ordering::Release);
        }
        super::fork::install_atfork_handlers();
        Ok(svc)
    }

    /// Which backend this service runs.
    pub fn kind(&self) -> FaultBackend {
        self.backend.kind()
    }

    /// Registers `span` (page-aligned) for MISSING and WP faults. Idempotent. The `signal`
    /// backend traps only runtime-owned memory and registers nothing: the launch path has
    /// checked the span is such memory.
    pub fn register(&self, span: Range<usize>) -> std::io::Result<()> {
        match &self.backend {
            Backend::Uffd(u) => u.register(span.start, span.len(), true, true).map(drop),
            Backend::Signal(_) if signal::is_managed(&span) => Ok(()),
            Backend::Signal(_) => Err(std::io::ErrorKind::Unsupported.into()),
        }
    }

    /// `Managed<T>` memory at `range` is about to be unmapped: under the `signal` backend
    /// (which sees no `UNMAP` event) its mirror pages are marked gone first, with the
    /// mirror's writer side and the gate held, so no launch and no helper round is writing
    /// into the range when it is unmapped and its addresses are reused.
    pub fn forget_managed(range: Range<usize>) {
        signal::remove_managed(range.start, range.len());
        let Some(svc) = Self::running() else { return };
        // In-place imports of the range are stale now (under userfaultfd the UNMAP event
        // says so too).
        svc.watches.changed(range.clone(), Change::Unmapped);
        if svc.backend.signal().is_none()
            || rustix::process::getpid().as_raw_nonzero().get() as u32 != svc.pid
        {
            return;
        }
        let w = svc.mirror.write();
        let gate = svc.gate.lock().unwrap_or_else(PoisonError::into_inner);
        svc.mirror.for_each_overlapping(range.clone(), |ext| {
            for i in ext.page_span(&range) {
                ext.cell(i).mark_gone();
            }
        });
        drop(gate);
        drop(w);
    }

    /// Warms the mirror reader's per-thread state of the thread that resolves faults (call
    /// it once, before anything is mirrored: the first read allocates).
    pub(super) fn warm_reader(&self) {
        self.mirror.handler_busy();
        self.mirror.lookup(0, |_, _| ());
        self.mirror.handler_idle();
    }

    /// Starts a round of the thread that resolves faults, after its wait: it enters its busy
    /// epoch, drains the wake eventfd and takes the gate (held until the round's end; leave
    /// the epoch with `mirror.handler_idle()` after dropping it).
    pub(super) fn begin_round(&self) -> std::sync::MutexGuard<'_, ()> {
        self.mirror.handler_busy();
        let mut tick = [0u8; 8];
        let _ = rustix::io::read(&self.wake, &mut tick);
        self.gate.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Installs the claimed `pages` of `ext` as `kind` says: in two halves at once when the
    /// range is large enough for `ext`'s policy to split and the assistant is free (the
    /// upper half by the assistant, with its own transfer context), else in one piece; the
    /// calling thread's part by `install`. Returns once every part is done; the caller
    /// releases each part by its own outcome.
    pub(crate) fn install_halves(
        &self,
        ext: &Ext,
        pages: Range<usize>,
        kind: Kind,
        install: impl FnOnce(Range<usize>) -> Result<Installed>,
    ) -> Halves {
        let mid = split_point(&ext.device().ctx.policy, pages.clone())
            .filter(|_| ext.device().ctx.assist_transfer.is_some())
            .filter(|&mid| self.assist.try_post(Job::new(ext, mid..pages.end, kind)));
        let Some(mid) = mid else {
            return Halves {
                low: (pages.clone(), install(pages)),
                high: None,
            };
        };
        Counters::add(&ext.device().ctx.counters.parallel_installs, 1);
        let low = install(pages.start..mid);
        Halves {
            low: (pages.start..mid, low),
            high: Some((mid..pages.end, self.assist.wait())),
        }
    }

    /// Whether the assistant runs, so that runtimes can give it a transfer context (settled
    /// before the service is handed out).
    pub(crate) fn assisted(&self) -> bool {
        self.assisted.load(Ordering::Acquire)
    }

    /// Waits until every event the handler has already read is processed.
    pub fn sync_events(&self) {
        drop(self.hold_events());
    }

    /// Holds the gate: until the guard drops, the thread that resolves faults reads and
    /// processes no event, so no `munmap`, `mremap` or `madvise` of a registered range that
    /// has begun can return, and nothing the launch path checked about the mirror changes.
    ///
    /// While holding it, never wait for a claimed page, and never touch memory that may
    /// fault into the handler: no allocation or deallocation (a `malloc` may carve a freed
    /// chunk whose pages are on the device), no first write to a buffer allocated before.
    pub(crate) fn hold_events(&self) -> std::sync::MutexGuard<'_, ()> {
        self.gate.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// [`hold_events`](Self::hold_events) once no event is unread either: every `munmap`,
    /// `mremap` or `madvise` of a registered range that began before has been read and
    /// processed, and one that begins later is processed after the guard drops. (An event is
    /// only read after the address space changed: without this, the event of an unmap that
    /// happened before a new mapping was made at the same address could be processed after a
    /// launch on the new mapping began, and taken for an unmap of it.)
    pub(crate) fn quiesce(&self) -> std::sync::MutexGuard<'_, ()> {
        let mut spins = 0u32;
        loop {
            let held = self.hold_events();
            // While an event is unread, every resolution ioctl of the fd refuses with
            // `EAGAIN`; clearing write protection on the sentinel page changes nothing else.
            let settled = match (&self.backend, self.sentinel) {
                (Backend::Uffd(u), Some(page)) => {
                    u.write_protect(page, PAGE, false, false)
                        .map_err(|e| e.raw_os_error())
                        != Err(Some(linux_raw_sys::errno::EAGAIN as i32))
                }
                _ => true,
            };
            if settled {
                return held;
            }
            drop(held);
            spins += 1;
            if spins < 64 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }

    /// Starts watching the page spans a launch or prefetch is about to use
    /// (`fault::watch`): every unmap of them that begins from now on is recorded.
    pub(crate) fn watch_launch(&'static self, spans: &[Range<usize>]) -> Result<LaunchWatch> {
        LaunchWatch::new(&self.watches, &self.gate, || self.quiesce(), spans)
    }

    /// Drops the host copy of `[addr, addr + len)`, claimed pages of a launch watched by
    /// `watch` whose bytes are valid on the device; the next touch faults them back. Returns
    /// [`Dropped::Lost`] (and drops nothing more) once the watch says part of the launch's
    /// memory was unmapped: what is mapped there now may be somebody else's.
    ///
    /// Under userfaultfd with `UFFDIO_MOVE` the pages are moved out through the parking
    /// (`fault::parking`), which cannot touch a mapping that replaced them; without it,
    /// `MADV_DONTNEED` after a check of the watch. Under the `signal` backend (runtime-owned
    /// memory, unmapped only under the mirror's writer lock that the launcher holds),
    /// `PROT_NONE` and `MADV_DONTNEED`.
    ///
    /// # Safety
    ///
    /// As [`sys::madvise_dontneed`]: the caller owns the pages and their device copy is valid.
    pub(crate) unsafe fn drop_host(
        &self,
        watch: &LaunchWatch,
        addr: usize,
        len: usize,
    ) -> std::io::Result<Dropped> {
        let uffd = match &self.backend {
            // SAFETY: forwarded from the caller.
            Backend::Signal(t) => return unsafe { t.discard(addr, len) }.map(|()| Dropped::All),
            Backend::Uffd(u) => u,
        };
        let done = match &self.parking {
            Some(p) => match p.drop_pages(uffd, &self.gate, watch, addr..addr + len)? {
                Dropped::Refused { done } => done,
                other => return Ok(other),
            },
            None => 0,
        };
        if !watch.lost().is_empty() {
            return Ok(Dropped::Lost { done });
        }
        // SAFETY: forwarded from the caller.
        unsafe { sys::madvise_dontneed(addr + done, len - done) }?;
        Ok(Dropped::All)
    }

    /// Tells the handler that claimed pages were released: deferred faults can go on. A
    /// no-op (no syscall, no wake-up of the handler) while it defers nothing, as on every
    /// launch whose pages no CPU thread touched.
    pub fn poke(&self) {
        // Pairs with the fence in `finish_round`: the caller's releases come before the
        // load, the handler's store of the flag before its last retry; so either that retry
        // sees the pages released or this load sees the flag set.
        fence(Ordering::SeqCst);
        if self.deferring.load(Ordering::Relaxed) {
            let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
        }
    }

    /// Ends a round of the thread that resolves faults: `retry` retries its deferred faults
    /// and says whether some are still deferred. If so, it says so to [`poke`](Self::poke)
    /// and retries once more, which catches pages released before the flag was set.
    pub(super) fn finish_round(&self, mut retry: impl FnMut() -> bool) {
        let mut left = retry();
        if left {
            self.deferring.store(true, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            left = retry();
        }
        self.deferring.store(left, Ordering::Relaxed);
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

fn os_code(e: &Error) -> Option<i32> {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .and_then(std::io::Error::raw_os_error)
}

/// One CPU fault waiting to be resolved.
#[derive(Clone, Copy, Debug)]
struct Fault {
    addr: usize,
    write: bool,
    wp: bool,
}

/// What became of a fault.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Outcome {
    /// Resolved (or nothing left to resolve): the thread is awake.
    Done,
    /// The page is claimed: retry when poked.
    Wait,
    /// The address space is changing or a transfer failed: retry on a timer.
    Retry,
}

/// `mremap` events whose pages are not copied to their new place yet.
const MAX_REMAPS: usize = 16;

/// One `mremap`: `len` bytes moved from `from` to `to`.
#[derive(Clone, Copy, Debug)]
struct Remap {
    from: usize,
    to: usize,
    len: usize,
}

struct Handler {
    svc: &'static FaultService,
    uffd: &'static Uffd,
    deferred: Vec<(Fault, Outcome)>,
    /// Remaps waiting for the event queue to drain: the kernel refuses `UFFDIO_COPY` with
    /// `EAGAIN` while an event (the `UNMAP` of the old range that follows a `REMAP`) is
    /// unread, so device-only pages are copied to the new place after the read loop.
    remaps: [Option<Remap>; MAX_REMAPS],
}

impl Handler {
    fn new(svc: &'static FaultService, uffd: &'static Uffd) -> Self {
        Handler {
            svc,
            uffd,
            deferred: Vec::with_capacity(MAX_DEFERRED),
            remaps: [None; MAX_REMAPS],
        }
    }

    fn run(mut self) {
        self.svc.warm_reader();
        let mut msgs = [UffdMsg::ZEROED; BATCH];
        let mut faults: [Option<Fault>; BATCH] = [None; BATCH];
        loop {
            self.wait();
            let gate = self.svc.begin_round();
            loop {
                let n = match self.uffd.read_events(&mut msgs) {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::error!(error = %e, "reading userfaultfd events failed");
                        0
                    }
                };
                if n == 0 {
                    break;
                }
                let mut nf = 0;
                for m in &msgs[..n] {
                    match self.uffd.decode(m) {
                        Event::PageFault {
                            addr, write, wp, ..
                        } => {
                            faults[nf] = Some(Fault { addr, write, wp });
                            nf += 1;
                        }
                        // Watches first, then the mirror: a launcher that re-reads a page from
                        // its binding after this event marked it gone finds the loss in its
                        // watch (`fault::watch`).
                        Event::Remove { start, end } => {
                            if !self.svc.parking.as_ref().is_some_and(|p| p.contains(start)) {
                                self.svc.watches.changed(start..end, Change::Discarded);
                                self.removed(start..end)
                            }
                        }
                        Event::Unmap { start, end } => {
                            self.svc.watches.changed(start..end, Change::Unmapped);
                            self.unmapped(start..end)
                        }
                        Event::Remap { from, to, len } => {
                            self.svc.watches.changed(from..from + len, Change::Unmapped);
                            self.queue_remap(Remap { from, to, len })
                        }
                        other => tracing::warn!(event = ?other, "unexpected userfaultfd event"),
                    }
                }
                for f in faults[..nf].iter_mut().filter_map(Option::take) {
                    self.resolve_or_defer(f);
                }
            }
            self.finish_remaps();
            self.svc.finish_round(|| self.retry_deferred());
            drop(gate);
            self.svc.mirror.handler_idle();
        }
    }

    /// Blocks in `poll` until a message, a poke, or (with deferred faults) a short timer.
    fn wait(&self) {
        use rustix::event::{PollFd, PollFlags};
        let timer = self.deferred.iter().any(|(_, o)| *o == Outcome::Retry)
            || self.remaps.iter().any(Option::is_some);
        let waiting = !self.deferred.is_empty();
        let timeout = if timer {
            Some(rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 1_000_000,
            })
        } else if waiting {
            Some(rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 20_000_000,
            })
        } else {
            None
        };
        let uffd = self.uffd.as_fd();
        let mut fds = [
            PollFd::new(&uffd, PollFlags::IN),
            PollFd::new(&self.svc.wake, PollFlags::IN),
        ];
        let _ = rustix::event::poll(&mut fds, timeout.as_ref());
    }

    fn resolve_or_defer(&mut self, f: Fault) {
        match self.resolve(f) {
            Outcome::Done => {}
            o => {
                self.count_deferred(f);
                while self.deferred.len() == self.deferred.capacity() {
                    // Thousands of blocked threads: make room by waiting (never reallocate).
                    std::thread::sleep(Duration::from_micros(100));
                    self.retry_deferred();
                }
                self.deferred.push((f, o));
            }
        }
    }

    fn count_deferred(&self, f: Fault) {
        self.svc.mirror.lookup(page_floor(f.addr), |e, _| {
            Counters::add(&e.device().ctx.counters.deferred_faults, 1)
        });
    }

    /// Retries the deferred faults; returns whether some are still deferred.
    fn retry_deferred(&mut self) -> bool {
        let mut i = 0;
        while i < self.deferred.len() {
            let f = self.deferred[i].0;
            match self.resolve(f) {
                Outcome::Done => {
                    self.deferred.swap_remove(i);
                }
                o => {
                    self.deferred[i].1 = o;
                    i += 1;
                }
            }
        }
        !self.deferred.is_empty()
    }

    /// Resolves one fault; once it is done, the faulting page is woken once more — a wake
    /// with no waiter costs one ioctl, and no path may leave a thread asleep.
    fn resolve(&self, f: Fault) -> Outcome {
        let outcome = self.resolve_once(f);
        if outcome == Outcome::Done {
            let _ = self.uffd.wake(page_floor(f.addr), PAGE);
        }
        outcome
    }

    fn resolve_once(&self, f: Fault) -> Outcome {
        let page = page_floor(f.addr);
        if self
            .remaps
            .iter()
            .flatten()
            .any(|r| (r.to..r.to + r.len).contains(&page))
        {
            return Outcome::Retry; // its data is still at the old place in the mirror
        }
        self.svc
            .mirror
            .lookup(page, |ext, idx| self.resolve_in(ext, idx, f))
            .unwrap_or_else(|| self.unmirrored(page, f))
    }

    /// A fault in a registered range the mirror does not track: fresh anonymous memory.
    fn unmirrored(&self, page: usize, f: Fault) -> Outcome {
        if f.wp {
            return self.unprotect_page(page);
        }
        self.zero_page(page)
    }

    fn resolve_in(&self, ext: &Ext, idx: usize, f: Fault) -> Outcome {
        let bits = ext.cell(idx).load();
        if bits.busy() {
            return Outcome::Wait;
        }
        let page = ext.page_addr(idx);
        match (f.wp, bits.residence()) {
            (true, Residence::Shared) => release_shared(self.svc, ext, idx),
            (true, _) => self.unprotect_page(page),
            (false, Residence::Device) => copy_back(self.svc, ext, idx, f.write),
            (false, Residence::Host) => self.zero_page(page),
            (false, Residence::Shared) => self.refill_shared(ext, idx),
        }
    }

    /// A missing page the mirror holds `Shared`. Normally the message is stale (another
    /// resolution brought the page back): wake. Should the host copy ever vanish without an
    /// event, waking alone would livelock; both copies were equal, so the device copy is what
    /// the page held: install it write-protected.
    fn refill_shared(&self, ext: &Ext, idx: usize) -> Outcome {
        let page = ext.page_addr(idx);
        let mut entry = [sys::PageEntry::default()];
        if self.svc.pagemap.query(page, &mut entry).is_err() || entry[0].present() {
            let _ = self.uffd.wake(page, PAGE);
            return Outcome::Done;
        }
        let shared = |b: crate::mirror::page::PageBits| b.residence() == Residence::Shared;
        if ext.cell(idx).try_claim(shared).is_none() {
            return Outcome::Wait; // owned, or no longer Shared: resolved again later
        }
        let ctx = &ext.device().ctx;
        let got = install_claimed(
            self.svc,
            ext,
            idx..idx + 1,
            &ctx.fault_transfer,
            Kind::Fault { writable: None },
        );
        ext.cell(idx).release(Residence::Shared);
        match got {
            Ok(g) if g.stop == Some(InstallStop::Again) => Outcome::Retry,
            Ok(g) => {
                Counters::add(&ctx.counters.bytes_to_host, g.bytes);
                Outcome::Done
            }
            Err(e) => {
                tracing::error!(error = %e, "reading device memory for a CPU fault failed; retrying");
                Outcome::Retry
            }
        }
    }

    fn zero_page(&self, page: usize) -> Outcome {
        match self.uffd.zeropage(page, PAGE, true) {
            Ok(_) | Err(CopyError::Gone(_)) => Outcome::Done,
            Err(CopyError::Exists { .. }) => {
                let _ = self.uffd.wake(page, PAGE);
                Outcome::Done
            }
            Err(CopyError::Again { .. }) => Outcome::Retry,
            Err(e @ CopyError::Failed(_)) => {
                tracing::error!(error = %e, page, "UFFDIO_ZEROPAGE failed");
                Outcome::Retry
            }
        }
    }

    fn unprotect_page(&self, page: usize) -> Outcome {
        match self.uffd.write_protect(page, PAGE, false, true) {
            Ok(()) => Outcome::Done,
            Err(e) if e.raw_os_error() == Some(linux_raw_sys::errno::EAGAIN as i32) => {
                Outcome::Retry
            }
            Err(_) => Outcome::Done, // the page is gone; the thread was woken by the unmap
        }
    }

    /// `MADV_DONTNEED`/`MADV_REMOVE` by the program: the pages read as zero from now on.
    fn removed(&self, range: Range<usize>) {
        self.svc.mirror.for_each_overlapping(range.clone(), |ext| {
            for i in ext.page_span(&range) {
                ext.cell(i).mark_gone_if_idle();
            }
        });
    }

    /// `munmap`: the mirror of the range is dead (reaped at the next runtime call).
    fn unmapped(&self, range: Range<usize>) {
        let moving = |page: usize| {
            self.remaps
                .iter()
                .flatten()
                .any(|r| (r.from..r.from + r.len).contains(&page))
        };
        self.svc.mirror.for_each_overlapping(range.clone(), |ext| {
            for i in ext.page_span(&range) {
                if !moving(ext.page_addr(i)) {
                    ext.cell(i).mark_gone();
                }
            }
        });
    }

    /// Keeps a remap for [`finish_remaps`](Self::finish_remaps); with every slot taken, tries
    /// it at once.
    fn queue_remap(&mut self, r: Remap) {
        match self.remaps.iter_mut().find(|s| s.is_none()) {
            Some(slot) => *slot = Some(r),
            None => {
                self.remapped(r.from, r.to, r.len);
            }
        }
    }

    /// Copies the pages of queued remaps to their new place; keeps those the kernel refused
    /// for now (a newer event is unread) for the next round.
    fn finish_remaps(&mut self) {
        for i in 0..MAX_REMAPS {
            if let Some(r) = self.remaps[i] {
                if self.remapped(r.from, r.to, r.len) {
                    self.remaps[i] = None;
                }
            }
        }
    }

    /// `mremap` moved `len` bytes from `from` to `to`: device-only pages are copied home at
    /// the new address, write protection is cleared there, and the old mirror dies. Returns
    /// false if the kernel refused some page for now (`EAGAIN`); those keep their state.
    fn remapped(&self, from: usize, to: usize, len: usize) -> bool {
        let range = from..from + len;
        let mut done = true;
        self.svc.mirror.for_each_overlapping(range.clone(), |ext| {
            let span = ext.page_span(&range);
            let ctx = &ext.device().ctx;
            for i in span {
                let cell = ext.cell(i);
                let Some(bits) = cell.try_claim(|b| !b.gone()) else {
                    if cell.load().busy() {
                        cell.mark_gone(); // owned by a launch: its borrow was moved under it
                    }
                    continue;
                };
                let dst = to + (ext.page_addr(i) - from);
                let moved = match bits.residence() {
                    Residence::Device => {
                        let mut t = ctx
                            .fault_transfer
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner);
                        match install(
                            &self.svc.backend,
                            &mut t,
                            ext,
                            i..i + 1,
                            dst,
                            |_| false,
                            true,
                            None,
                        ) {
                            Ok(g) => {
                                Counters::add(&ctx.counters.bytes_to_host, g.bytes);
                                g.stop != Some(InstallStop::Again)
                            }
                            Err(_) => false,
                        }
                    }
                    Residence::Shared => {
                        let r = self.uffd.write_protect(dst, PAGE, false, true);
                        !matches!(r, Err(e) if e.raw_os_error() == Some(linux_raw_sys::errno::EAGAIN as i32))
                    }
                    Residence::Host => true,
                };
                if moved {
                    cell.mark_gone();
                    cell.release(Residence::Host);
                } else {
                    cell.release(bits.residence());
                    done = false;
                }
            }
        });
        done
    }
}

/// A write to a `Shared` page: the chunk's `Shared` pages become `Host` (their device
/// copies are stale from now on).
pub(super) fn release_shared(svc: &FaultService, ext: &Ext, idx: usize) -> Outcome {
    let ctx = &ext.device().ctx;
    let shared = |b: crate::mirror::page::PageBits| b.residence() == Residence::Shared;
    let (a, b) = match claim_around(ext, idx, ctx.policy.base, shared) {
        Some(r) => r,
        None => return Outcome::Wait,
    };
    let r = svc
        .backend
        .write_protect(ext.page_addr(a), (b - a) * PAGE, false, false);
    let settled = if r.is_ok() {
        Residence::Host
    } else {
        Residence::Shared
    };
    for i in a..b {
        ext.cell(i).release(settled);
    }
    match r {
        Ok(()) => {
            // Bookkeeping before the wake: the writer may read the counters next.
            Counters::add(&ctx.counters.cpu_faults, 1);
            ext.note_cpu_fault();
            let _ = svc.backend.wake(ext.page_addr(a), (b - a) * PAGE);
            Outcome::Done
        }
        Err(_) => Outcome::Retry,
    }
}

/// Installs the device copy of the claimed, absent pages `pages` of `ext` at their own
/// addresses as `kind` says (write protection, who wakes waiters), through `transfer` (the
/// handler's own transfer context, or the assistant's). A `Kind::Fault` install is where the
/// `FaultHandler` injection site fires.
fn install_claimed(
    svc: &FaultService,
    ext: &Ext,
    pages: Range<usize>,
    transfer: &Mutex<Transfer>,
    kind: Kind,
) -> Result<Installed> {
    let mut transfer = transfer.lock().unwrap_or_else(PoisonError::into_inner);
    // A panic in here (an assertion in the transfer code, or an injected one) must not end
    // the handler thread: every thread waiting on a fault would sleep for ever. It becomes an
    // error, which each caller already turns into "release the claimed pages as they were
    // and retry". (Unwinding allocates; a panic is the one exception to the handler's
    // no-allocation rule.)
    let run = std::panic::AssertUnwindSafe(|| {
        let fault = matches!(kind, Kind::Fault { .. });
        if fault && crate::inject::hit(crate::inject::Site::FaultHandler) {
            panic!("vkhmm: injected fault-handler panic");
        }
        install_in_place(svc, &mut transfer, ext, pages, kind)
    });
    match std::panic::catch_unwind(run) {
        Ok(result) => result,
        Err(_) => {
            Counters::add(&ext.device().ctx.counters.handler_panics, 1);
            transfer.recover();
            Err(Error::Os {
                op: "the fault handler (it panicked)",
                source: std::io::ErrorKind::Interrupted.into(),
            })
        }
    }
}

/// A touch of a `Device` page: bring back the window around it.
pub(super) fn copy_back(svc: &FaultService, ext: &Ext, idx: usize, write: bool) -> Outcome {
    let ctx = &ext.device().ctx;
    let first = ext.start() / PAGE;
    let w = fault_window(
        &ctx.policy,
        first + idx,
        first..first + ext.pages(),
        ext.stream(),
    );
    let Some((a, b)) = claim_within(ext, idx, w.pages.start - first..w.pages.end - first, device)
    else {
        return Outcome::Wait;
    };
    ext.set_stream(w.next, w.size);
    let (done, outcome) = install_window(svc, ext, a..b, write.then_some(idx));
    if done > 0 {
        // Counted before the wake, so the faulting thread sees its own fault in `stats`.
        Counters::add(&ctx.counters.cpu_faults, 1);
        ext.note_cpu_fault();
        let _ = svc.backend.wake(ext.page_addr(a), done * PAGE);
    }
    if outcome == Outcome::Done && done == b - a && w.size >= ctx.policy.max && ctx.policy.adaptive
    {
        read_ahead(svc, ext);
    }
    outcome
}

fn device(b: crate::mirror::page::PageBits) -> bool {
    b.residence() == Residence::Device
}

/// A stream whose windows have grown to the largest size: installs its next window now,
/// before the CPU faults on it, so that the next fault's round trip (the toucher blocks, this
/// thread wakes, then wakes it) overlaps a copy instead of adding to it. The pages come back
/// as a read fault would bring them (`Shared`); nothing is counted as a CPU fault. Pages
/// that are not `Device`, or claimed, end the window there; a failure leaves the pages
/// `Device` for the ordinary fault path.
fn read_ahead(svc: &FaultService, ext: &Ext) {
    let ctx = &ext.device().ctx;
    let first = ext.start() / PAGE;
    let (next, size) = ext.stream();
    if next < first || next >= first + ext.pages() {
        return;
    }
    let w = fault_window(&ctx.policy, next, first..first + ext.pages(), (next, size));
    let idx = next - first;
    let Some((a, b)) = claim_within(ext, idx, idx..w.pages.end - first, device) else {
        return;
    };
    ext.set_stream(w.next, w.size);
    let (done, _) = install_window(svc, ext, a..b, None);
    if done > 0 {
        // A thread that touched these pages meanwhile waits on them.
        let _ = svc.backend.wake(ext.page_addr(a), done * PAGE);
    }
}

/// Installs the claimed `Device` pages `pages` (write-protected, except page `writable`) and
/// releases them to what they became; returns how many from the start were installed and
/// what becomes of the fault. Counts the bytes.
///
/// A window of at least `policy.split` pages is installed in two halves at once, the upper
/// one by the assistant (`fault::assist`); each half is released by its own outcome. When
/// the lower half stopped early, pages the upper half installed are woken here (the caller
/// wakes only the prefix it is told of).
fn install_window(
    svc: &FaultService,
    ext: &Ext,
    pages: Range<usize>,
    writable: Option<usize>,
) -> (usize, Outcome) {
    let kind = Kind::Fault { writable };
    let transfer = &ext.device().ctx.fault_transfer;
    let halves = svc.install_halves(ext, pages, kind, |part| {
        install_claimed(svc, ext, part, transfer, kind)
    });
    let (low, got) = halves.low;
    let (low_done, low_outcome) = settle(ext, low.clone(), got, kind);
    let Some((high, got)) = halves.high else {
        return (low_done, low_outcome);
    };
    let (high_done, high_outcome) = settle(ext, high.clone(), got, kind);
    let outcome = if low_outcome == Outcome::Retry {
        low_outcome
    } else {
        high_outcome
    };
    if low_done == low.len() {
        (low_done + high_done, outcome)
    } else {
        if high_done > 0 {
            let _ = svc
                .backend
                .wake(ext.page_addr(high.start), high_done * PAGE);
        }
        (low_done, outcome)
    }
}

/// Counts the bytes of an install of the claimed pages `pages` and releases them: the
/// installed prefix to `Shared` (write-protected by `kind`) or `Host`, the rest to `Device`.
/// Returns the installed prefix's length and what becomes of the fault.
fn settle(
    ext: &Ext,
    pages: Range<usize>,
    installed: Result<Installed>,
    kind: Kind,
) -> (usize, Outcome) {
    let ctx = &ext.device().ctx;
    let (a, b) = (pages.start, pages.end);
    let (done, outcome) = match installed {
        Ok(g) => {
            Counters::add(&ctx.counters.bytes_to_host, g.bytes);
            let done = ((g.bytes as usize) / PAGE + g.already_present as usize).min(b - a);
            match g.stop {
                None => (b - a, Outcome::Done),
                Some(InstallStop::Again) => (done, Outcome::Retry),
                Some(InstallStop::Gone) => (done, Outcome::Done),
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "reading device memory for a CPU fault failed; retrying");
            (0, Outcome::Retry)
        }
    };
    for i in a..b {
        let settled = if i - a >= done {
            Residence::Device
        } else if kind.write_protects(i) {
            Residence::Shared
        } else {
            Residence::Host
        };
        ext.cell(i).release(settled);
    }
    (done, outcome)
}

/// The assistant's half of a range: installed as its poster installs the other half, through
/// the assistant's own transfer context.
fn assist_install(svc: &FaultService, job: &Job) -> Result<Installed> {
    // SAFETY: called while the job is served; its poster waits for the result.
    let ext = unsafe { job.ext() };
    match &ext.device().ctx.assist_transfer {
        Some(transfer) => install_claimed(svc, ext, job.pages.clone(), transfer, job.kind),
        // Not posted without one (`install_halves`); should it happen, the half is retried.
        // (No allocation: the assistant keeps the handler's rules.)
        None => Err(Error::Os {
            op: "the fault handler's assistant (it has no transfer context)",
            source: std::io::ErrorKind::Unsupported.into(),
        }),
    }
}

/// Claims page `idx` and the contiguous pages around it that `want` accepts, within the
/// aligned window of `chunk` pages. Returns the claimed index range.
fn claim_around(
    ext: &Ext,
    idx: usize,
    chunk: usize,
    want: impl Fn(crate::mirror::page::PageBits) -> bool + Copy,
) -> Option<(usize, usize)> {
    let first = ext.start() / PAGE;
    let abs = first + idx;
    let lo = (abs - abs % chunk.max(1)).max(first) - first;
    let hi = (lo + first + chunk.max(1)).min(first + ext.pages()) - first;
    claim_within(ext, idx, lo..hi, want)
}

/// Claims page `idx`, then extends the claim backwards and forwards within `limit` over
/// pages `want` accepts. Returns the claimed range, or `None` if `idx` itself is taken.
fn claim_within(
    ext: &Ext,
    idx: usize,
    limit: Range<usize>,
    want: impl Fn(crate::mirror::page::PageBits) -> bool + Copy,
) -> Option<(usize, usize)> {
    ext.cell(idx).try_claim(want)?;
    let mut a = idx;
    while a > limit.start && ext.cell(a - 1).try_claim(want).is_some() {
        a -= 1;
    }
    let mut b = idx + 1;
    while b < limit.end && ext.cell(b).try_claim(want).is_some() {
        b += 1;
    }
    Some((a, b))
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
