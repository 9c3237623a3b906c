//! The mirror: pure policy over host pages, with no system call and no Vulkan call.
//!
//! This module holds what vkhmm knows about host memory — which pages are mirrored, where each
//! page's valid data lives, which extents a launch needs, how much a fault brings back, what
//! to evict — and nothing that acts on it. `migrate` and the fault service read these
//! decisions and carry them out with `device/` and `fault/`. Keeping the policy here, free of
//! `unsafe` and of side effects, lets it be tested exhaustively without a device.
//!
//! - [`page`]: the per-page state byte (residence + `BUSY` + `GONE`) and its CAS protocol;
//! - [`extent`]: a contiguous run of pages with one device copy;
//! - [`map`]: the process-wide extent list, lock-free for the fault handler;
//! - [`plan`]: binding page spans (interior vs edge pages) and extent merging;
//! - [`policy`]: fault-back windows and LRU eviction;
//! - [`advice`]: the program's advice per range;
//! - [`thrash`]: which bindings bounce between CPU and device too often.
#![deny(unsafe_code)]

pub mod advice;
pub mod extent;
pub mod map;
pub mod page;
pub mod plan;
pub mod policy;
pub mod rewrite;
pub mod thrash;

/// The page size the mirror tracks. vkhmm checks at start-up that the OS uses the same.
pub const PAGE: usize = 4096;

/// Where to move memory with [`Runtime::prefetch`](crate::Runtime::prefetch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Location {
    /// Host memory: pages come home and stay valid on the device (`Shared`) where they were.
    Host,
    /// Device memory: host pages are dropped (`Device`).
    Device,
}

/// Page counts of a range by state, as [`Runtime::residency`](crate::Runtime::residency)
/// reports them. Pages the mirror does not track count as `host`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Residency {
    /// Pages whose host copy is valid and the device copy, if any, stale.
    pub host: usize,
    /// Pages valid on both sides (host write-protected).
    pub shared: usize,
    /// Pages valid only on the device (host page absent).
    pub device: usize,
}

impl Residency {
    /// Total pages counted.
    pub fn pages(&self) -> usize {
        self.host + self.shared + self.device
    }
}

impl std::ops::AddAssign for Residency {
    fn add_assign(&mut self, o: Self) {
        self.host += o.host;
        self.shared += o.shared;
        self.device += o.device;
    }
}
