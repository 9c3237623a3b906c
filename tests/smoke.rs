//! Smoke test: saxpy on two `Vec<f32>`, both transfer paths.

mod common;

use bytemuck::{Pod, Zeroable};
use vkhmm::{shaders, Push};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Saxpy {
    a: f32,
    n: u32,
}

#[test]
fn saxpy_on_vecs() {
    common::each_path_foreign(|rt, path| {
        let k = rt.kernel_wgsl(shaders::SAXPY_WGSL, "main").unwrap();
        let n = 100_000;
        let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let mut y: Vec<f32> = (0..n).map(|i| (2 * i) as f32).collect();
        rt.launch(
            &k,
            common::groups(n, 256),
            (
                &x,
                &mut y,
                Push(&Saxpy {
                    a: 3.0,
                    n: n as u32,
                }),
            ),
        )
        .unwrap();
        for (i, &v) in y.iter().enumerate() {
            assert_eq!(v, 5.0 * i as f32, "{path:?} y[{i}]");
        }
        eprintln!("{path:?}: {:?}", rt.stats());
    });
}
