//! What an extent's device copy belongs to: the runtime that owns it, as the fault path sees
//! it (its device, counters, fault-back policy and the transfer contexts of the threads that
//! resolve faults). The launch path's own tools stay with the runtime (`migrate`); an extent
//! names only this part, so the fault service never reaches the launch path through it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::device::{Device, DeviceBlock, Transfer};
use crate::mirror::extent::Extent;
use crate::mirror::policy::ChunkPolicy;

/// The device copy of an extent: a pool block and the runtime it belongs to.
pub(crate) struct DeviceCopy {
    pub block: DeviceBlock,
    pub owner: Arc<Owner>,
    /// The call site of the launch that last placed the extent (`trace`; 0 untraced).
    pub site: crate::trace::SiteCell,
}

/// An extent of the process-wide mirror.
pub(crate) type Ext = Extent<DeviceCopy>;

/// A runtime, as the fault path sees it.
pub(crate) struct Owner {
    pub device: Arc<Device>,
    pub counters: Counters,
    pub policy: ChunkPolicy,
    /// The transfer context of the thread that resolves faults (nobody else locks it).
    pub fault_transfer: Mutex<Transfer>,
    /// The transfer context of that thread's assistant (`pages::halves`; nobody else locks
    /// it); `None` where windows are never split (one CPU, or parallel fault-back off).
    pub assist_transfer: Option<Mutex<Transfer>>,
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
    pub copied_to_device: AtomicU64,
    pub copied_to_host: AtomicU64,
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
