//! Real kernel round trips: mmap, register, fault from a thread, read the event here,
//! resolve. Every wait is bounded (poll with a timeout, `recv_timeout`), and a failing
//! test drops its `Uffd` while unwinding, which wakes any thread still blocked in a fault.

use std::ptr::NonNull;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::Duration;

use super::*;
use crate::sys::testing::{peek, poke, Region};
use crate::sys::{self, page_size, PageEntry, Pagemap};
use std::ffi::c_void;

/// How long any test waits for something that should happen.
const TIMEOUT: Duration = Duration::from_secs(5);
/// How long a test waits to be confident something does *not* happen.
const QUIET: Duration = Duration::from_millis(150);

const WP: u64 = uapi::UFFD_FEATURE_PAGEFAULT_FLAG_WP as u64;
const WP_UNPOPULATED: u64 = uapi::UFFD_FEATURE_WP_UNPOPULATED as u64;

fn open() -> Uffd {
    Uffd::open(SERVICE_FEATURES).expect("userfaultfd opens on this machine")
}

/// A test that needs kernel-mode faults served cannot run without them: it says so and
/// passes, except under CI, where it fails.
fn require_kernel_faults(uffd: &Uffd) -> bool {
    if uffd.kernel_faults() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must serve kernel-mode faults; got {:?}",
        uffd.mode()
    );
    eprintln!(
        "skipped: userfaultfd is user-mode only here ({:?})",
        uffd.mode()
    );
    false
}

/// Waits (bounded) for the next message and decodes it.
fn next_event(uffd: &Uffd) -> Event {
    assert!(
        uffd.wait_readable(Some(TIMEOUT)).unwrap(),
        "no userfaultfd message within {TIMEOUT:?}"
    );
    let mut buf = [UffdMsg::ZEROED; 1];
    assert_eq!(uffd.read_events(&mut buf).unwrap(), 1);
    uffd.decode(&buf[0])
}

fn assert_no_event(uffd: &Uffd) {
    assert!(
        !uffd.wait_readable(Some(QUIET)).unwrap(),
        "unexpected message"
    );
}

/// Spawns a thread that reports its tid, then reads the byte at `addr` and reports it.
fn spawn_read(addr: usize) -> (u32, Receiver<u8>) {
    spawn_access(addr, None)
}

/// Spawns a thread that reports its tid, then writes `value` at `addr`, reads it back and
/// reports what it read.
fn spawn_write(addr: usize, value: u8) -> (u32, Receiver<u8>) {
    spawn_access(addr, Some(value))
}

fn spawn_access(addr: usize, value: Option<u8>) -> (u32, Receiver<u8>) {
    let (tid_tx, tid_rx) = mpsc::channel();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        tid_tx.send(sys::gettid()).unwrap();
        if let Some(v) = value {
            poke(addr, v);
        }
        let _ = tx.send(peek(addr));
    });
    (tid_rx.recv_timeout(TIMEOUT).unwrap(), rx)
}

/// Runs `f` on a helper thread (for calls that block until their event is read).
fn spawn_call(f: impl FnOnce() -> io::Result<()> + Send + 'static) -> Receiver<io::Result<()>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx
}

fn still_blocked<T: fmt::Debug>(rx: &Receiver<T>) {
    assert_eq!(
        rx.recv_timeout(QUIET).unwrap_err(),
        RecvTimeoutError::Timeout,
        "the thread should still be blocked"
    );
}

/// A page of `i as u8 ^ seed`.
fn pattern(seed: u8) -> Vec<u8> {
    (0..page_size()).map(|i| i as u8 ^ seed).collect()
}

fn entry(pagemap: &Pagemap, addr: usize) -> PageEntry {
    let mut e = [PageEntry::default()];
    pagemap.query(addr, &mut e).unwrap();
    e[0]
}

fn page_fault(addr: usize, write: bool, wp: bool, tid: u32) -> Event {
    Event::PageFault {
        addr,
        write,
        wp,
        minor: false,
        tid: Some(tid),
    }
}

// ------------------------------------------------------------------ opening

#[test]
fn open_negotiates_the_service_features() {
    let uffd = open();
    for (bit, name) in [
        (uapi::UFFD_FEATURE_PAGEFAULT_FLAG_WP, "wp"),
        (uapi::UFFD_FEATURE_EVENT_REMOVE, "event_remove"),
        (uapi::UFFD_FEATURE_EVENT_UNMAP, "event_unmap"),
        (uapi::UFFD_FEATURE_EVENT_REMAP, "event_remap"),
        (uapi::UFFD_FEATURE_THREAD_ID, "thread_id"),
    ] {
        assert!(
            uffd.has_feature(u64::from(bit)),
            "{name} not negotiated: {:#x}",
            uffd.features()
        );
    }
    assert_eq!(
        uffd.features(),
        SERVICE_FEATURES,
        "nothing more than asked for"
    );
    assert_eq!(uffd.features() & !uffd.supported_features(), 0);
    // The handshake's ioctls are the fd-level ones: API, REGISTER, UNREGISTER.
    for op in [
        uapi::_UFFDIO_API,
        uapi::_UFFDIO_REGISTER,
        uapi::_UFFDIO_UNREGISTER,
    ] {
        assert_ne!(uffd.api_ioctls() & (1 << op), 0);
    }
    assert_eq!(uffd.kernel_faults(), uffd.mode() != OpenMode::UserModeOnly);
}

#[test]
fn features_beyond_the_kernel_are_masked_not_refused() {
    let uffd = Uffd::open(!u64::from(
        uapi::UFFD_FEATURE_EVENT_FORK | uapi::UFFD_FEATURE_SIGBUS,
    ))
    .expect("open with every feature but fork and sigbus");
    assert_eq!(uffd.features() & !uffd.supported_features(), 0);
    assert!(uffd.has_feature(WP_UNPOPULATED) || uffd.supported_features() & WP_UNPOPULATED == 0);
}

#[test]
fn every_mode_opens_or_names_its_failure() {
    for mode in OpenMode::ALL {
        match Uffd::open_mode(mode, SERVICE_FEATURES) {
            Ok(u) => {
                assert_eq!(u.mode(), mode);
                assert_eq!(u.kernel_faults(), mode != OpenMode::UserModeOnly);
                assert!(u.has_feature(WP));
            }
            Err(e) => {
                assert_eq!(e.mode, mode);
                assert!(e.to_string().contains(e.step.as_str()), "{e}");
            }
        }
    }
    // UFFD_USER_MODE_ONLY is allowed to everyone (unless seccomp forbids the syscall).
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    if status
        .lines()
        .any(|l| l.starts_with("Seccomp:") && l.ends_with('0'))
    {
        Uffd::open_mode(OpenMode::UserModeOnly, SERVICE_FEATURES)
            .expect("user-mode-only always opens");
    }
}

#[test]
fn an_unprivileged_thread_falls_back_to_user_mode_only() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to drop privileges on one thread");
        return;
    }
    // Credentials are per thread in the kernel; rustix's raw setresuid changes only the
    // calling thread, which then exits. The change of euid also clears the process-wide
    // "dumpable" flag, which is restored afterwards.
    use rustix::process::{dumpable_behavior, set_dumpable_behavior};
    let dumpable = dumpable_behavior().unwrap();
    let handle = thread::spawn(|| {
        let nobody = rustix::process::Uid::from_raw(65534);
        rustix::thread::set_thread_res_uid(nobody, nobody, nobody).expect("setresuid");
        let caps = crate::trap::probe::probe();
        let uffd = Uffd::open(SERVICE_FEATURES).map(|u| (u.mode(), u.kernel_faults()));
        (caps, uffd)
    });
    let (caps, uffd) = handle.join().unwrap();
    set_dumpable_behavior(dumpable).unwrap();
    let unprivileged = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd").unwrap();
    if unprivileged.trim() != "0" {
        eprintln!("skipped: vm.unprivileged_userfaultfd is not 0");
        return;
    }
    assert_eq!(uffd.unwrap(), (OpenMode::UserModeOnly, false));
    assert_eq!(caps.userfaultfd, Some(OpenMode::UserModeOnly));
    assert!(!caps.kernel_faults);
    let syscall = caps.attempts[0].result.unwrap_err();
    assert_eq!(
        (syscall.call, syscall.errno),
        ("userfaultfd()", Errno::PERM.raw_os_error())
    );
    assert!(syscall.hint.unwrap().contains("CAP_SYS_PTRACE"));
    if std::path::Path::new(DEV_NODE).exists() {
        let node = caps.attempts[1].result.unwrap_err();
        assert_eq!(
            (node.call, node.errno),
            ("open(/dev/userfaultfd)", Errno::ACCESS.raw_os_error())
        );
    }
    assert!(caps.attempts[2].result.is_ok());
    assert!(
        caps.to_string().contains("kernel-mode faults: not served"),
        "{caps}"
    );
}

#[test]
fn open_error_explains_each_attempt_and_converts() {
    let err = OpenError {
        attempts: [
            Some(AttemptError {
                mode: OpenMode::Syscall,
                step: OpenStep::Syscall,
                errno: Errno::NOSYS,
            }),
            Some(AttemptError {
                mode: OpenMode::DevNode,
                step: OpenStep::OpenDevNode,
                errno: Errno::NOENT,
            }),
            Some(AttemptError {
                mode: OpenMode::UserModeOnly,
                step: OpenStep::Syscall,
                errno: Errno::NOSYS,
            }),
        ],
    };
    let text = err.to_string();
    assert!(text.contains("seccomp"), "{text}");
    assert!(text.contains("no /dev/userfaultfd"), "{text}");
    assert!(text.contains("UFFD_USER_MODE_ONLY"), "{text}");
    assert_eq!(err.errno(OpenMode::DevNode), Some(Errno::NOENT));
    assert_eq!(err.attempts().count(), 3);
    let e: crate::Error = err.into();
    assert!(
        matches!(&e, crate::Error::FaultBackendUnavailable { source: Some(s), .. }
        if s.raw_os_error() == Some(Errno::NOSYS.raw_os_error()))
    );
    assert!(e
        .to_string()
        .starts_with("no fault backend is available: userfaultfd cannot be opened"));
}

#[test]
fn feature_names_are_the_uapi_names() {
    let names: Vec<_> = feature_names(SERVICE_FEATURES).collect();
    assert_eq!(
        names,
        [
            "pagefault_flag_wp",
            "event_remap",
            "event_remove",
            "event_unmap",
            "thread_id"
        ]
    );
    assert_eq!(feature_names(1 << 40).count(), 0);
    assert_eq!(KNOWN_FEATURES, (1 << 17) - 1);
}

// ------------------------------------------------------------------ decoding

fn msg(event: u32, words: [u64; 3]) -> UffdMsg {
    let mut raw = *UffdMsg::ZEROED.raw();
    raw.event = event as u8;
    raw.arg.reserved = uapi::uffd_msg__bindgen_ty_1__bindgen_ty_5 {
        reserved1: words[0],
        reserved2: words[1],
        reserved3: words[2],
    };
    UffdMsg::from_raw(raw)
}

#[test]
fn messages_decode_without_a_kernel() {
    let flags = u64::from(uapi::UFFD_PAGEFAULT_FLAG_WRITE | uapi::UFFD_PAGEFAULT_FLAG_WP);
    let pf = msg(uapi::UFFD_EVENT_PAGEFAULT, [flags, 0x7000, 4242]);
    assert_eq!(pf.decode(true), page_fault(0x7000, true, true, 4242));
    assert!(matches!(
        pf.decode(false),
        Event::PageFault { tid: None, .. }
    ));
    let minor = msg(
        uapi::UFFD_EVENT_PAGEFAULT,
        [u64::from(uapi::UFFD_PAGEFAULT_FLAG_MINOR), 0x1000, 0],
    );
    assert!(matches!(
        minor.decode(false),
        Event::PageFault {
            minor: true,
            write: false,
            wp: false,
            ..
        }
    ));
    assert_eq!(
        msg(uapi::UFFD_EVENT_REMOVE, [0x1000, 0x3000, 0]).decode(true),
        Event::Remove {
            start: 0x1000,
            end: 0x3000
        }
    );
    assert_eq!(
        msg(uapi::UFFD_EVENT_UNMAP, [0x1000, 0x3000, 0]).decode(true),
        Event::Unmap {
            start: 0x1000,
            end: 0x3000
        }
    );
    assert_eq!(
        msg(uapi::UFFD_EVENT_REMAP, [0x1000, 0x9000, 0x2000]).decode(true),
        Event::Remap {
            from: 0x1000,
            to: 0x9000,
            len: 0x2000
        }
    );
    assert_eq!(
        msg(uapi::UFFD_EVENT_FORK, [7, 0, 0]).decode(true),
        Event::Fork { fd: 7 }
    );
    assert_eq!(msg(99, [0; 3]).decode(true), Event::Unknown(99));
    assert_eq!(UffdMsg::default().decode(true), Event::Unknown(0));
    assert!(format!("{pf:?}").contains("event: 18"));
}

// ------------------------------------------------------------------ round trips

#[test]
fn missing_fault_is_resolved_by_copy_and_a_second_copy_is_eexist() {
    let region = Region::new(4);
    let uffd = open();
    let ioctls = uffd
        .register(region.addr(), region.len(), true, true)
        .unwrap();
    for bit in [IOCTL_COPY, IOCTL_ZEROPAGE, IOCTL_WRITEPROTECT, IOCTL_WAKE] {
        assert_ne!(ioctls & bit, 0, "range ioctls {ioctls:#x}");
    }

    let target = region.page(1) + 100;
    let (tid, rx) = spawn_read(target);
    assert_eq!(
        next_event(&uffd),
        page_fault(region.page(1), false, false, tid)
    );
    let src = pattern(0x5a);
    // SAFETY: `src` is a readable page; page 1 is registered, absent and ours.
    let copied = unsafe { uffd.copy(region.page(1), src.as_ptr(), page_size(), false, true) };
    assert_eq!(copied, Ok(page_size()));
    assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), src[100]);
    assert_eq!(peek(region.page(1) + 4095), src[4095]);

    // The page is present now: a second copy is EEXIST with nothing copied.
    // SAFETY: as above.
    let again = unsafe { uffd.copy(region.page(1), src.as_ptr(), page_size(), false, true) };
    assert_eq!(again, Err(CopyError::Exists { copied: 0 }));
    assert_no_event(&uffd);
}

#[test]
fn a_copy_that_runs_into_a_present_page_reports_the_bytes_before_it() {
    let region = Region::new(3);
    let uffd = open();
    uffd.register(region.addr(), region.len(), true, false)
        .unwrap();
    let src = [pattern(1), pattern(2), pattern(3)].concat();
    // SAFETY: `src` is readable for 3 pages; the range is registered and ours.
    let copied = unsafe { uffd.copy(region.page(1), src.as_ptr(), page_size(), false, true) };
    assert_eq!(copied, Ok(page_size()));
    // SAFETY: as above.
    let r = unsafe { uffd.copy(region.addr(), src.as_ptr(), 3 * page_size(), false, true) };
    // The kernel reports a partial copy as EAGAIN with the bytes done; the EEXIST that
    // stopped it shows when the rest is retried.
    assert_eq!(
        r,
        Err(CopyError::Again {
            copied: page_size()
        })
    );
    // SAFETY: as above.
    let rest = unsafe {
        uffd.copy(
            region.page(1),
            src[page_size()..].as_ptr(),
            2 * page_size(),
            false,
            true,
        )
    };
    assert_eq!(rest, Err(CopyError::Exists { copied: 0 }));
    assert_eq!(peek(region.page(0) + 7), src[7]);
    assert_eq!(
        peek(region.page(1) + 7),
        pattern(1)[7],
        "the present page is untouched"
    );
}

#[test]
fn zeropage_resolves_a_missing_fault() {
    let region = Region::new(2);
    let uffd = open();
    uffd.register(region.addr(), region.len(), true, false)
        .unwrap();
    let (tid, rx) = spawn_write(region.page(1) + 9, 0xee);
    assert_eq!(
        next_event(&uffd),
        page_fault(region.page(1), true, false, tid)
    );
    assert_eq!(
        uffd.zeropage(region.page(1), page_size(), true),
        Ok(page_size())
    );
    // The writer retries: the zero page is replaced by a private copy holding its byte.
    assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0xee);
    assert_eq!(peek(region.page(1) + 8), 0);
    assert_eq!(
        uffd.zeropage(region.page(1), page_size(), true),
        Err(CopyError::Exists { copied: 0 })
    );
    assert_no_event(&uffd);
}

#[test]
fn eexist_needs_a_wake_when_the_copy_did_not_wake() {
    let region = Region::new(1);
    let uffd = open();
    uffd.register(region.addr(), region.len(), true, false)
        .unwrap();
    let (tid, rx) = spawn_read(region.addr());
    assert_eq!(
        next_event(&uffd),
        page_fault(region.addr(), false, false, tid)
    );
    let src = pattern(9);
    // SAFETY: `src` is a readable page; the page is registered, absent and ours.
    let copied = unsafe { uffd.copy(region.addr(), src.as_ptr(), page_size(), false, false) };
    assert_eq!(copied, Ok(page_size()));
    still_blocked(&rx);
    // SAFETY: as above.
    let r = unsafe { uffd.copy(region.addr(), src.as_ptr(), page_size(), false, true) };
    assert_eq!(
        r,
        Err(CopyError::Exists { copied: 0 }),
        "EEXIST does not wake either"
    );
    still_blocked(&rx);
    uffd.wake(region.addr(), page_size()).unwrap();
    assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), src[0]);
}

#[test]
fn several_faults_are_drained_in_one_read() {
    let region = Region::new(4);
    let uffd = open();
    uffd.register(region.addr(), region.len(), true, false)
        .unwrap();
    let waiters: Vec<_> = (0..3).map(|i| spawn_read(region.page(i))).collect();
    let mut buf = [UffdMsg::ZEROED; 8];
    let mut events = Vec::new();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while events.len() < 3 {
        assert!(std::time::Instant::now() < deadline, "got only {events:?}");
        uffd.wait_readable(Some(TIMEOUT)).unwrap();
        let n = uffd.read_events(&mut buf).unwrap();
        events.extend(buf[..n].iter().map(|m| uffd.decode(m)));
    }
    assert_eq!(
        uffd.read_events(&mut buf).unwrap(),
        0,
        "drained: EAGAIN reads as 0"
    );
    let mut addrs: Vec<_> = events
        .iter()
        .map(|e| match *e {
            Event::PageFault { addr, .. } => addr,
            other => panic!("{other:?}"),
        })
        .collect();
    addrs.sort_unstable();
    assert_eq!(addrs, [region.page(0), region.page(1), region.page(2)]);
    assert_eq!(
        uffd.zeropage(region.addr(), 3 * page_size(), true),
        Ok(3 * page_size())
    );
    for (_, rx) in waiters {
        assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0);
    }
}

#[test]
fn write_protect_blocks_a_writer_until_unprotect_wakes_it() {
    let region = Region::new(2);
    let uffd = open();
    uffd.register(region.addr(), region.len(), true, true)
        .unwrap();
    let src = pattern(3);
    // SAFETY: `src` is a readable page; page 0 is registered, absent and ours.
    let copied = unsafe { uffd.copy(region.addr(), src.as_ptr(), page_size(), false, true) };
    assert_eq!(copied, Ok(page_size()));
    uffd.write_protect(region.addr(), page_size(), true, false)
        .unwrap();
    let pagemap = Pagemap::open().unwrap();
    assert!(entry(&pagemap, region.addr()).uffd_wp());

    let (tid, rx) = spawn_write(region.addr() + 10, 0xab);
    assert_eq!(
        next_event(&uffd),
        page_fault(region.addr(), true, true, tid)
    );
    assert_eq!(
        peek(region.addr() + 10),
        src[10],
        "reads pass, the write waits"
    );
    still_blocked(&rx);
    uffd.write_protect(region.addr(), page_size(), false, true)
        .unwrap();
    assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0xab);
    assert_eq!(peek(region.addr() + 10), 0xab);
    assert!(!entry(&pagemap, region.addr()).uffd_wp());
}

#[test]
fn copy_with_wp_installs_a_write_protected_page() {
    let region = Region::new(1);
    let uffd = open();
    uffd.register(region.addr(), region.len(), true, true)
        .unwrap();
    let src = pattern(4);
    // SAFETY: `src` is a readable page; the page is registered, absent and ours.
    let copied = unsafe { uffd.copy(region.addr(), src.as_ptr(), page_size(), true, true) };
    assert_eq!(copied, Ok(page_size()));
    let (tid, rx) = spawn_write(region.addr() + 1, 0x11);
    assert_eq!(
        next_event(&uffd),
        page_fault(region.addr(), true, true, tid)
    );
    uffd.write_protect(region.addr(), page_size(), false, true)
        .unwrap();
    assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0x11);
    assert_eq!(peek(region.addr()), src[0]);
}

/// `UFFDIO_MOVE` of one page.
fn move_page(uffd: &Uffd, dst: usize, src: usize) -> CopyResult {
    // SAFETY: both pages are the test's own.
    unsafe { uffd.move_pages(dst, src, page_size()) }
}

/// Why the runtime installs `Shared` pages with `UFFDIO_COPY_MODE_WP` and does not recycle
/// pages with `UFFDIO_MOVE` (docs/performance.md, "Sequential fault-back against its
/// ceiling"): a moved page arrives writable, whatever protection its source had, and a
/// write-protect marker placed first makes the move fail. Protecting it after the move
/// leaves a window in which another thread's write lands unseen, and the page would be
/// called `Shared` with a stale device copy.
#[test]
fn a_moved_page_arrives_writable_and_a_wp_marker_refuses_the_move() {
    const MOVE: u64 = uapi::UFFD_FEATURE_MOVE as u64;
    // The regions outlive the fd (declared first, dropped last): an unmap of a registered
    // range waits until its event is read.
    let (region, parked) = (Region::new(2), Region::new(2));
    let uffd = Uffd::open(SERVICE_FEATURES | WP_UNPOPULATED | MOVE).unwrap();
    if !uffd.has_feature(MOVE | WP_UNPOPULATED) {
        eprintln!("skipped: kernel lacks UFFD_FEATURE_MOVE or WP_UNPOPULATED");
        return;
    }
    let src = pattern(6);
    for (i, b) in src.iter().enumerate() {
        poke(parked.page(0) + i, *b);
        poke(parked.page(1) + i, *b);
    }
    uffd.register(region.addr(), region.len(), true, true)
        .unwrap();
    // The source may itself be write-protected: the protection does not travel.
    uffd.register(parked.addr(), parked.len(), true, true)
        .unwrap();
    let pagemap = Pagemap::open().unwrap();
    uffd.write_protect(parked.page(0), page_size(), true, false)
        .unwrap();
    assert!(entry(&pagemap, parked.page(0)).uffd_wp());
    assert_eq!(
        move_page(&uffd, region.page(0), parked.page(0)),
        Ok(page_size())
    );
    let e = entry(&pagemap, region.page(0));
    assert!(e.present() && !e.uffd_wp(), "{e:?}");
    // A write now raises no fault at all.
    let (_, rx) = spawn_write(region.page(0) + 1, 0x77);
    assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0x77);
    assert_no_event(&uffd);
    assert_eq!(peek(region.page(0)), src[0]);

    // Protecting the destination first leaves a marker, and the move refuses it.
    uffd.write_protect(region.page(1), page_size(), true, false)
        .unwrap();
    assert_eq!(
        move_page(&uffd, region.page(1), parked.page(1)),
        Err(CopyError::Exists { copied: 0 })
    );
    assert!(
        entry(&pagemap, parked.page(1)).present(),
        "the source stays"
    );
}

/// How the runtime drops the host copy of a migrated run without touching a mapping
/// that may have replaced it: it moves the pages out with `UFFDIO_MOVE` while no thread
/// reads this fd's events. The move refuses with `EAGAIN` while an `UNMAP` of another
/// registered range is unread (so it cannot act on an address space whose `munmap` has
/// begun), and once the event is read it moves present pages and the zero page, skips
/// holes, and leaves the source absent: its next access is a MISSING fault.
#[test]
fn a_move_refuses_while_an_unmap_is_unread_and_leaves_its_source_absent() {
    const MOVE: u64 = uapi::UFFD_FEATURE_MOVE as u64;
    // The regions outlive the fd (declared first, dropped last).
    let (gone, region, parked) = (Region::new(1), Region::new(4), Region::new(4));
    let uffd = Uffd::open(SERVICE_FEATURES | MOVE).unwrap();
    if !uffd.has_feature(MOVE) {
        eprintln!("skipped: kernel lacks UFFD_FEATURE_MOVE");
        return;
    }
    let src = [pattern(1), pattern(2)];
    for (k, page) in src.iter().enumerate() {
        for (i, b) in page.iter().enumerate() {
            poke(region.page(k) + i, *b);
        }
    }
    assert_eq!(peek(region.page(2)), 0); // page 2 maps the zero page; page 3 is a hole
    for r in [&gone, &region, &parked] {
        uffd.register(r.addr(), r.len(), true, true).unwrap();
    }
    let (addr, len) = (gone.addr(), gone.len());
    gone.forget();
    let done = spawn_call(move || {
        // SAFETY: the test owns this mapping and forgot it; nothing refers to it.
        unsafe { sys::munmap(NonNull::new(addr as *mut u8).unwrap(), len) }
    });
    assert!(uffd.wait_readable(Some(TIMEOUT)).unwrap());
    still_blocked(&done);
    // SAFETY: both ranges are the test's own.
    let refused = unsafe { uffd.move_pages(parked.addr(), region.addr(), region.len()) };
    assert_eq!(refused, Err(CopyError::Again { copied: 0 }));
    assert_eq!(
        next_event(&uffd),
        Event::Unmap {
            start: addr,
            end: addr + len
        }
    );
    done.recv_timeout(TIMEOUT).unwrap().unwrap();

    // SAFETY: as above.
    let moved = unsafe { uffd.move_pages(parked.addr(), region.addr(), region.len()) };
    assert_eq!(moved, Ok(region.len()));
    let pagemap = Pagemap::open().unwrap();
    for k in 0..4 {
        assert!(entry(&pagemap, region.page(k)).absent(), "source page {k}");
    }
    for (k, page) in src.iter().enumerate() {
        assert!(entry(&pagemap, parked.page(k)).present());
        assert_eq!(peek(parked.page(k) + 5), page[5]);
    }
    assert!(
        entry(&pagemap, parked.page(3)).absent(),
        "a hole moves nothing"
    );
    let (tid, rx) = spawn_read(region.page(0) + 5);
    assert_eq!(
        next_event(&uffd),
        page_fault(region.page(0), false, false, tid)
    );
    assert_eq!(
        uffd.zeropage(region.page(0), page_size(), true),
        Ok(page_size())
    );
    assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0);
}

#[test]
fn write_protecting_an_absent_page_without_wp_unpopulated_does_nothing() {
    let region = Region::new(1);
    let uffd = open();
    assert!(!uffd.has_feature(WP_UNPOPULATED));
    uffd.register(region.addr(), region.len(), true, true)
        .unwrap();
    uffd.write_protect(region.addr(), page_size(), true, false)
        .unwrap();
    let pagemap = Pagemap::open().unwrap();
    assert!(entry(&pagemap, region.addr()).absent());
    // The write raises a MISSING fault, not a WP fault.
    let (tid, rx) = spawn_write(region.addr(), 0x22);
    assert_eq!(
        next_event(&uffd),
        page_fault(region.addr(), true, false, tid)
    );
    assert_eq!(
        uffd.zeropage(region.addr(), page_size(), true),
        Ok(page_size())
    );
    assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0x22);
}

#[test]
fn wp_unpopulated_markers_fault_as_missing_and_fills_replace_them() {
    let region = Region::new(3);
    let uffd = Uffd::open(SERVICE_FEATURES | WP_UNPOPULATED).unwrap();
    if !uffd.has_feature(WP_UNPOPULATED) {
        eprintln!("skipped: kernel lacks UFFD_FEATURE_WP_UNPOPULATED");
        return;
    }
    uffd.register(region.addr(), region.len(), true, true)
        .unwrap();
    uffd.write_protect(region.addr(), region.len(), true, false)
        .unwrap();
    let pagemap = Pagemap::open().unwrap();
    let marker = entry(&pagemap, region.addr());
    assert!(
        !marker.present() && marker.swapped() && marker.uffd_wp(),
        "{marker:?}"
    );
    assert!(!marker.absent(), "a marker counts as holding data");

    // A write to a marked (absent) page is a MISSING fault, not a WP fault. ZEROPAGE
    // refuses a marker with EEXIST, and a woken thread faults again at once: a handler
    // that answers "EEXIST → wake" would spin. Un-protecting removes the marker.
    let (tid, rx) = spawn_write(region.page(0), 0x33);
    assert_eq!(
        next_event(&uffd),
        page_fault(region.page(0), true, false, tid)
    );
    assert_eq!(
        uffd.zeropage(region.page(0), page_size(), true),
        Err(CopyError::Exists { copied: 0 })
    );
    uffd.wake(region.page(0), page_size()).unwrap();
    assert_eq!(
        next_event(&uffd),
        page_fault(region.page(0), true, false, tid)
    );
    uffd.write_protect(region.page(0), page_size(), false, false)
        .unwrap();
    assert!(entry(&pagemap, region.page(0)).absent());
    assert_eq!(
        uffd.zeropage(region.page(0), page_size(), true),
        Ok(page_size())
    );
    assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0x33);
    assert_no_event(&uffd);

    // A copy without MODE_WP replaces the marker and drops the protection.

    let src = pattern(5);
    let (tid, rx) = spawn_write(region.page(1), 0x44);
    assert_eq!(
        next_event(&uffd),
        page_fault(region.page(1), true, false, tid)
    );
    // SAFETY: `src` is a readable page; page 1 is registered, absent (marker) and ours.
    let copied = unsafe { uffd.copy(region.page(1), src.as_ptr(), page_size(), false, true) };
    assert_eq!(copied, Ok(page_size()));
    assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0x44);
    let e = entry(&pagemap, region.page(1));
    assert!(e.present() && !e.uffd_wp(), "{e:?}");
    assert_eq!(peek(region.page(1) + 1), src[1]);

    // A read is a MISSING fault too; a copy with MODE_WP keeps the page protected.
    let (tid, rx) = spawn_read(region.page(2));
    assert_eq!(
        next_event(&uffd),
        page_fault(region.page(2), false, false, tid)
    );
    // SAFETY: as above, page 2.
    let copied = unsafe { uffd.copy(region.page(2), src.as_ptr(), page_size(), true, true) };
    assert_eq!(copied, Ok(page_size()));
    assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), src[0]);
    assert!(entry(&pagemap, region.page(2)).uffd_wp());
    let (tid, rx) = spawn_write(region.page(2), 0x55);
    assert_eq!(
        next_event(&uffd),
        page_fault(region.page(2), true, true, tid)
    );
    uffd.write_protect(region.page(2), page_size(), false, true)
        .unwrap();
    assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0x55);

    // MADV_DONTNEED of a write-protected page leaves no marker behind, even with
    // WP_UNPOPULATED: the next access is a plain MISSING fault.
    uffd.write_protect(region.page(1), page_size(), true, false)
        .unwrap();
    let page1 = region.page(1);
    // SAFETY: the test owns the page and discards its contents on purpose.
    let done = spawn_call(move || unsafe { sys::madvise_dontneed(page1, page_size()) });
    assert_eq!(
        next_event(&uffd),
        Event::Remove {
            start: page1,
            end: page1 + page_size()
        }
    );
    done.recv_timeout(TIMEOUT).unwrap().unwrap();
    assert_eq!(entry(&pagemap, page1).raw(), 0);
    let (tid, rx) = spawn_write(page1, 0x66);
    assert_eq!(next_event(&uffd), page_fault(page1, true, false, tid));
    assert_eq!(uffd.zeropage(page1, page_size(), true), Ok(page_size()));
    assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0x66);
}

#[test]
fn munmap_blocks_until_its_unmap_event_is_read() {
    let region = Region::new(2);
    let uffd = open();
    uffd.register(region.addr(), region.len(), true, true)
        .unwrap();
    let (addr, len) = (region.addr(), region.len());
    region.forget();
    let done = spawn_call(move || {
        // SAFETY: the test owns this mapping and forgot it; nothing refers to it.
        unsafe { sys::munmap(NonNull::new(addr as *mut u8).unwrap(), len) }
    });
    assert!(uffd.wait_readable(Some(TIMEOUT)).unwrap());
    still_blocked(&done);
    assert_eq!(
        next_event(&uffd),
        Event::Unmap {
            start: addr,
            end: addr + len
        }
    );
    done.recv_timeout(TIMEOUT).unwrap().unwrap();
    // The range is gone: resolution ioctls say so, and so does clearing write
    // protection there (`migrate::write_protect` takes that as done).
    assert_eq!(
        uffd.zeropage(addr, page_size(), true),
        Err(CopyError::Gone(Errno::NOENT))
    );
    let unprotect = uffd.write_protect(addr, len, false, false);
    assert_eq!(
        unprotect.map_err(|e| e.raw_os_error()),
        Err(Some(linux_raw_sys::errno::ENOENT as i32))
    );
}

#[test]
fn madvise_dontneed_gives_remove_and_later_reads_fault_again() {
    let region = Region::new(2);
    let uffd = open();
    uffd.register(region.addr(), region.len(), true, true)
        .unwrap();
    let src = [pattern(6), pattern(7)].concat();
    // SAFETY: `src` is readable for 2 pages; the range is registered, absent and ours.
    let copied = unsafe { uffd.copy(region.addr(), src.as_ptr(), region.len(), true, true) };
    assert_eq!(copied, Ok(region.len()));
    let (addr, len) = (region.addr(), region.len());
    // SAFETY: the test owns the range and discards its contents on purpose.
    let done = spawn_call(move || unsafe { sys::madvise_dontneed(addr, len) });
    assert!(uffd.wait_readable(Some(TIMEOUT)).unwrap());
    still_blocked(&done);
    assert_eq!(
        next_event(&uffd),
        Event::Remove {
            start: addr,
            end: addr + len
        }
    );
    done.recv_timeout(TIMEOUT).unwrap().unwrap();

    // The pages and their write protection are gone: the next access is a MISSING fault.
    let pagemap = Pagemap::open().unwrap();
    assert_eq!(entry(&pagemap, addr).raw(), 0);
    assert_eq!(entry(&pagemap, addr + page_size()).raw(), 0);
    let (tid, rx) = spawn_read(addr + 5);
    assert_eq!(next_event(&uffd), page_fault(addr, false, false, tid));
    // SAFETY: as above.
    let copied = unsafe { uffd.copy(addr, src.as_ptr(), page_size(), false, true) };
    assert_eq!(copied, Ok(page_size()));
    assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), src[5]);
    let (tid, rx) = spawn_write(addr + page_size(), 0x77);
    assert_eq!(
        next_event(&uffd),
        page_fault(addr + page_size(), true, false, tid)
    );
    assert_eq!(
        uffd.zeropage(addr + page_size(), page_size(), true),
        Ok(page_size())
    );
    assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0x77);
}

#[test]
fn mremap_gives_remap_then_unmap_of_the_old_range_and_the_registration_moves() {
    let region = Region::new(2);
    let dest = Region::new(2);
    let uffd = open();
    uffd.register(region.addr(), region.len(), true, false)
        .unwrap();
    let (from, to, len) = (region.addr(), dest.addr(), region.len());
    region.forget();
    let done = spawn_call(move || {
        use rustix::mm::{mremap_fixed, MremapFlags};
        // SAFETY: both mappings belong to the test, nothing refers into them; the
        // destination mapping is replaced by the moved one.
        unsafe {
            mremap_fixed(
                from as *mut c_void,
                len,
                len,
                MremapFlags::MAYMOVE,
                to as *mut c_void,
            )
        }?;
        Ok(())
    });
    assert!(uffd.wait_readable(Some(TIMEOUT)).unwrap());
    still_blocked(&done);
    assert_eq!(next_event(&uffd), Event::Remap { from, to, len });
    // Then the old range is reported unmapped, and mremap waits for that read too.
    still_blocked(&done);
    assert_eq!(
        next_event(&uffd),
        Event::Unmap {
            start: from,
            end: from + len
        }
    );
    done.recv_timeout(TIMEOUT).unwrap().unwrap();
    // Faults now arrive at the new address.
    let (tid, rx) = spawn_read(to + page_size());
    assert_eq!(
        next_event(&uffd),
        page_fault(to + page_size(), false, false, tid)
    );
    assert_eq!(
        uffd.zeropage(to + page_size(), page_size(), true),
        Ok(page_size())
    );
    assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0);
}

#[test]
fn resolution_returns_eagain_while_an_event_is_unread() {
    let doomed = Region::new(1);
    let kept = Region::new(1);
    let uffd = open();
    uffd.register(doomed.addr(), doomed.len(), true, false)
        .unwrap();
    uffd.register(kept.addr(), kept.len(), true, true).unwrap();
    let (addr, len) = (doomed.addr(), doomed.len());
    doomed.forget();
    // SAFETY: the test owns this mapping and forgot it; nothing refers to it.
    let done =
        spawn_call(move || unsafe { sys::munmap(NonNull::new(addr as *mut u8).unwrap(), len) });
    assert!(uffd.wait_readable(Some(TIMEOUT)).unwrap());
    assert_eq!(
        uffd.zeropage(kept.addr(), page_size(), true),
        Err(CopyError::Again { copied: 0 })
    );
    assert_eq!(
        uffd.write_protect(kept.addr(), page_size(), true, false)
            .unwrap_err()
            .raw_os_error(),
        Some(Errno::AGAIN.raw_os_error())
    );
    assert_eq!(
        next_event(&uffd),
        Event::Unmap {
            start: addr,
            end: addr + len
        }
    );
    done.recv_timeout(TIMEOUT).unwrap().unwrap();
    assert_eq!(
        uffd.zeropage(kept.addr(), page_size(), true),
        Ok(page_size())
    );
}

#[test]
fn kernel_mode_faults_reach_the_handler() {
    let region = Region::new(1);
    let uffd = open();
    if !require_kernel_faults(&uffd) {
        return;
    }
    uffd.register(region.addr(), region.len(), true, false)
        .unwrap();
    let efd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
    let efd = std::sync::Arc::new(efd);
    let writer = efd.clone();
    let addr = region.addr();
    let (tid_tx, tid_rx) = mpsc::channel();
    // write(2) on an eventfd copies 8 bytes from the registered page inside the kernel.
    let done = spawn_call(move || {
        tid_tx.send(sys::gettid()).unwrap();
        // SAFETY: the page belongs to the test's live mapping; the kernel only reads it.
        let bytes = unsafe { core::slice::from_raw_parts(addr as *const u8, 8) };
        rustix::io::write(&*writer, bytes)?;
        Ok(())
    });
    let tid = tid_rx.recv_timeout(TIMEOUT).unwrap();
    assert_eq!(next_event(&uffd), page_fault(addr, false, false, tid));
    let mut src = vec![0u8; page_size()];
    src[..8].copy_from_slice(&0x0102_0304_0506_0708u64.to_ne_bytes());
    // SAFETY: `src` is a readable page; the page is registered, absent and ours.
    let copied = unsafe { uffd.copy(addr, src.as_ptr(), page_size(), false, true) };
    assert_eq!(copied, Ok(page_size()));
    done.recv_timeout(TIMEOUT).unwrap().unwrap();
    let mut value = [0u8; 8];
    rustix::io::read(&*efd, &mut value).unwrap();
    assert_eq!(u64::from_ne_bytes(value), 0x0102_0304_0506_0708);
}

#[test]
fn user_mode_only_turns_kernel_faults_into_efault() {
    let region = Region::new(1);
    let Ok(uffd) = Uffd::open_mode(OpenMode::UserModeOnly, SERVICE_FEATURES) else {
        eprintln!("skipped: UFFD_USER_MODE_ONLY is not available");
        return;
    };
    assert!(!uffd.kernel_faults());
    uffd.register(region.addr(), region.len(), true, false)
        .unwrap();
    let efd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
    // SAFETY: the page belongs to the test's live mapping; the kernel only reads it.
    let bytes = unsafe { core::slice::from_raw_parts(region.addr() as *const u8, 8) };
    assert_eq!(rustix::io::write(&efd, bytes), Err(Errno::FAULT));
    assert_no_event(&uffd);
    // A user-mode access still reaches the handler.
    let (tid, rx) = spawn_read(region.addr());
    assert_eq!(
        next_event(&uffd),
        page_fault(region.addr(), false, false, tid)
    );
    assert_eq!(
        uffd.zeropage(region.addr(), page_size(), true),
        Ok(page_size())
    );
    assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0);
}

#[test]
fn closing_the_fd_wakes_faulters_with_zero_pages() {
    let region = Region::new(1);
    let uffd = open();
    uffd.register(region.addr(), region.len(), true, false)
        .unwrap();
    let (tid, rx) = spawn_read(region.addr());
    assert_eq!(
        next_event(&uffd),
        page_fault(region.addr(), false, false, tid)
    );
    still_blocked(&rx);
    drop(uffd);
    assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0);
}

#[test]
fn unregister_wakes_faulters_and_stops_faults() {
    let region = Region::new(1);
    let uffd = open();
    uffd.register(region.addr(), region.len(), true, false)
        .unwrap();
    let (tid, rx) = spawn_read(region.addr());
    assert_eq!(
        next_event(&uffd),
        page_fault(region.addr(), false, false, tid)
    );
    uffd.unregister(region.addr(), region.len()).unwrap();
    assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 0);
    poke(region.addr() + 1, 1);
    assert_no_event(&uffd);
}

#[test]
fn registration_errors_are_errnos() {
    let region = Region::new(1);
    let uffd = open();
    let e = uffd
        .register(region.addr() + 1, page_size(), true, false)
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(Errno::INVAL.raw_os_error()));
    let other = open();
    uffd.register(region.addr(), region.len(), true, false)
        .unwrap();
    let e = other
        .register(region.addr(), region.len(), true, false)
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(Errno::BUSY.raw_os_error()));
    assert_eq!(uffd.read_events(&mut []).unwrap(), 0);
    // Registering again with the same fd adds modes ...
    let e = uffd
        .write_protect(region.addr(), page_size(), true, false)
        .unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(Errno::NOENT.raw_os_error()),
        "no WP registration yet"
    );
    uffd.register(region.addr(), region.len(), true, true)
        .unwrap();
    uffd.write_protect(region.addr(), page_size(), true, false)
        .unwrap();
    uffd.register(region.addr(), region.len(), true, false)
        .unwrap();
    // ... but does not remove any: WP is still in force.
    uffd.write_protect(region.addr(), page_size(), false, false)
        .unwrap();
}
