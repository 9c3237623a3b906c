//! Guessing that the CPU rewrites a kernel's input after every launch.
//!
//! A read binding's pages become `Shared` (write-protected) when a launch uploads them, so
//! that the CPU's next write is noticed and the next launch uploads only what changed. A
//! program that rewrites the whole input every step (update the inputs, launch, repeat)
//! pays for that with write-protection faults on every rewrite and gains nothing: every
//! page changes anyway. So an extent counts the pages whose protection the CPU's writes
//! lifted since its last launch (with the windows lifted ahead of a sequential writer, which
//! can count up to four times what a writer that stops early wrote); when a launch finds
//! that at least three quarters of the pages it reads were lifted, it uploads them without
//! write protection and leaves them `Host` (the next launch uploads them again, as it
//! would after the rewrite: lifted pages are uploaded whether they were written or not),
//! and does so for the next [`TRUST`] launches without looking. Then one launch protects
//! them again, to see whether the program still rewrites them. A wrong guess costs one
//! upload of pages that did not change; a right one saves a fault per window of the
//! rewrite.
//!
//! Pure bookkeeping: the launch path asks, the write-protect fault path tells.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// Launches that leave a rewritten input writable before one protects it again.
pub const TRUST: u32 = 8;

/// Per extent: pages lifted since its last launch, and launches of trust left.
#[derive(Debug, Default)]
pub struct RewriteGuess {
    lifted: AtomicUsize,
    left: AtomicU32,
}

impl RewriteGuess {
    /// The CPU's writes lifted the protection of `pages` pages.
    pub fn lifted(&self, pages: usize) {
        self.lifted.fetch_add(pages, Ordering::Relaxed);
    }

    /// A launch reads `pages` pages of the extent (all its read runs there): whether to
    /// upload them without write protection and leave them `Host`. Call once per launch.
    pub fn leave_writable(&self, pages: usize) -> bool {
        let lifted = self.lifted.swap(0, Ordering::Relaxed);
        if pages > 0 && lifted * 4 >= pages * 3 {
            self.left.store(TRUST, Ordering::Relaxed);
        }
        self.left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| l.checked_sub(1))
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewritten_input_is_trusted_for_a_while_then_probed_again() {
        let g = RewriteGuess::default();
        assert!(!g.leave_writable(100), "nothing seen yet");
        g.lifted(80);
        let guesses: Vec<bool> = (0..TRUST + 1).map(|_| g.leave_writable(100)).collect();
        assert!(guesses[..TRUST as usize].iter().all(|&w| w));
        assert!(!guesses[TRUST as usize], "then protected again, to look");
        g.lifted(100);
        assert!(g.leave_writable(100), "still rewritten: trusted again");
    }

    #[test]
    fn scattered_writes_are_no_rewrite() {
        let g = RewriteGuess::default();
        g.lifted(74);
        assert!(!g.leave_writable(100));
        g.lifted(10);
        assert!(!g.leave_writable(100), "counts start again each launch");
        assert!(!g.leave_writable(0));
    }
}
