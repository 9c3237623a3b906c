//! vkhmm — user-space HMM on Vulkan (crate docs are written as the rooms land).
#![warn(missing_docs)]

mod args;
mod error;
mod managed;
#[allow(dead_code)] // wired up by migrate/runtime
pub(crate) mod mirror;
pub mod shader;

pub use args::{Arg, KernelArgs, Push};
pub use error::{Error, MemoryReason, Result};
pub use managed::Managed;
pub use mirror::{Location, Residency};
