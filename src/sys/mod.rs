//! Operating-system readers and small wrappers the migration path needs.
//!
//! # What this room does
//!
//! - [`classify`] decides from `/proc/self/maps` whether a range is memory the runtime can
//!   mirror: private, readable-and-writable, anonymous pages (what `malloc`, `Vec` and thread
//!   stacks give), and why not otherwise ([`MemoryReason`]).
//! - [`stack_vma_of_current_thread`] finds the calling thread's stack mapping: launch
//!   arguments that live there are copied in and out, never migrated.
//! - [`Pagemap`] reads `/proc/self/pagemap` to tell which pages were never touched (they read
//!   as zero and need no copy) without faulting anything in.
//! - [`page_size`], [`mmap_anon`], [`munmap`], [`madvise_dontneed`], [`mprotect`], [`gettid`]
//!   wrap `rustix`.
//!
//! # Invariants
//!
//! - `/proc/self/maps` is read into a `String` (it allocates): [`classify`] and
//!   [`stack_vma_of_current_thread`] are for launchers, never for the fault handler. The
//!   snapshot may be stale as soon as it is read; callers that need a stable answer register
//!   the range with userfaultfd (which pins nothing but reports later `UNMAP`/`REMOVE`).
//! - [`Pagemap::query`] does not allocate: the handler may use it.
//! - Nothing here panics on odd `/proc` text: unparsable lines are skipped, and a gap is
//!   reported as [`MemoryReason::NotMapped`].

// Several helpers are for the fault service and migration path, which land after this room.
#![allow(dead_code)]

pub mod guarded;
pub(crate) mod slots;

use std::io;
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;

use crate::error::MemoryReason;

// ---------------------------------------------------------------------------- small wrappers

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

// ---------------------------------------------------------------------------- /proc/self/maps

/// One line of `/proc/self/maps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Vma<'a> {
    start: usize,
    end: usize,
    /// `rwxp` / `rw-s` ...
    perms: [u8; 4],
    /// `(major, minor)` of the backing device.
    dev: (u32, u32),
    inode: u64,
    /// The path or pseudo-name (`[heap]`, `[anon:name]`); empty for anonymous memory. May
    /// contain spaces and end in ` (deleted)`.
    name: &'a str,
}

impl Vma<'_> {
    fn readable(&self) -> bool {
        self.perms[0] == b'r'
    }
    fn writable(&self) -> bool {
        self.perms[1] == b'w'
    }
    fn shared(&self) -> bool {
        self.perms[3] == b's'
    }

    /// Anonymous memory by name: none, the heap, a stack, or an `[anon:…]` name given with
    /// `PR_SET_VMA_ANON_NAME`.
    fn anonymous_name(&self) -> bool {
        let n = self.name;
        n.is_empty()
            || n == "[heap]"
            || n == "[stack]"
            || (n.starts_with("[stack:") && n.ends_with(']'))
            || (n.starts_with("[anon:") && n.ends_with(']'))
    }

    /// A kernel pseudo-mapping such as `[vdso]`, `[vvar]`, `[vsyscall]`, `[uprobes]`.
    fn special(&self) -> bool {
        !self.anonymous_name() && self.name.starts_with('[')
    }

    /// Why this mapping cannot be mirrored, if it cannot. `hugetlbfs_dev` tells whether a
    /// device number is a hugetlbfs mount.
    fn reason(&self, hugetlbfs_dev: &mut dyn FnMut((u32, u32)) -> bool) -> Option<MemoryReason> {
        let file = !self.anonymous_name() && !self.special();
        if self.name.starts_with("/anon_hugepage") || (file && hugetlbfs_dev(self.dev)) {
            return Some(MemoryReason::HugeTlb);
        }
        if self.shared() {
            return Some(MemoryReason::Shared);
        }
        if file {
            return Some(MemoryReason::FileBacked);
        }
        if !self.readable() || !self.writable() {
            return Some(MemoryReason::Protection);
        }
        if self.special() {
            return Some(MemoryReason::Backend("it is a special kernel mapping"));
        }
        None
    }
}

/// Takes the next space-separated field off the front of `s`.
fn field<'a>(s: &mut &'a str) -> Option<&'a str> {
    let t = s.trim_start_matches(' ');
    if t.is_empty() {
        return None;
    }
    let end = t.find(' ').unwrap_or(t.len());
    let (f, rest) = t.split_at(end);
    *s = rest;
    Some(f)
}

/// Parses one line of `/proc/<pid>/maps`:
/// `start-end perms offset major:minor inode [name]`. Names keep inner spaces.
fn parse_maps_line(line: &str) -> Option<Vma<'_>> {
    let mut s = line;
    let (start, end) = field(&mut s)?.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms: [u8; 4] = field(&mut s)?.as_bytes().try_into().ok()?;
    let _offset = field(&mut s)?;
    let (major, minor) = field(&mut s)?.split_once(':')?;
    let dev = (
        u32::from_str_radix(major, 16).ok()?,
        u32::from_str_radix(minor, 16).ok()?,
    );
    let inode = field(&mut s)?.parse().ok()?;
    // The name is padded to a column with spaces; everything after the padding is the name.
    let name = s.trim_start_matches(' ');
    (start < end).then_some(Vma {
        start,
        end,
        perms,
        dev,
        inode,
        name,
    })
}

fn vmas(maps: &str) -> impl Iterator<Item = Vma<'_>> {
    maps.lines().filter_map(parse_maps_line)
}

/// The `(major, minor)` device numbers of the hugetlbfs mounts in `/proc/self/mountinfo`.
fn hugetlbfs_devs(mountinfo: &str) -> Vec<(u32, u32)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // `id parent major:minor root mountpoint opts [optional...] - fstype source sopts`
            let (head, tail) = line.split_once(" - ")?;
            let fstype = tail.split(' ').next()?;
            if fstype != "hugetlbfs" {
                return None;
            }
            let (major, minor) = head.split(' ').nth(2)?.split_once(':')?;
            Some((major.parse().ok()?, minor.parse().ok()?))
        })
        .collect()
}

/// The check behind [`classify`], on given `maps` text; `hugetlbfs_dev` is asked only about
/// file-backed mappings.
fn classify_in(
    maps: &str,
    addr: usize,
    len: usize,
    hugetlbfs_dev: &mut dyn FnMut((u32, u32)) -> bool,
) -> Result<(), MemoryReason> {
    if len == 0 {
        return Ok(());
    }
    let end = addr.checked_add(len).ok_or(MemoryReason::NotMapped)?;
    let mut cursor = addr;
    // Lines come in address order; walk them, requiring each byte from `cursor` on to be
    // covered by a mirrorable mapping.
    for vma in vmas(maps) {
        if vma.end <= cursor {
            continue;
        }
        if vma.start > cursor {
            return Err(MemoryReason::NotMapped);
        }
        if let Some(reason) = vma.reason(hugetlbfs_dev) {
            return Err(reason);
        }
        cursor = vma.end;
        if cursor >= end {
            return Ok(());
        }
    }
    Err(MemoryReason::NotMapped)
}

/// Checks that every byte of `[addr, addr + len)` lies in private, readable and writable,
/// anonymous mappings (no file; the heap, stacks and `[anon:…]` names count as anonymous).
/// An empty range is fine.
///
/// The first offending mapping in address order decides the reason: hugetlbfs pages
/// ([`MemoryReason::HugeTlb`]), `MAP_SHARED` ([`MemoryReason::Shared`]), a file
/// ([`MemoryReason::FileBacked`]), missing read or write permission
/// ([`MemoryReason::Protection`]), a gap ([`MemoryReason::NotMapped`]). Reads `/proc/self/maps`
/// (allocates; not for the fault handler).
pub fn classify(addr: usize, len: usize) -> Result<(), MemoryReason> {
    Maps::read()?.classify(addr, len)
}

/// One read of `/proc/self/maps`, for the several questions a launch asks of it (one read
/// costs ~0.2 ms with a few hundred mappings: read it once per launch, not once per binding).
pub struct Maps(String);

impl Maps {
    /// Reads `/proc/self/maps` (allocates; not for the fault handler).
    pub fn read() -> Result<Maps, MemoryReason> {
        std::fs::read_to_string("/proc/self/maps")
            .map(Maps)
            .map_err(|_| MemoryReason::Backend("/proc/self/maps cannot be read"))
    }

    /// [`classify`] against this snapshot.
    pub fn classify(&self, addr: usize, len: usize) -> Result<(), MemoryReason> {
        if len == 0 {
            return Ok(());
        }
        let mut devs: Option<Vec<(u32, u32)>> = None;
        let mut hugetlbfs_dev = |dev: (u32, u32)| {
            devs.get_or_insert_with(|| {
                std::fs::read_to_string("/proc/self/mountinfo")
                    .map(|m| hugetlbfs_devs(&m))
                    .unwrap_or_default()
            })
            .contains(&dev)
        };
        classify_in(&self.0, addr, len, &mut hugetlbfs_dev)
    }

    /// The mapping holding `addr`.
    pub fn vma_containing(&self, addr: usize) -> Option<Range<usize>> {
        vmas(&self.0)
            .find(|v| v.start <= addr && addr < v.end)
            .map(|v| v.start..v.end)
    }

    /// The calling thread's stack mapping (see [`stack_vma_of_current_thread`]).
    #[inline(never)]
    pub fn stack_of_current_thread(&self) -> Option<Range<usize>> {
        let local = 0u8;
        self.vma_containing(core::hint::black_box(&local) as *const u8 as usize)
    }
}

/// The mapping that contains `addr`, from `/proc/self/maps`.
fn vma_containing(addr: usize) -> Option<Range<usize>> {
    Maps::read().ok()?.vma_containing(addr)
}

/// The calling thread's stack mapping: the mapping that holds a local variable of this call.
/// (`[stack]` on the main thread, an anonymous mapping for other threads; the guard page
/// below it is a separate mapping and not included.) Reads `/proc/self/maps`.
#[inline(never)]
pub fn stack_vma_of_current_thread() -> Option<Range<usize>> {
    let local = 0u8;
    let addr = core::hint::black_box(&local) as *const u8 as usize;
    vma_containing(addr)
}

// ---------------------------------------------------------------------------- pagemap

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
    pub fn file_or_shared(self) -> bool {
        self.0 & (1 << 61) != 0
    }
    /// Bit 57: the PTE is write-protected by userfaultfd.
    pub fn uffd_wp(self) -> bool {
        self.0 & (1 << 57) != 0
    }
    /// Neither present nor swapped: for private anonymous memory, a page that reads as zero.
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

// ---------------------------------------------------------------------------- test helpers

/// Anonymous test mappings shared by the unit tests of this room.
#[cfg(test)]
pub(crate) mod testing {
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
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use rustix::mm::{mmap, mmap_anonymous, MapFlags, ProtFlags};

    use super::testing::{poke, Region};
    use super::*;

    /// A mapping made by a test with its own flags, unmapped on drop.
    struct Mapping {
        ptr: *mut core::ffi::c_void,
        len: usize,
    }

    impl Mapping {
        fn anon(pages: usize, prot: ProtFlags, flags: MapFlags) -> io::Result<Mapping> {
            let len = pages * page_size();
            // SAFETY: a fresh mapping at an address of the kernel's choosing.
            let ptr = unsafe { mmap_anonymous(core::ptr::null_mut(), len, prot, flags) }?;
            Ok(Mapping { ptr, len })
        }
        fn file(fd: impl AsFd, pages: usize, flags: MapFlags) -> Mapping {
            let len = pages * page_size();
            let prot = ProtFlags::READ | ProtFlags::WRITE;
            // SAFETY: a fresh mapping of a file the test created, at a kernel-chosen address.
            let ptr =
                unsafe { mmap(core::ptr::null_mut(), len, prot, flags, fd, 0) }.expect("mmap file");
            Mapping { ptr, len }
        }
        fn addr(&self) -> usize {
            self.ptr as usize
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: the test owns the mapping and holds no reference into it.
            unsafe { rustix::mm::munmap(self.ptr, self.len) }.expect("munmap");
        }
    }

    const RW: ProtFlags = ProtFlags::READ.union(ProtFlags::WRITE);

    #[test]
    fn classify_accepts_anonymous_private_memory() {
        let region = Region::new(4);
        assert_eq!(classify(region.addr(), region.len()), Ok(()));
        assert_eq!(classify(region.addr() + 10, 100), Ok(()));
        // Large and small `Vec`s: malloc's own mmap and the heap or an arena.
        let big = vec![1u8; 4 << 20];
        assert_eq!(classify(big.as_ptr() as usize, big.len()), Ok(()));
        let small = Box::new([1u32; 16]);
        assert_eq!(classify(small.as_ptr() as usize, 64), Ok(()));
        // An empty range is fine wherever it is.
        assert_eq!(classify(0, 0), Ok(()));
    }

    #[test]
    fn classify_accepts_a_range_over_two_adjacent_mappings() {
        let region = Region::new(2);
        // Different flags keep the two halves from merging into one mapping.
        // SAFETY: the test owns the page; MADV_DONTFORK changes no contents.
        unsafe {
            rustix::mm::madvise(
                region.addr() as *mut _,
                page_size(),
                rustix::mm::Advice::LinuxDontFork,
            )
        }
        .unwrap();
        let first = vma_containing(region.page(0)).unwrap();
        let second = vma_containing(region.page(1)).unwrap();
        assert_ne!(first, second, "the halves are separate mappings");
        assert_eq!(first.end, second.start);
        assert_eq!(classify(region.page(0) + 100, page_size()), Ok(()));
    }

    #[test]
    fn classify_rejects_file_backed_memory() {
        let fd =
            rustix::fs::memfd_create("vkhmm classify", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 2 * page_size() as u64).unwrap();
        let private = Mapping::file(&fd, 2, MapFlags::PRIVATE);
        assert_eq!(
            classify(private.addr(), private.len),
            Err(MemoryReason::FileBacked)
        );

        // A real file whose path has spaces and parentheses.
        let path =
            std::env::temp_dir().join(format!("vkhmm classify ({}) test.bin", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(page_size() as u64).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mapped = Mapping::file(&file, 1, MapFlags::PRIVATE);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(classify(mapped.addr(), 1), Err(MemoryReason::FileBacked));
        // The program's own code and read-only data.
        let code = classify_accepts_anonymous_private_memory as fn() as usize;
        assert_eq!(classify(code, 1), Err(MemoryReason::FileBacked));
    }

    #[test]
    fn classify_rejects_shared_memory() {
        let shared = Mapping::anon(2, RW, MapFlags::SHARED).unwrap();
        assert_eq!(
            classify(shared.addr(), shared.len),
            Err(MemoryReason::Shared)
        );
        let fd = rustix::fs::memfd_create("vkhmm shared", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, page_size() as u64).unwrap();
        let shared_file = Mapping::file(&fd, 1, MapFlags::SHARED);
        assert_eq!(classify(shared_file.addr(), 1), Err(MemoryReason::Shared));
    }

    #[test]
    fn classify_rejects_memory_that_is_not_read_write() {
        let read_only = Mapping::anon(1, ProtFlags::READ, MapFlags::PRIVATE).unwrap();
        assert_eq!(classify(read_only.addr(), 1), Err(MemoryReason::Protection));
        let none = Mapping::anon(1, ProtFlags::empty(), MapFlags::PRIVATE).unwrap();
        assert_eq!(
            classify(none.addr(), page_size()),
            Err(MemoryReason::Protection)
        );
    }

    #[test]
    fn classify_rejects_holes() {
        // Below mmap_min_addr nothing is ever mapped.
        assert_eq!(
            classify(page_size(), page_size()),
            Err(MemoryReason::NotMapped)
        );
        assert_eq!(classify(usize::MAX - 10, 100), Err(MemoryReason::NotMapped));
        // A hole punched in the middle of a mapping. Another test's mmap may land in it
        // between the munmap and the check: then try again.
        for _ in 0..5 {
            let region = Region::new(3);
            // SAFETY: the test owns the mapping and holds no reference into it.
            unsafe {
                munmap(
                    NonNull::new(region.page(1) as *mut u8).unwrap(),
                    page_size(),
                )
            }
            .unwrap();
            let whole = classify(region.addr(), region.len());
            let middle = classify(region.page(1) + 1, 1);
            let refilled = vma_containing(region.page(1)).is_some();
            // SAFETY: the remaining two pages are the test's.
            unsafe {
                munmap(
                    NonNull::new(region.page(0) as *mut u8).unwrap(),
                    page_size(),
                )
                .unwrap();
                munmap(
                    NonNull::new(region.page(2) as *mut u8).unwrap(),
                    page_size(),
                )
                .unwrap();
            }
            region.forget();
            if !refilled {
                assert_eq!(whole, Err(MemoryReason::NotMapped));
                assert_eq!(middle, Err(MemoryReason::NotMapped));
                return;
            }
        }
        panic!("the hole was refilled every time");
    }

    #[test]
    fn classify_rejects_hugetlb_pages_if_the_kernel_gives_any() {
        match Mapping::anon(512, RW, MapFlags::PRIVATE | MapFlags::HUGETLB) {
            Ok(huge) => assert_eq!(classify(huge.addr(), huge.len), Err(MemoryReason::HugeTlb)),
            Err(e) => eprintln!(
                "skipped the real mapping: MAP_HUGETLB failed ({e}); no huge pages reserved"
            ),
        }
        // The same decision on recorded maps text.
        let maps = "7f0000000000-7f0000200000 rw-p 00000000 00:0f 1234 /anon_hugepage (deleted)\n";
        assert_eq!(
            classify_in(maps, 0x7f00_0000_0000, 4096, &mut |_| false),
            Err(MemoryReason::HugeTlb)
        );
        let maps = "7f0000000000-7f0000200000 rw-p 00000000 00:2a 77 /dev/hugepages/buf\n";
        let mut is_huge = |dev| dev == (0, 0x2a);
        assert_eq!(
            classify_in(maps, 0x7f00_0000_0000, 4096, &mut is_huge),
            Err(MemoryReason::HugeTlb)
        );
    }

    #[test]
    fn maps_lines_parse_with_odd_names() {
        let v = parse_maps_line(
            "55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0                          [heap]",
        )
        .unwrap();
        assert_eq!(
            (v.start, v.end, &v.perms, v.name),
            (0x55d0_c0a0_0000, 0x55d0_c0a2_1000, b"rw-p", "[heap]")
        );
        let v =
            parse_maps_line("7f00-8f00 r--p 0001a000 fd:01 393219    /tmp/a b  (c).so (deleted)")
                .unwrap();
        assert_eq!(
            (v.dev, v.inode, v.name),
            ((0xfd, 1), 393_219, "/tmp/a b  (c).so (deleted)")
        );
        let v = parse_maps_line("7f00-8f00 rw-p 00000000 00:00 0 ").unwrap();
        assert_eq!(v.name, "");
        assert!(parse_maps_line("").is_none());
        assert!(parse_maps_line("zz-10 rw-p 0 00:00 0").is_none());
        assert!(
            parse_maps_line("10-10 rw-p 0 00:00 0").is_none(),
            "empty mapping"
        );
    }

    #[test]
    fn classify_in_walks_recorded_maps() {
        let maps = "\
1000-3000 rw-p 00000000 00:00 0
3000-4000 rw-p 00000000 00:00 0 [anon:vkhmm pool]
4000-5000 rw-p 00000000 00:00 0 [stack]
6000-7000 rw-s 00000000 00:01 5 /dev/zero (deleted)
7000-8000 r-xp 00000000 00:00 0 [vdso]
8000-9000 rw-p 00000000 00:00 0 [vvar_weird]
not a maps line
9000-a000 rw-p 00000000 fd:00 12 /var/lib/some file
";
        let mut no = |_| false;
        assert_eq!(classify_in(maps, 0x1000, 0x4000, &mut no), Ok(()));
        assert_eq!(classify_in(maps, 0x2fff, 2, &mut no), Ok(()));
        assert_eq!(
            classify_in(maps, 0x4000, 0x1001, &mut no),
            Err(MemoryReason::NotMapped)
        );
        assert_eq!(
            classify_in(maps, 0x6000, 1, &mut no),
            Err(MemoryReason::Shared)
        );
        assert_eq!(
            classify_in(maps, 0x7000, 1, &mut no),
            Err(MemoryReason::Protection)
        );
        assert!(matches!(
            classify_in(maps, 0x8000, 1, &mut no),
            Err(MemoryReason::Backend(_))
        ));
        assert_eq!(
            classify_in(maps, 0x9000, 1, &mut no),
            Err(MemoryReason::FileBacked)
        );
        assert_eq!(
            classify_in(maps, 0xa000, 1, &mut no),
            Err(MemoryReason::NotMapped)
        );
        assert_eq!(
            classify_in(maps, 0x500, 0x1000, &mut no),
            Err(MemoryReason::NotMapped)
        );
        assert_eq!(
            classify_in(maps, usize::MAX, 2, &mut no),
            Err(MemoryReason::NotMapped)
        );
        assert_eq!(classify_in(maps, 0xdead_0000, 0, &mut no), Ok(()));
    }

    #[test]
    fn hugetlbfs_mounts_are_found_in_mountinfo() {
        let mountinfo = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
35 22 0:31 / /dev/hugepages rw,relatime shared:17 - hugetlbfs hugetlbfs rw,pagesize=2M
36 22 0:32 / /mnt/huge\\040pages rw - hugetlbfs none rw,pagesize=1024M
";
        assert_eq!(hugetlbfs_devs(mountinfo), [(0, 31), (0, 32)]);
    }

    #[test]
    fn the_stack_mapping_holds_a_local_on_any_thread() {
        fn check() {
            let local = 7u64;
            let addr = core::hint::black_box(&local) as *const u64 as usize;
            let stack = stack_vma_of_current_thread().expect("a stack mapping");
            assert!(stack.contains(&addr), "{stack:x?} does not hold {addr:#x}");
            assert_eq!(classify(stack.start, stack.end - stack.start), Ok(()));
        }
        check();
        std::thread::spawn(check).join().unwrap();
        std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(check)
            .unwrap()
            .join()
            .unwrap();
    }

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
