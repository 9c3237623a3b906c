//! [`Stats`]: what a runtime moved and served, as counters a user can diff.

use std::fmt;
use std::ops::Sub;
use std::time::Duration;

/// Counters of what a runtime moved and served, as returned by
/// [`Runtime::stats`](crate::Runtime::stats).
///
/// Counters only grow; subtract two snapshots to see what one step did
/// (`rt.stats() - before`). `Display` prints one line a person can read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Kernel launches completed.
    pub launches: u64,
    /// Time spent running kernels (submit to completion, as the launching thread saw it).
    pub kernel_time: Duration,
    /// CPU faults served on mirrored pages: copy-backs of device-resident chunks and writes
    /// to write-protected (`Shared`) chunks.
    pub cpu_faults: u64,
    /// Faults that had to wait: the page was being migrated or written by a running kernel.
    pub deferred_faults: u64,
    /// Bytes copied from host to device.
    pub bytes_to_device: u64,
    /// Bytes copied from device to host.
    pub bytes_to_host: u64,
    /// Bytes of never-touched (zero) host pages that were zero-filled on the device instead
    /// of copied.
    pub bytes_zero_filled: u64,
    /// Bytes of memory that is not mirrored (files, shared and read-only mappings, the
    /// launching thread's stack, and foreign memory under the `signal` backend) uploaded for
    /// launches. Not in `bytes_to_device`: none of it migrated.
    pub copied_to_device: u64,
    /// Bytes of such memory a kernel wrote, copied back into it after the kernel. Not in
    /// `bytes_to_host`.
    pub copied_to_host: u64,
    /// Extents evicted from the device to make room.
    pub evictions: u64,
    /// Calls to [`Runtime::prefetch`](crate::Runtime::prefetch).
    pub prefetches: u64,
    /// Panics the fault handler caught while serving a CPU fault of this runtime; each
    /// such fault was retried. Non-zero means a bug in vkhmm: please report it.
    pub handler_panics: u64,
    /// Bindings found thrashing (faulted back by the CPU between three launches within
    /// 100 ms) and settled on the host with the device accessing them in place.
    pub thrash_settled: u64,
    /// Fault-back windows installed by two threads at once, the fault handler and its
    /// assistant (see [`RuntimeBuilder::parallel_fault_back`](crate::RuntimeBuilder::parallel_fault_back)).
    pub parallel_installs: u64,
    /// Device memory the runtime holds now (a level, not a counter: a difference keeps the
    /// later value).
    pub device_bytes_in_use: u64,
    /// The device memory budget (a level, like `device_bytes_in_use`).
    pub device_budget: u64,
}

impl Sub for Stats {
    type Output = Stats;

    /// What happened between two snapshots (`later - earlier`); levels keep `later`'s value.
    fn sub(self, earlier: Stats) -> Stats {
        Stats {
            launches: self.launches.saturating_sub(earlier.launches),
            kernel_time: self.kernel_time.saturating_sub(earlier.kernel_time),
            cpu_faults: self.cpu_faults.saturating_sub(earlier.cpu_faults),
            deferred_faults: self.deferred_faults.saturating_sub(earlier.deferred_faults),
            bytes_to_device: self.bytes_to_device.saturating_sub(earlier.bytes_to_device),
            bytes_to_host: self.bytes_to_host.saturating_sub(earlier.bytes_to_host),
            bytes_zero_filled: self
                .bytes_zero_filled
                .saturating_sub(earlier.bytes_zero_filled),
            copied_to_device: self
                .copied_to_device
                .saturating_sub(earlier.copied_to_device),
            copied_to_host: self.copied_to_host.saturating_sub(earlier.copied_to_host),
            evictions: self.evictions.saturating_sub(earlier.evictions),
            prefetches: self.prefetches.saturating_sub(earlier.prefetches),
            handler_panics: self.handler_panics.saturating_sub(earlier.handler_panics),
            thrash_settled: self.thrash_settled.saturating_sub(earlier.thrash_settled),
            parallel_installs: self
                .parallel_installs
                .saturating_sub(earlier.parallel_installs),
            device_bytes_in_use: self.device_bytes_in_use,
            device_budget: self.device_budget,
        }
    }
}

/// Formats a byte count with a binary unit (`1.5 MiB`).
pub(crate) struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut v = self.0 as f64;
        let mut unit = 0;
        while v >= 1024.0 && unit + 1 < UNITS.len() {
            v /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{v:.1} {}", UNITS[unit])
        }
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} launches ({:.2?} in kernels), {} CPU faults ({} waited), {} to device, {} to host, \
             {} zero-filled, {} evictions{}",
            self.launches,
            self.kernel_time,
            self.cpu_faults,
            self.deferred_faults,
            Bytes(self.bytes_to_device),
            Bytes(self.bytes_to_host),
            Bytes(self.bytes_zero_filled),
            self.evictions,
            if self.copied_to_device + self.copied_to_host > 0 {
                format!(
                    "; copied through: {} in, {} out",
                    Bytes(self.copied_to_device),
                    Bytes(self.copied_to_host)
                )
            } else {
                String::new()
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_print_with_binary_units() {
        assert_eq!(Bytes(512).to_string(), "512 B");
        assert_eq!(Bytes(1536).to_string(), "1.5 KiB");
        assert_eq!(Bytes(64 << 20).to_string(), "64.0 MiB");
    }

    #[test]
    fn differences_subtract_counters_and_keep_levels() {
        let a = Stats {
            launches: 1,
            bytes_to_host: 10,
            device_bytes_in_use: 5,
            ..Stats::default()
        };
        let b = Stats {
            launches: 3,
            bytes_to_host: 30,
            device_bytes_in_use: 7,
            ..Stats::default()
        };
        let d = b - a;
        assert_eq!(
            (d.launches, d.bytes_to_host, d.device_bytes_in_use),
            (2, 20, 7)
        );
    }
}
