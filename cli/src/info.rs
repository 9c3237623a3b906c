//! `vkhmm info`: what this machine gives vkhmm to work with.

use vkhmm::diagnostics::{
    probe_fault_capabilities, DeviceConfig, DeviceInfo, FaultCapabilities, MemoryTypeInfo,
    SeccompMode,
};
use vkhmm::FaultBackend;

/// Prints the device report and the fault-mechanism report. A missing device is reported,
/// not fatal: the fault report still helps.
pub fn run() -> anyhow::Result<()> {
    let device = DeviceConfig::from_env().and_then(|cfg| DeviceInfo::query(&cfg));
    match &device {
        Ok(info) => print_device(info),
        Err(e) => println!("Vulkan device: none usable\n  {e}\n"),
    }
    print_faults(&probe_fault_capabilities());
    device.map(drop).map_err(Into::into)
}

fn print_device(d: &DeviceInfo) {
    let (major, minor, patch) = d.api_version;
    println!("Vulkan device #{}: {} ({})", d.index, d.name, d.device_type);
    println!("  API version        {major}.{minor}.{patch}");
    if let Some(driver) = &d.driver_name {
        let extra = d.driver_info.as_deref().unwrap_or("");
        println!("  driver             {driver} {extra}");
    }
    println!(
        "  vendor / device    {:#06x} / {:#06x}",
        d.vendor_id, d.device_id
    );
    println!(
        "  compute queue      family {} ({} queues)",
        d.queue_family, d.queue_count
    );
    println!("  memory heaps");
    for (i, h) in d.heaps.iter().enumerate() {
        let local = if h.device_local {
            "device-local"
        } else {
            "host"
        };
        println!("    heap {i}: {} MiB, {local}", h.size >> 20);
    }
    println!("  memory types");
    for (i, t) in d.memory_types.iter().enumerate() {
        let pool = if i as u32 == d.pool_memory_type {
            "  <- pool"
        } else {
            ""
        };
        println!("    type {i}: heap {}, {}{pool}", t.heap_index, flags(t));
    }
    println!("  pool budget        {} MiB", d.budget >> 20);
    println!("  transfer path      {}", d.transfer_path);
    let f = &d.features;
    println!(
        "  features           robustBufferAccess {}, bufferDeviceAddress {}, timelineSemaphore {}, \
         VK_EXT_external_memory_host {}",
        yes(f.robust_buffer_access),
        yes(f.buffer_device_address),
        yes(f.timeline_semaphore),
        yes(f.external_memory_host),
    );
    let l = &d.limits;
    println!(
        "  limits             storage range {} MiB, offset alignment {}, groups {:?}",
        l.max_storage_buffer_range >> 20,
        l.min_storage_buffer_offset_alignment,
        l.max_compute_work_group_count,
    );
    println!();
}

fn flags(t: &MemoryTypeInfo) -> String {
    let names = [
        (t.device_local, "DEVICE_LOCAL"),
        (t.host_visible, "HOST_VISIBLE"),
        (t.host_coherent, "HOST_COHERENT"),
        (t.host_cached, "HOST_CACHED"),
    ];
    let set: Vec<&str> = names
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
    if set.is_empty() {
        "no flags".into()
    } else {
        set.join(" | ")
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn print_faults(c: &FaultCapabilities) {
    println!("Fault mechanisms");
    match c.userfaultfd {
        Some(mode) => println!("  userfaultfd        yes, opened with {mode}"),
        None => println!("  userfaultfd        no"),
    }
    for a in &c.attempts {
        let outcome = match &a.result {
            Ok(()) => "ok".to_string(),
            Err(f) => format!("{} failed: {}", f.call, f.io_error()),
        };
        println!("    {:<16} {outcome}", a.mode.as_str());
    }
    println!(
        "  kernel-mode faults {}",
        if c.kernel_faults {
            "yes: read(2)/write(2) into device-resident buffers work"
        } else {
            "no: only user-space touches fault back (read(2)/write(2) into a device-resident buffer fail with EFAULT)"
        }
    );
    if !c.negotiated_features.is_empty() {
        println!("  features used      {}", c.negotiated_features.join(", "));
    }
    if let Some(v) = c.unprivileged_userfaultfd {
        println!("  vm.unprivileged_userfaultfd = {v}");
    }
    println!("  /dev/userfaultfd   {:?}", c.dev_userfaultfd);
    let seccomp = match c.seccomp {
        SeccompMode::Disabled => "off",
        SeccompMode::Strict => "strict",
        SeccompMode::Filter => "filter (a container profile may forbid userfaultfd)",
        SeccompMode::Unknown => "unknown",
    };
    println!("  seccomp            {seccomp}");
    match &c.signal_error {
        None => println!(
            "  signal fallback    yes: mprotect + SIGSEGV; migrates Runtime::alloc (Managed<T>) memory, copies other memory through"
        ),
        Some(e) => println!("  signal fallback    no: {e}"),
    }
    let asked = std::env::var("VKHMM_FAULT").unwrap_or_else(|_| "auto".into());
    match &c.backend {
        Ok(FaultBackend::Signal) => {
            println!("  backend chosen     signal (VKHMM_FAULT={asked})");
            println!(
                "                     read(2)/write(2) into a device-resident buffer fail with EFAULT"
            );
        }
        Ok(b) => println!("  backend chosen     {b} (VKHMM_FAULT={asked})"),
        Err(e) => println!("  backend chosen     none: {e}"),
    }
    print_memory(c.backend.as_ref().ok());
}

/// Which memory migrates under the chosen backend, and which a launch copies through.
fn print_memory(backend: Option<&FaultBackend>) {
    println!();
    println!("Memory in a launch");
    let migrates = match backend {
        Some(FaultBackend::Signal) => "Runtime::alloc (Managed<T>) memory only",
        _ => "private anonymous read-write memory: Vec, Box, malloc, mmap(MAP_PRIVATE|MAP_ANONYMOUS), Managed<T>",
    };
    println!("  migrates           {migrates}");
    let others = match backend {
        Some(FaultBackend::Signal) => {
            "any other memory (the signal backend cannot see munmap of it), "
        }
        _ => "",
    };
    println!(
        "  copied through     {others}file mappings, MAP_SHARED and memfd memory (another process may \
         read it at any time), read-only memory, hugetlbfs pages, statics in the program's \
         data, the launching thread's stack: uploaded at each launch, results written back \
         before it returns (stats: copied_to_device / copied_to_host)"
    );
    println!(
        "  refused            written bindings on memory the process cannot write, PROT_NONE \
         memory, ranges with unmapped holes (UnsupportedMemory)"
    );
}
