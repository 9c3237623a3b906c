//! Memory that cannot migrate, copied through at each launch (`--only copythrough`): what a
//! read binding of it adds to a launch, beside a `memcpy` of it; and the file histogram of
//! `examples/mmap_file.rs` on a 256 MiB file, beside the same kernel on a `Vec` already on
//! the device plus one upload of it, written by hand.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use vkhmm::{shaders, Push, Runtime};

use crate::bench::measure::{self, raw_ash, size_name, Budget, MIB};
use crate::bench::report::{Report, Row, Target, Unit};
use crate::bench::Progress;

/// The size of the read-binding figure.
const BINDING: usize = 64 * MIB;
/// The size of the file the histogram figure reads.
const FILE: usize = 256 * MIB;

/// Both figures on both paths.
pub(crate) fn copythrough(
    r: &mut Report,
    p: &Progress,
    quick: bool,
    direct: &Runtime,
    staged: &Runtime,
    vk: &raw_ash::Vk,
) -> anyhow::Result<()> {
    let b = Budget {
        min_iters: if quick { 2 } else { 5 },
        max_iters: if quick { 3 } else { 11 },
        time: Duration::from_secs(if quick { 1 } else { 4 }),
    };
    let shared = SharedMemory::new(BINDING)?;
    let file = TempFile::new(FILE)?;
    for (path, rt) in [("Direct", direct), ("Staged", staged)] {
        read_binding(r, p, b, path, rt, &shared)?;
        file_histogram(r, p, b, path, rt, vk, &file)?;
    }
    Ok(())
}

/// A launch that reads one word of a 64 MiB binding on a shared mapping (copied through),
/// beside the same launch on a `Vec` already on the device (nothing moves) plus a `memcpy`
/// of 64 MiB between warm buffers: copying through should cost no more than that copy.
fn read_binding(
    r: &mut Report,
    p: &Progress,
    b: Budget,
    path: &str,
    rt: &Runtime,
    shared: &SharedMemory,
) -> anyhow::Result<()> {
    let k = rt.kernel_wgsl(shaders::CHECKSUM_WGSL, "main")?;
    let resident: Vec<u32> = shared.words().to_vec();
    let launch = |src: &[u32]| -> anyhow::Result<Duration> {
        let mut out = [0u32; 1];
        let t = Instant::now();
        rt.launch(&k, [1, 1, 1], (src, &mut out[..], Push(&1u32)))?;
        let d = t.elapsed();
        anyhow::ensure!(out[0] == src[0], "checksum of one word: {}", out[0]);
        Ok(d)
    };
    let before = rt.stats();
    let mut memcpy = measure::Memcpy::new(BINDING);
    let mut copies = Vec::new();
    let (copied, res) = measure::sample_pair(
        b,
        || launch(shared.words()),
        || {
            copies.push(memcpy.run()?);
            launch(&resident)
        },
    )?;
    let d = rt.stats() - before;
    anyhow::ensure!(
        d.copied_to_device >= BINDING as u64 && d.bytes_to_device < 2 * BINDING as u64,
        "the shared mapping is copied through, the Vec migrates once: {d}"
    );
    let memcpy_ms = measure::Samples(copies).median().as_secs_f64() * 1e3;
    let (copied_ms, res_ms) = (ms(copied.median()), ms(res.median()));
    p.say(&format!(
        "copy-through read binding {} {path}: launch {copied_ms:.1} ms; on a resident Vec \
         {res_ms:.1} ms, memcpy {memcpy_ms:.1} ms",
        size_name(BINDING)
    ));
    r.extra.push((
        format!("copythrough_launch_{}_ms", path.to_lowercase()),
        copied_ms,
    ));
    r.extra.push((
        format!("copythrough_resident_launch_{}_ms", path.to_lowercase()),
        res_ms,
    ));
    r.rows.push(Row {
        key: format!("copythrough_read_{}", path.to_lowercase()),
        figure: format!(
            "launch reading {} of shared memory (copied through), {path}",
            size_name(BINDING)
        ),
        unit: Unit::Millis,
        vkhmm: copied_ms,
        baseline: "launch on a resident Vec + memcpy".into(),
        base: Some(res_ms + memcpy_ms),
        // The Staged path copies twice on lavapipe (into staging, then the device's copy,
        // which is the CPU's there): one memcpy per launch is the Direct path's figure.
        target: (path == "Direct").then_some(Target::AtMost(1.0)),
        note: format!("resident launch {res_ms:.1} ms, memcpy {memcpy_ms:.1} ms"),
    });
    Ok(())
}

/// The histogram of a 256 MiB file mapped read-only (`examples/mmap_file.rs`), beside the
/// same histogram of a `Vec` already on the device plus one upload of 256 MiB by hand
/// (a `memcpy` on the Direct path; staging and a device copy on the Staged path).
#[allow(clippy::too_many_arguments)]
fn file_histogram(
    r: &mut Report,
    p: &Progress,
    b: Budget,
    path: &str,
    rt: &Runtime,
    vk: &raw_ash::Vk,
    file: &TempFile,
) -> anyhow::Result<()> {
    let f = std::fs::File::open(&file.path)?;
    // SAFETY: the bench's own file; nothing writes it while it is mapped.
    let map = unsafe { memmap2::Mmap::map(&f) }?;
    let resident: Vec<u8> = map.to_vec();
    let want = vkhmm_examples::mmap_file::histogram(rt, &resident)?;
    let time = |bytes: &[u8]| -> anyhow::Result<Duration> {
        let t = Instant::now();
        let bins = vkhmm_examples::mmap_file::histogram(rt, bytes)?;
        let d = t.elapsed();
        anyhow::ensure!(bins == want, "histogram differs");
        Ok(d)
    };
    let mut upload: Box<dyn FnMut() -> anyhow::Result<Duration>> = if path == "Direct" {
        let mut m = measure::Memcpy::new(FILE);
        Box::new(move || m.run())
    } else {
        let mut s = raw_ash::StagedCopy::new(vk, FILE)?;
        Box::new(move || s.upload(vk))
    };
    let mut uploads = Vec::new();
    let (on_file, on_vec) = measure::sample_pair(
        b,
        || time(&map),
        || {
            uploads.push(upload()?);
            time(&resident)
        },
    )?;
    let upload_ms = measure::Samples(uploads).median().as_secs_f64() * 1e3;
    let (file_ms, vec_ms) = (ms(on_file.median()), ms(on_vec.median()));
    p.say(&format!(
        "file histogram {} {path}: mapped file {file_ms:.0} ms; resident Vec {vec_ms:.0} ms + \
         upload {upload_ms:.0} ms",
        size_name(FILE)
    ));
    r.rows.push(Row {
        key: format!("copythrough_file_histogram_{}", path.to_lowercase()),
        figure: format!(
            "histogram of a {} file mapped read-only, {path}",
            size_name(FILE)
        ),
        unit: Unit::Millis,
        vkhmm: file_ms,
        baseline: "resident Vec + one upload".into(),
        base: Some(vec_ms + upload_ms),
        target: Some(Target::AtMost(1.5)),
        note: format!("kernel on a resident Vec {vec_ms:.0} ms, upload {upload_ms:.0} ms"),
    });
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A shared memfd mapping of `len` bytes, filled: memory that cannot migrate.
struct SharedMemory {
    ptr: *mut u32,
    len: usize,
    _fd: OwnedFd,
}

impl SharedMemory {
    fn new(len: usize) -> anyhow::Result<SharedMemory> {
        use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
        use rustix::mm::{mmap, MapFlags, ProtFlags};
        let fd = memfd_create("vkhmm bench", MemfdFlags::CLOEXEC)?;
        ftruncate(&fd, len as u64)?;
        // SAFETY: a fresh shared mapping of our own memfd, at the kernel's choice of address.
        let p = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )
        }?;
        let m = SharedMemory {
            ptr: p.cast(),
            len,
            _fd: fd,
        };
        // SAFETY: `len` writable bytes are mapped at `ptr`, ours alone.
        let words = unsafe { std::slice::from_raw_parts_mut(m.ptr, len / 4) };
        words
            .iter_mut()
            .enumerate()
            .for_each(|(i, w)| *w = i as u32);
        Ok(m)
    }

    fn words(&self) -> &[u32] {
        // SAFETY: `len` readable bytes are mapped at `ptr` while `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len / 4) }
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: our own mapping; no borrow of it outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.len) };
    }
}

/// A file of `len` generated bytes in the temporary directory, removed on drop.
struct TempFile {
    path: std::path::PathBuf,
}

impl TempFile {
    fn new(len: usize) -> anyhow::Result<TempFile> {
        use std::io::Write;
        let path = std::env::temp_dir().join(format!("vkhmm-bench-{}.bin", std::process::id()));
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let chunk: Vec<u8> = (0..MIB as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        for _ in 0..len / MIB {
            out.write_all(&chunk)?;
        }
        out.flush()?;
        Ok(TempFile { path })
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
