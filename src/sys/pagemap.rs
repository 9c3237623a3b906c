//! `/proc/self/pagemap`: which pages of a range were ever touched, without touching them.
//!
//! A page of private anonymous memory that is neither present nor swapped reads as zero: the
//! runtime skips copying it and zero-fills the device copy instead, and the fault handler
//! tells a never-touched page from one it must copy back. [`Pagemap`] opens the file once;
//! [`Pagemap::query`] reads the entries of a run of pages into the caller's [`PageEntry`]s.
//!
//! # Invariants
//!
//! - [`Pagemap::query`] does not allocate and faults nothing in: the handler may use it.
//! - An entry is a snapshot: a page may be touched, dropped or swapped right after it is read.
//!   Callers that act on it hold the page (its mirror state `BUSY`) or tolerate the race.

use std::io;
use std::os::fd::OwnedFd;

use super::mm::page_size;

/// One 64-bit entry of `/proc/self/pagemap`.
///
/// For private anonymous memory a page that is neither [present](PageEntry::present) nor
/// [swapped](PageEntry::swapped) has never been touched (or was dropped with
/// `MADV_DONTNEED`) and reads as zero: the runtime skips copying it and zero-fills the
/// device copy instead. A uffd-wp marker on an absent page shows as "swapped" (a non-present
/// swap-format entry), so such a page is conservatively treated as holding data.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct PageEntry(u64);

impl PageEntry {
    /// The raw entry.
    #[cfg(test)]
    pub fn raw(self) -> u64 {
        self.0
    }
    /// Bit 63: the page is in RAM.
    pub fn present(self) -> bool {
        self.0 & (1 << 63) != 0
    }
    /// Bit 62: the page is in swap (or the entry is another non-present swap-format entry:
    /// a migration entry or a uffd-wp marker).
    pub fn swapped(self) -> bool {
        self.0 & (1 << 62) != 0
    }
    /// Bit 61: a file page or shared anonymous page.
    #[cfg(test)]
    pub fn file_or_shared(self) -> bool {
        self.0 & (1 << 61) != 0
    }
    /// Bit 57: the PTE is write-protected by userfaultfd.
    pub fn uffd_wp(self) -> bool {
        self.0 & (1 << 57) != 0
    }
    /// Neither present nor swapped: for private anonymous memory, a page that reads as zero.
    #[cfg(test)]
    pub fn absent(self) -> bool {
        !self.present() && !self.swapped()
    }
}

impl std::fmt::Debug for PageEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PageEntry({:#018x}{}{}{})",
            self.0,
            if self.present() { " present" } else { "" },
            if self.swapped() { " swapped" } else { "" },
            if self.uffd_wp() { " uffd-wp" } else { "" }
        )
    }
}

/// `/proc/self/pagemap`, opened once. Queries read the page tables without faulting
/// anything in.
#[derive(Debug)]
pub struct Pagemap {
    fd: OwnedFd,
}

impl Pagemap {
    /// Opens `/proc/self/pagemap`.
    pub fn open() -> io::Result<Pagemap> {
        use rustix::fs::{open, Mode, OFlags};
        let fd = open(
            "/proc/self/pagemap",
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Pagemap { fd })
    }

    /// Fills `out[i]` with the entry of the page at `first_page_addr + i * page_size()`
    /// (`first_page_addr` is rounded down to its page). One `pread` of 8 bytes per page;
    /// does not allocate.
    pub fn query(&self, first_page_addr: usize, out: &mut [PageEntry]) -> io::Result<()> {
        let page = page_size();
        let mut offset = (first_page_addr / page) as u64 * 8;
        // SAFETY: `PageEntry` is a `repr(transparent)` u64, valid for any bytes; the byte
        // view covers exactly `out` and lives no longer than the exclusive borrow of it.
        let mut bytes = unsafe {
            core::slice::from_raw_parts_mut(
                out.as_mut_ptr().cast::<u8>(),
                core::mem::size_of_val(out),
            )
        };
        while !bytes.is_empty() {
            match rustix::io::pread(&self.fd, &mut *bytes, offset) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    bytes = &mut bytes[n..];
                    offset += n as u64;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::madvise_dontneed;
    use crate::sys::testing::{poke, Region};

    #[test]
    fn pagemap_shows_only_touched_pages() {
        let pagemap = Pagemap::open().unwrap();
        let region = Region::new(4);
        let mut entries = [PageEntry::default(); 4];
        pagemap.query(region.addr(), &mut entries).unwrap();
        assert!(
            entries
                .iter()
                .all(|e| e.absent() && !e.present() && !e.swapped()),
            "{entries:?}"
        );
        poke(region.page(1) + 123, 9);
        pagemap.query(region.addr(), &mut entries).unwrap();
        let present: Vec<bool> = entries.iter().map(|e| e.present()).collect();
        assert_eq!(present, [false, true, false, false]);
        assert!(!entries[1].file_or_shared());
        // SAFETY: the test owns the page and discards its contents on purpose.
        unsafe { madvise_dontneed(region.page(1), page_size()) }.unwrap();
        pagemap.query(region.addr(), &mut entries).unwrap();
        assert!(entries.iter().all(|e| e.absent()), "{entries:?}");
        pagemap.query(region.addr(), &mut []).unwrap();
    }
}
