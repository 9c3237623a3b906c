//! `RuntimeBuilder::fault_backend`: the first runtime of a process chooses the fault backend
//! for every runtime, over `VKHMM_FAULT`; a later builder that names another backend gets
//! `Error::FaultBackendMismatch`, one that asks for the automatic choice or says nothing
//! gets the running backend.
//!
//! One test in its own binary: the backend is process-wide, so which runtime comes first is
//! the point (another test here could start the service before it).
//! `tests/fault_backend_signal.rs` names the `signal` backend first.

mod common;

use common::push::Fill;
use common::{groups, PATHS};
use vkhmm::diagnostics::probe_fault_capabilities;
use vkhmm::{shaders, Error, FaultBackend, Push, Runtime};

#[test]
fn the_first_runtime_chooses_and_naming_another_backend_is_refused() {
    let _watchdog = common::Watchdog::arm_for_this_test(std::time::Duration::from_secs(300));
    // What the automatic choice gives here: userfaultfd where this process may use it (as
    // on CI), else `signal`. The first runtime names it; the environment names the other
    // one, which the builder overrides.
    std::env::remove_var("VKHMM_FAULT");
    let caps = probe_fault_capabilities();
    let first = caps
        .backend
        .clone()
        .unwrap_or_else(|e| panic!("no fault backend can run here: {e}\n{caps}"));
    let other = match first {
        FaultBackend::Userfaultfd => FaultBackend::Signal,
        _ => FaultBackend::Userfaultfd,
    };
    std::env::set_var("VKHMM_FAULT", other.as_str());

    for path in PATHS {
        let Some(rt) = common::runtime_with(Runtime::builder().transfer(path).fault_backend(first))
        else {
            return;
        };
        assert_eq!(rt.fault_backend(), first, "{path:?}");

        // The runtime works: a launch on runtime-owned memory, read back through faults.
        let fill = rt.kernel_wgsl(shaders::FILL_INDEX_WGSL, "main").unwrap();
        let n = 64 * 1024;
        let mut m = rt.alloc::<u32>(n).unwrap();
        let push = Fill {
            n: n as u32,
            mul: 3,
            add: 1,
        };
        rt.launch(&fill, groups(n, 256), (&mut m, Push(&push)))
            .unwrap();
        assert!((0..n).all(|i| m[i] == i as u32 * 3 + 1), "{path:?}");

        // Naming the other backend is refused with a typed error that names both.
        match Runtime::builder()
            .transfer(path)
            .fault_backend(other)
            .build()
        {
            Err(e) => {
                assert!(
                    matches!(
                        e,
                        Error::FaultBackendMismatch { requested, running }
                            if requested == other && running == first
                    ),
                    "{path:?}: {e:?}"
                );
                assert!(e.is_misuse(), "{path:?}: {e}");
                let text = e.to_string();
                assert!(
                    text.contains(other.as_str()) && text.contains(first.as_str()),
                    "{path:?}: {text}"
                );
            }
            Ok(rt) => panic!(
                "{path:?}: asked for {other}, got a runtime on {}",
                rt.fault_backend()
            ),
        }

        // The automatic choice, saying nothing (while VKHMM_FAULT names the other
        // backend) and naming the running backend all get the running one.
        for builder in [
            Runtime::builder().transfer(path).fault_backend(None),
            Runtime::builder().transfer(path),
            Runtime::builder().transfer(path).fault_backend(first),
        ] {
            let later = builder.build().unwrap();
            assert_eq!(later.fault_backend(), first, "{path:?}");
        }
    }
}
