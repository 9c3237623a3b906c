//! Shared set-up for the integration tests: a runtime on each transfer path.
//!
//! Every test runs on the real device (lavapipe in CI). When no device is found, a test
//! fails under `CI` and prints "skipped" elsewhere — never a silent pass.
#![allow(dead_code)]

use vkhmm::{Runtime, TransferPath};

/// Both transfer paths; tests loop over them.
pub const PATHS: [TransferPath; 2] = [TransferPath::Direct, TransferPath::Staged];

/// A runtime on `path` (Direct falls back to the device's choice where memory is not
/// host-visible), or `None` with a note when no device exists outside CI.
pub fn runtime(path: TransferPath) -> Option<Runtime> {
    runtime_with(Runtime::builder().transfer(path))
}

/// Builds `builder`, failing under CI when no device is found.
pub fn runtime_with(builder: vkhmm::RuntimeBuilder) -> Option<Runtime> {
    match builder.build() {
        Ok(rt) => Some(rt),
        Err(e @ (vkhmm::Error::NoLoader { .. } | vkhmm::Error::NoDevice { .. }))
            if std::env::var_os("CI").is_none() =>
        {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!("cannot create a runtime: {e}"),
    }
}

/// A fresh private anonymous read-write mapping of `len` bytes (page-aligned); the test
/// unmaps it (or remaps it) itself.
pub fn map_anon(len: usize) -> *mut libc::c_void {
    // SAFETY: asks the kernel for new memory; touches no existing mapping.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap of {len} bytes");
    p
}

/// Runs `f` on a runtime for each transfer path, under a [`Watchdog`].
pub fn each_path(f: impl FnMut(&Runtime, TransferPath)) {
    each_runtime(&PATHS, |path| Runtime::builder().transfer(path), f)
}

/// Runs `f` on the runtime `builder(path)` builds for each of `paths`, under a [`Watchdog`].
pub fn each_runtime(
    paths: &[TransferPath],
    builder: impl Fn(TransferPath) -> vkhmm::RuntimeBuilder,
    mut f: impl FnMut(&Runtime, TransferPath),
) {
    let _watchdog = Watchdog::arm_for_this_test(std::time::Duration::from_secs(300));
    for &path in paths {
        if let Some(rt) = runtime_with(builder(path)) {
            f(&rt, path);
        }
    }
}

/// Runs `f` like [`each_path`], for a test that needs memory the runtime did not allocate
/// (`Vec`, `mmap`) to migrate. The `signal` fault backend (`VKHMM_FAULT=signal`) copies such
/// memory through instead, by design: there it checks that a launch and a prefetch on a
/// `Vec` work that way, and says so.
pub fn each_path_foreign(f: impl FnMut(&Runtime, TransferPath)) {
    each_path_foreign_with(|path| Runtime::builder().transfer(path), f)
}

/// [`each_path_foreign`] on the runtimes `builder(path)` builds.
pub fn each_path_foreign_with(
    builder: impl Fn(TransferPath) -> vkhmm::RuntimeBuilder,
    mut f: impl FnMut(&Runtime, TransferPath),
) {
    each_runtime(&PATHS, builder, |rt, path| {
        if rt.fault_backend() == vkhmm::FaultBackend::Signal {
            assert_foreign_copied_through(rt, path);
            eprintln!("{path:?}: needs foreign memory to migrate; the signal backend copies it through (checked)");
        } else {
            f(rt, path)
        }
    })
}

/// Under the `signal` backend: a launch on a `Vec` gives the kernel's results with nothing
/// migrated (the bytes are copied through), and a prefetch moves nothing.
pub fn assert_foreign_copied_through(rt: &Runtime, path: TransferPath) {
    use vkhmm::{Location, Push};
    let k = rt
        .kernel_wgsl(vkhmm::shaders::FILL_INDEX_WGSL, "main")
        .unwrap();
    let n = 20_000;
    let mut v: Vec<u32> = (0..n).map(|i| pattern(i, 77)).collect();
    let fill = push::Fill {
        n: n as u32,
        mul: 3,
        add: 1,
    };
    let before = rt.stats();
    rt.launch(&k, groups(n, 64), (&mut v[..], Push(&fill)))
        .unwrap();
    rt.prefetch(&v, Location::Device).unwrap();
    let d = rt.stats() - before;
    assert_eq!(
        (d.bytes_to_device, d.copied_to_device, d.copied_to_host),
        (0, n as u64 * 4, n as u64 * 4),
        "{path:?}: {d}"
    );
    assert!(
        (0..n).all(|i| v[i] == i as u32 * 3 + 1),
        "{path:?}: the kernel's results are not in the Vec"
    );
    assert_eq!(rt.residency(&v).device, 0, "{path:?}");
}

/// The bundled kernels most tests launch: fill (index × mul + add), add k, copy, checksum.
pub struct Kernels {
    pub fill: vkhmm::Kernel,
    pub add: vkhmm::Kernel,
    pub copy: vkhmm::Kernel,
    pub sum: vkhmm::Kernel,
}

/// [`Kernels`] on `rt`.
pub fn kernels(rt: &Runtime) -> Kernels {
    use vkhmm::shaders;
    Kernels {
        fill: rt.kernel_wgsl(shaders::FILL_INDEX_WGSL, "main").unwrap(),
        add: rt.kernel_wgsl(shaders::ADD_K_WGSL, "main").unwrap(),
        copy: rt.kernel_wgsl(shaders::COPY_U32_WGSL, "main").unwrap(),
        sum: rt.kernel_wgsl(shaders::CHECKSUM_WGSL, "main").unwrap(),
    }
}

/// Whether this test process runs the `signal` fault backend (`VKHMM_FAULT=signal`).
pub fn signal_backend() -> bool {
    std::env::var("VKHMM_FAULT").is_ok_and(|v| v.trim().eq_ignore_ascii_case("signal"))
}

/// Workgroups for `n` elements at `per_group` invocations each, capped for grid-stride kernels.
pub fn groups(n: usize, per_group: usize) -> [u32; 3] {
    [n.div_ceil(per_group).clamp(1, 1024) as u32, 1, 1]
}

/// Element i of a pattern: a function of i and a seed, so a stale or misplaced page shows.
pub fn pattern(i: usize, seed: u32) -> u32 {
    (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed)
}

/// Aborts the test process when the test that armed it is still running after a limit: a
/// hang in the runtime must fail CI with a message saying where, never stall it. Disarmed on
/// drop.
pub struct Watchdog(#[allow(dead_code)] std::sync::mpsc::Sender<()>);

impl Watchdog {
    /// Arms a watchdog that prints `what()` (called when it fires) and aborts.
    pub fn arm(limit: std::time::Duration, what: impl FnOnce() -> String + Send + 'static) -> Self {
        let (disarm, armed) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = armed.recv_timeout(limit) {
                // Straight to stderr: the harness would capture `eprintln!`, and abort loses it.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "watchdog: still running after {limit:?}, a hang: {}",
                    what()
                );
                std::process::abort();
            }
        });
        Watchdog(disarm)
    }

    /// Arms a watchdog naming the calling test.
    pub fn arm_for_this_test(limit: std::time::Duration) -> Self {
        let name = std::thread::current().name().unwrap_or("a test").to_owned();
        Self::arm(limit, move || format!("`{name}`"))
    }
}

/// Push constants of the bundled test shaders (`shaders/*.wgsl`), shared by the tests.
/// A kernel writes `data[i] = i * 3 + 1`.
pub fn fill_3i_plus_1(rt: &Runtime, k: &Kernels, data: &mut [u32]) {
    let n = data.len() as u32;
    let fill = push::Fill { n, mul: 3, add: 1 };
    rt.launch(&k.fill, groups(data.len(), 256), (data, vkhmm::Push(&fill)))
        .unwrap();
}

/// A kernel adds `by` to every element.
pub fn add_to_each(rt: &Runtime, k: &Kernels, data: &mut [u32], by: u32) {
    let n = data.len() as u32;
    let add = push::AddK { n, k: by };
    rt.launch(&k.add, groups(data.len(), 256), (data, vkhmm::Push(&add)))
        .unwrap();
}

pub mod push {
    use bytemuck::{Pod, Zeroable};

    /// `n`: element count (`COPY_U32`, `CHECKSUM`).
    #[repr(C)]
    #[derive(Clone, Copy, Pod, Zeroable)]
    pub struct N {
        pub n: u32,
    }

    /// `FILL_INDEX`: element `i` becomes `i * mul + add`.
    #[repr(C)]
    #[derive(Clone, Copy, Pod, Zeroable)]
    pub struct Fill {
        pub n: u32,
        pub mul: u32,
        pub add: u32,
    }

    /// `ADD_K`: every element plus `k`.
    #[repr(C)]
    #[derive(Clone, Copy, Pod, Zeroable)]
    pub struct AddK {
        pub n: u32,
        pub k: u32,
    }
}
