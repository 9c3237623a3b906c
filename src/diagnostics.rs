//! What this machine offers vkhmm: the Vulkan device a runtime would open and the fault
//! mechanisms this process may use. `vkhmm info` prints both.
//!
//! A program that only launches kernels needs none of this: [`Runtime`](crate::Runtime)
//! chooses a device and a fault backend by itself, and
//! [`Runtime::device_info`](crate::Runtime::device_info) tells which device it opened. The
//! module is for tools, bug reports and programs that want to explain a failure before it
//! happens:
//!
//! - [`DeviceInfo::query`] opens the device a [`DeviceConfig`] chooses, reports it (memory
//!   heaps and types, limits, features, the transfer path and budget vkhmm would use) and
//!   closes it again, without starting the fault service;
//! - [`probe_fault_capabilities`] finds out, without side effects, whether userfaultfd can be
//!   opened here and how, what the kernel offers, whether the `signal` backend can run, and
//!   which [`FaultBackend`](crate::FaultBackend) a runtime started now would get.
//!
//! ```no_run
//! use vkhmm::diagnostics::{probe_fault_capabilities, DeviceConfig, DeviceInfo};
//!
//! let device = DeviceInfo::query(&DeviceConfig::from_env()?)?;
//! println!("{} ({}), {} transfer path", device.name, device.device_type, device.transfer_path);
//! println!("{}", probe_fault_capabilities());
//! # Ok::<(), vkhmm::Error>(())
//! ```

pub use crate::device::{
    DeviceConfig, DeviceFeatures, DeviceInfo, DeviceLimits, DeviceType, MemoryHeapInfo,
    MemoryTypeInfo,
};
pub use crate::trap::probe::{
    probe as probe_fault_capabilities, DevNodeAccess, FaultCapabilities, OpenMode as UffdMode,
    ProbeAttempt, ProbeFailure, SeccompMode,
};
