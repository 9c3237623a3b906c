//! The Python extension module `vkhmm`: unified memory for NumPy arrays (and any object with a
//! C-contiguous buffer) on any Vulkan device.
//!
//! Arrays are bindings in order; whether each is read or written comes from the kernel, and a
//! written binding must be a writeable buffer. The arrays' own memory is what the kernel uses:
//! NumPy's large arrays are private anonymous memory, which migrates like a `Vec`; anything
//! else is copied through (docs/semantics.md). Launches release the GIL, so other Python
//! threads run meanwhile (a thread touching an array the kernel writes waits for it, as any
//! thread does).
//!
//! A buffer is held (`PyObject_GetBuffer`) from the call until the launch is settled — for
//! `launch_async`, until its `Pending` completes, on the thread that runs it — so an array
//! cannot be freed or resized under a kernel.

use std::ffi::c_int;
use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

use pyo3::exceptions::{PyException, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::{create_exception, ffi};
use vkhmm::{Advice, DynArgs, Location, PushBytes, Runtime as RustRuntime, TransferPath};

create_exception!(
    vkhmm,
    Error,
    PyException,
    "An error of the vkhmm runtime (the crate's message)."
);
create_exception!(
    vkhmm,
    UnsupportedMemoryError,
    Error,
    "Memory a launch, prefetch or advice cannot use (unmapped, PROT_NONE, read-only and written, ...)."
);
create_exception!(
    vkhmm,
    DeviceError,
    Error,
    "No Vulkan loader or device, an unsuitable device, or a Vulkan call that failed."
);
create_exception!(
    vkhmm,
    OutOfMemoryError,
    Error,
    "Device or host memory ran out, or a launch needs more than the device budget."
);
create_exception!(
    vkhmm,
    ArgumentError,
    PyValueError,
    "Bad arguments: wrong count, push-constant size, read-only array for a written binding, a kernel that does not compile..."
);

/// The Python exception for a crate error, with the crate's message.
fn to_py(e: vkhmm::Error) -> PyErr {
    use vkhmm::Error as E;
    let msg = e.to_string();
    if e.is_misuse() {
        return ArgumentError::new_err(msg);
    }
    match e {
        E::UnsupportedMemory { .. } => UnsupportedMemoryError::new_err(msg),
        E::NoLoader(_)
        | E::NoDevice { .. }
        | E::DeviceUnsuitable { .. }
        | E::DeviceLost
        | E::Vulkan { .. } => DeviceError::new_err(msg),
        E::OutOfDeviceMemory { .. } | E::LaunchExceedsBudget { .. } | E::OutOfHostMemory => {
            OutOfMemoryError::new_err(msg)
        }
        _ => Error::new_err(msg),
    }
}

/// A buffer of a Python object, held until dropped.
struct View {
    buf: ffi::Py_buffer,
}

// SAFETY: a `Py_buffer` is plain data plus an owned reference; it is released with the GIL
// held (`Drop`), and the memory it describes stays valid while it is held, from any thread.
unsafe impl Send for View {}
// SAFETY: through `&View` only the address and length are read (plain integers).
unsafe impl Sync for View {}

impl View {
    /// The C-contiguous buffer of `obj`, writable if `write`; `what` names it in errors.
    fn get(obj: &Bound<'_, PyAny>, write: bool, what: &str) -> PyResult<View> {
        let contiguous = ffi::PyBUF_C_CONTIGUOUS;
        let flags = contiguous | if write { ffi::PyBUF_WRITABLE } else { 0 };
        if let Some(v) = Self::try_get(obj, flags) {
            return Ok(v);
        }
        let ty = obj
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default();
        // Tell the three failures apart, for a message that says what to do.
        let msg = if Self::try_get(obj, ffi::PyBUF_SIMPLE | ffi::PyBUF_STRIDES).is_none() {
            format!("{what}: expected an array (an object with the buffer protocol), got {ty}")
        } else if Self::try_get(obj, contiguous).is_none() {
            format!(
                "{what}: the array is not C-contiguous; pass np.ascontiguousarray(a) (a copy) \
                 or a contiguous slice"
            )
        } else {
            format!(
                "{what}: the kernel writes this binding, but the array is read-only \
                 (a.flags.writeable is False)"
            )
        };
        Err(ArgumentError::new_err(msg))
    }

    fn try_get(obj: &Bound<'_, PyAny>, flags: c_int) -> Option<View> {
        let mut buf = MaybeUninit::<ffi::Py_buffer>::zeroed();
        // SAFETY: `obj` is a live object (the GIL is held); `buf` is writable memory for one
        // `Py_buffer`, filled on success.
        let rc = unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), buf.as_mut_ptr(), flags) };
        if rc != 0 {
            // SAFETY: the GIL is held; clears the error the failed call set.
            unsafe { ffi::PyErr_Clear() };
            return None;
        }
        // SAFETY: filled by the successful call.
        let buf = unsafe { buf.assume_init() };
        Some(View { buf })
    }

    fn addr(&self) -> usize {
        self.buf.buf as usize
    }

    fn len(&self) -> usize {
        self.buf.len as usize
    }
}

impl Drop for View {
    fn drop(&mut self) {
        // SAFETY: the buffer was obtained by `PyObject_GetBuffer` and is released once, with
        // the GIL held.
        Python::attach(|_| unsafe { ffi::PyBuffer_Release(&mut self.buf) });
    }
}

/// A compiled kernel of a [`Runtime`].
#[pyclass(module = "vkhmm", frozen)]
struct Kernel {
    inner: Arc<vkhmm::Kernel>,
}

#[pymethods]
impl Kernel {
    /// The bindings in order, each "read" or "read_write".
    #[getter]
    fn bindings(&self) -> Vec<&'static str> {
        self.inner
            .info()
            .bindings
            .iter()
            .map(|b| match b.access {
                vkhmm::shader::Access::ReadWrite => "read_write",
                _ => "read",
            })
            .collect()
    }

    /// The size in bytes of the push-constant block (0: none).
    #[getter]
    fn push_size(&self) -> u32 {
        self.inner.info().push_constant_size
    }

    fn __repr__(&self) -> String {
        let i = self.inner.info();
        format!(
            "Kernel({:?}, bindings={:?}, push_size={})",
            i.entry,
            self.bindings(),
            i.push_constant_size
        )
    }
}

/// The arguments of one launch, held: their buffers and push-constant bytes.
struct Launch {
    views: Vec<(View, bool)>,
    push: Vec<u8>,
    groups: [u32; 3],
    kernel: Arc<vkhmm::Kernel>,
}

impl Launch {
    /// Takes the buffers of `arrays` (writable where the kernel writes) and the bytes of
    /// `push`.
    fn new(
        kernel: &Kernel,
        groups: &Bound<'_, PyAny>,
        arrays: &Bound<'_, PyTuple>,
        push: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Launch> {
        let g: Vec<u32> = if let Ok(n) = groups.extract::<u32>() {
            vec![n]
        } else {
            groups
                .extract()
                .map_err(|_| ArgumentError::new_err("groups: an int or a tuple of 1 to 3 ints"))?
        };
        if g.is_empty() || g.len() > 3 {
            return Err(ArgumentError::new_err(
                "groups: an int or a tuple of 1 to 3 ints",
            ));
        }
        let groups = [g[0], *g.get(1).unwrap_or(&1), *g.get(2).unwrap_or(&1)];
        let info = kernel.inner.info();
        let mut views = Vec::with_capacity(arrays.len());
        for (i, a) in arrays.iter().enumerate() {
            let write = info
                .bindings
                .get(i)
                .is_some_and(|b| b.access == vkhmm::shader::Access::ReadWrite);
            let what = format!("argument {i} (binding {i})");
            views.push((View::get(&a, write, &what)?, write));
        }
        let push = match push {
            None => Vec::new(),
            Some(p) => {
                let v = View::get(p, false, "push")?;
                // SAFETY: the view holds `len` readable bytes at `addr` while it lives.
                unsafe { std::slice::from_raw_parts(v.addr() as *const u8, v.len()) }.to_vec()
            }
        };
        Ok(Launch {
            views,
            push,
            groups,
            kernel: Arc::clone(&kernel.inner),
        })
    }

    /// Runs it on `rt` (no GIL needed: only the held buffers are touched).
    fn run(&self, rt: &RustRuntime) -> vkhmm::Result<()> {
        enum Slice<'a> {
            Read(&'a [u8]),
            Write(&'a mut [u8]),
        }
        let slices: Vec<Slice<'_>> = self
            .views
            .iter()
            .map(|(v, write)| {
                let (p, n) = (v.addr(), v.len());
                // SAFETY: each view holds its buffer (readable, and writable where `write`)
                // until `self` is dropped, after this call; one slice per buffer.
                unsafe {
                    if *write {
                        Slice::Write(std::slice::from_raw_parts_mut(p as *mut u8, n))
                    } else {
                        Slice::Read(std::slice::from_raw_parts(p as *const u8, n))
                    }
                }
            })
            .collect();
        let push = PushBytes(&self.push);
        let mut list: Vec<&dyn vkhmm::Arg> = slices
            .iter()
            .map(|s| match s {
                Slice::Read(r) => r as &dyn vkhmm::Arg,
                Slice::Write(w) => w as &dyn vkhmm::Arg,
            })
            .collect();
        if !self.push.is_empty() {
            list.push(&push);
        }
        rt.launch(&self.kernel, self.groups, DynArgs(&list))
    }
}

/// A launch started by `Runtime.launch_async`: it holds the arrays until it completes.
#[pyclass(module = "vkhmm")]
struct Pending {
    thread: Mutex<Option<std::thread::JoinHandle<vkhmm::Result<()>>>>,
}

#[pymethods]
impl Pending {
    /// Waits for the launch (without the GIL) and raises its error, if any.
    fn wait(&self, py: Python<'_>) -> PyResult<()> {
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        let Some(handle) = handle else {
            return Ok(()); // waited for already
        };
        match py.detach(move || handle.join()) {
            Ok(r) => r.map_err(to_py),
            Err(_) => Err(PyRuntimeError::new_err("the launch thread panicked")),
        }
    }

    /// Whether the launch has completed (its results are in the arrays).
    fn done(&self) -> bool {
        self.thread
            .lock()
            .map(|t| t.as_ref().is_none_or(|h| h.is_finished()))
            .unwrap_or(true)
    }
}

/// Memory from `Runtime.alloc`: page-aligned, runtime-owned (it migrates under either fault
/// backend); exposes its bytes through the buffer protocol.
#[pyclass(module = "vkhmm")]
struct ManagedBuffer {
    inner: vkhmm::Managed<u8>,
}

#[pymethods]
impl ManagedBuffer {
    /// # Safety
    ///
    /// Called by Python with a `Py_buffer` to fill.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let (ptr, len) = {
            let mut me = slf.borrow_mut();
            (me.inner.as_mut_ptr(), me.inner.len())
        };
        // SAFETY: `view` is Python's to fill; the bytes live as long as `slf`, which the view
        // keeps a reference to.
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(view, slf.as_ptr(), ptr.cast(), len as isize, 0, flags)
        };
        if rc != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }
}

/// The unified-memory runtime on one Vulkan device.
#[pyclass(module = "vkhmm", frozen)]
struct Runtime {
    inner: Arc<RustRuntime>,
}

fn location(to: &str) -> PyResult<Location> {
    match to {
        "device" => Ok(Location::Device),
        "host" => Ok(Location::Host),
        _ => Err(ArgumentError::new_err(format!(
            "location {to:?}: \"device\" or \"host\""
        ))),
    }
}

#[pymethods]
impl Runtime {
    /// A runtime on the default device (or the one `device` or `VKHMM_DEVICE` names).
    /// `transfer`: "direct" or "staged"; `budget`: device bytes before eviction; `trace`: a
    /// path to write a trace to (docs/tracing.md).
    #[new]
    #[pyo3(signature = (device=None, transfer=None, budget=None, trace=None))]
    fn new(
        py: Python<'_>,
        device: Option<String>,
        transfer: Option<&str>,
        budget: Option<u64>,
        trace: Option<std::path::PathBuf>,
    ) -> PyResult<Self> {
        let mut b = RustRuntime::builder();
        if let Some(d) = device {
            b = b.device(d);
        }
        match transfer {
            None => {}
            Some("direct") => b = b.transfer(TransferPath::Direct),
            Some("staged") => b = b.transfer(TransferPath::Staged),
            Some(t) => {
                return Err(ArgumentError::new_err(format!(
                    "transfer {t:?}: \"direct\" or \"staged\""
                )))
            }
        }
        if let Some(n) = budget {
            b = b.budget(n);
        }
        if let Some(p) = trace {
            b = b.trace(p);
        }
        let rt = py.detach(move || b.build()).map_err(to_py)?;
        Ok(Runtime {
            inner: Arc::new(rt),
        })
    }

    /// Compiles a WGSL kernel (`entry`: its `@compute` function).
    #[pyo3(signature = (source, entry = "main"))]
    fn kernel_wgsl(&self, py: Python<'_>, source: &str, entry: &str) -> PyResult<Kernel> {
        let k = py
            .detach(|| self.inner.kernel_wgsl(source, entry))
            .map_err(to_py)?;
        Ok(Kernel { inner: Arc::new(k) })
    }

    /// Loads a SPIR-V kernel from its words (any buffer of 32-bit words, or bytes).
    #[pyo3(signature = (spirv, entry = "main"))]
    fn kernel_spirv(&self, spirv: &Bound<'_, PyAny>, entry: &str) -> PyResult<Kernel> {
        let v = View::get(spirv, false, "spirv")?;
        if v.len() % 4 != 0 {
            return Err(ArgumentError::new_err(
                "spirv: a whole number of 32-bit words",
            ));
        }
        // SAFETY: the view holds `len` readable bytes while it lives.
        let bytes = unsafe { std::slice::from_raw_parts(v.addr() as *const u8, v.len()) };
        let words: Vec<u32> = bytes
            .chunks_exact(4)
            .map(|w| u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let k = self.inner.kernel_spirv(&words, entry).map_err(to_py)?;
        Ok(Kernel { inner: Arc::new(k) })
    }

    /// Runs `kernel` over `groups` workgroups with `arrays` bound in order and returns when
    /// its results are in the arrays. `push`: the push constants (any buffer of exactly the
    /// kernel's push-constant size, e.g. a NumPy array or a `struct.pack` result).
    #[pyo3(signature = (kernel, groups, *arrays, push = None))]
    fn launch(
        &self,
        py: Python<'_>,
        kernel: &Kernel,
        groups: &Bound<'_, PyAny>,
        arrays: &Bound<'_, PyTuple>,
        push: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let l = Launch::new(kernel, groups, arrays, push)?;
        let rt = &self.inner;
        py.detach(|| l.run(rt)).map_err(to_py)
    }

    /// Starts the launch on a thread of its own and returns a `Pending` at once; the arrays
    /// are held until it completes (`Pending.wait()` raises its error).
    #[pyo3(signature = (kernel, groups, *arrays, push = None))]
    fn launch_async(
        &self,
        kernel: &Kernel,
        groups: &Bound<'_, PyAny>,
        arrays: &Bound<'_, PyTuple>,
        push: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Pending> {
        let l = Launch::new(kernel, groups, arrays, push)?;
        let rt = Arc::clone(&self.inner);
        let thread = std::thread::Builder::new()
            .name("vkhmm-py-launch".into())
            .spawn(move || l.run(&rt))
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start a thread: {e}")))?;
        Ok(Pending {
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Moves `array`'s pages to "device" or "host" now.
    fn prefetch(&self, py: Python<'_>, array: &Bound<'_, PyAny>, to: &str) -> PyResult<()> {
        let to = location(to)?;
        let v = View::get(array, false, "array")?;
        let (addr, len) = (v.addr(), v.len());
        py.detach(|| {
            // SAFETY: the view holds the bytes while the call runs.
            let s = unsafe { std::slice::from_raw_parts(addr as *const u8, len) };
            self.inner.prefetch(s, to)
        })
        .map_err(to_py)
    }

    /// Advice for `array`'s pages: "read_mostly", "preferred_host", "preferred_device",
    /// "access_in_place" or "unset" (docs/semantics.md, "Advice").
    fn advise(&self, py: Python<'_>, array: &Bound<'_, PyAny>, advice: &str) -> PyResult<()> {
        let advice = match advice {
            "read_mostly" => Advice::ReadMostly,
            "preferred_host" => Advice::PreferredLocation(Location::Host),
            "preferred_device" => Advice::PreferredLocation(Location::Device),
            "access_in_place" => Advice::AccessInPlace,
            "unset" => Advice::Unset,
            a => {
                return Err(ArgumentError::new_err(format!(
                    "advice {a:?}: \"read_mostly\", \"preferred_host\", \"preferred_device\", \
                     \"access_in_place\" or \"unset\""
                )))
            }
        };
        let v = View::get(array, false, "array")?;
        let (addr, len) = (v.addr(), v.len());
        py.detach(|| {
            // SAFETY: the view holds the bytes while the call runs.
            let s = unsafe { std::slice::from_raw_parts(addr as *const u8, len) };
            self.inner.advise(s, advice)
        })
        .map_err(to_py)
    }

    /// Where `array`'s pages are: {"host": n, "shared": n, "device": n} (pages of 4 KiB),
    /// counted without touching any.
    fn residency<'py>(
        &self,
        py: Python<'py>,
        array: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let v = View::get(array, false, "array")?;
        // SAFETY: the view holds the bytes; residency reads none of them.
        let s = unsafe { std::slice::from_raw_parts(v.addr() as *const u8, v.len()) };
        let r = self.inner.residency(s);
        let d = PyDict::new(py);
        d.set_item("host", r.host)?;
        d.set_item("shared", r.shared)?;
        d.set_item("device", r.device)?;
        Ok(d)
    }

    /// What the runtime has moved and served so far, as a dict of the `Stats` fields
    /// (`kernel_time` in seconds).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let d = PyDict::new(py);
        d.set_item("launches", s.launches)?;
        d.set_item("kernel_time", s.kernel_time.as_secs_f64())?;
        d.set_item("cpu_faults", s.cpu_faults)?;
        d.set_item("deferred_faults", s.deferred_faults)?;
        d.set_item("bytes_to_device", s.bytes_to_device)?;
        d.set_item("bytes_to_host", s.bytes_to_host)?;
        d.set_item("bytes_zero_filled", s.bytes_zero_filled)?;
        d.set_item("copied_to_device", s.copied_to_device)?;
        d.set_item("copied_to_host", s.copied_to_host)?;
        d.set_item("evictions", s.evictions)?;
        d.set_item("prefetches", s.prefetches)?;
        d.set_item("thrash_settled", s.thrash_settled)?;
        d.set_item("device_bytes_in_use", s.device_bytes_in_use)?;
        d.set_item("device_budget", s.device_budget)?;
        Ok(d)
    }

    /// A NumPy array of `shape` and `dtype` (zeroed) in runtime-owned, page-aligned memory,
    /// which migrates under either fault backend.
    #[pyo3(signature = (shape, dtype = None))]
    fn alloc<'py>(
        &self,
        py: Python<'py>,
        shape: &Bound<'py, PyAny>,
        dtype: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let np = py.import("numpy")?;
        let dtype = match dtype {
            Some(d) => np.getattr("dtype")?.call1((d,))?,
            None => np.getattr("dtype")?.call1(("float32",))?,
        };
        let itemsize: usize = dtype.getattr("itemsize")?.extract()?;
        let dims: Vec<usize> = match shape.extract::<usize>() {
            Ok(n) => vec![n],
            Err(_) => shape.extract()?,
        };
        let count: usize = dims.iter().product();
        let bytes = count.max(1) * itemsize;
        let m = self.inner.alloc::<u8>(bytes).map_err(to_py)?;
        let buf = Bound::new(py, ManagedBuffer { inner: m })?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("dtype", &dtype)?;
        kwargs.set_item("count", count)?;
        let a = np.getattr("frombuffer")?.call((buf,), Some(&kwargs))?;
        a.call_method1("reshape", (PyTuple::new(py, dims)?,))
    }

    /// The device: name, type, API version, driver, transfer path, budget, limits.
    fn device_info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let i = self.inner.device_info();
        let d = PyDict::new(py);
        d.set_item("name", &i.name)?;
        d.set_item("type", format!("{}", i.device_type))?;
        d.set_item("api_version", i.api_version)?;
        d.set_item("driver", i.driver_name.clone())?;
        d.set_item("transfer_path", format!("{}", i.transfer_path))?;
        d.set_item("budget", i.budget)?;
        d.set_item("max_binding_bytes", i.limits.max_storage_buffer_range)?;
        d.set_item("max_groups", i.limits.max_compute_work_group_count)?;
        d.set_item("fault_backend", format!("{}", self.inner.fault_backend()))?;
        Ok(d)
    }

    /// The same saxpy launch from Rust, on Rust `Vec`s of `n` floats: one untimed launch
    /// (the arrays move to the device), then `runs` timed ones; their seconds (for the
    /// benchmark that compares them with launches from Python).
    fn _saxpy_from_rust(
        &self,
        py: Python<'_>,
        kernel: &Kernel,
        n: usize,
        runs: usize,
    ) -> PyResult<Vec<f64>> {
        let rt = &self.inner;
        py.detach(|| {
            let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let mut y = vec![1.0f32; n];
            let push = (2.0f32.to_bits(), n as u32);
            let push = [push.0, push.1];
            let groups = [(n as u32).div_ceil(256).clamp(1, 65535), 1, 1];
            // Untimed: the arrays move to the device, as the Python side's did before.
            rt.launch(&kernel.inner, groups, (&x, &mut y, vkhmm::Push(&push)))?;
            let mut out = Vec::with_capacity(runs);
            for _ in 0..runs {
                let t = std::time::Instant::now();
                rt.launch(&kernel.inner, groups, (&x, &mut y, vkhmm::Push(&push)))?;
                out.push(t.elapsed().as_secs_f64());
            }
            Ok(out)
        })
        .map_err(to_py)
    }
}

/// unified memory for NumPy arrays on any Vulkan device (vkhmm, user-space HMM)
#[pymodule]
#[pyo3(name = "vkhmm")]
fn vkhmm_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Runtime>()?;
    m.add_class::<Kernel>()?;
    m.add_class::<Pending>()?;
    m.add_class::<ManagedBuffer>()?;
    m.add("Error", py.get_type::<Error>())?;
    m.add(
        "UnsupportedMemoryError",
        py.get_type::<UnsupportedMemoryError>(),
    )?;
    m.add("DeviceError", py.get_type::<DeviceError>())?;
    m.add("OutOfMemoryError", py.get_type::<OutOfMemoryError>())?;
    m.add("ArgumentError", py.get_type::<ArgumentError>())?;
    m.add("SAXPY_WGSL", vkhmm::shaders::SAXPY_WGSL)?;
    Ok(())
}
