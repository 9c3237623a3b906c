//! Fault injection: make a chosen failure happen at a chosen moment, for tests.
//!
//! A memory runtime is only as good as its failure paths, and the interesting failures
//! (the driver out of memory half-way through a migration, a submission refused, the fault
//! handler panicking) never happen on a healthy lavapipe. This module lets a test make them
//! happen: [`arm`] a [`Site`] with how many hits to let through first and how many to fail,
//! run the program, and check that the failure ended in a typed error or a correct retry,
//! with the data intact and the pool empty afterwards (`tests/inject.rs`).
//!
//! Each site is one line in the code it breaks, at the exact call whose failure it stands
//! for, and it fails the way that call does, so the error travels the real error path:
//!
//! | site | where | fails as |
//! |---|---|---|
//! | [`Site::PoolAlloc`] | the allocation of a device block (new or kept) | `OUT_OF_DEVICE_MEMORY` from the allocator |
//! | [`Site::StagingSlot`] | readying a staging-ring slot (Staged path) | `vkBeginCommandBuffer` → `OUT_OF_DEVICE_MEMORY` |
//! | [`Site::Submit`] | `vkQueueSubmit` (launches, transfers, fills) | `OUT_OF_DEVICE_MEMORY` |
//! | [`Site::FaultHandler`] | the fault handler, before it reads device memory for a CPU fault | a panic |
//!
//! The sites exist only with the `fault-injection` feature (the crate's own tests turn it
//! on through a dev-dependency on itself); without it [`hit`] is a constant `false` and the
//! module holds nothing else. Arming is process-wide: tests that arm run one at a time.
//! [`hit`] is one atomic operation and allocates nothing, so the fault handler may call it.

/// A place where a failure can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Site {
    /// Allocating a device block from the pool (a migration's destination, the staging
    /// ring is allocated at start-up and not counted).
    PoolAlloc,
    /// Readying the next slot of the staging ring (Staged path only).
    StagingSlot,
    /// Submitting a command buffer to the queue.
    Submit,
    /// The fault handler, as it starts reading device memory for a CPU fault.
    FaultHandler,
}

#[cfg(feature = "fault-injection")]
mod armed {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::Site;

    const SITES: usize = 4;

    /// Per site: hits still to let through (high 32 bits) and failures still to make (low
    /// 32 bits), in one word so that a hit decides atomically.
    static PLAN: [AtomicU64; SITES] = [const { AtomicU64::new(0) }; SITES];
    /// Per site: failures made since the last [`arm`].
    static FIRED: [AtomicU64; SITES] = [const { AtomicU64::new(0) }; SITES];

    fn index(site: Site) -> usize {
        match site {
            Site::PoolAlloc => 0,
            Site::StagingSlot => 1,
            Site::Submit => 2,
            Site::FaultHandler => 3,
        }
    }

    pub fn arm(site: Site, skip: u32, fail: u32) {
        FIRED[index(site)].store(0, Ordering::SeqCst);
        PLAN[index(site)].store((u64::from(skip) << 32) | u64::from(fail), Ordering::SeqCst);
    }

    pub fn fired(site: Site) -> u64 {
        FIRED[index(site)].load(Ordering::SeqCst)
    }

    /// Pure: the plan after one hit of a site whose plan is `plan`, and whether that hit
    /// fails; `None` when the site is disarmed (nothing changes).
    pub(super) fn step(plan: u64) -> Option<(u64, bool)> {
        let (skip, left) = (plan >> 32, plan & u64::from(u32::MAX));
        match (skip, left) {
            (_, 0) => None,
            (0, left) => Some((left - 1, true)),
            (skip, left) => Some((((skip - 1) << 32) | left, false)),
        }
    }

    pub fn hit(site: Site) -> bool {
        let i = index(site);
        let mut fail = false;
        let _ = PLAN[i].fetch_update(Ordering::SeqCst, Ordering::SeqCst, |plan| {
            let (next, f) = step(plan)?;
            fail = f;
            Some(next)
        });
        if fail {
            FIRED[i].fetch_add(1, Ordering::SeqCst);
        }
        fail
    }
}

/// From now on, let `skip` hits of `site` pass, then fail the next `fail` ones; replaces
/// any earlier plan for `site` and resets its [`fired`] count. `arm(site, 0, 0)` disarms.
#[cfg(feature = "fault-injection")]
pub fn arm(site: Site, skip: u32, fail: u32) {
    armed::arm(site, skip, fail)
}

/// How many failures `site` has made since it was last armed.
#[cfg(feature = "fault-injection")]
pub fn fired(site: Site) -> u64 {
    armed::fired(site)
}

/// Whether this hit of `site` must fail (always `false` without the feature).
#[inline]
pub(crate) fn hit(site: Site) -> bool {
    #[cfg(feature = "fault-injection")]
    return armed::hit(site);
    #[cfg(not(feature = "fault-injection"))]
    {
        let _ = site;
        false
    }
}

#[cfg(all(test, feature = "fault-injection"))]
mod tests {
    use super::armed::step;

    #[test]
    fn skips_then_fails_then_passes() {
        // (Unit tests share the process with runtimes: the plans are tested, not the
        // statics, which tests/inject.rs drives one test at a time.)
        let mut plan = Some((2u64 << 32) | 3);
        let mut got = vec![];
        for _ in 0..7 {
            match plan.and_then(step) {
                Some((next, fail)) => {
                    got.push(fail);
                    plan = Some(next);
                }
                None => got.push(false),
            }
        }
        assert_eq!(got, [false, false, true, true, true, false, false]);
        assert_eq!(step(0), None);
    }
}
