//! Compute kernels on the device: pipelines, the checks that keep launches bindable, and
//! dispatch.
//!
//! - [`pipeline`]: a [`Pipeline`] is the set layout, pipeline layout and compute pipeline of
//!   one kernel, built from SPIR-V and the [`KernelInfo`] that [`shader`](crate::shader)
//!   reflected from it.
//! - [`validate`]: what vkhmm can bind (set 0, bindings `0..n` without gaps, push block
//!   within the device limit) and dispatch (argument count, push size, each binding's size
//!   and alignment, group counts); [`Error::UnsupportedKernel`] and the launch errors name
//!   what is wrong. Pure, no `unsafe`.
//! - [`dispatch`]: the [`Dispatcher`] binds [`BufferArg`]s, pushes constants and dispatches,
//!   one submission at a time.
//!
//! A binding's buffer is anything [`Bindable`]: a pool block, or host memory imported with
//! `VK_EXT_external_memory_host`.
//!
//! [`KernelInfo`]: crate::shader::KernelInfo
//! [`Error::UnsupportedKernel`]: crate::Error::UnsupportedKernel

mod dispatch;
mod pipeline;
#[cfg(test)]
mod tests;
mod validate;

use ash::vk;

pub(crate) use dispatch::Dispatcher;
pub(crate) use pipeline::Pipeline;
pub(crate) use validate::{check_alignment, check_binding, check_groups, offset_alignment};

use super::import::HostImport;
use super::DeviceBlock;

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

impl Bindable for HostImport {
    fn raw(&self) -> vk::Buffer {
        HostImport::raw(self)
    }
    fn size(&self) -> u64 {
        self.len()
    }
}
