//! vkhmm — user-space HMM on Vulkan (crate docs are written as the rooms land).
#![warn(missing_docs)]

mod error;
#[allow(dead_code)] // wired up by migrate/runtime
pub(crate) mod mirror;
pub mod shader;

pub use error::{Error, MemoryReason, Result};
pub use mirror::{Location, Residency};
