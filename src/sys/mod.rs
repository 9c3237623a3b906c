//! Operating-system readers and small wrappers the migration path needs.
//!
//! # What this module does
//!
//! - [`maps`]: [`classify`] decides from `/proc/self/maps` whether a range is memory the
//!   runtime can mirror: private, readable-and-writable, anonymous pages (what `malloc`, `Vec`
//!   and thread stacks give), and why not otherwise ([`MemoryReason`]);
//!   [`stack_vma_of_current_thread`] finds the calling thread's stack mapping: launch
//!   arguments that live there are copied in and out, never migrated. [`Maps`] is one read of
//!   the file for the several questions a launch asks.
//! - [`pagemap`]: [`Pagemap`] reads `/proc/self/pagemap` to tell which pages were never
//!   touched (they read as zero and need no copy) without faulting anything in.
//! - [`mm`]: [`page_size`], [`mmap_anon`], [`munmap`], [`madvise_dontneed`], [`mprotect`],
//!   [`is_mapped`], [`gettid`] wrap `rustix` and `libc`.
//! - [`guarded`]: copies of program memory that survive an unmap, and the chained signal
//!   actions they are built on.
//!
//! # What it may touch
//!
//! Only ranges its callers name. The readers read `/proc`; the wrappers act on the range they
//! are given, and the ones that can break other code (unmapping, dropping or protecting
//! pages) are `unsafe fn`s whose `# Safety` sections say what the caller must own.
//!
//! # Invariants
//!
//! - Reading `/proc/self/maps` allocates: [`classify`] and [`stack_vma_of_current_thread`]
//!   are for launchers, never for the fault handler.
//! - [`Pagemap::query`] does not allocate: the handler may use it.
//! - Nothing here panics on odd `/proc` text: unparsable lines are skipped, and a gap is
//!   reported as [`MemoryReason::NotMapped`].
//!
//! [`MemoryReason`]: crate::MemoryReason
//! [`MemoryReason::NotMapped`]: crate::MemoryReason::NotMapped

pub mod guarded;
mod maps;
mod mm;
mod pagemap;
pub(crate) mod slots;
#[cfg(test)]
pub(crate) mod testing;

pub use maps::{Access, Maps};
// The one-shot forms of `Maps::classify` and `Maps::stack_of_current_thread` (one read of
// `/proc/self/maps` each). The launch path reads `Maps` once and asks it everything, so
// today only tests call these.
#[allow(unused_imports, reason = "only tests call them today")]
pub use maps::{classify, stack_vma_of_current_thread};
pub use mm::{
    gettid, is_mapped, madvise_dontfork, madvise_dontneed, mmap_anon, mprotect, munmap, page_size,
    Prot,
};
pub use pagemap::{PageEntry, Pagemap};
