//! vkhmm — user-space HMM on Vulkan (crate docs are written as the rooms land).
#![warn(missing_docs)]

pub(crate) mod device;
mod error;
pub mod shader;

pub use device::{
    DeviceConfig, DeviceFeatures, DeviceInfo, DeviceLimits, DeviceType, MemoryHeapInfo,
    MemoryTypeInfo, TransferPath,
};
pub use error::{Error, MemoryReason, Result};
