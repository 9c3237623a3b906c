//! Loader, instance, the choice of physical device, and the logical device.
//!
//! The loader is opened at run time (`libvulkan.so.1`), so a machine without Vulkan builds,
//! links and fails with [`Error::NoLoader`] only when a device is asked for. The instance asks
//! for the highest API version the loader knows, between 1.1 and 1.3, with no layers and no
//! extensions. Devices are gathered into [`Candidate`]s and [`choose`] — a pure function,
//! tested without a device — picks one. The logical device gets one queue of a compute
//! family, `robustBufferAccess` (required: an out-of-bounds kernel must not reach a
//! neighbouring block), and `bufferDeviceAddress`, `timelineSemaphore` and
//! `VK_EXT_external_memory_host` whenever the device has them.
//!
//! Features are queried and enabled through the promoted structs
//! (`VkPhysicalDeviceBufferDeviceAddressFeatures`, `VkPhysicalDeviceTimelineSemaphoreFeatures`),
//! which are valid both in core 1.2 and through the KHR extensions on 1.1: one code path.

use std::ffi::{c_char, CStr};

use ash::vk;

use super::map::{map_host_oom, map_host_oom_incompatible, map_host_oom_lost_missing};
use super::{
    DeviceFeatures, DeviceInfo, DeviceLimits, DeviceType, MemoryHeapInfo, MemoryTypeInfo,
    TransferPath,
};
use crate::error::{Error, Result};

/// What [`choose`] needs to know about one physical device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// `deviceName`.
    pub name: String,
    /// `deviceType`.
    pub device_type: DeviceType,
    /// The API version usable with it: the lower of the device's and the instance's.
    pub api_version: u32,
    /// Some queue family supports COMPUTE.
    pub has_compute: bool,
    /// `robustBufferAccess` is supported.
    pub robust_buffer_access: bool,
}

impl Candidate {
    /// Why vkhmm cannot use this device, if it cannot.
    fn unsuitable(&self) -> Option<&'static str> {
        if self.api_version < vk::API_VERSION_1_1 {
            Some("Vulkan 1.1 is not supported")
        } else if !self.has_compute {
            Some("no compute queue")
        } else if !self.robust_buffer_access {
            Some("no robustBufferAccess")
        } else {
            None
        }
    }
}

/// Picks the device to open: among suitable candidates that match `filter` (a decimal
/// enumeration index, or a case-insensitive substring of the name), the first of the best
/// type (discrete > integrated > virtual > CPU > other; ties in enumeration order).
///
/// # Errors
///
/// [`Error::NoDevice`] listing every candidate (with why it was skipped) when none fits.
pub(crate) fn choose(candidates: &[Candidate], filter: Option<&str>) -> Result<usize> {
    let filter = filter.map(str::trim).filter(|f| !f.is_empty());
    let matches = |index: usize, c: &Candidate| match filter {
        None => true,
        Some(f) => match f.parse::<usize>() {
            Ok(wanted) => wanted == index,
            Err(_) => c.name.to_lowercase().contains(&f.to_lowercase()),
        },
    };
    candidates
        .iter()
        .enumerate()
        .filter(|&(i, c)| c.unsuitable().is_none() && matches(i, c))
        .min_by_key(|&(i, c)| (rank(c.device_type), i))
        .map(|(i, _)| i)
        .ok_or_else(|| Error::NoDevice {
            filter: filter.map(str::to_owned),
            available: candidates.iter().map(describe).collect(),
        })
}

/// Preference of a device type: lower is better.
fn rank(t: DeviceType) -> u8 {
    match t {
        DeviceType::Discrete => 0,
        DeviceType::Integrated => 1,
        DeviceType::Virtual => 2,
        DeviceType::Cpu => 3,
        DeviceType::Other => 4,
    }
}

/// A candidate's name, with why it was skipped if it was.
fn describe(c: &Candidate) -> String {
    match c.unsuitable() {
        None => c.name.clone(),
        Some(why) => format!("{} (skipped: {why})", c.name),
    }
}

impl From<vk::PhysicalDeviceType> for DeviceType {
    fn from(t: vk::PhysicalDeviceType) -> Self {
        match t {
            vk::PhysicalDeviceType::DISCRETE_GPU => DeviceType::Discrete,
            vk::PhysicalDeviceType::INTEGRATED_GPU => DeviceType::Integrated,
            vk::PhysicalDeviceType::VIRTUAL_GPU => DeviceType::Virtual,
            vk::PhysicalDeviceType::CPU => DeviceType::Cpu,
            _ => DeviceType::Other,
        }
    }
}

/// Loads the loader (`libvulkan.so.1`).
pub(super) fn load() -> Result<ash::Entry> {
    // SAFETY: loading the system's Vulkan loader runs its initialisers; the loader is a
    // well-behaved shared library and the `Entry` keeps it loaded while in use.
    unsafe { ash::Entry::load() }.map_err(|e| Error::NoLoader(Box::new(e)))
}

/// Creates the instance with the highest API version in 1.1..=1.3 the loader supports;
/// returns it with that version.
pub(super) fn create_instance(
    entry: &ash::Entry,
    filter: Option<&str>,
) -> Result<(ash::Instance, u32)> {
    // SAFETY: `entry` holds a loaded loader.
    let loader = unsafe { entry.try_enumerate_instance_version() }
        .map_err(map_host_oom("vkEnumerateInstanceVersion"))?
        .unwrap_or(vk::API_VERSION_1_0);
    let api = if vk::api_version_major(loader) > 1 {
        vk::API_VERSION_1_3
    } else {
        vk::make_api_version(0, 1, vk::api_version_minor(loader).clamp(1, 3), 0)
    };
    let app = vk::ApplicationInfo::default()
        .application_name(c"vkhmm")
        .engine_name(c"vkhmm")
        .api_version(api);
    let info = vk::InstanceCreateInfo::default().application_info(&app);
    // SAFETY: `info` and what it points to live across the call; no layers or extensions.
    let instance = unsafe { entry.create_instance(&info, None) }
        .map_err(map_host_oom_incompatible("vkCreateInstance", filter))?;
    Ok((instance, api))
}

/// Everything known about one physical device before it is opened.
pub(super) struct Physical {
    pub handle: vk::PhysicalDevice,
    pub index: usize,
    pub props: vk::PhysicalDeviceProperties,
    /// The lower of the device's and the instance's API version.
    pub api: u32,
    extensions: Vec<vk::ExtensionProperties>,
    /// (family index, queue count) of the first family with COMPUTE.
    queue_family: Option<(u32, u32)>,
    robust_buffer_access: bool,
    buffer_device_address: bool,
    timeline_semaphore: bool,
}

impl Physical {
    fn probe(
        instance: &ash::Instance,
        api: u32,
        index: usize,
        handle: vk::PhysicalDevice,
    ) -> Result<Self> {
        // SAFETY: `handle` was enumerated from `instance`, which is alive.
        let props = unsafe { instance.get_physical_device_properties(handle) };
        // SAFETY: as above.
        let extensions = unsafe { instance.enumerate_device_extension_properties(handle) }
            .map_err(map_host_oom("vkEnumerateDeviceExtensionProperties"))?;
        // SAFETY: as above.
        let families = unsafe { instance.get_physical_device_queue_family_properties(handle) };
        let queue_family = families
            .iter()
            .position(|f| f.queue_flags.contains(vk::QueueFlags::COMPUTE) && f.queue_count > 0)
            .map(|i| (i as u32, families[i].queue_count));
        let mut this = Physical {
            handle,
            index,
            props,
            api: props.api_version.min(api),
            extensions,
            queue_family,
            robust_buffer_access: false,
            buffer_device_address: false,
            timeline_semaphore: false,
        };
        if this.api >= vk::API_VERSION_1_1 {
            this.query_features(instance);
        }
        Ok(this)
    }

    fn has_extension(&self, name: &CStr) -> bool {
        self.extensions
            .iter()
            .any(|e| e.extension_name_as_c_str() == Ok(name))
    }

    /// Whether a 1.2 feature can be asked for: core, or through its KHR extension.
    fn promoted(&self, extension: &CStr) -> bool {
        self.api >= vk::API_VERSION_1_2 || self.has_extension(extension)
    }

    fn query_features(&mut self, instance: &ash::Instance) {
        let mut bda = vk::PhysicalDeviceBufferDeviceAddressFeatures::default();
        let mut timeline = vk::PhysicalDeviceTimelineSemaphoreFeatures::default();
        let mut features = vk::PhysicalDeviceFeatures2::default();
        if self.promoted(ash::khr::buffer_device_address::NAME) {
            features = features.push_next(&mut bda);
        }
        if self.promoted(ash::khr::timeline_semaphore::NAME) {
            features = features.push_next(&mut timeline);
        }
        // SAFETY: the instance is 1.1+ and the device's usable version is 1.1+ (checked by the
        // caller); each chained struct is core 1.2 or its extension is supported.
        unsafe { instance.get_physical_device_features2(self.handle, &mut features) };
        self.robust_buffer_access = features.features.robust_buffer_access == vk::TRUE;
        self.buffer_device_address = bda.buffer_device_address == vk::TRUE;
        self.timeline_semaphore = timeline.timeline_semaphore == vk::TRUE;
    }

    fn name(&self) -> String {
        c_string(self.props.device_name_as_c_str())
    }

    fn candidate(&self) -> Candidate {
        Candidate {
            name: self.name(),
            device_type: self.props.device_type.into(),
            api_version: self.api,
            has_compute: self.queue_family.is_some(),
            robust_buffer_access: self.robust_buffer_access,
        }
    }

    fn external_memory_host(&self) -> bool {
        self.has_extension(ash::ext::external_memory_host::NAME)
    }
}

fn c_string(s: std::result::Result<&CStr, std::ffi::FromBytesUntilNulError>) -> String {
    s.map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Enumerates the instance's devices and picks one with [`choose`]; `api` is the instance's
/// API version.
pub(super) fn pick(instance: &ash::Instance, api: u32, filter: Option<&str>) -> Result<Physical> {
    // SAFETY: `instance` is alive.
    let handles = unsafe { instance.enumerate_physical_devices() }.map_err(
        map_host_oom_incompatible("vkEnumeratePhysicalDevices", filter),
    )?;
    let mut devices = handles
        .into_iter()
        .enumerate()
        .map(|(i, h)| Physical::probe(instance, api, i, h))
        .collect::<Result<Vec<_>>>()?;
    let candidates: Vec<Candidate> = devices.iter().map(Physical::candidate).collect();
    let chosen = choose(&candidates, filter)?;
    Ok(devices.swap_remove(chosen))
}

/// The logical device and its queue.
pub(super) struct Opened {
    pub raw: ash::Device,
    pub queue: vk::Queue,
    pub features: DeviceFeatures,
}

/// Creates the logical device: one queue of the compute family, robustBufferAccess, and the
/// optional features the device has.
pub(super) fn open(instance: &ash::Instance, phys: &Physical) -> Result<Opened> {
    let (family, _) = phys
        .queue_family
        .expect("choose() only picks devices with a compute queue");
    let core12 = phys.api >= vk::API_VERSION_1_2;
    let host_alignment = phys
        .external_memory_host()
        .then(|| host_pointer_alignment(instance, phys));
    let features = DeviceFeatures {
        robust_buffer_access: true,
        buffer_device_address: phys.buffer_device_address,
        timeline_semaphore: phys.timeline_semaphore,
        external_memory_host: host_alignment.is_some(),
        min_imported_host_pointer_alignment: host_alignment,
    };
    let mut extensions: Vec<*const c_char> = Vec::new();
    if !core12 && features.buffer_device_address {
        extensions.push(ash::khr::buffer_device_address::NAME.as_ptr());
    }
    if !core12 && features.timeline_semaphore {
        extensions.push(ash::khr::timeline_semaphore::NAME.as_ptr());
    }
    if features.external_memory_host {
        extensions.push(ash::ext::external_memory_host::NAME.as_ptr());
    }
    let priorities = [1.0f32];
    let queues = [vk::DeviceQueueCreateInfo::default()
        .queue_family_index(family)
        .queue_priorities(&priorities)];
    let mut bda =
        vk::PhysicalDeviceBufferDeviceAddressFeatures::default().buffer_device_address(true);
    let mut timeline =
        vk::PhysicalDeviceTimelineSemaphoreFeatures::default().timeline_semaphore(true);
    let mut enabled = vk::PhysicalDeviceFeatures2::default()
        .features(vk::PhysicalDeviceFeatures::default().robust_buffer_access(true));
    if features.buffer_device_address {
        enabled = enabled.push_next(&mut bda);
    }
    if features.timeline_semaphore {
        enabled = enabled.push_next(&mut timeline);
    }
    let info = vk::DeviceCreateInfo::default()
        .queue_create_infos(&queues)
        .enabled_extension_names(&extensions)
        .push_next(&mut enabled);
    let name = phys.name();
    // SAFETY: `phys.handle` belongs to `instance`; every feature and extension asked for was
    // reported supported; all pointed-to data lives across the call.
    let raw = unsafe { instance.create_device(phys.handle, &info, None) }
        .map_err(map_host_oom_lost_missing(&name))?;
    // SAFETY: the device was created with one queue in `family`.
    let queue = unsafe { raw.get_device_queue(family, 0) };
    Ok(Opened {
        raw,
        queue,
        features,
    })
}

/// `minImportedHostPointerAlignment` (the device supports VK_EXT_external_memory_host).
fn host_pointer_alignment(instance: &ash::Instance, phys: &Physical) -> u64 {
    let mut host = vk::PhysicalDeviceExternalMemoryHostPropertiesEXT::default();
    let mut props = vk::PhysicalDeviceProperties2::default().push_next(&mut host);
    // SAFETY: the device supports the extension, so the chained struct is valid to query.
    unsafe { instance.get_physical_device_properties2(phys.handle, &mut props) };
    host.min_imported_host_pointer_alignment
}

/// Fills a [`DeviceInfo`] for the chosen device. The pool fields (`pool_memory_type`,
/// `budget`, `transfer_path`) are placeholders that [`Device::new`](super::Device::new)
/// overwrites once the pool exists.
pub(super) fn describe_device(
    instance: &ash::Instance,
    phys: &Physical,
    features: DeviceFeatures,
) -> DeviceInfo {
    let mut driver = vk::PhysicalDeviceDriverProperties::default();
    let mut maintenance3 = vk::PhysicalDeviceMaintenance3Properties::default();
    let mut props = vk::PhysicalDeviceProperties2::default().push_next(&mut maintenance3);
    let has_driver = phys.promoted(ash::khr::driver_properties::NAME);
    if has_driver {
        props = props.push_next(&mut driver);
    }
    // SAFETY: the device supports 1.1 (maintenance3 is core) and driver properties are core
    // 1.2 or come from the supported extension.
    unsafe { instance.get_physical_device_properties2(phys.handle, &mut props) };
    let p = &phys.props;
    let (queue_family, queue_count) = phys.queue_family.unwrap_or_default();
    let v = p.api_version;
    DeviceInfo {
        name: phys.name(),
        device_type: p.device_type.into(),
        api_version: (
            vk::api_version_major(v),
            vk::api_version_minor(v),
            vk::api_version_patch(v),
        ),
        driver_name: has_driver.then(|| c_string(driver.driver_name_as_c_str())),
        driver_info: has_driver.then(|| c_string(driver.driver_info_as_c_str())),
        vendor_id: p.vendor_id,
        device_id: p.device_id,
        index: phys.index,
        heaps: Vec::new(),
        memory_types: Vec::new(),
        pool_memory_type: 0,
        budget: 0,
        transfer_path: TransferPath::Staged,
        limits: limits(&p.limits, maintenance3.max_memory_allocation_size),
        features,
        queue_family,
        queue_count,
    }
    .with_memory(instance, phys.handle)
}

fn limits(l: &vk::PhysicalDeviceLimits, max_memory_allocation_size: u64) -> DeviceLimits {
    DeviceLimits {
        max_storage_buffer_range: l.max_storage_buffer_range,
        max_uniform_buffer_range: l.max_uniform_buffer_range,
        min_storage_buffer_offset_alignment: l.min_storage_buffer_offset_alignment,
        min_uniform_buffer_offset_alignment: l.min_uniform_buffer_offset_alignment,
        max_compute_work_group_count: l.max_compute_work_group_count,
        max_compute_work_group_size: l.max_compute_work_group_size,
        max_compute_work_group_invocations: l.max_compute_work_group_invocations,
        max_push_constants_size: l.max_push_constants_size,
        max_memory_allocation_size,
    }
}

impl DeviceInfo {
    fn with_memory(mut self, instance: &ash::Instance, handle: vk::PhysicalDevice) -> Self {
        // SAFETY: `handle` belongs to the live `instance`.
        let mem = unsafe { instance.get_physical_device_memory_properties(handle) };
        self.heaps = mem
            .memory_heaps_as_slice()
            .iter()
            .map(|h| MemoryHeapInfo {
                size: h.size,
                device_local: h.flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL),
            })
            .collect();
        self.memory_types = mem
            .memory_types_as_slice()
            .iter()
            .map(MemoryTypeInfo::from)
            .collect();
        self
    }
}

impl From<&vk::MemoryType> for MemoryTypeInfo {
    fn from(t: &vk::MemoryType) -> Self {
        let has = |f| t.property_flags.contains(f);
        MemoryTypeInfo {
            heap_index: t.heap_index,
            device_local: has(vk::MemoryPropertyFlags::DEVICE_LOCAL),
            host_visible: has(vk::MemoryPropertyFlags::HOST_VISIBLE),
            host_coherent: has(vk::MemoryPropertyFlags::HOST_COHERENT),
            host_cached: has(vk::MemoryPropertyFlags::HOST_CACHED),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(name: &str, device_type: DeviceType) -> Candidate {
        Candidate {
            name: name.into(),
            device_type,
            api_version: vk::API_VERSION_1_3,
            has_compute: true,
            robust_buffer_access: true,
        }
    }

    fn machine() -> Vec<Candidate> {
        vec![
            cand("llvmpipe (LLVM 15.0.7, 256 bits)", DeviceType::Cpu),
            cand("Intel(R) UHD Graphics 630", DeviceType::Integrated),
            cand("NVIDIA GeForce RTX 4090", DeviceType::Discrete),
            cand("AMD Radeon RX 7900 XTX", DeviceType::Discrete),
            cand("virtio-gpu", DeviceType::Virtual),
        ]
    }

    #[test]
    fn default_order_prefers_discrete_then_enumeration_order() {
        let mut c = machine();
        assert_eq!(choose(&c, None).unwrap(), 2);
        c.remove(2);
        assert_eq!(choose(&c, None).unwrap(), 2, "the other discrete GPU");
        c.remove(2);
        assert_eq!(choose(&c, None).unwrap(), 1, "integrated");
        c.remove(1);
        assert_eq!(choose(&c, None).unwrap(), 1, "virtual beats cpu");
        c.remove(1);
        assert_eq!(choose(&c, None).unwrap(), 0, "cpu");
        let other = vec![
            cand("other", DeviceType::Other),
            cand("cpu", DeviceType::Cpu),
        ];
        assert_eq!(choose(&other, None).unwrap(), 1, "cpu beats other");
    }

    #[test]
    fn index_filter_picks_exactly_that_device() {
        let c = machine();
        assert_eq!(choose(&c, Some("0")).unwrap(), 0);
        assert_eq!(choose(&c, Some(" 4 ")).unwrap(), 4);
        assert!(matches!(choose(&c, Some("5")), Err(Error::NoDevice { .. })));
    }

    #[test]
    fn substring_filter_is_case_insensitive_and_ranks_its_matches() {
        let c = machine();
        assert_eq!(choose(&c, Some("LLVMPIPE")).unwrap(), 0);
        assert_eq!(choose(&c, Some("radeon")).unwrap(), 3);
        assert_eq!(
            choose(&c, Some("i")).unwrap(),
            2,
            "best type among the matches"
        );
        assert_eq!(
            choose(&c, Some("")).unwrap(),
            2,
            "an empty filter is no filter"
        );
    }

    #[test]
    fn unsuitable_devices_are_skipped_and_named() {
        let mut c = machine();
        c[2].robust_buffer_access = false;
        c[3].has_compute = false;
        c[1].api_version = vk::API_VERSION_1_0;
        assert_eq!(choose(&c, None).unwrap(), 4);
        let e = choose(&c, Some("nvidia")).unwrap_err();
        assert!(
            e.to_string()
                .contains("NVIDIA GeForce RTX 4090 (skipped: no robustBufferAccess)"),
            "{e}"
        );
        assert!(e.to_string().contains("(skipped: no compute queue)"), "{e}");
        assert!(
            e.to_string()
                .contains("(skipped: Vulkan 1.1 is not supported)"),
            "{e}"
        );
    }

    #[test]
    fn no_match_lists_every_device() {
        let c = machine();
        match choose(&c, Some("quantum")) {
            Err(Error::NoDevice { filter, available }) => {
                assert_eq!(filter.as_deref(), Some("quantum"));
                assert_eq!(available.len(), c.len());
                assert_eq!(available[3], "AMD Radeon RX 7900 XTX");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(choose(&[], None), Err(Error::NoDevice { filter: None, available }) if available.is_empty())
        );
    }
}
