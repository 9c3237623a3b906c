//! The userfaultfd handler: one thread that reads the fd's messages and serves them.
//!
//! ```text
//! loop {
//!     idle  → poll(uffd, wake eventfd)            // holds no reference into the mirror
//!             (after serving faults: polled without sleeping for 100 µs first)
//!     busy  → a round (`AddressSpace::begin_round`: the gate, the mirror's busy epoch)
//!             read every pending message; handle REMOVE/UNMAP/REMAP first, then faults
//!             retry deferred faults
//! }
//! ```
//!
//! Ordering hazards, written down as the kernel's own selftests and Firecracker do (the
//! kernel's side of them is pinned by `trap/uffd/tests.rs`):
//!
//! - A thread that calls `munmap`, `madvise(DONTNEED)` or `mremap` on a registered range
//!   blocks until the handler has *read* the event, not until it has processed it. Launchers
//!   that need the mirror to reflect such a call take the gate (`AddressSpace::sync_events`):
//!   the handler holds it from before the read until after the processing.
//! - `REMOVE` and page-fault messages of one batch may be out of causal order. Events are
//!   handled first: a fault on a page that was discarded meanwhile then finds `Host|GONE` and
//!   gets a zero page, which is what the discard means.
//! - The runtime's own `MADV_DONTNEED` (dropping pages where `UFFDIO_MOVE` is missing) raises
//!   `REMOVE` too; those pages are claimed (`BUSY`) by the launcher, and `REMOVE` never
//!   touches claimed pages. The parking's own discards concern no mirrored memory.
//! - `EEXIST` from `UFFDIO_COPY`/`ZEROPAGE`: somebody resolved the page first; wake waiters.
//!   `EAGAIN`: the address space is changing; defer and retry on a short timer.
//!
//! ## What the handler must never do (docs/architecture.md, "deadlock-free")
//!
//! Wait for a thread that may itself be blocked in a fault: so it takes no lock a launcher
//! holds while touching memory (it reads the mirror through a snapshot and changes pages by
//! CAS), allocates nothing after start-up (a `malloc` might carve a freed chunk whose pages
//! are still on the device), never frees an extent or a list of them (the mirror's graveyard
//! does that on the writer side), and uses its own transfer context per device.

use std::ops::Range;
use std::os::fd::AsFd;
use std::sync::PoisonError;
use std::time::Duration;

use super::deferred::Deferred;
use super::resolve::{copy_back, install_claimed, release_shared, Outcome};
use crate::mirror::page::{PageBits, Residence};
use crate::mirror::plan::page_floor;
use crate::mirror::PAGE;
use crate::pages::halves;
use crate::pages::install::Kind;
use crate::pages::install::{install, InstallStop};
use crate::space::watch::Change;
use crate::space::{AddressSpace, Counters, Ext};
use crate::sys;
use crate::trace;
use crate::trap::uffd::{CopyError, Event, Uffd, UffdMsg};

/// Messages read per `read(2)`.
const BATCH: usize = 64;
/// Faults that can wait at once (one per blocked thread).
const MAX_DEFERRED: usize = 4096;

/// How long the handler keeps polling without sleeping after a round that served faults
/// (only where it has a CPU of its own, and not after sharing a window with the assistant,
/// which spins for a stream's next window itself). A program that touches scattered device
/// pages faults again within microseconds of being woken; a handler still running takes that
/// fault at once, where a sleeping one must first be woken on its CPU: a cross-CPU wake-up
/// that costs 20-40 µs on a virtual machine (docs/performance.md, "Workloads"), on top of
/// the fault's own few microseconds. Spinning costs CPU only in the moments after a fault.
const SPIN_AFTER_FAULTS: Duration = Duration::from_micros(100);

/// One CPU fault waiting to be resolved.
#[derive(Clone, Copy, Debug)]
struct Fault {
    addr: usize,
    write: bool,
    wp: bool,
    /// The faulting thread (0: unknown) and when the fault was read (`trace::clock`).
    tid: u32,
    read: u64,
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

pub(crate) struct Handler {
    space: &'static AddressSpace,
    uffd: &'static Uffd,
    deferred: Deferred<Fault>,
    /// Remaps waiting for the event queue to drain: the kernel refuses `UFFDIO_COPY` with
    /// `EAGAIN` while an event (the `UNMAP` of the old range that follows a `REMAP`) is
    /// unread, so device-only pages are copied to the new place after the read loop.
    remaps: [Option<Remap>; MAX_REMAPS],
    /// Whether to spin after faults ([`SPIN_AFTER_FAULTS`]): two CPUs or more.
    spin: bool,
}

impl Handler {
    pub fn new(space: &'static AddressSpace, uffd: &'static Uffd) -> Self {
        Handler {
            space,
            uffd,
            deferred: Deferred::with_capacity(MAX_DEFERRED),
            remaps: [None; MAX_REMAPS],
            spin: std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2,
        }
    }

    pub fn run(mut self) {
        self.space.warm_reader();
        let mut msgs = [UffdMsg::ZEROED; BATCH];
        let mut faults: [Option<Fault>; BATCH] = [None; BATCH];
        let mut served = false;
        loop {
            self.wait(served && self.spin);
            served = false;
            let posts = halves::posts();
            let round = self.space.begin_round();
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
                let read = trace::clock();
                for m in &msgs[..n] {
                    match self.uffd.decode(m) {
                        Event::PageFault {
                            addr,
                            write,
                            wp,
                            tid,
                            ..
                        } => {
                            let tid = tid.unwrap_or(0);
                            faults[nf] = Some(Fault {
                                addr,
                                write,
                                wp,
                                tid,
                                read,
                            });
                            nf += 1;
                        }
                        // Watches first, then the mirror: a launcher that re-reads a page from
                        // its binding after this event marked it gone finds the loss in its
                        // watch (`space::watch`).
                        Event::Remove { start, end } => {
                            if !self.space.is_parking(start) {
                                self.space.watches.changed(start..end, Change::Discarded);
                                self.removed(start..end)
                            }
                        }
                        Event::Unmap { start, end } => {
                            self.space.watches.changed(start..end, Change::Unmapped);
                            self.unmapped(start..end)
                        }
                        Event::Remap { from, to, len } => {
                            self.space
                                .watches
                                .changed(from..from + len, Change::Unmapped);
                            self.queue_remap(Remap { from, to, len })
                        }
                        other => tracing::warn!(event = ?other, "unexpected userfaultfd event"),
                    }
                }
                served |= nf > 0;
                for f in faults[..nf].iter_mut().filter_map(Option::take) {
                    self.resolve_or_defer(f);
                }
            }
            self.finish_remaps();
            round.finish(|| self.retry_deferred());
            // Windows large enough to share with the assistant are a stream's: the assistant
            // spins for the next one itself, and a third spinning thread would take a CPU
            // from the reader.
            served &= halves::posts() == posts;
        }
    }

    /// Blocks in `poll` until a message, a poke, or (with deferred faults) a short timer;
    /// with `spin`, polls without sleeping for [`SPIN_AFTER_FAULTS`] first.
    fn wait(&self, spin: bool) {
        use rustix::event::{PollFd, PollFlags};
        let timeout = self
            .deferred
            .timeout(self.remaps.iter().any(Option::is_some))
            .map(|d| rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: d.as_nanos() as i64,
            });
        let uffd = self.uffd.as_fd();
        let mut fds = [
            PollFd::new(&uffd, PollFlags::IN),
            PollFd::new(&self.space.wake, PollFlags::IN),
        ];
        if spin {
            let until = std::time::Instant::now() + SPIN_AFTER_FAULTS;
            let now = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            while std::time::Instant::now() < until {
                if matches!(rustix::event::poll(&mut fds, Some(&now)), Ok(n) if n > 0) {
                    return;
                }
                std::hint::spin_loop();
            }
        }
        let _ = rustix::event::poll(&mut fds, timeout.as_ref());
    }

    fn resolve_or_defer(&mut self, f: Fault) {
        match self.resolve(f) {
            Outcome::Done => {}
            o => {
                self.count_deferred(f);
                while self.deferred.is_full() {
                    // Thousands of blocked threads: make room by waiting (never reallocate).
                    std::thread::sleep(Duration::from_micros(100));
                    self.retry_deferred();
                }
                self.deferred.push(f, o);
            }
        }
    }

    fn count_deferred(&self, f: Fault) {
        self.space.mirror.lookup(page_floor(f.addr), |e, _| {
            Counters::add(&e.device().owner.counters.deferred_faults, 1)
        });
    }

    /// Retries the deferred faults; returns whether some are still deferred.
    fn retry_deferred(&mut self) -> bool {
        // Taken out for the retry (moving a `Vec` allocates nothing), put back after.
        let mut deferred = std::mem::take(&mut self.deferred);
        let left = deferred.retry(|f| self.resolve(f));
        self.deferred = deferred;
        left
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
        self.space
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
        let page = ext.page_addr(idx);
        if bits.gone() && bits.busy() {
            // Unmapped while a launch or a merge holds the page: whatever faults there now
            // is memory mapped since, which the mirror does not track (and which a holder
            // never touches: gone pages are skipped). Waiting for the holder could wait for
            // ever: on a CPU device the holder may be waiting for a kernel whose driver
            // thread made this very fault, in memory its allocator got at that address.
            return self.unmirrored(page, f);
        }
        if bits.busy() {
            return Outcome::Wait;
        }
        match (f.wp, bits.residence()) {
            (true, Residence::Shared) => {
                let o = release_shared(self.space, ext, idx);
                if o == Outcome::Done {
                    trace::fault(ext, f.addr, f.tid, f.read, true);
                }
                o
            }
            (true, _) => self.unprotect_page(page),
            (false, Residence::Device) => {
                let o = copy_back(self.space, ext, idx, f.write);
                if o == Outcome::Done {
                    trace::fault(ext, f.addr, f.tid, f.read, false);
                }
                o
            }
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
        if self.space.pagemap.query(page, &mut entry).is_err() || entry[0].present() {
            let _ = self.uffd.wake(page, PAGE);
            return Outcome::Done;
        }
        let shared = |b: PageBits| b.residence() == Residence::Shared;
        if ext.cell(idx).try_claim(shared).is_none() {
            return Outcome::Wait; // owned, or no longer Shared: resolved again later
        }
        let owner = &ext.device().owner;
        let got = install_claimed(
            self.space,
            ext,
            idx..idx + 1,
            &owner.fault_transfer,
            Kind::Fault {
                writable: None,
                home: false,
            },
        );
        ext.cell(idx).release(Residence::Shared);
        match got {
            Ok(g) if g.stop == Some(InstallStop::Again) => Outcome::Retry,
            Ok(g) => {
                Counters::add(&owner.counters.bytes_to_host, g.bytes);
                let (range, fault) = ((ext.page_addr(idx), PAGE), trace::Home::Fault as u64);
                trace::moved(trace::Kind::ToHost, 0, ext, range, g.bytes, fault);
                Outcome::Done
            }
            // (A single page: in place or not, it is `Shared` either way.)
            Err(f) => {
                tracing::error!(error = %f.error, "reading device memory for a CPU fault failed; retrying");
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
        self.space
            .mirror
            .for_each_overlapping(range.clone(), |ext| {
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
        self.space
            .mirror
            .for_each_overlapping(range.clone(), |ext| {
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
        self.space.mirror.for_each_overlapping(range.clone(), |ext| {
            let span = ext.page_span(&range);
            let owner = &ext.device().owner;
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
                        let mut t = owner
                            .fault_transfer
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner);
                        match install(
                            &self.space.backend,
                            None,
                            &mut t,
                            ext,
                            i..i + 1,
                            dst,
                            |_| false,
                            true,
                            None,
                        ) {
                            Ok(g) => {
                                Counters::add(&owner.counters.bytes_to_host, g.bytes);
                                let bulk = trace::Home::Bulk as u64;
                                let range = (dst, PAGE);
                                trace::moved(trace::Kind::ToHost, 0, ext, range, g.bytes, bulk);
                                g.stop != Some(InstallStop::Again)
                            }
                            // Placed before the failure: moved all the same.
                            Err(f) => f.done.pages_done() >= 1,
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
