//! Faults waiting for a page someone else holds, kept by the thread that resolves faults.
//!
//! Both backends defer the same way: a fault on a claimed (`BUSY`) page waits until the
//! owner releases it and pokes the service ([`Outcome::Wait`]); one the address space or a
//! transfer refused is retried on a short timer ([`Outcome::Retry`]). The queue has a fixed
//! capacity, reserved at start-up: the thread never allocates after that.

use std::time::Duration;

use super::resolve::Outcome;

/// Deferred faults of type `F` (what identifies a fault to its backend), with what became of
/// each last time. (`Default` is an empty queue with no room, for swapping out during a
/// retry.)
pub(crate) struct Deferred<F> {
    list: Vec<(F, Outcome)>,
}

impl<F> Default for Deferred<F> {
    fn default() -> Self {
        Deferred { list: Vec::new() }
    }
}

impl<F: Copy> Deferred<F> {
    /// An empty queue for up to `capacity` faults.
    pub fn with_capacity(capacity: usize) -> Self {
        Deferred {
            list: Vec::with_capacity(capacity),
        }
    }

    /// Whether the queue is full.
    pub fn is_full(&self) -> bool {
        self.list.len() == self.list.capacity()
    }

    /// Defers `fault`, which came out `outcome` (not `Done`). The caller makes room first
    /// ([`is_full`](Self::is_full)).
    pub fn push(&mut self, fault: F, outcome: Outcome) {
        debug_assert!(!self.is_full(), "the deferred faults would reallocate");
        self.list.push((fault, outcome));
    }

    /// Retries every deferred fault with `resolve`; those that come out `Done` leave the
    /// queue. Returns whether some are still deferred.
    pub fn retry(&mut self, mut resolve: impl FnMut(F) -> Outcome) -> bool {
        let mut i = 0;
        while i < self.list.len() {
            match resolve(self.list[i].0) {
                Outcome::Done => {
                    self.list.swap_remove(i);
                }
                o => {
                    self.list[i].1 = o;
                    i += 1;
                }
            }
        }
        !self.list.is_empty()
    }

    /// How long the thread may sleep before it retries: not at all bounded when nothing is
    /// deferred (`None`), 1 ms when something waits for the address space or a transfer
    /// (`extra_timer` adds such work of the backend's own), else 20 ms — a poke normally
    /// comes first, and this is the net under a lost one.
    pub fn timeout(&self, extra_timer: bool) -> Option<Duration> {
        if extra_timer || self.list.iter().any(|(_, o)| *o == Outcome::Retry) {
            Some(Duration::from_millis(1))
        } else if !self.list.is_empty() {
            Some(Duration::from_millis(20))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_keep_what_is_not_done_and_say_how_long_to_sleep() {
        let mut d = Deferred::with_capacity(3);
        assert_eq!(d.timeout(false), None);
        assert_eq!(d.timeout(true), Some(Duration::from_millis(1)));
        d.push(1, Outcome::Wait);
        d.push(2, Outcome::Wait);
        assert_eq!(d.timeout(false), Some(Duration::from_millis(20)));
        d.push(3, Outcome::Retry);
        assert!(d.is_full());
        assert_eq!(d.timeout(false), Some(Duration::from_millis(1)));
        let left = d.retry(|f| if f == 2 { Outcome::Wait } else { Outcome::Done });
        assert!(left);
        assert_eq!(d.timeout(false), Some(Duration::from_millis(20)));
        assert!(!d.retry(|_| Outcome::Done));
        assert_eq!(d.timeout(false), None);
    }
}
