//! Migration: carries out the mirror's page-state transitions with `device/` and `fault/`.
//!
//! This is where decisions made in `mirror/` meet memory. Three operations cover the brief's
//! `migrate_vma_*` counterparts:
//!
//! - [`prepare`] / [`Launch::finish`]: make a launch's bindings resident before submit
//!   (Vulkan has no GPU page faults) and settle them after the kernel; `prepare` with
//!   [`Purpose::Prefetch`] is `prefetch(Device)`;
//! - [`install`]: copy the device copy of claimed, absent pages into place with
//!   `UFFDIO_COPY` — used by the fault handler for one chunk and by prefetch, eviction,
//!   runtime drop and `fork()` for whole extents;
//! - [`to_host`]: bulk moves home (prefetch, eviction, drop, `fork()`).
//!
//! Ordering rules, per page (the concurrency protocol of the design brief §2):
//!
//! 1. A page is claimed (`BUSY`) before anything about it changes and released after. The
//!    handler defers faults on claimed pages, so a CPU toucher waits instead of seeing a
//!    half-moved page.
//! 2. Read bindings: write-protect first, then upload, then `Shared`, then release — a
//!    concurrent writer (only `unsafe` code can be one) blocks in a WP fault and lands its
//!    write after the snapshot was taken, moving the page to `Host`.
//! 3. Written bindings: upload, then `MADV_DONTNEED`, then `Device`; the page stays claimed
//!    until the kernel is done, so a toucher waits for the result (brief §2 rule 2).
//! 4. Host pages that are neither present nor swapped (`/proc/self/pagemap`) are zero on the
//!    host; the device copy is zero-filled instead of copied.
//! 5. Edge pages are never claimed across a kernel: a written binding's edge page is brought
//!    to `Host` first and its bytes are copied back after the kernel.
//! 6. Any failure releases every claimed page to the state that matches reality at that
//!    moment — a page is only dropped after its upload succeeded, so nothing is lost.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::device::{Device, DeviceBlock, Dispatcher, Transfer};
use crate::fault::assist::Kind;
use crate::fault::parking::Dropped;
use crate::fault::service::{Backend, FaultService};
use crate::fault::uffd::CopyError;
use crate::fault::watch::{self, LaunchWatch};
use crate::mirror::advice::{Advice, AdviceMap};
use crate::mirror::extent::Extent;
use crate::mirror::page::Residence;
use crate::mirror::plan::{binding_pages, page_roles, plan_groups, PageRoles};
use crate::mirror::policy::{lru_victims, Candidate, ChunkPolicy};
use crate::mirror::PAGE;
use crate::sys::{self, guarded};
use crate::{Error, MemoryReason, Result};

/// The device copy of an extent: a pool block and the runtime context it belongs to.
pub(crate) struct DeviceCopy {
    pub block: DeviceBlock,
    pub ctx: Arc<DeviceContext>,
}

/// An extent of the process-wide mirror.
pub(crate) type Ext = Extent<DeviceCopy>;

/// What one runtime shares with the fault service and with the extents it owns.
pub(crate) struct DeviceContext {
    pub device: Arc<Device>,
    pub counters: Counters,
    pub policy: ChunkPolicy,
    /// The launch path's tools; also used for prefetch, eviction, drop and fork.
    pub worker: Mutex<Worker>,
    /// The fault handler's own transfer context (nobody else locks it).
    pub fault_transfer: Mutex<Transfer>,
    /// The fault handler's assistant's transfer context (`fault::assist`; nobody else locks
    /// it); `None` where windows are never split (one CPU, or parallel fault-back off).
    pub assist_transfer: Option<Mutex<Transfer>>,
    /// Advice given to this runtime (never locked by the fault handler).
    pub advice: Mutex<AdviceMap>,
    /// When bindings count as thrashing (`None`: never settle them in place).
    pub thrash_policy: Option<crate::mirror::thrash::ThrashPolicy>,
    /// The bounce history of this runtime's bindings (launch path only).
    pub thrash: Mutex<crate::mirror::thrash::Thrash>,
}

/// Tools of the launch path, used under one lock.
pub(crate) struct Worker {
    pub transfer: Transfer,
    pub dispatcher: Dispatcher,
    pub stamp: u64,
    /// The launch submitted but not yet settled (at most one: the queue runs in order, and
    /// whoever takes the worker next settles it first).
    pub in_flight: Option<InFlight>,
    /// Errors of launches settled by someone other than their waiter, by ticket.
    pub failed: Vec<(u64, Error)>,
    /// The next launch's ticket.
    pub next_ticket: u64,
    /// Ranges the device accesses in place (`Advice::AccessInPlace`).
    pub in_place: crate::in_place::InPlaceSet,
}

/// A submitted launch: its pages and blocks stay held until it is settled.
pub(crate) struct InFlight {
    pub ticket: u64,
    pub launch: Launch,
    pub submitted: std::time::Instant,
}

impl Worker {
    /// The tools of a fresh context.
    pub fn new(transfer: Transfer, dispatcher: Dispatcher) -> Self {
        Worker {
            transfer,
            dispatcher,
            stamp: 0,
            in_flight: None,
            failed: Vec::new(),
            next_ticket: 1,
            in_place: Default::default(),
        }
    }

    /// Waits for the launch in flight, if any, and settles it (written pages released,
    /// edges and stack bindings copied back); its error, if any, is kept under its ticket.
    fn settle(&mut self, ctx: &DeviceContext) {
        let Some(f) = self.in_flight.take() else {
            return;
        };
        let ran = self.dispatcher.wait();
        let elapsed = f.submitted.elapsed().as_nanos() as u64;
        Counters::add(&ctx.counters.kernel_ns, elapsed);
        Counters::add(&ctx.counters.launches, u64::from(ran.is_ok()));
        let settled = match FaultService::get() {
            Ok(svc) => f.launch.finish(svc, ctx, &mut self.transfer),
            Err(e) => Err(e),
        };
        if let Err(e) = ran.and(settled) {
            self.failed.push((f.ticket, e));
        }
    }

    /// The error of launch `ticket`, if it failed (and nobody took it yet).
    pub fn take_error(&mut self, ticket: u64) -> Result<()> {
        match self.failed.iter().position(|(t, _)| *t == ticket) {
            Some(i) => Err(self.failed.swap_remove(i).1),
            None => Ok(()),
        }
    }
}

/// Event counters, shared by the launch path and the fault handler.
#[derive(Default)]
pub(crate) struct Counters {
    pub launches: AtomicU64,
    pub kernel_ns: AtomicU64,
    pub cpu_faults: AtomicU64,
    pub deferred_faults: AtomicU64,
    pub bytes_to_device: AtomicU64,
    pub bytes_to_host: AtomicU64,
    pub bytes_zero_filled: AtomicU64,
    pub evictions: AtomicU64,
    pub prefetches: AtomicU64,
    pub handler_panics: AtomicU64,
    pub parallel_installs: AtomicU64,
    pub thrash_settled: AtomicU64,
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

impl DeviceContext {
    /// The launch path's tools, with any launch in flight settled first — so that whoever
    /// moves pages next (a launch, a prefetch, eviction, `fork()`, drop) never waits on pages
    /// an unsettled kernel holds.
    pub fn lock_worker(&self) -> std::sync::MutexGuard<'_, Worker> {
        let mut w = self.worker.lock().unwrap_or_else(PoisonError::into_inner);
        w.settle(self);
        w
    }
}

/// One buffer of a launch, as the migration sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Binding {
    pub addr: usize,
    pub len: usize,
    pub write: bool,
}

/// Where a binding lives on the device for one launch.
pub(crate) enum Placement {
    /// In a mirror extent at this byte offset.
    Mirrored { ext: Arc<Ext>, offset: u64 },
    /// In a temporary block (memory on the launching thread's stack).
    Transient { block: DeviceBlock },
}

impl Placement {
    /// The block and offset to bind.
    pub fn target(&self) -> (&DeviceBlock, u64) {
        match self {
            Placement::Mirrored { ext, offset } => (&ext.device().block, *offset),
            Placement::Transient { block } => (block, 0),
        }
    }
}

/// A prepared launch: bindings resident, written interior pages claimed, the bindings'
/// pages watched for unmaps until it is settled.
pub(crate) struct Launch {
    pub placements: Vec<Placement>,
    bindings: Vec<Binding>,
    held: Vec<(Arc<Ext>, Range<usize>)>,
    edge_out: Vec<(usize, Range<usize>)>,
    watch: Option<LaunchWatch>,
}

// ------------------------------------------------------------------------------------------
// Claiming

/// Claims pages `pages` of `ext` whatever their state, waiting for current owners (the fault
/// handler holds a page for one chunk copy; a launcher for one kernel).
///
/// With `revalidate`, a page whose host memory vanished earlier (`GONE`) is treated as live
/// `Host` memory again — for launches, which read it afresh from the binding. Moves home
/// leave it `GONE`: there is nothing to bring back, and a dead extent must stay dead so that
/// it is reaped instead of being taken for live memory mapped at the same address.
fn claim_all(ext: &Ext, pages: Range<usize>, revalidate: bool) -> Vec<Residence> {
    pages
        .map(|i| {
            let cell = ext.cell(i);
            let mut spins = 0u32;
            loop {
                if let Some(bits) = cell.try_claim(|_| true) {
                    if bits.gone() && revalidate {
                        cell.revalidate();
                    }
                    return bits.residence();
                }
                backoff(&mut spins);
            }
        })
        .collect()
}

fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else if *spins < 256 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(std::time::Duration::from_micros(50));
    }
}

/// Releases claimed pages to the residences in `states`.
fn release_all(ext: &Ext, first: usize, states: &[Residence]) {
    for (k, &r) in states.iter().enumerate() {
        ext.cell(first + k).release(r);
    }
}

// ------------------------------------------------------------------------------------------
// Installing device data into absent host pages

/// Why an [`install`] stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InstallStop {
    /// The address space is changing (`EAGAIN`): release the pages and retry later.
    Again,
    /// The host range is gone (`ENOENT`/`ESRCH`): the pages will be marked `GONE`.
    Gone,
}

/// Result of an [`install`]: bytes installed, pages found already present, or a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Installed {
    pub bytes: u64,
    pub already_present: u64,
    pub stop: Option<InstallStop>,
}

/// [`install`] of the claimed, absent pages `pages` of `ext` at their own addresses, as
/// `kind` says (write protection, whether waiters wake as their pages land): the fault
/// handler's windows, its assistant's halves and bulk moves home all install this way.
///
/// A bulk move home runs outside the handler's rounds, so events are processed meanwhile:
/// each piece is copied holding the gate, skipping pages that went `GONE` since they were
/// claimed, so that nothing lands in memory mapped there since (a fault's window is installed
/// within the handler's round, which holds the gate already).
pub(crate) fn install_in_place(
    svc: &FaultService,
    transfer: &mut Transfer,
    ext: &Ext,
    pages: Range<usize>,
    kind: Kind,
) -> Result<Installed> {
    let dst = ext.page_addr(pages.start);
    let guarded = matches!(kind, Kind::Bulk { .. }) && svc.backend.signal().is_none();
    install(
        &svc.backend,
        transfer,
        ext,
        pages,
        dst,
        |i| kind.write_protects(i),
        kind.wakes_waiters(),
        guarded.then_some(svc),
    )
}

/// Copies the device copy of the claimed, absent pages `pages` of `ext` into host memory at
/// `dst` (the address of the first page; normally `ext.page_addr(pages.start)`), page `i`
/// write-protected iff `wp(i)`. With `wake` false, threads waiting on the pages stay asleep
/// until the caller wakes them (`Backend::wake`) after its bookkeeping. With `events`, each
/// piece is copied holding that service's gate, pages gone since they were claimed skipped
/// (counted as already present; `dst` must then be the pages' own address). Allocates
/// nothing: the fault handler calls it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn install(
    trap: &Backend,
    transfer: &mut Transfer,
    ext: &Ext,
    pages: Range<usize>,
    dst: usize,
    wp: impl Fn(usize) -> bool,
    wake: bool,
    events: Option<&FaultService>,
) -> Result<Installed> {
    let mut out = Installed {
        bytes: 0,
        already_present: 0,
        stop: None,
    };
    let mut i = pages.start;
    while i < pages.end && out.stop.is_none() {
        let flag = wp(i);
        let mut j = i + 1;
        while j < pages.end && wp(j) == flag {
            j += 1;
        }
        let run_dst = dst + (i - pages.start) * PAGE;
        let offset = ext.offset_of(ext.page_addr(i));
        let len = (j - i) * PAGE;
        let mut stop = None;
        // SAFETY: pages `i..j` are claimed by the caller, so nothing else reads or writes
        // their device copy (claims are the mirror's exclusion rule for device ranges).
        let r = unsafe {
            transfer.download(
                &ext.device().block,
                &[(offset, len)],
                &mut |_, at, bytes| match match events {
                    None => copy_piece(trap, run_dst + at, bytes, flag, wake, &mut out),
                    Some(svc) => {
                        let _held = svc.hold_events();
                        copy_live(trap, ext, run_dst + at, bytes, flag, wake, &mut out)
                    }
                } {
                    Ok(()) => Ok(()),
                    Err(s) => {
                        stop = Some(s);
                        Err(Error::Os {
                            op: "UFFDIO_COPY",
                            source: std::io::ErrorKind::Interrupted.into(),
                        })
                    }
                },
            )
        };
        match (r, stop) {
            (_, Some(s)) => out.stop = Some(s),
            (Err(e), None) => return Err(e),
            (Ok(()), None) => {}
        }
        i = j;
    }
    Ok(out)
}

/// [`copy_piece`] of the pages of `ext` at `dst` that are not `GONE`; gone ones are counted
/// as already present. Call holding the gate.
fn copy_live(
    trap: &Backend,
    ext: &Ext,
    dst: usize,
    bytes: &[u8],
    wp: bool,
    wake: bool,
    out: &mut Installed,
) -> Result<(), InstallStop> {
    let gone = |at: usize| ext.cell(ext.page_index(dst + at)).load().gone();
    let mut at = 0;
    while at < bytes.len() {
        if gone(at) {
            out.already_present += 1;
            at += PAGE;
            continue;
        }
        let mut end = at + PAGE;
        while end < bytes.len() && !gone(end) {
            end += PAGE;
        }
        copy_piece(trap, dst + at, &bytes[at..end], wp, wake, out)?;
        at = end;
    }
    Ok(())
}

/// `UFFDIO_COPY` of one piece, skipping pages that are already present.
///
/// One `UFFDIO_COPY` must lie inside one VMA (`ENOENT` otherwise), and an extent may span
/// several: the program can split its mapping after the mirror recorded it (`mprotect`,
/// `madvise`, a malloc heap growing). So `ENOENT` on more than a page halves the request
/// until it fits; only a single page that reports `ENOENT` is really gone.
fn copy_piece(
    trap: &Backend,
    dst: usize,
    bytes: &[u8],
    wp: bool,
    wake: bool,
    out: &mut Installed,
) -> Result<(), InstallStop> {
    let mut done = 0;
    let mut limit = bytes.len();
    while done < bytes.len() {
        let rest = &bytes[done..(done + limit).min(bytes.len())];
        // SAFETY: `rest` is readable for its length; `dst + done` lies in a registered range
        // whose pages are claimed by the caller and absent (a present one reports EEXIST).
        let r = unsafe { trap.copy(dst + done, rest.as_ptr(), rest.len(), wp, wake) };
        match r {
            Ok(n) => {
                out.bytes += n as u64;
                done += n;
                limit = (limit * 2).min(bytes.len());
            }
            Err(CopyError::Gone(_)) if rest.len() > PAGE => {
                limit = (rest.len() / 2).next_multiple_of(PAGE);
            }
            Err(CopyError::Exists { copied: n }) => {
                // Pages before `n` were copied; the page at `n` is already present (resolved
                // by someone else): keep it and wake whoever waits on it.
                out.bytes += n as u64;
                out.already_present += 1;
                let _ = trap.wake(dst + done + n, PAGE);
                done += n + PAGE;
            }
            Err(CopyError::Again { copied: n }) => {
                out.bytes += n as u64;
                return Err(InstallStop::Again);
            }
            Err(CopyError::Gone(_)) => return Err(InstallStop::Gone),
            Err(e @ CopyError::Failed(_)) => {
                tracing::error!(error = %e, dst = dst + done, "UFFDIO_COPY failed");
                return Err(InstallStop::Gone);
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Bulk moves to the host

/// Brings pages `pages` of `ext` home: `Device` pages are installed (write-protected and
/// `Shared` if `keep_device`, else `Host`), `Shared` pages become `Host` unless
/// `keep_device`. Returns bytes copied.
pub(crate) fn to_host(
    svc: &FaultService,
    transfer: &mut Transfer,
    ext: &Ext,
    pages: Range<usize>,
    keep_device: bool,
) -> Result<u64> {
    let mut bytes = 0;
    let mut attempts = 0;
    let result = loop {
        let first = pages.start;
        let mut states = claim_all(ext, pages.clone(), false);
        let r = to_host_claimed(svc, transfer, ext, first, &mut states, keep_device);
        release_all(ext, first, &states);
        match r {
            Ok((b, None)) => break Ok(bytes + b),
            Ok((b, Some(InstallStop::Again))) if attempts < 100 => {
                bytes += b;
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Ok((b, Some(_))) => break Ok(bytes + b),
            Err(e) => break Err(e),
        }
    };
    if let Ok(b) = result {
        Counters::add(&ext.device().ctx.counters.bytes_to_host, b);
    }
    result
}

/// [`to_host`] on pages the caller claimed; updates `states` to what is true afterwards.
fn to_host_claimed(
    svc: &FaultService,
    transfer: &mut Transfer,
    ext: &Ext,
    first: usize,
    states: &mut [Residence],
    keep_device: bool,
) -> Result<(u64, Option<InstallStop>)> {
    let trap = &svc.backend;
    let mut bytes = 0;
    let settled = if keep_device {
        Residence::Shared
    } else {
        Residence::Host
    };
    // The pages go home where the mirror says they live; pages whose mapping went away
    // since they were claimed are skipped, here and again piece by piece under the gate as
    // they are copied (`install_in_place`): nothing lands in memory mapped there since.
    for (k, s) in states.iter_mut().enumerate() {
        if ext.cell(first + k).load().gone() {
            *s = Residence::Host;
        }
    }
    for run in runs(states, |r| r == Residence::Device) {
        let (a, b) = (first + run.start, first + run.end);
        // A large run is installed in two halves at once, the upper one by the fault
        // handler's assistant when it is free (`fault::assist`).
        let kind = Kind::Bulk {
            protect: keep_device,
        };
        let halves = svc.install_halves(ext, a..b, kind, |part| {
            install_in_place(svc, transfer, ext, part, kind)
        });
        // Each half by its own outcome; an error is returned only once both are recorded,
        // so no installed page is released as `Device`.
        let mut stop = None;
        let mut error = None;
        for (half, got) in halves.parts() {
            let got = match got {
                Ok(g) => g,
                Err(e) => {
                    error.get_or_insert(e);
                    continue;
                }
            };
            bytes += got.bytes;
            let done = if got.stop.is_some() {
                (got.bytes as usize).div_ceil(PAGE).min(half.len())
            } else {
                half.len()
            };
            let start = half.start - first;
            for s in &mut states[start..start + done] {
                *s = settled;
            }
            stop = stop.or(got.stop);
        }
        if let Some(e) = error {
            return Err(e);
        }
        if let Some(stop) = stop {
            return Ok((bytes, Some(stop)));
        }
    }
    if !keep_device {
        for run in runs(states, |r| r == Residence::Shared) {
            let (a, b) = (first + run.start, first + run.end);
            write_protect(trap, ext.page_addr(a), (b - a) * PAGE, false)?;
            for s in &mut states[run] {
                *s = Residence::Host;
            }
        }
    }
    Ok((bytes, None))
}

/// `UFFDIO_WRITEPROTECT` on the launch path. The kernel refuses it with `EAGAIN` while a
/// non-cooperative event (another thread's `munmap`, `madvise`, `mremap`) waits to be read;
/// the handler reads events promptly, so a short wait and a retry succeed.
///
/// Clearing protection on a range that another thread unmapped meanwhile (`ENOENT`: no
/// registered mapping left there; its `UNMAP` marks the pages gone) is done: nothing is
/// left to clear. Bringing home or merging a neighbour's extent races its `free` that way.
/// Should a registered mapping lie behind an unregistered one, the kernel stops there; a
/// page it left protected is unprotected by the handler on its first write fault.
fn write_protect(trap: &Backend, addr: usize, len: usize, protect: bool) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut spins = 0;
    loop {
        match trap.write_protect(addr, len, protect, !protect) {
            Err(e)
                if e.raw_os_error() == Some(linux_raw_sys::errno::EAGAIN as i32)
                    && std::time::Instant::now() < deadline =>
            {
                backoff(&mut spins)
            }
            Err(e) if !protect && e.raw_os_error() == Some(linux_raw_sys::errno::ENOENT as i32) => {
                return Ok(())
            }
            Err(e) if protect => return Err(Error::os("UFFDIO_WRITEPROTECT (set)", e)),
            Err(e) => return Err(Error::os("UFFDIO_WRITEPROTECT (clear)", e)),
            Ok(()) => return Ok(()),
        }
    }
}

/// The next maximal run of indices from `*at` whose element satisfies `pred`, moving `*at`
/// past it; allocates nothing.
fn next_run<T: Copy>(
    items: &[T],
    at: &mut usize,
    pred: impl Fn(T) -> bool,
) -> Option<Range<usize>> {
    while *at < items.len() && !pred(items[*at]) {
        *at += 1;
    }
    let start = *at;
    while *at < items.len() && pred(items[*at]) {
        *at += 1;
    }
    (start < *at).then_some(start..*at)
}

/// Maximal runs of indices whose element satisfies `pred`.
fn runs<T: Copy>(items: &[T], pred: impl Fn(T) -> bool) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(r) = next_run(items, &mut at, &pred) {
        out.push(r);
    }
    out
}

// ------------------------------------------------------------------------------------------
// Reaping, eviction, evacuation

/// Retires extents whose host memory is gone, and frees retired extents the handler no
/// longer uses.
pub(crate) fn reap(svc: &FaultService) {
    // `munmap` returns once the handler has read its event, maybe before it was processed.
    svc.sync_events();
    let mut w = svc.mirror.write();
    let dead: Vec<Arc<Ext>> = w
        .snapshot()
        .iter()
        .filter(|e| e.all_gone())
        .cloned()
        .collect();
    if !dead.is_empty() {
        w.replace(&dead, []);
    }
    drain_graveyard(&mut w);
}

/// Frees retired extents (and so their device memory) as soon as the fault handler can no
/// longer be reading them: it finishes what it is doing within moments, so wait for that,
/// up to a bound (whatever is left is freed by a later call).
pub(crate) fn drain_graveyard(w: &mut crate::mirror::map::Writer<'_, DeviceCopy>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        drop(w.collect_garbage());
        if w.graveyard_len() == 0 || std::time::Instant::now() > deadline {
            return;
        }
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
}

/// Frees the device copies of `victims` to make room, counted as evictions (see
/// [`retire`]).
fn evict(
    svc: &FaultService,
    w: &mut crate::mirror::map::Writer<'_, DeviceCopy>,
    transfer: &mut Transfer,
    victims: Vec<Arc<Ext>>,
) -> Result<()> {
    for v in &victims {
        Counters::add(&v.device().ctx.counters.evictions, 1);
    }
    retire(svc, w, transfer, victims)
}

/// The extents of `owner` that overlap `span`, looked up on the writer side (so that no
/// launch merges one away before the caller claims its pages).
fn owned_overlapping(
    w: &crate::mirror::map::Writer<'_, DeviceCopy>,
    owner: &Arc<DeviceContext>,
    span: &Range<usize>,
) -> Vec<Arc<Ext>> {
    w.snapshot()
        .iter()
        .filter(|e| Arc::ptr_eq(&e.device().ctx, owner))
        .filter(|e| e.start() < span.end && span.start < e.end())
        .cloned()
        .collect()
}

/// Takes every extent of `owner` that overlaps `span` out of the mirror (data home first,
/// see [`retire`]): the range is not mirrored any more. For `Advice::AccessInPlace`.
pub(crate) fn forget(
    svc: &FaultService,
    owner: &Arc<DeviceContext>,
    span: Range<usize>,
) -> Result<()> {
    let mut worker = owner.lock_worker();
    let mut w = svc.mirror.write();
    let exts = owned_overlapping(&w, owner, &span);
    retire(svc, &mut w, &mut worker.transfer, exts)
}

/// Frees the device copies of `victims`: brings their data home, retires them, stops
/// trapping their ranges, and waits until their device memory is really released.
fn retire(
    svc: &FaultService,
    w: &mut crate::mirror::map::Writer<'_, DeviceCopy>,
    transfer: &mut Transfer,
    victims: Vec<Arc<Ext>>,
) -> Result<()> {
    for v in &victims {
        to_host(svc, transfer, v, 0..v.pages(), false)?;
    }
    w.replace(&victims, []);
    // Nothing of them is mirrored any more: stop trapping faults there — only where the
    // mapping is still the one the mirror knew. A `GONE` page's addresses may hold memory
    // mapped since, which another launch may have registered; the gate keeps an unmap from
    // being processed while this looks.
    let held = svc.hold_events();
    for v in &victims {
        let mut i = 0;
        while i < v.pages() {
            if v.cell(i).load().gone() {
                i += 1;
                continue;
            }
            let start = i;
            while i < v.pages() && !v.cell(i).load().gone() {
                i += 1;
            }
            let _ = svc
                .backend
                .unregister(v.page_addr(start), (i - start) * PAGE);
        }
    }
    drop(held);
    // The graveyard holds the last references once ours are gone.
    drop(victims);
    drain_graveyard(w);
    Ok(())
}

/// Allocates a block of `size` bytes, evicting least recently used extents of the same
/// context (not in `keep`) when the budget is short.
fn alloc_evicting(
    svc: &FaultService,
    ctx: &Arc<DeviceContext>,
    w: &mut crate::mirror::map::Writer<'_, DeviceCopy>,
    transfer: &mut Transfer,
    size: u64,
    keep: &[Range<usize>],
) -> Result<DeviceBlock> {
    match ctx
        .device
        .alloc_block(size, crate::device::BlockInit::Uninit, "vkhmm extent")
    {
        Err(Error::OutOfDeviceMemory { .. }) => {}
        other => return other,
    }
    let snap = w.snapshot();
    let cands: Vec<&Arc<Ext>> = snap
        .iter()
        .filter(|e| Arc::ptr_eq(&e.device().ctx, ctx))
        .filter(|e| !keep.iter().any(|k| k.start < e.end() && e.start() < k.end))
        .collect();
    let need = size.saturating_sub(
        ctx.device
            .pool()
            .budget()
            .saturating_sub(ctx.device.pool().in_use()),
    );
    let advice = ctx.advice.lock().unwrap_or_else(PoisonError::into_inner);
    let device_preferred = Advice::PreferredLocation(crate::Location::Device);
    let weights: Vec<Candidate> = cands
        .iter()
        .map(|e| Candidate {
            keep: advice.any(e.start()..e.end(), device_preferred),
            last_use: e.last_use(),
            bytes: e.bytes() as u64,
        })
        .collect();
    drop(advice);
    let Some(order) = lru_victims(&weights, need) else {
        return Err(Error::OutOfDeviceMemory {
            needed: size,
            budget: ctx.device.pool().budget(),
            in_use: ctx.device.pool().in_use(),
        });
    };
    let victims: Vec<Arc<Ext>> = order.iter().map(|&i| Arc::clone(cands[i])).collect();
    drop(cands);
    drop(snap);
    evict(svc, w, transfer, victims)?;
    ctx.device
        .alloc_block(size, crate::device::BlockInit::Uninit, "vkhmm extent")
}

/// Brings home every page of extents that overlap `spans` but belong to another runtime,
/// using that runtime's tools. Call without holding the own worker lock.
pub(crate) fn evacuate_foreign(
    svc: &FaultService,
    ctx: &Arc<DeviceContext>,
    spans: &[Range<usize>],
) -> Result<()> {
    // Unmaps already read by the handler must be processed, and dead extents gone, before
    // anything of another runtime is taken for live memory here.
    reap(svc);
    for span in spans {
        for owner in owners(svc, span.clone()) {
            if !Arc::ptr_eq(&owner, ctx) {
                // Whole extents: the launch will take over every page of them.
                bring_home(svc, &owner, span.clone(), false, true)?;
            }
        }
    }
    Ok(())
}

/// The runtimes whose extents overlap `span` (each once).
pub(crate) fn owners(svc: &FaultService, span: Range<usize>) -> Vec<Arc<DeviceContext>> {
    let mut out: Vec<Arc<DeviceContext>> = Vec::new();
    for e in svc.mirror.overlapping(span) {
        let owner = &e.device().ctx;
        if !out.iter().any(|o| Arc::ptr_eq(o, owner)) {
            out.push(Arc::clone(owner));
        }
    }
    out
}

/// Brings home the pages in `span` (all their pages, with `whole`) of every extent `owner`
/// holds there: `Device` pages are installed (`Shared` if `keep_device`, else `Host`), and
/// without `keep_device` `Shared` pages become `Host`. Returns bytes copied.
///
/// Takes the owner's worker, then the mirror's writer side, then looks the extents up: in
/// that order no launch can merge an extent away (retiring it with its pages claimed for
/// good) between the lookup and the claims — the race that a snapshot taken earlier loses.
pub(crate) fn bring_home(
    svc: &FaultService,
    owner: &Arc<DeviceContext>,
    span: Range<usize>,
    keep_device: bool,
    whole: bool,
) -> Result<u64> {
    let mut worker = owner.lock_worker();
    let w = svc.mirror.write();
    let exts = owned_overlapping(&w, owner, &span);
    let mut bytes = 0;
    for e in &exts {
        let pages = if whole {
            0..e.pages()
        } else {
            e.page_span(&span)
        };
        bytes += to_host(svc, &mut worker.transfer, e, pages, keep_device)?;
    }
    drop(w);
    Ok(bytes)
}

// ------------------------------------------------------------------------------------------
// Launch preparation

/// Why the `signal` backend refuses memory the runtime did not allocate.
pub(crate) const SIGNAL_FOREIGN: &str = "the signal backend (mprotect + SIGSEGV) serves only \
     memory from Runtime::alloc (Managed<T>): it cannot see munmap or reuse of other memory";

/// Why a launch's pages are moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// For a kernel: written pages stay claimed until [`Launch::finish`].
    Kernel,
    /// `prefetch(Device)`: every interior page ends `Device` and is released at once; edge
    /// pages are left alone.
    Prefetch,
}

/// Makes `bindings` resident on `ctx`'s device. The caller holds `worker` (the context's
/// worker lock) and has called [`evacuate_foreign`] for the bindings' spans.
///
/// The caller watches the bindings' pages (`fault::watch`) from the moment the launch
/// begins, before anything is decided about them, until it is settled (it hands the watch
/// to the launch with [`Launch::watched`]). A launch whose memory another thread unmaps or moves
/// meanwhile fails with [`MemoryReason::UnmappedWhileInUse`]: the pages of the lost range
/// end `GONE` (no device copy of them is ever taken for memory mapped there later), and the
/// host pages of whatever is mapped there now are never dropped or written.
pub(crate) fn prepare(
    svc: &FaultService,
    ctx: &Arc<DeviceContext>,
    worker: &mut Worker,
    bindings: &[Binding],
    purpose: Purpose,
    watch: &LaunchWatch,
) -> Result<Launch> {
    let lost = |e: Error| match watch.lost().first() {
        Some(r) => watch::unmapped(r),
        None => e,
    };
    let launch = prepare_watched(svc, ctx, worker, bindings, purpose, watch).map_err(lost)?;
    // An unmap read while the pages moved: the launch must not run (dropping it releases
    // its pages; those of the lost range end `GONE`).
    watch.check()?;
    Ok(launch)
}

/// [`prepare`], short of the last check of the watch.
fn prepare_watched(
    svc: &FaultService,
    ctx: &Arc<DeviceContext>,
    worker: &mut Worker,
    bindings: &[Binding],
    purpose: Purpose,
    watch: &LaunchWatch,
) -> Result<Launch> {
    reap(svc);
    worker.stamp += 1;
    let stamp = worker.stamp;

    // 1. Which memory is mirrored, which is copied through (the launching thread's stack).
    // Bindings wholly inside live extents were classified and registered when they were
    // first mirrored, and any unmap or remap since would have marked their pages gone: such
    // a launch skips `/proc/self/maps` (~0.2 ms) and registration.
    let known = {
        let snap = svc.mirror.snapshot();
        bindings.iter().all(|b| {
            let span = binding_pages(b.addr, b.len).span;
            snap.iter().any(|e| {
                e.start() <= span.start
                    && span.end <= e.end()
                    && e.page_span(&span).all(|i| !e.cell(i).load().gone())
            })
        })
    };
    let stack = if known {
        None
    } else {
        let maps = sys::Maps::read().map_err(|reason| Error::UnsupportedMemory {
            addr: bindings.first().map_or(0, |b| b.addr),
            len: bindings.first().map_or(0, |b| b.len),
            reason,
        })?;
        let signal = svc.backend.signal().is_some();
        for b in bindings {
            let span = binding_pages(b.addr, b.len).span;
            if signal && crate::fault::signal::is_managed(&span) {
                // Runtime-owned private anonymous memory; its pages may be protected by
                // now, which `classify` would refuse.
                continue;
            }
            maps.classify(b.addr, b.len)
                // Under the signal backend only the launching thread's stack (copied
                // through) passes below.
                .and(if signal {
                    Err(MemoryReason::Backend(SIGNAL_FOREIGN))
                } else {
                    Ok(())
                })
                .or_else(|reason| {
                    // The launching thread's stack is fine: it is copied through.
                    let s = maps.stack_of_current_thread();
                    match s {
                        Some(s) if s.start <= b.addr && b.addr + b.len <= s.end => Ok(()),
                        _ => Err(reason),
                    }
                })
                .map_err(|reason| Error::UnsupportedMemory {
                    addr: b.addr,
                    len: b.len,
                    reason,
                })?;
        }
        maps.stack_of_current_thread()
    };
    let on_stack = |b: &Binding| {
        stack
            .as_ref()
            .is_some_and(|s| b.addr < s.end && s.start < b.addr + b.len)
    };
    let mirrored: Vec<usize> = (0..bindings.len())
        .filter(|&i| !on_stack(&bindings[i]))
        .collect();
    let spans: Vec<Range<usize>> = mirrored
        .iter()
        .map(|&i| binding_pages(bindings[i].addr, bindings[i].len).span)
        .collect();
    let register = || {
        spans.iter().zip(&mirrored).try_for_each(|(span, &i)| {
            svc.register(span.clone())
                .map_err(|_| Error::UnsupportedMemory {
                    addr: bindings[i].addr,
                    len: bindings[i].len,
                    reason: MemoryReason::Refused,
                })
        })
    };
    if !known {
        // A range unmapped before it was registered raised no event, and registering skips
        // holes: check that every page is mapped now, and register again, so that whatever
        // is mapped there (if another thread mapped something in between) is registered too.
        // From here on every change of the spans is an event the watch records.
        register()?;
        for (span, &i) in spans.iter().zip(&mirrored) {
            let mapped =
                sys::is_mapped(span.start, span.len()).map_err(|e| Error::os("mincore", e))?;
            if !mapped {
                return Err(Error::UnsupportedMemory {
                    addr: bindings[i].addr,
                    len: bindings[i].len,
                    reason: MemoryReason::UnmappedWhileInUse,
                });
            }
        }
        register()?;
    }

    // 2. Extents: reuse, create or merge; allocate device copies (evicting if needed).
    let mut w = svc.mirror.write();
    let transient_bytes: u64 = bindings
        .iter()
        .filter(|b| on_stack(b))
        .map(|b| b.len.next_multiple_of(4) as u64)
        .sum();
    let budget = ctx.device.pool().budget();
    let group_bytes = |groups: &[crate::mirror::plan::Group]| {
        groups.iter().map(|g| g.range.len() as u64).sum::<u64>() + transient_bytes
    };
    let own = group_bytes(&plan_groups(&[], &spans).0);
    if own > budget {
        return Err(Error::LaunchExceedsBudget {
            needed: own,
            budget,
        });
    }
    let mut snap = w.snapshot();
    let mut existing: Vec<Range<usize>> = snap.iter().map(|e| e.range()).collect();
    let (mut groups, mut group_of) = plan_groups(&existing, &spans);
    let merging = groups.iter().any(|g| !g.absorb.is_empty());
    let in_use = ctx.device.pool().in_use();
    if group_bytes(&groups) > budget || (merging && in_use + group_bytes(&groups) > budget) {
        // The launch fits, but extents it overlaps (typically neighbours in the heap that
        // share an edge page, or earlier slices of the same buffer) would grow it past the
        // budget, or cannot be merged while their old blocks are still held: send them home
        // first.
        let neighbours: Vec<Arc<Ext>> = groups
            .iter()
            .flat_map(|g| g.absorb.iter().chain(g.reuse.iter()))
            .map(|&j| Arc::clone(&snap[j]))
            .collect();
        if neighbours
            .iter()
            .any(|e| !Arc::ptr_eq(&e.device().ctx, ctx))
        {
            return Err(Error::LaunchExceedsBudget {
                needed: group_bytes(&groups),
                budget,
            });
        }
        drop(snap);
        evict(svc, &mut w, &mut worker.transfer, neighbours)?;
        register()?; // eviction stopped trapping the evicted ranges
        snap = w.snapshot();
        existing = snap.iter().map(|e| e.range()).collect();
        (groups, group_of) = plan_groups(&existing, &spans);
    }
    let keep: Vec<Range<usize>> = groups.iter().map(|g| g.range.clone()).collect();
    // Take what the plan needs out of the snapshot and let it go: a snapshot keeps every
    // extent (and its device memory) alive, and eviction below must be able to free some.
    type Planned = (Range<usize>, Option<Arc<Ext>>, Vec<Arc<Ext>>);
    let planned: Vec<Planned> = groups
        .iter()
        .map(|g| {
            let own = g
                .reuse
                .filter(|&j| Arc::ptr_eq(&snap[j].device().ctx, ctx))
                .map(|j| Arc::clone(&snap[j]));
            let absorbed = g
                .absorb
                .iter()
                .chain(g.reuse.iter())
                .map(|&j| Arc::clone(&snap[j]))
                .collect();
            (g.range.clone(), own, absorbed)
        })
        .collect();
    drop(snap);
    let mut exts: Vec<Arc<Ext>> = Vec::with_capacity(groups.len());
    let mut retired: Vec<Arc<Ext>> = Vec::new();
    let mut added: Vec<Arc<Ext>> = Vec::new();
    let mut failure = None;
    for (range, own, absorbed) in planned {
        if let Some(ext) = own {
            exts.push(ext);
            continue;
        }
        let made = alloc_evicting(
            svc,
            ctx,
            &mut w,
            &mut worker.transfer,
            range.len() as u64,
            &keep,
        )
        .and_then(|block| {
            merge(
                &svc.backend,
                ctx,
                &mut worker.transfer,
                range,
                block,
                &absorbed,
            )
        });
        match made {
            Ok(ext) => {
                retired.extend(absorbed);
                added.push(Arc::clone(&ext));
                exts.push(ext);
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    // Extents merged so far replace the ones they absorbed even when a later group failed:
    // the absorbed ones keep their pages claimed for good. The new extents take over what
    // the old ones lost since they were claimed, and what the watch says the bindings lost
    // before any extent covered them: from here on the handler marks the new extents.
    if !retired.is_empty() || !added.is_empty() {
        w.replace(&retired, added.iter().cloned());
        // A round of the handler that began before the new extents were published may
        // still mark the old ones: let it end, then carry what it marked over.
        svc.sync_events();
        carry_losses(&retired, &added, &watch.lost());
    }
    if let Some(e) = failure {
        return Err(e);
    }
    for e in &exts {
        e.touch(stamp);
    }

    // 3. Pages: interior runs follow the state machine, edge pages are copied through.
    let mut launch = Launch {
        placements: Vec::new(),
        bindings: bindings.to_vec(),
        held: Vec::new(),
        edge_out: Vec::new(),
        watch: None,
    };
    let roles = page_roles(
        &mirrored
            .iter()
            .map(|&i| (bindings[i].addr, bindings[i].len, bindings[i].write))
            .collect::<Vec<_>>(),
    );
    let ext_of = |addr: usize| {
        exts.iter()
            .find(|e| e.contains(addr))
            .expect("every span lies in a planned extent")
    };
    if let Err(e) = move_pages(
        svc,
        ctx,
        worker,
        &roles,
        &ext_of,
        purpose,
        &mut launch,
        bindings,
        &mirrored,
        watch,
    ) {
        launch.release_held();
        return Err(e);
    }
    drop(w);

    // 4. Placements, in binding order; stack memory gets a temporary block.
    let mut mirrored_k = 0;
    for b in bindings {
        if mirrored
            .get(mirrored_k)
            .is_some_and(|&i| std::ptr::eq(&bindings[i], b))
        {
            let ext = Arc::clone(&exts[group_of[mirrored_k]]);
            let offset = ext.offset_of(b.addr);
            launch.placements.push(Placement::Mirrored { ext, offset });
            mirrored_k += 1;
        } else {
            let mut w = svc.mirror.write();
            let block = alloc_evicting(
                svc,
                ctx,
                &mut w,
                &mut worker.transfer,
                b.len.next_multiple_of(4) as u64,
                &keep,
            );
            drop(w);
            let block = match block {
                Ok(b) => b,
                Err(e) => {
                    launch.release_held();
                    return Err(e);
                }
            };
            // SAFETY: the binding is a live borrow of `len` readable bytes.
            let src = unsafe { std::slice::from_raw_parts(b.addr as *const u8, b.len) };
            // SAFETY: the block is fresh and this launch's alone.
            if let Err(e) = unsafe { worker.transfer.upload(&block, &[(0, src)]) } {
                launch.release_held();
                return Err(e);
            }
            Counters::add(&ctx.counters.bytes_to_device, b.len as u64);
            launch.placements.push(Placement::Transient { block });
        }
    }
    Ok(launch)
}

/// Builds the extent `range` on `block`, taking over the pages of `absorbed` extents: their
/// pages are claimed for good (the old extents are retired by the caller), pages valid on
/// this device are copied device-to-device, and pages valid only on another device (which
/// [`evacuate_foreign`] should have brought home) make the call fail so the caller retries.
fn merge(
    trap: &Backend,
    ctx: &Arc<DeviceContext>,
    transfer: &mut Transfer,
    range: Range<usize>,
    block: DeviceBlock,
    absorbed: &[Arc<Ext>],
) -> Result<Arc<Ext>> {
    let pages = range.len() / PAGE;
    let mut init = vec![Residence::Host; pages];
    let mut claimed: Vec<(&Arc<Ext>, Vec<Residence>)> = Vec::with_capacity(absorbed.len());
    let mut result = Ok(());
    for old in absorbed {
        // Not re-read from a binding: a page whose memory vanished stays `GONE` (its
        // addresses may hold memory that nobody registered since), and the new extent
        // takes that over (`carry_losses`). The launch re-reads its own pages when it claims
        // them.
        let states = claim_all(old, 0..old.pages(), false);
        let base = (old.start() - range.start) / PAGE;
        if result.is_ok() {
            result = take_over(trap, ctx, transfer, old, &states, &block, base);
        }
        if Arc::ptr_eq(&old.device().ctx, ctx) {
            init[base..base + states.len()].copy_from_slice(&states);
        }
        claimed.push((old, states));
    }
    if let Err(e) = result {
        for (old, states) in claimed {
            release_all(old, 0, &states);
        }
        return Err(e);
    }
    let ext = Extent::new(
        range.start,
        pages,
        DeviceCopy {
            block,
            ctx: Arc::clone(ctx),
        },
        |i| init[i],
    );
    Ok(Arc::new(ext))
}

/// Marks `GONE` in the new extents `added` every page whose host memory vanished while an
/// absorbed extent of `retired` held it (set by the handler after the merge claimed it), and
/// every page in `lost`. Call with the gate held, as the new extents are published.
fn carry_losses(retired: &[Arc<Ext>], added: &[Arc<Ext>], lost: &[Range<usize>]) {
    for new in added {
        for old in retired.iter().filter(|o| new.contains(o.start())) {
            let base = new.page_index(old.start());
            for i in 0..old.pages() {
                if old.cell(i).load().gone() {
                    new.cell(base + i).mark_gone();
                }
            }
        }
        mark_lost(new, new.page_span(&new.range()), lost);
    }
}

/// Marks `GONE` the pages of `ext` in `pages` that lie in a range of `lost`.
fn mark_lost(ext: &Ext, pages: Range<usize>, lost: &[Range<usize>]) {
    for r in lost {
        let span = ext.page_span(r);
        for i in span.start.max(pages.start)..span.end.min(pages.end) {
            ext.cell(i).mark_gone();
        }
    }
}

/// Moves what `old` (claimed, in `states`) holds into `block` at page `base`.
fn take_over(
    trap: &Backend,
    ctx: &Arc<DeviceContext>,
    transfer: &mut Transfer,
    old: &Ext,
    states: &[Residence],
    block: &DeviceBlock,
    base: usize,
) -> Result<()> {
    if Arc::ptr_eq(&old.device().ctx, ctx) {
        let regions: Vec<(u64, u64, u64)> = runs(states, Residence::device_valid)
            .into_iter()
            .map(|r| {
                (
                    (r.start * PAGE) as u64,
                    ((base + r.start) * PAGE) as u64,
                    (r.len() * PAGE) as u64,
                )
            })
            .collect();
        if regions.is_empty() {
            return Ok(());
        }
        // SAFETY: every page of `old` is claimed and `block` is new: nobody else touches
        // either range; the two blocks are distinct, so no region overlaps itself.
        return unsafe { transfer.copy(&old.device().block, block, &regions) };
    }
    if states.contains(&Residence::Device) {
        return Err(Error::ContendedMemory);
    }
    // Shared there means valid here only on the host: drop the stale write protection.
    for r in runs(states, |s| s == Residence::Shared) {
        write_protect(trap, old.page_addr(r.start), r.len() * PAGE, false)?;
    }
    Ok(())
}

/// Moves the interior runs and edge pages of a launch.
#[allow(clippy::too_many_arguments)]
fn move_pages<'e>(
    svc: &FaultService,
    ctx: &DeviceContext,
    worker: &mut Worker,
    roles: &PageRoles,
    ext_of: &impl Fn(usize) -> &'e Arc<Ext>,
    purpose: Purpose,
    launch: &mut Launch,
    bindings: &[Binding],
    mirrored: &[usize],
    watch: &LaunchWatch,
) -> Result<()> {
    for (run, write) in &roles.interior {
        let ext = ext_of(run.start);
        let idx = ext.page_span(run);
        let mut states = claim_all(ext, idx.clone(), true);
        let drop_host = *write || purpose == Purpose::Prefetch;
        let moved = replay(svc, watch, ext, idx.clone()).and_then(|()| {
            migrate_run(
                svc,
                ctx,
                &mut worker.transfer,
                ext,
                idx.start,
                &mut states,
                drop_host,
                watch,
            )
        });
        if let Err(e) = moved {
            release_all(ext, idx.start, &states);
            return Err(e);
        }
        if *write && purpose == Purpose::Kernel {
            launch.held.push((Arc::clone(ext), idx));
        } else {
            release_all(ext, idx.start, &states);
        }
    }
    if purpose == Purpose::Prefetch {
        return Ok(());
    }
    for &(page, write) in &roles.edges {
        let ext = ext_of(page);
        let i = ext.page_index(page);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut spins = 0;
        let st = loop {
            let mut st = claim_all(ext, i..i + 1, true);
            let moved = replay(svc, watch, ext, i..i + 1).and_then(|()| {
                if write {
                    to_host_claimed(svc, &mut worker.transfer, ext, i, &mut st, false)
                } else {
                    Ok((0, None))
                }
            });
            release_all(ext, i, &st);
            match moved {
                Ok((b, None)) => {
                    Counters::add(&ctx.counters.bytes_to_host, b);
                    break st;
                }
                // Another thread's munmap/madvise event is unread: wait for the handler.
                Ok((_, Some(InstallStop::Again))) if std::time::Instant::now() < deadline => {
                    backoff(&mut spins)
                }
                Ok((_, Some(_))) => {
                    return Err(Error::UnsupportedMemory {
                        addr: page,
                        len: PAGE,
                        reason: MemoryReason::NotMapped,
                    })
                }
                Err(e) => return Err(e),
            }
        };
        if st[0] != Residence::Host {
            continue; // the device copy is valid for the whole page
        }
        let mut regions: Vec<(u64, &[u8])> = Vec::new();
        for &bi in mirrored {
            let b = &bindings[bi];
            let (lo, hi) = (b.addr.max(page), (b.addr + b.len).min(page + PAGE));
            if lo >= hi {
                continue;
            }
            // SAFETY: lo..hi lies inside binding `bi`, a live borrow for the whole launch.
            regions.push((ext.offset_of(lo), unsafe {
                std::slice::from_raw_parts(lo as *const u8, hi - lo)
            }));
            if b.write {
                launch.edge_out.push((bi, lo..hi));
            }
        }
        // SAFETY: the edge page was claimed and released above while the worker lock is held;
        // only a launch (under that lock) writes a page's device copy while it is `Host`.
        unsafe { worker.transfer.upload(&ext.device().block, &regions) }?;
        Counters::add(
            &ctx.counters.bytes_to_device,
            regions.iter().map(|r| r.1.len() as u64).sum(),
        );
    }
    Ok(())
}

/// Pages `pages` of `ext` were just claimed (and re-read from the binding, so they lost
/// any earlier `GONE`): marks `GONE` again those that the launch's memory lost since it began
/// (`fault::watch`), and fails if it lost anything — the launch is not to act on memory that
/// may now be somebody else's.
fn replay(svc: &FaultService, watch: &LaunchWatch, ext: &Ext, pages: Range<usize>) -> Result<()> {
    let mut lost = watch.buffer();
    let held = svc.hold_events();
    watch.lost_into(&held, &mut lost);
    mark_lost(ext, pages, &lost);
    drop(held);
    match lost.first() {
        Some(r) => Err(watch::unmapped(r)),
        None => Ok(()),
    }
}

/// Moves one claimed interior run (pages `first..first + states.len()` of `ext`) to the
/// device: `Shared` (read) or `Device` (`drop_host`). Updates `states` as it goes, so that on
/// error they describe reality.
#[allow(clippy::too_many_arguments)]
fn migrate_run(
    svc: &FaultService,
    ctx: &DeviceContext,
    transfer: &mut Transfer,
    ext: &Ext,
    first: usize,
    states: &mut [Residence],
    drop_host: bool,
    watch: &LaunchWatch,
) -> Result<()> {
    let n = states.len();
    let mut present = vec![sys::PageEntry::default(); n];
    svc.pagemap
        .query(ext.page_addr(first), &mut present)
        .map_err(|e| Error::os("read /proc/self/pagemap", e))?;
    let filled = |k: usize| present[k].present() || present[k].swapped();
    let host =
        |k: usize, want_filled: bool| states[k] == Residence::Host && filled(k) == want_filled;

    let copy_runs = runs_where(n, |k| host(k, true));
    let zero_runs = runs_where(n, |k| host(k, false));
    let region = |r: &Range<usize>| {
        (
            ext.offset_of(ext.page_addr(first + r.start)),
            r.len() * PAGE,
        )
    };
    if !drop_host {
        // Protocol rule 1: write-protect before copying, so a concurrent writer waits.
        for r in &copy_runs {
            write_protect(
                &svc.backend,
                ext.page_addr(first + r.start),
                r.len() * PAGE,
                true,
            )?;
        }
    }
    let uploads: Vec<(u64, &[u8])> = copy_runs
        .iter()
        .map(|r| {
            let (off, len) = region(r);
            // SAFETY: interior pages lie wholly inside a binding, a live borrow for the whole
            // operation; they are present or swapped (pagemap), so reading does not fault
            // into the handler while we hold them claimed.
            (off, unsafe {
                std::slice::from_raw_parts(ext.page_addr(first + r.start) as *const u8, len)
            })
        })
        .collect();
    let zeros: Vec<(u64, u64)> = zero_runs
        .iter()
        .map(|r| {
            let (o, l) = region(r);
            (o, l as u64)
        })
        .collect();
    // SAFETY: the run is claimed by the caller: nothing else reads or writes its device copy.
    unsafe { transfer.upload(&ext.device().block, &uploads) }?;
    // SAFETY: as above.
    unsafe { transfer.zero(&ext.device().block, &zeros) }?;
    Counters::add(
        &ctx.counters.bytes_to_device,
        uploads.iter().map(|u| u.1.len() as u64).sum(),
    );
    Counters::add(
        &ctx.counters.bytes_zero_filled,
        zeros.iter().map(|z| z.1).sum(),
    );

    // Both copies are valid now: read runs are `Shared` (write-protected above); written
    // runs stay `Host` until their host copy is dropped, so that a failure before leaves
    // them as they are (not write-protected, so not `Shared`).
    let mut droppable: Vec<bool> = states.iter().map(|&s| s == Residence::Shared).collect();
    for r in &copy_runs {
        if drop_host {
            droppable[r.clone()].fill(true);
        } else {
            states[r.clone()].fill(Residence::Shared);
        }
    }
    for r in &zero_runs {
        // Absent on the host, valid (zero) on the device: a touch must fault (userfaultfd
        // does so already; the signal backend needs PROT_NONE).
        svc.backend
            .trap_absent(ext.page_addr(first + r.start), r.len() * PAGE)
            .map_err(|e| Error::os("mprotect(PROT_NONE)", e))?;
        states[r.clone()].fill(Residence::Device);
    }
    if drop_host {
        for r in runs(&droppable, |d| d) {
            let addr = ext.page_addr(first + r.start);
            // SAFETY: interior pages of a live borrow, claimed, valid on the device:
            // dropping the host copy loses nothing; the next touch faults and copies it back.
            let dropped = unsafe { svc.drop_host(watch, addr, r.len() * PAGE) }
                .map_err(|e| Error::os("drop host pages (UFFDIO_MOVE, MADV_DONTNEED)", e))?;
            match dropped {
                Dropped::All => states[r].fill(Residence::Device),
                Dropped::Lost { done } | Dropped::Refused { done } => {
                    states[r.start..r.start + done / PAGE].fill(Residence::Device);
                    watch.check()?;
                    return Err(Error::os(
                        "drop host pages",
                        std::io::Error::from(std::io::ErrorKind::Interrupted),
                    ));
                }
            }
        }
        // Our own discards raised REMOVE events; make sure the handler has seen them while
        // the pages are still claimed (it ignores REMOVE on claimed pages). The signal
        // backend has no events.
        if svc.backend.signal().is_none() {
            svc.sync_events();
        }
    }
    Ok(())
}

/// Maximal runs of `0..n` where `pred` holds.
fn runs_where(n: usize, pred: impl Fn(usize) -> bool) -> Vec<Range<usize>> {
    let idx: Vec<usize> = (0..n).collect();
    runs(&idx, pred)
}

impl Launch {
    /// A launch that moved nothing (every binding is accessed in place).
    pub fn nothing() -> Launch {
        Launch {
            placements: Vec::new(),
            bindings: Vec::new(),
            held: Vec::new(),
            edge_out: Vec::new(),
            watch: None,
        }
    }

    /// The launch, keeping `watch` until it is settled ([`finish`](Self::finish) reports
    /// what its memory lost meanwhile).
    pub fn watched(mut self, watch: LaunchWatch) -> Launch {
        self.watch = Some(watch);
        self
    }

    /// Releases written interior pages: they end `Device`, holding the kernel's results.
    fn release_held(&mut self) {
        for (ext, idx) in self.held.drain(..) {
            for i in idx {
                ext.cell(i).release(Residence::Device);
            }
        }
    }

    /// Settles the launch after the kernel: releases written pages, copies written edge
    /// bytes and stack bindings back, wakes deferred faults.
    pub fn finish(
        mut self,
        svc: &FaultService,
        ctx: &DeviceContext,
        transfer: &mut Transfer,
    ) -> Result<()> {
        self.release_held();
        svc.poke();
        let mut copied = 0u64;
        let mut result = Ok(());
        for (bi, r) in &self.edge_out {
            if let Placement::Mirrored { ext, .. } = &self.placements[*bi] {
                let mut bytes = vec![0u8; r.len()];
                let mut keep = |_: usize, at: usize, got: &[u8]| {
                    bytes[at..at + got.len()].copy_from_slice(got);
                    Ok(())
                };
                let region = [(ext.offset_of(r.start), r.len())];
                // SAFETY: the kernel has finished (the dispatcher waited); edge bytes belong
                // to this launch alone.
                let got = unsafe { transfer.download(&ext.device().block, &region, &mut keep) }
                    .and_then(|()| write_edge(svc, self.watch.as_ref(), r.start, &bytes));
                copied += r.len() as u64;
                result = result.and(got);
            }
        }
        for (b, p) in self.bindings.iter().zip(&self.placements) {
            if let (true, Placement::Transient { block }) = (b.write, p) {
                let mut write_back = |_: usize, at: usize, bytes: &[u8]| {
                    // SAFETY: the range lies inside a `&mut` binding on the launching
                    // thread's stack, borrowed for the launch.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            bytes.as_ptr(),
                            (b.addr + at) as *mut u8,
                            bytes.len(),
                        )
                    };
                    Ok(())
                };
                // SAFETY: the kernel has finished; the transient block is this launch's.
                let got = unsafe { transfer.download(block, &[(0, b.len)], &mut write_back) };
                copied += b.len as u64;
                result = result.and(got);
            }
        }
        Counters::add(&ctx.counters.bytes_to_host, copied);
        // A launch whose memory was unmapped while it ran fails (its pages there are `GONE`).
        let watched = self.watch.as_ref().map_or(Ok(()), LaunchWatch::check);
        result
            .and(watched)
            .and_then(|()| self.settle_preferred_host(svc, ctx, transfer))
    }

    /// Written pages advised `PreferredLocation(Host)` come home now, staying valid on the
    /// device (`Shared`): the CPU reads the results without faults.
    fn settle_preferred_host(
        &self,
        svc: &FaultService,
        ctx: &DeviceContext,
        transfer: &mut Transfer,
    ) -> Result<()> {
        let home = Advice::PreferredLocation(crate::Location::Host);
        let advised: Vec<(Arc<Ext>, Range<usize>)> = {
            let advice = ctx.advice.lock().unwrap_or_else(PoisonError::into_inner);
            let mut out = Vec::new();
            for (b, p) in self.bindings.iter().zip(&self.placements) {
                if let (true, Placement::Mirrored { ext, .. }) = (b.write, p) {
                    for (r, _) in advice
                        .within(binding_pages(b.addr, b.len).span)
                        .filter(|(_, a)| *a == home)
                    {
                        out.push((Arc::clone(ext), ext.page_span(&r)));
                    }
                }
            }
            out
        };
        for (ext, pages) in advised {
            to_host(svc, transfer, &ext, pages, true)?; // counts its bytes
        }
        Ok(())
    }
}

/// Writes a kernel's `bytes` into the part at `dst` of a written binding's edge page (the
/// rest of the page belongs to other code), unless the launch's memory lost that page: then
/// it may belong to a mapping made since, and is left alone.
///
/// With no event processed meanwhile (the gate), a page that is present, or swapped out, and
/// not write-protected is written in place: the write cannot fault into the handler (a
/// discard of a registered page waits for its event to be read first), and the copy is
/// guarded against an unmap. An absent page is filled whole by `UFFDIO_COPY` (zeros around
/// the bytes: what an absent page reads as), which refuses a mapping that is not registered
/// or is changing. A write-protected page is written without the gate: its write fault is
/// the handler's to serve. Under the `signal` backend (runtime-owned memory, unmapped only
/// under the mirror's writer lock) the bytes are written at once.
fn write_edge(
    svc: &FaultService,
    watch: Option<&LaunchWatch>,
    dst: usize,
    bytes: &[u8],
) -> Result<()> {
    let write = || {
        // SAFETY: `dst..dst + bytes.len()` lies inside a `&mut` binding borrowed for the
        // launch; a guarded copy survives a buggy program unmapping it.
        unsafe { guarded::copy(dst as *mut u8, bytes.as_ptr(), bytes.len()) }
            .map_err(|f| watch::unmapped(&(dst + f.copied..dst + bytes.len())))
    };
    let Some(watch) = watch.filter(|_| svc.backend.signal().is_none()) else {
        return write();
    };
    let page = dst - dst % PAGE;
    // Allocated before the gate is taken: nothing may be allocated while it is held.
    let mut whole = vec![0u8; PAGE];
    whole[dst - page..dst - page + bytes.len()].copy_from_slice(bytes);
    let mut lost = watch.buffer();
    let mut spins = 0;
    loop {
        let held = svc.hold_events();
        watch.lost_into(&held, &mut lost);
        if lost.iter().any(|r| r.start < page + PAGE && page < r.end) {
            return Ok(()); // the launch reports the loss
        }
        let mut entry = [sys::PageEntry::default()];
        svc.pagemap
            .query(page, &mut entry)
            .map_err(|e| Error::os("read /proc/self/pagemap", e))?;
        let e = entry[0];
        if e.uffd_wp() {
            drop(held);
            return write();
        }
        if e.present() || e.swapped() {
            return write();
        }
        // SAFETY: `whole` is readable; the page is absent, in a registered range (or the
        // copy refuses), and its absent contents read as zeros, which `whole` keeps around
        // the binding's bytes.
        match unsafe { svc.backend.copy(page, whole.as_ptr(), PAGE, false, true) } {
            Ok(_) => return Ok(()),
            Err(CopyError::Exists { .. }) => {} // filled meanwhile: present now
            Err(CopyError::Again { .. }) => {
                drop(held);
                backoff(&mut spins);
            }
            Err(CopyError::Gone(_) | CopyError::Failed(_)) => {
                return Err(watch::unmapped(&(page..page + PAGE)))
            }
        }
    }
}

impl Drop for Launch {
    fn drop(&mut self) {
        // A launch abandoned after prepare (an error before submit) still releases its pages.
        self.release_held();
    }
}
