// Tiled matrix multiply: `c = a · b` with `a` m×k, `b` k×n, `c` m×n, all row-major f32.
//
// Each workgroup (16×16 invocations) computes one 64×64 tile of `c`, each invocation a 4×4
// block of it (rows `lid.y + 16i`, columns `lid.x + 16j`). The workgroup walks the k
// dimension 16 at a time: it loads a 64×16 tile of `a` and a 16×64 tile of `b` into shared
// memory (4 elements of each per invocation), meets at a `workgroupBarrier`, does 16 × 16
// multiply-adds per invocation from shared memory, and meets again before the next load.
// Every element read from memory is used 64 times. Output tiles are covered grid-stride in
// x (columns) and y (rows), so any `[gx, gy, 1]` dispatch covers any size; ragged edges
// load zeros and store nothing.

struct Params {
    m: u32,
    n: u32,
    k: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
var<immediate> params: Params;

const TILE: u32 = 64u;
const STEP: u32 = 16u;

var<workgroup> tile_a: array<array<f32, 16>, 64>;
var<workgroup> tile_b: array<array<f32, 64>, 16>;

@compute @workgroup_size(16, 16)
fn main(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let m = params.m;
    let n = params.n;
    let k = params.k;
    let flat = lid.y * 16u + lid.x;
    // The loop bounds depend only on workgroup-uniform values, so every invocation of a
    // workgroup reaches every barrier.
    for (var tr = wid.y * TILE; tr < m; tr += groups.y * TILE) {
        for (var tc = wid.x * TILE; tc < n; tc += groups.x * TILE) {
            var acc = array<vec4<f32>, 4>();
            for (var t = 0u; t < k; t += STEP) {
                for (var r = 0u; r < 4u; r++) {
                    let ia = flat + r * 256u;
                    let row = tr + ia / STEP;
                    let ka = t + ia % STEP;
                    var va = 0.0;
                    if row < m && ka < k {
                        va = a[row * k + ka];
                    }
                    tile_a[ia / STEP][ia % STEP] = va;
                    let kb = t + ia / TILE;
                    let col = tc + ia % TILE;
                    var vb = 0.0;
                    if kb < k && col < n {
                        vb = b[kb * n + col];
                    }
                    tile_b[ia / TILE][ia % TILE] = vb;
                }
                workgroupBarrier();
                for (var s = 0u; s < STEP; s++) {
                    let bv = vec4<f32>(
                        tile_b[s][lid.x],
                        tile_b[s][lid.x + 16u],
                        tile_b[s][lid.x + 32u],
                        tile_b[s][lid.x + 48u],
                    );
                    for (var i = 0u; i < 4u; i++) {
                        acc[i] += tile_a[lid.y + 16u * i][s] * bv;
                    }
                }
                workgroupBarrier();
            }
            for (var i = 0u; i < 4u; i++) {
                let row = tr + lid.y + 16u * i;
                for (var j = 0u; j < 4u; j++) {
                    let col = tc + lid.x + 16u * j;
                    if row < m && col < n {
                        c[row * n + col] = acc[i][j];
                    }
                }
            }
        }
    }
}
