//! Installing a large range in two halves at once: a second thread, the assistant, installs
//! the upper half of a range moved home — a fault-back window, or a run of `prefetch(Host)`,
//! eviction or drop — while the thread that claimed it installs the lower half.
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
//! One job at a time. The thread that resolves faults (the userfaultfd handler, or the
//! `signal` backend's helper) posts one per large window; a launcher moving a large range home
//! (`migrate::to_host`) posts one per large run. Whoever finds the assistant taken installs
//! its whole range itself ([`Assist::try_post`]), so the handler never waits for a launcher's
//! job:
//!
//! ```text
//! poster:    claim the range → try_post(upper half) → install lower half → wait() → release
//! assistant: wait for a job → install it with its own transfer context → hand back the result
//! ```
//!
//! The poster releases no page of the range (and the handler does not leave its busy epoch
//! of the mirror) until [`Assist::wait`] returns, so the extent a job names outlives the job,
//! and each half is released by its own outcome (`fault::resolve::install_window`,
//! `migrate::home::to_host_claimed`): a half that stopped early never makes the other half's
//! installed pages look absent.
//!
//! The assistant follows the handler's rules (docs/architecture.md, "deadlock-free"): it
//! allocates nothing after start-up, takes no lock a launcher holds, and reads device memory
//! only through its own transfer context ([`Owner::assist_transfer`]). The fault service
//! starts it ([`spawn_assistant`]) on machines with two or more CPUs.
//!
//! [`Owner::assist_transfer`]: crate::space::Owner

use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use std::sync::atomic::AtomicBool;

use super::install::{InstallResult, Kind};
use crate::mirror::policy::split_point;
use crate::space::{Counters, Ext};

/// Half a window for the assistant: pages `pages` of `*ext`, claimed by the poster.
pub(crate) struct Job {
    ext: *const Ext,
    pub pages: Range<usize>,
    pub kind: Kind,
}

/// A range installed in one piece or in two halves at once, each with its outcome, lower
/// first; every part is done ([`install_halves`]).
pub(crate) struct Halves {
    pub low: (Range<usize>, InstallResult),
    pub high: Option<(Range<usize>, InstallResult)>,
}

impl Halves {
    /// The parts, lower first.
    pub fn parts(self) -> impl Iterator<Item = (Range<usize>, InstallResult)> {
        std::iter::once(self.low).chain(self.high)
    }
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
    pub fn new(ext: &Ext, pages: Range<usize>, kind: Kind) -> Job {
        Job { ext, pages, kind }
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
    Finished(InstallResult),
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

    /// Hands `job` to the assistant if it is free; false if another thread's job holds it
    /// (the caller then installs everything itself: nobody waits for another poster). After
    /// true, call [`wait`](Self::wait) before releasing any page of the job.
    pub fn try_post(&self, job: Job) -> bool {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if !matches!(*slot, Slot::Empty) {
            return false;
        }
        *slot = Slot::Posted(job);
        self.version.fetch_add(1, Ordering::Release);
        drop(slot);
        self.changed.notify_all();
        true
    }

    /// Waits for the result of the job this thread posted (the slot stays taken until then,
    /// so the result is its own).
    pub fn wait(&self) -> InstallResult {
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
    pub fn run(&self, install: impl Fn(&Job) -> InstallResult) {
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

/// The process's assistant.
static ASSIST: Assist = Assist::new();
/// Whether the assistant runs ([`spawn_assistant`]).
static ASSISTED: AtomicBool = AtomicBool::new(false);
/// Jobs handed to the assistant so far ([`posts`]).
static POSTS: AtomicU64 = AtomicU64::new(0);

/// How many jobs were handed to the assistant so far: a thread that sees the count move
/// across its work knows the assistant took part (and spins for the next job by itself).
pub(crate) fn posts() -> u64 {
    POSTS.load(Ordering::Relaxed)
}

/// Whether the assistant runs, so that runtimes can give it a transfer context (settled
/// before the fault service is handed out).
pub(crate) fn assisted() -> bool {
    ASSISTED.load(Ordering::Acquire)
}

/// Starts the assistant on a thread of its own, serving every job with `install` (which may
/// call [`Job::ext`]); returns whether it runs (without it, every range is installed by the
/// thread that claimed it).
pub(crate) fn spawn_assistant(install: impl Fn(&Job) -> InstallResult + Send + 'static) -> bool {
    let spawned = std::thread::Builder::new()
        .name("vkhmm-assist".into())
        .spawn(move || ASSIST.run(install))
        .is_ok();
    ASSISTED.store(spawned, Ordering::Release);
    spawned
}

/// Installs the claimed `pages` of `ext` as `kind` says: in two halves at once when the
/// range is large enough for `ext`'s policy to split and the assistant is free (the
/// upper half by the assistant, with its own transfer context), else in one piece; the
/// calling thread's part by `install`. Returns once every part is done; the caller
/// releases each part by its own outcome.
pub(crate) fn install_halves(
    ext: &Ext,
    pages: Range<usize>,
    kind: Kind,
    install: impl FnOnce(Range<usize>) -> InstallResult,
) -> Halves {
    let mid = split_point(&ext.device().owner.policy, pages.clone())
        .filter(|_| ASSISTED.load(Ordering::Acquire))
        .filter(|_| ext.device().owner.assist_transfer.is_some())
        .filter(|&mid| ASSIST.try_post(Job::new(ext, mid..pages.end, kind)));
    let Some(mid) = mid else {
        return Halves {
            low: (pages.clone(), install(pages)),
            high: None,
        };
    };
    Counters::add(&ext.device().owner.counters.parallel_installs, 1);
    POSTS.fetch_add(1, Ordering::Relaxed);
    let low = install(pages.start..mid);
    Halves {
        low: (pages.start..mid, low),
        high: Some((mid..pages.end, ASSIST.wait())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pages::install::Installed;

    #[test]
    fn slot_states_round_trip_without_a_device() {
        // The mailbox alone: a fake install on a thread, jobs posted and waited in turn.
        static A: Assist = Assist::new();
        std::thread::spawn(|| {
            A.run(|job| {
                let Kind::Fault { writable, .. } = job.kind else {
                    panic!("posted a fault job")
                };
                Ok(Installed {
                    bytes: (job.pages.len() * crate::mirror::PAGE) as u64,
                    zeroed: 0,
                    already_present: writable.map_or(0, |w| w as u64),
                    stop: None,
                })
            })
        });
        for n in 1..50usize {
            // This install never looks at the extent.
            let job = Job {
                ext: std::ptr::null(),
                pages: 0..n,
                kind: Kind::Fault {
                    writable: Some(n),
                    home: false,
                },
            };
            assert!(A.try_post(job));
            // Taken until its result is collected.
            let second = Job {
                ext: std::ptr::null(),
                pages: 0..1,
                kind: Kind::Bulk { protect: false },
            };
            assert!(!A.try_post(second));
            let got = A.wait().unwrap();
            assert_eq!(got.bytes, (n * crate::mirror::PAGE) as u64);
            assert_eq!(got.already_present, n as u64);
        }
    }
}
