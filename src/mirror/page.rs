//! One byte of state per mirrored host page, changed only by compare-and-swap.
//!
//! The byte packs the page's [`Residence`] with three flags:
//!
//! - `BUSY`: some thread owns the page — a launcher moving it or running a kernel that writes
//!   it, or the fault handler copying it back. Whoever sets `BUSY` (by a successful
//!   [`PageCell::try_claim`]) is the only one allowed to change the residence, and ends its
//!   ownership with [`PageCell::release`].
//! - `GONE`: the host range was unmapped or discarded behind the mirror's back (uffd
//!   `UNMAP`/`REMOVE`). The residence is forced to `Host` (the device copy is dead) and an owner
//!   that releases a `GONE` page leaves it `Host|GONE` whatever it meant to set, so a racing
//!   `munmap` can never be undone by a migration that was already under way.
//! - `ZERO`: on a `Device` page only, its device copy is all zero because nothing ever wrote
//!   it: the page was never touched when a launch that only read it (or a prefetch) moved it,
//!   and no writing kernel has bound it since. Bringing it home copies nothing from the device.
//!   Set only by [`PageCell::mark_zero`]; every other change of state clears it.
//!
//! `GONE` is set by [`PageCell::mark_gone`] even on a `BUSY` page; it is cleared only by an
//! owner that re-validates the page from host memory ([`PageCell::revalidate`]).

use std::sync::atomic::{AtomicU8, Ordering};

/// Where a page's valid data lives (the residence rows of the page-state table in
/// docs/architecture.md, "The mirror: extents and page states").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Residence {
    /// The host copy is valid; the device copy, if any, is stale.
    Host,
    /// Both copies are valid; the host page is write-protected.
    Shared,
    /// The host page is absent; the device copy is valid.
    Device,
}

impl Residence {
    const fn bits(self) -> u8 {
        match self {
            Residence::Host => 0,
            Residence::Shared => 1,
            Residence::Device => 2,
        }
    }

    const fn from_bits(bits: u8) -> Self {
        match bits & RES_MASK {
            1 => Residence::Shared,
            2 => Residence::Device,
            _ => Residence::Host,
        }
    }

    /// True when the device copy holds valid data.
    pub const fn device_valid(self) -> bool {
        matches!(self, Residence::Shared | Residence::Device)
    }
}

const RES_MASK: u8 = 0b11;
const BUSY: u8 = 1 << 2;
const GONE: u8 = 1 << 3;
const ZERO: u8 = 1 << 4;

/// A snapshot of one page's state byte.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PageBits(u8);

impl PageBits {
    /// The page's residence.
    pub const fn residence(self) -> Residence {
        Residence::from_bits(self.0)
    }

    /// Someone owns the page.
    pub const fn busy(self) -> bool {
        self.0 & BUSY != 0
    }

    /// The host range was unmapped or discarded behind the mirror's back.
    pub const fn gone(self) -> bool {
        self.0 & GONE != 0
    }

    /// A `Device` page whose device copy nothing ever wrote: it is all zero.
    pub const fn zero(self) -> bool {
        self.0 & ZERO != 0
    }
}

impl std::fmt::Debug for PageBits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.residence())?;
        if self.busy() {
            f.write_str("|BUSY")?;
        }
        if self.gone() {
            f.write_str("|GONE")?;
        }
        if self.zero() {
            f.write_str("|ZERO")?;
        }
        Ok(())
    }
}

/// The state byte of one page.
#[derive(Default)]
pub struct PageCell(AtomicU8);

impl PageCell {
    /// A page whose host copy is valid and nobody owns.
    #[cfg(test)]
    pub const fn new() -> Self {
        PageCell(AtomicU8::new(0))
    }

    /// A page in `residence`, not owned.
    pub fn with(residence: Residence) -> Self {
        PageCell(AtomicU8::new(residence.bits()))
    }

    /// Reads the state.
    pub fn load(&self) -> PageBits {
        PageBits(self.0.load(Ordering::Acquire))
    }

    /// Takes ownership if nobody owns the page and `want` accepts its state.
    ///
    /// Returns the state found (before `BUSY` was set) on success.
    pub fn try_claim(&self, want: impl Fn(PageBits) -> bool) -> Option<PageBits> {
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            let bits = PageBits(cur);
            if bits.busy() || !want(bits) {
                return None;
            }
            match self
                .0
                .compare_exchange_weak(cur, cur | BUSY, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(bits),
                Err(now) => cur = now,
            }
        }
    }

    /// Ends ownership, leaving the page in `residence` — or `Host|GONE` if the host range
    /// vanished meanwhile. Returns the state left behind.
    pub fn release(&self, residence: Residence) -> PageBits {
        self.update(|cur| {
            if cur & GONE != 0 {
                GONE
            } else {
                residence.bits()
            }
        })
    }

    /// Ends ownership of a page the owner left as it found it: its state stays what it was
    /// when claimed (`ZERO` included), or `Host|GONE` if the host range vanished meanwhile.
    pub fn unclaim(&self) -> PageBits {
        self.update(|cur| if cur & GONE != 0 { GONE } else { cur & !BUSY })
    }

    /// Forgets an earlier `GONE` on a page the caller owns, because the caller is about to
    /// re-read it from live host memory. Call it right after claiming, before any copy: a
    /// `mark_gone` that lands later sets `GONE` again and wins at [`release`](Self::release).
    pub fn revalidate(&self) {
        self.update(|cur| cur & !GONE);
    }

    /// Changes the residence of a page the caller owns, keeping it owned.
    #[cfg(test)]
    pub fn set_owned(&self, residence: Residence) {
        self.update(|cur| (cur & GONE) | BUSY | if cur & GONE != 0 { 0 } else { residence.bits() });
    }

    /// Changes the residence of a page nobody owns, if it is still `from` and not owned.
    /// Returns whether it changed.
    #[cfg(test)]
    pub fn transition(&self, from: Residence, to: Residence) -> bool {
        let from_bits = from.bits();
        self.0
            .compare_exchange(from_bits, to.bits(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Records that the host range vanished: residence `Host`, `GONE` set, `BUSY` kept.
    /// Returns the state before.
    pub fn mark_gone(&self) -> PageBits {
        PageBits(
            self.0
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                    Some((cur & BUSY) | GONE)
                })
                .unwrap_or_else(|v| v),
        )
    }

    /// Records that the device copy of a `Device` page nobody owns is all zero (nothing ever
    /// wrote it), if it is still exactly that. Returns whether it was recorded.
    pub fn mark_zero(&self) -> bool {
        let device = Residence::Device.bits();
        self.0
            .compare_exchange(device, device | ZERO, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Marks the page `GONE` unless somebody owns it, in one atomic step. For `REMOVE`
    /// events: an owned page is being moved by the runtime itself (its own `MADV_DONTNEED`)
    /// or belongs to a live borrow, so the discard is not the user's.
    pub fn mark_gone_if_idle(&self) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur & BUSY == 0).then_some(GONE)
            })
            .is_ok()
    }

    fn update(&self, f: impl Fn(u8) -> u8) -> PageBits {
        let prev = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| Some(f(cur)));
        // fetch_update with a closure that always returns Some cannot fail.
        PageBits(f(prev.unwrap_or_else(|v| v)))
    }
}

impl std::fmt::Debug for PageCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.load().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_is_exclusive_and_release_sets_residence() {
        let c = PageCell::new();
        let got = c.try_claim(|b| b.residence() == Residence::Host).unwrap();
        assert_eq!(got.residence(), Residence::Host);
        assert!(c.load().busy());
        assert!(c.try_claim(|_| true).is_none(), "second claim must fail");
        let left = c.release(Residence::Device);
        assert_eq!(left.residence(), Residence::Device);
        assert!(!left.busy());
    }

    #[test]
    fn claim_respects_predicate() {
        let c = PageCell::with(Residence::Shared);
        assert!(c
            .try_claim(|b| b.residence() == Residence::Device)
            .is_none());
        assert!(!c.load().busy());
    }

    #[test]
    fn gone_wins_over_an_owner_release() {
        let c = PageCell::with(Residence::Host);
        c.try_claim(|_| true).unwrap();
        let before = c.mark_gone();
        assert!(before.busy());
        assert!(c.load().busy(), "mark_gone keeps the owner's claim");
        assert!(c.load().gone());
        let left = c.release(Residence::Device);
        assert_eq!(left.residence(), Residence::Host);
        assert!(left.gone());
        assert!(!left.busy());
    }

    #[test]
    fn zero_only_on_an_idle_device_page_and_lost_on_any_change() {
        let c = PageCell::with(Residence::Shared);
        assert!(!c.mark_zero(), "not a Device page");
        let c = PageCell::with(Residence::Device);
        assert!(c.mark_zero());
        let seen = c.try_claim(|b| b.residence() == Residence::Device).unwrap();
        assert!(
            seen.zero() && c.load().zero(),
            "a claim keeps it: {:?}",
            c.load()
        );
        assert!(!c.mark_zero(), "owned");
        assert_eq!(
            c.release(Residence::Device),
            PageCell::with(Residence::Device).load()
        );
        assert!(c.mark_zero());
        c.mark_gone();
        assert!(!c.load().zero());
        assert_eq!(
            format!("{:?}", PageCell::with(Residence::Device).load()),
            "Device"
        );
    }

    #[test]
    fn unclaim_keeps_what_was_found_unless_gone() {
        let c = PageCell::with(Residence::Device);
        assert!(c.mark_zero());
        c.try_claim(|_| true).unwrap();
        let left = c.unclaim();
        assert!(left.zero() && !left.busy(), "{left:?}");
        assert_eq!(left.residence(), Residence::Device);

        c.try_claim(|_| true).unwrap();
        c.mark_gone();
        let left = c.unclaim();
        assert!(left.gone() && !left.zero() && !left.busy(), "{left:?}");
        assert_eq!(left.residence(), Residence::Host);
    }

    #[test]
    fn revalidation_clears_gone() {
        let c = PageCell::new();
        c.mark_gone();
        let seen = c.try_claim(|_| true).unwrap();
        assert!(seen.gone());
        c.revalidate();
        let left = c.release(Residence::Device);
        assert_eq!(left.residence(), Residence::Device);
        assert!(!left.gone());

        // An unmap that lands after revalidation wins again.
        c.try_claim(|_| true).unwrap();
        c.revalidate();
        c.mark_gone();
        assert_eq!(c.release(Residence::Device).residence(), Residence::Host);
    }

    #[test]
    fn transition_only_from_the_expected_unowned_state() {
        let c = PageCell::with(Residence::Shared);
        assert!(!c.transition(Residence::Device, Residence::Host));
        assert!(c.transition(Residence::Shared, Residence::Host));
        c.try_claim(|_| true).unwrap();
        assert!(
            !c.transition(Residence::Host, Residence::Shared),
            "owned pages do not transition"
        );
    }

    #[test]
    fn gone_if_idle_skips_owned_pages() {
        let c = PageCell::with(Residence::Device);
        c.try_claim(|_| true).unwrap();
        assert!(!c.mark_gone_if_idle());
        assert_eq!(c.release(Residence::Device).residence(), Residence::Device);
        assert!(c.mark_gone_if_idle());
        let b = c.load();
        assert!(b.gone() && b.residence() == Residence::Host);
    }

    #[test]
    fn set_owned_keeps_busy() {
        let c = PageCell::new();
        c.try_claim(|_| true).unwrap();
        c.set_owned(Residence::Shared);
        let b = c.load();
        assert!(b.busy());
        assert_eq!(b.residence(), Residence::Shared);
    }
}
