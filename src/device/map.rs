//! Conversions from raw Vulkan and gpu-allocator failures to [`Error`].
//!
//! Each mapper is named after the codes it gives a meaning of their own; every other code
//! becomes [`Error::Vulkan`] with the call's name and the raw code kept as a [`VulkanCode`].
//! Mappers return closures so that a call site reads
//! `unsafe { raw.create_fence(..) }.map_err(map_host_oom("vkCreateFence"))?`.

use ash::vk;
use gpu_allocator::AllocationError;

use crate::error::{Error, VulkanCode};

/// `OUT_OF_HOST_MEMORY` → [`Error::OutOfHostMemory`]; anything else → [`Error::Vulkan`].
///
/// For object creation, where `OUT_OF_DEVICE_MEMORY` means the driver's own bookkeeping ran
/// dry (not the pool's budget), so it stays a raw Vulkan error.
pub(crate) fn map_host_oom(call: &'static str) -> impl FnOnce(vk::Result) -> Error {
    move |source| match source {
        vk::Result::ERROR_OUT_OF_HOST_MEMORY => Error::OutOfHostMemory,
        source => Error::Vulkan {
            call,
            code: VulkanCode::of(source),
        },
    }
}

/// `OUT_OF_HOST_MEMORY` → [`Error::OutOfHostMemory`], `DEVICE_LOST` → [`Error::DeviceLost`];
/// anything else → [`Error::Vulkan`]. For submissions and waits.
pub(crate) fn map_host_oom_lost(call: &'static str) -> impl FnOnce(vk::Result) -> Error {
    move |source| match source {
        vk::Result::ERROR_DEVICE_LOST => Error::DeviceLost,
        source => map_host_oom(call)(source),
    }
}

/// `OUT_OF_HOST_MEMORY` → [`Error::OutOfHostMemory`], `INVALID_SHADER_NV` →
/// [`Error::InvalidShader`]; anything else → [`Error::Vulkan`]. For shader modules and
/// pipelines.
pub(crate) fn map_host_oom_invalid_shader(call: &'static str) -> impl FnOnce(vk::Result) -> Error {
    move |source| match source {
        vk::Result::ERROR_INVALID_SHADER_NV => {
            Error::InvalidShader(format!("the driver rejected the shader in {call}"))
        }
        source => map_host_oom(call)(source),
    }
}

/// `INCOMPATIBLE_DRIVER` and `INITIALIZATION_FAILED` → [`Error::NoDevice`] (the loader found
/// no driver it could use), `OUT_OF_HOST_MEMORY` → [`Error::OutOfHostMemory`]; anything else
/// → [`Error::Vulkan`]. For instance creation and device enumeration.
pub(crate) fn map_host_oom_incompatible<'a>(
    call: &'static str,
    filter: Option<&'a str>,
) -> impl FnOnce(vk::Result) -> Error + 'a {
    move |source| match source {
        vk::Result::ERROR_INCOMPATIBLE_DRIVER | vk::Result::ERROR_INITIALIZATION_FAILED => {
            Error::NoDevice {
                filter: filter.map(str::to_owned),
                available: Vec::new(),
            }
        }
        source => map_host_oom(call)(source),
    }
}

/// `EXTENSION_NOT_PRESENT` and `FEATURE_NOT_PRESENT` → [`Error::DeviceUnsuitable`],
/// `OUT_OF_HOST_MEMORY` → [`Error::OutOfHostMemory`], `DEVICE_LOST` → [`Error::DeviceLost`];
/// anything else → [`Error::Vulkan`]. For `vkCreateDevice`.
pub(crate) fn map_host_oom_lost_missing(device: &str) -> impl FnOnce(vk::Result) -> Error + '_ {
    move |source| match source {
        vk::Result::ERROR_EXTENSION_NOT_PRESENT | vk::Result::ERROR_FEATURE_NOT_PRESENT => {
            Error::DeviceUnsuitable {
                device: device.to_owned(),
                missing: format!(
                    "vkCreateDevice refused a requested extension or feature ({source})"
                ),
            }
        }
        source => map_host_oom_lost("vkCreateDevice")(source),
    }
}

/// gpu-allocator's `OutOfMemory` → [`Error::OutOfDeviceMemory`] with the pool's numbers at the
/// time of the request; any other allocator failure → [`Error::Allocator`].
pub(crate) fn map_allocator_oom(
    needed: u64,
    budget: u64,
    in_use: u64,
) -> impl FnOnce(AllocationError) -> Error {
    move |e| match e {
        AllocationError::OutOfMemory => Error::OutOfDeviceMemory {
            needed,
            budget,
            in_use,
        },
        e => Error::Allocator(e.to_string()),
    }
}

/// `OUT_OF_DEVICE_MEMORY` → [`Error::OutOfDeviceMemory`] with the pool's numbers,
/// `OUT_OF_HOST_MEMORY` → [`Error::OutOfHostMemory`]; anything else → [`Error::Vulkan`].
/// For buffers created to cover pool memory.
pub(crate) fn map_host_device_oom(
    call: &'static str,
    needed: u64,
    budget: u64,
    in_use: u64,
) -> impl FnOnce(vk::Result) -> Error {
    move |source| match source {
        vk::Result::ERROR_OUT_OF_DEVICE_MEMORY => Error::OutOfDeviceMemory {
            needed,
            budget,
            in_use,
        },
        source => map_host_oom(call)(source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_their_variants() {
        assert!(matches!(
            map_host_oom_lost("q")(vk::Result::ERROR_DEVICE_LOST),
            Error::DeviceLost
        ));
        assert!(matches!(
            map_host_oom_lost("q")(vk::Result::ERROR_OUT_OF_HOST_MEMORY),
            Error::OutOfHostMemory
        ));
        assert!(matches!(
            map_host_oom("vkX")(vk::Result::ERROR_DEVICE_LOST),
            Error::Vulkan {
                call: "vkX",
                code
            } if code == VulkanCode::of(vk::Result::ERROR_DEVICE_LOST)
        ));
        assert!(matches!(
            map_host_oom_incompatible("i", Some("nv"))(vk::Result::ERROR_INCOMPATIBLE_DRIVER),
            Error::NoDevice { filter: Some(f), .. } if f == "nv"
        ));
        assert!(matches!(
            map_host_oom_invalid_shader("s")(vk::Result::ERROR_INVALID_SHADER_NV),
            Error::InvalidShader(_)
        ));
        assert!(matches!(
            map_host_oom_lost_missing("dev")(vk::Result::ERROR_FEATURE_NOT_PRESENT),
            Error::DeviceUnsuitable { device, .. } if device == "dev"
        ));
        assert!(matches!(
            map_allocator_oom(1, 2, 3)(AllocationError::OutOfMemory),
            Error::OutOfDeviceMemory {
                needed: 1,
                budget: 2,
                in_use: 3
            }
        ));
        assert!(matches!(
            map_host_device_oom("b", 1, 2, 3)(vk::Result::ERROR_OUT_OF_DEVICE_MEMORY),
            Error::OutOfDeviceMemory {
                needed: 1,
                budget: 2,
                in_use: 3
            }
        ));
    }
}
