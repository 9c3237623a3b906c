//! `cargo run --release --example pipeline [-- --full]`: the example in `examples/pipeline.rs`, on a
//! runtime of its own; prints what it checked and what moved.

fn main() -> anyhow::Result<()> {
    vkhmm_examples::pipeline::EXAMPLE.main()
}
