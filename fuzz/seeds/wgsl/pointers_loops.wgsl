// Pointer arguments, loops, switch, private and function variables.
@group(0) @binding(0) var<storage, read_write> data: array<i32>;
var<private> acc: i32;
fn bump(p: ptr<function, i32>, by: i32) { *p += by; }
@compute @workgroup_size(16, 1, 1)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    var x = data[g.x];
    for (var i = 0; i < 4; i++) {
        switch i { case 0: { bump(&x, 1); } default: { x ^= i; } }
    }
    loop { if x > 100 { break; } x = x * 2 + 1; continuing { acc += 1; } }
    data[g.x] = x + acc;
}
