//! The fault handler's assistant: a second thread that installs the upper half of a large
//! fault-back window while the handler installs the lower half.
//!
//! Bringing a window home is one `UFFDIO_COPY` per run of pages, and that ioctl is bound by
//! the kernel's work per 4 KiB page (allocating it, charging it to the memory cgroup,
//! mapping it), not by memory bandwidth: one thread reaches about 0.35–0.6× memcpy, two
//! threads on disjoint halves about 1.7× that (docs/performance.md, "Sequential fault-back").
//! The faulting thread is asleep meanwhile, so on a machine with two or more CPUs a second
//! copier costs nothing it would otherwise have.
//!
//! ## Protocol
//!
//! One job at a time, and only the thread that resolves faults (the userfaultfd handler, or
//! the `signal` backend's helper) posts one:
//!
//! ```text
//! handler:   claim the window → post(upper half) → install lower half → wait() → release
//! assistant: wait for a job → install it with its own transfer context → hand back the result
//! ```
//!
//! The handler releases no page of the window and leaves its busy epoch of the mirror only
//! after [`Assist::wait`] returns, so the extent a job names outlives the job, and each half
//! is released by its own outcome ([`install_window`](super::service)): a half that stopped
//! early never makes the other half's installed pages look absent.
//!
//! The assistant follows the handler's rules (docs/architecture.md, "deadlock-free"): it
//! allocates nothing after start-up, takes no lock a launcher holds, and reads device memory
//! only through its own transfer context ([`DeviceContext::assist_transfer`]).
//!
//! [`DeviceContext::assist_transfer`]: crate::migrate::DeviceContext

use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::migrate::{Ext, Installed};
use crate::Result;

/// Half a window for the assistant: pages `pages` of `*ext`, claimed by the poster, to be
/// installed write-protected except page `writable`.
pub(crate) struct Job {
    ext: *const Ext,
    pub pages: Range<usize>,
    pub writable: Option<usize>,
}

// SAFETY: a `Job` is only a claim ticket: the extent it points to is shared by every thread
// already (the mirror holds it in an `Arc`, and `Ext` is `Sync`), and the poster keeps it
// alive until the job's result is back (module docs, "Protocol").
unsafe impl Send for Job {}

// What the `Send` above relies on.
const _: fn() = || {
    fn shared_between_threads<T: Sync>() {}
    shared_between_threads::<Ext>();
};

impl Job {
    /// A job over `pages` of `ext` (claimed by the caller).
    pub fn new(ext: &Ext, pages: Range<usize>, writable: Option<usize>) -> Job {
        Job {
            ext,
            pages,
            writable,
        }
    }

    /// The extent the job's pages belong to.
    ///
    /// # Safety
    ///
    /// Only while the job is being served: its poster keeps the extent alive until then.
    pub unsafe fn ext(&self) -> &Ext {
        // SAFETY: forwarded from the caller.
        unsafe { &*self.ext }
    }
}

enum Slot {
    Empty,
    Posted(Job),
    Running,
    Finished(Result<Installed>),
}

/// How long each side spins for the other before it sleeps: the assistant for the next job
/// (a stream posts one every window, about every 0.5 ms), the handler for the result. A
/// sleeping thread woken from the other CPU starts 40-200 µs later here, a third of a
/// window's copy.
const SPIN: Duration = Duration::from_micros(2000);

/// The mailbox between the fault-resolving thread and its assistant.
pub(crate) struct Assist {
    slot: Mutex<Slot>,
    changed: Condvar,
    /// Bumped (under the lock) whenever the slot changes, so either side can spin on it
    /// without the lock.
    version: AtomicU32,
}

impl Assist {
    /// An empty mailbox; [`run`](Self::run) on a thread of its own serves it.
    pub const fn new() -> Assist {
        Assist {
            slot: Mutex::new(Slot::Empty),
            changed: Condvar::new(),
            version: AtomicU32::new(0),
        }
    }

    /// Hands `job` to the assistant. Call [`wait`](Self::wait) before posting again and
    /// before releasing any page of the job.
    pub fn post(&self, job: Job) {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        debug_assert!(matches!(*slot, Slot::Empty), "one job at a time");
        *slot = Slot::Posted(job);
        self.version.fetch_add(1, Ordering::Release);
        drop(slot);
        self.changed.notify_all();
    }

    /// Waits for the posted job's result.
    pub fn wait(&self) -> Result<Installed> {
        let mut slot = self.await_change(|s| matches!(s, Slot::Finished(_)));
        match std::mem::replace(&mut *slot, Slot::Empty) {
            Slot::Finished(r) => {
                self.version.fetch_add(1, Ordering::Release);
                r
            }
            _ => unreachable!("await_change returns a finished slot"),
        }
    }

    /// The assistant's loop: serves each posted job with `install` (which may call
    /// [`Job::ext`]) and hands back its result. Never returns.
    pub fn run(&self, install: impl Fn(&Job) -> Result<Installed>) {
        loop {
            let job = {
                let mut slot = self.await_change(|s| matches!(s, Slot::Posted(_)));
                match std::mem::replace(&mut *slot, Slot::Running) {
                    Slot::Posted(job) => job,
                    _ => unreachable!("await_change returns a posted slot"),
                }
            };
            let r = install(&job);
            let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
            *slot = Slot::Finished(r);
            self.version.fetch_add(1, Ordering::Release);
            drop(slot);
            self.changed.notify_all();
        }
    }

    /// Spins up to [`SPIN`] for `ready` to accept the slot, then sleeps until it does;
    /// returns the slot locked.
    fn await_change(&self, ready: impl Fn(&Slot) -> bool) -> MutexGuard<'_, Slot> {
        let start = Instant::now();
        let mut seen = None;
        while start.elapsed() < SPIN {
            let v = self.version.load(Ordering::Acquire);
            if seen != Some(v) {
                seen = Some(v);
                let slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
                if ready(&slot) {
                    return slot;
                }
            }
            std::hint::spin_loop();
        }
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        while !ready(&slot) {
            slot = self
                .changed
                .wait(slot)
                .unwrap_or_else(PoisonError::into_inner);
        }
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_states_round_trip_without_a_device() {
        // The mailbox alone: a fake install on a thread, jobs posted and waited in turn.
        static A: Assist = Assist::new();
        std::thread::spawn(|| {
            A.run(|job| {
                Ok(Installed {
                    bytes: (job.pages.len() * crate::mirror::PAGE) as u64,
                    already_present: job.writable.map_or(0, |w| w as u64),
                    stop: None,
                })
            })
        });
        for n in 1..50usize {
            // This install never looks at the extent.
            let job = Job {
                ext: std::ptr::null(),
                pages: 0..n,
                writable: Some(n),
            };
            A.post(job);
            let got = A.wait().unwrap();
            assert_eq!(got.bytes, (n * crate::mirror::PAGE) as u64);
            assert_eq!(got.already_present, n as u64);
        }
    }
}
