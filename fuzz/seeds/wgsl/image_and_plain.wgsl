// An entry point that uses an image (UnsupportedKernel) and one that does not.
@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@group(0) @binding(1) var tex: texture_2d<f32>;
@compute @workgroup_size(1)
fn main() { out[0] = textureLoad(tex, vec2<i32>(0, 0), 0).x; }
@compute @workgroup_size(1)
fn plain() { out[0] = 1.0; }
