//! `RuntimeBuilder::fault_backend(FaultBackend::Signal)` on the first runtime of a process
//! where `VKHMM_FAULT` is unset: the builder's choice wins over the automatic one
//! (userfaultfd on CI), and a later builder naming userfaultfd is refused.
//!
//! One test in its own binary, as in `tests/fault_backend.rs`.

mod common;

use common::push::Fill;
use common::{groups, PATHS};
use vkhmm::diagnostics::probe_fault_capabilities;
use vkhmm::{shaders, Error, FaultBackend, Push, Runtime};

#[test]
fn a_builder_naming_signal_gets_it_whatever_the_automatic_choice() {
    let _watchdog = common::Watchdog::arm_for_this_test(std::time::Duration::from_secs(300));
    std::env::remove_var("VKHMM_FAULT");
    let caps = probe_fault_capabilities();
    if !caps.signal_fallback {
        eprintln!("skipped: the signal backend cannot run here\n{caps}");
        return;
    }
    for path in PATHS {
        let Some(rt) = common::runtime_with(
            Runtime::builder()
                .transfer(path)
                .fault_backend(FaultBackend::Signal),
        ) else {
            return;
        };
        assert_eq!(rt.fault_backend(), FaultBackend::Signal, "{path:?}");

        let fill = rt.kernel_wgsl(shaders::FILL_INDEX_WGSL, "main").unwrap();
        let n = 64 * 1024;
        let mut m = rt.alloc::<u32>(n).unwrap();
        let push = Fill {
            n: n as u32,
            mul: 7,
            add: 2,
        };
        rt.launch(&fill, groups(n, 256), (&mut m, Push(&push)))
            .unwrap();
        assert_eq!(rt.residency(&m).device, n / 1024, "{path:?}");
        assert!((0..n).all(|i| m[i] == i as u32 * 7 + 2), "{path:?}");
        // Foreign memory is copied through here too, as under the forced backend.
        common::assert_foreign_copied_through(&rt, path);

        let refused = Runtime::builder()
            .transfer(path)
            .fault_backend(FaultBackend::Userfaultfd)
            .build();
        assert!(
            matches!(
                refused,
                Err(Error::FaultBackendMismatch {
                    requested: FaultBackend::Userfaultfd,
                    running: FaultBackend::Signal,
                })
            ),
            "{path:?}: {refused:?}"
        );
    }
}
