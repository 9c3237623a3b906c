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
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use super::uffd::{CopyError, Event, Uffd, UffdMsg};
use super::watch::Watches;
use crate::migrate::{install, Counters, DeviceCopy, Ext, InstallStop};
use crate::mirror::map::MirrorMap;
use crate::mirror::page::Residence;
use crate::mirror::plan::page_floor;
use crate::mirror::policy::fault_window;
use crate::mirror::PAGE;
use crate::sys;
use crate::{Error, Result};

/// Features the service needs from userfaultfd.
const REQUIRED: u64 = (linux_raw_sys::general::UFFD_FEATURE_PAGEFAULT_FLAG_WP
    | linux_raw_sys::general::UFFD_FEATURE_EVENT_REMOVE
    | linux_raw_sys::general::UFFD_FEATURE_EVENT_UNMAP
    | linux_raw_sys::general::UFFD_FEATURE_EVENT_REMAP) as u64;
/// Features it uses when present.
const WANTED: u64 = REQUIRED | linux_raw_sys::general::UFFD_FEATURE_THREAD_ID as u64;

/// Messages read per `read(2)`.
const BATCH: usize = 64;
/// Faults that can wait at once (one per blocked thread).
const MAX_DEFERRED: usize = 4096;

/// The process-wide fault service.
pub(crate) struct FaultService {
    pub uffd: Uffd,
    pub mirror: MirrorMap<DeviceCopy>,
    pub pagemap: sys::Pagemap,
    /// Ranges accessed in place, watched for unmaps (`fault::watch`).
    pub watches: Watches,
    wake: OwnedFd,
    gate: Mutex<()>,
}

static SERVICE: OnceLock<std::result::Result<&'static FaultService, (String, Option<i32>)>> =
    OnceLock::new();

impl FaultService {
    /// The service, started on first use.
    pub fn get() -> Result<&'static FaultService> {
        SERVICE
            .get_or_init(|| Self::start().map_err(|e| (e.to_string(), os_code(&e))))
            .clone()
            .map_err(|(reason, code)| Error::FaultBackendUnavailable {
                reason,
                source: code.map(std::io::Error::from_raw_os_error),
            })
    }

    fn start() -> Result<&'static FaultService> {
        if sys::page_size() != PAGE {
            return Err(Error::FaultBackendUnavailable {
                reason: format!(
                    "vkhmm tracks {PAGE}-byte pages but this system uses {}",
                    sys::page_size()
                ),
                source: None,
            });
        }
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
        let wake = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .map_err(|e| Error::os("eventfd", e))?;
        let pagemap = sys::Pagemap::open().map_err(|e| Error::os("open /proc/self/pagemap", e))?;
        let svc: &'static FaultService = Box::leak(Box::new(FaultService {
            uffd,
            mirror: MirrorMap::new(),
            pagemap,
            watches: Watches::new(),
            wake,
            gate: Mutex::new(()),
        }));
        std::thread::Builder::new()
            .name("vkhmm-fault".into())
            .spawn(move || Handler::new(svc).run())
            .map_err(|e| Error::os("spawn the fault handler thread", e))?;
        super::fork::install_atfork_handlers();
        Ok(svc)
    }

    /// Registers `span` (page-aligned) for MISSING and WP faults. Idempotent.
    pub fn register(&self, span: Range<usize>) -> std::io::Result<()> {
        self.uffd
            .register(span.start, span.len(), true, true)
            .map(drop)
    }

    /// Waits until every event the handler has already read is processed.
    pub fn sync_events(&self) {
        drop(self.gate.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Tells the handler that claimed pages were released: deferred faults can go on.
    pub fn poke(&self) {
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }
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
enum Outcome {
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
    deferred: Vec<(Fault, Outcome)>,
    /// Remaps waiting for the event queue to drain: the kernel refuses `UFFDIO_COPY` with
    /// `EAGAIN` while an event (the `UNMAP` of the old range that follows a `REMAP`) is
    /// unread, so device-only pages are copied to the new place after the read loop.
    remaps: [Option<Remap>; MAX_REMAPS],
}

impl Handler {
    fn new(svc: &'static FaultService) -> Self {
        Handler {
            svc,
            deferred: Vec::with_capacity(MAX_DEFERRED),
            remaps: [None; MAX_REMAPS],
        }
    }

    fn run(mut self) {
        // Warm the snapshot reader's per-thread state now, while nothing is mirrored.
        self.svc.mirror.handler_busy();
        self.svc.mirror.lookup(0, |_, _| ());
        self.svc.mirror.handler_idle();
        let mut msgs = [UffdMsg::ZEROED; BATCH];
        let mut faults: [Option<Fault>; BATCH] = [None; BATCH];
        loop {
            self.wait();
            self.svc.mirror.handler_busy();
            let mut tick = [0u8; 8];
            let _ = rustix::io::read(&self.svc.wake, &mut tick);
            let gate = self.svc.gate.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                let n = match self.svc.uffd.read_events(&mut msgs) {
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
                    match self.svc.uffd.decode(m) {
                        Event::PageFault {
                            addr, write, wp, ..
                        } => {
                            faults[nf] = Some(Fault { addr, write, wp });
                            nf += 1;
                        }
                        Event::Remove { start, end } => {
                            self.svc.watches.mark_dead(start..end);
                            self.removed(start..end)
                        }
                        Event::Unmap { start, end } => {
                            self.svc.watches.mark_dead(start..end);
                            self.unmapped(start..end)
                        }
                        Event::Remap { from, to, len } => {
                            self.svc.watches.mark_dead(from..from + len);
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
            self.retry_deferred();
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
        let uffd = self.svc.uffd.as_fd();
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

    fn retry_deferred(&mut self) {
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
    }

    /// Resolves one fault; once it is done, the faulting page is woken once more — a wake
    /// with no waiter costs one ioctl, and no path may leave a thread asleep.
    fn resolve(&self, f: Fault) -> Outcome {
        let outcome = self.resolve_once(f);
        if outcome == Outcome::Done {
            let _ = self.svc.uffd.wake(page_floor(f.addr), PAGE);
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
            (true, Residence::Shared) => self.release_shared(ext, idx),
            (true, _) => self.unprotect_page(page),
            (false, Residence::Device) => self.copy_back(ext, idx, f.write),
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
            let _ = self.svc.uffd.wake(page, PAGE);
            return Outcome::Done;
        }
        let shared = |b: crate::mirror::page::PageBits| b.residence() == Residence::Shared;
        if ext.cell(idx).try_claim(shared).is_none() {
            return Outcome::Wait; // owned, or no longer Shared: resolved again later
        }
        let ctx = &ext.device().ctx;
        let got = self.install_claimed(ext, idx..idx + 1, |_| true);
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
        match self.svc.uffd.zeropage(page, PAGE, true) {
            Ok(_) | Err(CopyError::Gone(_)) => Outcome::Done,
            Err(CopyError::Exists { .. }) => {
                let _ = self.svc.uffd.wake(page, PAGE);
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
        match self.svc.uffd.write_protect(page, PAGE, false, true) {
            Ok(()) => Outcome::Done,
            Err(e) if e.raw_os_error() == Some(linux_raw_sys::errno::EAGAIN as i32) => {
                Outcome::Retry
            }
            Err(_) => Outcome::Done, // the page is gone; the thread was woken by the unmap
        }
    }

    /// A write to a `Shared` page: the chunk's `Shared` pages become `Host` (their device
    /// copies are stale from now on).
    fn release_shared(&self, ext: &Ext, idx: usize) -> Outcome {
        let ctx = &ext.device().ctx;
        let shared = |b: crate::mirror::page::PageBits| b.residence() == Residence::Shared;
        let (a, b) = match claim_around(ext, idx, ctx.policy.base, shared) {
            Some(r) => r,
            None => return Outcome::Wait,
        };
        let r = self
            .svc
            .uffd
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
                let _ = self.svc.uffd.wake(ext.page_addr(a), (b - a) * PAGE);
                Outcome::Done
            }
            Err(_) => Outcome::Retry,
        }
    }

    /// Installs the device copy of the claimed, absent pages `pages` of `ext` at their own
    /// addresses, page `i` write-protected iff `wp(i)`, through the handler's transfer
    /// context; waiters stay asleep until the caller has done its bookkeeping and wakes them.
    fn install_claimed(
        &self,
        ext: &Ext,
        pages: Range<usize>,
        wp: impl Fn(usize) -> bool,
    ) -> Result<crate::migrate::Installed> {
        let mut transfer = ext
            .device()
            .ctx
            .fault_transfer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let dst = ext.page_addr(pages.start);
        // A panic in here (an assertion in the transfer code, or an injected one) must not
        // end the handler thread: every thread waiting on a fault would sleep for ever. It
        // becomes an error, which each caller already turns into "release the claimed pages
        // as they were and retry". (Unwinding allocates; a panic is the one exception to the
        // handler's no-allocation rule.)
        let run = std::panic::AssertUnwindSafe(|| {
            if crate::inject::hit(crate::inject::Site::FaultHandler) {
                panic!("vkhmm: injected fault-handler panic");
            }
            install(&self.svc.uffd, &mut transfer, ext, pages, dst, wp, false)
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
    fn copy_back(&self, ext: &Ext, idx: usize, write: bool) -> Outcome {
        let ctx = &ext.device().ctx;
        let first = ext.start() / PAGE;
        let w = fault_window(
            &ctx.policy,
            first + idx,
            first..first + ext.pages(),
            ext.stream(),
        );
        let device = |b: crate::mirror::page::PageBits| b.residence() == Residence::Device;
        let Some((a, b)) =
            claim_within(ext, idx, w.pages.start - first..w.pages.end - first, device)
        else {
            return Outcome::Wait;
        };
        ext.set_stream(w.next, w.size);
        let wp = |i: usize| !(write && i == idx);
        let got = self.install_claimed(ext, a..b, wp);
        let (done, outcome) = match got {
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
            } else if wp(i) {
                Residence::Shared
            } else {
                Residence::Host
            };
            ext.cell(i).release(settled);
        }
        if done > 0 {
            // Counted before the wake, so the faulting thread sees its own fault in `stats`.
            Counters::add(&ctx.counters.cpu_faults, 1);
            ext.note_cpu_fault();
            let _ = self.svc.uffd.wake(ext.page_addr(a), done * PAGE);
        }
        outcome
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
                        match install(&self.svc.uffd, &mut t, ext, i..i + 1, dst, |_| false, true) {
                            Ok(g) => {
                                Counters::add(&ctx.counters.bytes_to_host, g.bytes);
                                g.stop != Some(InstallStop::Again)
                            }
                            Err(_) => false,
                        }
                    }
                    Residence::Shared => {
                        let r = self.svc.uffd.write_protect(dst, PAGE, false, true);
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
