//! Thrash detection: a buffer that keeps bouncing between the CPU and the device.
//!
//! A program that launches a kernel on a buffer, reads (or writes) it on the CPU, launches
//! again, and so on, pays a migration and a round of CPU faults per iteration, for data it
//! could have left where it was. NVIDIA's UVM calls a page that moves three times within
//! 500 µs thrashing and pins it (host or device, with remote mapping). vkhmm has no GPU
//! page faults, so its unit of movement is a launch: a binding *bounces* when the CPU
//! faulted some of its pages back since the previous launch that bound the same range.
//! [`ThrashPolicy::bounces`] bounces within [`ThrashPolicy::window_ns`] make it thrashing,
//! and the runtime settles it on the host with the device accessing it in place
//! (`Advice::AccessInPlace`) where the range allows; where it does not, the range is given
//! up on and watched no more.
//!
//! This module only counts: the runtime passes each binding's span, the sum of the fault
//! counters of the extents under it, and the time; the answer is whether to settle it.

use std::ops::Range;

/// When a binding counts as thrashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrashPolicy {
    /// Bounces that make it thrashing (3, as UVM).
    pub bounces: usize,
    /// Within this many nanoseconds (100 ms: a launch-and-read loop on lavapipe takes
    /// about a millisecond per round; UVM's 500 µs counts single GPU faults).
    pub window_ns: u64,
}

impl Default for ThrashPolicy {
    fn default() -> Self {
        ThrashPolicy {
            bounces: 3,
            window_ns: 100_000_000,
        }
    }
}

/// Ranges watched at most; the least recently seen is forgotten first.
const TRACKED: usize = 256;
/// Bounce times kept per range (at least `ThrashPolicy::bounces` of them are used).
const STAMPS: usize = 8;

#[derive(Debug, Clone)]
struct Track {
    span: Range<usize>,
    /// Fault count of the extents under the span at the last launch.
    faults: u64,
    /// Times of the latest bounces, newest last.
    stamps: Vec<u64>,
    seen: u64,
    given_up: bool,
}

/// The bounce history of the ranges a runtime launched on.
#[derive(Debug, Default)]
pub struct Thrash {
    tracks: Vec<Track>,
}

impl Thrash {
    /// A launch binds `span`, under which the mirror counted `faults` CPU faults so far, at
    /// time `now` (nanoseconds, monotonic). True when the span is thrashing: settle it.
    pub fn observe(
        &mut self,
        policy: &ThrashPolicy,
        span: Range<usize>,
        faults: u64,
        now: u64,
    ) -> bool {
        let Some(t) = self.tracks.iter_mut().find(|t| t.span == span) else {
            if self.tracks.len() == TRACKED {
                let oldest = (0..self.tracks.len())
                    .min_by_key(|&i| self.tracks[i].seen)
                    .unwrap_or(0);
                self.tracks.swap_remove(oldest);
            }
            self.tracks.push(Track {
                span,
                faults,
                stamps: Vec::new(),
                seen: now,
                given_up: false,
            });
            return false;
        };
        t.seen = now;
        // Fewer faults than before: the extents under it were rebuilt (merged, evicted);
        // start counting again.
        let bounced = faults > t.faults;
        t.faults = faults;
        if t.given_up || !bounced {
            return false;
        }
        if t.stamps.len() == STAMPS {
            t.stamps.remove(0);
        }
        t.stamps.push(now);
        let recent = t
            .stamps
            .iter()
            .filter(|&&s| now.saturating_sub(s) <= policy.window_ns)
            .count();
        recent >= policy.bounces.max(1)
    }

    /// Stops watching `span` for good (it cannot be settled in place).
    pub fn give_up(&mut self, span: &Range<usize>) {
        if let Some(t) = self.tracks.iter_mut().find(|t| &t.span == span) {
            t.given_up = true;
        }
    }

    /// Forgets every range overlapping `span` (it was settled, or its advice changed).
    pub fn forget(&mut self, span: &Range<usize>) {
        self.tracks
            .retain(|t| !(t.span.start < span.end && span.start < t.span.end));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn three_bounces_within_the_window_are_thrashing() {
        let p = ThrashPolicy::default();
        let mut t = Thrash::default();
        let s = 0x1000..0x9000;
        assert!(!t.observe(&p, s.clone(), 0, 0)); // first launch: nothing to compare
        assert!(!t.observe(&p, s.clone(), 4, MS)); // bounce 1
        assert!(!t.observe(&p, s.clone(), 4, 2 * MS)); // no CPU fault since: no bounce
        assert!(!t.observe(&p, s.clone(), 9, 3 * MS)); // bounce 2
        assert!(t.observe(&p, s.clone(), 12, 4 * MS)); // bounce 3
    }

    #[test]
    fn slow_bounces_are_not() {
        let p = ThrashPolicy::default();
        let mut t = Thrash::default();
        let s = 0..4096;
        t.observe(&p, s.clone(), 0, 0);
        for k in 1..10u64 {
            // One bounce every 60 ms: never three within 100 ms.
            assert!(!t.observe(&p, s.clone(), k, k * 60 * MS), "round {k}");
        }
    }

    #[test]
    fn given_up_and_forgotten_ranges() {
        let p = ThrashPolicy {
            bounces: 1,
            window_ns: MS,
        };
        let mut t = Thrash::default();
        let (a, b) = (0..4096, 8192..12288);
        t.observe(&p, a.clone(), 0, 0);
        t.give_up(&a);
        assert!(!t.observe(&p, a.clone(), 1, 1));
        t.observe(&p, b.clone(), 0, 0);
        assert!(t.observe(&p, b.clone(), 1, 1));
        t.forget(&(0..10_000));
        // Forgotten: a fresh start for both.
        assert!(!t.observe(&p, a.clone(), 5, 2));
        assert!(!t.observe(&p, b, 5, 2));
        // A rebuilt extent (fewer faults) is no bounce.
        assert!(!t.observe(&p, a, 0, 3));
    }

    #[test]
    fn the_table_stays_bounded() {
        let p = ThrashPolicy::default();
        let mut t = Thrash::default();
        for i in 0..(TRACKED + 50) {
            t.observe(&p, i * 4096..(i + 1) * 4096, 0, i as u64);
        }
        assert_eq!(t.tracks.len(), TRACKED);
    }
}
