//! Anonymous test mappings and volatile byte access, shared by the unit tests of `sys` and
//! of the fault service.

use std::ptr::NonNull;

/// A private anonymous read-write mapping of whole pages, unmapped on drop.
///
/// When the test is panicking it is leaked instead: a thread that was blocked in a fault
/// on it may still be finishing its access (closing the uffd wakes it).
///
/// Declare it *before* a `Uffd` that registers it, so that the `Uffd` is dropped first:
/// unmapping a registered range blocks until its `UNMAP` message is read.
#[derive(Debug)]
pub(crate) struct Region {
    ptr: NonNull<u8>,
    pages: usize,
}

impl Region {
    pub(crate) fn new(pages: usize) -> Region {
        let ptr = super::mmap_anon(pages * super::page_size()).expect("mmap");
        Region { ptr, pages }
    }
    pub(crate) fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }
    pub(crate) fn len(&self) -> usize {
        self.pages * super::page_size()
    }
    /// Address of page `i`.
    pub(crate) fn page(&self, i: usize) -> usize {
        assert!(i < self.pages);
        self.addr() + i * super::page_size()
    }
    /// Forgets the mapping (someone else unmapped or moved it).
    pub(crate) fn forget(self) {
        std::mem::forget(self);
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        // SAFETY: the test owns the mapping; no reference into it outlives the test.
        unsafe { super::munmap(self.ptr, self.len()) }.expect("munmap");
    }
}

/// Reads one byte with a volatile load.
pub(crate) fn peek(addr: usize) -> u8 {
    // SAFETY: tests only pass addresses inside their own live mappings.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

/// Writes one byte with a volatile store.
pub(crate) fn poke(addr: usize, value: u8) {
    // SAFETY: tests only pass addresses inside their own live, writable mappings.
    unsafe { core::ptr::write_volatile(addr as *mut u8, value) }
}
