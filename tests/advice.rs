//! `Runtime::advise`: each advice's effect, seen through `residency` and `stats`, next to the
//! same program without it (so the test shows the advice changes something).

mod common;

use common::{each_path, groups, pattern};
use vkhmm::{shaders, Advice, Location, Managed, Push, Runtime};

const HOST: Advice = Advice::PreferredLocation(Location::Host);
const DEVICE: Advice = Advice::PreferredLocation(Location::Device);

fn add_one(rt: &Runtime, v: &mut [u32]) {
    let add = rt.kernel_wgsl(shaders::ADD_K_WGSL, "main").unwrap();
    let push = [v.len() as u32, 1u32];
    rt.launch(&add, groups(v.len(), 64), (v, Push(&push)))
        .unwrap();
}

fn checksum(rt: &Runtime, v: &[u32]) -> u32 {
    let sum = rt.kernel_wgsl(shaders::CHECKSUM_WGSL, "main").unwrap();
    let mut out = [0u32; 4];
    let n = [v.len() as u32];
    rt.launch(&sum, groups(v.len(), 256), (v, &mut out, Push(&n)))
        .unwrap();
    out[0]
}

fn data(rt: &Runtime, seed: u32) -> Managed<u32> {
    let v: Vec<u32> = (0..256 * 1024).map(|i| pattern(i, seed)).collect(); // 1 MiB
    rt.alloc_from(&v).unwrap()
}

#[test]
fn preferred_host_brings_written_pages_home_after_each_launch() {
    each_path(|rt, path| {
        let mut plain = data(rt, 1);
        let mut advised = data(rt, 1);
        rt.advise(&advised, HOST).unwrap();
        add_one(rt, &mut plain);
        add_one(rt, &mut advised);
        let pages = plain.len() * 4 / 4096;
        assert_eq!(rt.residency(&plain).device, pages, "{path:?}: default");
        let r = rt.residency(&advised);
        assert_eq!(
            (r.device, r.shared),
            (0, pages),
            "{path:?}: home and still valid on the device"
        );

        let before = rt.stats();
        let ok = (0..advised.len()).all(|i| advised[i] == pattern(i, 1) + 1);
        assert!(ok, "{path:?}: results");
        assert_eq!((rt.stats() - before).cpu_faults, 0, "{path:?}: no faults");
        let before = rt.stats();
        assert!((0..plain.len()).all(|i| plain[i] == pattern(i, 1) + 1));
        assert!((rt.stats() - before).cpu_faults > 0, "{path:?}: default");

        // Unset: the next launch leaves its results on the device again.
        rt.advise(&advised, Advice::Unset).unwrap();
        add_one(rt, &mut advised);
        assert_eq!(rt.residency(&advised).device, pages, "{path:?}: unset");
        assert!((0..advised.len()).all(|i| advised[i] == pattern(i, 1) + 2));
    });
}

#[test]
fn read_mostly_keeps_duplicates_across_launches_and_cpu_reads() {
    each_path(|rt, path| {
        let mut v = data(rt, 2);
        rt.advise(&v, HOST).unwrap();
        rt.advise(&v, Advice::ReadMostly).unwrap(); // replaces the preferred location
        let expect = v.iter().fold(0u32, |a, &x| a.wrapping_add(x));
        assert_eq!(checksum(rt, &v), expect);
        let before = rt.stats();
        assert_eq!(v.iter().fold(0u32, |a, &x| a.wrapping_add(x)), expect);
        assert_eq!(checksum(rt, &v), expect);
        let d = rt.stats() - before;
        // Only the checksum's 16-byte result (stack memory, copied through) moves.
        assert_eq!(
            (d.bytes_to_device, d.bytes_to_host, d.cpu_faults),
            (0, 0, 0),
            "{path:?}: {d}"
        );
        assert_eq!((d.copied_to_device, d.copied_to_host), (16, 16), "{path:?}");
        // Writes still invalidate the other copy: a written launch leaves Device pages.
        add_one(rt, &mut v);
        assert_eq!(rt.residency(&v).device, v.len() * 4 / 4096, "{path:?}");
    });
}

/// Three 1.5 MiB buffers under a 4 MiB budget: the third launch must evict one of the first
/// two. Without advice the least recently used goes; advised to stay, it stays.
#[test]
fn preferred_device_is_evicted_last() {
    for path in common::PATHS {
        for advise in [false, true] {
            let Some(rt) = common::runtime_with(Runtime::builder().transfer(path).budget(4 << 20))
            else {
                return;
            };
            let n = 3 * 1024 * 1024 / 2 / 4;
            let fresh = |s| -> Managed<u32> {
                rt.alloc_from(&(0..n).map(|i| pattern(i, s)).collect::<Vec<_>>())
                    .unwrap()
            };
            let (mut a, mut b, mut c) = (fresh(1), fresh(2), fresh(3));
            if advise {
                rt.advise(&a, DEVICE).unwrap();
            } else {
                rt.prefetch(&a, Location::Device).unwrap();
            }
            assert_eq!(rt.residency(&a).device, n * 4 / 4096);
            add_one(&rt, &mut b);
            add_one(&rt, &mut c);
            let (ra, rb) = (rt.residency(&a), rt.residency(&b));
            if advise {
                assert_eq!(ra.device, n * 4 / 4096, "{path:?}: advised stays");
                assert_eq!(rb.device, 0, "{path:?}: the other goes");
            } else {
                assert_eq!(ra.device, 0, "{path:?}: least recently used goes");
            }
            assert!(rt.stats().evictions >= 1);
            for (v, s, k) in [(&mut a, 1, 0), (&mut b, 2, 1), (&mut c, 3, 1)] {
                assert!((0..n).all(|i| v[i] == pattern(i, s) + k), "{path:?}");
            }
        }
    }
}
