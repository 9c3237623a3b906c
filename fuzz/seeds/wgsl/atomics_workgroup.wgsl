// Workgroup memory, storage and workgroup atomics, barriers, subgroups, an override.
override block: u32 = 64;
@group(0) @binding(0) var<storage, read_write> hist: array<atomic<u32>>;
@group(1) @binding(3) var<storage, read> keys: array<vec4<u32>>;
var<workgroup> tile: array<u32, 64>;
var<workgroup> count: atomic<u32>;
@compute @workgroup_size(block)
fn main(@builtin(local_invocation_index) l: u32, @builtin(global_invocation_id) g: vec3<u32>) {
    tile[l] = keys[g.x].x;
    workgroupBarrier();
    let s = subgroupAdd(tile[l]);
    atomicAdd(&count, 1u);
    atomicMax(&hist[tile[l] & 255u], s + atomicLoad(&count));
}
