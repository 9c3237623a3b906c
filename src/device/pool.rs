//! The device memory pool: [`DeviceBlock`]s carved by gpu-allocator, under a byte budget.
//!
//! All blocks come from one memory type, chosen the way gpu-allocator chooses for
//! `MemoryLocation::GpuOnly`: the first `DEVICE_LOCAL` type a storage buffer may live in.
//! [`DevicePool::new`] asks a probe buffer for its `memoryTypeBits` and repeats that choice,
//! so [`DeviceInfo::pool_memory_type`](super::DeviceInfo::pool_memory_type) names the type
//! actually used (the specification makes `memoryTypeBits` the same for every buffer created
//! with the same usage and flags). On a discrete GPU that is VRAM the CPU cannot map; on an
//! integrated GPU or lavapipe it is host-visible too, and gpu-allocator maps every block of a
//! `HOST_VISIBLE` type whatever the location asked for — so [`DeviceBlock::mapped`] is then
//! `Some` and the Direct transfer path reads and writes through it.
//!
//! The budget is vkhmm's, not the driver's: a request that would take `in_use` past it fails
//! with [`Error::OutOfDeviceMemory`] before any Vulkan call, so the runtime can evict and
//! retry. Sizes are rounded up to whole 4 KiB pages; that rounded size is what counts.
//! Freed space goes back to gpu-allocator's free lists and is reused by later blocks.
//!
//! **Recycled blocks.** A program that allocates and frees buffers of one size each step would
//! get fresh device memory for each: a new `vkAllocateMemory` when gpu-allocator has freed the
//! empty memory block meanwhile, and, wherever device memory is ordinary host memory (lavapipe,
//! integrated GPUs), a page fault on the first write of every 4 KiB of it. So a dropped block
//! is kept, whole, for the next request of exactly its size — as CUDA's caching allocators
//! keep freed blocks — up to [`RECYCLE_CAP`] bytes and a quarter of the budget, oldest dropped
//! first. Kept blocks do not count in `in_use`, but a request that needs new memory first
//! drops kept blocks until `in_use` and the kept bytes together leave it room in the budget,
//! so the device never holds more than the budget. A reused block is zeroed again when asked
//! for [`BlockInit::Zeroed`].

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use ash::vk;
use gpu_allocator::vulkan::{
    Allocation, AllocationCreateDesc, AllocationScheme, Allocator, AllocatorCreateDesc,
};
use gpu_allocator::{AllocationSizes, AllocatorDebugSettings, MemoryLocation};

use super::map::{map_allocator_oom, map_host_device_oom, map_host_oom};
use super::{Device, DeviceInfo, TransferPath};
use crate::error::{Error, Result};

/// Granularity of block sizes.
pub(crate) const PAGE: u64 = 4096;

/// The most bytes of dropped blocks kept for reuse (and at most a quarter of the budget).
pub(crate) const RECYCLE_CAP: u64 = 256 << 20;

/// What a new block holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlockInit {
    /// Every byte is zero: no byte of an earlier user of the memory is visible.
    Zeroed,
    /// Unspecified contents (the caller overwrites all of it before anyone reads).
    Uninit,
}

/// gpu-allocator over the pool memory type, and the budget.
pub(crate) struct DevicePool {
    /// `None` once the device is being destroyed.
    allocator: Mutex<Option<Allocator>>,
    memory_type: u32,
    flags: vk::MemoryPropertyFlags,
    usage: vk::BufferUsageFlags,
    budget: AtomicU64,
    in_use: AtomicU64,
    /// Dropped blocks kept for reuse, oldest first.
    kept: Mutex<Kept>,
}

/// Dropped blocks kept for reuse, and their bytes.
#[derive(Default)]
struct Kept {
    blocks: std::collections::VecDeque<KeptBlock>,
    bytes: u64,
}

/// A dropped block's buffer and memory, kept whole. Holds no `Arc<Device>` (the pool lives in
/// the device): [`DevicePool::destroy`] frees what is still kept.
struct KeptBlock {
    raw: vk::Buffer,
    allocation: Allocation,
    size: u64,
}

impl DevicePool {
    /// Finds the pool memory type and creates the allocator. `budget` defaults to 80% of
    /// the pool type's heap.
    pub(super) fn new(
        instance: &ash::Instance,
        raw: &ash::Device,
        physical: vk::PhysicalDevice,
        info: &DeviceInfo,
        budget: Option<u64>,
    ) -> Result<Self> {
        let bda = info.features.buffer_device_address;
        let mut usage = vk::BufferUsageFlags::STORAGE_BUFFER
            | vk::BufferUsageFlags::UNIFORM_BUFFER
            | vk::BufferUsageFlags::TRANSFER_SRC
            | vk::BufferUsageFlags::TRANSFER_DST;
        if bda {
            usage |= vk::BufferUsageFlags::SHADER_DEVICE_ADDRESS;
        }
        // SAFETY: `physical` belongs to the live `instance`.
        let memory = unsafe { instance.get_physical_device_memory_properties(physical) };
        let bits = probe_memory_type_bits(raw, usage)?;
        let (index, memory_type) = memory
            .memory_types_as_slice()
            .iter()
            .enumerate()
            .find(|(i, t)| {
                bits & (1 << i) != 0
                    && t.property_flags
                        .contains(vk::MemoryPropertyFlags::DEVICE_LOCAL)
            })
            .ok_or_else(|| Error::DeviceUnsuitable {
                device: info.name.clone(),
                missing: "a device-local memory type for storage buffers".into(),
            })?;
        let heap = memory.memory_heaps[memory_type.heap_index as usize].size;
        let allocator = Allocator::new(&AllocatorCreateDesc {
            instance: instance.clone(),
            device: raw.clone(),
            physical_device: physical,
            debug_settings: AllocatorDebugSettings::default(),
            buffer_device_address: bda,
            allocation_sizes: AllocationSizes::default(),
        })
        .map_err(|e| Error::Allocator(e.to_string()))?;
        Ok(DevicePool {
            allocator: Mutex::new(Some(allocator)),
            memory_type: index as u32,
            flags: memory_type.property_flags,
            usage,
            budget: AtomicU64::new(budget.unwrap_or(heap / 5 * 4)),
            in_use: AtomicU64::new(0),
            kept: Mutex::new(Kept::default()),
        })
    }

    /// Index of the memory type blocks come from.
    pub(crate) fn memory_type(&self) -> u32 {
        self.memory_type
    }

    /// Property flags of that memory type.
    pub(crate) fn memory_flags(&self) -> vk::MemoryPropertyFlags {
        self.flags
    }

    /// The budget in bytes.
    pub(crate) fn budget(&self) -> u64 {
        self.budget.load(Ordering::Relaxed)
    }

    /// Changes the budget. Blocks already allocated stay; a budget below `in_use` makes every
    /// new request fail until enough blocks are dropped.
    #[cfg(test)]
    pub(crate) fn set_budget(&self, bytes: u64) {
        self.budget.store(bytes, Ordering::Relaxed);
    }

    /// The usage flags of every pool buffer (also given to imported host memory).
    pub(crate) fn usage(&self) -> vk::BufferUsageFlags {
        self.usage
    }

    /// Bytes held by live blocks (page-rounded sizes).
    pub(crate) fn in_use(&self) -> u64 {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Counts `size` bytes against the budget, or fails without changing anything.
    fn reserve(&self, size: u64) -> Result<()> {
        let budget = self.budget();
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |in_use| {
                in_use.checked_add(size).filter(|&total| total <= budget)
            })
            .map(drop)
            .map_err(|in_use| Error::OutOfDeviceMemory {
                needed: size,
                budget,
                in_use,
            })
    }

    fn release(&self, size: u64) {
        self.in_use.fetch_sub(size, Ordering::AcqRel);
    }

    /// Returns an allocation to gpu-allocator, logging a failure (there is no caller to tell).
    fn free(&self, allocation: Allocation) {
        if let Some(allocator) = self.lock().as_mut() {
            if let Err(e) = allocator.free(allocation) {
                tracing::error!("freeing device memory: {e}");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Allocator>> {
        self.allocator
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes of dropped blocks kept for reuse.
    #[cfg(test)]
    pub(crate) fn kept_bytes(&self) -> u64 {
        self.kept_lock().bytes
    }

    fn kept_lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a kept block of exactly `size` bytes (the most recently dropped one).
    fn take_kept(&self, size: u64) -> Option<KeptBlock> {
        let mut kept = self.kept_lock();
        let i = kept.blocks.iter().rposition(|b| b.size == size)?;
        let block = kept.blocks.remove(i)?;
        kept.bytes -= size;
        Some(block)
    }

    /// Keeps a dropped block for reuse if it fits under the cap, dropping the oldest kept
    /// blocks to make room; gives it back when it does not fit at all.
    fn keep(&self, raw: &ash::Device, block: KeptBlock) -> Option<KeptBlock> {
        let cap = RECYCLE_CAP.min(self.budget() / 4);
        if block.size > cap {
            return Some(block);
        }
        let mut kept = self.kept_lock();
        kept.bytes += block.size;
        kept.blocks.push_back(block);
        let mut freed = Vec::new();
        while kept.bytes > cap {
            let old = kept
                .blocks
                .pop_front()
                .expect("kept bytes count kept blocks");
            kept.bytes -= old.size;
            freed.push(old);
        }
        drop(kept);
        for old in freed {
            self.destroy_kept(raw, old);
        }
        None
    }

    /// Drops kept blocks, oldest first, until `in_use` (which counts a request already
    /// reserved) and the kept bytes together fit in the budget, or none is left.
    fn trim_kept(&self, raw: &ash::Device) {
        loop {
            let mut kept = self.kept_lock();
            if self.in_use() + kept.bytes <= self.budget() {
                return;
            }
            let Some(old) = kept.blocks.pop_front() else {
                return;
            };
            kept.bytes -= old.size;
            drop(kept);
            self.destroy_kept(raw, old);
        }
    }

    fn destroy_kept(&self, raw: &ash::Device, block: KeptBlock) {
        // SAFETY: a kept block's buffer is used by nothing (its `DeviceBlock` was dropped,
        // and dropping one waits for no device work: none uses it any more) and belongs to
        // the device `raw` is.
        unsafe { raw.destroy_buffer(block.raw, None) };
        self.free(block.allocation);
    }

    /// Frees every kept block and drops the allocator, freeing all its memory. The device
    /// calls this before it destroys itself.
    pub(super) fn destroy(&self, raw: &ash::Device) {
        let kept = std::mem::take(&mut *self.kept_lock());
        for block in kept.blocks {
            self.destroy_kept(raw, block);
        }
        drop(self.lock().take());
    }
}

/// `memoryTypeBits` of a buffer with the pool's usage.
fn probe_memory_type_bits(raw: &ash::Device, usage: vk::BufferUsageFlags) -> Result<u32> {
    let info = vk::BufferCreateInfo::default().size(PAGE).usage(usage);
    // SAFETY: `raw` is alive and the create info is valid.
    let probe =
        unsafe { raw.create_buffer(&info, None) }.map_err(map_host_oom("vkCreateBuffer"))?;
    // SAFETY: `probe` was just created from `raw`.
    let bits = unsafe { raw.get_buffer_memory_requirements(probe) }.memory_type_bits;
    // SAFETY: `probe` is unused and has no memory.
    unsafe { raw.destroy_buffer(probe, None) };
    Ok(bits)
}

/// A `VkBuffer` with its own memory from the pool's allocator: the RAII core of
/// [`DeviceBlock`] and of the staging rings. Counts nothing against the budget.
pub(super) struct RawBuffer {
    raw: vk::Buffer,
    allocation: Allocation,
    device: Arc<Device>,
}

impl RawBuffer {
    /// Creates a buffer of `size` bytes with `usage` and binds fresh memory from `location`.
    pub(super) fn new(
        device: &Arc<Device>,
        size: u64,
        usage: vk::BufferUsageFlags,
        location: MemoryLocation,
        name: &str,
    ) -> Result<Self> {
        let pool = device.pool();
        let info = vk::BufferCreateInfo::default()
            .size(size)
            .usage(usage)
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        // SAFETY: the device is alive; the create info is valid (size > 0, usage non-empty).
        let raw = unsafe { device.raw.create_buffer(&info, None) }.map_err(map_host_device_oom(
            "vkCreateBuffer",
            size,
            pool.budget(),
            pool.in_use(),
        ))?;
        match Self::bind(device, raw, location, name) {
            Ok(allocation) => Ok(RawBuffer {
                raw,
                allocation,
                device: Arc::clone(device),
            }),
            Err(e) => {
                // SAFETY: the buffer is unused and has no memory bound.
                unsafe { device.raw.destroy_buffer(raw, None) };
                Err(e)
            }
        }
    }

    fn bind(
        device: &Device,
        buffer: vk::Buffer,
        location: MemoryLocation,
        name: &str,
    ) -> Result<Allocation> {
        let pool = device.pool();
        // SAFETY: `buffer` was created from this device.
        let requirements = unsafe { device.raw.get_buffer_memory_requirements(buffer) };
        let (needed, budget, in_use) = (requirements.size, pool.budget(), pool.in_use());
        let mut guard = pool.lock();
        let allocator = guard
            .as_mut()
            .expect("the pool is used after the device was dropped");
        let allocation = allocator
            .allocate(&AllocationCreateDesc {
                name,
                requirements,
                location,
                linear: true,
                allocation_scheme: AllocationScheme::GpuAllocatorManaged,
            })
            .map_err(map_allocator_oom(needed, budget, in_use))?;
        drop(guard);
        // SAFETY: the allocation satisfies the buffer's requirements (size, alignment, type
        // bits) and is used by nothing else; `memory()` is only read here, not freed.
        let bound = unsafe {
            device
                .raw
                .bind_buffer_memory(buffer, allocation.memory(), allocation.offset())
        };
        match bound {
            Ok(()) => Ok(allocation),
            Err(e) => {
                pool.free(allocation);
                Err(map_host_device_oom(
                    "vkBindBufferMemory",
                    needed,
                    budget,
                    in_use,
                )(e))
            }
        }
    }

    /// The buffer handle.
    pub(super) fn raw(&self) -> vk::Buffer {
        self.raw
    }

    /// Takes the buffer apart without destroying it.
    fn into_parts(self) -> (vk::Buffer, Allocation) {
        let mut this = std::mem::ManuallyDrop::new(self);
        let allocation = std::mem::take(&mut this.allocation);
        // SAFETY: `this` is never used or dropped again: its `Arc<Device>` is read out once
        // and dropped here, the other fields are plain handles already copied or taken.
        drop(unsafe { std::ptr::read(&this.device) });
        (this.raw, allocation)
    }

    /// The start of the memory's mapping, when its type is host-visible.
    pub(super) fn mapped(&self) -> Option<NonNull<u8>> {
        self.allocation.mapped_ptr().map(NonNull::cast)
    }

    /// The device the buffer belongs to.
    pub(super) fn device(&self) -> &Arc<Device> {
        &self.device
    }
}

impl Drop for RawBuffer {
    fn drop(&mut self) {
        // SAFETY: no device work uses the buffer any more: transfers wait before returning,
        // dispatches require their blocks to outlive the wait, and the device (held by the
        // `Arc`) is alive.
        unsafe { self.device.raw.destroy_buffer(self.raw, None) };
        self.device
            .pool()
            .free(std::mem::take(&mut self.allocation));
    }
}

/// A block of pool memory covered by one `VkBuffer`: storage, uniform, transfer source and
/// destination (and device-address when enabled). Dropping it destroys the buffer, frees the
/// memory and returns its size to the budget.
pub(crate) struct DeviceBlock {
    /// `None` only while the block is being dropped.
    buffer: Option<RawBuffer>,
    size: u64,
    mapped: Option<NonNull<u8>>,
}

// SAFETY: a `DeviceBlock` is a Vulkan buffer handle, an allocation record and a pointer into
// memory the driver mapped for the whole process; none is tied to the creating thread.
// Vulkan buffers need external synchronization only for destruction, which needs `Drop`'s
// exclusive access. Through `&DeviceBlock` one gets only copies of the handle and the raw
// pointer: every read or write of the contents goes through an `unsafe fn` (`Transfer`,
// `Dispatcher`) or a raw-pointer dereference whose caller rules out races.
unsafe impl Send for DeviceBlock {}
// SAFETY: see `Send` above; `&DeviceBlock` offers no safe access to the contents.
unsafe impl Sync for DeviceBlock {}

impl Device {
    /// Allocates a block of at least `size` bytes (rounded up to whole 4 KiB pages, at least
    /// one) from the pool, counted against the budget.
    ///
    /// `Zeroed` clears it through the mapping on the Direct path, with `vkCmdFillBuffer`
    /// otherwise (so that forcing the Staged path on lavapipe exercises what a discrete GPU
    /// runs).
    ///
    /// # Errors
    ///
    /// [`Error::OutOfDeviceMemory`] when the rounded size does not fit in the budget (checked
    /// before any Vulkan call; `in_use` is unchanged) or when the driver runs out; other
    /// allocator or driver failures as mapped.
    pub(crate) fn alloc_block(
        self: &Arc<Self>,
        size: u64,
        init: BlockInit,
        name: &str,
    ) -> Result<DeviceBlock> {
        let pool = &self.pool;
        let size = size
            .max(1)
            .checked_next_multiple_of(PAGE)
            .ok_or(Error::OutOfDeviceMemory {
                needed: size,
                budget: pool.budget(),
                in_use: pool.in_use(),
            })?;
        pool.reserve(size)?;
        if crate::inject::hit(crate::inject::Site::PoolAlloc) {
            pool.release(size);
            return Err(map_allocator_oom(size, pool.budget(), pool.in_use())(
                gpu_allocator::AllocationError::OutOfMemory,
            ));
        }
        let buffer = match pool.take_kept(size) {
            Some(kept) => RawBuffer {
                raw: kept.raw,
                allocation: kept.allocation,
                device: Arc::clone(self),
            },
            None => {
                pool.trim_kept(&self.raw);
                RawBuffer::new(self, size, pool.usage, MemoryLocation::GpuOnly, name)
                    .inspect_err(|_| pool.release(size))?
            }
        };
        debug_assert_eq!(
            buffer.allocation.memory_properties(),
            pool.flags,
            "gpu-allocator chose another type"
        );
        let block = DeviceBlock {
            mapped: buffer.mapped(),
            buffer: Some(buffer),
            size,
        };
        if init == BlockInit::Zeroed {
            block.zero_fill()?;
        }
        Ok(block)
    }
}

impl DeviceBlock {
    fn buffer(&self) -> &RawBuffer {
        self.buffer
            .as_ref()
            .expect("a block is used only while alive")
    }

    /// The buffer covering the whole block.
    pub(crate) fn raw(&self) -> vk::Buffer {
        self.buffer().raw
    }

    /// Size in bytes (a multiple of 4 KiB).
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// The block's first byte in the host's address space, when its memory is host-visible
    /// (lavapipe, integrated GPUs); `None` on device-only memory. `size()` bytes are mapped
    /// and, the pool type being host-coherent whenever it is mapped here, need no
    /// flush/invalidate. Reading or writing through it races with the device and every
    /// other user of the block: the caller must rule that out.
    pub(crate) fn mapped(&self) -> Option<NonNull<u8>> {
        self.mapped
    }

    /// The device the block belongs to.
    pub(crate) fn device(&self) -> &Arc<Device> {
        &self.buffer().device
    }

    /// The `VkDeviceMemory` and the offset in it where the block starts.
    #[cfg(test)]
    pub(crate) fn memory(&self) -> (vk::DeviceMemory, u64) {
        let allocation = &self.buffer().allocation;
        // SAFETY: the handle is only reported, never freed or rebound through it.
        (unsafe { allocation.memory() }, allocation.offset())
    }

    /// Sets every byte to zero. Only called on a fresh block nobody else can reach yet.
    fn zero_fill(&self) -> Result<()> {
        let device = self.device();
        match self.mapped {
            Some(ptr) if device.info().transfer_path == TransferPath::Direct => {
                // SAFETY: `size` bytes are mapped at `ptr` and the block is not shared yet.
                unsafe { ptr.as_ptr().write_bytes(0, self.size as usize) };
                Ok(())
            }
            _ => {
                let (raw, buffer) = (&device.raw, self.raw());
                // SAFETY: filling the whole buffer (offset 0, WHOLE_SIZE) is valid for a
                // TRANSFER_DST buffer; `one_shot` waits, and `self` outlives the call.
                unsafe {
                    device.one_shot(|cmd| raw.cmd_fill_buffer(cmd, buffer, 0, vk::WHOLE_SIZE, 0))
                }
            }
        }
    }
}

impl Drop for DeviceBlock {
    fn drop(&mut self) {
        let Some(buffer) = self.buffer.take() else {
            return;
        };
        let device = Arc::clone(&buffer.device);
        let (raw, allocation) = buffer.into_parts();
        let kept = KeptBlock {
            raw,
            allocation,
            size: self.size,
        };
        if let Some(unkept) = device.pool.keep(&device.raw, kept) {
            device.pool.destroy_kept(&device.raw, unkept);
        }
        device.pool.release(self.size);
    }
}

impl std::fmt::Debug for DeviceBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBlock")
            .field("raw", &self.raw())
            .field("size", &self.size)
            .field("mapped", &self.mapped)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::config::DEFAULT_STAGING_BYTES;
    use crate::device::{test_device, DeviceConfig, Transfer};

    /// The default device and one forced to the Staged path (zeroing with vkCmdFillBuffer).
    fn devices() -> Vec<Arc<Device>> {
        [None, Some(TransferPath::Staged)]
            .into_iter()
            .map_while(|transfer| {
                test_device(DeviceConfig {
                    transfer,
                    ..DeviceConfig::default()
                })
            })
            .collect()
    }

    #[test]
    fn sizes_round_up_to_pages_and_count_while_alive() {
        for dev in devices() {
            let a = dev.alloc_block(1, BlockInit::Uninit, "a").unwrap();
            let b = dev.alloc_block(0, BlockInit::Zeroed, "b").unwrap();
            let c = dev
                .alloc_block(3 * PAGE + 1, BlockInit::Zeroed, "c")
                .unwrap();
            assert_eq!((a.size(), b.size(), c.size()), (PAGE, PAGE, 4 * PAGE));
            assert_eq!(dev.pool().in_use(), 6 * PAGE);
            assert!(Arc::ptr_eq(a.device(), &dev));
            assert_eq!(a.mapped().is_some(), dev.info().pool_type().host_visible);
            drop((a, b));
            assert_eq!(dev.pool().in_use(), 4 * PAGE);
            drop(c);
            assert_eq!(dev.pool().in_use(), 0);
        }
    }

    #[test]
    fn freed_space_is_reused() {
        for dev in devices() {
            let keep = dev.alloc_block(PAGE, BlockInit::Uninit, "keep").unwrap();
            let first = dev
                .alloc_block(1 << 20, BlockInit::Uninit, "first")
                .unwrap()
                .memory();
            for round in 0..50 {
                let again = dev
                    .alloc_block(1 << 20, BlockInit::Zeroed, "again")
                    .unwrap();
                assert_eq!(
                    again.memory(),
                    first,
                    "round {round} did not reuse the freed space"
                );
            }
            assert_eq!(dev.pool().in_use(), PAGE);
            drop(keep);
        }
    }

    #[test]
    fn dropped_blocks_serve_the_next_request_of_their_size() {
        for dev in devices() {
            let pool = dev.pool();
            let a = dev.alloc_block(1 << 20, BlockInit::Uninit, "a").unwrap();
            let (raw, memory) = (a.raw(), a.memory());
            if let Some(p) = a.mapped() {
                // SAFETY: the block is this test's alone; 1 MiB is mapped at `p`.
                unsafe { p.as_ptr().write_bytes(0xab, 1 << 20) };
            }
            drop(a);
            assert_eq!((pool.in_use(), pool.kept_bytes()), (0, 1 << 20));
            // Another size gets other memory; the same size gets the kept block itself.
            let other = dev.alloc_block(2 << 20, BlockInit::Uninit, "b").unwrap();
            assert_ne!(other.raw(), raw);
            let again = dev.alloc_block(1 << 20, BlockInit::Zeroed, "c").unwrap();
            assert_eq!((again.raw(), again.memory()), (raw, memory));
            assert_eq!(pool.kept_bytes(), 0);
            // Kept or not, a Zeroed block shows no earlier byte.
            let mut t =
                Transfer::new(&dev, dev.info().transfer_path, DEFAULT_STAGING_BYTES).unwrap();
            let mut zero = true;
            // SAFETY: the block is this test's alone.
            unsafe {
                t.download(&again, &[(0, 1 << 20)], &mut |_, _, b| {
                    zero &= b.iter().all(|&x| x == 0);
                    Ok(())
                })
            }
            .unwrap();
            assert!(zero);
            drop((other, again));
            assert_eq!(pool.in_use(), 0);
            assert_eq!(pool.kept_bytes(), 3 << 20);
        }
    }

    #[test]
    fn kept_blocks_stay_under_their_cap_and_give_way_to_the_budget() {
        for dev in devices() {
            let pool = dev.pool();
            pool.set_budget(8 << 20); // a quarter: 2 MiB may be kept
            let blocks: Vec<_> = (0..3)
                .map(|_| dev.alloc_block(1 << 20, BlockInit::Uninit, "k").unwrap())
                .collect();
            let newest = blocks[2].raw();
            drop(blocks);
            assert_eq!(pool.kept_bytes(), 2 << 20, "the oldest went");
            let big = dev.alloc_block(4 << 20, BlockInit::Uninit, "big").unwrap();
            drop(big);
            assert_eq!(pool.kept_bytes(), 2 << 20, "over the cap: freed at once");
            // New memory that needs the budget's room drops kept blocks, oldest first.
            let six = dev.alloc_block(7 << 20, BlockInit::Uninit, "six").unwrap();
            assert_eq!(pool.kept_bytes(), 1 << 20);
            let one = dev.alloc_block(1 << 20, BlockInit::Uninit, "one").unwrap();
            assert_eq!(one.raw(), newest, "the newest kept block served it");
            assert_eq!(pool.in_use() + pool.kept_bytes(), 8 << 20);
            drop((six, one));
            pool.set_budget(u64::MAX);
        }
    }

    #[test]
    fn zeroed_blocks_never_show_earlier_bytes() {
        for dev in devices() {
            let mut t =
                Transfer::new(&dev, dev.info().transfer_path, DEFAULT_STAGING_BYTES).unwrap();
            let size = 256 << 10;
            let read = |t: &mut Transfer, block: &DeviceBlock| {
                let mut out = Vec::new();
                // SAFETY: the test owns the block.
                unsafe {
                    t.download(block, &[(0, size)], &mut |_, _, b| {
                        out.extend_from_slice(b);
                        Ok(())
                    })
                }
                .unwrap();
                out
            };
            let secret = vec![0xA5u8; size];
            let old = dev
                .alloc_block(size as u64, BlockInit::Uninit, "old")
                .unwrap();
            let place = old.memory();
            // SAFETY: the test owns the block.
            unsafe { t.upload(&old, &[(0, &secret)]) }.unwrap();
            drop(old);

            // The memory really comes back with the old bytes in it…
            let uninit = dev
                .alloc_block(size as u64, BlockInit::Uninit, "uninit")
                .unwrap();
            assert_eq!(uninit.memory(), place);
            assert_eq!(
                read(&mut t, &uninit),
                secret,
                "test premise: Uninit shows the old bytes"
            );
            drop(uninit);

            // …and Zeroed hides every one of them.
            let zeroed = dev
                .alloc_block(size as u64, BlockInit::Zeroed, "zeroed")
                .unwrap();
            assert_eq!(zeroed.memory(), place);
            assert!(
                read(&mut t, &zeroed).iter().all(|&b| b == 0),
                "{:?}",
                dev.info().transfer_path
            );
        }
    }

    #[test]
    fn over_budget_fails_before_the_driver_and_changes_nothing() {
        for dev in devices() {
            let pool = dev.pool();
            pool.set_budget(1 << 20);
            let held = dev
                .alloc_block(512 << 10, BlockInit::Uninit, "held")
                .unwrap();
            match dev.alloc_block((512 << 10) + 1, BlockInit::Uninit, "too much") {
                Err(Error::OutOfDeviceMemory {
                    needed,
                    budget,
                    in_use,
                }) => {
                    assert_eq!(
                        (needed, budget, in_use),
                        ((512 << 10) + PAGE, 1 << 20, 512 << 10)
                    );
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(pool.in_use(), 512 << 10);
            let rest = dev
                .alloc_block(512 << 10, BlockInit::Uninit, "exactly the rest")
                .unwrap();
            assert!(matches!(
                dev.alloc_block(1, BlockInit::Uninit, "one more"),
                Err(Error::OutOfDeviceMemory { .. })
            ));
            drop((held, rest));

            // Past the heap itself: gpu-allocator's OutOfMemory maps to the same error.
            pool.set_budget(u64::MAX);
            let heap = dev.info().heaps[dev.info().pool_type().heap_index as usize].size;
            let e = dev
                .alloc_block(heap + PAGE, BlockInit::Uninit, "huge")
                .unwrap_err();
            assert!(matches!(e, Error::OutOfDeviceMemory { .. }), "{e}");
            let e = dev
                .alloc_block(u64::MAX, BlockInit::Uninit, "overflow")
                .unwrap_err();
            assert!(matches!(e, Error::OutOfDeviceMemory { .. }), "{e}");
            assert_eq!(pool.in_use(), 0);
        }
    }

    #[test]
    fn blocks_and_devices_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<DeviceBlock>();
        send_sync::<Device>();
        let Some(dev) = devices().pop() else { return };
        let block = dev.alloc_block(PAGE, BlockInit::Zeroed, "thread").unwrap();
        let size = std::thread::spawn(move || block.size()).join().unwrap();
        assert_eq!(size, PAGE);
        assert_eq!(dev.pool().in_use(), 0);
    }
}
