//! Build script: compiles `shaders/*.wgsl` to SPIR-V (filled in by the shader room).
fn main() {
    println!("cargo:rerun-if-changed=shaders");
}
