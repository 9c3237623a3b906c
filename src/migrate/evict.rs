//! Reaping, eviction and retirement: extents leave the mirror here.
//!
//! A retired extent first brings its data home (`home::to_host`), is taken out of the
//! mirror, stops being trapped where its mapping is still the one it knew, and waits in the
//! mirror's graveyard until the fault handler can no longer be reading it; only then is its
//! device memory freed.

use std::ops::Range;
use std::sync::{Arc, PoisonError};

use super::drain_graveyard;
use super::home::{owned_overlapping, to_host};
use super::DeviceContext;
use crate::device::{DeviceBlock, Transfer};
use crate::mirror::advice::Advice;
use crate::mirror::map::Writer;
use crate::mirror::policy::{lru_victims, Candidate};
use crate::mirror::PAGE;
use crate::space::{AddressSpace, Counters, DeviceCopy, Ext};
use crate::{Error, Result};

/// Frees the device copies of `victims` to make room, counted as evictions (see
/// [`retire`]).
pub(crate) fn evict(
    space: &AddressSpace,
    w: &mut Writer<'_, DeviceCopy>,
    transfer: &mut Transfer,
    victims: Vec<Arc<Ext>>,
) -> Result<()> {
    for v in &victims {
        Counters::add(&v.device().owner.counters.evictions, 1);
        if crate::trace::on() {
            crate::trace::Event::here(crate::trace::Kind::Evict)
                .range(v.start(), v.bytes())
                .ext(v)
                .record();
        }
    }
    retire(space, w, transfer, victims)
}

/// Frees the device copies of `victims`: brings their data home, retires them, stops
/// trapping their ranges, and waits until their device memory is really released.
pub(crate) fn retire(
    space: &AddressSpace,
    w: &mut Writer<'_, DeviceCopy>,
    transfer: &mut Transfer,
    victims: Vec<Arc<Ext>>,
) -> Result<()> {
    for v in &victims {
        to_host(space, transfer, v, 0..v.pages(), false)?;
    }
    w.replace(&victims, []);
    // Nothing of them is mirrored any more: stop trapping faults there — only where the
    // mapping is still the one the mirror knew. A `GONE` page's addresses may hold memory
    // mapped since, which another launch may have registered; the gate keeps an unmap from
    // being processed while this looks.
    let held = space.hold_events();
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
            let _ = space
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
pub(crate) fn alloc_evicting(
    space: &AddressSpace,
    ctx: &Arc<DeviceContext>,
    w: &mut Writer<'_, DeviceCopy>,
    transfer: &mut Transfer,
    size: u64,
    keep: &[Range<usize>],
) -> Result<DeviceBlock> {
    match ctx
        .owner
        .device
        .alloc_block(size, crate::device::BlockInit::Uninit, "vkhmm extent")
    {
        Err(Error::OutOfDeviceMemory { .. }) => {}
        other => return other,
    }
    let snap = w.snapshot();
    let cands: Vec<&Arc<Ext>> = snap
        .iter()
        .filter(|e| ctx.owns(e))
        .filter(|e| !keep.iter().any(|k| k.start < e.end() && e.start() < k.end))
        .collect();
    let need = size.saturating_sub(
        ctx.owner
            .device
            .pool()
            .budget()
            .saturating_sub(ctx.owner.device.pool().in_use()),
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
            budget: ctx.owner.device.pool().budget(),
            in_use: ctx.owner.device.pool().in_use(),
        });
    };
    let victims: Vec<Arc<Ext>> = order.iter().map(|&i| Arc::clone(cands[i])).collect();
    drop(cands);
    drop(snap);
    evict(space, w, transfer, victims)?;
    ctx.owner
        .device
        .alloc_block(size, crate::device::BlockInit::Uninit, "vkhmm extent")
}

/// Takes every extent of `owner` that overlaps `span` out of the mirror (data home first,
/// see [`retire`]): the range is not mirrored any more. For `Advice::AccessInPlace`.
pub(crate) fn forget(
    space: &AddressSpace,
    owner: &Arc<DeviceContext>,
    span: Range<usize>,
) -> Result<()> {
    let mut worker = owner.lock_worker();
    let mut w = space.mirror.write();
    let exts = owned_overlapping(&w, owner, &span);
    retire(space, &mut w, &mut worker.transfer, exts)
}
