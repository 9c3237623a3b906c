//! `fork()`: every device-resident page is copied home before the child is made.
//!
//! The child of a `fork()` does not inherit the userfaultfd registration (vkhmm does not ask
//! for `UFFD_FEATURE_EVENT_FORK`), has no fault-handler thread and cannot use the parent's
//! Vulkan objects. A page whose data lives only on the device would read as zero there. So
//! a `pthread_atfork` prepare hook takes the fork gate exclusively — waiting for launches and
//! prefetches in flight, which hold it shared — and brings every `Device` page home as
//! `Shared` (the parent keeps its device copies; under the `signal` backend as `Host`, since
//! a `Shared` page is `PROT_READ` there). The child then sees ordinary memory with
//! the right bytes; a `Runtime` used in the child returns [`Error::ForkedChild`].
//!
//! `posix_spawn` and `vfork`-based process creation (what `std::process::Command` uses where
//! it can) do not run atfork hooks and need none: the child execs at once.
//!
//! [`Error::ForkedChild`]: crate::Error::ForkedChild

use std::sync::{Condvar, Mutex, MutexGuard, Once, PoisonError};

/// Who holds the fork gate: any number of migrating operations, or one `fork()`.
struct GateState {
    migrating: usize,
    forking: bool,
}

/// Held shared by every operation that migrates pages; exclusively around `fork()`. A
/// counter under a mutex rather than an `RwLock`, because the exclusive side is taken in
/// the prepare hook and given back in a different hook.
static GATE: Mutex<GateState> = Mutex::new(GateState {
    migrating: 0,
    forking: false,
});
static GATE_CHANGED: Condvar = Condvar::new();

fn gate() -> MutexGuard<'static, GateState> {
    GATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Keeps `fork()` out while pages move (not reentrant: take it once per public call).
pub(crate) struct ForkHold(());

impl Drop for ForkHold {
    fn drop(&mut self) {
        let mut g = gate();
        g.migrating -= 1;
        if g.migrating == 0 {
            GATE_CHANGED.notify_all();
        }
    }
}

/// Keeps `fork()` out while pages move.
pub(crate) fn hold_off_fork() -> ForkHold {
    let mut g = gate();
    while g.forking {
        g = GATE_CHANGED.wait(g).unwrap_or_else(PoisonError::into_inner);
    }
    g.migrating += 1;
    ForkHold(())
}

extern "C" {
    fn pthread_atfork(
        prepare: Option<unsafe extern "C" fn()>,
        parent: Option<unsafe extern "C" fn()>,
        child: Option<unsafe extern "C" fn()>,
    ) -> i32;
}

/// Registers the hooks once per process.
pub(crate) fn install_atfork_handlers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: the three hooks are `extern "C"` functions that never unwind (each catches
        // panics) and live for the whole program.
        let rc = unsafe { pthread_atfork(Some(prepare), Some(parent), Some(child)) };
        if rc != 0 {
            tracing::error!(
                rc,
                "pthread_atfork failed: fork() children may read zeros for device-resident pages"
            );
        }
    });
}

unsafe extern "C" fn prepare() {
    let mut g = gate();
    while g.forking || g.migrating > 0 {
        g = GATE_CHANGED.wait(g).unwrap_or_else(PoisonError::into_inner);
    }
    g.forking = true;
    drop(g);
    if let Err(e) = std::panic::catch_unwind(bring_everything_home) {
        tracing::error!(
            ?e,
            "bringing device-resident pages home before fork() panicked"
        );
    }
}

unsafe extern "C" fn parent() {
    gate().forking = false;
    GATE_CHANGED.notify_all();
}

unsafe extern "C" fn child() {
    // The child has one thread and its runtimes refuse to work; open the gate for good.
    let mut g = gate();
    g.forking = false;
    g.migrating = 0;
}

fn bring_everything_home() {
    let Some(space) = crate::fault::running() else {
        return;
    };
    space.sync_events();
    // Under the signal backend, `Shared` pages are PROT_READ, and the child (no helper
    // thread) could not serve a write to one: bring everything home as `Host`.
    let keep_device = space.backend.signal().is_none();
    for owner in crate::migrate::owners(space, 0..usize::MAX) {
        if let Err(e) = crate::migrate::bring_home(space, &owner, 0..usize::MAX, keep_device, true)
        {
            tracing::error!(error = %e, "copying device-resident pages home before fork() failed");
        }
    }
}
