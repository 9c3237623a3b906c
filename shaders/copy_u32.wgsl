// Copy: `dst[i] = src[i]` for `i < n`; `src` is a read-only binding, `dst` read-write.
//
// Grid-stride loop over the x dimension: dispatch `[groups, 1, 1]` with any group count.

struct Params {
    n: u32,
}

@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
var<immediate> params: Params;

@compute @workgroup_size(256)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let n = params.n;
    let stride = groups.x * 256u;
    for (var i = gid.x; i < n; i += stride) {
        dst[i] = src[i];
        if n - i <= stride {
            break;
        }
    }
}
