// SAXPY: `y[i] = a * x[i] + y[i]` for `i < n`; `x` is read-only, `y` read-write.
//
// Grid-stride loop over the x dimension: dispatch `[groups, 1, 1]` with any group count
// (lavapipe allows at most 65535 groups per dimension). The loop leaves before `i + stride`
// could wrap around, so any `n` terminates.

struct Params {
    a: f32,
    n: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
var<immediate> params: Params;

@compute @workgroup_size(256)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let n = params.n;
    let stride = groups.x * 256u;
    for (var i = gid.x; i < n; i += stride) {
        y[i] = params.a * x[i] + y[i];
        if n - i <= stride {
            break;
        }
    }
}
