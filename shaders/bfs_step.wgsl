// One BFS level on a CSR graph: every node `v` with `levels[v] == level` visits its edges
// `targets[offsets[v]..offsets[v + 1]]` and gives each unvisited target (`levels[u]` ==
// 0xffffffff) the level `level + 1`; `found[0]` counts the nodes found this step.
//
// Launch with `level = 0, 1, 2, ...` until a step finds nothing. `atomicMin` makes
// concurrent discoveries of one node agree and count it once. Grid-stride loop over nodes:
// dispatch `[groups, 1, 1]` with any group count.

struct Params {
    nodes: u32,
    level: u32,
}

@group(0) @binding(0) var<storage, read> offsets: array<u32>;
@group(0) @binding(1) var<storage, read> targets: array<u32>;
@group(0) @binding(2) var<storage, read_write> levels: array<atomic<u32>>;
@group(0) @binding(3) var<storage, read_write> found: array<atomic<u32>>;
var<immediate> params: Params;

const UNSEEN: u32 = 0xffffffffu;

@compute @workgroup_size(256)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let n = params.nodes;
    let level = params.level;
    let stride = groups.x * 256u;
    var count = 0u;
    for (var v = gid.x; v < n; v += stride) {
        if atomicLoad(&levels[v]) == level {
            for (var e = offsets[v]; e < offsets[v + 1u]; e++) {
                let u = targets[e];
                if atomicLoad(&levels[u]) == UNSEEN {
                    if atomicMin(&levels[u], level + 1u) == UNSEEN {
                        count += 1u;
                    }
                }
            }
        }
        if n - v <= stride {
            break;
        }
    }
    if count != 0u {
        atomicAdd(&found[0], count);
    }
}
