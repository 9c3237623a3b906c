//! `cargo run --release --example matmul [-- --full]`: the example in `examples/matmul.rs`, on a
//! runtime of its own; prints what it checked and what moved.

fn main() -> anyhow::Result<()> {
    vkhmm_examples::matmul::EXAMPLE.main()
}
