//! Resolving one CPU fault on a mirrored page — shared by the userfaultfd handler and the
//! `signal` backend's helper, which differ only in how faults reach them.
//!
//! - a touch of a `Device` page ([`copy_back`]): claim the window around it (64 KiB by
//!   default, grown on sequential access, `mirror::policy::fault_window`), install the
//!   device bytes (in two halves at once when large, `pages::halves`), release the pages
//!   `Shared` (or `Host` for the written page; all `Host` when the chunk is placed from kept
//!   host pages, [`comes_home`]), count and wake; a stream that reached the largest window
//!   reads ahead;
//! - a write to a `Shared` page ([`release_shared`]): the `Shared` pages of the window around
//!   it (one page, grown on sequential writes) lose write protection and become `Host`; a
//!   sequential writer's next window is lifted ahead of it.
//!
//! A page someone else holds (`BUSY`) is deferred ([`Outcome::Wait`]); a failed or refused
//! install releases the pages as they were and retries ([`Outcome::Retry`]). Nothing here
//! allocates, locks anything but the transfer context of its own thread, or waits for a
//! thread that may be blocked in a fault.

use std::ops::Range;
use std::sync::{Mutex, PoisonError};

use crate::device::Transfer;
use crate::mirror::page::{PageBits, Residence};
use crate::mirror::policy::{fault_window, pick_stream, Access, Window};
use crate::mirror::PAGE;
use crate::pages::halves::{install_halves, Job};
use crate::pages::install::{
    install_in_place, Failed, InstallResult, InstallStop, Installed, Kind, KEPT_MIN,
};
use crate::space::{AddressSpace, Counters, Ext};
use crate::Error;

/// What became of a fault.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Outcome {
    /// Resolved (or nothing left to resolve): the thread is awake.
    Done,
    /// The page is claimed: retry when poked.
    Wait,
    /// The address space is changing or a transfer failed: retry on a timer.
    Retry,
}

/// A write to a `Shared` page: the `Shared` pages of the window around it (one page, grown
/// on sequential writes, `mirror::policy::fault_window`) become `Host` (their device copies
/// are stale from now on). A fault that continues a sequential writer also lifts the stream's
/// next window ahead of it ([`lift_ahead`]).
pub(crate) fn release_shared(space: &AddressSpace, ext: &Ext, idx: usize) -> Outcome {
    let ctx = &ext.device().owner;
    let first = ext.start() / PAGE;
    let (slot, prev) = stream_of(ext, Access::Unprotect, first + idx);
    let w = fault_window(
        &ctx.policy,
        Access::Unprotect,
        first + idx,
        first..first + ext.pages(),
        prev,
    );
    let Some((a, b)) = claim_within(ext, idx, w.pages.start - first..w.pages.end - first, shared)
    else {
        return Outcome::Wait;
    };
    // The next fault of a sequential writer comes where the pages lifted now end. (A refused
    // lift leaves the stream alone: its retry is the same fault again.)
    let stream = || ext.set_stream(Access::Unprotect, slot, first + b, w.size);
    match lift(space, ext, a..b, stream) {
        Ok(()) => {
            // Bookkeeping before the wake: the writer may read the counters next.
            Counters::add(&ctx.counters.cpu_faults, 1);
            crate::trace::note_window((b - a) * PAGE);
            ext.note_cpu_fault();
            let _ = space.backend.wake(ext.page_addr(a), (b - a) * PAGE);
            if w.sequential && first + b == w.pages.end && !ext.reads_mostly() {
                lift_ahead(space, ext, slot);
            }
            Outcome::Done
        }
        Err(_) => Outcome::Retry,
    }
}

/// Lifts the write protection of the claimed `Shared` pages `pages` of `ext` and releases
/// them: `Host` (counted for the rewrite guess, `mirror::rewrite`) once lifted, `Shared`
/// again if the kernel refused. `stream` records where the writer's stream goes next; it
/// runs once the pages are lifted and before they are released, so that a launch claiming
/// them next finds the stream already moved and its reset of the extent's streams stands.
fn lift(
    space: &AddressSpace,
    ext: &Ext,
    pages: Range<usize>,
    stream: impl FnOnce(),
) -> std::io::Result<()> {
    let (a, b) = (pages.start, pages.end);
    let r = space
        .backend
        .write_protect(ext.page_addr(a), (b - a) * PAGE, false, false);
    let settled = if r.is_ok() {
        stream();
        ext.rewrites().lifted(b - a);
        Residence::Host
    } else {
        Residence::Shared
    };
    for i in a..b {
        ext.cell(i).release(settled);
    }
    r
}

/// A sequential writer's next window (twice the one just lifted), lifted before the writer
/// gets there, as [`read_ahead`] brings a reader's next window home: the writer's next
/// fault comes after three times as many pages, so a stream through a buffer takes about
/// half the faults, each a sleep and a cross-CPU wake-up of the writer. Lifting before the
/// writes costs the kernel no more than on a fault (a 64 MiB rewrite, lifted in doubling
/// pieces just ahead of the writes: 1.6-1.9x a plain rewrite here; on faults: 1.9-2.2x,
/// docs/performance.md). A writer that stops early leaves this window and the rest of the
/// fault's own window lifted and unwritten, up to three times what it wrote: `Host`,
/// uploaded again by the next launch that reads it. Not on an extent advised `ReadMostly`,
/// which keeps its duplicates. Nothing is counted as a CPU fault; pages not `Shared`, or
/// claimed, end the window there.
fn lift_ahead(space: &AddressSpace, ext: &Ext, slot: usize) {
    let Some((a, b, w)) = claim_next_window(ext, Access::Unprotect, slot, shared) else {
        return;
    };
    let first = ext.start() / PAGE;
    let stream = || ext.set_stream(Access::Unprotect, slot, first + b, w.size);
    if lift(space, ext, a..b, stream).is_ok() {
        // A writer that got there meanwhile waits on these pages.
        let _ = space.backend.wake(ext.page_addr(a), (b - a) * PAGE);
    }
}

fn shared(b: PageBits) -> bool {
    b.residence() == Residence::Shared
}

/// Installs the device copy of the claimed, absent pages `pages` of `ext` at their own
/// addresses as `kind` says (write protection, who wakes waiters), through `transfer` (the
/// handler's own transfer context, or the assistant's). A `Kind::Fault` install is where the
/// `FaultHandler` injection site fires.
pub(crate) fn install_claimed(
    space: &AddressSpace,
    ext: &Ext,
    pages: Range<usize>,
    transfer: &Mutex<Transfer>,
    kind: Kind,
) -> InstallResult {
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
        install_in_place(space, &mut transfer, ext, pages, kind)
    });
    match std::panic::catch_unwind(run) {
        Ok(result) => result,
        Err(_) => {
            Counters::add(&ext.device().owner.counters.handler_panics, 1);
            transfer.recover();
            // (The injected panic fires before anything is placed; a real one in the middle
            // of an install would leave what it placed unrecorded.)
            Err(Failed {
                done: Installed::NONE,
                error: Error::Os {
                    op: "the fault handler (it panicked)",
                    source: std::io::ErrorKind::Interrupted.into(),
                },
            })
        }
    }
}

/// A touch of a `Device` page: bring back the window around it.
pub(crate) fn copy_back(space: &AddressSpace, ext: &Ext, idx: usize, write: bool) -> Outcome {
    let ctx = &ext.device().owner;
    let first = ext.start() / PAGE;
    let (slot, prev) = stream_of(ext, Access::Copy, first + idx);
    let w = fault_window(
        &ctx.policy,
        Access::Copy,
        first + idx,
        first..first + ext.pages(),
        prev,
    );
    let Some((a, b)) = claim_within(ext, idx, w.pages.start - first..w.pages.end - first, device)
    else {
        return Outcome::Wait;
    };
    let home = comes_home(space, ext, b - a);
    let (done, outcome) = install_window(space, ext, a..b, write.then_some(idx), home);
    if outcome == Outcome::Done {
        // A retried fault is the same fault again, not the next one of a stream: only a
        // window installed whole moves the stream on.
        ext.set_stream(Access::Copy, slot, w.next, w.size);
    }
    if done > 0 {
        // Counted before the wake, so the faulting thread sees its own fault in `stats`.
        Counters::add(&ctx.counters.cpu_faults, 1);
        crate::trace::note_window(done * PAGE);
        ext.note_cpu_fault();
        let _ = space.backend.wake(ext.page_addr(a), done * PAGE);
    }
    if outcome == Outcome::Done && done == b - a && w.size >= ctx.policy.max && ctx.policy.adaptive
    {
        read_ahead(space, ext, slot);
    }
    outcome
}

/// The stream of `ext` a fault of kind `access` at absolute page `page` continues (its slot
/// and state), or a spare slot with no history for one that continues none.
fn stream_of(ext: &Ext, access: Access, page: usize) -> (usize, (usize, usize)) {
    let policy = &ext.device().owner.policy;
    let streams = ext.streams(access);
    match pick_stream(policy, access, page, &streams) {
        Some(slot) => (slot, streams[slot]),
        None => (ext.spare_stream(access), (usize::MAX, 0)),
    }
}

/// Whether a chunk of `pages` pages coming home for a CPU touch comes home as the only copy
/// (`Host`, writable) rather than `Shared`: where this process keeps host pages for reuse
/// (`space::kept`), a chunk large enough to be placed from them. Such pages cannot come home
/// write-protected (`pages::install`), and placing them costs a third of a fresh copy; the
/// price is that a later launch reading the chunk uploads it again, as under Linux HMM and
/// CUDA. The rule does not depend on how many pages are kept at the moment, so the state a
/// read leaves is the same whether this chunk found kept pages or was copied. An extent
/// advised `ReadMostly` keeps its duplicates: its chunks come home `Shared`, copied.
fn comes_home(space: &AddressSpace, ext: &Ext, pages: usize) -> bool {
    pages * PAGE >= KEPT_MIN && space.kept().is_some() && !ext.reads_mostly()
}

fn device(b: PageBits) -> bool {
    b.residence() == Residence::Device
}

/// A stream whose windows have grown to the largest size: installs its next window now,
/// before the CPU faults on it, so that the next fault's round trip (the toucher blocks, this
/// thread wakes, then wakes it) overlaps a copy instead of adding to it. The pages come back
/// as a read fault would bring them ([`comes_home`]); nothing is counted as a CPU fault. Pages
/// that are not `Device`, or claimed, end the window there; a failure leaves the pages
/// `Device` for the ordinary fault path.
fn read_ahead(space: &AddressSpace, ext: &Ext, slot: usize) {
    let Some((a, b, w)) = claim_next_window(ext, Access::Copy, slot, device) else {
        return;
    };
    let (done, outcome) = install_window(space, ext, a..b, None, comes_home(space, ext, b - a));
    if outcome == Outcome::Done {
        ext.set_stream(Access::Copy, slot, w.next, w.size);
    }
    if done > 0 {
        // A thread that touched these pages meanwhile waits on them.
        let _ = space.backend.wake(ext.page_addr(a), done * PAGE);
    }
}

/// Claims the pages `want` accepts of the next window of stream `slot` (faults of kind
/// `access`), from its first page on: the window a fault there would take, which the
/// read-ahead and the lift ahead serve before the CPU gets there. Returns the claimed pages
/// (indices in `ext`) and the window, or `None` when the stream has left the extent or its
/// next page is not to be had.
fn claim_next_window(
    ext: &Ext,
    access: Access,
    slot: usize,
    want: impl Fn(PageBits) -> bool + Copy,
) -> Option<(usize, usize, Window)> {
    let first = ext.start() / PAGE;
    let extent = first..first + ext.pages();
    let (next, size) = ext.streams(access)[slot];
    if !extent.contains(&next) {
        return None;
    }
    let policy = &ext.device().owner.policy;
    let w = fault_window(policy, access, next, extent, (next, size));
    let idx = next - first;
    let (a, b) = claim_within(ext, idx, idx..w.pages.end - first, want)?;
    Some((a, b, w))
}

/// Installs the claimed `Device` pages `pages` (write-protected, except page `writable`, or
/// none when `home`) and releases them to what they became; returns how many from the start
/// were installed and what becomes of the fault. Counts the bytes.
///
/// A window of at least `policy.split` pages is installed in two halves at once, the upper
/// one by the assistant (`fault::assist`); each half is released by its own outcome. When
/// the lower half stopped early, pages the upper half installed are woken here (the caller
/// wakes only the prefix it is told of).
fn install_window(
    space: &AddressSpace,
    ext: &Ext,
    pages: Range<usize>,
    writable: Option<usize>,
    home: bool,
) -> (usize, Outcome) {
    let kind = Kind::Fault { writable, home };
    let transfer = &ext.device().owner.fault_transfer;
    let halves = install_halves(ext, pages, kind, |part| {
        install_claimed(space, ext, part, transfer, kind)
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
            let _ = space
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
    installed: InstallResult,
    kind: Kind,
) -> (usize, Outcome) {
    let ctx = &ext.device().owner;
    let (a, b) = (pages.start, pages.end);
    let range = (ext.page_addr(a), (b - a) * PAGE);
    let fault = crate::trace::Home::Fault as u64;
    let (done, outcome) = match installed {
        Ok(g) => {
            Counters::add(&ctx.counters.bytes_to_host, g.bytes);
            crate::trace::moved(crate::trace::Kind::ToHost, 0, ext, range, g.bytes, fault);
            let done = g.pages_done().min(b - a);
            match g.stop {
                None => (b - a, Outcome::Done),
                Some(InstallStop::Again) => (done, Outcome::Retry),
                Some(InstallStop::Gone) => (done, Outcome::Done),
            }
        }
        Err(Failed { done, error }) => {
            tracing::error!(%error, "reading device memory for a CPU fault failed; retrying");
            Counters::add(&ctx.counters.bytes_to_host, done.bytes);
            crate::trace::moved(crate::trace::Kind::ToHost, 0, ext, range, done.bytes, fault);
            (done.pages_done().min(b - a), Outcome::Retry)
        }
    };
    for i in a..b {
        let cell = ext.cell(i);
        if i - a >= done {
            // Not installed: still `Device`, and still known zero if it was.
            cell.unclaim();
        } else if kind.write_protects(i, cell.load().zero()) {
            cell.release(Residence::Shared);
        } else {
            cell.release(Residence::Host);
        }
    }
    (done, outcome)
}

/// The assistant's half of a range: installed as its poster installs the other half, through
/// the assistant's own transfer context.
pub(crate) fn assist_install(space: &AddressSpace, job: &Job) -> InstallResult {
    // SAFETY: called while the job is served; its poster waits for the result.
    let ext = unsafe { job.ext() };
    match &ext.device().owner.assist_transfer {
        Some(transfer) => install_claimed(space, ext, job.pages.clone(), transfer, job.kind),
        // Not posted without one (`install_halves`); should it happen, the half is retried.
        // (No allocation: the assistant keeps the handler's rules.)
        None => Err(Failed {
            done: Installed::NONE,
            error: Error::Os {
                op: "the fault handler's assistant (it has no transfer context)",
                source: std::io::ErrorKind::Unsupported.into(),
            },
        }),
    }
}

/// Claims page `idx`, then extends the claim backwards and forwards within `limit` over
/// pages `want` accepts. Returns the claimed range, or `None` if `idx` itself is taken.
pub(crate) fn claim_within(
    ext: &Ext,
    idx: usize,
    limit: Range<usize>,
    want: impl Fn(PageBits) -> bool + Copy,
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
