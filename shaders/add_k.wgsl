// Increment: `data[i] += k` (wrapping) for `i < n`; reads and writes the same buffer.
//
// Grid-stride loop over the x dimension: dispatch `[groups, 1, 1]` with any group count.

struct Params {
    n: u32,
    k: u32,
}

@group(0) @binding(0) var<storage, read_write> data: array<u32>;
var<immediate> params: Params;

@compute @workgroup_size(64)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let n = params.n;
    let stride = groups.x * 64u;
    for (var i = gid.x; i < n; i += stride) {
        data[i] += params.k;
        if n - i <= stride {
            break;
        }
    }
}
