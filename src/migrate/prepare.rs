//! Preparing a launch (or a `prefetch(Device)`), in phases, each its own type:
//!
//! 1. [`Memory`]: which bindings are mirrored and which copied through (memory that cannot
//!    migrate: files, shared and read-only mappings, the stack), classified from
//!    `/proc/self/maps`; the mirrored ones registered and checked mapped;
//! 2. [`Extents`]: which extents the mirrored spans lie in — reused, merged from
//!    overlapping ones, or made — with their device copies allocated (evicting when the
//!    budget is short), published with what their parts lost;
//! 3. the pages moved (`moves::move_pages`), into a [`Launch`];
//! 4. each binding placed: its extent and offset, or a temporary block for memory copied
//!    through.
//!
//! The caller holds the runtime's worker and the launch's watch; a failure releases every
//! claimed page to the state that matches reality.

use std::ops::Range;
use std::sync::Arc;

use super::evict::{alloc_evicting, evict};
use super::home::{owned_overlapping, to_host};
use super::moves::{carry_losses, move_pages};
use super::{reap, Binding, DeviceContext, Launch, Placement, Purpose, Worker};
use crate::device::{DeviceBlock, Transfer};
use crate::mirror::extent::Extent;
use crate::mirror::map::Writer;
use crate::mirror::page::Residence;
use crate::mirror::plan::{binding_pages, page_roles, plan_groups, Group};
use crate::mirror::PAGE;
use crate::pages::{claim_all, release_all, runs, write_protect};
use crate::space::watch::{self, LaunchWatch};
use crate::space::{AddressSpace, Counters, DeviceCopy, Ext};
use crate::sys;
use crate::trap::{signal, Backend};
use crate::{Error, MemoryReason, Result};

/// Makes `bindings` resident on `ctx`'s device. The caller holds `worker` (the context's
/// worker lock) and has called [`evacuate_foreign`](super::evacuate_foreign) for the bindings' spans.
///
/// The caller watches the bindings' pages (`space::watch`) from the moment the launch
/// begins, before anything is decided about them, until it is settled (it hands the watch
/// to the launch with [`Launch::watched`]). A launch whose memory another thread unmaps or moves
/// meanwhile fails with [`MemoryReason::UnmappedWhileInUse`]: the pages of the lost range
/// end `GONE` (no device copy of them is ever taken for memory mapped there later), and the
/// host pages of whatever is mapped there now are never dropped or written.
pub(crate) fn prepare(
    space: &AddressSpace,
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
    let launch = prepare_watched(space, ctx, worker, bindings, purpose, watch).map_err(lost)?;
    // An unmap read while the pages moved: the launch must not run (dropping it releases
    // its pages; those of the lost range end `GONE`).
    watch.check()?;
    Ok(launch)
}

/// [`prepare`], short of the last check of the watch.
fn prepare_watched(
    space: &AddressSpace,
    ctx: &Arc<DeviceContext>,
    worker: &mut Worker,
    bindings: &[Binding],
    purpose: Purpose,
    watch: &LaunchWatch,
) -> Result<Launch> {
    reap(space);
    worker.stamp += 1;
    let memory = Memory::find(space, bindings, purpose)?;
    // Memory mirrored before and bound now in a binding that is copied through (with memory
    // that cannot be mirrored, or a page of it) comes home first: the copies read and write
    // the host pages, which must hold the bytes and take writes without a fault.
    for span in memory.copied_spans() {
        if space.mirror.overlapping(span.clone()).is_empty() {
            continue; // the common case (a file, the stack): nothing of it ever migrated
        }
        let w = space.mirror.write();
        for e in owned_overlapping(&w, ctx, &span) {
            to_host(space, &mut worker.transfer, &e, e.page_span(&span), false)?;
        }
    }
    let mut w = space.mirror.write();
    let extents = Extents::plan(space, ctx, &mut w, &mut worker.transfer, &memory, watch)?;
    extents.touch(worker.stamp);
    let mut launch = Launch::new(bindings);
    let roles = page_roles(
        &memory
            .mirrored
            .iter()
            .map(|&i| (bindings[i].addr, bindings[i].len, bindings[i].write))
            .collect::<Vec<_>>(),
    );
    let ext_of = |addr: usize| extents.holding(addr);
    let moved = move_pages(
        space,
        ctx,
        worker,
        &roles,
        &ext_of,
        purpose,
        &mut launch,
        bindings,
        &memory.mirrored,
        watch,
    );
    drop(w);
    let placed =
        moved.and_then(|()| place(space, ctx, worker, &mut launch, &memory, &extents, purpose));
    if let Err(e) = placed {
        launch.release_held();
        return Err(e);
    }
    Ok(launch)
}

/// Phase 1: the launch's memory, classified and registered.
struct Memory {
    /// The bindings that are mirrored, by index, and their page spans.
    mirrored: Vec<usize>,
    spans: Vec<Range<usize>>,
    /// Whether each binding is copied through instead (see [`copy_through`]).
    copied: Vec<bool>,
    /// The bindings (copied, for the phases after this one).
    bindings: Vec<Binding>,
}

impl Memory {
    /// Classifies and registers the memory of `bindings`.
    ///
    /// Bindings wholly inside live extents were classified and registered when they were
    /// first mirrored, and any unmap or remap since would have marked their pages gone: such
    /// a launch skips `/proc/self/maps` (~0.2 ms) and registration.
    fn find(space: &AddressSpace, bindings: &[Binding], purpose: Purpose) -> Result<Memory> {
        let known = {
            let snap = space.mirror.snapshot();
            bindings.iter().all(|b| {
                let span = binding_pages(b.addr, b.len).span;
                snap.iter().any(|e| {
                    e.start() <= span.start
                        && span.end <= e.end()
                        && e.page_span(&span).all(|i| !e.cell(i).load().gone())
                })
            })
        };
        let copied = if known {
            vec![false; bindings.len()]
        } else {
            copy_through(space, bindings, purpose)?
        };
        let mirrored: Vec<usize> = (0..bindings.len()).filter(|&i| !copied[i]).collect();
        for &i in &mirrored {
            bindings[i].check_aligned()?;
        }
        let spans = mirrored
            .iter()
            .map(|&i| binding_pages(bindings[i].addr, bindings[i].len).span)
            .collect();
        let memory = Memory {
            mirrored,
            spans,
            copied,
            bindings: bindings.to_vec(),
        };
        if !known {
            // A range unmapped before it was registered raised no event, and registering
            // skips holes: check that every page is mapped now, and register again, so that
            // whatever is mapped there (if another thread mapped something in between) is
            // registered too. From here on every change of the spans is an event the watch
            // records.
            memory.register(space)?;
            for (span, &i) in memory.spans.iter().zip(&memory.mirrored) {
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
            memory.register(space)?;
        }
        Ok(memory)
    }

    /// Registers the mirrored spans with the trap backend (idempotent).
    fn register(&self, space: &AddressSpace) -> Result<()> {
        self.spans
            .iter()
            .zip(&self.mirrored)
            .try_for_each(|(span, &i)| {
                space
                    .register(span.clone())
                    .map_err(|_| Error::UnsupportedMemory {
                        addr: self.bindings[i].addr,
                        len: self.bindings[i].len,
                        reason: MemoryReason::Refused,
                    })
            })
    }

    /// The bindings copied through.
    fn copied_bindings(&self) -> impl Iterator<Item = &Binding> + '_ {
        self.bindings
            .iter()
            .zip(&self.copied)
            .filter_map(|(b, &c)| c.then_some(b))
    }

    /// The page spans of the bindings copied through.
    fn copied_spans(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        self.copied_bindings()
            .map(|b| binding_pages(b.addr, b.len).span)
    }

    /// Bytes of temporary blocks for the bindings copied through.
    fn transient_bytes(&self) -> u64 {
        self.copied_bindings()
            .map(|b| b.len.next_multiple_of(4) as u64)
            .sum()
    }
}

/// Which of `bindings` are copied through rather than mirrored, from `/proc/self/maps`.
///
/// Mirrored: private, anonymous, read-write memory (under the `signal` backend, only memory
/// the runtime allocated). Copied through: everything else a kernel may use — file and
/// shared mappings, hugetlbfs, read-only memory, the launching thread's stack, and under
/// the `signal` backend any other memory — and every binding that shares a page with a
/// copied one (a page cannot both migrate and stay). Refused, with nothing moved: gaps,
/// memory the process cannot read, and memory a kernel writes that it cannot write (a
/// prefetch writes nothing).
fn copy_through(space: &AddressSpace, bindings: &[Binding], purpose: Purpose) -> Result<Vec<bool>> {
    let first = bindings.first().map_or((0, 0), |b| (b.addr, b.len));
    let maps = sys::Maps::read().map_err(|reason| Error::UnsupportedMemory {
        addr: first.0,
        len: first.1,
        reason,
    })?;
    let under_signal = space.backend.signal().is_some();
    let stack = maps.stack_of_current_thread();
    let spans: Vec<_> = bindings
        .iter()
        .map(|b| binding_pages(b.addr, b.len).span)
        .collect();
    let mut copied = Vec::with_capacity(bindings.len());
    for (b, span) in bindings.iter().zip(&spans) {
        if under_signal && signal::is_managed(span) {
            // Runtime-owned memory: mirrored. Its pages may be protected by now, which the
            // maps would read as memory the process cannot use.
            copied.push(false);
            continue;
        }
        let access = maps
            .access(b.addr, b.len, b.write && purpose == Purpose::Kernel)
            .map_err(|reason| Error::UnsupportedMemory {
                addr: b.addr,
                len: b.len,
                reason,
            })?;
        let on_stack = stack
            .as_ref()
            .is_some_and(|s| span.start < s.end && s.start < span.end);
        copied.push(access != sys::Access::Mirror || under_signal || on_stack);
    }
    // A binding that shares a page with a copied one is copied too.
    let mut changed = true;
    while changed {
        changed = false;
        for i in 0..bindings.len() {
            if !copied[i]
                && (0..bindings.len()).any(|j| {
                    copied[j] && spans[i].start < spans[j].end && spans[j].start < spans[i].end
                })
            {
                copied[i] = true;
                changed = true;
            }
        }
    }
    Ok(copied)
}

/// Phase 2: the extents the launch's spans lie in.
struct Extents {
    /// One per group of overlapping spans.
    exts: Vec<Arc<Ext>>,
    /// The group of each mirrored binding.
    group_of: Vec<usize>,
    /// The groups' ranges: not to be evicted for this launch.
    keep: Vec<Range<usize>>,
}

/// What the plan takes from a snapshot: a group's range, its reusable extent (of this
/// runtime), and the extents it absorbs.
type Planned = (Range<usize>, Option<Arc<Ext>>, Vec<Arc<Ext>>);

impl Extents {
    /// Plans the groups of `memory`'s spans against the mirror (`mirror::plan`), makes room
    /// under the budget, and builds the groups' extents: reused, or merged from the extents
    /// they overlap onto a new device block.
    fn plan(
        space: &AddressSpace,
        ctx: &Arc<DeviceContext>,
        w: &mut Writer<'_, DeviceCopy>,
        transfer: &mut Transfer,
        memory: &Memory,
        watch: &LaunchWatch,
    ) -> Result<Extents> {
        let budget = ctx.owner.device.pool().budget();
        let transient = memory.transient_bytes();
        let group_bytes =
            |groups: &[Group]| groups.iter().map(|g| g.range.len() as u64).sum::<u64>() + transient;
        let own = group_bytes(&plan_groups(&[], &memory.spans).0);
        if own > budget {
            return Err(Error::LaunchExceedsBudget {
                needed: own,
                budget,
            });
        }
        let mut snap = w.snapshot();
        let existing: Vec<Range<usize>> = snap.iter().map(|e| e.range()).collect();
        let (mut groups, mut group_of) = plan_groups(&existing, &memory.spans);
        let merging = groups.iter().any(|g| !g.absorb.is_empty());
        let in_use = ctx.owner.device.pool().in_use();
        if group_bytes(&groups) > budget || (merging && in_use + group_bytes(&groups) > budget) {
            // The launch fits, but extents it overlaps (typically neighbours in the heap that
            // share an edge page, or earlier slices of the same buffer) would grow it past
            // the budget, or cannot be merged while their old blocks are still held: send
            // them home first.
            let neighbours: Vec<Arc<Ext>> = groups
                .iter()
                .flat_map(|g| g.absorb.iter().chain(g.reuse.iter()))
                .map(|&j| Arc::clone(&snap[j]))
                .collect();
            if neighbours.iter().any(|e| !ctx.owns(e)) {
                return Err(Error::LaunchExceedsBudget {
                    needed: group_bytes(&groups),
                    budget,
                });
            }
            drop(snap);
            evict(space, w, transfer, neighbours)?;
            memory.register(space)?; // eviction stopped trapping the evicted ranges
            snap = w.snapshot();
            let existing: Vec<Range<usize>> = snap.iter().map(|e| e.range()).collect();
            (groups, group_of) = plan_groups(&existing, &memory.spans);
        }
        let keep: Vec<Range<usize>> = groups.iter().map(|g| g.range.clone()).collect();
        // Take what the plan needs out of the snapshot and let it go: a snapshot keeps every
        // extent (and its device memory) alive, and eviction below must be able to free some.
        let planned: Vec<Planned> = groups
            .iter()
            .map(|g| {
                let own = g
                    .reuse
                    .filter(|&j| ctx.owns(&snap[j]))
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
        let exts = build(space, ctx, w, transfer, planned, &keep, watch)?;
        Ok(Extents {
            exts,
            group_of,
            keep,
        })
    }

    /// Marks every extent used by this launch (for eviction order).
    fn touch(&self, stamp: u64) {
        for e in &self.exts {
            e.touch(stamp);
        }
    }

    /// The extent holding `addr` (which lies in a planned span).
    fn holding(&self, addr: usize) -> &Arc<Ext> {
        self.exts
            .iter()
            .find(|e| e.contains(addr))
            .expect("every span lies in a planned extent")
    }
}

/// Builds the planned groups' extents: a reusable one as it is, else a new block with the
/// absorbed extents merged onto it. Extents merged so far replace the ones they absorbed even
/// when a later group fails: the absorbed ones keep their pages claimed for good. The new
/// extents take over what the old ones lost since they were claimed, and what the watch says
/// the bindings lost before any extent covered them: from then on the handler marks the new
/// extents.
fn build(
    space: &AddressSpace,
    ctx: &Arc<DeviceContext>,
    w: &mut Writer<'_, DeviceCopy>,
    transfer: &mut Transfer,
    planned: Vec<Planned>,
    keep: &[Range<usize>],
    watch: &LaunchWatch,
) -> Result<Vec<Arc<Ext>>> {
    let mut exts: Vec<Arc<Ext>> = Vec::with_capacity(planned.len());
    let mut retired: Vec<Arc<Ext>> = Vec::new();
    let mut added: Vec<Arc<Ext>> = Vec::new();
    let mut failure = None;
    for (range, own, absorbed) in planned {
        if let Some(ext) = own {
            exts.push(ext);
            continue;
        }
        let made = alloc_evicting(space, ctx, w, transfer, range.len() as u64, keep)
            .and_then(|block| merge(&space.backend, ctx, transfer, range, block, &absorbed));
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
    if !retired.is_empty() || !added.is_empty() {
        w.replace(&retired, added.iter().cloned());
        // A round of the handler that began before the new extents were published may
        // still mark the old ones: let it end, then carry what it marked over.
        space.sync_events();
        carry_losses(&retired, &added, &watch.lost());
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(exts),
    }
}

/// Phase 4: each binding's placement, in binding order; memory copied through gets a
/// temporary block with its bytes uploaded (a prefetch places nothing of it: there is
/// nothing to move ahead of time).
fn place(
    space: &AddressSpace,
    ctx: &Arc<DeviceContext>,
    worker: &mut Worker,
    launch: &mut Launch,
    memory: &Memory,
    extents: &Extents,
    purpose: Purpose,
) -> Result<()> {
    let mut mirrored_k = 0;
    for (i, b) in memory.bindings.iter().enumerate() {
        if memory.mirrored.get(mirrored_k) == Some(&i) {
            let ext = Arc::clone(&extents.exts[extents.group_of[mirrored_k]]);
            if crate::trace::on() {
                // The site a later fault or move of these pages names.
                let site = crate::trace::current_site();
                ext.device()
                    .site
                    .store(site, std::sync::atomic::Ordering::Relaxed);
            }
            let offset = ext.offset_of(b.addr);
            launch.placements.push(Placement::Mirrored { ext, offset });
            mirrored_k += 1;
            continue;
        }
        if purpose == Purpose::Prefetch {
            continue;
        }
        let mut w = space.mirror.write();
        let size = b.len.next_multiple_of(4) as u64;
        let block = alloc_evicting(
            space,
            ctx,
            &mut w,
            &mut worker.transfer,
            size,
            &extents.keep,
        );
        drop(w);
        let block = block?;
        let t0 = crate::trace::clock();
        // SAFETY: the binding is a live borrow of `len` readable bytes.
        let src = unsafe { std::slice::from_raw_parts(b.addr as *const u8, b.len) };
        // SAFETY: the block is fresh and this launch's alone.
        unsafe { worker.transfer.upload(&block, &[(0, src)]) }?;
        Counters::add(&ctx.owner.counters.copied_to_device, b.len as u64);
        if crate::trace::on() {
            let mut e = crate::trace::Event::here(crate::trace::Kind::CopyIn).range(b.addr, b.len);
            (e.dur, e.ts) = (e.ts - t0, t0);
            (e.bytes, e.a) = (b.len as u64, u64::from(b.number));
            e.record();
        }
        launch.placements.push(Placement::Transient { block });
    }
    Ok(())
}

/// Builds the extent `range` on `block`, taking over the pages of `absorbed` extents: their
/// pages are claimed for good (the old extents are retired by the caller), pages valid on
/// this device are copied device-to-device, and pages valid only on another device (which
/// [`evacuate_foreign`](super::evacuate_foreign) should have brought home) make the call fail so the caller retries.
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
        if ctx.owns(old) {
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
            owner: Arc::clone(&ctx.owner),
            site: Default::default(),
        },
        |i| init[i],
    );
    Ok(Arc::new(ext))
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
    if ctx.owns(old) {
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
