//! Compute pipelines and their dispatch.
//!
//! A [`Pipeline`] is built from SPIR-V and the [`KernelInfo`] the shader room reflected from
//! it: one descriptor set layout (set 0, bindings `0..n`, storage or uniform buffers), one
//! push-constant range when the kernel has a push block, one compute pipeline. vkhmm binds
//! the i-th launch argument to binding i, so the interface is checked first: every binding in
//! set 0, numbered without gaps, push block within the device limit, else
//! [`Error::UnsupportedKernel`] naming what is wrong.
//!
//! The [`Dispatcher`] (one per runtime, used under its lock) owns one command buffer, one
//! fence and one descriptor pool. Each submission waits for the previous one, resets the pool,
//! allocates the set, writes `(buffer, offset, range)` per binding, records barrier → bind →
//! push → dispatch → barrier and submits. Resetting a pool per submit is simple and portable
//! (push descriptors are an extension); the cost is one `vkAllocateDescriptorSets` per
//! launch, nothing next to the submit itself.

use std::ffi::CString;
use std::sync::Arc;

use ash::vk;

use super::commands::CommandSlots;
use super::map::{map_host_oom, map_host_oom_invalid_shader};
use super::{Device, DeviceBlock, DeviceLimits};
use crate::error::{Error, Result};
use crate::shader::{BindingKind, KernelInfo};

/// The SPIR-V magic number (first word of every module).
const SPIRV_MAGIC: u32 = 0x0723_0203;

/// A compute pipeline with its layouts. Cheap to clone (shared); the Vulkan objects are
/// destroyed when the last clone — possibly the [`Dispatcher`]'s, held until its wait — drops.
#[derive(Clone)]
pub(crate) struct Pipeline {
    shared: Arc<PipelineObjects>,
}

struct PipelineObjects {
    device: Arc<Device>,
    raw: vk::Pipeline,
    layout: vk::PipelineLayout,
    set_layout: vk::DescriptorSetLayout,
    kinds: Vec<BindingKind>,
    push_constant_size: u32,
    workgroup_size: [u32; 3],
}

impl Pipeline {
    /// Builds the pipeline for `info.entry` of `spirv`.
    ///
    /// `spirv` should come through the shader room's reflection (which validates it): a
    /// driver may crash on malformed SPIR-V, and only the magic number is checked here.
    ///
    /// # Errors
    ///
    /// [`Error::UnsupportedKernel`] for an interface vkhmm cannot bind;
    /// [`Error::InvalidShader`] for words that are not SPIR-V, an entry name with a NUL, or a
    /// module the driver rejects; driver failures as mapped.
    pub(crate) fn new(device: &Arc<Device>, spirv: &[u32], info: &KernelInfo) -> Result<Pipeline> {
        check_interface(info, &device.info().limits)?;
        if spirv.first() != Some(&SPIRV_MAGIC) {
            return Err(Error::InvalidShader(
                "the words do not start with the SPIR-V magic number".into(),
            ));
        }
        let entry = CString::new(info.entry.as_str()).map_err(|_| {
            Error::InvalidShader(format!("entry point name {:?} contains a NUL", info.entry))
        })?;
        // Built up in place: `Drop` destroys whatever was created if a later step fails
        // (destroying a null handle is a no-op in Vulkan).
        let mut objects = PipelineObjects {
            device: Arc::clone(device),
            raw: vk::Pipeline::null(),
            layout: vk::PipelineLayout::null(),
            set_layout: vk::DescriptorSetLayout::null(),
            kinds: info.bindings.iter().map(|b| b.kind).collect(),
            push_constant_size: info.push_constant_size,
            workgroup_size: info.workgroup_size,
        };
        objects.create_layouts()?;
        objects.create_pipeline(spirv, &entry)?;
        Ok(Pipeline {
            shared: Arc::new(objects),
        })
    }

    /// The descriptor kind of each binding, by binding number.
    pub(crate) fn binding_kinds(&self) -> &[BindingKind] {
        &self.shared.kinds
    }

    /// Size of the push-constant block (0 when none).
    pub(crate) fn push_constant_size(&self) -> u32 {
        self.shared.push_constant_size
    }

    /// The kernel's workgroup size.
    pub(crate) fn workgroup_size(&self) -> [u32; 3] {
        self.shared.workgroup_size
    }

    /// The device the pipeline was built on.
    pub(crate) fn device(&self) -> &Arc<Device> {
        &self.shared.device
    }
}

/// Checks that vkhmm can bind `info`'s interface on a device with `limits`.
fn check_interface(info: &KernelInfo, limits: &DeviceLimits) -> Result<()> {
    let unsupported = |what: String| {
        Err(Error::UnsupportedKernel(format!(
            "entry point `{}`: {what}",
            info.entry
        )))
    };
    for (i, b) in info.bindings.iter().enumerate() {
        let name = b
            .name
            .as_deref()
            .map(|n| format!(" (`{n}`)"))
            .unwrap_or_default();
        if b.set != 0 {
            return unsupported(format!(
                "binding {}{name} is in @group({}); vkhmm binds @group(0) only",
                b.binding, b.set
            ));
        }
        if b.binding != i as u32 {
            return unsupported(format!(
                "binding numbers must run 0..{} without gaps or repeats, found {}{name} where {i} belongs",
                info.bindings.len(),
                b.binding
            ));
        }
    }
    let push = info.push_constant_size;
    if push > limits.max_push_constants_size {
        return unsupported(format!(
            "{push} bytes of push constants, over the device's limit of {}",
            limits.max_push_constants_size
        ));
    }
    if push % 4 != 0 {
        return unsupported(format!(
            "{push} bytes of push constants is not a multiple of 4"
        ));
    }
    Ok(())
}

fn descriptor_type(kind: BindingKind) -> vk::DescriptorType {
    match kind {
        BindingKind::Storage => vk::DescriptorType::STORAGE_BUFFER,
        BindingKind::Uniform => vk::DescriptorType::UNIFORM_BUFFER,
    }
}

impl PipelineObjects {
    fn create_layouts(&mut self) -> Result<()> {
        let raw = &self.device.raw;
        let bindings: Vec<_> = (0..)
            .zip(&self.kinds)
            .map(|(i, &kind)| {
                vk::DescriptorSetLayoutBinding::default()
                    .binding(i)
                    .descriptor_type(descriptor_type(kind))
                    .descriptor_count(1)
                    .stage_flags(vk::ShaderStageFlags::COMPUTE)
            })
            .collect();
        let info = vk::DescriptorSetLayoutCreateInfo::default().bindings(&bindings);
        // SAFETY: the device is alive; the bindings are numbered 0..n, one descriptor each.
        self.set_layout = unsafe { raw.create_descriptor_set_layout(&info, None) }
            .map_err(map_host_oom("vkCreateDescriptorSetLayout"))?;
        let push = [vk::PushConstantRange::default()
            .stage_flags(vk::ShaderStageFlags::COMPUTE)
            .offset(0)
            .size(self.push_constant_size)];
        let ranges = if self.push_constant_size > 0 {
            &push[..]
        } else {
            &[]
        };
        let set_layouts = [self.set_layout];
        let info = vk::PipelineLayoutCreateInfo::default()
            .set_layouts(&set_layouts)
            .push_constant_ranges(ranges);
        // SAFETY: the set layout is alive; the push range is within the device limit and a
        // multiple of 4 (checked by `check_interface`).
        self.layout = unsafe { raw.create_pipeline_layout(&info, None) }
            .map_err(map_host_oom("vkCreatePipelineLayout"))?;
        Ok(())
    }

    fn create_pipeline(&mut self, spirv: &[u32], entry: &CString) -> Result<()> {
        let raw = &self.device.raw;
        let info = vk::ShaderModuleCreateInfo::default().code(spirv);
        // SAFETY: `spirv` starts with the magic number; the caller hands in reflected (and so
        // validated) SPIR-V.
        let module = unsafe { raw.create_shader_module(&info, None) }
            .map_err(map_host_oom_invalid_shader("vkCreateShaderModule"))?;
        let stage = vk::PipelineShaderStageCreateInfo::default()
            .stage(vk::ShaderStageFlags::COMPUTE)
            .module(module)
            .name(entry);
        let info = [vk::ComputePipelineCreateInfo::default()
            .stage(stage)
            .layout(self.layout)];
        // SAFETY: the module and layout are alive; the layout matches the reflected interface.
        let created =
            unsafe { raw.create_compute_pipelines(vk::PipelineCache::null(), &info, None) };
        // SAFETY: the module is only needed while pipelines are created.
        unsafe { raw.destroy_shader_module(module, None) };
        self.raw = created
            .map_err(|(_, e)| map_host_oom_invalid_shader("vkCreateComputePipelines")(e))?
            .first()
            .copied()
            .unwrap_or_default();
        Ok(())
    }
}

impl Drop for PipelineObjects {
    fn drop(&mut self) {
        let raw = &self.device.raw;
        // SAFETY: no submission uses these objects any more (the dispatcher holds a clone of the
        // pipeline until its wait); null handles are ignored.
        unsafe {
            raw.destroy_pipeline(self.raw, None);
            raw.destroy_pipeline_layout(self.layout, None);
            raw.destroy_descriptor_set_layout(self.set_layout, None);
        }
    }
}

/// One buffer argument of a dispatch: `range` bytes of `block` from `offset`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BufferArg<'a> {
    /// The block holding the binding's data.
    pub block: &'a DeviceBlock,
    /// Offset of the binding in the block.
    pub offset: u64,
    /// Length of the binding in bytes.
    pub range: u64,
}

/// Records and submits dispatches, one at a time.
pub(crate) struct Dispatcher {
    device: Arc<Device>,
    cmds: CommandSlots,
    pool: vk::DescriptorPool,
    /// Descriptors of each type the pool holds.
    capacity: u32,
    /// The pipeline of the submission in flight, kept alive until it is waited for.
    in_flight: Option<Pipeline>,
    infos: Vec<vk::DescriptorBufferInfo>,
}

/// Descriptors of each type a fresh dispatcher's pool holds; grown on demand.
const INITIAL_CAPACITY: u32 = 16;

impl Dispatcher {
    /// Creates the dispatcher's command buffer, fence and descriptor pool.
    pub(crate) fn new(device: &Arc<Device>) -> Result<Self> {
        let mut dispatcher = Dispatcher {
            device: Arc::clone(device),
            cmds: CommandSlots::new(&device.raw, device.info().queue_family, 1)?,
            pool: vk::DescriptorPool::null(),
            capacity: 0,
            in_flight: None,
            infos: Vec::new(),
        };
        dispatcher.reserve(INITIAL_CAPACITY)?;
        Ok(dispatcher)
    }

    /// Makes the descriptor pool hold at least `count` descriptors of each type. Only called
    /// while nothing is in flight.
    fn reserve(&mut self, count: u32) -> Result<()> {
        if count <= self.capacity {
            return Ok(());
        }
        let raw = &self.device.raw;
        // SAFETY: no set of the old pool is in use (nothing in flight); null is ignored.
        unsafe { raw.destroy_descriptor_pool(self.pool, None) };
        self.pool = vk::DescriptorPool::null();
        self.capacity = 0;
        let sizes = [
            vk::DescriptorType::STORAGE_BUFFER,
            vk::DescriptorType::UNIFORM_BUFFER,
        ]
        .map(|ty| vk::DescriptorPoolSize {
            ty,
            descriptor_count: count,
        });
        let info = vk::DescriptorPoolCreateInfo::default()
            .max_sets(1)
            .pool_sizes(&sizes);
        // SAFETY: the device is alive; the create info is valid.
        self.pool = unsafe { raw.create_descriptor_pool(&info, None) }
            .map_err(map_host_oom("vkCreateDescriptorPool"))?;
        self.capacity = count;
        Ok(())
    }

    /// Validates and submits one dispatch of `pipeline` over `groups` workgroups, binding
    /// `buffers[i]` to binding i and pushing `push`. Waits for the previous submission first.
    ///
    /// # Safety
    ///
    /// - every block in `buffers` stays alive until [`wait`](Self::wait) returns (or the
    ///   dispatcher is dropped);
    /// - until then nothing else writes the bound ranges, and nothing reads ranges of
    ///   bindings the kernel writes (no [`Transfer`](super::Transfer), no access through the
    ///   mapping).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidDispatch`] for a group count of 0 or over the device limit;
    /// [`Error::ArgumentCount`], [`Error::PushConstantSize`], [`Error::EmptyBinding`],
    /// [`Error::BindingTooLarge`] (over the device limit or past the block's end) and
    /// [`Error::MisalignedBinding`] (offset not aligned for the descriptor type) for
    /// arguments that do not fit the kernel or the device; driver failures as mapped.
    pub(crate) unsafe fn submit(
        &mut self,
        pipeline: &Pipeline,
        buffers: &[BufferArg<'_>],
        push: &[u8],
        groups: [u32; 3],
    ) -> Result<()> {
        validate(pipeline, buffers, push, groups, &self.device.info().limits)?;
        debug_assert!(Arc::ptr_eq(pipeline.device(), &self.device));
        self.wait()?;
        self.reserve(buffers.len() as u32)?;
        let set = self.write_set(pipeline, buffers)?;
        let raw = &self.device.raw;
        let p = &pipeline.shared;
        let cmd = self.cmds.begin(raw, 0)?;
        // SAFETY: `cmd` is recording; the pipeline, its layout and the set (written above to
        // match the layout) are alive; `push` matches the layout's range (validated); `groups`
        // is within the device limits (validated).
        unsafe {
            raw.cmd_bind_pipeline(cmd, vk::PipelineBindPoint::COMPUTE, p.raw);
            raw.cmd_bind_descriptor_sets(
                cmd,
                vk::PipelineBindPoint::COMPUTE,
                p.layout,
                0,
                &[set],
                &[],
            );
            if !push.is_empty() {
                raw.cmd_push_constants(cmd, p.layout, vk::ShaderStageFlags::COMPUTE, 0, push);
            }
            raw.cmd_dispatch(cmd, groups[0], groups[1], groups[2]);
        }
        // SAFETY: the pipeline is kept in `in_flight` and the blocks are kept alive by the
        // caller until the wait; the descriptor pool is reset only after it.
        unsafe { self.cmds.submit(&self.device, 0) }?;
        self.in_flight = Some(pipeline.clone());
        Ok(())
    }

    /// Resets the pool and writes a descriptor set binding `buffers` for `pipeline`.
    fn write_set(
        &mut self,
        pipeline: &Pipeline,
        buffers: &[BufferArg<'_>],
    ) -> Result<vk::DescriptorSet> {
        let raw = &self.device.raw;
        // SAFETY: nothing in flight uses the pool's set (waited for by the caller).
        unsafe { raw.reset_descriptor_pool(self.pool, vk::DescriptorPoolResetFlags::empty()) }
            .map_err(map_host_oom("vkResetDescriptorPool"))?;
        let layouts = [pipeline.shared.set_layout];
        let info = vk::DescriptorSetAllocateInfo::default()
            .descriptor_pool(self.pool)
            .set_layouts(&layouts);
        // SAFETY: the pool holds one set of at least `buffers.len()` descriptors of each type.
        let set = unsafe { raw.allocate_descriptor_sets(&info) }
            .map_err(map_host_oom("vkAllocateDescriptorSets"))?[0];
        self.infos.clear();
        self.infos
            .extend(buffers.iter().map(|b| vk::DescriptorBufferInfo {
                buffer: b.block.raw(),
                offset: b.offset,
                range: b.range,
            }));
        let writes: Vec<_> = (0..)
            .zip(pipeline.binding_kinds().iter().zip(&self.infos))
            .map(|(i, (&kind, info))| {
                vk::WriteDescriptorSet::default()
                    .dst_set(set)
                    .dst_binding(i)
                    .descriptor_type(descriptor_type(kind))
                    .buffer_info(std::slice::from_ref(info))
            })
            .collect();
        // SAFETY: the set is fresh and unused; each write matches its binding's type, and the
        // ranges lie inside live blocks (validated).
        unsafe { raw.update_descriptor_sets(&writes, &[]) };
        Ok(set)
    }

    /// Waits for the submission in flight, if any.
    pub(crate) fn wait(&mut self) -> Result<()> {
        let result = self.cmds.wait(&self.device.raw, 0);
        if result.is_ok() {
            self.in_flight = None;
        }
        result
    }

    /// [`submit`](Self::submit), then [`wait`](Self::wait).
    ///
    /// # Safety
    ///
    /// As for [`submit`](Self::submit), for the duration of this call (the blocks outlive it
    /// by construction).
    pub(crate) unsafe fn dispatch(
        &mut self,
        pipeline: &Pipeline,
        buffers: &[BufferArg<'_>],
        push: &[u8],
        groups: [u32; 3],
    ) -> Result<()> {
        // SAFETY: forwarded to the caller; the wait below ends the blocks' use in this call.
        unsafe { self.submit(pipeline, buffers, push, groups) }?;
        self.wait()
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        let raw = &self.device.raw;
        // SAFETY: `destroy` waits for the submission in flight first; after it no set of the
        // pool is in use; the slots and the pool were made on this device.
        unsafe {
            self.cmds.destroy(raw);
            raw.destroy_descriptor_pool(self.pool, None);
        }
    }
}

/// Checks a dispatch's arguments against the pipeline and the device limits.
fn validate(
    pipeline: &Pipeline,
    buffers: &[BufferArg<'_>],
    push: &[u8],
    groups: [u32; 3],
    limits: &DeviceLimits,
) -> Result<()> {
    let max = limits.max_compute_work_group_count;
    if groups.iter().zip(max).any(|(&g, m)| g == 0 || g > m) {
        return Err(Error::InvalidDispatch { groups, max });
    }
    let kinds = pipeline.binding_kinds();
    if buffers.len() != kinds.len() {
        return Err(Error::ArgumentCount {
            expected: kinds.len(),
            given: buffers.len(),
        });
    }
    if push.len() != pipeline.push_constant_size() as usize {
        return Err(Error::PushConstantSize {
            expected: pipeline.push_constant_size(),
            given: push.len(),
        });
    }
    (0..)
        .zip(buffers.iter().zip(kinds))
        .try_for_each(|(binding, (b, &kind))| validate_buffer(binding, b, kind, limits))
}

fn validate_buffer(
    binding: u32,
    b: &BufferArg<'_>,
    kind: BindingKind,
    limits: &DeviceLimits,
) -> Result<()> {
    let (max_range, align) = match kind {
        BindingKind::Storage => (
            limits.max_storage_buffer_range,
            limits.min_storage_buffer_offset_alignment,
        ),
        BindingKind::Uniform => (
            limits.max_uniform_buffer_range,
            limits.min_uniform_buffer_offset_alignment,
        ),
    };
    if b.range == 0 {
        return Err(Error::EmptyBinding { binding });
    }
    let room = b.block.size().saturating_sub(b.offset);
    let max = room.min(u64::from(max_range));
    if b.range > max {
        return Err(Error::BindingTooLarge {
            binding,
            len: b.range,
            max,
        });
    }
    if b.offset % align.max(1) != 0 {
        return Err(Error::MisalignedBinding {
            binding,
            addr: b.offset as usize,
            required: align,
        });
    }
    Ok(())
}
