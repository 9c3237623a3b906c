//! Pipelines and dispatches on a real device: exact SAXPY results on both transfer paths,
//! separate submit and wait, and every argument, group count and interface vkhmm refuses.

use std::sync::Arc;

use super::*;
use crate::device::config::DEFAULT_STAGING_BYTES;
use crate::device::Device;
use crate::device::{test_device, BlockInit, DeviceConfig, Transfer, TransferPath};
use crate::error::Error;
use crate::shader::{Access, BindingInfo, BindingKind, KernelInfo};

/// y[i] = params.a * x[i] + y[i] for i < n, grid-stride; `a` from a uniform buffer, `n`
/// from push constants.
const SAXPY: &str = r#"
    struct Params { a: f32 }
    struct Push { n: u32 }
    @group(0) @binding(0) var<uniform> params: Params;
    @group(0) @binding(1) var<storage, read> x: array<f32>;
    @group(0) @binding(2) var<storage, read_write> y: array<f32>;
    var<immediate> push: Push;

    @compute @workgroup_size(64)
    fn main(@builtin(global_invocation_id) gid: vec3<u32>,
            @builtin(num_workgroups) groups: vec3<u32>) {
        var i = gid.x;
        loop {
            if i >= push.n { break; }
            y[i] = params.a * x[i] + y[i];
            i += groups.x * 64u;
        }
    }
"#;

/// WGSL → SPIR-V 1.3 with naga, with the options that matter on lavapipe.
fn compile(source: &str) -> Vec<u32> {
    use naga::back::spv;
    use naga::valid::{Capabilities, ValidationFlags, Validator};
    let module = naga::front::wgsl::parse_str(source).unwrap();
    let info = Validator::new(ValidationFlags::all(), Capabilities::IMMEDIATES)
        .validate(&module)
        .unwrap();
    let options = spv::Options {
        lang_version: (1, 3),
        zero_initialize_workgroup_memory: spv::ZeroInitializeWorkgroupMemoryMode::None,
        force_loop_bounding: false,
        emit_int_div_checks: false,
        ..spv::Options::default()
    };
    let pipeline = spv::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: "main".into(),
    };
    spv::write_vec(&module, &info, &options, Some(&pipeline)).unwrap()
}

fn binding(binding: u32, kind: BindingKind, access: Access) -> BindingInfo {
    BindingInfo {
        set: 0,
        binding,
        kind,
        access,
        name: None,
    }
}

fn saxpy_info() -> KernelInfo {
    KernelInfo {
        entry: "main".into(),
        workgroup_size: [64, 1, 1],
        bindings: vec![
            binding(0, BindingKind::Uniform, Access::Read),
            binding(1, BindingKind::Storage, Access::Read),
            binding(2, BindingKind::Storage, Access::ReadWrite),
        ],
        push_constant_size: 4,
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|f| f.to_ne_bytes()).collect()
}

fn setup(transfer: Option<TransferPath>) -> Option<(Arc<Device>, Pipeline, Dispatcher, Transfer)> {
    let dev = test_device(DeviceConfig {
        transfer,
        ..DeviceConfig::default()
    })?;
    let pipeline = Pipeline::new(&dev, &compile(SAXPY), &saxpy_info()).unwrap();
    let dispatcher = Dispatcher::new(&dev).unwrap();
    let t = Transfer::new(&dev, dev.info().transfer_path, DEFAULT_STAGING_BYTES).unwrap();
    Some((dev, pipeline, dispatcher, t))
}

#[test]
fn saxpy_gives_exact_results_on_both_paths() {
    for path in [None, Some(TransferPath::Staged)] {
        let Some((dev, pipeline, mut dispatcher, mut t)) = setup(path) else {
            return;
        };
        let n = 100_000usize;
        let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let y = vec![1.0f32; n];
        let params = dev.alloc_block(16, BlockInit::Zeroed, "params").unwrap();
        let xs = dev
            .alloc_block(4 * n as u64, BlockInit::Uninit, "x")
            .unwrap();
        // y lives at an offset inside its block, behind a guard of known bytes.
        let y_at = 256u64;
        let ys = dev
            .alloc_block(y_at + 4 * n as u64 + 64, BlockInit::Zeroed, "y")
            .unwrap();
        // SAFETY: the test owns the blocks; nothing is in flight.
        unsafe {
            t.upload(&params, &[(0, &2.0f32.to_ne_bytes())]).unwrap();
            t.upload(&xs, &[(0, &f32_bytes(&x))]).unwrap();
            t.upload(
                &ys,
                &[(y_at, &f32_bytes(&y)), (y_at + 4 * n as u64, &[0xEE; 64])],
            )
            .unwrap();
        }
        let args = [
            BufferArg {
                block: &params,
                offset: 0,
                range: 16,
            },
            BufferArg {
                block: &xs,
                offset: 0,
                range: 4 * n as u64,
            },
            BufferArg {
                block: &ys,
                offset: y_at,
                range: 4 * n as u64,
            },
        ];
        let push = (n as u32).to_ne_bytes();
        // Twice: the second run reuses the command buffer and the reset descriptor pool.
        for groups in [[64, 1, 1], [1000, 1, 1]] {
            // SAFETY: the blocks outlive the call, which waits; nothing else touches them.
            unsafe { dispatcher.dispatch(&pipeline, &args, &push, groups) }.unwrap();
        }
        let mut back = Vec::new();
        // SAFETY: the dispatch was waited for; the test owns the block.
        unsafe {
            t.download(
                &ys,
                &[(y_at, 4 * n), (y_at + 4 * n as u64, 64)],
                &mut |_, _, b| {
                    back.extend_from_slice(b);
                    Ok(())
                },
            )
        }
        .unwrap();
        for i in 0..n {
            let got = f32::from_ne_bytes(back[4 * i..4 * i + 4].try_into().unwrap());
            assert_eq!(got, 4.0 * i as f32 + 1.0, "{path:?}: y[{i}]");
        }
        assert!(
            back[4 * n..].iter().all(|&b| b == 0xEE),
            "the bytes after y are untouched"
        );
    }
}

#[test]
fn submit_and_wait_separately_then_drop_with_nothing_in_flight() {
    let Some((dev, pipeline, mut dispatcher, _t)) = setup(None) else {
        return;
    };
    let block = dev.alloc_block(4096, BlockInit::Zeroed, "b").unwrap();
    let args = [
        BufferArg {
            block: &block,
            offset: 0,
            range: 16,
        },
        BufferArg {
            block: &block,
            offset: 16,
            range: 64,
        },
        BufferArg {
            block: &block,
            offset: 1024,
            range: 64,
        },
    ];
    // SAFETY: `block` outlives the wait below; nothing else touches it.
    unsafe { dispatcher.submit(&pipeline, &args, &16u32.to_ne_bytes(), [1, 1, 1]) }.unwrap();
    drop(pipeline); // the dispatcher keeps its own reference until the wait
    dispatcher.wait().unwrap();
    dispatcher.wait().unwrap();
}

#[test]
fn group_counts_outside_the_limits_are_invalid_dispatch() {
    let Some((dev, pipeline, mut dispatcher, _t)) = setup(None) else {
        return;
    };
    let block = dev.alloc_block(4096, BlockInit::Zeroed, "b").unwrap();
    let args = [
        BufferArg {
            block: &block,
            offset: 0,
            range: 16,
        },
        BufferArg {
            block: &block,
            offset: 16,
            range: 64,
        },
        BufferArg {
            block: &block,
            offset: 1024,
            range: 64,
        },
    ];
    let max = dev.info().limits.max_compute_work_group_count;
    for groups in [[0, 1, 1], [1, 0, 1], [max[0] + 1, 1, 1], [1, 1, max[2] + 1]] {
        // SAFETY: rejected before anything is recorded.
        let e = unsafe { dispatcher.dispatch(&pipeline, &args, &[0; 4], groups) }.unwrap_err();
        assert!(
            matches!(e, Error::InvalidDispatch { groups: g, max: m } if g == groups && m == max),
            "{e}"
        );
    }
    // SAFETY: as above.
    unsafe { dispatcher.dispatch(&pipeline, &args, &[0; 4], max) }.unwrap();
}

#[test]
fn arguments_that_do_not_fit_are_rejected() {
    let Some((dev, pipeline, mut dispatcher, _t)) = setup(None) else {
        return;
    };
    let block = dev.alloc_block(4096, BlockInit::Zeroed, "b").unwrap();
    let arg = |offset, range| BufferArg {
        block: &block,
        offset,
        range,
    };
    let mut run = |args: &[BufferArg<'_>], push: &[u8]| {
        // SAFETY: every case here is rejected before anything is recorded.
        unsafe { dispatcher.dispatch(&pipeline, args, push, [1, 1, 1]) }.unwrap_err()
    };
    let ok = [arg(0, 16), arg(16, 64), arg(1024, 64)];
    assert!(matches!(
        run(&ok[..2], &[0; 4]),
        Error::ArgumentCount {
            expected: 3,
            given: 2
        }
    ));
    assert!(matches!(
        run(&ok, &[0; 8]),
        Error::PushConstantSize {
            expected: 4,
            given: 8
        }
    ));
    assert!(matches!(
        run(&[ok[0], ok[1], arg(0, 0)], &[0; 4]),
        Error::EmptyBinding { binding: 2 }
    ));
    assert!(matches!(
        run(&[ok[0], ok[1], arg(4000, 97)], &[0; 4]),
        Error::BindingTooLarge {
            binding: 2,
            len: 97,
            max: 96
        }
    ));
    assert!(matches!(
        run(&[ok[0], arg(4, 64), ok[2]], &[0; 4]),
        Error::MisalignedBinding {
            binding: 1,
            addr: 4,
            ..
        }
    ));
    let too_big = u64::from(dev.info().limits.max_uniform_buffer_range) + 16;
    let big = dev.alloc_block(too_big, BlockInit::Uninit, "big").unwrap();
    let e = run(
        &[
            BufferArg {
                block: &big,
                offset: 0,
                range: too_big,
            },
            ok[1],
            ok[2],
        ],
        &[0; 4],
    );
    assert!(
        matches!(e, Error::BindingTooLarge { binding: 0, .. }),
        "{e}"
    );
}

#[test]
fn interfaces_vkhmm_cannot_bind_are_unsupported_kernel() {
    let Some(dev) = test_device(DeviceConfig::default()) else {
        return;
    };
    let spirv = compile(SAXPY);
    let unsupported = |info: KernelInfo, needle: &str| match Pipeline::new(&dev, &spirv, &info) {
        Err(Error::UnsupportedKernel(s)) => {
            assert!(s.contains(needle), "{s:?} lacks {needle:?}")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("accepted: {needle}"),
    };
    let mut gap = saxpy_info();
    gap.bindings.remove(1);
    unsupported(gap, "without gaps or repeats, found 2 where 1 belongs");
    let mut set1 = saxpy_info();
    set1.bindings[2].set = 1;
    set1.bindings[2].name = Some("y".into());
    unsupported(set1, "binding 2 (`y`) is in @group(1)");
    let mut push = saxpy_info();
    push.push_constant_size = dev.info().limits.max_push_constants_size + 4;
    unsupported(push, "over the device's limit");
    let mut odd = saxpy_info();
    odd.push_constant_size = 6;
    unsupported(odd, "not a multiple of 4");

    let e = Pipeline::new(&dev, &[1, 2, 3], &saxpy_info())
        .err()
        .unwrap();
    assert!(matches!(e, Error::InvalidShader(_)), "{e}");
    let mut nul = saxpy_info();
    nul.entry = "ma\0in".into();
    assert!(matches!(
        Pipeline::new(&dev, &spirv, &nul),
        Err(Error::InvalidShader(_))
    ));
}

#[test]
fn pipeline_reports_its_interface() {
    let Some(dev) = test_device(DeviceConfig::default()) else {
        return;
    };
    let pipeline = Pipeline::new(&dev, &compile(SAXPY), &saxpy_info()).unwrap();
    assert_eq!(
        pipeline.binding_kinds(),
        [
            BindingKind::Uniform,
            BindingKind::Storage,
            BindingKind::Storage
        ]
    );
    assert_eq!(pipeline.push_constant_size(), 4);
    assert_eq!(pipeline.workgroup_size(), [64, 1, 1]);
    assert!(Arc::ptr_eq(pipeline.device(), &dev));
}
