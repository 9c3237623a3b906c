//! Copying the device copy of claimed, absent pages into place with `UFFDIO_COPY` (or the
//! `signal` backend's equivalent): the fault handler's windows, its assistant's halves and
//! bulk moves home all install this way. Nothing here allocates: the handler calls it.
//!
//! Pages installed writable in runs of [`KEPT_MIN`] or more are filled from the host pages
//! kept for reuse (`space::kept`) while there are any: the device bytes are copied into a
//! kept page, which is moved into place (`UFFDIO_MOVE`), instead of `UFFDIO_COPY` allocating
//! a new one. Pages installed write-protected never come from there: a moved page arrives
//! writable, and a write between the move and the protection would be lost to the device
//! copy.

use std::ops::Range;

use crate::device::Transfer;
use crate::mirror::PAGE;
use crate::space::kept::Kept;
use crate::space::{AddressSpace, Ext};
use crate::trap::uffd::{CopyError, Uffd};
use crate::trap::Backend;
use crate::{Error, Result};

/// What a job is for, which says how its pages are installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Serving a CPU fault: write-protected except page `writable`, or none of them when
    /// `home` (the chunk comes home as the only copy); waiters stay asleep until the handler
    /// has done its bookkeeping and wakes them.
    Fault { writable: Option<usize>, home: bool },
    /// A bulk move home (`prefetch(Host)`, eviction, drop): write-protected iff `protect`;
    /// waiters wake as their pages land.
    Bulk { protect: bool },
}

impl Kind {
    /// Whether page `i` is installed write-protected; `zero`: whether it is known zero
    /// (nothing ever wrote it), which a chunk coming `home` leaves `Shared` all the same: its
    /// device copy stays valid at no cost, and it is filled without reading the device.
    pub fn write_protects(self, i: usize, zero: bool) -> bool {
        match self {
            Kind::Fault { writable, home } => Some(i) != writable && (!home || zero),
            Kind::Bulk { protect } => protect,
        }
    }

    /// Whether waiters wake as their pages land (a fault's poster wakes them itself).
    pub fn wakes_waiters(self) -> bool {
        matches!(self, Kind::Bulk { .. })
    }
}

/// Why an [`install`] stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InstallStop {
    /// The address space is changing (`EAGAIN`): release the pages and retry later.
    Again,
    /// The host range is gone (`ENOENT`/`ESRCH`): the pages will be marked `GONE`.
    Gone,
}

/// Result of an [`install`]: bytes installed from the device copy, bytes installed as
/// zeros (pages known to be zero), pages found already present, or a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Installed {
    pub bytes: u64,
    pub zeroed: u64,
    pub already_present: u64,
    pub stop: Option<InstallStop>,
}

/// An [`install`] that failed: the pages it had put in place before the failure (from the
/// start of the range; the caller must record them as installed), and the failure.
#[derive(Debug)]
pub(crate) struct Failed {
    pub done: Installed,
    pub error: Error,
}

impl From<Failed> for Error {
    fn from(f: Failed) -> Error {
        f.error
    }
}

/// What an [`install`] did: all of it or up to a stop, or up to a failure.
pub(crate) type InstallResult = std::result::Result<Installed, Failed>;

impl Installed {
    /// Nothing installed yet.
    pub const NONE: Installed = Installed {
        bytes: 0,
        zeroed: 0,
        already_present: 0,
        stop: None,
    };

    /// Pages from the start of the range that are in place: installed either way, or
    /// found present.
    pub fn pages_done(&self) -> usize {
        ((self.bytes + self.zeroed) as usize) / PAGE + self.already_present as usize
    }
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
    space: &AddressSpace,
    transfer: &mut Transfer,
    ext: &Ext,
    pages: Range<usize>,
    kind: Kind,
) -> InstallResult {
    let dst = ext.page_addr(pages.start);
    let guarded = matches!(kind, Kind::Bulk { .. }) && space.backend.signal().is_none();
    install(
        &space.backend,
        space.kept(),
        transfer,
        ext,
        pages,
        dst,
        |i| kind.write_protects(i, ext.cell(i).load().zero()),
        kind.wakes_waiters(),
        guarded.then_some(space),
    )
}

/// Copies the device copy of the claimed, absent pages `pages` of `ext` into host memory at
/// `dst` (the address of the first page; normally `ext.page_addr(pages.start)`), page `i`
/// write-protected iff `wp(i)`; writable runs take `kept` pages where there are any. With
/// `wake` false, threads waiting on the pages stay asleep until the caller wakes them
/// (`Backend::wake`) after its bookkeeping. With `events`, each
/// piece is copied holding that service's gate, pages gone since they were claimed skipped
/// (counted as already present; `dst` must then be the pages' own address). When reading the
/// device copy fails part-way, the error comes with the pages already in place ([`Failed`]):
/// they are present on the host and must be released as installed. Allocates nothing: the
/// fault handler calls it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn install(
    trap: &Backend,
    kept: Option<&Kept>,
    transfer: &mut Transfer,
    ext: &Ext,
    pages: Range<usize>,
    dst: usize,
    wp: impl Fn(usize) -> bool,
    wake: bool,
    events: Option<&AddressSpace>,
) -> InstallResult {
    let mut out = Installed::NONE;
    // Each run of pages alike in protection and in being known zero is copied in one go.
    let zero = |i: usize| ext.cell(i).load().zero();
    let mut i = pages.start;
    while i < pages.end && out.stop.is_none() {
        let (flag, zeros) = (wp(i), zero(i));
        let mut j = i + 1;
        while j < pages.end && wp(j) == flag && zero(j) == zeros {
            j += 1;
        }
        let run_dst = dst + (i - pages.start) * PAGE;
        let offset = ext.offset_of(ext.page_addr(i));
        let len = (j - i) * PAGE;
        let mut stop = None;
        let mut place = |at: usize, bytes: &[u8]| {
            let before = out.bytes;
            let r = match events {
                None => copy_piece(trap, kept, run_dst + at, bytes, flag, wake, &mut out),
                Some(space) => {
                    let _held = space.hold_events_shared();
                    copy_live(trap, kept, ext, run_dst + at, bytes, flag, wake, &mut out)
                }
            };
            if zeros {
                // Zeros nobody wrote are not bytes from the device.
                out.zeroed += out.bytes - before;
                out.bytes = before;
            }
            r.map_err(|s| {
                stop = Some(s);
                Error::Os {
                    op: "UFFDIO_COPY",
                    source: std::io::ErrorKind::Interrupted.into(),
                }
            })
        };
        let r = if zeros {
            // A page nothing ever wrote: zeros from memory no one writes, nothing read from
            // the device. (`UFFDIO_ZEROPAGE` cannot write-protect atomically: a write between
            // it and the protection would be lost.)
            (0..len)
                .step_by(ZEROS.len())
                .try_for_each(|at| place(at, &ZEROS[..ZEROS.len().min(len - at)]))
        } else {
            // SAFETY: pages `i..j` are claimed by the caller, so nothing else reads or writes
            // their device copy (claims are the mirror's exclusion rule for device ranges).
            unsafe {
                transfer.download(
                    &ext.device().block,
                    &[(offset, len)],
                    &mut |_, at, bytes| place(at, bytes),
                )
            }
        };
        match (r, stop) {
            (_, Some(s)) => out.stop = Some(s),
            // Pieces placed before the failure are in place: say so, or the caller would
            // leave present pages recorded as `Device`.
            (Err(error), None) => return Err(Failed { done: out, error }),
            (Ok(()), None) => {}
        }
        i = j;
    }
    Ok(out)
}

/// The source of pages known to be zero: never written, so it stays zero (and shares the
/// kernel's zero page).
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// [`copy_piece`] of the pages of `ext` at `dst` that are not `GONE`; gone ones are counted
/// as already present. Call holding the gate.
#[allow(clippy::too_many_arguments)]
fn copy_live(
    trap: &Backend,
    kept: Option<&Kept>,
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
        copy_piece(trap, kept, dst + at, &bytes[at..end], wp, wake, out)?;
        at = end;
    }
    Ok(())
}

/// `UFFDIO_COPY` of one piece, skipping pages that are already present; a writable piece of
/// at least [`KEPT_MIN`] bytes is placed from `kept` pages first, as far as they go.
///
/// One `UFFDIO_COPY` must lie inside one VMA (`ENOENT` otherwise), and an extent may span
/// several: the program can split its mapping after the mirror recorded it (`mprotect`,
/// `madvise`, a malloc heap growing). So `ENOENT` on more than a page halves the request
/// until it fits; only a single page that reports `ENOENT` is really gone.
fn copy_piece(
    trap: &Backend,
    kept: Option<&Kept>,
    dst: usize,
    bytes: &[u8],
    wp: bool,
    wake: bool,
    out: &mut Installed,
) -> Result<(), InstallStop> {
    let mut done = 0;
    if let (Some(kept), Backend::Uffd(uffd), false) = (kept, trap, wp) {
        if bytes.len() >= KEPT_MIN {
            // Whatever stopped a move there (a present page, an event, a split mapping, a
            // page the kernel would not move) the copies below meet or not, and deal with.
            done = from_kept(uffd, kept, dst, bytes, wake);
            out.bytes += done as u64;
        }
    }
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

/// Least piece placed from kept pages: a smaller one (an isolated touch) is one
/// `UFFDIO_COPY`, where the two calls of a move cost more than they save.
pub(crate) const KEPT_MIN: usize = 16 * PAGE;

/// Places the writable pages `dst..dst + bytes.len()` from `kept` pages, chunk by chunk: the
/// bytes are copied into the kept pages, which move into place (waking their waiters iff
/// `wake`). Returns the bytes placed from the start; stops where the kept pages run out or a
/// move stops (the pages it left behind spoil their chunk, `space::kept`).
fn from_kept(uffd: &Uffd, kept: &Kept, dst: usize, bytes: &[u8], wake: bool) -> usize {
    let mut done = 0;
    while let Some(lease) = kept.take((bytes.len() - done) / PAGE) {
        let n = lease.len();
        // SAFETY: the leased pages are present, writable and this thread's alone (the chunk
        // is held), and no mirrored memory; `bytes[done..done + n]` is readable.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes[done..].as_ptr(), lease.addr() as *mut u8, n)
        };
        // SAFETY: the destination pages are claimed by the caller and absent; the source is
        // the leased pages, now holding their bytes.
        let moved = match unsafe { uffd.move_whole(dst + done, lease.addr(), n, wake) } {
            Ok(m) => m,
            Err(e) => e.copied(),
        };
        lease.moved(moved);
        done += moved;
        if moved < n {
            break;
        }
    }
    done
}
