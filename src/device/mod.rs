//! The device module: every `ash` call of the crate.
//!
//! # What this module does
//!
//! It turns a Vulkan implementation into the four things the rest of vkhmm needs, and nothing
//! more:
//!
//! - a [`Device`] — loader, instance, the chosen physical device, one compute queue
//!   ([`instance`]): opened once per runtime, shared as `Arc<Device>`;
//! - a pool of device memory ([`pool`]): [`DeviceBlock`]s carved by gpu-allocator out of the
//!   device-local memory type, each covered by one `VkBuffer`, counted against a byte budget
//!   (default 80% of the heap) so that the runtime evicts before the driver fails;
//! - two ways to move bytes between host memory and blocks ([`transfer`]): `Direct`, a
//!   `memcpy` through the pool's mapping where the device memory is host-visible and cached
//!   (integrated GPUs, lavapipe), and `Staged`, `vkCmdCopyBuffer` through a staging ring with
//!   persistent command buffers where it is not (discrete GPUs). Either can be forced, so CI
//!   runs both on lavapipe;
//! - compute [`Pipeline`]s built from SPIR-V and a reflected [`KernelInfo`], and a
//!   [`Dispatcher`] that binds blocks, pushes constants and dispatches ([`kernel`]).
//!
//! # What it may touch
//!
//! Device memory and Vulkan objects only. It never reads or writes mirrored host memory on
//! its own: the bytes it uploads come from slices the caller hands in, and the bytes it
//! downloads go to a sink the caller provides (the fault handler's sink does `UFFDIO_COPY`).
//! It knows nothing of page states; the runtime's protocol decides when a block may be read
//! or written, which is why the operations that touch block contents are `unsafe fn`s whose
//! `# Safety` sections state the race the caller must rule out.
//!
//! # Invariants
//!
//! - **One queue, one lock, held briefly.** Every submission goes through
//!   [`Device::submit`], which holds the queue mutex for `vkQueueSubmit` alone. Each user
//!   owns its command pool, command buffers and fences ([`commands::CommandSlots`]), so it
//!   records and waits without any lock. On a single-queue device the fault handler shares
//!   the queue with launches; it never waits while holding the mutex.
//! - **Every submission is fenced at both ends.** Each recording opens with a global barrier
//!   (earlier compute, transfer and host writes → this recording) and closes with one (its
//!   writes → host, transfer and shader access). Submissions from different owners are
//!   therefore ordered by the fence waits alone; nobody tracks per-buffer hazards.
//! - **No allocation on the fault path.** [`Transfer`] preallocates its staging ring, copy
//!   region arrays and command buffers in [`Transfer::new`]; its operations allocate nothing
//!   (a heap allocation in the fault handler could land on a page that is on the device).
//! - **No leaks between users.** Blocks asked for with [`BlockInit::Zeroed`] show no byte of
//!   an earlier user. robustBufferAccess is required, so an out-of-bounds kernel cannot reach
//!   a neighbouring block.
//! - **Destruction order.** Blocks, transfers and pipelines hold an `Arc<Device>`, so the
//!   device outlives them; [`Device`]'s `Drop` waits for the queue, then drops the allocator
//!   (freeing its memory), then the device, then the instance.
//! - **Errors keep their codes.** Vulkan failures go through the `map_*` functions of
//!   [`map`], named after the codes they give a meaning to; any other code is kept, as a
//!   plain [`VulkanCode`](crate::VulkanCode), in [`Error::Vulkan`](crate::Error::Vulkan).
//!
//! [`KernelInfo`]: crate::shader::KernelInfo

mod commands;
mod config;
mod import;
mod instance;
mod kernel;
mod map;
mod pool;
mod transfer;

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use ash::vk;

pub(crate) use config::parse_bytes;
pub use config::{DeviceConfig, TransferPath};
pub(crate) use import::HostImport;
pub(crate) use kernel::{
    check_alignment, check_binding, check_groups, offset_alignment, Bindable, BufferArg,
    Dispatcher, Pipeline,
};
pub(crate) use pool::{BlockInit, DeviceBlock, DevicePool};
pub(crate) use transfer::Transfer;

use crate::error::Result;
use commands::CommandSlots;
use map::map_host_oom_lost;

/// The kind of a Vulkan device, best first in the default choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceType {
    /// A discrete GPU with its own memory.
    Discrete,
    /// A GPU sharing the host's memory.
    Integrated,
    /// A virtualised GPU.
    Virtual,
    /// A software implementation on the CPU (Mesa lavapipe).
    Cpu,
    /// Anything else.
    Other,
}

impl fmt::Display for DeviceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceType::Discrete => "discrete GPU",
            DeviceType::Integrated => "integrated GPU",
            DeviceType::Virtual => "virtual GPU",
            DeviceType::Cpu => "CPU",
            DeviceType::Other => "other",
        })
    }
}

/// One memory heap of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryHeapInfo {
    /// Size in bytes.
    pub size: u64,
    /// `VK_MEMORY_HEAP_DEVICE_LOCAL_BIT`.
    pub device_local: bool,
}

/// One memory type of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryTypeInfo {
    /// The heap it allocates from.
    pub heap_index: u32,
    /// `DEVICE_LOCAL`.
    pub device_local: bool,
    /// `HOST_VISIBLE`: the CPU can map it.
    pub host_visible: bool,
    /// `HOST_COHERENT`: no flush/invalidate needed.
    pub host_coherent: bool,
    /// `HOST_CACHED`: CPU reads are cached (fast).
    pub host_cached: bool,
}

/// The device limits vkhmm checks launches against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceLimits {
    /// `maxStorageBufferRange`: the largest storage binding.
    pub max_storage_buffer_range: u32,
    /// `maxUniformBufferRange`: the largest uniform binding.
    pub max_uniform_buffer_range: u32,
    /// `minStorageBufferOffsetAlignment`.
    pub min_storage_buffer_offset_alignment: u64,
    /// `minUniformBufferOffsetAlignment`.
    pub min_uniform_buffer_offset_alignment: u64,
    /// `maxComputeWorkGroupCount`.
    pub max_compute_work_group_count: [u32; 3],
    /// `maxComputeWorkGroupSize`.
    pub max_compute_work_group_size: [u32; 3],
    /// `maxComputeWorkGroupInvocations`.
    pub max_compute_work_group_invocations: u32,
    /// `maxPushConstantsSize`.
    pub max_push_constants_size: u32,
    /// `maxMemoryAllocationSize` (Vulkan 1.1).
    pub max_memory_allocation_size: u64,
}

/// Optional device features, as enabled on the opened device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceFeatures {
    /// Always true: vkhmm requires it.
    pub robust_buffer_access: bool,
    /// `bufferDeviceAddress` (core 1.2 or `VK_KHR_buffer_device_address`).
    pub buffer_device_address: bool,
    /// `timelineSemaphore` (core 1.2 or `VK_KHR_timeline_semaphore`).
    pub timeline_semaphore: bool,
    /// `VK_EXT_external_memory_host`.
    pub external_memory_host: bool,
    /// `minImportedHostPointerAlignment`, when `external_memory_host` is enabled.
    pub min_imported_host_pointer_alignment: Option<u64>,
}

/// What vkhmm knows about the device it opened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceInfo {
    /// `deviceName`.
    pub name: String,
    /// `deviceType`.
    pub device_type: DeviceType,
    /// The device's Vulkan version (major, minor, patch).
    pub api_version: (u32, u32, u32),
    /// `driverName` (`VkPhysicalDeviceDriverProperties`), when the device reports it.
    pub driver_name: Option<String>,
    /// `driverInfo`, when the device reports it.
    pub driver_info: Option<String>,
    /// PCI vendor id.
    pub vendor_id: u32,
    /// Device id.
    pub device_id: u32,
    /// Enumeration index (what `VKHMM_DEVICE=<index>` selects).
    pub index: usize,
    /// Memory heaps.
    pub heaps: Vec<MemoryHeapInfo>,
    /// Memory types.
    pub memory_types: Vec<MemoryTypeInfo>,
    /// Index into `memory_types` of the type the device pool allocates from.
    pub pool_memory_type: u32,
    /// The device-memory budget in bytes when the device was opened.
    pub budget: u64,
    /// The transfer path in use.
    pub transfer_path: TransferPath,
    /// Limits.
    pub limits: DeviceLimits,
    /// Optional features.
    pub features: DeviceFeatures,
    /// The queue family of the compute queue.
    pub queue_family: u32,
    /// Number of queues in that family (vkhmm uses one).
    pub queue_count: u32,
}

impl DeviceInfo {
    /// Opens the device `config` chooses, reports what vkhmm would use, and closes it again
    /// (what `vkhmm info` shows; no fault service is started).
    ///
    /// # Errors
    ///
    /// As for [`Runtime::new`](crate::Runtime::new): [`Error::NoLoader`](crate::Error::NoLoader),
    /// [`Error::NoDevice`](crate::Error::NoDevice), [`Error::InvalidConfig`](crate::Error::InvalidConfig), driver failures.
    pub fn query(config: &DeviceConfig) -> Result<DeviceInfo> {
        Ok(Device::new(config)?.info().clone())
    }

    /// The memory type the pool allocates from.
    pub fn pool_type(&self) -> &MemoryTypeInfo {
        &self.memory_types[self.pool_memory_type as usize]
    }
}

/// An opened Vulkan device: instance, logical device, its one compute queue and its memory
/// pool (what was learnt of the physical device is in [`DeviceInfo`]). Always shared as
/// `Arc<Device>`.
pub(crate) struct Device {
    /// The logical device (function table and handle).
    pub(crate) raw: ash::Device,
    instance: ash::Instance,
    /// The compute queue; locked around `vkQueueSubmit` and `vkDeviceWaitIdle` only.
    queue: Mutex<vk::Queue>,
    /// A command buffer for the device's own one-shot work (zero-filling blocks).
    one_shot: Mutex<CommandSlots>,
    pool: DevicePool,
    info: DeviceInfo,
    /// `DeviceConfig::staging_bytes`, which the tests check was recorded.
    #[cfg(test)]
    staging_bytes: u64,
    /// Keeps the loader loaded; dropped after everything above.
    _entry: ash::Entry,
}

// `Device` is `Send + Sync` without an `unsafe impl`: ash's `Device`/`Instance` and the
// `vk::*` handles are `Send + Sync`, gpu-allocator's `Allocator` is `Send` and sits in a
// mutex. What the compiler cannot see is Vulkan's external-synchronization rules, kept like
// this: the queue is used only under `queue`; the allocator only under the pool's mutex;
// `one_shot`'s command pool only under its mutex; every other object a `Device` hands out
// (command pools, fences, descriptor pools) is owned by exactly one `&mut` user. Everything
// else called through `&Device` (`vkCreate*`, `vkWaitForFences` on one's own fence, ...) is
// thread-safe by the specification.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Device>();
};

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("name", &self.info.name)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// Opens the device `config` asks for (or the best one) with its pool.
    ///
    /// # Errors
    ///
    /// [`NoLoader`](crate::Error::NoLoader) without `libvulkan.so.1`;
    /// [`NoDevice`](crate::Error::NoDevice) when no suitable device matches;
    /// [`InvalidConfig`](crate::Error::InvalidConfig) for a forced `Direct` path on memory
    /// the CPU cannot map; driver failures as mapped in [`map`].
    pub(crate) fn new(config: &DeviceConfig) -> Result<Arc<Device>> {
        let entry = instance::load()?;
        let (instance, api) = instance::create_instance(&entry, config.filter.as_deref())?;
        // `entry` (a clone of it, sharing the loaded library) outlives the cleanup below.
        match Self::with_instance(entry.clone(), instance.clone(), api, config) {
            Ok(device) => Ok(device),
            Err(e) => {
                // SAFETY: nothing created from the instance survives the failed call.
                unsafe { instance.destroy_instance(None) };
                Err(e)
            }
        }
    }

    fn with_instance(
        entry: ash::Entry,
        instance: ash::Instance,
        api: u32,
        config: &DeviceConfig,
    ) -> Result<Arc<Device>> {
        let phys = instance::pick(&instance, api, config.filter.as_deref())?;
        let opened = instance::open(&instance, &phys)?;
        let raw = opened.raw.clone();
        let parts = (|| {
            let mut info = instance::describe_device(&instance, &phys, opened.features);
            let pool = DevicePool::new(&instance, &raw, phys.handle, &info, config.budget)?;
            info.pool_memory_type = pool.memory_type();
            info.budget = pool.budget();
            info.transfer_path = transfer::choose_path(pool.memory_flags(), config.transfer)?;
            let one_shot = CommandSlots::new(&raw, info.queue_family, 1)?;
            Ok((info, pool, one_shot))
        })();
        let (info, pool, one_shot) = match parts {
            Ok(parts) => parts,
            Err(e) => {
                // SAFETY: the device is idle and everything created from it was dropped
                // (the pool's allocator, with the closure).
                unsafe { raw.destroy_device(None) };
                return Err(e);
            }
        };
        Ok(Arc::new(Device {
            raw,
            instance,
            queue: Mutex::new(opened.queue),
            one_shot: Mutex::new(one_shot),
            pool,
            info,
            #[cfg(test)]
            staging_bytes: config.staging_bytes,
            _entry: entry,
        }))
    }

    /// What the device is and what it can do.
    pub(crate) fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The device-memory pool (budget and accounting).
    pub(crate) fn pool(&self) -> &DevicePool {
        &self.pool
    }

    /// The staging ring size the device was configured with
    /// ([`DeviceConfig::staging_bytes`]), for [`Transfer::new`].
    #[cfg(test)]
    pub(crate) fn staging_bytes(&self) -> u64 {
        self.staging_bytes
    }

    /// Submits `cmd` on the compute queue, signalling `fence` when it completes. Holds the
    /// queue mutex for the `vkQueueSubmit` call alone; allocates nothing.
    ///
    /// # Safety
    ///
    /// - `cmd` was allocated from a pool of this device for the queue family, is in the
    ///   executable state and is not pending (or was begun without `SIMULTANEOUS_USE`);
    /// - `fence` belongs to this device and is unsignaled and not in use by another submit;
    /// - every object the commands refer to stays alive until `fence` has signaled.
    pub(crate) unsafe fn submit(&self, cmd: vk::CommandBuffer, fence: vk::Fence) -> Result<()> {
        let cmds = [cmd];
        let submits = [vk::SubmitInfo::default().command_buffers(&cmds)];
        let queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if crate::inject::hit(crate::inject::Site::Submit) {
            return Err(map_host_oom_lost("vkQueueSubmit")(
                vk::Result::ERROR_OUT_OF_DEVICE_MEMORY,
            ));
        }
        // SAFETY: the queue is externally synchronized by the mutex held here; the caller
        // vouches for `cmd`, `fence` and the lifetime of what they use.
        unsafe { self.raw.queue_submit(*queue, &submits, fence) }
            .map_err(map_host_oom_lost("vkQueueSubmit"))
    }

    /// Waits until the device is idle (`vkDeviceWaitIdle`, under the queue mutex).
    pub(crate) fn wait_idle(&self) -> Result<()> {
        let _queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: vkDeviceWaitIdle needs every queue externally synchronized: the only queue's
        // mutex is held.
        unsafe { self.raw.device_wait_idle() }.map_err(map_host_oom_lost("vkDeviceWaitIdle"))
    }

    /// Records commands with `record` into the device's one-shot command buffer, submits them
    /// and waits. `record` gets a command buffer that is recording (after the leading barrier).
    ///
    /// # Safety
    ///
    /// What `record` records must be valid for this device, and the objects it uses must stay
    /// alive until this call returns (it waits, so borrowing them suffices).
    pub(crate) unsafe fn one_shot(&self, record: impl FnOnce(vk::CommandBuffer)) -> Result<()> {
        let mut slots = self.one_shot.lock().unwrap_or_else(PoisonError::into_inner);
        let cmd = slots.begin(&self.raw, 0)?;
        record(cmd);
        // SAFETY: the caller vouches for the recorded commands and what they use, which
        // outlives the wait below.
        unsafe { slots.submit(self, 0) }?;
        slots.wait(&self.raw, 0)
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Err(e) = self.wait_idle() {
            tracing::error!("vkDeviceWaitIdle while dropping the device: {e}");
        }
        let one_shot = self
            .one_shot
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        // SAFETY: the slots were created with `self.raw` and are not used again.
        unsafe { one_shot.destroy(&self.raw) };
        self.pool.destroy(&self.raw);
        // SAFETY: the device is idle; every object created from it is gone (blocks,
        // transfers and pipelines hold an `Arc<Device>`; the allocator was dropped above).
        unsafe { self.raw.destroy_device(None) };
        // SAFETY: the device created from the instance is destroyed.
        unsafe { self.instance.destroy_instance(None) };
    }
}

/// Opens a device for a test, or says why not.
///
/// When creating the device fails: under CI (`CI` set, not empty, `false` or `0`) this panics
/// with the error — a CI run must never pass without a device; elsewhere it prints
/// `skipped: no Vulkan device (<error>)` to stderr and returns `None`.
#[cfg(test)]
pub(crate) fn test_device(cfg: DeviceConfig) -> Option<Arc<Device>> {
    match Device::new(&cfg) {
        Ok(device) => Some(device),
        Err(e) if in_ci() => panic!("CI needs a Vulkan device: {e}"),
        Err(e) => {
            eprintln!("skipped: no Vulkan device ({e})");
            None
        }
    }
}

#[cfg(test)]
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[test]
    fn device_opens_and_describes_itself() {
        let Some(device) = test_device(DeviceConfig::default()) else {
            return;
        };
        let info = device.info();
        assert!(!info.name.is_empty());
        assert!(info.api_version >= (1, 1, 0), "{:?}", info.api_version);
        assert!(info.features.robust_buffer_access);
        assert!(info.queue_count >= 1);
        assert!(!info.heaps.is_empty() && !info.memory_types.is_empty());
        let pool_type = info.pool_type();
        assert!(pool_type.device_local);
        let heap = info.heaps[pool_type.heap_index as usize].size;
        let share = info.budget as f64 / heap as f64;
        assert!(
            (share - 0.8).abs() < 1e-6,
            "budget is 80% of the pool heap, not {share}"
        );
        assert_eq!(device.pool().budget(), info.budget);
        assert!(info
            .limits
            .max_compute_work_group_count
            .iter()
            .all(|&n| n >= 65535));
        assert!(info.limits.max_storage_buffer_range >= 1 << 27);
        if info.name.contains("llvmpipe") {
            assert_eq!(info.device_type, DeviceType::Cpu);
            assert!(pool_type.host_visible && pool_type.host_coherent && pool_type.host_cached);
            assert_eq!(info.transfer_path, TransferPath::Direct);
            assert_eq!(info.driver_name.as_deref(), Some("llvmpipe"));
            assert!(info.features.buffer_device_address && info.features.timeline_semaphore);
        }
        device.wait_idle().unwrap();
    }

    #[test]
    fn config_forces_staged_and_budget() {
        let cfg = DeviceConfig {
            transfer: Some(TransferPath::Staged),
            budget: Some(1 << 20),
            staging_bytes: 1 << 20,
            ..DeviceConfig::default()
        };
        let Some(device) = test_device(cfg) else {
            return;
        };
        assert_eq!(device.info().transfer_path, TransferPath::Staged);
        assert_eq!(device.staging_bytes(), 1 << 20);
        let t = Transfer::new(&device, TransferPath::Staged, device.staging_bytes()).unwrap();
        assert_eq!(t.path(), TransferPath::Staged);
        assert_eq!(device.info().budget, 1 << 20);
        assert_eq!(device.pool().budget(), 1 << 20);
    }

    #[test]
    fn filter_matching_nothing_is_no_device() {
        if test_device(DeviceConfig::default()).is_none() {
            return;
        }
        let cfg = DeviceConfig {
            filter: Some("no such device 1234".into()),
            ..DeviceConfig::default()
        };
        match Device::new(&cfg) {
            Err(Error::NoDevice { filter, available }) => {
                assert_eq!(filter.as_deref(), Some("no such device 1234"));
                assert!(!available.is_empty());
            }
            other => panic!("{other:?}"),
        }
        let cfg = DeviceConfig {
            filter: Some("999".into()),
            ..DeviceConfig::default()
        };
        assert!(matches!(Device::new(&cfg), Err(Error::NoDevice { .. })));
    }

    #[test]
    fn index_filter_opens_that_device() {
        let Some(device) = test_device(DeviceConfig::default()) else {
            return;
        };
        let index = device.info().index;
        let cfg = DeviceConfig {
            filter: Some(index.to_string()),
            ..DeviceConfig::default()
        };
        let again = Device::new(&cfg).unwrap();
        assert_eq!(again.info().name, device.info().name);
    }
}
