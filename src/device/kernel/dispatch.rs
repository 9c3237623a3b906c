//! The dispatcher: records and submits one compute dispatch at a time.
//!
//! The [`Dispatcher`] (one per runtime, used under its lock) owns one command buffer, one
//! fence and one descriptor pool. Each submission waits for the previous one, resets the pool,
//! allocates the set, writes `(buffer, offset, range)` per binding, records barrier → bind →
//! push → dispatch → barrier and submits. Resetting a pool per submit is simple and portable
//! (push descriptors are an extension); the cost is one `vkAllocateDescriptorSets` per
//! launch, nothing next to the submit itself.
//!
//! # What it may touch
//!
//! The buffers a caller binds, through the kernel, from [`submit`](Dispatcher::submit) until
//! the matching [`wait`](Dispatcher::wait): the `unsafe` contract of `submit` makes the caller
//! keep them alive and keep everyone else off them meanwhile.
//!
//! # Invariants
//!
//! - Arguments and group counts are validated ([`validate::validate`]) before anything is
//!   waited for or recorded: a rejected dispatch changes nothing.
//! - The pipeline of the submission in flight is held (`in_flight`) until it is waited for;
//!   the descriptor pool is reset or grown only when nothing is in flight.
//! - It runs on the launch path only, never in the fault handler: writing a descriptor set
//!   allocates.

use std::sync::Arc;

use ash::vk;

use super::pipeline::descriptor_type;
use super::{validate, BufferArg, Pipeline};
use crate::device::commands::CommandSlots;
use crate::device::map::map_host_oom;
use crate::device::Device;
use crate::error::Result;

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
    ///   bindings the kernel writes (no [`Transfer`](crate::device::Transfer), no access
    ///   through the mapping).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidDispatch`] for a group count of 0 or over the device limit;
    /// [`Error::ArgumentCount`], [`Error::PushConstantSize`], [`Error::EmptyBinding`],
    /// [`Error::BindingTooLarge`] (over the device limit or past the block's end) and
    /// [`Error::MisalignedBinding`] (offset not aligned for the descriptor type) for
    /// arguments that do not fit the kernel or the device; driver failures as mapped.
    ///
    /// [`Error::InvalidDispatch`]: crate::Error::InvalidDispatch
    /// [`Error::ArgumentCount`]: crate::Error::ArgumentCount
    /// [`Error::PushConstantSize`]: crate::Error::PushConstantSize
    /// [`Error::EmptyBinding`]: crate::Error::EmptyBinding
    /// [`Error::BindingTooLarge`]: crate::Error::BindingTooLarge
    /// [`Error::MisalignedBinding`]: crate::Error::MisalignedBinding
    pub(crate) unsafe fn submit(
        &mut self,
        pipeline: &Pipeline,
        buffers: &[BufferArg<'_>],
        push: &[u8],
        groups: [u32; 3],
    ) -> Result<()> {
        validate::validate(pipeline, buffers, push, groups, &self.device.info().limits)?;
        debug_assert!(Arc::ptr_eq(pipeline.device(), &self.device));
        self.wait()?;
        self.reserve(buffers.len() as u32)?;
        let set = self.write_set(pipeline, buffers)?;
        let raw = &self.device.raw;
        let layout = pipeline.layout();
        let cmd = self.cmds.begin(raw, 0)?;
        // SAFETY: `cmd` is recording; the pipeline, its layout and the set (written above to
        // match the layout) are alive; `push` matches the layout's range (validated); `groups`
        // is within the device limits (validated).
        unsafe {
            raw.cmd_bind_pipeline(cmd, vk::PipelineBindPoint::COMPUTE, pipeline.raw());
            raw.cmd_bind_descriptor_sets(
                cmd,
                vk::PipelineBindPoint::COMPUTE,
                layout,
                0,
                &[set],
                &[],
            );
            if !push.is_empty() {
                raw.cmd_push_constants(cmd, layout, vk::ShaderStageFlags::COMPUTE, 0, push);
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
        let layouts = [pipeline.set_layout()];
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
    #[cfg(test)]
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
