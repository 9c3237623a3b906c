//! What an `ash` user writes by hand: one device, one queue, one command buffer and fence,
//! explicit staging buffers and `vkCmdCopyBuffer` both ways (or, where the device offers
//! it, [`Mem::Mapped`] buffers that a kernel binds and the CPU reads and writes in place), a
//! compute pipeline with push constants, submit and wait.
//!
//! The device is opened on the same physical device as vkhmm (matched by name) with
//! `robustBufferAccess` on, as vkhmm opens it, so a kernel costs the same on both sides.

use std::ffi::CStr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use ash::vk;

/// One device, queue, command buffer and fence.
pub struct Vk {
    _entry: ash::Entry,
    instance: ash::Instance,
    /// The logical device.
    pub device: ash::Device,
    queue: vk::Queue,
    memory: vk::PhysicalDeviceMemoryProperties,
    pool: vk::CommandPool,
    cmd: vk::CommandBuffer,
    fence: vk::Fence,
    /// The physical device's name.
    pub name: String,
}

impl Vk {
    /// Opens the first device whose name contains `name` (any device when `None`).
    pub fn new(name: Option<&str>) -> anyhow::Result<Vk> {
        // SAFETY: loading the Vulkan loader runs its initialisers, which have no
        // preconditions on this process.
        let entry = unsafe { ash::Entry::load() }.context("loading the Vulkan loader")?;
        let app = vk::ApplicationInfo::default()
            .application_name(c"vkhmm-bench-raw-ash")
            .api_version(vk::API_VERSION_1_2);
        // SAFETY: the create info and the application info it points to live across the call.
        let instance = unsafe {
            entry.create_instance(
                &vk::InstanceCreateInfo::default().application_info(&app),
                None,
            )
        }?;
        // SAFETY: `instance` is a valid instance (also for the calls below).
        let pdevs = unsafe { instance.enumerate_physical_devices() }?;
        let mut chosen = None;
        for pd in pdevs {
            // SAFETY: `pd` comes from this instance.
            let props = unsafe { instance.get_physical_device_properties(pd) };
            let pname = props
                .device_name_as_c_str()
                .map(CStr::to_string_lossy)
                .unwrap_or_default()
                .into_owned();
            // SAFETY: as above.
            let families = unsafe { instance.get_physical_device_queue_family_properties(pd) };
            let family = families
                .iter()
                .position(|f| f.queue_flags.contains(vk::QueueFlags::COMPUTE));
            if let Some(q) = family {
                if name.is_none_or(|n| pname.contains(n)) {
                    chosen = Some((pd, q as u32, pname));
                    break;
                }
            }
        }
        let (pd, family, name) = chosen.ok_or_else(|| anyhow!("no Vulkan device matches"))?;
        let priorities = [1.0f32];
        let queues = [vk::DeviceQueueCreateInfo::default()
            .queue_family_index(family)
            .queue_priorities(&priorities)];
        let features = vk::PhysicalDeviceFeatures::default().robust_buffer_access(true);
        let info = vk::DeviceCreateInfo::default()
            .queue_create_infos(&queues)
            .enabled_features(&features);
        // SAFETY: `pd` belongs to `instance`; the create info lives across the call.
        let device = unsafe { instance.create_device(pd, &info, None) }?;
        // SAFETY: `pd` belongs to `instance`.
        let memory = unsafe { instance.get_physical_device_memory_properties(pd) };
        // SAFETY: family `family` was requested with one queue; the create infos live
        // across each call.
        let (queue, pool, cmd, fence) = unsafe {
            let queue = device.get_device_queue(family, 0);
            let pool = device.create_command_pool(
                &vk::CommandPoolCreateInfo::default()
                    .queue_family_index(family)
                    .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER),
                None,
            )?;
            let cmd = device.allocate_command_buffers(
                &vk::CommandBufferAllocateInfo::default()
                    .command_pool(pool)
                    .level(vk::CommandBufferLevel::PRIMARY)
                    .command_buffer_count(1),
            )?[0];
            let fence = device.create_fence(&vk::FenceCreateInfo::default(), None)?;
            (queue, pool, cmd, fence)
        };
        Ok(Vk {
            _entry: entry,
            instance,
            device,
            queue,
            memory,
            pool,
            cmd,
            fence,
            name,
        })
    }

    fn memory_type(&self, bits: u32, want: vk::MemoryPropertyFlags) -> anyhow::Result<u32> {
        let types = &self.memory.memory_types[..self.memory.memory_type_count as usize];
        (0..types.len() as u32)
            .find(|&i| bits & (1 << i) != 0 && types[i as usize].property_flags.contains(want))
            .ok_or_else(|| anyhow!("no memory type with {want:?}"))
    }

    /// A buffer of `size` bytes; mapped when `host` (HOST_VISIBLE | HOST_COHERENT, cached if
    /// available), device-local otherwise.
    pub fn buffer(&self, size: u64, host: bool) -> anyhow::Result<Buf> {
        self.buffer_in(size, if host { Mem::Staging } else { Mem::Device })
    }

    /// A buffer of `size` bytes in memory of kind `mem`.
    pub fn buffer_in(&self, size: u64, mem: Mem) -> anyhow::Result<Buf> {
        let usage = vk::BufferUsageFlags::STORAGE_BUFFER
            | vk::BufferUsageFlags::TRANSFER_SRC
            | vk::BufferUsageFlags::TRANSFER_DST;
        let d = &self.device;
        // SAFETY: the create infos live across each call; the memory is bound once, before
        // any use, and mapped whole.
        unsafe {
            let buffer = d.create_buffer(
                &vk::BufferCreateInfo::default()
                    .size(size)
                    .usage(usage)
                    .sharing_mode(vk::SharingMode::EXCLUSIVE),
                None,
            )?;
            let req = d.get_buffer_memory_requirements(buffer);
            let coherent =
                vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT;
            let cached = vk::MemoryPropertyFlags::HOST_CACHED;
            let local = vk::MemoryPropertyFlags::DEVICE_LOCAL;
            let bits = req.memory_type_bits;
            let ty = match mem {
                Mem::Staging => self
                    .memory_type(bits, coherent | cached)
                    .or_else(|_| self.memory_type(bits, coherent))?,
                Mem::Device => self.memory_type(bits, local)?,
                Mem::Mapped => self
                    .memory_type(bits, local | coherent | cached)
                    .or_else(|_| self.memory_type(bits, local | coherent))
                    .or_else(|_| self.memory_type(bits, coherent))?,
            };
            let host = mem != Mem::Device;
            let memory = d.allocate_memory(
                &vk::MemoryAllocateInfo::default()
                    .allocation_size(req.size)
                    .memory_type_index(ty),
                None,
            )?;
            d.bind_buffer_memory(buffer, memory, 0)?;
            let ptr = if host {
                d.map_memory(memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty())?
                    .cast::<u8>()
            } else {
                std::ptr::null_mut()
            };
            Ok(Buf {
                device: d.clone(),
                raw: buffer,
                memory,
                ptr,
                size,
            })
        }
    }

    /// Records the commands `record` writes, submits them and waits for the fence.
    pub fn submit_wait(
        &self,
        record: impl FnOnce(&ash::Device, vk::CommandBuffer),
    ) -> anyhow::Result<()> {
        let d = &self.device;
        // SAFETY: the command buffer is idle (every submission is waited for before the
        // next one), its pool allows resets, and the fence is unsignalled at this point.
        unsafe {
            d.reset_command_buffer(self.cmd, vk::CommandBufferResetFlags::empty())?;
            d.begin_command_buffer(
                self.cmd,
                &vk::CommandBufferBeginInfo::default()
                    .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT),
            )?;
            record(d, self.cmd);
            d.end_command_buffer(self.cmd)?;
            let cmds = [self.cmd];
            d.queue_submit(
                self.queue,
                &[vk::SubmitInfo::default().command_buffers(&cmds)],
                self.fence,
            )?;
            d.wait_for_fences(&[self.fence], true, u64::MAX)?;
            d.reset_fences(&[self.fence])?;
        }
        Ok(())
    }
}

impl Drop for Vk {
    fn drop(&mut self) {
        // SAFETY: every object was created from this device/instance; the queue is idle after
        // the wait, and the buffers (`Buf`) are dropped before `Vk` by their owners.
        unsafe {
            let _ = self.device.device_wait_idle();
            self.device.destroy_fence(self.fence, None);
            self.device.destroy_command_pool(self.pool, None);
            self.device.destroy_device(None);
            self.instance.destroy_instance(None);
        }
    }
}

/// The memory a [`Buf`] lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mem {
    /// Device-local, not mapped: reached through copies only.
    Device,
    /// Host-visible and coherent (cached where offered), mapped: a staging buffer.
    Staging,
    /// Device-local *and* host-visible where the device offers it (integrated GPUs, CPU
    /// devices, resizable BAR), else host-visible; mapped: kernels bind it and the CPU reads
    /// and writes it in place, with no copy.
    Mapped,
}

/// A buffer with its own memory (mapped when host-visible). Drop it before its `Vk`.
pub struct Buf {
    device: ash::Device,
    /// The buffer handle.
    pub raw: vk::Buffer,
    memory: vk::DeviceMemory,
    ptr: *mut u8,
    /// Size in bytes.
    pub size: u64,
}

impl Buf {
    /// The mapped bytes (host buffers only).
    pub fn bytes(&mut self) -> &mut [u8] {
        assert!(!self.ptr.is_null(), "not a host-visible buffer");
        // SAFETY: the whole memory object is mapped for the buffer's life and no submission
        // is in flight while the caller holds this borrow (every submit is waited for).
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.size as usize) }
    }

    /// The mapped memory as `T`s (host buffers only; the size must be a multiple of `T`'s).
    pub fn typed<T: bytemuck::Pod>(&mut self) -> &mut [T] {
        bytemuck::cast_slice_mut(self.bytes())
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: the device is idle for this buffer (every submission is waited for) and the
        // handles are ours.
        unsafe {
            self.device.destroy_buffer(self.raw, None);
            self.device.free_memory(self.memory, None);
        }
    }
}

/// Records a copy of `size` bytes from the start of `src` to the start of `dst`.
pub fn copy(d: &ash::Device, cmd: vk::CommandBuffer, src: vk::Buffer, dst: vk::Buffer, size: u64) {
    // SAFETY: called while `cmd` is recording; both buffers hold at least `size` bytes.
    unsafe {
        d.cmd_copy_buffer(
            cmd,
            src,
            dst,
            &[vk::BufferCopy {
                src_offset: 0,
                dst_offset: 0,
                size,
            }],
        )
    };
}

/// Records the copies `regions` from `src` to `dst` (`vkCmdCopyBuffer` with many regions).
pub fn copy_regions(
    d: &ash::Device,
    cmd: vk::CommandBuffer,
    src: vk::Buffer,
    dst: vk::Buffer,
    regions: &[vk::BufferCopy],
) {
    // SAFETY: called while `cmd` is recording; the caller's regions lie inside both buffers
    // and the destination regions do not overlap.
    unsafe { d.cmd_copy_buffer(cmd, src, dst, regions) };
}

/// Records `vkCmdFillBuffer` of all of `buf` with the word `value`.
pub fn fill(d: &ash::Device, cmd: vk::CommandBuffer, buf: vk::Buffer, value: u32) {
    // SAFETY: called while `cmd` is recording; `buf` allows transfer writes.
    unsafe { d.cmd_fill_buffer(cmd, buf, 0, vk::WHOLE_SIZE, value) };
}

/// Records a memory barrier from the stage `from` (accesses `src`) to `to` (accesses `dst`).
pub fn barrier(
    d: &ash::Device,
    cmd: vk::CommandBuffer,
    from: vk::PipelineStageFlags,
    src: vk::AccessFlags,
    to: vk::PipelineStageFlags,
    dst: vk::AccessFlags,
) {
    let b = [vk::MemoryBarrier::default()
        .src_access_mask(src)
        .dst_access_mask(dst)];
    // SAFETY: called while `cmd` is recording.
    unsafe { d.cmd_pipeline_barrier(cmd, from, to, vk::DependencyFlags::empty(), &b, &[], &[]) };
}

/// Host `Vec` ↔ staging buffer ↔ device-local buffer, one size.
pub struct StagedCopy {
    src: Vec<u8>,
    dst: Vec<u8>,
    staging: Buf,
    device_buf: Buf,
}

impl StagedCopy {
    /// Buffers for `size` bytes.
    pub fn new(vk: &Vk, size: usize) -> anyhow::Result<StagedCopy> {
        let src: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
        let mut s = StagedCopy {
            src,
            dst: vec![1u8; size],
            staging: vk.buffer(size as u64, true)?,
            device_buf: vk.buffer(size as u64, false)?,
        };
        s.staging.bytes().fill(0);
        Ok(s)
    }

    /// memcpy into the staging buffer, copy to the device buffer, submit, wait.
    pub fn upload(&mut self, vk: &Vk) -> anyhow::Result<Duration> {
        let t = Instant::now();
        self.staging.bytes().copy_from_slice(&self.src);
        let (s, d, n) = (self.staging.raw, self.device_buf.raw, self.staging.size);
        vk.submit_wait(|dev, cmd| copy(dev, cmd, s, d, n))?;
        Ok(t.elapsed())
    }

    /// Copy the device buffer to the staging buffer, submit, wait, memcpy out.
    pub fn download(&mut self, vk: &Vk) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let (s, d, n) = (self.device_buf.raw, self.staging.raw, self.staging.size);
        vk.submit_wait(|dev, cmd| copy(dev, cmd, s, d, n))?;
        let (staging, dst) = (&mut self.staging, &mut self.dst);
        dst.copy_from_slice(staging.bytes());
        Ok(t.elapsed())
    }

    /// Whether the last download returned the uploaded bytes.
    pub fn verify(&self) -> bool {
        self.src == self.dst
    }
}

/// A compute pipeline for a SPIR-V kernel with `bindings` storage buffers and `push` bytes
/// of push constants, and one descriptor set.
pub struct Pipeline {
    device: ash::Device,
    module: vk::ShaderModule,
    set_layout: vk::DescriptorSetLayout,
    layout: vk::PipelineLayout,
    pipeline: vk::Pipeline,
    pool: vk::DescriptorPool,
    set: vk::DescriptorSet,
}

impl Pipeline {
    /// Creates the pipeline and binds `buffers` (binding i = `buffers[i]`) to its set.
    pub fn new(vk: &Vk, words: &[u32], push: u32, buffers: &[&Buf]) -> anyhow::Result<Pipeline> {
        let d = &vk.device;
        let bindings: Vec<_> = (0..buffers.len() as u32)
            .map(|i| {
                vk::DescriptorSetLayoutBinding::default()
                    .binding(i)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .descriptor_count(1)
                    .stage_flags(vk::ShaderStageFlags::COMPUTE)
            })
            .collect();
        let ranges = [vk::PushConstantRange {
            stage_flags: vk::ShaderStageFlags::COMPUTE,
            offset: 0,
            size: push,
        }];
        // SAFETY: every create info lives across its call; the objects are destroyed in Drop.
        unsafe {
            let module =
                d.create_shader_module(&vk::ShaderModuleCreateInfo::default().code(words), None)?;
            let set_layout = d.create_descriptor_set_layout(
                &vk::DescriptorSetLayoutCreateInfo::default().bindings(&bindings),
                None,
            )?;
            let set_layouts = [set_layout];
            let layout = d.create_pipeline_layout(
                &vk::PipelineLayoutCreateInfo::default()
                    .set_layouts(&set_layouts)
                    .push_constant_ranges(if push > 0 { &ranges } else { &[] }),
                None,
            )?;
            let stage = vk::PipelineShaderStageCreateInfo::default()
                .stage(vk::ShaderStageFlags::COMPUTE)
                .module(module)
                .name(c"main");
            let pipeline = d
                .create_compute_pipelines(
                    vk::PipelineCache::null(),
                    &[vk::ComputePipelineCreateInfo::default()
                        .stage(stage)
                        .layout(layout)],
                    None,
                )
                .map_err(|(_, e)| e)?[0];
            let sizes = [vk::DescriptorPoolSize {
                ty: vk::DescriptorType::STORAGE_BUFFER,
                descriptor_count: buffers.len() as u32,
            }];
            let pool = d.create_descriptor_pool(
                &vk::DescriptorPoolCreateInfo::default()
                    .max_sets(1)
                    .pool_sizes(&sizes),
                None,
            )?;
            let set = d.allocate_descriptor_sets(
                &vk::DescriptorSetAllocateInfo::default()
                    .descriptor_pool(pool)
                    .set_layouts(&set_layouts),
            )?[0];
            let infos: Vec<_> = buffers
                .iter()
                .map(|b| vk::DescriptorBufferInfo {
                    buffer: b.raw,
                    offset: 0,
                    range: vk::WHOLE_SIZE,
                })
                .collect();
            let writes: Vec<_> = infos
                .iter()
                .enumerate()
                .map(|(i, info)| {
                    vk::WriteDescriptorSet::default()
                        .dst_set(set)
                        .dst_binding(i as u32)
                        .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                        .buffer_info(std::slice::from_ref(info))
                })
                .collect();
            d.update_descriptor_sets(&writes, &[]);
            Ok(Pipeline {
                device: d.clone(),
                module,
                set_layout,
                layout,
                pipeline,
                pool,
                set,
            })
        }
    }

    /// Records bind, push constants and one dispatch of `groups` workgroups.
    pub fn record(&self, d: &ash::Device, cmd: vk::CommandBuffer, push: &[u8], groups: u32) {
        // SAFETY: called while `cmd` is recording; the set's buffers outlive the submission
        // (the caller waits for it).
        unsafe {
            d.cmd_bind_pipeline(cmd, vk::PipelineBindPoint::COMPUTE, self.pipeline);
            d.cmd_bind_descriptor_sets(
                cmd,
                vk::PipelineBindPoint::COMPUTE,
                self.layout,
                0,
                &[self.set],
                &[],
            );
            if !push.is_empty() {
                d.cmd_push_constants(cmd, self.layout, vk::ShaderStageFlags::COMPUTE, 0, push);
            }
            d.cmd_dispatch(cmd, groups, 1, 1);
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // SAFETY: no submission using these objects is in flight (every submit is waited for).
        unsafe {
            self.device.destroy_descriptor_pool(self.pool, None);
            self.device.destroy_pipeline(self.pipeline, None);
            self.device.destroy_pipeline_layout(self.layout, None);
            self.device
                .destroy_descriptor_set_layout(self.set_layout, None);
            self.device.destroy_shader_module(self.module, None);
        }
    }
}

/// SAXPY push constants, as `shaders/saxpy.wgsl` declares them.
pub fn saxpy_push(a: f32, n: u32) -> [u8; 8] {
    let mut p = [0u8; 8];
    p[..4].copy_from_slice(&a.to_ne_bytes());
    p[4..].copy_from_slice(&n.to_ne_bytes());
    p
}

/// Grid-stride group count for `n` elements and workgroups of 256.
pub fn saxpy_groups(n: usize) -> u32 {
    n.div_ceil(256).clamp(1, 65535) as u32
}

/// The raw dispatch baseline: saxpy on two device-local buffers, already resident.
pub struct RawDispatch {
    pipeline: Pipeline,
    _x: Buf,
    _y: Buf,
    push: [u8; 8],
    groups: u32,
}

impl RawDispatch {
    /// `n` floats per buffer.
    pub fn new(vk: &Vk, n: usize) -> anyhow::Result<RawDispatch> {
        let x = vk.buffer(n as u64 * 4, false)?;
        let y = vk.buffer(n as u64 * 4, false)?;
        let pipeline = Pipeline::new(vk, vkhmm::shaders::SAXPY_SPIRV, 8, &[&x, &y])?;
        Ok(RawDispatch {
            pipeline,
            _x: x,
            _y: y,
            push: saxpy_push(2.0, n as u32),
            groups: saxpy_groups(n),
        })
    }

    /// Record, submit, wait: one dispatch.
    pub fn run(&self, vk: &Vk) -> anyhow::Result<Duration> {
        let t = Instant::now();
        vk.submit_wait(|d, cmd| self.pipeline.record(d, cmd, &self.push, self.groups))?;
        Ok(t.elapsed())
    }
}

/// End-to-end saxpy by hand: memcpy `x`, `y` into staging buffers, copy to device, dispatch,
/// copy `y` back to its staging buffer, the CPU sums the mapped result.
pub struct RawSaxpy {
    pipeline: Pipeline,
    sx: Buf,
    sy: Buf,
    bx: Buf,
    by: Buf,
    n: usize,
    /// Seconds of the last run spent in memcpy to staging / submit+wait / the CPU read.
    pub parts: [f64; 3],
}

impl RawSaxpy {
    /// Buffers for `n` floats each.
    pub fn new(vk: &Vk, n: usize) -> anyhow::Result<RawSaxpy> {
        let bytes = n as u64 * 4;
        let bx = vk.buffer(bytes, false)?;
        let by = vk.buffer(bytes, false)?;
        let pipeline = Pipeline::new(vk, vkhmm::shaders::SAXPY_SPIRV, 8, &[&bx, &by])?;
        Ok(RawSaxpy {
            pipeline,
            sx: vk.buffer(bytes, true)?,
            sy: vk.buffer(bytes, true)?,
            bx,
            by,
            n,
            parts: [0.0; 3],
        })
    }

    /// One end-to-end run on `x`, `y`; returns the time and the sum of the result.
    pub fn run(
        &mut self,
        vk: &Vk,
        x: &[f32],
        y: &[f32],
        a: f32,
    ) -> anyhow::Result<(Duration, f64)> {
        let t = Instant::now();
        self.sx.bytes().copy_from_slice(bytemuck::cast_slice(x));
        self.sy.bytes().copy_from_slice(bytemuck::cast_slice(y));
        let t1 = t.elapsed();
        let bytes = self.sx.size;
        let (sx, sy, bx, by) = (self.sx.raw, self.sy.raw, self.bx.raw, self.by.raw);
        let push = saxpy_push(a, self.n as u32);
        let groups = saxpy_groups(self.n);
        let pipeline = &self.pipeline;
        vk.submit_wait(|d, cmd| {
            copy(d, cmd, sx, bx, bytes);
            copy(d, cmd, sy, by, bytes);
            barrier(
                d,
                cmd,
                vk::PipelineStageFlags::TRANSFER,
                vk::AccessFlags::TRANSFER_WRITE,
                vk::PipelineStageFlags::COMPUTE_SHADER,
                vk::AccessFlags::SHADER_READ | vk::AccessFlags::SHADER_WRITE,
            );
            pipeline.record(d, cmd, &push, groups);
            barrier(
                d,
                cmd,
                vk::PipelineStageFlags::COMPUTE_SHADER,
                vk::AccessFlags::SHADER_WRITE,
                vk::PipelineStageFlags::TRANSFER,
                vk::AccessFlags::TRANSFER_READ,
            );
            copy(d, cmd, by, sy, bytes);
            barrier(
                d,
                cmd,
                vk::PipelineStageFlags::TRANSFER,
                vk::AccessFlags::TRANSFER_WRITE,
                vk::PipelineStageFlags::HOST,
                vk::AccessFlags::HOST_READ,
            );
        })?;
        let t2 = t.elapsed();
        let out: &[f32] = bytemuck::cast_slice(self.sy.bytes());
        let sum = super::checksum(out);
        let total = t.elapsed();
        self.parts = [
            t1.as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (total - t2).as_secs_f64(),
        ];
        Ok((total, sum))
    }
}
