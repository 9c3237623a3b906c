//! The process-wide state that the fault service and migration both borrow: the mirror,
//! the running trap backend, `/proc/self/pagemap`, the watches, the parking, and the gate
//! that orders everything the launch path does against the events the fault handler reads.
//!
//! One [`AddressSpace`] per process, shared by every `Runtime`: the mirror is a property of
//! the address space, not of a device. The fault service (`fault`) starts it with the first
//! `Runtime` and runs the threads that resolve faults on it; migration (`migrate`) moves
//! pages through it. Neither reaches the other through this module.
//!
//! ## The gate
//!
//! The thread that resolves faults holds the gate from before it reads a batch of events
//! until it has processed them and served the batch's faults ([`Round`]). A launcher holding
//! it ([`AddressSpace::hold_events`]) knows that no `munmap`, `mremap` or `madvise` of a
//! registered range can complete (each waits until its event is read) and that nothing it
//! checked about the mirror changes; [`AddressSpace::quiesce`] also waits until no event is
//! unread. While holding it, a thread must not wait for a claimed page, allocate or free
//! (a `malloc` may carve a freed chunk whose pages are on the device), or first-touch
//! memory: each could wait for the handler, which waits for the gate.
//!
//! The gate is a read-write lock held for writing by all of them, so they exclude each other
//! as a mutex would. Only threads that copy pages home in bulk hold it for reading
//! ([`AddressSpace::hold_events_shared`]), piece by piece: they need no event processed while
//! a piece is copied, but not each other out, so the two halves of a large move home (the
//! caller's and the assistant's) copy at once.

pub(crate) mod kept;
pub(crate) mod owner;
pub(crate) mod parking;
pub(crate) mod watch;

pub(crate) use owner::{Counters, DeviceCopy, Ext, Owner};

/// The gate (module doc).
pub(crate) type Gate = RwLock<()>;
/// The gate held exclusively.
pub(crate) type GateGuard<'a> = RwLockWriteGuard<'a, ()>;

use std::ops::Range;
use std::os::fd::OwnedFd;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use crate::mirror::map::MirrorMap;
use crate::mirror::PAGE;
use crate::sys;
use crate::trap::{signal, Backend, FaultBackend};
use crate::{Error, Result};
use parking::{Dropped, Parking};
use watch::{Change, LaunchWatch, Watches};

/// The process's address space, as vkhmm mirrors it.
pub(crate) struct AddressSpace {
    pub backend: Backend,
    pub mirror: MirrorMap<DeviceCopy>,
    pub pagemap: sys::Pagemap,
    /// Ranges watched for unmaps: in-place ranges and the bindings of launches in flight.
    pub watches: Watches,
    /// Where host pages are moved to be dropped (userfaultfd with `UFFDIO_MOVE` only).
    parking: Option<Parking>,
    /// A page registered for write protection that nothing uses: an ioctl on it tells
    /// whether an event is unread ([`quiesce`](Self::quiesce); userfaultfd only).
    sentinel: Option<usize>,
    /// The process that started the service (a forked child must not use it).
    pub pid: u32,
    /// Whether the thread that resolves faults holds deferred faults, waiting for claimed
    /// pages: only then does [`poke`](Self::poke) wake it.
    deferring: AtomicBool,
    /// The eventfd the thread that resolves faults polls beside its backend's messages.
    pub wake: OwnedFd,
    gate: Gate,
}

impl AddressSpace {
    /// The state of a process whose CPU accesses `backend` traps.
    pub fn new(backend: Backend) -> Result<AddressSpace> {
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
        Ok(AddressSpace {
            backend,
            mirror: MirrorMap::new(),
            pagemap,
            watches: Watches::new(),
            parking,
            sentinel,
            pid: rustix::process::getpid().as_raw_nonzero().get() as u32,
            deferring: AtomicBool::new(false),
            wake,
            gate: RwLock::new(()),
        })
    }

    /// Which backend runs.
    pub fn kind(&self) -> FaultBackend {
        self.backend.kind()
    }

    /// The host pages kept for reuse (`None` without the parking: the `signal` backend, or
    /// a kernel without `UFFDIO_MOVE`).
    pub fn kept(&self) -> Option<&kept::Kept> {
        self.parking.as_ref().map(|p| p.kept())
    }
    /// Whether `addr` lies in the parking (its events concern no mirrored memory).
    pub fn is_parking(&self, addr: usize) -> bool {
        self.parking.as_ref().is_some_and(|p| p.contains(addr))
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
    /// `Managed<T>` memory at `range` is about to be unmapped: in-place imports of it are
    /// stale, and under the `signal` backend (which sees no `UNMAP` event) its mirror pages
    /// are marked gone first, with the mirror's writer side and the gate held, so no launch
    /// and no helper round is writing into the range when it is unmapped and its addresses
    /// are reused.
    pub fn forget_managed(&self, range: Range<usize>) {
        // Under userfaultfd the UNMAP event says so too.
        self.watches.changed(range.clone(), Change::Unmapped);
        if self.backend.signal().is_none()
            || rustix::process::getpid().as_raw_nonzero().get() as u32 != self.pid
        {
            return;
        }
        let w = self.mirror.write();
        let gate = self.hold_events();
        self.mirror.for_each_overlapping(range.clone(), |ext| {
            for i in ext.page_span(&range) {
                ext.cell(i).mark_gone();
            }
        });
        drop(gate);
        drop(w);
    }

    /// Warms the mirror reader's per-thread state of the thread that resolves faults (call
    /// it once, before anything is mirrored: the first read allocates).
    pub(crate) fn warm_reader(&self) {
        self.mirror.handler_busy();
        self.mirror.lookup(0, |_, _| ());
        self.mirror.handler_idle();
    }
    /// Starts a round of the thread that resolves faults, after its wait: it enters its busy
    /// epoch of the mirror, drains the wake eventfd and takes the gate, all held until the
    /// [`Round`] drops.
    pub fn begin_round(&self) -> Round<'_> {
        self.mirror.handler_busy();
        let mut tick = [0u8; 8];
        let _ = rustix::io::read(&self.wake, &mut tick);
        Round {
            space: self,
            gate: Some(self.hold_events()),
        }
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
    /// fault into the handler (module doc, "The gate").
    pub(crate) fn hold_events(&self) -> GateGuard<'_> {
        self.gate.write().unwrap_or_else(PoisonError::into_inner)
    }
    /// Holds the gate against the thread that resolves faults and every
    /// [`hold_events`](Self::hold_events), but not against other holders of this: for copying
    /// claimed pages home piece by piece (module doc, "The gate"). The same rules apply.
    pub(crate) fn hold_events_shared(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(PoisonError::into_inner)
    }
    /// [`hold_events`](Self::hold_events) once no event is unread either: every `munmap`,
    /// `mremap` or `madvise` of a registered range that began before has been read and
    /// processed, and one that begins later is processed after the guard drops. (An event is
    /// only read after the address space changed: without this, the event of an unmap that
    /// happened before a new mapping was made at the same address could be processed after a
    /// launch on the new mapping began, and taken for an unmap of it.)
    pub(crate) fn quiesce(&self) -> GateGuard<'_> {
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
    /// ([`watch`]): every unmap of them that begins from now on is recorded.
    pub(crate) fn watch_launch(&'static self, spans: &[Range<usize>]) -> Result<LaunchWatch> {
        LaunchWatch::new(&self.watches, &self.gate, || self.quiesce(), spans)
    }
    /// Drops the host copy of `[addr, addr + len)`, claimed pages of a launch watched by
    /// `watch` whose bytes are valid on the device; the next touch faults them back. Returns
    /// [`Dropped::Lost`] (and drops nothing more) once the watch says part of the launch's
    /// memory was unmapped: what is mapped there now may be somebody else's.
    ///
    /// Under userfaultfd with `UFFDIO_MOVE` the pages are moved out through the parking
    /// ([`parking`]), which cannot touch a mapping that replaced them; without it,
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
        // Pairs with the fence in `Round::finish`: the caller's releases come before the
        // load, the handler's store of the flag before its last retry; so either that retry
        // sees the pages released or this load sees the flag set.
        fence(Ordering::SeqCst);
        if self.deferring.load(Ordering::Relaxed) {
            let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
        }
    }
}

/// A round of the thread that resolves faults ([`AddressSpace::begin_round`]): the gate is
/// held and the mirror's busy epoch entered until it drops.
pub(crate) struct Round<'a> {
    space: &'a AddressSpace,
    gate: Option<GateGuard<'a>>,
}

impl Round<'_> {
    /// Ends the round's work: `retry` retries the deferred faults and says whether some are
    /// still deferred. If so, it says so to [`AddressSpace::poke`] and retries once more,
    /// which catches pages released before the flag was set.
    pub fn finish(&self, mut retry: impl FnMut() -> bool) {
        let deferring = &self.space.deferring;
        let mut left = retry();
        if left {
            deferring.store(true, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            left = retry();
        }
        deferring.store(left, Ordering::Relaxed);
    }
}

impl Drop for Round<'_> {
    fn drop(&mut self) {
        // The gate first, then the epoch: nothing of the mirror is held once idle.
        drop(self.gate.take());
        self.space.mirror.handler_idle();
    }
}
