//! The `signal` backend's helper thread: takes the faults its `SIGSEGV` handler handed over
//! (`trap::signal`'s slots) and resolves them with the same code as the userfaultfd handler
//! (`fault::resolve`), then lets each faulting thread return and retry its access.
//!
//! It keeps the handler's rules (docs/architecture.md, "deadlock-free"): no allocation after
//! start-up, no lock a launcher holds while touching memory; protection changes only under a
//! claim, together with the state (`trap::signal`, hazard 1).

use super::deferred::Deferred;
use super::resolve::{copy_back, release_shared, Outcome};
use crate::mirror::page::Residence;
use crate::mirror::PAGE;
use crate::space::{AddressSpace, Counters, Ext};
use crate::sys::Prot;
use crate::trap::signal::{self, Access, SLOTS};

/// The helper thread: takes faults from the slots and resolves them.
pub(crate) struct Helper {
    space: &'static AddressSpace,
    /// Deferred faults, by slot.
    deferred: Deferred<usize>,
}

impl Helper {
    pub fn new(space: &'static AddressSpace) -> Self {
        Helper {
            space,
            deferred: Deferred::with_capacity(SLOTS),
        }
    }

    pub fn run(mut self) {
        signal::become_helper();
        self.space.warm_reader();
        loop {
            self.wait();
            let round = self.space.begin_round();
            signal::take_pending(|i| match self.resolve(i) {
                Outcome::Done => signal::complete(i),
                o => {
                    self.count_deferred(i);
                    self.deferred.push(i, o);
                }
            });
            round.finish(|| self.retry_deferred());
        }
    }

    fn wait(&self) {
        use rustix::event::{PollFd, PollFlags};
        let timeout = self
            .deferred
            .timeout(false)
            .map(|d| rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: d.as_nanos() as i64,
            });
        let mut fds = [PollFd::new(&self.space.wake, PollFlags::IN)];
        let _ = rustix::event::poll(&mut fds, timeout.as_ref());
    }

    /// Retries the deferred faults; returns whether some are still deferred.
    fn retry_deferred(&mut self) -> bool {
        // Taken out for the retry (moving a `Vec` allocates nothing), put back after.
        let mut deferred = std::mem::take(&mut self.deferred);
        let left = deferred.retry(|i| match self.resolve(i) {
            Outcome::Done => {
                signal::complete(i);
                Outcome::Done
            }
            o => o,
        });
        self.deferred = deferred;
        left
    }

    fn count_deferred(&self, i: usize) {
        let (page, _) = signal::fault(i);
        self.space.mirror.lookup(page, |e, _| {
            Counters::add(&e.device().owner.counters.deferred_faults, 1)
        });
    }

    fn resolve(&self, i: usize) -> Outcome {
        let (page, access) = signal::fault(i);
        self.space
            .mirror
            .lookup(page, |ext, idx| self.resolve_in(ext, idx, access))
            .unwrap_or_else(|| self.unmirrored(page))
    }

    /// A fault in managed memory the mirror does not track (an extent retired meanwhile,
    /// its pages already brought home): its host copy is all there is.
    fn unmirrored(&self, page: usize) -> Outcome {
        if signal::managed_range(page).is_some() {
            let _ = self
                .space
                .backend
                .signal()
                .map(|t| t.protect(page, PAGE, Prot::ReadWrite));
        }
        Outcome::Done
    }

    fn resolve_in(&self, ext: &Ext, idx: usize, access: Access) -> Outcome {
        let bits = ext.cell(idx).load();
        if bits.gone() {
            return Outcome::Done; // unmapped: the retry faults as SEGV_MAPERR and is chained
        }
        if bits.busy() {
            return Outcome::Wait;
        }
        match bits.residence() {
            Residence::Device => {
                let o = copy_back(self.space, ext, idx, access == Access::Write);
                if o == Outcome::Done {
                    crate::trace::fault(ext, ext.page_addr(idx), 0, 0, false);
                }
                o
            }
            // A read of a Shared page cannot fault (it is PROT_READ): the fault is stale,
            // raised while the page was still PROT_NONE. Where the access kind is unknown,
            // treating it as a write costs the device copy, never data.
            Residence::Shared if access == Access::Read => {
                self.reprotect(ext, idx, Residence::Shared)
            }
            Residence::Shared => {
                let o = release_shared(self.space, ext, idx);
                if o == Outcome::Done {
                    crate::trace::fault(ext, ext.page_addr(idx), 0, 0, true);
                }
                o
            }
            Residence::Host => self.reprotect(ext, idx, Residence::Host),
        }
    }

    /// A stale fault: makes sure the page has its state's protection, under a claim
    /// (hazard 1), and lets the thread retry.
    fn reprotect(&self, ext: &Ext, idx: usize, state: Residence) -> Outcome {
        let cell = ext.cell(idx);
        if cell
            .try_claim(|b| b.residence() == state && !b.gone())
            .is_none()
        {
            return Outcome::Wait;
        }
        let prot = if state == Residence::Host {
            Prot::ReadWrite
        } else {
            Prot::Read
        };
        if let Some(t) = self.space.backend.signal() {
            let _ = t.protect(ext.page_addr(idx), PAGE, prot);
        }
        cell.release(state);
        Outcome::Done
    }
}
