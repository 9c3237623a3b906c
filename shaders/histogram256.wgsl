// Histogram: `bins[b] += number of bytes equal to b` over `words` u32 words of bytes.
//
// The bytes are read four to a word (little-endian). Each workgroup counts into its own
// 256 bins in shared memory with workgroup atomics, then adds each non-zero bin to the
// global `bins` with one `atomicAdd`, so global atomics stay few. `bins` (256 elements)
// must be zero before the launch for a plain count. Dispatch `[groups, 1, 1]` with any
// group count.

struct Params {
    words: u32,
}

@group(0) @binding(0) var<storage, read> data: array<u32>;
@group(0) @binding(1) var<storage, read_write> bins: array<atomic<u32>>;
var<immediate> params: Params;

var<workgroup> local_bins: array<atomic<u32>, 256>;

@compute @workgroup_size(256)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    // Shared memory starts undefined (vkhmm compiles without zero-init): clear it first.
    atomicStore(&local_bins[lid.x], 0u);
    workgroupBarrier();
    let n = params.words;
    let stride = groups.x * 256u;
    for (var i = gid.x; i < n; i += stride) {
        let w = data[i];
        atomicAdd(&local_bins[w & 255u], 1u);
        atomicAdd(&local_bins[(w >> 8u) & 255u], 1u);
        atomicAdd(&local_bins[(w >> 16u) & 255u], 1u);
        atomicAdd(&local_bins[w >> 24u], 1u);
        if n - i <= stride {
            break;
        }
    }
    workgroupBarrier();
    let count = atomicLoad(&local_bins[lid.x]);
    if count != 0u {
        atomicAdd(&bins[lid.x], count);
    }
}
