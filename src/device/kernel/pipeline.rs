//! Compute pipelines: the Vulkan objects one kernel needs, built from SPIR-V and its
//! reflected interface.
//!
//! A [`Pipeline`] is built from SPIR-V and the [`KernelInfo`] that [`shader`](crate::shader)
//! reflected from it: one descriptor set layout (set 0, bindings `0..n`, storage or uniform
//! buffers), one push-constant range when the kernel has a push block, one compute pipeline.
//! The interface is checked first ([`validate::check_interface`]), so a kernel vkhmm cannot
//! bind is refused with [`Error::UnsupportedKernel`] before any Vulkan call.
//!
//! # Invariants
//!
//! - Built in place: if a later step fails, `Drop` destroys whatever was created (destroying
//!   a null handle is a no-op in Vulkan), so a failed build leaks nothing.
//! - Shared and immutable: clones share one set of objects, destroyed when the last clone
//!   drops. The dispatcher holds a clone until its submission is waited for, so no object is
//!   destroyed while the device may still use it.
//! - Only the SPIR-V magic number is checked here: the words should come through `shader`'s
//!   reflection, which validates them.

use std::ffi::CString;
use std::sync::Arc;

use ash::vk;

use super::validate;
use crate::device::map::{map_host_oom, map_host_oom_invalid_shader};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::shader::{BindingKind, KernelInfo};

/// The SPIR-V magic number (first word of every module).
const SPIRV_MAGIC: u32 = 0x0723_0203;

/// A compute pipeline with its layouts. Cheap to clone (shared); the Vulkan objects are
/// destroyed when the last clone — possibly the [`Dispatcher`](super::Dispatcher)'s, held
/// until its wait — drops.
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
    #[cfg(test)]
    workgroup_size: [u32; 3],
}

impl Pipeline {
    /// Builds the pipeline for `info.entry` of `spirv`.
    ///
    /// `spirv` should come through [`shader`](crate::shader)'s reflection (which validates
    /// it): a driver may crash on malformed SPIR-V, and only the magic number is checked here.
    ///
    /// # Errors
    ///
    /// [`Error::UnsupportedKernel`] for an interface vkhmm cannot bind;
    /// [`Error::InvalidShader`] for words that are not SPIR-V, an entry name with a NUL, or a
    /// module the driver rejects; driver failures as mapped.
    pub(crate) fn new(device: &Arc<Device>, spirv: &[u32], info: &KernelInfo) -> Result<Pipeline> {
        validate::check_interface(info, &device.info().limits)?;
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
            #[cfg(test)]
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
    #[cfg(test)]
    pub(crate) fn workgroup_size(&self) -> [u32; 3] {
        self.shared.workgroup_size
    }

    /// The device the pipeline was built on.
    pub(crate) fn device(&self) -> &Arc<Device> {
        &self.shared.device
    }

    /// The `VkPipeline`.
    pub(super) fn raw(&self) -> vk::Pipeline {
        self.shared.raw
    }

    /// The pipeline layout (the set layout and the push-constant range).
    pub(super) fn layout(&self) -> vk::PipelineLayout {
        self.shared.layout
    }

    /// The layout of descriptor set 0.
    pub(super) fn set_layout(&self) -> vk::DescriptorSetLayout {
        self.shared.set_layout
    }
}

/// The descriptor type of a binding of `kind`.
pub(super) fn descriptor_type(kind: BindingKind) -> vk::DescriptorType {
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
        // multiple of 4 (checked by `validate::check_interface`).
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
