//! vkhmm — user-space HMM on Vulkan (crate docs are written as the rooms land).
#![warn(missing_docs)]

mod error;
pub mod shader;
mod sys;

pub use error::{Error, MemoryReason, Result};
