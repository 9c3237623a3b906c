//! What vkhmm can bind and dispatch: the checks a kernel's interface, a dispatch's arguments
//! and its group counts pass before any Vulkan call.
//!
//! vkhmm binds the i-th launch argument to binding i, so a kernel's interface must have every
//! binding in set 0, numbered without gaps, and a push block within the device limit and a
//! multiple of 4, else [`Error::UnsupportedKernel`] names what is wrong ([`check_interface`],
//! when a pipeline is built). Each dispatch then checks the argument count, the push size,
//! each binding (not empty, within the device's range limit and its buffer, offset aligned
//! for its descriptor type) and the group counts ([`validate`]). The runtime calls
//! [`check_binding`] (on host addresses) and [`check_groups`] itself before it moves anything.
//!
//! Pure: no Vulkan call and no `unsafe`, so a rejected launch has changed nothing.
#![deny(unsafe_code)]

use super::{BufferArg, Pipeline};
use crate::device::DeviceLimits;
use crate::error::{Error, Result};
use crate::shader::{BindingKind, KernelInfo};

/// Checks that vkhmm can bind `info`'s interface on a device with `limits`.
pub(super) fn check_interface(info: &KernelInfo, limits: &DeviceLimits) -> Result<()> {
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

/// Checks a dispatch's arguments against the pipeline and the device limits.
pub(super) fn validate(
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

/// The alignment the device requires of a binding's offset of `kind`.
pub(crate) fn offset_alignment(kind: BindingKind, limits: &DeviceLimits) -> u64 {
    match kind {
        BindingKind::Storage => limits.min_storage_buffer_offset_alignment,
        BindingKind::Uniform => limits.min_uniform_buffer_offset_alignment,
    }
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
    let max_range = match kind {
        BindingKind::Storage => limits.max_storage_buffer_range,
        BindingKind::Uniform => limits.max_uniform_buffer_range,
    };
    let align = offset_alignment(kind, limits);
    if len == 0 {
        return Err(Error::EmptyBinding { binding });
    }
    let max = room.min(u64::from(max_range));
    if len > max {
        return Err(Error::BindingTooLarge { binding, len, max });
    }
    check_alignment(binding, offset, align)
}

/// [`Error::MisalignedBinding`] unless `offset` (a block offset, or a host address: blocks
/// are page-aligned, so both have the same alignment) is a multiple of `align`.
pub(crate) fn check_alignment(binding: u32, offset: u64, align: u64) -> Result<()> {
    if offset.is_multiple_of(align.max(1)) {
        Ok(())
    } else {
        Err(Error::MisalignedBinding {
            binding,
            addr: offset as usize,
            required: align,
        })
    }
}
