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
    if !push.is_multiple_of(4) {
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
    /// The buffer holding the binding's data: a pool block, or imported host memory.
    pub block: &'a dyn Bindable,
    /// Offset of the binding in the block.
    pub offset: u64,
    /// Length of the binding in bytes.
    pub range: u64,
}

/// A device buffer a descriptor can point at.
pub(crate) trait Bindable: std::fmt::Debug {
    /// The buffer handle.
    fn raw(&self) -> vk::Buffer;
    /// Its size in bytes.
    fn size(&self) -> u64;
}

impl Bindable for DeviceBlock {
    fn raw(&self) -> vk::Buffer {
        DeviceBlock::raw(self)
    }
    fn size(&self) -> u64 {
        DeviceBlock::size(self)
    }
}

impl Bindable for super::import::HostImport {
    fn raw(&self) -> vk::Buffer {
        super::import::HostImport::raw(self)
    }
    fn size(&self) -> u64 {
        self.len()
    }
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
    check_groups(groups, limits)?;
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
    let room = b.block.size().saturating_sub(b.offset);
    check_binding(binding, kind, b.range, room, b.offset, limits)
}

/// Checks a group count against the device limits: [`Error::InvalidDispatch`] for a zero or
/// too large dimension.
pub(crate) fn check_groups(groups: [u32; 3], limits: &DeviceLimits) -> Result<()> {
    let max = limits.max_compute_work_group_count;
    if groups.iter().zip(max).any(|(&g, m)| g == 0 || g > m) {
        return Err(Error::InvalidDispatch { groups, max });
    }
    Ok(())
}

/// Checks one buffer binding of `len` bytes at `offset` (a block offset, or a host address:
/// blocks are page-aligned, so both have the same alignment), with `room` bytes available
/// from there: empty, too large for the device or the room, or misaligned for `kind`.
pub(crate) fn check_binding(
    binding: u32,
    kind: BindingKind,
    len: u64,
    room: u64,
    offset: u64,
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
    if len == 0 {
        return Err(Error::EmptyBinding { binding });
    }
    let max = room.min(u64::from(max_range));
    if len > max {
        return Err(Error::BindingTooLarge { binding, len, max });
    }
    if !offset.is_multiple_of(align.max(1)) {
        return Err(Error::MisalignedBinding {
            binding,
            addr: offset as usize,
            required: align,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::config::DEFAULT_STAGING_BYTES;
    use crate::device::{test_device, BlockInit, DeviceConfig, Transfer, TransferPath};
    use crate::shader::{Access, BindingInfo};

    /// y[i] = params.a * x[i] + y[i] for i < n, grid-stride; `a` from a uniform buffer, `n`
    /// from push constants.
    const SAXPY: &str = r#"
        struct Params { a: f32 }
        struct Push { n: u32 }
        @group(0) @binding(0) var<uniform> params: Params;
        @group(0) @binding(1) var<storage, read> x: array<f32>;
        @group(0) @binding(2) var<storage, read_write> y: array<f32>;
        var<immediate> push: Push;

        @compute @workgroup_size(64)
        fn main(@builtin(global_invocation_id) gid: vec3<u32>,
                @builtin(num_workgroups) groups: vec3<u32>) {
            var i = gid.x;
            loop {
                if i >= push.n { break; }
                y[i] = params.a * x[i] + y[i];
                i += groups.x * 64u;
            }
        }
    "#;

    /// WGSL → SPIR-V 1.3 with naga, with the options that matter on lavapipe.
    fn compile(source: &str) -> Vec<u32> {
        use naga::back::spv;
        use naga::valid::{Capabilities, ValidationFlags, Validator};
        let module = naga::front::wgsl::parse_str(source).unwrap();
        let info = Validator::new(ValidationFlags::all(), Capabilities::IMMEDIATES)
            .validate(&module)
            .unwrap();
        let options = spv::Options {
            lang_version: (1, 3),
            zero_initialize_workgroup_memory: spv::ZeroInitializeWorkgroupMemoryMode::None,
            force_loop_bounding: false,
            emit_int_div_checks: false,
            ..spv::Options::default()
        };
        let pipeline = spv::PipelineOptions {
            shader_stage: naga::ShaderStage::Compute,
            entry_point: "main".into(),
        };
        spv::write_vec(&module, &info, &options, Some(&pipeline)).unwrap()
    }

    fn binding(binding: u32, kind: BindingKind, access: Access) -> BindingInfo {
        BindingInfo {
            set: 0,
            binding,
            kind,
            access,
            name: None,
        }
    }

    fn saxpy_info() -> KernelInfo {
        KernelInfo {
            entry: "main".into(),
            workgroup_size: [64, 1, 1],
            bindings: vec![
                binding(0, BindingKind::Uniform, Access::Read),
                binding(1, BindingKind::Storage, Access::Read),
                binding(2, BindingKind::Storage, Access::ReadWrite),
            ],
            push_constant_size: 4,
        }
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|f| f.to_ne_bytes()).collect()
    }

    fn setup(
        transfer: Option<TransferPath>,
    ) -> Option<(Arc<Device>, Pipeline, Dispatcher, Transfer)> {
        let dev = test_device(DeviceConfig {
            transfer,
            ..DeviceConfig::default()
        })?;
        let pipeline = Pipeline::new(&dev, &compile(SAXPY), &saxpy_info()).unwrap();
        let dispatcher = Dispatcher::new(&dev).unwrap();
        let t = Transfer::new(&dev, dev.info().transfer_path, DEFAULT_STAGING_BYTES).unwrap();
        Some((dev, pipeline, dispatcher, t))
    }

    #[test]
    fn saxpy_gives_exact_results_on_both_paths() {
        for path in [None, Some(TransferPath::Staged)] {
            let Some((dev, pipeline, mut dispatcher, mut t)) = setup(path) else {
                return;
            };
            let n = 100_000usize;
            let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let y = vec![1.0f32; n];
            let params = dev.alloc_block(16, BlockInit::Zeroed, "params").unwrap();
            let xs = dev
                .alloc_block(4 * n as u64, BlockInit::Uninit, "x")
                .unwrap();
            // y lives at an offset inside its block, behind a guard of known bytes.
            let y_at = 256u64;
            let ys = dev
                .alloc_block(y_at + 4 * n as u64 + 64, BlockInit::Zeroed, "y")
                .unwrap();
            // SAFETY: the test owns the blocks; nothing is in flight.
            unsafe {
                t.upload(&params, &[(0, &2.0f32.to_ne_bytes())]).unwrap();
                t.upload(&xs, &[(0, &f32_bytes(&x))]).unwrap();
                t.upload(
                    &ys,
                    &[(y_at, &f32_bytes(&y)), (y_at + 4 * n as u64, &[0xEE; 64])],
                )
                .unwrap();
            }
            let args = [
                BufferArg {
                    block: &params,
                    offset: 0,
                    range: 16,
                },
                BufferArg {
                    block: &xs,
                    offset: 0,
                    range: 4 * n as u64,
                },
                BufferArg {
                    block: &ys,
                    offset: y_at,
                    range: 4 * n as u64,
                },
            ];
            let push = (n as u32).to_ne_bytes();
            // Twice: the second run reuses the command buffer and the reset descriptor pool.
            for groups in [[64, 1, 1], [1000, 1, 1]] {
                // SAFETY: the blocks outlive the call, which waits; nothing else touches them.
                unsafe { dispatcher.dispatch(&pipeline, &args, &push, groups) }.unwrap();
            }
            let mut back = Vec::new();
            // SAFETY: the dispatch was waited for; the test owns the block.
            unsafe {
                t.download(
                    &ys,
                    &[(y_at, 4 * n), (y_at + 4 * n as u64, 64)],
                    &mut |_, _, b| {
                        back.extend_from_slice(b);
                        Ok(())
                    },
                )
            }
            .unwrap();
            for i in 0..n {
                let got = f32::from_ne_bytes(back[4 * i..4 * i + 4].try_into().unwrap());
                assert_eq!(got, 4.0 * i as f32 + 1.0, "{path:?}: y[{i}]");
            }
            assert!(
                back[4 * n..].iter().all(|&b| b == 0xEE),
                "the bytes after y are untouched"
            );
        }
    }

    #[test]
    fn submit_and_wait_separately_then_drop_with_nothing_in_flight() {
        let Some((dev, pipeline, mut dispatcher, _t)) = setup(None) else {
            return;
        };
        let block = dev.alloc_block(4096, BlockInit::Zeroed, "b").unwrap();
        let args = [
            BufferArg {
                block: &block,
                offset: 0,
                range: 16,
            },
            BufferArg {
                block: &block,
                offset: 16,
                range: 64,
            },
            BufferArg {
                block: &block,
                offset: 1024,
                range: 64,
            },
        ];
        // SAFETY: `block` outlives the wait below; nothing else touches it.
        unsafe { dispatcher.submit(&pipeline, &args, &16u32.to_ne_bytes(), [1, 1, 1]) }.unwrap();
        drop(pipeline); // the dispatcher keeps its own reference until the wait
        dispatcher.wait().unwrap();
        dispatcher.wait().unwrap();
    }

    #[test]
    fn group_counts_outside_the_limits_are_invalid_dispatch() {
        let Some((dev, pipeline, mut dispatcher, _t)) = setup(None) else {
            return;
        };
        let block = dev.alloc_block(4096, BlockInit::Zeroed, "b").unwrap();
        let args = [
            BufferArg {
                block: &block,
                offset: 0,
                range: 16,
            },
            BufferArg {
                block: &block,
                offset: 16,
                range: 64,
            },
            BufferArg {
                block: &block,
                offset: 1024,
                range: 64,
            },
        ];
        let max = dev.info().limits.max_compute_work_group_count;
        for groups in [[0, 1, 1], [1, 0, 1], [max[0] + 1, 1, 1], [1, 1, max[2] + 1]] {
            // SAFETY: rejected before anything is recorded.
            let e = unsafe { dispatcher.dispatch(&pipeline, &args, &[0; 4], groups) }.unwrap_err();
            assert!(
                matches!(e, Error::InvalidDispatch { groups: g, max: m } if g == groups && m == max),
                "{e}"
            );
        }
        // SAFETY: as above.
        unsafe { dispatcher.dispatch(&pipeline, &args, &[0; 4], max) }.unwrap();
    }

    #[test]
    fn arguments_that_do_not_fit_are_rejected() {
        let Some((dev, pipeline, mut dispatcher, _t)) = setup(None) else {
            return;
        };
        let block = dev.alloc_block(4096, BlockInit::Zeroed, "b").unwrap();
        let arg = |offset, range| BufferArg {
            block: &block,
            offset,
            range,
        };
        let mut run = |args: &[BufferArg<'_>], push: &[u8]| {
            // SAFETY: every case here is rejected before anything is recorded.
            unsafe { dispatcher.dispatch(&pipeline, args, push, [1, 1, 1]) }.unwrap_err()
        };
        let ok = [arg(0, 16), arg(16, 64), arg(1024, 64)];
        assert!(matches!(
            run(&ok[..2], &[0; 4]),
            Error::ArgumentCount {
                expected: 3,
                given: 2
            }
        ));
        assert!(matches!(
            run(&ok, &[0; 8]),
            Error::PushConstantSize {
                expected: 4,
                given: 8
            }
        ));
        assert!(matches!(
            run(&[ok[0], ok[1], arg(0, 0)], &[0; 4]),
            Error::EmptyBinding { binding: 2 }
        ));
        assert!(matches!(
            run(&[ok[0], ok[1], arg(4000, 97)], &[0; 4]),
            Error::BindingTooLarge {
                binding: 2,
                len: 97,
                max: 96
            }
        ));
        assert!(matches!(
            run(&[ok[0], arg(4, 64), ok[2]], &[0; 4]),
            Error::MisalignedBinding {
                binding: 1,
                addr: 4,
                ..
            }
        ));
        let too_big = u64::from(dev.info().limits.max_uniform_buffer_range) + 16;
        let big = dev.alloc_block(too_big, BlockInit::Uninit, "big").unwrap();
        let e = run(
            &[
                BufferArg {
                    block: &big,
                    offset: 0,
                    range: too_big,
                },
                ok[1],
                ok[2],
            ],
            &[0; 4],
        );
        assert!(
            matches!(e, Error::BindingTooLarge { binding: 0, .. }),
            "{e}"
        );
    }

    #[test]
    fn interfaces_vkhmm_cannot_bind_are_unsupported_kernel() {
        let Some(dev) = test_device(DeviceConfig::default()) else {
            return;
        };
        let spirv = compile(SAXPY);
        let unsupported = |info: KernelInfo, needle: &str| match Pipeline::new(&dev, &spirv, &info)
        {
            Err(Error::UnsupportedKernel(s)) => {
                assert!(s.contains(needle), "{s:?} lacks {needle:?}")
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("accepted: {needle}"),
        };
        let mut gap = saxpy_info();
        gap.bindings.remove(1);
        unsupported(gap, "without gaps or repeats, found 2 where 1 belongs");
        let mut set1 = saxpy_info();
        set1.bindings[2].set = 1;
        set1.bindings[2].name = Some("y".into());
        unsupported(set1, "binding 2 (`y`) is in @group(1)");
        let mut push = saxpy_info();
        push.push_constant_size = dev.info().limits.max_push_constants_size + 4;
        unsupported(push, "over the device's limit");
        let mut odd = saxpy_info();
        odd.push_constant_size = 6;
        unsupported(odd, "not a multiple of 4");

        let e = Pipeline::new(&dev, &[1, 2, 3], &saxpy_info())
            .err()
            .unwrap();
        assert!(matches!(e, Error::InvalidShader(_)), "{e}");
        let mut nul = saxpy_info();
        nul.entry = "ma\0in".into();
        assert!(matches!(
            Pipeline::new(&dev, &spirv, &nul),
            Err(Error::InvalidShader(_))
        ));
    }

    #[test]
    fn pipeline_reports_its_interface() {
        let Some(dev) = test_device(DeviceConfig::default()) else {
            return;
        };
        let pipeline = Pipeline::new(&dev, &compile(SAXPY), &saxpy_info()).unwrap();
        assert_eq!(
            pipeline.binding_kinds(),
            [
                BindingKind::Uniform,
                BindingKind::Storage,
                BindingKind::Storage
            ]
        );
        assert_eq!(pipeline.push_constant_size(), 4);
        assert_eq!(pipeline.workgroup_size(), [64, 1, 1]);
        assert!(Arc::ptr_eq(pipeline.device(), &dev));
    }
}
