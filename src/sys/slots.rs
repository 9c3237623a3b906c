//! Fixed tables of slots taken by compare-and-swap, for code that may neither allocate nor
//! lock: the `signal` backend's `SIGSEGV` handler hands faults over through one (`trap::
//! signal`), the fault handler reads the watches of launches and in-place ranges through
//! another (`space::watch`).
//!
//! A slot's state word starts [`FREE`]; whoever takes it ([`take`]) owns it in [`FILLING`],
//! fills it in, and publishes it with a state of the table's own (a `Release` store), which
//! readers load with `Acquire`. Its owner frees it by storing `FREE` again.

use std::sync::atomic::{AtomicU32, Ordering};

/// A slot nobody owns.
pub(crate) const FREE: u32 = 0;
/// A slot its new owner is filling in; readers skip it.
pub(crate) const FILLING: u32 = 1;

/// Takes the first free slot of `n`, looking from `first` round-robin (`state(i)` is slot
/// `i`'s state word): it goes `FREE` → `FILLING`. `None` when every slot is taken.
/// Allocates nothing, takes no lock: a signal handler may call it.
pub(crate) fn take<'a>(
    n: usize,
    first: usize,
    state: impl Fn(usize) -> &'a AtomicU32,
) -> Option<usize> {
    (0..n).map(|k| (first + k) % n).find(|&i| {
        state(i)
            .compare_exchange(FREE, FILLING, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_taken_once_from_where_the_search_starts() {
        let states: Vec<AtomicU32> = (0..4).map(|_| AtomicU32::new(FREE)).collect();
        assert_eq!(take(4, 2, |i| &states[i]), Some(2));
        assert_eq!(take(4, 2, |i| &states[i]), Some(3));
        assert_eq!(take(4, 2, |i| &states[i]), Some(0));
        assert_eq!(states[2].load(Ordering::Relaxed), FILLING);
        states[3].store(FREE, Ordering::Release);
        assert_eq!(take(4, 0, |i| &states[i]), Some(1));
        assert_eq!(take(4, 0, |i| &states[i]), Some(3));
        assert_eq!(take(4, 0, |i| &states[i]), None);
    }
}
