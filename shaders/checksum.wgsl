// Checksum: `out[0] += src[0] + src[1] + … + src[n - 1]` (wrapping u32), reading `src` only.
//
// `out[0]` must be zero before the launch for the result to be the plain sum. Each invocation
// sums its grid-stride share in a register and adds it with one `atomicAdd`. Dispatch
// `[groups, 1, 1]` with any group count.

struct Params {
    n: u32,
}

@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> out: array<atomic<u32>>;
var<immediate> params: Params;

@compute @workgroup_size(256)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let n = params.n;
    let stride = groups.x * 256u;
    var sum = 0u;
    for (var i = gid.x; i < n; i += stride) {
        sum += src[i];
        if n - i <= stride {
            break;
        }
    }
    if sum != 0u {
        atomicAdd(&out[0], sum);
    }
}
