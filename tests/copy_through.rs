//! Memory that cannot migrate is copied through: file mappings, shared and read-only memory,
//! statics, hugetlbfs pages (and, under the `signal` backend, any memory the runtime did not
//! allocate). A read binding's bytes are uploaded at each launch; a written binding's are
//! copied back before `launch` returns; no page of it is protected, dropped or registered.
//!
//! Each test checks exact patterns on both transfer paths: the kernel sees the bytes as of
//! the launch, the CPU (and other mappings, and other processes) see its results as soon as
//! it returns, nothing else in the mapping changes, and the statistics count the bytes apart
//! from migrated ones.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use common::push::{AddK, Fill, N};
use common::{each_path, groups, kernels, pattern};
use vkhmm::{Push, Residency, Runtime};

const PAGE: usize = 4096;
/// Elements per page.
const EPP: usize = PAGE / 4;

/// A mapping the test made, unmapped on drop.
struct Mapping {
    ptr: *mut u32,
    len: usize,
}

impl Mapping {
    fn new(len: usize, prot: i32, flags: i32, fd: i32) -> Option<Mapping> {
        // SAFETY: a fresh mapping at an address of the kernel's choosing.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) };
        (p != libc::MAP_FAILED).then_some(Mapping { ptr: p.cast(), len })
    }

    fn words(&self) -> &[u32] {
        // SAFETY: `len` readable bytes are mapped at `ptr` while `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len / 4) }
    }

    fn words_mut(&mut self) -> &mut [u32] {
        // SAFETY: as `words`; the callers mapped it writable.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len / 4) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping; no reference into it outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A memfd of `len` bytes.
fn memfd(len: usize) -> OwnedFd {
    // SAFETY: a plain syscall; the name is a valid C string.
    let fd = unsafe { libc::memfd_create(c"vkhmm copy-through test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: `fd` is a new descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a plain syscall on our own descriptor.
    assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), len as i64) }, 0);
    fd
}

/// A shared memfd of `len` bytes and a read-write mapping of it (the descriptor first: keep
/// it while the mapping is used).
fn shared_memfd(len: usize) -> (OwnedFd, Mapping) {
    let fd = memfd(len);
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let m = Mapping::new(len, rw, libc::MAP_SHARED, fd.as_raw_fd()).unwrap();
    (fd, m)
}

/// Element i of `m` becomes `pattern(i, seed)`.
fn fill(m: &mut Mapping, seed: u32) {
    m.words_mut()
        .iter_mut()
        .enumerate()
        .for_each(|(i, x)| *x = pattern(i, seed));
}

/// An unlinked temporary file holding `words`.
fn file_of(words: &[u32]) -> std::fs::File {
    use std::io::Write;
    let path = std::env::temp_dir().join(format!(
        "vkhmm-copy-through-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    f.write_all(bytemuck::cast_slice(words)).unwrap();
    f
}

/// A file holding `words`, mapped read-only with `flags` (the file first: keep it while the
/// mapping is used).
fn read_only_file(words: &[u32], flags: i32) -> (std::fs::File, Mapping) {
    let file = file_of(words);
    let m = Mapping::new(words.len() * 4, libc::PROT_READ, flags, file.as_raw_fd()).unwrap();
    (file, m)
}

/// The kernel's checksum of `src`.
fn checksum(rt: &Runtime, sum: &vkhmm::Kernel, src: &[u32]) -> u32 {
    let mut out = [0u32; 1];
    rt.launch(
        sum,
        groups(src.len(), 256),
        (
            src,
            &mut out[..],
            Push(&N {
                n: src.len() as u32,
            }),
        ),
    )
    .unwrap();
    out[0]
}

fn cpu_sum(src: &[u32]) -> u32 {
    src.iter().fold(0u32, |a, &x| a.wrapping_add(x))
}

/// Every page of `v` is `Host`: nothing of it migrated.
fn all_host(rt: &Runtime, v: &[u32], what: &str) {
    let r = rt.residency(v);
    assert_eq!(
        r,
        Residency {
            host: r.pages(),
            shared: 0,
            device: 0
        },
        "{what}"
    );
}

#[test]
fn a_file_mapped_read_only_is_read_as_of_each_launch() {
    each_path(|rt, path| {
        let k = kernels(rt);
        let n = 64 * EPP;
        let words: Vec<u32> = (0..n).map(|i| pattern(i, 1)).collect();
        let file = file_of(&words);
        for flags in [libc::MAP_PRIVATE, libc::MAP_SHARED] {
            let what = format!("{path:?} flags {flags:#x}");
            let m = Mapping::new(n * 4, libc::PROT_READ, flags, file.as_raw_fd()).unwrap();
            let before = rt.stats();
            assert_eq!(checksum(rt, &k.sum, m.words()), cpu_sum(&words), "{what}");
            let d = rt.stats() - before;
            assert_eq!(d.bytes_to_device, 0, "{what}: {d}");
            assert!(d.copied_to_device >= (n * 4) as u64, "{what}: {d}");
            all_host(rt, m.words(), &what);

            // The file changes through write(2): the next launch sees the new bytes.
            let patch: Vec<u32> = (0..3 * EPP).map(|i| pattern(i, 2)).collect();
            let at = 10 * PAGE + 12;
            use std::os::unix::fs::FileExt;
            file.write_all_at(bytemuck::cast_slice(&patch), at as u64)
                .unwrap();
            let mut now = words.clone();
            now[at / 4..at / 4 + patch.len()].copy_from_slice(&patch);
            assert_eq!(m.words(), &now[..], "{what}: the mapping shows the write");
            assert_eq!(checksum(rt, &k.sum, m.words()), cpu_sum(&now), "{what}");
            // Put the file back for the next mapping.
            file.write_all_at(bytemuck::cast_slice(&words), 0).unwrap();
            // A slice that starts anywhere (no device alignment is needed when copied).
            let s = &m.words()[3..n - 5];
            assert_eq!(checksum(rt, &k.sum, s), cpu_sum(&words[3..n - 5]), "{what}");
        }
    });
}

#[test]
fn read_only_anonymous_memory_is_read_by_kernels() {
    each_path(|rt, path| {
        let k = kernels(rt);
        let n = 16 * EPP;
        let len = n * 4;
        let mut m = Mapping::new(
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
        )
        .unwrap();
        fill(&mut m, 3);
        // SAFETY: our own mapping, `len` bytes.
        let rc = unsafe { libc::mprotect(m.ptr.cast(), len, libc::PROT_READ) };
        assert_eq!(rc, 0);
        let mut out = vec![0u32; n];
        rt.launch(
            &k.copy,
            groups(n, 256),
            (m.words(), &mut out[..], Push(&N { n: n as u32 })),
        )
        .unwrap();
        assert!(
            (0..n).all(|i| out[i] == pattern(i, 3)),
            "{path:?}: the copy"
        );
        all_host(rt, m.words(), &format!("{path:?}"));
    });
}

/// Element i of the statics below.
const fn seed(i: usize) -> u32 {
    (i as u32).wrapping_mul(2_654_435_761).wrapping_add(7)
}

const STATIC_N: usize = 6 * EPP + 3;

const fn table() -> [u32; STATIC_N] {
    let mut t = [0u32; STATIC_N];
    let mut i = 0;
    while i < STATIC_N {
        t[i] = seed(i);
        i += 1;
    }
    t
}

/// Read-only data of the program (`.rodata`, mapped from the executable).
static TABLE: [u32; STATIC_N] = table();
/// Writable data of the program (`.data`: a private mapping of the executable).
static mut DATA: [u32; STATIC_N] = table();

#[test]
fn statics_are_read_and_written_by_kernels() {
    // One test at a time touches `DATA`; both paths run in turn inside this one.
    each_path(|rt, path| {
        let k = kernels(rt);
        assert_eq!(checksum(rt, &k.sum, &TABLE), cpu_sum(&table()), "{path:?}");
        // SAFETY: only this test uses `DATA`, from this thread.
        let data = unsafe { &mut *std::ptr::addr_of_mut!(DATA) };
        let before: Vec<u32> = data.to_vec();
        let n = STATIC_N - 2;
        let before_stats = rt.stats();
        rt.launch(
            &k.add,
            groups(n, 256),
            (&mut data[1..n + 1], Push(&AddK { n: n as u32, k: 5 })),
        )
        .unwrap();
        let d = rt.stats() - before_stats;
        assert_eq!(
            (d.bytes_to_device, d.copied_to_device, d.copied_to_host),
            (0, (n * 4) as u64, (n * 4) as u64),
            "{path:?}: {d}"
        );
        assert_eq!(data[0], before[0], "{path:?}: the element before");
        assert_eq!(data[n + 1], before[n + 1], "{path:?}: the element after");
        assert!(
            (1..=n).all(|i| data[i] == before[i].wrapping_add(5)),
            "{path:?}: the kernel's results"
        );
        all_host(rt, data, &format!("{path:?}"));
    });
}

#[test]
fn a_shared_memfd_written_by_a_kernel_is_seen_by_its_other_mapping_and_a_child() {
    each_path(|rt, path| {
        let k = kernels(rt);
        let n = 32 * EPP;
        let len = n * 4;
        let fd = memfd(len);
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let mut a = Mapping::new(len, rw, libc::MAP_SHARED, fd.as_raw_fd()).unwrap();
        let b = Mapping::new(len, libc::PROT_READ, libc::MAP_SHARED, fd.as_raw_fd()).unwrap();
        fill(&mut a, 4);
        // The kernel writes a middle part only.
        let part = 5 * EPP + 7..20 * EPP + 1;
        let expect = |i: usize| {
            if part.contains(&i) {
                (i - part.start) as u32 * 3 + 1
            } else {
                pattern(i, 4)
            }
        };
        // A child that reads the memfd's pages after the launch, through its own mapping.
        let child = Child::spawn(|| (0..n).all(|i| b.words()[i] == expect(i)));
        let len_part = part.len();
        rt.launch(
            &k.fill,
            groups(len_part, 256),
            (
                &mut a.words_mut()[part.clone()],
                Push(&Fill {
                    n: len_part as u32,
                    mul: 3,
                    add: 1,
                }),
            ),
        )
        .unwrap();
        assert!(
            (0..n).all(|i| b.words()[i] == expect(i)),
            "{path:?}: the second mapping"
        );
        assert!(child.go(), "{path:?}: the child saw other bytes");
        all_host(rt, a.words(), &format!("{path:?}"));
    });
}

#[test]
fn shared_anonymous_memory_written_by_a_kernel_is_seen_by_a_child() {
    each_path(|rt, path| {
        let k = kernels(rt);
        let n = 8 * EPP;
        let mut a = Mapping::new(
            n * 4,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
        )
        .unwrap();
        fill(&mut a, 6);
        let view = a.ptr as usize;
        let child = Child::spawn(move || {
            // SAFETY: the child inherited the shared mapping at the same address.
            let w = unsafe { std::slice::from_raw_parts(view as *const u32, n) };
            (0..n).all(|i| w[i] == pattern(i, 6).wrapping_add(9))
        });
        rt.launch(
            &k.add,
            groups(n, 256),
            (a.words_mut(), Push(&AddK { n: n as u32, k: 9 })),
        )
        .unwrap();
        assert!(child.go(), "{path:?}: the child saw other bytes");
    });
}

#[test]
fn hugetlb_pages_are_copied_through_where_the_kernel_gives_any() {
    each_path(|rt, path| {
        let len = 2 << 20;
        let Some(mut m) = Mapping::new(
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB,
            -1,
        ) else {
            eprintln!("{path:?}: no hugetlbfs pages reserved here (vm.nr_hugepages); not run");
            return;
        };
        let k = kernels(rt);
        let n = len / 4;
        fill(&mut m, 8);
        rt.launch(
            &k.add,
            groups(n, 256),
            (m.words_mut(), Push(&AddK { n: n as u32, k: 2 })),
        )
        .unwrap();
        assert!(
            (0..n).all(|i| m.words()[i] == pattern(i, 8).wrapping_add(2)),
            "{path:?}"
        );
    });
}

#[test]
fn mirrored_and_copied_bindings_mix_in_one_launch() {
    each_path(|rt, path| {
        let k = kernels(rt);
        let n = 16 * EPP;
        let words: Vec<u32> = (0..n).map(|i| pattern(i, 10)).collect();
        let (_file, src) = read_only_file(&words, libc::MAP_PRIVATE);
        // File → runtime memory (migrates under either backend).
        let mut dst = rt.alloc::<u32>(n).unwrap();
        let before = rt.stats();
        rt.launch(
            &k.copy,
            groups(n, 256),
            (src.words(), &mut dst, Push(&N { n: n as u32 })),
        )
        .unwrap();
        let d = rt.stats() - before;
        assert_eq!(d.copied_to_device, (n * 4) as u64, "{path:?}: {d}");
        assert_eq!(rt.residency(&dst).device, n / EPP, "{path:?}");
        assert_eq!(&dst[..], &words[..], "{path:?}: file → Managed");
        // Runtime memory → a shared memfd.
        let (_fd, mut out) = shared_memfd(n * 4);
        rt.launch(
            &k.copy,
            groups(n, 256),
            (&dst, out.words_mut(), Push(&N { n: n as u32 })),
        )
        .unwrap();
        assert_eq!(out.words(), &words[..], "{path:?}: Managed → memfd");
        assert_eq!(rt.residency(&dst).shared, n / EPP, "{path:?}");
    });
}

#[test]
fn a_binding_over_mirrored_and_copied_memory_brings_the_mirrored_pages_home() {
    each_path(|rt, path| {
        let k = kernels(rt);
        let n = 8 * EPP;
        let len = n * 4;
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let mut m = Mapping::new(len, rw, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1).unwrap();
        fill(&mut m, 12);
        // The first half migrates (under userfaultfd) and stays on the device.
        let half = n / 2;
        rt.launch(
            &k.add,
            groups(half, 256),
            (
                &mut m.words_mut()[..half],
                Push(&AddK {
                    n: half as u32,
                    k: 1,
                }),
            ),
        )
        .unwrap();
        // The second half becomes a shared memfd holding the same words.
        let fd = memfd(len / 2);
        // SAFETY: replaces the second half of our own mapping in one call.
        let p = unsafe {
            libc::mmap(
                m.ptr.add(half).cast(),
                len / 2,
                rw,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd.as_raw_fd(),
                0,
            )
        };
        assert_eq!(p, m.ptr.wrapping_add(half).cast(), "{path:?}: MAP_FIXED");
        m.words_mut()[half..]
            .iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = pattern(half + i, 12));
        // One binding over both: copied through; the mirrored pages come home first.
        rt.launch(
            &k.add,
            groups(n, 256),
            (m.words_mut(), Push(&AddK { n: n as u32, k: 2 })),
        )
        .unwrap();
        let expect = |i: usize| pattern(i, 12).wrapping_add(if i < half { 3 } else { 2 });
        assert!(
            (0..n).all(|i| m.words()[i] == expect(i)),
            "{path:?}: the results"
        );
        all_host(rt, m.words(), &format!("{path:?}"));
        // The first half alone migrates again.
        rt.launch(
            &k.add,
            groups(half, 256),
            (
                &mut m.words_mut()[..half],
                Push(&AddK {
                    n: half as u32,
                    k: 1,
                }),
            ),
        )
        .unwrap();
        assert!(
            (0..half).all(|i| m.words()[i] == expect(i).wrapping_add(1)),
            "{path:?}: after"
        );
    });
}

#[test]
fn async_launches_copy_results_back_when_they_settle() {
    each_path(|rt, path| {
        let k = kernels(rt);
        let n = 16 * EPP;
        let words: Vec<u32> = (0..n).map(|i| pattern(i, 14)).collect();
        let (_file, src) = read_only_file(&words, libc::MAP_SHARED);
        let (_fd, mut out) = shared_memfd(n * 4);
        let mut total = [0u32; 1];
        let push = N { n: n as u32 };
        rt.scope(|s| {
            let copy = s
                .launch_async(
                    &k.copy,
                    groups(n, 256),
                    (src.words(), out.words_mut(), Push(&push)),
                )
                .unwrap();
            copy.wait().unwrap();
            // Left pending: the scope's end settles it.
            let _sum = s
                .launch_async(
                    &k.sum,
                    groups(n, 256),
                    (src.words(), &mut total[..], Push(&push)),
                )
                .unwrap();
        })
        .unwrap();
        assert_eq!(out.words(), &words[..], "{path:?}: the copy");
        assert_eq!(total[0], cpu_sum(&words), "{path:?}: the sum");
    });
}

/// Memory taken away while a launch that copies it through runs (here made read-only, which
/// unlike `munmap` leaves no window for another mapping to land there): the copy back
/// reports an error instead of killing the process.
#[test]
fn a_copy_back_into_memory_taken_away_meanwhile_is_an_error_not_a_signal() {
    use vkhmm::{Error, MemoryReason};
    each_path(|rt, path| {
        let k = kernels(rt);
        let n = 4 << 20; // 16 MiB: the kernel runs for milliseconds
        let (_fd, mut m) = shared_memfd(n * 4);
        fill(&mut m, 16);
        let (ptr, len) = (m.ptr as usize, m.len);
        let push = AddK { n: n as u32, k: 1 };
        let result = rt
            .scope(|s| {
                let pending = s
                    .launch_async(&k.add, groups(n, 256), (m.words_mut(), Push(&push)))
                    .unwrap();
                // SAFETY: the test's own mapping; the launch's borrow is what this races.
                let rc = unsafe { libc::mprotect(ptr as *mut _, len, libc::PROT_READ) };
                assert_eq!(rc, 0);
                pending.wait()
            })
            .unwrap();
        match result {
            // The copy back won the race.
            Ok(()) => {
                assert!(
                    (0..n).all(|i| m.words()[i] == pattern(i, 16).wrapping_add(1)),
                    "{path:?}: results"
                );
                eprintln!("{path:?}: the copy back finished first");
            }
            Err(Error::UnsupportedMemory {
                reason: MemoryReason::UnmappedWhileInUse,
                ..
            }) => {
                // Each word is as before or the kernel's result (the copy back may have begun
                // before the memory went read-only), nothing else.
                let seen = |i: usize| m.words()[i];
                assert!(
                    (0..n)
                        .all(|i| seen(i) == pattern(i, 16)
                            || seen(i) == pattern(i, 16).wrapping_add(1)),
                    "{path:?}: the memory holds other bytes"
                );
                eprintln!("{path:?}: the copy back was refused");
            }
            Err(e) => panic!("{path:?}: {e:?}"),
        }
    });
}

/// A child process that waits for [`Child::go`], then reports `check()` as its exit status.
struct Child {
    pid: libc::pid_t,
    go: OwnedFd,
}

impl Child {
    /// Forks; the child only reads memory and a pipe, then exits without unwinding.
    fn spawn(check: impl FnOnce() -> bool) -> Child {
        let mut fds = [0; 2];
        // SAFETY: a plain syscall filling `fds`.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: the child calls only async-signal-safe functions (read, _exit) and reads
        // memory before it exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let mut byte = 0u8;
            // SAFETY: reads one byte into a local.
            let got = unsafe { libc::read(fds[0], (&mut byte as *mut u8).cast(), 1) };
            let ok = got == 1 && check();
            // SAFETY: ends the child at once, running nothing of the parent's state.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        // SAFETY: the parent owns both ends; it keeps the write end and closes the read end.
        unsafe { libc::close(fds[0]) };
        Child {
            pid,
            // SAFETY: `fds[1]` is ours alone.
            go: unsafe { OwnedFd::from_raw_fd(fds[1]) },
        }
    }

    /// Lets the child check; whether its check passed.
    fn go(self) -> bool {
        // SAFETY: writes one byte from a local to our own pipe.
        let sent = unsafe { libc::write(self.go.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        assert_eq!(sent, 1);
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(self.pid, &mut status, 0) }, self.pid);
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
    }
}
