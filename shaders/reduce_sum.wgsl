// Partial sums: `partial[g]` = the sum of workgroup g's grid-stride share of `src[0..n]`.
//
// One pass of a multi-pass reduction. Each invocation adds its grid-stride share in a
// register, then the workgroup folds its 256 register sums in shared memory (a tree of
// `workgroupBarrier`s) and invocation 0 writes one partial sum. `partial` needs one element
// per workgroup; launch again on `partial` until one value is left. Dispatch `[groups, 1, 1]`
// with any group count.

struct Params {
    n: u32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> partial: array<f32>;
var<immediate> params: Params;

var<workgroup> scratch: array<f32, 256>;

@compute @workgroup_size(256)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let n = params.n;
    let stride = groups.x * 256u;
    var sum = 0.0;
    for (var i = gid.x; i < n; i += stride) {
        sum += src[i];
        if n - i <= stride {
            break;
        }
    }
    scratch[lid.x] = sum;
    workgroupBarrier();
    for (var half = 128u; half > 0u; half >>= 1u) {
        if lid.x < half {
            scratch[lid.x] += scratch[lid.x + half];
        }
        workgroupBarrier();
    }
    if lid.x == 0u {
        partial[wid.x] = scratch[0];
    }
}
