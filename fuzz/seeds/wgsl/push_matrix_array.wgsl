// Push constants with a matrix, an array and a scalar; a uniform buffer; two entry points.
struct P { m: mat3x3<f32>, v: array<vec2<f32>, 3>, s: u32 }
struct U { scale: f32, n: u32 }
var<immediate> p: P;
@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> u: U;
fn helper(i: u32) -> f32 { return src[i] * u.scale; }
@compute @workgroup_size(8, 4, 2)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    if g.x < u.n { out[g.x] = helper(g.x) + p.m[0].x + p.v[2].y + f32(p.s); }
}
@compute @workgroup_size(32)
fn second() { out[0] = f32(arrayLength(&out)); }
