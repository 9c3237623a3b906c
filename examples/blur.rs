//! A separable 2-D blur of an RGBA image held as `Vec<[u8; 4]>`, written out as PNG files.
//!
//! Two stencil kernels run back to back: `shaders/blur_h.wgsl` filters along rows into a
//! scratch image, `shaders/blur_v.wgsl` along columns into the result — a 9×9 binomial
//! (Gaussian-like) blur in 18 taps per pixel instead of 81. The scratch image never comes
//! back to the host: the second kernel reads it where the first left it. The input and the
//! result are written as PNG files into `$VKHMM_OUT` (or the system temporary directory) so
//! a person can look at them.
//!
//! The filter works in integers with round-to-nearest, so the result must equal the CPU's
//! exactly.
//!
//! Run: `cargo run --release --example blur [-- --full]` (`--full`: 4096×4096).

use std::path::{Path, PathBuf};

use bytemuck::{Pod, Zeroable};
use vkhmm::{shaders, Push, Runtime};

use crate::Example;

/// The push constants of `shaders/blur_h.wgsl` and `shaders/blur_v.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    width: u32,
    height: u32,
}

/// The binomial weights of both passes; they sum to 256.
const WEIGHTS: [u32; 9] = [1, 8, 28, 56, 70, 56, 28, 8, 1];

/// A test picture: colour gradients, a checkerboard and a ring, all with sharp edges.
fn picture(width: usize, height: usize) -> Vec<[u8; 4]> {
    let (cx, cy) = (width as f32 / 2.0, height as f32 / 2.0);
    let mut img = Vec::with_capacity(width * height);
    for y in 0..height {
        for x in 0..width {
            let check = ((x / 32) + (y / 32)) % 2 == 0;
            let r = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
            let ring = (r - cx.min(cy) * 0.6).abs() < 12.0;
            let red = (x * 255 / width) as u8;
            let green = (y * 255 / height) as u8;
            let blue = if check { 200 } else { 40 };
            img.push(if ring {
                [255, 255, 255, 255]
            } else {
                [red, green, blue, 255]
            });
        }
    }
    img
}

/// One blur pass on the CPU, the same integer arithmetic as the shaders.
fn blur_cpu(src: &[[u8; 4]], width: usize, height: usize, horizontal: bool) -> Vec<[u8; 4]> {
    let mut dst = vec![[0u8; 4]; width * height];
    for y in 0..height {
        for x in 0..width {
            let mut acc = [0u32; 4];
            for (t, &w) in WEIGHTS.iter().enumerate() {
                let (sx, sy) = if horizontal {
                    ((x + t).saturating_sub(4).min(width - 1), y)
                } else {
                    (x, (y + t).saturating_sub(4).min(height - 1))
                };
                let p = src[sy * width + sx];
                for c in 0..4 {
                    acc[c] += w * p[c] as u32;
                }
            }
            dst[y * width + x] = acc.map(|a| ((a + 128) / 256) as u8);
        }
    }
    dst
}

/// Writes an RGBA image as a PNG file.
fn write_png(path: &Path, img: &[[u8; 4]], width: usize, height: usize) -> anyhow::Result<()> {
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut enc = png::Encoder::new(file, width as u32, height as u32);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::Fast);
    let mut writer = enc.write_header()?;
    writer.write_image_data(bytemuck::cast_slice(img))?;
    writer.finish()?;
    Ok(())
}

/// Blurs a 1024×768 picture (4096×4096 with `full`), checks it, writes both PNGs.
pub fn run(rt: &Runtime, full: bool) -> anyhow::Result<String> {
    let (width, height) = if full { (4096, 4096) } else { (1024, 768) };
    let image = picture(width, height);
    let mut scratch = vec![[0u8; 4]; width * height];
    let mut blurred = vec![[0u8; 4]; width * height];

    let h = rt.kernel_wgsl(shaders::BLUR_H_WGSL, "main")?;
    let v = rt.kernel_wgsl(shaders::BLUR_V_WGSL, "main")?;
    let params = Params {
        width: width as u32,
        height: height as u32,
    };
    rt.launch(&h, [1024, 1, 1], (&image, &mut scratch, Push(&params)))?;
    rt.launch(&v, [1024, 1, 1], (&scratch, &mut blurred, Push(&params)))?;

    let want = blur_cpu(&blur_cpu(&image, width, height, true), width, height, false);
    if let Some(i) = (0..width * height).find(|&i| blurred[i] != want[i]) {
        anyhow::bail!(
            "blur: pixel ({}, {}) = {:?}, expected {:?}",
            i % width,
            i / width,
            blurred[i],
            want[i]
        );
    }

    let dir = std::env::var_os("VKHMM_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&dir)?;
    let input = dir.join("vkhmm-blur-input.png");
    let output = dir.join("vkhmm-blur-output.png");
    write_png(&input, &image, width, height)?;
    write_png(&output, &blurred, width, height)?;
    println!("blur: wrote {} and {}", input.display(), output.display());
    Ok(format!("{width}x{height} RGBA8"))
}

/// The example as `cargo run --example blur` and `vkhmm demo` run it.
pub const EXAMPLE: Example = Example {
    name: "blur",
    run,
    checked: "every pixel matches the CPU exactly",
    budget: None,
};
