//! Thin wrappers over the memory-management system calls the runtime makes.
//!
//! Each function is one system call (or one loop of them, for [`is_mapped`]) through `rustix`
//! or `libc`, with the error turned into `io::Error`. Nothing here decides anything: callers
//! say which range and why, and the `unsafe fn`s' `# Safety` sections say what the caller must
//! own before its memory is unmapped, dropped or made to fault.
//!
//! # Invariants
//!
//! - Nothing here allocates except [`is_mapped`] (a byte per page of the range, so it is for
//!   launchers only): the others are one system call each, and [`mprotect`] is
//!   async-signal-safe, for the `signal` backend.
//! - [`madvise_dontneed`] on a range registered with userfaultfd blocks until the fault
//!   handler reads the `REMOVE` message: the handler thread never calls it.

use std::io;
use std::ptr::NonNull;

/// The base page size (4 KiB on x86-64).
pub fn page_size() -> usize {
    rustix::param::page_size()
}

/// The calling thread's kernel id (as the userfaultfd `THREAD_ID` feature reports it).
pub fn gettid() -> u32 {
    rustix::thread::gettid()
        .as_raw_nonzero()
        .get()
        .unsigned_abs()
}

/// Maps `len` bytes (rounded up to pages) of private, anonymous, read-write memory. The
/// pages read as zero and are not populated until touched.
pub fn mmap_anon(len: usize) -> io::Result<NonNull<u8>> {
    use rustix::mm::{mmap_anonymous, MapFlags, ProtFlags};
    // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing (no
    // MAP_FIXED) cannot alias any existing object.
    let ptr = unsafe {
        mmap_anonymous(
            core::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE,
        )
    }?;
    NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::from(io::ErrorKind::AddrNotAvailable))
}

/// Unmaps `[ptr, ptr + len)`.
///
/// # Safety
///
/// The range must be a mapping (or part of one) that the caller owns, with no live Rust
/// reference into it; after the call any access to it is undefined behaviour (and the
/// addresses may be reused by the next `mmap`).
pub unsafe fn munmap(ptr: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: the caller owns the mapping and holds no reference into it.
    unsafe { rustix::mm::munmap(ptr.as_ptr().cast(), len) }?;
    Ok(())
}

/// Page protection for [`mprotect`]: what the `signal` fault backend gives each page state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prot {
    /// `PROT_NONE`: every access faults (`Device` pages).
    None,
    /// `PROT_READ`: writes fault (`Shared` pages).
    Read,
    /// `PROT_READ | PROT_WRITE`: nothing faults (`Host` pages).
    ReadWrite,
}

/// `mprotect(addr, len, prot)` on page-aligned `[addr, addr + len)`. Allocates nothing and is
/// async-signal-safe (one raw syscall).
///
/// # Safety
///
/// The caller must own the range. Lowering the protection makes later accesses fault: the
/// range must be one whose faults a handler resolves (the `signal` backend's managed
/// memory), or nobody may access it meanwhile.
pub unsafe fn mprotect(addr: usize, len: usize, prot: Prot) -> io::Result<()> {
    use rustix::mm::MprotectFlags as F;
    let flags = match prot {
        Prot::None => F::empty(),
        Prot::Read => F::READ,
        Prot::ReadWrite => F::READ | F::WRITE,
    };
    // SAFETY: the caller owns the range and has arranged for faults in it to be served.
    unsafe { rustix::mm::mprotect(addr as *mut core::ffi::c_void, len, flags) }?;
    Ok(())
}

/// `madvise(MADV_DONTNEED)`: drops the pages of `[addr, addr + len)` (page-aligned). The
/// next access of a private anonymous page reads zero — or, in a range registered with
/// userfaultfd for MISSING faults, raises a fault the handler resolves.
///
/// # Safety
///
/// This discards memory contents. The caller must own the range and must either have saved
/// what it holds (the runtime: a valid device copy) or not care; no Rust reference to the
/// range may be used to read the old contents afterwards. In a range registered with
/// userfaultfd (with `EVENT_REMOVE`), the call blocks until the handler has read the
/// `REMOVE` message: never call it on the handler thread.
pub unsafe fn madvise_dontneed(addr: usize, len: usize) -> io::Result<()> {
    // SAFETY: the caller owns the range and accepts that its contents are discarded.
    unsafe {
        rustix::mm::madvise(
            addr as *mut core::ffi::c_void,
            len,
            rustix::mm::Advice::LinuxDontNeed,
        )
    }?;
    Ok(())
}

/// `madvise(MADV_DONTFORK)`: a forked child does not inherit `[addr, addr + len)`.
///
/// # Safety
///
/// The caller owns the range, and nothing a child runs touches it.
pub unsafe fn madvise_dontfork(addr: usize, len: usize) -> io::Result<()> {
    // SAFETY: only what a child inherits changes; the caller owns the range.
    unsafe {
        rustix::mm::madvise(
            addr as *mut core::ffi::c_void,
            len,
            rustix::mm::Advice::LinuxDontFork,
        )
    }?;
    Ok(())
}

/// Whether every page of `[addr, addr + len)` (page-aligned) is mapped right now: `mincore`,
/// which fails with `ENOMEM` on a hole and faults nothing in. Allocates a byte per page (in
/// pieces of at most 64 MiB).
pub fn is_mapped(addr: usize, len: usize) -> io::Result<bool> {
    const PIECE: usize = 64 << 20;
    let mut vec = vec![0u8; len.min(PIECE).div_ceil(page_size())];
    let mut at = addr;
    while at < addr + len {
        let n = (addr + len - at).min(PIECE);
        // SAFETY: `vec` has a byte for each page of `[at, at + n)`; mincore only writes them.
        let r = unsafe { libc::mincore(at as *mut libc::c_void, n, vec.as_mut_ptr()) };
        if r != 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOMEM) => Ok(false),
                _ => Err(e),
            };
        }
        at += n;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::classify;

    #[test]
    fn small_wrappers_work() {
        assert_eq!(page_size(), 4096);
        assert_eq!(
            gettid(),
            rustix::thread::gettid().as_raw_nonzero().get() as u32
        );
        assert_ne!(gettid(), std::thread::spawn(gettid).join().unwrap());
        let ptr = mmap_anon(1).unwrap();
        assert_eq!(ptr.as_ptr() as usize % page_size(), 0);
        assert_eq!(classify(ptr.as_ptr() as usize, page_size()), Ok(()));
        // SAFETY: the mapping was just made and nothing refers into it.
        unsafe { munmap(ptr, page_size()) }.unwrap();
        assert!(mmap_anon(0).is_err());
    }
}
