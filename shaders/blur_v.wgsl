// Blur, vertical pass: `dst` = `src` filtered with the 9-tap binomial kernel
// (1 8 28 56 70 56 28 8 1) / 256 along columns, edges clamped.
//
// Pixels are RGBA8, one u32 each (R in the low byte), `width * height` of them row-major.
// Integer arithmetic, rounded to nearest: `(sum + 128) / 256` per channel, so a CPU
// reference matches exactly. Run with blur_h.wgsl for a separable 2-D Gaussian-like blur.
// Grid-stride loop over pixels: dispatch `[groups, 1, 1]` with any group count.

struct Params {
    width: u32,
    height: u32,
}

@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
var<immediate> params: Params;

fn unpack(p: u32) -> vec4<u32> {
    return vec4<u32>(p & 255u, (p >> 8u) & 255u, (p >> 16u) & 255u, p >> 24u);
}

@compute @workgroup_size(256)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let width = params.width;
    let height = params.height;
    let n = width * height;
    let stride = groups.x * 256u;
    var weights = array<u32, 9>(1u, 8u, 28u, 56u, 70u, 56u, 28u, 8u, 1u);
    for (var i = gid.x; i < n; i += stride) {
        let x = i % width;
        let y = i / width;
        var acc = vec4<u32>(0u);
        for (var t = 0u; t < 9u; t++) {
            let yt = u32(clamp(i32(y) + i32(t) - 4, 0, i32(height) - 1));
            acc += weights[t] * unpack(src[yt * width + x]);
        }
        let v = (acc + vec4<u32>(128u)) / 256u;
        dst[i] = v.x | (v.y << 8u) | (v.z << 16u) | (v.w << 24u);
        if n - i <= stride {
            break;
        }
    }
}
