//! The one error type of the crate.
//!
//! Every fallible public function returns [`Result<T>`](Result). Variants fall in three
//! families, kept apart so callers can react to each:
//!
//! - **environment**: no loader, no device, no fault backend, memory the runtime cannot
//!   mirror — fix the machine or the input, nothing was changed;
//! - **caller misuse**: argument count, access, sizes, alignment, dispatch size, invalid
//!   shader — a bug in the calling code, nothing was changed;
//! - **resources and the driver**: out of device or host memory, device lost, an unexpected
//!   Vulkan or OS failure — the raw `vk::Result` or errno is kept as the error's source.
//!
//! Conversions from raw codes live next to the code that calls the API (`device::map`,
//! `fault::uffd`), named after the codes they accept.

use std::fmt;

use ash::vk;

/// Result type of every fallible vkhmm call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a range of host memory cannot be mirrored.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemoryReason {
    /// The range is not (entirely) mapped in this process.
    NotMapped,
    /// The range is backed by a file (`mmap` of a file, or a program's read-only data).
    FileBacked,
    /// The range is a `MAP_SHARED` mapping: other processes could see stale data.
    Shared,
    /// The range is backed by hugetlbfs pages.
    HugeTlb,
    /// The range is not readable and writable by this process (e.g. `PROT_NONE`, read-only).
    Protection,
    /// The fault backend in use cannot serve this memory (e.g. the `signal` backend and
    /// memory that the runtime did not allocate).
    Backend(&'static str),
    /// The kernel refused to register the range with userfaultfd.
    Refused,
    /// `AccessInPlace`: the device cannot import host memory (no
    /// `VK_EXT_external_memory_host`).
    NoHostImport,
    /// `AccessInPlace`: the range does not start on the device's import alignment (or its
    /// last aligned block reaches past the mapping).
    ImportAlignment {
        /// `minImportedHostPointerAlignment` of the device, in bytes.
        align: u64,
    },
    /// The binding overlaps a range advised `AccessInPlace` without lying inside it.
    PartlyInPlace,
    /// `AccessInPlace`: the process already accesses the most ranges in place that vkhmm
    /// watches at once (64).
    TooManyInPlace,
    /// The range was unmapped or moved (`munmap`, `mremap`) while a launch or prefetch used
    /// it: the launch did not (or not entirely) happen, and nothing of it reached memory
    /// mapped there since.
    UnmappedWhileInUse,
}

impl fmt::Display for MemoryReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryReason::NotMapped => f.write_str("it is not mapped"),
            MemoryReason::FileBacked => f.write_str("it is backed by a file"),
            MemoryReason::Shared => f.write_str("it is a shared mapping"),
            MemoryReason::HugeTlb => f.write_str("it is backed by hugetlbfs pages"),
            MemoryReason::Protection => f.write_str("it is not readable and writable"),
            MemoryReason::Backend(why) => write!(f, "the fault backend cannot serve it: {why}"),
            MemoryReason::Refused => {
                f.write_str("the kernel refused to register it with userfaultfd")
            }
            MemoryReason::NoHostImport => f.write_str(
                "the device cannot access host memory in place (no VK_EXT_external_memory_host)",
            ),
            MemoryReason::ImportAlignment { align } => write!(
                f,
                "access in place needs a range that starts on a multiple of {align} bytes, \
                 within one mapping to the end of its last {align}-byte block"
            ),
            MemoryReason::PartlyInPlace => {
                f.write_str("it overlaps memory advised AccessInPlace without lying inside it")
            }
            MemoryReason::TooManyInPlace => {
                f.write_str("64 ranges are accessed in place already (the most vkhmm watches)")
            }
            MemoryReason::UnmappedWhileInUse => {
                f.write_str("it was unmapped or moved while the launch or prefetch used it")
            }
        }
    }
}

/// Everything that can go wrong in vkhmm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---------------------------------------------------------------- environment
    /// The Vulkan loader (`libvulkan.so.1`) could not be loaded.
    #[error(
        "no Vulkan loader (libvulkan.so.1) could be loaded; install one, e.g. \
         `apt-get install -y libvulkan1 mesa-vulkan-drivers`"
    )]
    NoLoader(#[source] ash::LoadingError),

    /// The loader found no usable Vulkan device (or none matched `VKHMM_DEVICE`).
    #[error(
        "no Vulkan device{}; install a GPU driver or Mesa's lavapipe \
         (`apt-get install -y mesa-vulkan-drivers`){}",
        filter.as_ref().map(|f| format!(" matches VKHMM_DEVICE={f:?}")).unwrap_or_default(),
        if available.is_empty() { String::new() } else { format!("; devices present: {}", available.join(", ")) }
    )]
    NoDevice {
        /// The `VKHMM_DEVICE` value (or builder filter) that matched nothing, if any.
        filter: Option<String>,
        /// Names of the devices the loader did report.
        available: Vec<String>,
    },

    /// The device lacks something vkhmm needs.
    #[error("device `{device}` cannot be used: {missing}")]
    DeviceUnsuitable {
        /// Device name.
        device: String,
        /// What is missing.
        missing: String,
    },

    /// No page-fault backend can run in this process.
    #[error("no fault backend is available: {reason}")]
    FaultBackendUnavailable {
        /// What was tried and why it failed.
        reason: String,
        /// The errno of the last attempt, if any.
        #[source]
        source: Option<std::io::Error>,
    },

    /// Host memory that cannot be mirrored was given to a launch or prefetch.
    #[error("memory at {addr:#x} (+{len} bytes) cannot be mirrored: {reason}")]
    UnsupportedMemory {
        /// Start of the offending range.
        addr: usize,
        /// Length of the offending range in bytes.
        len: usize,
        /// Why.
        reason: MemoryReason,
    },

    /// A configuration value (builder or environment variable) is invalid.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// The runtime was created by a parent process; Vulkan objects do not survive `fork()`.
    #[error("this Runtime belongs to process {owner}; it cannot be used in a forked child")]
    ForkedChild {
        /// The pid of the process that created the runtime.
        owner: u32,
    },

    // ---------------------------------------------------------------- caller misuse
    /// The shader source or SPIR-V is invalid.
    #[error("invalid shader: {0}")]
    InvalidShader(String),

    /// The requested entry point does not exist (or is not a compute entry point).
    #[error("no compute entry point `{entry}`; the module has {available:?}")]
    EntryPointNotFound {
        /// The entry point asked for.
        entry: String,
        /// Compute entry points the module does have.
        available: Vec<String>,
    },

    /// The kernel uses something vkhmm cannot bind (e.g. a binding outside set 0, a gap in
    /// the binding numbers, an image).
    #[error("unsupported kernel interface: {0}")]
    UnsupportedKernel(String),

    /// The number of buffer arguments differs from the kernel's bindings.
    #[error("the kernel has {expected} buffer bindings but the launch gave {given} buffers")]
    ArgumentCount {
        /// Bindings the kernel declares.
        expected: usize,
        /// Buffers the launch passed.
        given: usize,
    },

    /// A binding the kernel writes was given a shared borrow.
    #[error(
        "binding {binding} is read_write in the kernel but the launch gave a shared borrow (&); \
         pass `&mut`"
    )]
    NeedsMutable {
        /// The binding number.
        binding: u32,
    },

    /// Push-constant bytes do not match the kernel's push-constant block.
    #[error("the kernel declares {expected} bytes of push constants but the launch gave {given}")]
    PushConstantSize {
        /// Size of the kernel's push-constant block (0 if none).
        expected: u32,
        /// Bytes given (0 if no `Push` argument).
        given: usize,
    },

    /// A buffer argument has length zero.
    #[error("binding {binding} is an empty buffer")]
    EmptyBinding {
        /// The binding number.
        binding: u32,
    },

    /// A buffer argument is larger than the device can bind.
    #[error(
        "binding {binding} is {len} bytes, over the device's limit of {max} bytes per binding"
    )]
    BindingTooLarge {
        /// The binding number.
        binding: u32,
        /// Length in bytes.
        len: u64,
        /// The device limit (`maxStorageBufferRange` or `maxUniformBufferRange`).
        max: u64,
    },

    /// A buffer argument is not aligned as the device requires for a binding offset.
    #[error(
        "binding {binding} starts at {addr:#x}, not aligned to the device's {required}-byte \
         minimum buffer offset alignment"
    )]
    MisalignedBinding {
        /// The binding number.
        binding: u32,
        /// The buffer's address.
        addr: usize,
        /// The alignment the device requires.
        required: u64,
    },

    /// The workgroup count is zero or exceeds the device limit.
    #[error("dispatch of {groups:?} workgroups is outside the device's limits (1..={max:?})")]
    InvalidDispatch {
        /// The requested group counts.
        groups: [u32; 3],
        /// `maxComputeWorkGroupCount`.
        max: [u32; 3],
    },

    /// A kernel created by one runtime was launched on another.
    #[error("the kernel was created by another Runtime")]
    ForeignKernel,

    // ---------------------------------------------------------------- resources & driver
    /// The device budget cannot hold the request even after evicting everything else.
    #[error(
        "out of device memory: {needed} bytes needed, {in_use} of the {budget}-byte budget in use \
         after eviction"
    )]
    OutOfDeviceMemory {
        /// Bytes requested.
        needed: u64,
        /// The device budget.
        budget: u64,
        /// Bytes in use at the time of failure.
        in_use: u64,
    },

    /// One launch's own bindings need more device memory than the whole budget.
    #[error("the launch needs {needed} bytes of device memory, more than the whole budget of {budget} bytes")]
    LaunchExceedsBudget {
        /// Bytes the launch's bindings need on the device.
        needed: u64,
        /// The device budget.
        budget: u64,
    },

    /// Another [`Runtime`](crate::Runtime) kept moving the same memory to its own device
    /// while this one tried to take it over (the launch was retried a few times first).
    /// Nothing changed; launch again, or keep each buffer with one runtime.
    #[error("the memory is being migrated by another Runtime at the same time")]
    ContendedMemory,

    /// The host is out of memory (Vulkan `OUT_OF_HOST_MEMORY` or `ENOMEM`).
    #[error("out of host memory")]
    OutOfHostMemory,

    /// The Vulkan device was lost; the runtime cannot continue.
    #[error("the Vulkan device was lost")]
    DeviceLost,

    /// An unexpected Vulkan failure.
    #[error("Vulkan call {call} failed")]
    Vulkan {
        /// The Vulkan function that failed.
        call: &'static str,
        /// The raw result code.
        #[source]
        source: vk::Result,
    },

    /// The device allocator failed for a reason other than memory exhaustion.
    #[error("device allocator: {0}")]
    Allocator(String),

    /// An unexpected operating-system failure.
    #[error("{op} failed")]
    Os {
        /// What was being done.
        op: &'static str,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an errno from an OS call.
    pub(crate) fn os(op: &'static str, source: impl Into<std::io::Error>) -> Self {
        let source = source.into();
        if source.raw_os_error() == Some(libc_enomem()) {
            return Error::OutOfHostMemory;
        }
        Error::Os { op, source }
    }

    /// True for errors caused by the calling code rather than the machine or the driver.
    pub fn is_misuse(&self) -> bool {
        matches!(
            self,
            Error::InvalidShader(_)
                | Error::EntryPointNotFound { .. }
                | Error::UnsupportedKernel(_)
                | Error::ArgumentCount { .. }
                | Error::NeedsMutable { .. }
                | Error::PushConstantSize { .. }
                | Error::EmptyBinding { .. }
                | Error::BindingTooLarge { .. }
                | Error::MisalignedBinding { .. }
                | Error::InvalidDispatch { .. }
                | Error::ForeignKernel
                | Error::InvalidConfig(_)
        )
    }
}

const fn libc_enomem() -> i32 {
    linux_raw_sys::errno::ENOMEM as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_send_sync_and_static() {
        fn check<T: Send + Sync + 'static>() {}
        check::<Error>();
    }

    #[test]
    fn no_device_message_names_the_fix_and_the_filter() {
        let e = Error::NoDevice {
            filter: Some("nvidia".into()),
            available: vec!["llvmpipe".into()],
        };
        let s = e.to_string();
        assert!(s.contains("VKHMM_DEVICE=\"nvidia\""), "{s}");
        assert!(s.contains("mesa-vulkan-drivers"), "{s}");
        assert!(s.contains("llvmpipe"), "{s}");
    }

    #[test]
    fn enomem_maps_to_out_of_host_memory() {
        let e = Error::os("mmap", std::io::Error::from_raw_os_error(libc_enomem()));
        assert!(matches!(e, Error::OutOfHostMemory));
        assert!(Error::InvalidShader(String::new()).is_misuse());
        assert!(!Error::DeviceLost.is_misuse());
    }
}
