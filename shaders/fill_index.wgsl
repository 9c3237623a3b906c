// Fill: `out[i] = i * mul + add` (wrapping u32 arithmetic) for `i < n`; write-only use.
//
// Tests use it to lay down exact patterns (element i holds i). Grid-stride loop over the x
// dimension: dispatch `[groups, 1, 1]` with any group count.

struct Params {
    n: u32,
    mul: u32,
    add: u32,
}

@group(0) @binding(0) var<storage, read_write> out: array<u32>;
var<immediate> params: Params;

@compute @workgroup_size(64)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let n = params.n;
    let stride = groups.x * 64u;
    for (var i = gid.x; i < n; i += stride) {
        out[i] = i * params.mul + params.add;
        if n - i <= stride {
            break;
        }
    }
}
