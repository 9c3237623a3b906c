//! The wgpu baseline of `vkhmm bench`: what a Rust user writes today to move data to a
//! Vulkan device, run saxpy and read the result back.
//!
//! It lives in its own workspace member so that `cargo test` on vkhmm never builds wgpu.
//! Build it with `cargo build --release -p wgpu-saxpy`; `vkhmm bench` finds it next to its
//! own executable (or through `VKHMM_WGPU_BASELINE`) and reads the one JSON line it prints.
//!
//! Figures (each the median of `--iters` runs, seconds):
//! - `upload`: `queue.write_buffer` of a host `Vec<u8>` into a storage buffer, submit, wait;
//! - `download`: `copy_buffer_to_buffer` into a `MAP_READ` buffer, submit, `map_async`, wait,
//!   copy the mapped bytes into a host `Vec<u8>`, unmap;
//! - `saxpy`: two `Vec<f32>` of `--saxpy-mib` MiB each: `write_buffer` both, dispatch,
//!   copy `y` into a mapped staging buffer, map, the CPU sums the whole result, unmap.
//!
//! Buffers are created once, outside the timed region, as a hand-written program would.

use std::time::{Duration, Instant};

const SAXPY_WGSL: &str = r#"
struct Params { a: f32, n: u32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> params: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>) {
    let n = params.n;
    let stride = groups.x * 256u;
    for (var i = gid.x; i < n; i += stride) {
        y[i] = params.a * x[i] + y[i];
        if n - i <= stride { break; }
    }
}
"#;

struct Opts {
    sizes: Vec<u64>,
    iters: usize,
    saxpy_mib: u64,
    saxpy_iters: usize,
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        sizes: (12..=26).step_by(2).map(|s| 1u64 << s).collect(),
        iters: 7,
        saxpy_mib: 64,
        saxpy_iters: 5,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--sizes" => {
                o.sizes = value()?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse().map_err(|e| format!("--sizes {s}: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--iters" => o.iters = value()?.parse().map_err(|e| format!("--iters: {e}"))?,
            "--saxpy-mib" => {
                o.saxpy_mib = value()?.parse().map_err(|e| format!("--saxpy-mib: {e}"))?
            }
            "--saxpy-iters" => {
                o.saxpy_iters = value()?
                    .parse()
                    .map_err(|e| format!("--saxpy-iters: {e}"))?
            }
            "-h" | "--help" => {
                println!(
                    "wgpu-saxpy [--sizes B,B,..] [--iters N] [--saxpy-mib M] [--saxpy-iters N]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    o.iters = o.iters.max(1);
    o.saxpy_iters = o.saxpy_iters.max(1);
    Ok(o)
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64()
}

struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    name: String,
}

impl Gpu {
    fn new() -> Result<Gpu, String> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::VULKAN,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::None,
            ..Default::default()
        }))
        .map_err(|e| format!("no wgpu Vulkan adapter: {e}"))?;
        let name = adapter.get_info().name;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("wgpu-saxpy"),
            required_limits: adapter.limits(),
            ..Default::default()
        }))
        .map_err(|e| format!("request_device: {e}"))?;
        Ok(Gpu {
            device,
            queue,
            name,
        })
    }

    fn buffer(&self, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage,
            mapped_at_creation: false,
        })
    }

    fn wait(&self) {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .expect("device poll");
    }

    /// Maps `buf` for reading and blocks until it is mapped.
    fn map_read(&self, buf: &wgpu::Buffer) {
        buf.slice(..)
            .map_async(wgpu::MapMode::Read, |r| r.expect("map_async"));
        self.wait();
    }
}

fn storage() -> wgpu::BufferUsages {
    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC
}

fn readback() -> wgpu::BufferUsages {
    wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST
}

/// (bytes, upload seconds, download seconds) for one size.
fn transfer(gpu: &Gpu, size: u64, iters: usize) -> (f64, f64) {
    let src: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut dst = vec![0u8; size as usize];
    let dev = gpu.buffer(size, storage());
    let rb = gpu.buffer(size, readback());
    // Warm-up: first use of each buffer allocates and maps on some drivers.
    let run_upload = || {
        let t = Instant::now();
        gpu.queue.write_buffer(&dev, 0, &src);
        gpu.queue.submit([]);
        gpu.wait();
        t.elapsed()
    };
    run_upload();
    let up: Vec<Duration> = (0..iters).map(|_| run_upload()).collect();
    let mut run_download = || {
        let t = Instant::now();
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&dev, 0, &rb, 0, size);
        gpu.queue.submit([enc.finish()]);
        gpu.map_read(&rb);
        dst.copy_from_slice(&rb.get_mapped_range(..).expect("mapped range"));
        rb.unmap();
        t.elapsed()
    };
    run_download();
    let down: Vec<Duration> = (0..iters).map(|_| run_download()).collect();
    assert_eq!(dst[..], src[..], "wgpu download returned wrong bytes");
    (median(up), median(down))
}

/// Median seconds of one end-to-end saxpy over `mib` MiB per vector, and the checksum.
fn saxpy(gpu: &Gpu, mib: u64, iters: usize) -> (f64, f64) {
    let n = (mib << 20) / 4;
    let bytes = n * 4;
    let module = gpu
        .device
        .create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("saxpy"),
            source: wgpu::ShaderSource::Wgsl(SAXPY_WGSL.into()),
        });
    let pipeline = gpu
        .device
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("saxpy"),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
    let bx = gpu.buffer(bytes, storage());
    let by = gpu.buffer(bytes, storage());
    let rb = gpu.buffer(bytes, readback());
    let params = gpu.buffer(
        8,
        wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
    );
    let a = 2.0f32;
    let mut p = [0u8; 8];
    p[..4].copy_from_slice(&a.to_ne_bytes());
    p[4..].copy_from_slice(&(n as u32).to_ne_bytes());
    gpu.queue.write_buffer(&params, 0, &p);
    let layout = pipeline.get_bind_group_layout(0);
    let bind = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &layout,
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: bx.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: by.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 2,
                resource: params.as_entire_binding(),
            },
        ],
    });
    let groups = n.div_ceil(256).min(65535) as u32;
    let mut x: Vec<f32> = vec![0.0; n as usize];
    let mut y: Vec<f32> = vec![0.0; n as usize];
    let mut times = Vec::new();
    let mut checksum = 0.0;
    for it in 0..=iters {
        // The program produces fresh inputs each step (not timed, same for every contender).
        for (i, (xi, yi)) in x.iter_mut().zip(y.iter_mut()).enumerate() {
            *xi = (i % 1024) as f32;
            *yi = (it % 7) as f32;
        }
        let t = Instant::now();
        gpu.queue.write_buffer(&bx, 0, bytemuck::cast_slice(&x));
        gpu.queue.write_buffer(&by, 0, bytemuck::cast_slice(&y));
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(groups, 1, 1);
        }
        enc.copy_buffer_to_buffer(&by, 0, &rb, 0, bytes);
        gpu.queue.submit([enc.finish()]);
        gpu.map_read(&rb);
        let sum: f64 = {
            let view = rb.get_mapped_range(..).expect("mapped range");
            let out: &[f32] = bytemuck::cast_slice(&view);
            assert_eq!(out[1027], a * 3.0 + (it % 7) as f32, "wgpu saxpy result");
            out.iter().map(|&v| f64::from(v)).sum()
        };
        rb.unmap();
        let dt = t.elapsed();
        if it > 0 {
            times.push(dt); // iteration 0 warms up pipelines and allocations
        }
        checksum = sum;
    }
    (median(times), checksum)
}

fn main() {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("wgpu-saxpy: {e}");
            std::process::exit(2);
        }
    };
    let gpu = match Gpu::new() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("wgpu-saxpy: {e}");
            std::process::exit(1);
        }
    };
    let mut upload = Vec::new();
    let mut download = Vec::new();
    for &size in &opts.sizes {
        let (u, d) = transfer(&gpu, size, opts.iters);
        upload.push(format!("[{size},{u:e}]"));
        download.push(format!("[{size},{d:e}]"));
    }
    let (saxpy_s, checksum) = if opts.saxpy_mib > 0 {
        saxpy(&gpu, opts.saxpy_mib, opts.saxpy_iters)
    } else {
        (0.0, 0.0)
    };
    let name = gpu.name.replace(['"', '\\'], "_");
    println!(
        "{{\"adapter\":\"{name}\",\"wgpu\":\"30\",\"upload\":[{}],\"download\":[{}],\
         \"saxpy_mib\":{},\"saxpy_s\":{saxpy_s:e},\"saxpy_checksum\":{checksum:e}}}",
        upload.join(","),
        download.join(","),
        opts.saxpy_mib,
    );
}
