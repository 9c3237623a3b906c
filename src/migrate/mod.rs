//! Migration: carries out the mirror's page-state transitions for the launch path, with
//! `device` and `pages` — the counterpart of the kernel's `migrate_vma_*`.
//!
//! - [`prepare`] ([`prepare.rs`](prepare)) / [`Launch::finish`] ([`launch`]): make a
//!   launch's bindings resident before submit (Vulkan has no GPU page faults) and settle
//!   them after the kernel; `prepare` with [`Purpose::Prefetch`] is `prefetch(Device)`.
//!   `prepare` runs in phases, each its own type: which memory is mirrored and registered,
//!   which extents it lies in (reused, merged or made), the pages moved ([`moves`]), where
//!   each binding is bound;
//! - [`home`]: bulk moves home (prefetch, eviction, drop, `fork()`), other runtimes' memory
//!   evacuated first;
//! - [`evict`]: reaping dead extents, eviction under the budget, retiring extents.
//!
//! It never calls the fault service: both move pages through `pages` on the process's
//! `space::AddressSpace`, which the runtime hands in.
//!
//! Ordering rules, per page:
//!
//! 1. A page is claimed (`BUSY`) before anything about it changes and released after. The
//!    handler defers faults on claimed pages, so a CPU toucher waits instead of seeing a
//!    half-moved page.
//! 2. Read bindings: write-protect first, then upload, then `Shared`, then release — a
//!    concurrent writer (only `unsafe` code can be one) blocks in a WP fault and lands its
//!    write after the snapshot was taken, moving the page to `Host`. An input the CPU
//!    rewrites after every launch (`mirror::rewrite`) is uploaded unprotected and stays
//!    `Host`: a concurrent write may or may not make the snapshot, and the next launch
//!    uploads the page again either way.
//! 3. Written bindings: upload, then drop the host copy (`space::AddressSpace::drop_host`),
//!    then `Device`; the page stays claimed until the kernel is done, so a toucher waits for
//!    the result.
//! 4. Host pages that are neither present nor swapped (`/proc/self/pagemap`) are zero on the
//!    host; the device copy is zero-filled instead of copied.
//! 5. Edge pages are never claimed across a kernel: a written binding's edge page is brought
//!    to `Host` first and its bytes are copied back after the kernel.
//! 6. Any failure releases every claimed page to the state that matches reality at that
//!    moment — a page is only dropped after its upload succeeded, so nothing is lost.
//! 7. From the moment a launch begins until it is settled, its bindings are watched for
//!    unmaps (`space::watch`); whatever its watch lost is marked `GONE` wherever the launch
//!    would leave it valid on the device, and nothing is dropped or written where the watch
//!    says memory went away (docs/architecture.md, "Races with the address space").

pub(crate) mod evict;
pub(crate) mod home;
pub(crate) mod launch;
pub(crate) mod moves;
pub(crate) mod prepare;

pub(crate) use evict::forget;
pub(crate) use home::{bring_home, evacuate_foreign, owners, to_host};
pub(crate) use launch::Launch;
pub(crate) use prepare::prepare;

use std::sync::{Arc, Mutex, PoisonError, Weak};

use crate::device::{DeviceBlock, Dispatcher, Transfer};
use crate::mirror::advice::AdviceMap;
use crate::space::{AddressSpace, Counters, Ext, Owner};
use crate::Error;
use crate::Result;

/// One runtime as the launch path sees it: the part the fault path shares ([`Owner`]), the
/// process's address space, and the launch path's own tools and state.
pub(crate) struct DeviceContext {
    pub owner: Arc<Owner>,
    pub space: &'static AddressSpace,
    /// The launch path's tools; also used for prefetch, eviction, drop and fork.
    pub worker: Mutex<Worker>,
    /// Advice given to this runtime (never locked by the fault handler).
    pub advice: Mutex<AdviceMap>,
    /// When bindings count as thrashing (`None`: never settle them in place).
    pub thrash_policy: Option<crate::mirror::thrash::ThrashPolicy>,
    /// The bounce history of this runtime's bindings (launch path only).
    pub thrash: Mutex<crate::mirror::thrash::Thrash>,
}

/// The contexts of the live runtimes: how the launch path finds, from an extent's owner,
/// the runtime whose worker moves it (`home::owners`).
static CONTEXTS: Mutex<Vec<Weak<DeviceContext>>> = Mutex::new(Vec::new());

impl DeviceContext {
    /// A runtime's context, known to [`home::owners`] from now on.
    pub fn new(
        owner: Arc<Owner>,
        space: &'static AddressSpace,
        worker: Worker,
        thrash_policy: Option<crate::mirror::thrash::ThrashPolicy>,
    ) -> Arc<DeviceContext> {
        let ctx = Arc::new(DeviceContext {
            owner,
            space,
            worker: Mutex::new(worker),
            advice: Mutex::default(),
            thrash_policy,
            thrash: Mutex::default(),
        });
        let mut all = CONTEXTS.lock().unwrap_or_else(PoisonError::into_inner);
        all.retain(|c| c.strong_count() > 0);
        all.push(Arc::downgrade(&ctx));
        ctx
    }

    /// The live context whose extents belong to `owner`.
    pub fn of(owner: &Arc<Owner>) -> Option<Arc<DeviceContext>> {
        CONTEXTS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(Weak::upgrade)
            .find(|c| Arc::ptr_eq(&c.owner, owner))
    }

    /// Whether `ext` belongs to this runtime.
    pub fn owns(&self, ext: &Ext) -> bool {
        Arc::ptr_eq(&ext.device().owner, &self.owner)
    }

    /// The counters of this runtime.
    pub fn counters(&self) -> &Counters {
        &self.owner.counters
    }

    /// The launch path's tools, with any launch in flight settled first — so that whoever
    /// moves pages next (a launch, a prefetch, eviction, `fork()`, drop) never waits on pages
    /// an unsettled kernel holds.
    pub fn lock_worker(&self) -> std::sync::MutexGuard<'_, Worker> {
        let mut w = self.worker.lock().unwrap_or_else(PoisonError::into_inner);
        w.settle(self);
        w
    }
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
    /// When traced: the launch's event (begun at the call) and its device lane.
    pub traced: Option<(crate::trace::Event, u32)>,
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
        Counters::add(&ctx.counters().kernel_ns, elapsed);
        Counters::add(&ctx.counters().launches, u64::from(ran.is_ok()));
        let settled = f.launch.finish(ctx, &mut self.transfer);
        if let Some((mut launch, lane)) = f.traced {
            let now = crate::trace::now();
            let kernel = crate::trace::Event {
                kind: crate::trace::Kind::Kernel,
                ts: now.saturating_sub(f.submitted.elapsed().as_nanos() as u64),
                dur: elapsed,
                tid: lane,
                ..launch
            };
            kernel.record();
            launch.dur = now - launch.ts;
            launch.record();
        }
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

/// Retires extents whose host memory is gone, and frees retired extents the handler no
/// longer uses.
pub(crate) fn reap(space: &AddressSpace) {
    // `munmap` returns once the handler has read its event, maybe before it was processed.
    space.sync_events();
    let mut w = space.mirror.write();
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
pub(crate) fn drain_graveyard(w: &mut crate::mirror::map::Writer<'_, crate::space::DeviceCopy>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        drop(w.collect_garbage());
        if w.graveyard_len() == 0 || std::time::Instant::now() > deadline {
            return;
        }
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
}

/// One buffer of a launch, as the migration sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Binding {
    pub addr: usize,
    pub len: usize,
    pub write: bool,
    /// The shader's binding number (for errors).
    pub number: u32,
    /// The device's offset alignment for it: a binding the device uses where it is (mirrored
    /// or in place) must start on it; one copied through starts its own block.
    pub align: u64,
}

impl Binding {
    /// [`Error::MisalignedBinding`](crate::Error::MisalignedBinding) unless it starts on its
    /// alignment (extents and imports start on pages, so the host address tells).
    pub fn check_aligned(&self) -> crate::Result<()> {
        crate::device::check_alignment(self.number, self.addr as u64, self.align)
    }
}

/// Where a binding lives on the device for one launch.
pub(crate) enum Placement {
    /// In a mirror extent at this byte offset.
    Mirrored { ext: Arc<Ext>, offset: u64 },
    /// In a temporary block (memory copied through: uploaded before the kernel, written
    /// back after it).
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

/// Why memory the runtime did not allocate cannot migrate under the `signal` backend (a
/// launch copies it through; advice refuses it).
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
