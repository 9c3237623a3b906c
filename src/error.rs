//! The one error type of the crate.
//!
//! Every fallible public function returns [`Result<T>`](Result). Variants fall in three
//! families, kept apart so callers can react to each:
//!
//! - **environment**: no loader, no device, no fault backend, memory the runtime cannot
//!   mirror — fix the machine or the input, nothing was changed;
//! - **caller misuse**: argument count, access, sizes, alignment, dispatch size, invalid
//!   shader, a fault backend other than the running one — a bug in the calling code,
//!   nothing was changed;
//! - **resources and the driver**: out of device or host memory, device lost, an unexpected
//!   Vulkan or OS failure — the raw Vulkan result code ([`VulkanCode`]) or the errno is kept.
//!
//! No variant carries a type of the Vulkan bindings vkhmm is built on: a Vulkan result is a
//! plain [`VulkanCode`], and the loader's failure is a boxed [`std::error::Error`] source.
//! Conversions from raw codes live next to the code that calls the API (`device::map`,
//! `trap::uffd`), named after the codes they accept.

use std::fmt;

use ash::vk;

use crate::FaultBackend;

/// Result type of every fallible vkhmm call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a range of host memory cannot be used: by a launch at all (`ReadOnly`, `Protection`,
/// `NotMapped`, ...), or, for advice, why it cannot migrate (`FileBacked`, `Shared`, ...;
/// a launch copies such memory through).
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
    /// A kernel writes the range, but this process cannot (`PROT_READ`, a read-only file
    /// mapping): its results would have nowhere to go.
    ReadOnly,
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
            MemoryReason::ReadOnly => {
                f.write_str("a kernel writes it, but the process may only read it")
            }
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
    NoLoader(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),

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

    /// Host memory a launch, prefetch or advice cannot use (see [`MemoryReason`]).
    #[error("memory at {addr:#x} (+{len} bytes) cannot be used: {reason}")]
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
        "binding {binding} is {len} bytes, over the device's limit of {max} bytes per binding; \
         launch the kernel once per slice of at most that size instead, e.g. over \
         `data.chunks({max} / size_of::<T>())` (docs/semantics.md, \"Large buffers\")"
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

    /// A [`RuntimeBuilder`](crate::RuntimeBuilder) named a fault backend other than the one
    /// this process runs: the first runtime of a process chooses it for every runtime
    /// ([`RuntimeBuilder::fault_backend`](crate::RuntimeBuilder::fault_backend)).
    #[error(
        "the {requested} fault backend was asked for, but this process already runs the \
         {running} backend (its first runtime chose it; there is one per process)"
    )]
    FaultBackendMismatch {
        /// The backend the builder named.
        requested: FaultBackend,
        /// The backend the process runs.
        running: FaultBackend,
    },

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
    #[error("Vulkan call {call} failed: {code}")]
    Vulkan {
        /// The Vulkan function that failed.
        call: &'static str,
        /// The result code it returned.
        code: VulkanCode,
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
                | Error::FaultBackendMismatch { .. }
                | Error::InvalidConfig(_)
        )
    }
}

/// A Vulkan result code (`VkResult`) as a failed call returned it: a plain value, with
/// its name from the Vulkan specification when it is one vkhmm knows.
///
/// `Display` gives the name and the value, e.g. `VK_ERROR_DEVICE_LOST (-4)`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct VulkanCode(i32);

impl VulkanCode {
    /// The code of a raw result.
    pub(crate) fn of(result: vk::Result) -> Self {
        VulkanCode(result.as_raw())
    }

    /// The raw `VkResult` value (negative for errors, e.g. -2 for
    /// `VK_ERROR_OUT_OF_DEVICE_MEMORY`).
    pub const fn raw(self) -> i32 {
        self.0
    }

    /// The code's name in the Vulkan specification (`"VK_ERROR_DEVICE_LOST"`), or `None`
    /// for a code of an extension vkhmm does not use.
    pub fn name(self) -> Option<&'static str> {
        Some(match vk::Result::from_raw(self.0) {
            vk::Result::SUCCESS => "VK_SUCCESS",
            vk::Result::NOT_READY => "VK_NOT_READY",
            vk::Result::TIMEOUT => "VK_TIMEOUT",
            vk::Result::EVENT_SET => "VK_EVENT_SET",
            vk::Result::EVENT_RESET => "VK_EVENT_RESET",
            vk::Result::INCOMPLETE => "VK_INCOMPLETE",
            vk::Result::ERROR_OUT_OF_HOST_MEMORY => "VK_ERROR_OUT_OF_HOST_MEMORY",
            vk::Result::ERROR_OUT_OF_DEVICE_MEMORY => "VK_ERROR_OUT_OF_DEVICE_MEMORY",
            vk::Result::ERROR_INITIALIZATION_FAILED => "VK_ERROR_INITIALIZATION_FAILED",
            vk::Result::ERROR_DEVICE_LOST => "VK_ERROR_DEVICE_LOST",
            vk::Result::ERROR_MEMORY_MAP_FAILED => "VK_ERROR_MEMORY_MAP_FAILED",
            vk::Result::ERROR_LAYER_NOT_PRESENT => "VK_ERROR_LAYER_NOT_PRESENT",
            vk::Result::ERROR_EXTENSION_NOT_PRESENT => "VK_ERROR_EXTENSION_NOT_PRESENT",
            vk::Result::ERROR_FEATURE_NOT_PRESENT => "VK_ERROR_FEATURE_NOT_PRESENT",
            vk::Result::ERROR_INCOMPATIBLE_DRIVER => "VK_ERROR_INCOMPATIBLE_DRIVER",
            vk::Result::ERROR_TOO_MANY_OBJECTS => "VK_ERROR_TOO_MANY_OBJECTS",
            vk::Result::ERROR_FORMAT_NOT_SUPPORTED => "VK_ERROR_FORMAT_NOT_SUPPORTED",
            vk::Result::ERROR_FRAGMENTED_POOL => "VK_ERROR_FRAGMENTED_POOL",
            vk::Result::ERROR_UNKNOWN => "VK_ERROR_UNKNOWN",
            vk::Result::ERROR_OUT_OF_POOL_MEMORY => "VK_ERROR_OUT_OF_POOL_MEMORY",
            vk::Result::ERROR_INVALID_EXTERNAL_HANDLE => "VK_ERROR_INVALID_EXTERNAL_HANDLE",
            vk::Result::ERROR_FRAGMENTATION => "VK_ERROR_FRAGMENTATION",
            vk::Result::ERROR_INVALID_OPAQUE_CAPTURE_ADDRESS => {
                "VK_ERROR_INVALID_OPAQUE_CAPTURE_ADDRESS"
            }
            vk::Result::PIPELINE_COMPILE_REQUIRED => "VK_PIPELINE_COMPILE_REQUIRED",
            vk::Result::ERROR_INVALID_SHADER_NV => "VK_ERROR_INVALID_SHADER_NV",
            vk::Result::ERROR_VALIDATION_FAILED_EXT => "VK_ERROR_VALIDATION_FAILED_EXT",
            _ => return None,
        })
    }
}

impl fmt::Display for VulkanCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.0),
            None => write!(f, "VkResult {}", self.0),
        }
    }
}

impl fmt::Debug for VulkanCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "VulkanCode({name})"),
            None => write!(f, "VulkanCode({})", self.0),
        }
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
    fn vulkan_errors_name_the_call_and_the_code() {
        let e = Error::Vulkan {
            call: "vkQueueSubmit",
            code: VulkanCode::of(vk::Result::ERROR_DEVICE_LOST),
        };
        assert_eq!(
            e.to_string(),
            "Vulkan call vkQueueSubmit failed: VK_ERROR_DEVICE_LOST (-4)"
        );
        let odd = VulkanCode(-1_000_999_999);
        assert_eq!((odd.raw(), odd.name()), (-1_000_999_999, None));
        assert_eq!(odd.to_string(), "VkResult -1000999999");
        assert_eq!(
            VulkanCode::of(vk::Result::ERROR_OUT_OF_DEVICE_MEMORY).raw(),
            -2
        );
    }

    #[test]
    fn enomem_maps_to_out_of_host_memory() {
        let e = Error::os("mmap", std::io::Error::from_raw_os_error(libc_enomem()));
        assert!(matches!(e, Error::OutOfHostMemory));
        assert!(Error::InvalidShader(String::new()).is_misuse());
        assert!(!Error::DeviceLost.is_misuse());
    }
}
