//! vkhmm — user-space HMM on Vulkan (crate docs are written as the rooms land).
#![warn(missing_docs)]

mod error;
mod fault;
pub mod shader;
mod sys;

pub use error::{Error, MemoryReason, Result};
pub use fault::probe::{
    probe as probe_fault_capabilities, DevNodeAccess, FaultCapabilities, OpenMode as UffdMode,
    ProbeAttempt, ProbeFailure, SeccompMode,
};
