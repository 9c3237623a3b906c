//! Asynchronous launches: [`Runtime::scope`], [`Scope::launch_async`], [`Pending`].
//!
//! A launch that returns before its kernel ends must keep its arguments borrowed until the
//! results are copied back: a written binding's edge bytes (pages shared with other data)
//! and bindings on the stack are written to host memory when the launch is settled. A guard
//! alone cannot promise that — `mem::forget` ends a borrow without running `Drop` — so the
//! guarantee comes from a scope, as with `std::thread::scope`: arguments must outlive the
//! scope, and the scope settles every launch it started before it returns, also when its
//! closure panics. [`Pending::wait`] settles one launch early and reports its error.
//!
//! Launches run in order on the runtime's one queue, one at a time: submitting the next
//! launch (or any other call that moves pages) settles the one in flight first, and a
//! helper thread settles it as soon as its kernel ends. Meanwhile the CPU works freely on
//! everything else; a touch (from another thread, through a raw pointer: the launching
//! thread's borrows forbid it) of a page the kernel writes waits until then.

use std::cell::RefCell;
use std::marker::PhantomData;

use crate::{Kernel, KernelArgs, Result, Runtime};

/// Launches that may still run; made by [`Runtime::scope`].
#[derive(Debug)]
pub struct Scope<'env> {
    rt: &'env Runtime,
    tickets: RefCell<Vec<u64>>,
    /// Invariant in `'env`, so that arguments cannot be shortened to the closure's lifetime.
    _env: PhantomData<&'env mut &'env ()>,
}

/// One launch started by [`Scope::launch_async`].
#[must_use = "a pending launch is settled at the latest when its scope ends; `wait` reports its error"]
#[derive(Debug)]
pub struct Pending<'s, 'env> {
    scope: &'s Scope<'env>,
    ticket: u64,
}

impl Runtime {
    /// Runs `f` with a [`Scope`] for asynchronous launches, then waits for every launch it
    /// started and returns `f`'s value, or the first error of a launch nobody waited for.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), vkhmm::Error> {
    /// # let rt = vkhmm::Runtime::new()?;
    /// # let k = rt.kernel_wgsl(vkhmm::shaders::ADD_K_WGSL, "main")?;
    /// let mut gpu_part = vec![1u32; 1 << 20];
    /// let mut cpu_part = vec![1u32; 1 << 20];
    /// let push = [gpu_part.len() as u32, 1]; // arguments outlive the scope
    /// rt.scope(|s| -> Result<(), vkhmm::Error> {
    ///     let pending = s.launch_async(&k, [1024, 1, 1], (&mut gpu_part, vkhmm::Push(&push)))?;
    ///     cpu_part.iter_mut().for_each(|x| *x *= 3); // runs while the kernel does
    ///     pending.wait()
    /// })??;
    /// assert_eq!((gpu_part[0], cpu_part[0]), (2, 3));
    /// # Ok(()) }
    /// ```
    pub fn scope<'env, R>(&'env self, f: impl for<'s> FnOnce(&'s Scope<'env>) -> R) -> Result<R> {
        let scope = Scope {
            rt: self,
            tickets: RefCell::new(Vec::new()),
            _env: PhantomData,
        };
        let value = f(&scope);
        scope.settle_all().map(|()| value)
    }
}

impl<'env> Scope<'env> {
    /// Starts `kernel` like [`Runtime::launch`] and returns without waiting for it. The
    /// arguments stay borrowed until the scope ends.
    ///
    /// # Errors
    ///
    /// As for [`Runtime::launch`], for everything checked before the kernel is submitted;
    /// errors while it runs come from [`Pending::wait`] or the end of the scope.
    #[track_caller]
    pub fn launch_async<'s, A: KernelArgs + 'env>(
        &'s self,
        kernel: &Kernel,
        groups: [u32; 3],
        args: A,
    ) -> Result<Pending<'s, 'env>> {
        let ticket = self.rt.submit(kernel, groups, &args)?;
        self.tickets.borrow_mut().push(ticket);
        // Settle as soon as the kernel ends, not when the program next calls in: a thread
        // touching a page the kernel writes waits for exactly that.
        self.rt.settle_in_background();
        // `args` only holds borrows that outlive the scope; the scope settles the launch.
        drop(args);
        Ok(Pending {
            scope: self,
            ticket,
        })
    }

    /// Settles every launch of this scope; the first error nobody has taken.
    fn settle_all(&self) -> Result<()> {
        let tickets = std::mem::take(&mut *self.tickets.borrow_mut());
        let mut first = Ok(());
        for t in tickets {
            let r = self.rt.wait_for(t);
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

impl Drop for Scope<'_> {
    fn drop(&mut self) {
        // Reached with tickets left only when the closure panicked: settle them anyway, so
        // nothing is written back after the borrowed memory is gone.
        if let Err(e) = self.settle_all() {
            tracing::error!(error = %e, "a launch of a panicking scope failed");
        }
    }
}

impl Pending<'_, '_> {
    /// Waits until this launch is settled (its results visible to the CPU) and returns its
    /// error, if it failed.
    pub fn wait(self) -> Result<()> {
        self.scope
            .tickets
            .borrow_mut()
            .retain(|&t| t != self.ticket);
        self.scope.rt.wait_for(self.ticket)
    }
}
