//! The trace: every move and fault as an event, attributed to the call site that caused it,
//! written as a Chrome trace (JSON; opens in Perfetto and `chrome://tracing`).
//!
//! Turned on by [`RuntimeBuilder::trace`](crate::RuntimeBuilder::trace) or `VKHMM_TRACE=path`;
//! off, each event site costs one relaxed load ([`on`]). On, an event is a fixed-size
//! [`Event`] pushed into a process-wide [`ring::Ring`] — no allocation, no lock, so the
//! fault handler records its own events — and a writer thread ([`writer`]) drains the ring
//! every few milliseconds into the file, which is valid JSON after every drain (a runtime
//! dropped mid-run, or a process that exits, leaves a readable file up to the last drain).
//!
//! Attribution: the public calls that move memory (`launch`, `launch_async`, `prefetch`,
//! `advise`) are `#[track_caller]` and set the calling thread's [`Site`] while they run;
//! events on that thread carry it. A launch also stamps the site on each extent it places
//! (`DeviceCopy::site`), so a later fault or move of those pages names the call site that
//! last sent them to the device. Faults carry the thread that waited (userfaultfd's
//! `THREAD_ID`) and how long, from the handler's read of the fault to its wake-up.
//!
//! Lanes (the `tid` of each event): one per CPU thread that launched, waited or served (the
//! fault service is the `vkhmm-fault` thread), and one per runtime's device queue for the
//! kernels.

mod ring;
mod writer;

use std::cell::Cell;
use std::panic::Location;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Instant;

pub(crate) use writer::Session;

/// Whether a trace is being written. The one check each event site makes.
static ON: AtomicBool = AtomicBool::new(false);

/// Whether a trace is being written (one relaxed load).
#[inline(always)]
pub(crate) fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// What an event records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Nothing (a free slot).
    None,
    /// A launch, from the call to its settling, on the launching thread.
    Launch,
    /// A kernel on the device queue, submit to completion.
    Kernel,
    /// Bytes uploaded to the device for a launch or prefetch (`a`: 1 on the Staged path).
    ToDevice,
    /// Zero pages filled on the device instead of copied.
    ZeroFill,
    /// Bytes copied home (`a`: a [`Home`] cause).
    ToHost,
    /// Memory that cannot migrate, uploaded for a launch (`a`: binding).
    CopyIn,
    /// The same, written back after the kernel (`a`: binding).
    CopyOut,
    /// A CPU fault resolved: `other_tid` waited `dur` ns; `len` bytes of window (`a`: 1 for
    /// a write to a write-protected page).
    Fault,
    /// An extent evicted to make room.
    Evict,
    /// A binding settled on the host as thrashing.
    Thrash,
    /// `prefetch` (`a`: 0 to the device, 1 home).
    Prefetch,
    /// `advise` (`a`: the advice, see `writer::advice_name`).
    Advise,
}

/// Why bytes came home ([`Kind::ToHost`]'s `a`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub(crate) enum Home {
    /// A CPU fault's window (or the read-ahead of a stream of them).
    Fault = 0,
    /// The written bytes of a launch's edge pages.
    Edge = 1,
    /// A bulk move: `prefetch(Host)`, eviction, `fork`, a runtime's drop, copy-through.
    Bulk = 2,
}

/// One event: fixed size, `Copy`, so that recording allocates nothing.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Event {
    pub kind: Kind,
    /// Start, in ns since the process's trace epoch.
    pub ts: u64,
    /// Duration in ns (0 for an instant).
    pub dur: u64,
    /// The lane: the thread that did it (or a device lane, [`device_lane`]).
    pub tid: u32,
    /// Faults: the thread that waited.
    pub other_tid: u32,
    pub addr: usize,
    pub len: usize,
    pub bytes: u64,
    /// The extent the range lies in (start, bytes): "the allocation" as vkhmm knows it.
    pub alloc: (usize, usize),
    /// The call site (`&'static Location` as an address; 0: none).
    pub site: usize,
    /// Kind-specific values.
    pub a: u64,
    pub b: u64,
    /// A kernel's entry point (`Launch`, `Kernel`), NUL-padded.
    pub name: [u8; 24],
}

impl Event {
    pub const EMPTY: Event = Event {
        kind: Kind::None,
        ts: 0,
        dur: 0,
        tid: 0,
        other_tid: 0,
        addr: 0,
        len: 0,
        bytes: 0,
        alloc: (0, 0),
        site: 0,
        a: 0,
        b: 0,
        name: [0; 24],
    };

    /// An event of `kind` on the calling thread, now, at its current site.
    pub fn here(kind: Kind) -> Event {
        Event {
            kind,
            ts: now(),
            tid: tid(),
            site: current_site(),
            ..Event::EMPTY
        }
    }

    /// The range it concerns.
    pub fn range(mut self, addr: usize, len: usize) -> Event {
        self.addr = addr;
        self.len = len;
        self
    }

    /// The extent it concerns, and (when the event has no site of its own) the site that
    /// last sent the extent to the device.
    pub fn ext(mut self, ext: &crate::space::Ext) -> Event {
        self.alloc = (ext.start(), ext.bytes());
        if self.site == 0 {
            self.site = ext.device().site.load(Ordering::Relaxed);
        }
        self
    }

    /// Records it (the caller checked [`on`]).
    pub fn record(self) {
        ring().push(self);
    }
}

/// The ring every thread records into (made on the first trace, kept for the process: a
/// thread may still be pushing when a trace ends).
fn ring() -> &'static ring::Ring {
    static RING: OnceLock<ring::Ring> = OnceLock::new();
    RING.get_or_init(|| ring::Ring::new(1 << 16))
}

/// Nanoseconds since the trace epoch (the first call).
pub(crate) fn now() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The lane of runtime `id`'s device queue.
pub(crate) fn device_lane(id: u64) -> u32 {
    1_000_000_000 + id as u32
}

/// A kernel's name as an event holds it.
pub(crate) fn name(s: &str) -> [u8; 24] {
    let mut out = [0u8; 24];
    let n = s.len().min(24);
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
    out
}

thread_local! {
    static SITE: Cell<usize> = const { Cell::new(0) };
    static TID: Cell<u32> = const { Cell::new(0) };
}

/// The calling thread's id (asked of the kernel once per thread).
fn tid() -> u32 {
    TID.with(|t| match t.get() {
        0 => {
            let id = crate::sys::gettid();
            t.set(id);
            id
        }
        id => id,
    })
}

/// The call site of the public call this thread is in (0: none).
pub(crate) fn current_site() -> usize {
    SITE.with(Cell::get)
}

/// Sets the calling thread's site for the duration of a public call (nested calls keep the
/// outermost one).
pub(crate) struct Site(Option<usize>);

impl Site {
    /// Enters `caller` (a `#[track_caller]` function's `Location::caller()`).
    #[inline]
    pub fn enter(caller: &'static Location<'static>) -> Site {
        if !on() {
            return Site(None);
        }
        let prev = current_site();
        if prev == 0 {
            SITE.with(|s| s.set(caller as *const Location<'static> as usize));
        }
        Site(Some(prev))
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if let Some(prev) = self.0 {
            SITE.with(|s| s.set(prev));
        }
    }
}

/// `file:line` of a site recorded in an event.
pub(crate) fn site_name(site: usize) -> Option<String> {
    if site == 0 {
        return None;
    }
    // SAFETY: a site is a `&'static Location` stored as its address (`Site::enter`).
    let loc = unsafe { &*(site as *const Location<'static>) };
    Some(format!("{}:{}", loc.file(), loc.line()))
}

/// The trace sessions of this process: one file at a time, shared by every runtime that
/// asks for the same path.
static SESSION: Mutex<Weak<Session>> = Mutex::new(Weak::new());

/// Starts writing a trace to `path`, or joins the one being written there.
pub(crate) fn start(path: &std::path::Path) -> crate::Result<Arc<Session>> {
    let mut current = SESSION.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(s) = current.upgrade() {
        if s.path() == path {
            return Ok(s);
        }
        return Err(crate::Error::InvalidConfig(format!(
            "a trace is already being written to {} (one trace file per process)",
            s.path().display()
        )));
    }
    let _ = ring();
    let _ = epoch();
    let s = Arc::new(Session::start(path)?);
    *current = Arc::downgrade(&s);
    ON.store(true, Ordering::Release);
    Ok(s)
}

/// Ends the trace: no event site records any more (called by the session's drop).
fn stop() {
    ON.store(false, Ordering::Release);
}

/// Labels of lanes that are not threads (device queues), by lane.
static LANES: Mutex<Vec<(u32, String)>> = Mutex::new(Vec::new());

/// Names the lane of a device queue.
pub(crate) fn name_lane(lane: u32, name: String) {
    let mut lanes = LANES.lock().unwrap_or_else(PoisonError::into_inner);
    if !lanes.iter().any(|(l, _)| *l == lane) {
        lanes.push((lane, name));
    }
}

/// A counter of extents' sites, kept with each device copy.
pub(crate) type SiteCell = AtomicUsize;

/// A transfer's path as [`Kind::ToDevice`]'s `a` holds it.
pub(crate) fn path_of(t: &crate::device::Transfer) -> u64 {
    u64::from(t.path() == crate::TransferPath::Staged)
}

/// The trace clock now when tracing, else 0: the start of an operation whose event
/// [`moved`] records.
#[inline(always)]
pub(crate) fn clock() -> u64 {
    if on() {
        now()
    } else {
        0
    }
}

/// Records `bytes` moved (`kind`: a move or copy) of `ext` over `addr..addr + len`, on
/// this thread, since `t0` ([`clock`]); nothing when not tracing or nothing moved.
#[inline]
pub(crate) fn moved(
    kind: Kind,
    t0: u64,
    ext: &crate::space::Ext,
    (addr, len): (usize, usize),
    bytes: u64,
    a: u64,
) {
    if on() && bytes > 0 {
        let mut e = Event::here(kind).range(addr, len).ext(ext);
        if t0 > 0 && t0 <= e.ts {
            e.dur = e.ts - t0;
            e.ts = t0;
        }
        e.bytes = bytes;
        e.a = a;
        e.record();
    }
}

thread_local! {
    static WINDOW: Cell<usize> = const { Cell::new(0) };
}

/// Notes the bytes of the window the fault being resolved on this thread covered (read
/// back by the handler for the fault's event).
#[inline]
pub(crate) fn note_window(bytes: usize) {
    if on() {
        WINDOW.with(|w| w.set(bytes));
    }
}

/// Records a fault at `addr` in `ext`, resolved by this thread: `waiter` waited since
/// `since` ([`clock`] when the fault was read); `write` for a write to a write-protected
/// page.
pub(crate) fn fault(ext: &crate::space::Ext, addr: usize, waiter: u32, since: u64, write: bool) {
    if !on() {
        return;
    }
    let mut e = Event::here(Kind::Fault)
        .range(addr, WINDOW.with(|w| w.replace(0)))
        .ext(ext);
    if since > 0 && since <= e.ts {
        (e.dur, e.ts) = (e.ts - since, since);
    }
    e.other_tid = waiter;
    e.a = u64::from(write);
    e.record();
}
