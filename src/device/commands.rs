//! Persistent command buffers with one fence each: the one way `device` records and submits.
//!
//! Every user of the queue (a [`Transfer`](super::Transfer)'s staging ring, the
//! [`Dispatcher`](super::Dispatcher), the pool's zero-fill) owns a [`CommandSlots`]: its own
//! command pool, so recording needs no lock (command pools are externally synchronized and
//! each has exactly one owner), and its own fences, so waiting needs none either. Only
//! `vkQueueSubmit` goes through the device's queue mutex.
//!
//! Each recording opens with a global memory barrier that makes earlier compute, transfer and
//! host writes visible to compute and transfer access, and closes with one that makes its
//! compute and transfer writes visible to the host, to later transfers and to later shaders.
//! With both ends fenced this orders every submission against every other, whichever object
//! recorded it, without tracking individual buffers.
//!
//! Nothing here allocates after [`CommandSlots::new`]: the fault handler records through it.

use ash::vk;

use super::map::{map_host_oom, map_host_oom_lost};
use super::Device;
use crate::error::Result;

/// Stages whose writes the leading barrier waits for and the trailing barrier publishes to.
const STAGES: vk::PipelineStageFlags = vk::PipelineStageFlags::from_raw(
    vk::PipelineStageFlags::COMPUTE_SHADER.as_raw()
        | vk::PipelineStageFlags::TRANSFER.as_raw()
        | vk::PipelineStageFlags::HOST.as_raw(),
);
/// Stages that run inside a recording.
const DEVICE_STAGES: vk::PipelineStageFlags = vk::PipelineStageFlags::from_raw(
    vk::PipelineStageFlags::COMPUTE_SHADER.as_raw() | vk::PipelineStageFlags::TRANSFER.as_raw(),
);
/// Writes made inside a recording.
const DEVICE_WRITES: vk::AccessFlags = vk::AccessFlags::from_raw(
    vk::AccessFlags::SHADER_WRITE.as_raw() | vk::AccessFlags::TRANSFER_WRITE.as_raw(),
);
/// Every write a recording must see.
const WRITES: vk::AccessFlags =
    vk::AccessFlags::from_raw(DEVICE_WRITES.as_raw() | vk::AccessFlags::HOST_WRITE.as_raw());
/// Every access inside a recording.
const DEVICE_ACCESS: vk::AccessFlags = vk::AccessFlags::from_raw(
    DEVICE_WRITES.as_raw()
        | vk::AccessFlags::SHADER_READ.as_raw()
        | vk::AccessFlags::TRANSFER_READ.as_raw(),
);
/// Every access after a recording: the device's and the host's.
const ALL_ACCESS: vk::AccessFlags = vk::AccessFlags::from_raw(
    DEVICE_ACCESS.as_raw()
        | vk::AccessFlags::HOST_READ.as_raw()
        | vk::AccessFlags::HOST_WRITE.as_raw(),
);

/// One command buffer and the fence its submission signals.
struct Slot {
    cmd: vk::CommandBuffer,
    fence: vk::Fence,
    recording: bool,
    in_flight: bool,
}

/// A command pool with `count` persistent command buffers, each with its own fence.
///
/// The owner passes the same device to every call; [`destroy`](Self::destroy) must run
/// before the device is destroyed (owners do it in their `Drop`).
pub(crate) struct CommandSlots {
    pool: vk::CommandPool,
    slots: Vec<Slot>,
}

impl CommandSlots {
    /// Creates the pool, `count` primary command buffers and `count` unsignaled fences.
    pub(crate) fn new(raw: &ash::Device, queue_family: u32, count: usize) -> Result<Self> {
        let info = vk::CommandPoolCreateInfo::default()
            .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER)
            .queue_family_index(queue_family);
        // SAFETY: `raw` is a live device and `info` a valid create info for its queue family.
        let pool = unsafe { raw.create_command_pool(&info, None) }
            .map_err(map_host_oom("vkCreateCommandPool"))?;
        let mut this = CommandSlots {
            pool,
            slots: Vec::with_capacity(count),
        };
        if let Err(e) = this.fill(raw, count) {
            // SAFETY: nothing was submitted yet; the pool and fences belong to `raw`.
            unsafe { this.destroy(raw) };
            return Err(e);
        }
        Ok(this)
    }

    fn fill(&mut self, raw: &ash::Device, count: usize) -> Result<()> {
        let info = vk::CommandBufferAllocateInfo::default()
            .command_pool(self.pool)
            .level(vk::CommandBufferLevel::PRIMARY)
            .command_buffer_count(count as u32);
        // SAFETY: the pool belongs to `raw` and is used by no one else yet.
        let cmds = unsafe { raw.allocate_command_buffers(&info) }
            .map_err(map_host_oom("vkAllocateCommandBuffers"))?;
        for cmd in cmds {
            // SAFETY: `raw` is a live device; the create info is valid.
            let fence = unsafe { raw.create_fence(&vk::FenceCreateInfo::default(), None) }
                .map_err(map_host_oom("vkCreateFence"))?;
            self.slots.push(Slot {
                cmd,
                fence,
                recording: false,
                in_flight: false,
            });
        }
        Ok(())
    }

    /// The command buffer of slot `i` (valid to record into between [`begin`](Self::begin)
    /// and [`submit`](Self::submit)).
    pub(crate) fn cmd(&self, i: usize) -> vk::CommandBuffer {
        self.slots[i].cmd
    }

    /// True between [`begin`](Self::begin) and [`submit`](Self::submit) (or
    /// [`abandon`](Self::abandon)) of slot `i`.
    pub(crate) fn recording(&self, i: usize) -> bool {
        self.slots[i].recording
    }

    /// True while slot `i` was submitted and not yet waited for.
    pub(crate) fn in_flight(&self, i: usize) -> bool {
        self.slots[i].in_flight
    }

    /// Starts recording slot `i` and records the leading barrier. A slot still in flight is
    /// waited for first; a recording left open (after an error) is abandoned.
    pub(crate) fn begin(&mut self, raw: &ash::Device, i: usize) -> Result<vk::CommandBuffer> {
        self.abandon(raw, i);
        self.wait(raw, i)?;
        let slot = &mut self.slots[i];
        let info = vk::CommandBufferBeginInfo::default()
            .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT);
        // SAFETY: the slot is neither pending nor recording (ensured above) and only this
        // owner records into its pool; RESET_COMMAND_BUFFER lets begin reset it implicitly.
        unsafe { raw.begin_command_buffer(slot.cmd, &info) }
            .map_err(map_host_oom("vkBeginCommandBuffer"))?;
        slot.recording = true;
        barrier(raw, slot.cmd, STAGES, WRITES, DEVICE_STAGES, DEVICE_ACCESS);
        Ok(slot.cmd)
    }

    /// Records the trailing barrier, ends slot `i` and submits it on the device's queue. The
    /// slot is no longer recording afterwards, whatever the outcome.
    ///
    /// # Safety
    ///
    /// `device` is the device the slots were created with; the commands recorded since
    /// [`begin`](Self::begin) are valid, and every object they use stays alive until
    /// [`wait`](Self::wait) has returned for this slot.
    pub(crate) unsafe fn submit(&mut self, device: &Device, i: usize) -> Result<()> {
        let slot = &mut self.slots[i];
        assert!(slot.recording, "command slot {i} is not recording");
        slot.recording = false;
        barrier(
            &device.raw,
            slot.cmd,
            DEVICE_STAGES,
            DEVICE_WRITES,
            STAGES,
            ALL_ACCESS,
        );
        // SAFETY: the command buffer is recording (begun by `begin`).
        unsafe { device.raw.end_command_buffer(slot.cmd) }
            .map_err(map_host_oom("vkEndCommandBuffer"))?;
        let fences = [slot.fence];
        // SAFETY: the slot is not in flight (`begin` waited), so no queue operation refers to
        // the fence.
        unsafe { device.raw.reset_fences(&fences) }.map_err(map_host_oom("vkResetFences"))?;
        // SAFETY: the buffer is executable and from this device's pool; the fence is unsignaled
        // (reset above); the caller keeps what the commands use alive until the wait.
        unsafe { device.submit(slot.cmd, slot.fence) }?;
        slot.in_flight = true;
        Ok(())
    }

    /// Abandons a recording of slot `i` that will not be submitted (an error came first).
    pub(crate) fn abandon(&mut self, raw: &ash::Device, i: usize) {
        let slot = &mut self.slots[i];
        if slot.recording {
            slot.recording = false;
            // SAFETY: the buffer is recording; ending it makes it executable (or invalid on
            // error), and the next `begin` resets it either way. It is never submitted.
            let _ = unsafe { raw.end_command_buffer(slot.cmd) };
        }
    }

    /// Waits for slot `i` if it is in flight (its fence is reset by the next submit). After `DEVICE_LOST` the
    /// slot counts as idle (nothing will run on the device any more).
    pub(crate) fn wait(&mut self, raw: &ash::Device, i: usize) -> Result<()> {
        let slot = &mut self.slots[i];
        if !slot.in_flight {
            return Ok(());
        }
        let fences = [slot.fence];
        // SAFETY: the fence belongs to `raw` and was submitted with the slot's work.
        let waited = unsafe { raw.wait_for_fences(&fences, true, u64::MAX) };
        if waited == Err(vk::Result::ERROR_DEVICE_LOST) {
            slot.in_flight = false;
        }
        waited.map_err(map_host_oom_lost("vkWaitForFences"))?;
        slot.in_flight = false;
        Ok(())
    }

    /// Waits for every slot in flight; returns the first error, after trying all.
    pub(crate) fn wait_all(&mut self, raw: &ash::Device) -> Result<()> {
        let mut first = Ok(());
        for i in 0..self.slots.len() {
            if let Err(e) = self.wait(raw, i) {
                first = first.and(Err(e));
            }
        }
        first
    }

    /// Waits for all slots (logging a failure) and destroys the fences and the pool.
    ///
    /// # Safety
    ///
    /// `raw` is the device these slots were created with, and the slots are not used again.
    pub(crate) unsafe fn destroy(&mut self, raw: &ash::Device) {
        if let Err(e) = self.wait_all(raw) {
            tracing::error!("waiting for command slots before destroying them: {e}");
        }
        // Whatever the wait said, the slots are destroyed now: the owner is going away.
        for slot in self.slots.drain(..) {
            // SAFETY: the fence belongs to `raw` and no submission refers to it (waited above,
            // or the device is lost and nothing will signal it).
            unsafe { raw.destroy_fence(slot.fence, None) };
        }
        // SAFETY: no command buffer of the pool is pending; destroying the pool frees them.
        unsafe { raw.destroy_command_pool(self.pool, None) };
        self.pool = vk::CommandPool::null();
    }
}

/// Records one global memory barrier.
fn barrier(
    raw: &ash::Device,
    cmd: vk::CommandBuffer,
    src_stage: vk::PipelineStageFlags,
    src_access: vk::AccessFlags,
    dst_stage: vk::PipelineStageFlags,
    dst_access: vk::AccessFlags,
) {
    let barrier = [vk::MemoryBarrier::default()
        .src_access_mask(src_access)
        .dst_access_mask(dst_access)];
    // SAFETY: `cmd` is recording; the stages are supported by any compute queue (transfer is
    // implied by compute) and the access masks match them.
    unsafe {
        raw.cmd_pipeline_barrier(
            cmd,
            src_stage,
            dst_stage,
            vk::DependencyFlags::empty(),
            &barrier,
            &[],
            &[],
        )
    };
}
