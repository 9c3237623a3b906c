//! `cargo run --release --example blur [-- --full]`: the example in `examples/blur.rs`, on a
//! runtime of its own; prints what it checked and what moved.

fn main() -> anyhow::Result<()> {
    vkhmm_examples::blur::EXAMPLE.main()
}
