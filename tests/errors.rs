//! Bad input gets a typed error and changes nothing: data intact, nothing migrated.

mod common;

use bytemuck::{Pod, Zeroable};
use common::{each_path, each_path_foreign, groups, pattern};
use vkhmm::{shaders, Error, MemoryReason, Push, Residency, Runtime};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Saxpy {
    a: f32,
    n: u32,
}

/// A launch that must fail: checks the error, and that nothing moved.
fn refused(
    rt: &Runtime,
    what: &str,
    data: &mut [u32],
    expect: impl Fn(&Error) -> bool,
    launch: impl FnOnce(&mut [u32]) -> vkhmm::Result<()>,
) {
    let before = rt.stats();
    match launch(&mut *data) {
        Ok(()) => panic!("{what}: the launch was accepted"),
        Err(e) => assert!(expect(&e), "{what}: unexpected error {e:?}"),
    }
    let d = rt.stats() - before;
    assert_eq!(
        (d.bytes_to_device, d.launches),
        (0, 0),
        "{what}: something moved: {d}"
    );
    let r = rt.residency(&*data);
    assert_eq!(
        (r.shared, r.device),
        (0, 0),
        "{what}: pages changed state: {r:?}"
    );
    assert!(
        (0..data.len()).all(|i| data[i] == pattern(i, 0)),
        "{what}: data changed"
    );
}

fn data(n: usize) -> Vec<u32> {
    (0..n).map(|i| pattern(i, 0)).collect()
}

#[test]
fn argument_mismatches_are_typed_errors() {
    each_path_foreign(|rt, path| {
        let saxpy = rt.kernel_wgsl(shaders::SAXPY_WGSL, "main").unwrap();
        let x = data(10_000);
        let mut y = data(10_000);
        let push = Saxpy { a: 2.0, n: 10_000 };
        let g = groups(10_000, 256);
        let p = format!("{path:?}");
        refused(
            rt,
            &format!("{p} too few buffers"),
            &mut y,
            |e| {
                matches!(
                    e,
                    Error::ArgumentCount {
                        expected: 2,
                        given: 1
                    }
                )
            },
            |_| rt.launch(&saxpy, g, (&x, Push(&push))),
        );
        refused(
            rt,
            &format!("{p} push size"),
            &mut y,
            |e| {
                matches!(
                    e,
                    Error::PushConstantSize {
                        expected: 8,
                        given: 4
                    }
                )
            },
            |y| rt.launch(&saxpy, g, (&x, y, Push(&1u32))),
        );
        refused(
            rt,
            &format!("{p} shared borrow for a written binding"),
            &mut y,
            |e| matches!(e, Error::NeedsMutable { binding: 1 }),
            |y| rt.launch(&saxpy, g, (&x, &*y, Push(&push))),
        );
        let empty: Vec<f32> = Vec::new();
        refused(
            rt,
            &format!("{p} empty binding"),
            &mut y,
            |e| matches!(e, Error::EmptyBinding { binding: 0 }),
            |y| rt.launch(&saxpy, g, (&empty, y, Push(&push))),
        );
        refused(
            rt,
            &format!("{p} misaligned binding"),
            &mut y,
            |e| matches!(e, Error::MisalignedBinding { binding: 0, .. }),
            |y| rt.launch(&saxpy, g, (&x[1..], y, Push(&push))),
        );
        refused(
            rt,
            &format!("{p} zero groups"),
            &mut y,
            |e| matches!(e, Error::InvalidDispatch { .. }),
            |y| rt.launch(&saxpy, [0, 1, 1], (&x, y, Push(&push))),
        );
        refused(
            rt,
            &format!("{p} too many groups"),
            &mut y,
            |e| matches!(e, Error::InvalidDispatch { .. }),
            |y| rt.launch(&saxpy, [u32::MAX, 1, 1], (&x, y, Push(&push))),
        );
        let max = rt.device_info().limits.max_storage_buffer_range as usize;
        let huge = vec![0u8; max + 16]; // calloc'd: untouched, costs nothing
        refused(
            rt,
            &format!("{p} binding over the device limit"),
            &mut y,
            |e| matches!(e, Error::BindingTooLarge { binding: 0, .. }),
            |y| rt.launch(&saxpy, g, (&huge, y, Push(&push))),
        );
        // A kernel made by another runtime.
        if let Some(other) = common::runtime(path) {
            let foreign = other.kernel_wgsl(shaders::SAXPY_WGSL, "main").unwrap();
            refused(
                rt,
                &format!("{p} foreign kernel"),
                &mut y,
                |e| matches!(e, Error::ForeignKernel),
                |y| rt.launch(&foreign, g, (&x, y, Push(&push))),
            );
        }
        // After all that, the same launch with good arguments works.
        rt.launch(&saxpy, g, (&x, &mut y, Push(&push))).unwrap();
        let f = |i: usize| f32::from_bits(pattern(i, 0));
        let expect = |i: usize| 2.0 * f(i) + f(i);
        let ok = |i: usize| y[i] == expect(i).to_bits() || expect(i).is_nan();
        assert!((0..y.len()).all(ok), "{p}: saxpy after errors");
    });
}

#[test]
fn invalid_shaders_are_typed_errors() {
    each_path(|rt, _| {
        assert!(matches!(
            rt.kernel_wgsl("fn main( {", "main"),
            Err(Error::InvalidShader { .. })
        ));
        assert!(matches!(
            rt.kernel_wgsl(shaders::SAXPY_WGSL, "nope"),
            Err(Error::EntryPointNotFound { .. })
        ));
        assert!(matches!(
            rt.kernel_spirv(&[0x0723_0203, 1, 2], "main"),
            Err(Error::InvalidShader { .. })
        ));
        assert!(matches!(
            rt.kernel_spirv(shaders::SAXPY_SPIRV, "nope"),
            Err(Error::EntryPointNotFound { .. })
        ));
        rt.kernel_spirv(shaders::SAXPY_SPIRV, "main").unwrap();
    });
}

/// `len` bytes of a fresh mapping with `prot` and `flags` (and `fd`, for file mappings).
fn map(len: usize, prot: i32, flags: i32, fd: i32) -> &'static mut [u32] {
    // SAFETY: a fresh mapping; never unmapped (the test process ends soon).
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) };
    assert_ne!(p, libc::MAP_FAILED);
    // SAFETY: `len` bytes are mapped at `p`, page-aligned; callers only read readable ones.
    unsafe { std::slice::from_raw_parts_mut(p.cast::<u32>(), len / 4) }
}

/// Memory that cannot be mirrored is copied through (`tests/copy_through.rs`); what stays
/// an error is what the memory itself forbids: writing read-only memory, reading `PROT_NONE`
/// memory, a range with a hole. Each is refused with the data intact and nothing moved.
#[test]
fn memory_the_process_cannot_use_so_is_refused() {
    use std::os::fd::AsRawFd;
    each_path(|rt, path| {
        let add = rt.kernel_wgsl(shaders::ADD_K_WGSL, "main").unwrap();
        let sum = rt.kernel_wgsl(shaders::CHECKSUM_WGSL, "main").unwrap();
        let p = format!("{path:?}");
        let len = 64 * 1024;
        let push = [len as u32 / 4, 1u32];
        let check = |what: &str, v: &mut [u32], reason: MemoryReason| {
            let before = rt.stats();
            let err = rt
                .launch(&add, groups(v.len(), 64), (&mut *v, Push(&push)))
                .unwrap_err();
            match err {
                Error::UnsupportedMemory { reason: r, .. } if r == reason => {}
                e => panic!("{p} {what}: expected {reason:?}, got {e:?}"),
            }
            let d = rt.stats() - before;
            assert_eq!(
                (d.bytes_to_device, d.copied_to_device, d.launches),
                (0, 0, 0),
                "{p} {what}: {d}"
            );
        };
        // Read-only memory as a written binding: anonymous, and a file mapped read-only.
        let read_only = map(
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
        );
        read_only
            .iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = pattern(i, 9));
        // SAFETY: our own mapping, `len` bytes.
        let rc = unsafe { libc::mprotect(read_only.as_mut_ptr().cast(), len, libc::PROT_READ) };
        assert_eq!(rc, 0);
        check(
            "PROT_READ memory written",
            read_only,
            MemoryReason::ReadOnly,
        );
        assert!(
            (0..len / 4).all(|i| read_only[i] == pattern(i, 9)),
            "{p}: read-only data changed"
        );
        assert_eq!(
            rt.residency(read_only),
            Residency {
                host: len / 4096,
                shared: 0,
                device: 0
            }
        );
        let file = tempfile();
        file.set_len(len as u64).unwrap();
        let file_ro = map(len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd());
        check(
            "read-only file mapping written",
            file_ro,
            MemoryReason::ReadOnly,
        );
        assert!(file_ro.iter().all(|&x| x == 0), "{p}: the file changed");
        // `PROT_NONE` memory, even only read.
        let none = map(
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
        );
        let mut out = [0u32; 1];
        let e = rt
            .launch(
                &sum,
                groups(len / 4, 64),
                (&*none, &mut out[..], Push(&[len as u32 / 4])),
            )
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::UnsupportedMemory {
                    reason: MemoryReason::Protection,
                    ..
                }
            ),
            "{p}: PROT_NONE: {e:?}"
        );
        assert_eq!(out[0], 0, "{p}: the output changed");
    });
}

fn tempfile() -> std::fs::File {
    let path = std::env::temp_dir().join(format!(
        "vkhmm-errors-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    f
}

#[test]
fn a_launch_larger_than_the_budget_is_refused() {
    common::each_path_foreign_with(
        |path| Runtime::builder().transfer(path).budget(1 << 20),
        |rt, path| {
            let add = rt.kernel_wgsl(shaders::ADD_K_WGSL, "main").unwrap();
            let mut v = data(1 << 20); // 4 MiB
            let push = [v.len() as u32, 1u32];
            let before = rt.stats();
            let e = rt
                .launch(&add, groups(v.len(), 64), (&mut v, Push(&push)))
                .unwrap_err();
            assert!(
                matches!(e, Error::LaunchExceedsBudget { budget, .. } if budget == 1 << 20),
                "{path:?}: {e:?}"
            );
            assert_eq!((rt.stats() - before).bytes_to_device, 0);
            assert_eq!(rt.residency(&v).device, 0);
            assert!(
                (0..v.len()).all(|i| v[i] == pattern(i, 0)),
                "{path:?}: data changed"
            );
        },
    );
}

#[test]
fn no_matching_device_is_a_typed_error() {
    let e = Runtime::builder()
        .device("no such device, surely")
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::NoDevice { .. }), "{e:?}");
    assert!(
        e.to_string().contains("no such device"),
        "the error names the filter: {e}"
    );
    let e = Runtime::builder()
        .transfer(vkhmm::TransferPath::Direct)
        .chunk_size(1000)
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::InvalidConfig(_)), "{e:?}");
}

#[test]
fn no_driver_at_all_names_the_fix() {
    if std::env::var_os("VKHMM_CHILD").is_some() {
        let e = Runtime::new().unwrap_err();
        assert!(
            matches!(e, Error::NoDevice { .. } | Error::NoLoader(_)),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.contains("lavapipe") || text.contains("driver"),
            "the error names the fix: {text}"
        );
        return;
    }
    // The loader finds no ICD at all in a child process.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "no_driver_at_all_names_the_fix", "--nocapture"])
        .env("VKHMM_CHILD", "1")
        .env("VK_DRIVER_FILES", "/nonexistent/icd.json")
        .env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
