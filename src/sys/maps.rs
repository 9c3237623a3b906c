//! `/proc/self/maps`: which mappings hold a range, and whether the runtime can mirror them.
//!
//! A launch asks two questions of the address space before it moves anything: is every byte
//! of each binding in memory the runtime can mirror ([`classify`], [`Maps::classify`]), and
//! does a binding lie on the launching thread's own stack ([`stack_vma_of_current_thread`],
//! [`Maps::stack_of_current_thread`]; such bytes are copied in and out, never migrated).
//! Mirrorable means private, readable-and-writable, anonymous pages: what `malloc`, `Vec` and
//! thread stacks give. Anything else gets the [`MemoryReason`] of the first offending mapping.
//!
//! The text is parsed by [`parse_maps_line`] into borrowed [`Vma`]s (no copy per line), and
//! the decision itself ([`classify_in`]) runs on given text, so the unit tests feed it
//! recorded `/proc` contents as well as the live ones.
//!
//! # Invariants
//!
//! - `/proc/self/maps` is read into a `String` (it allocates): everything here is for
//!   launchers, never for the fault handler. The snapshot may be stale as soon as it is read;
//!   callers that need a stable answer register the range with userfaultfd (which pins
//!   nothing but reports later `UNMAP`/`REMOVE`).
//! - Nothing here panics on odd `/proc` text: unparsable lines are skipped, and a gap is
//!   reported as [`MemoryReason::NotMapped`].

use std::ops::Range;

use crate::error::MemoryReason;

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

/// Walks the mappings that hold `[addr, addr + len)` in address order, calling `each` on
/// each; a gap is [`MemoryReason::NotMapped`], an error of `each` ends the walk with it.
fn walk<'m>(
    maps: &'m str,
    addr: usize,
    len: usize,
    mut each: impl FnMut(&Vma<'m>) -> Result<(), MemoryReason>,
) -> Result<(), MemoryReason> {
    if len == 0 {
        return Ok(());
    }
    let end = addr.checked_add(len).ok_or(MemoryReason::NotMapped)?;
    let mut cursor = addr;
    for vma in vmas(maps) {
        if vma.end <= cursor {
            continue;
        }
        if vma.start > cursor {
            return Err(MemoryReason::NotMapped);
        }
        each(&vma)?;
        cursor = vma.end;
        if cursor >= end {
            return Ok(());
        }
    }
    Err(MemoryReason::NotMapped)
}

/// The check behind [`classify`], on given `maps` text; `hugetlbfs_dev` is asked only about
/// file-backed mappings.
fn classify_in(
    maps: &str,
    addr: usize,
    len: usize,
    hugetlbfs_dev: &mut dyn FnMut((u32, u32)) -> bool,
) -> Result<(), MemoryReason> {
    walk(maps, addr, len, |vma| {
        vma.reason(hugetlbfs_dev).map_or(Ok(()), Err)
    })
}

/// How a launch can use a range of memory ([`Maps::access`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Private, anonymous, readable and writable: mirrored (its pages migrate).
    Mirror,
    /// Memory the device uses through copies: uploaded at each launch and, when a kernel
    /// writes it, written back after the kernel. The reason is the first mapping's that
    /// cannot be mirrored.
    CopyThrough(MemoryReason),
}

/// The check behind [`Maps::access`], on given `maps` text.
fn access_in(
    maps: &str,
    addr: usize,
    len: usize,
    write: bool,
    hugetlbfs_dev: &mut dyn FnMut((u32, u32)) -> bool,
) -> Result<Access, MemoryReason> {
    let mut access = Access::Mirror;
    walk(maps, addr, len, |vma| {
        if !vma.readable() {
            return Err(MemoryReason::Protection);
        }
        if write && !vma.writable() {
            return Err(MemoryReason::ReadOnly);
        }
        if let (Access::Mirror, Some(reason)) = (&access, vma.reason(hugetlbfs_dev)) {
            access = Access::CopyThrough(reason);
        }
        Ok(())
    })?;
    Ok(access)
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
#[allow(dead_code, reason = "only tests call it today")]
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
        classify_in(&self.0, addr, len, &mut self.hugetlbfs_probe())
    }

    /// Whether a device number is a hugetlbfs mount (reads `/proc/self/mountinfo` once, on
    /// the first question).
    fn hugetlbfs_probe(&self) -> impl FnMut((u32, u32)) -> bool {
        let mut devs: Option<Vec<(u32, u32)>> = None;
        move |dev| {
            devs.get_or_insert_with(|| {
                std::fs::read_to_string("/proc/self/mountinfo")
                    .map(|m| hugetlbfs_devs(&m))
                    .unwrap_or_default()
            })
            .contains(&dev)
        }
    }

    /// How a launch can use `[addr, addr + len)`: mirrored, or copied through (and why).
    /// Refused only for what the memory itself forbids: a gap ([`MemoryReason::NotMapped`]),
    /// pages the process cannot read ([`MemoryReason::Protection`]), and, when a kernel
    /// writes the range (`write`), pages it cannot write ([`MemoryReason::ReadOnly`]).
    pub fn access(&self, addr: usize, len: usize, write: bool) -> Result<Access, MemoryReason> {
        access_in(&self.0, addr, len, write, &mut self.hugetlbfs_probe())
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
#[allow(dead_code, reason = "only tests call it today")]
pub fn stack_vma_of_current_thread() -> Option<Range<usize>> {
    let local = 0u8;
    let addr = core::hint::black_box(&local) as *const u8 as usize;
    vma_containing(addr)
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::os::fd::AsFd;
    use std::ptr::NonNull;

    use rustix::mm::{mmap, mmap_anonymous, MapFlags, ProtFlags};

    use super::*;
    use crate::sys::testing::Region;
    use crate::sys::{munmap, page_size};

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
    fn access_in_copies_what_cannot_migrate_and_refuses_what_cannot_be_used() {
        let maps = "\
1000-3000 rw-p 00000000 00:00 0
3000-4000 r--p 00000000 00:00 0
4000-5000 rw-s 00000000 00:01 5 /memfd:x (deleted)
5000-6000 r--s 00000000 fd:00 12 /data/weights.bin
6000-7000 ---p 00000000 00:00 0
8000-9000 rw-p 00000000 fd:00 13 /usr/bin/program
";
        let mut no = |_| false;
        let access = |addr, len, write| access_in(maps, addr, len, write, &mut |_| false);
        assert_eq!(access(0x1000, 0x2000, true), Ok(Access::Mirror));
        assert_eq!(
            access(0x3000, 0x10, false),
            Ok(Access::CopyThrough(MemoryReason::Protection))
        );
        assert_eq!(access(0x3000, 0x10, true), Err(MemoryReason::ReadOnly));
        // The first mapping that cannot migrate names the reason for the whole range.
        assert_eq!(access(0x2000, 0x3000, true), Err(MemoryReason::ReadOnly));
        assert_eq!(
            access(0x2000, 0x3000, false),
            Ok(Access::CopyThrough(MemoryReason::Protection))
        );
        assert_eq!(
            access(0x4000, 0x1000, true),
            Ok(Access::CopyThrough(MemoryReason::Shared))
        );
        assert_eq!(access(0x5000, 0x1000, true), Err(MemoryReason::ReadOnly));
        assert_eq!(
            access(0x5000, 0x1000, false),
            Ok(Access::CopyThrough(MemoryReason::Shared))
        );
        assert_eq!(access(0x6000, 1, false), Err(MemoryReason::Protection));
        assert_eq!(access(0x5000, 0x3000, false), Err(MemoryReason::Protection));
        assert_eq!(access(0x7000, 1, false), Err(MemoryReason::NotMapped));
        assert_eq!(
            access(0x8000, 0x1000, true),
            Ok(Access::CopyThrough(MemoryReason::FileBacked))
        );
        let mut huge = |_| true;
        assert_eq!(
            access_in(maps, 0x8000, 1, false, &mut huge),
            Ok(Access::CopyThrough(MemoryReason::HugeTlb))
        );
        assert_eq!(
            access_in(maps, 0x1000, 0, true, &mut no),
            Ok(Access::Mirror)
        );
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
}
