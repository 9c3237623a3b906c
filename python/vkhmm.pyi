"""Unified memory for NumPy arrays on any Vulkan device.

Arrays (any object with a C-contiguous buffer) are a kernel's bindings in order; whether each
is read or written comes from the kernel. NumPy's arrays migrate to the device when a kernel
uses them and fault back when the CPU touches them; memory that cannot migrate (memory maps
of files, shared memory, read-only arrays) is copied through at each launch.
"""

from typing import Any, Optional, Sequence, Tuple, Union

from numpy.typing import ArrayLike, DTypeLike, NDArray

Buffer = Any  # any object with the buffer protocol: a NumPy array, bytes, bytearray, memoryview
Groups = Union[int, Tuple[int], Tuple[int, int], Tuple[int, int, int]]

SAXPY_WGSL: str
"""The bundled saxpy kernel: `y[i] = a * x[i] + y[i]`, push constants `struct.pack("fI", a, n)`."""

class Error(Exception):
    """An error of the vkhmm runtime, with the crate's message."""

class UnsupportedMemoryError(Error):
    """Memory a launch, prefetch or advice cannot use: unmapped, PROT_NONE, read-only but written, ..."""

class DeviceError(Error):
    """No Vulkan loader or device, an unsuitable device, or a failed Vulkan call."""

class OutOfMemoryError(Error):
    """Device or host memory ran out, or a launch needs more than the device budget."""

class ArgumentError(ValueError):
    """Bad arguments: count, push-constant size, a non-contiguous array, a read-only array for a
    written binding, a kernel that does not compile."""

class Kernel:
    """A compiled kernel of a Runtime."""

    @property
    def bindings(self) -> list[str]:
        """Each binding in order: "read" or "read_write"."""
    @property
    def push_size(self) -> int:
        """Bytes of the push-constant block (0: none)."""

class Pending:
    """A launch started by Runtime.launch_async; holds its arrays until it completes."""

    def wait(self) -> None:
        """Waits for the launch (releasing the GIL) and raises its error, if any."""
    def done(self) -> bool:
        """Whether the launch has completed."""

class Runtime:
    """The unified-memory runtime on one Vulkan device."""

    def __init__(
        self,
        device: Optional[str] = None,
        transfer: Optional[str] = None,
        budget: Optional[int] = None,
        trace: Optional[str] = None,
    ) -> None:
        """`device`: an index or a name substring; `transfer`: "direct" or "staged"; `budget`:
        device bytes before eviction; `trace`: a path to write a trace to."""
    def kernel_wgsl(self, source: str, entry: str = "main") -> Kernel:
        """Compiles a WGSL compute kernel."""
    def kernel_spirv(self, spirv: Buffer, entry: str = "main") -> Kernel:
        """Loads a SPIR-V kernel from its 32-bit words."""
    def launch(self, kernel: Kernel, groups: Groups, *arrays: Buffer, push: Optional[Buffer] = None) -> None:
        """Runs `kernel` over `groups` workgroups with `arrays` bound in order; returns when the
        results are in the arrays. Releases the GIL while it runs."""
    def launch_async(self, kernel: Kernel, groups: Groups, *arrays: Buffer, push: Optional[Buffer] = None) -> Pending:
        """Starts the launch on a thread of its own; the arrays are held until it completes."""
    def prefetch(self, array: Buffer, to: str) -> None:
        """Moves the array's pages to "device" or "host" now."""
    def advise(self, array: Buffer, advice: str) -> None:
        """"read_mostly", "preferred_host", "preferred_device", "access_in_place" or "unset"."""
    def residency(self, array: Buffer) -> dict[str, int]:
        """Pages (4 KiB) of the array on the host, shared, and on the device only."""
    def stats(self) -> dict[str, Union[int, float]]:
        """What the runtime moved and served so far (the crate's Stats, kernel_time in s)."""
    def alloc(self, shape: Union[int, Sequence[int]], dtype: DTypeLike = "float32") -> NDArray[Any]:
        """A zeroed NumPy array in runtime-owned, page-aligned memory."""
    def device_info(self) -> dict[str, Any]:
        """Device name, type, API version, driver, transfer path, budget, limits, fault backend."""
