//! The trace file (`RuntimeBuilder::trace`, `VKHMM_TRACE`): it parses, its bytes add up to
//! what `stats()` counted, every fault names a buffer a call site sent to the device, lanes
//! are complete and in order while threads fault at once, and a runtime dropped with data
//! on the device leaves a valid file.
//!
//! The trace is process-wide (one file at a time), so the tests here take turns.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use common::{groups, kernels, pattern, PATHS};
use serde_json::Value;
use vkhmm::{Push, Runtime, Stats, TransferPath};

/// One traced runtime at a time in this process.
static TURN: Mutex<()> = Mutex::new(());

fn trace_path(what: &str, path: TransferPath) -> PathBuf {
    std::env::temp_dir().join(format!(
        "vkhmm-trace-{what}-{path:?}-{}.json",
        std::process::id()
    ))
}

/// A runtime on `path` writing its trace to `file`.
fn traced(path: TransferPath, file: &Path) -> Option<Runtime> {
    common::runtime_with(Runtime::builder().transfer(path).trace(file))
}

/// The events of a trace file (it must parse).
fn events(file: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(file).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// The complete ("X") events named `name` (or starting so, for `prefix`).
fn named<'a>(evs: &'a [Value], prefix: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    evs.iter()
        .filter(move |e| e["ph"] == "X" && e["name"].as_str().unwrap().starts_with(prefix))
}

fn bytes_of(evs: &[Value], prefix: &str) -> u64 {
    named(evs, prefix)
        .map(|e| e["args"]["bytes"].as_u64().unwrap_or(0))
        .sum()
}

fn hex(v: &Value) -> u64 {
    u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

/// Waits for the writer's next drains (every 10 ms).
fn drained() {
    std::thread::sleep(std::time::Duration::from_millis(100));
}

/// Every event's bytes add up to the statistics of the same stretch.
fn assert_sums(evs: &[Value], d: &Stats, what: &str) {
    assert_eq!(bytes_of(evs, "to device"), d.bytes_to_device, "{what}: {d}");
    assert_eq!(
        bytes_of(evs, "zero-fill"),
        d.bytes_zero_filled,
        "{what}: {d}"
    );
    assert_eq!(bytes_of(evs, "to host"), d.bytes_to_host, "{what}: {d}");
    assert_eq!(
        bytes_of(evs, "copy through in"),
        d.copied_to_device,
        "{what}"
    );
    assert_eq!(
        bytes_of(evs, "copy through out"),
        d.copied_to_host,
        "{what}"
    );
    assert_eq!(named(evs, "launch ").count() as u64, d.launches, "{what}");
    assert_eq!(named(evs, "kernel ").count() as u64, d.launches, "{what}");
}

#[test]
fn the_traced_pipeline_adds_up_and_names_the_sites_of_its_faults() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let _watchdog = common::Watchdog::arm_for_this_test(std::time::Duration::from_secs(300));
    for path in PATHS {
        let file = trace_path("pipeline", path);
        let Some(rt) = traced(path, &file) else {
            return;
        };
        let before = rt.stats();
        vkhmm_examples::pipeline::run(&rt, false).unwrap();
        let d = rt.stats() - before;
        drained();
        let evs = events(&file);
        let what = format!("{path:?}");
        assert_sums(&evs, &d, &what);
        // Launches name the example's lines.
        for e in named(&evs, "launch ") {
            let site = e["args"]["site"].as_str().unwrap();
            assert!(site.starts_with("examples/pipeline.rs:"), "{what}: {site}");
        }
        // Each fault lies in a buffer that a launch with a call site sent to the device.
        let sent: Vec<(u64, u64, String)> = named(&evs, "to device")
            .chain(named(&evs, "zero-fill"))
            .map(|e| {
                let a = &e["args"];
                let site = a["site"].as_str().unwrap_or("").to_owned();
                (hex(&a["alloc"]), a["alloc_len"].as_u64().unwrap(), site)
            })
            .collect();
        let faults: Vec<&Value> = named(&evs, "fault").collect();
        if rt.fault_backend() == vkhmm::FaultBackend::Userfaultfd {
            assert!(!faults.is_empty(), "{what}: the pipeline faults");
        }
        assert!(faults.len() as u64 <= d.cpu_faults, "{what}: {d}");
        for f in &faults {
            let addr = hex(&f["args"]["addr"]);
            let site = f["args"]["site"].as_str().unwrap();
            assert!(site.starts_with("examples/pipeline.rs:"), "{what}: {f}");
            assert!(
                sent.iter()
                    .any(|(a, l, s)| (*a..a + l).contains(&addr) && !s.is_empty()),
                "{what}: fault at {addr:#x} in no buffer sent to the device"
            );
            assert!(f["dur"].as_f64().unwrap() >= 0.0, "{what}: {f}");
        }
        // Lanes are named: the fault service and the device queue among them.
        let lanes: Vec<&str> = evs
            .iter()
            .filter(|e| e["ph"] == "M" && e["name"] == "thread_name")
            .map(|e| e["args"]["name"].as_str().unwrap())
            .collect();
        assert!(
            lanes.iter().any(|l| l.starts_with("device queue")),
            "{what}: {lanes:?}"
        );
        drop(rt);
        let _ = std::fs::remove_file(&file);
    }
}

#[test]
fn a_trace_written_while_threads_fault_is_complete_and_ordered_per_lane() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let _watchdog = common::Watchdog::arm_for_this_test(std::time::Duration::from_secs(300));
    for path in PATHS {
        let file = trace_path("threads", path);
        let Some(rt) = traced(path, &file) else {
            return;
        };
        let k = kernels(&rt);
        let n = 1 << 20;
        let mut bufs: Vec<vkhmm::Managed<u32>> = (0..4).map(|_| rt.alloc(n).unwrap()).collect();
        let before = rt.stats();
        for (t, b) in bufs.iter_mut().enumerate() {
            let p = common::push::Fill {
                n: n as u32,
                mul: 1,
                add: t as u32,
            };
            rt.launch(&k.fill, groups(n, 256), (b, Push(&p))).unwrap();
        }
        // Four threads read their buffers back at once: faults from each, concurrently.
        std::thread::scope(|s| {
            for (t, b) in bufs.iter().enumerate() {
                s.spawn(move || {
                    assert!((0..n).step_by(97).all(|i| b[i] == i as u32 + t as u32));
                });
            }
        });
        let d = rt.stats() - before;
        drained();
        let evs = events(&file);
        let what = format!("{path:?}");
        assert_sums(&evs, &d, &what);
        let end = evs.iter().find(|e| e["name"] == "trace end");
        assert!(end.is_none(), "{what}: the trace ended early");
        // Per lane, events come in the order they started (each lane's events are written
        // by one thread, or are one thread's faults, which come one at a time).
        let mut lanes: std::collections::BTreeMap<u64, Vec<f64>> = Default::default();
        for e in evs
            .iter()
            .filter(|e| e["ph"] == "X" && e["name"] == "fault")
        {
            lanes
                .entry(e["tid"].as_u64().unwrap())
                .or_default()
                .push(e["ts"].as_f64().unwrap());
        }
        if rt.fault_backend() == vkhmm::FaultBackend::Userfaultfd {
            assert!(
                lanes.len() >= 4,
                "{what}: faults of {} threads",
                lanes.len()
            );
        }
        for (lane, ts) in &lanes {
            assert!(
                ts.windows(2).all(|w| w[0] <= w[1]),
                "{what}: lane {lane} out of order"
            );
        }
        drop(rt);
        let _ = std::fs::remove_file(&file);
    }
}

#[test]
fn a_runtime_dropped_with_data_on_the_device_leaves_a_valid_file() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    for path in PATHS {
        let file = trace_path("dropped", path);
        let Some(rt) = traced(path, &file) else {
            return;
        };
        let k = kernels(&rt);
        let n = 1 << 20;
        let mut m = rt.alloc::<u32>(n).unwrap();
        m.iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = pattern(i, 1));
        let p = common::push::AddK { n: n as u32, k: 1 };
        rt.launch(&k.add, groups(n, 256), (&mut m, Push(&p)))
            .unwrap();
        // Dropped at once: the drop brings the results home, after the last drain.
        drop(rt);
        let evs = events(&file);
        let what = format!("{path:?}");
        assert!(
            evs.iter().any(|e| e["name"] == "trace end"),
            "{what}: no end"
        );
        assert_eq!(named(&evs, "launch ").count(), 1, "{what}");
        assert!(
            named(&evs, "to host (bulk)").count() >= 1,
            "{what}: the drop's move home is in the file"
        );
        assert!((0..n).all(|i| m[i] == pattern(i, 1) + 1), "{what}");
        let _ = std::fs::remove_file(&file);
    }
}
