//! Host memory the device accesses in place: `VK_EXT_external_memory_host`.
//!
//! A [`HostImport`] is a `VkBuffer` bound to `VkDeviceMemory` imported from a range of the
//! process's own pages (`VkImportMemoryHostPointerInfoEXT`). A kernel bound to it reads and
//! writes those pages directly: nothing is copied, nothing is trapped, and the pages stay
//! `Host` for the mirror (CUDA's `cudaMemAdviseSetAccessedBy`, zero copy). On an integrated
//! GPU or lavapipe that is as fast as pool memory; on a discrete GPU every access crosses the
//! bus, which pays for data a kernel touches once.
//!
//! The range must start and end on `minImportedHostPointerAlignment` (a page on lavapipe and
//! most drivers) and stay mapped while imported: the driver may pin the pages (a discrete
//! GPU's DMA needs them) or keep only the pointer (lavapipe). Who keeps that promise is
//! `runtime::in_place`: it watches the range for `munmap`/`madvise(DONTNEED)` through the
//! fault service and drops an import whose pages went away before any launch could use it.
//!
//! An import is not pool memory: it counts neither against the budget nor in
//! `device_bytes_in_use`, and eviction never sees it.

use std::sync::Arc;

use ash::vk;

use super::map::{map_host_device_oom, map_host_oom};
use super::Device;
use crate::error::{Error, Result, VulkanCode};

/// A range of host memory imported as a device buffer. Dropping it frees the buffer and the
/// imported memory (the pages themselves stay the program's).
pub(crate) struct HostImport {
    raw: vk::Buffer,
    memory: vk::DeviceMemory,
    addr: usize,
    len: u64,
    device: Arc<Device>,
}

impl std::fmt::Debug for HostImport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostImport")
            .field("addr", &format_args!("{:#x}", self.addr))
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl HostImport {
    /// The buffer covering the whole range.
    pub(crate) fn raw(&self) -> vk::Buffer {
        self.raw
    }

    /// The first address of the range.
    pub(crate) fn addr(&self) -> usize {
        self.addr
    }

    /// The range's length in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }
}

impl Device {
    /// The alignment an imported range's start and length need, or `None` when the device
    /// cannot import host memory.
    pub(crate) fn host_import_alignment(&self) -> Option<u64> {
        if self.info.features.external_memory_host {
            self.info.features.min_imported_host_pointer_alignment
        } else {
            None
        }
    }

    /// Imports `[addr, addr + len)` as a storage buffer.
    ///
    /// # Safety
    ///
    /// The range must be mapped, readable and writable private memory of this process, and
    /// stay mapped (with the same pages) until the import is dropped and no submitted work
    /// uses it any more. `addr` and `len` must be multiples of
    /// [`host_import_alignment`](Self::host_import_alignment).
    ///
    /// # Errors
    ///
    /// [`Error::OutOfDeviceMemory`] / [`Error::OutOfHostMemory`] when the driver runs out;
    /// [`Error::Vulkan`] when it refuses the pointer (`INVALID_EXTERNAL_HANDLE`).
    pub(crate) unsafe fn import_host(
        self: &Arc<Self>,
        addr: usize,
        len: u64,
    ) -> Result<HostImport> {
        let handle_type = vk::ExternalMemoryHandleTypeFlags::HOST_ALLOCATION_EXT;
        let ext = ash::ext::external_memory_host::Device::new(&self.instance, &self.raw);
        let mut host_props = vk::MemoryHostPointerPropertiesEXT::default();
        // SAFETY: the extension is enabled (`host_import_alignment` was `Some`, checked by
        // the caller's alignment); `addr` is a host pointer of this process (caller).
        unsafe {
            (ext.fp().get_memory_host_pointer_properties_ext)(
                ext.device(),
                handle_type,
                addr as *const std::ffi::c_void,
                &mut host_props,
            )
        }
        .result()
        .map_err(map_host_oom("vkGetMemoryHostPointerPropertiesEXT"))?;
        let mut external = vk::ExternalMemoryBufferCreateInfo::default().handle_types(handle_type);
        let info = vk::BufferCreateInfo::default()
            .size(len)
            .usage(self.pool.usage())
            .sharing_mode(vk::SharingMode::EXCLUSIVE)
            .push_next(&mut external);
        let (budget, in_use) = (self.pool.budget(), self.pool.in_use());
        // SAFETY: the device is alive; the create info is valid (len > 0, usage non-empty,
        // an external handle type the extension defines).
        let raw = unsafe { self.raw.create_buffer(&info, None) }.map_err(map_host_device_oom(
            "vkCreateBuffer",
            len,
            budget,
            in_use,
        ))?;
        // SAFETY: `raw` was created above from this device.
        let req = unsafe { self.raw.get_buffer_memory_requirements(raw) };
        let bits = req.memory_type_bits & host_props.memory_type_bits;
        let destroy = |e: Error| {
            // SAFETY: the buffer is unused and has no memory bound.
            unsafe { self.raw.destroy_buffer(raw, None) };
            e
        };
        if bits == 0 || req.size > len {
            return Err(destroy(Error::Vulkan {
                call: "vkGetMemoryHostPointerPropertiesEXT (no memory type fits the buffer)",
                code: VulkanCode::of(vk::Result::ERROR_INVALID_EXTERNAL_HANDLE),
            }));
        }
        let mut import = vk::ImportMemoryHostPointerInfoEXT::default()
            .handle_type(handle_type)
            .host_pointer(addr as *mut std::ffi::c_void);
        let alloc = vk::MemoryAllocateInfo::default()
            .allocation_size(len)
            .memory_type_index(bits.trailing_zeros())
            .push_next(&mut import);
        // SAFETY: the import info names a host pointer of this process, aligned as the
        // extension requires, valid for `len` bytes until the memory is freed (caller); the
        // memory type is one the pointer supports.
        let memory = unsafe { self.raw.allocate_memory(&alloc, None) }.map_err(|e| {
            destroy(map_host_device_oom(
                "vkAllocateMemory (host import)",
                len,
                budget,
                in_use,
            )(e))
        })?;
        // SAFETY: buffer and memory are of this device, unused, and the memory is large
        // enough for the buffer at offset 0 with a type it allows.
        if let Err(e) = unsafe { self.raw.bind_buffer_memory(raw, memory, 0) } {
            // SAFETY: the memory is bound to nothing and used by nothing.
            unsafe { self.raw.free_memory(memory, None) };
            return Err(destroy(map_host_oom("vkBindBufferMemory")(e)));
        }
        Ok(HostImport {
            raw,
            memory,
            addr,
            len,
            device: Arc::clone(self),
        })
    }
}

impl Drop for HostImport {
    fn drop(&mut self) {
        // SAFETY: the owner drops an import only when no submitted work uses it
        // (`runtime::in_place` drops them under the worker lock, which settles the launch in
        // flight first); the buffer and memory are ours alone.
        unsafe {
            self.device.raw.destroy_buffer(self.raw, None);
            self.device.raw.free_memory(self.memory, None);
        }
    }
}
