//! `cargo run --release --example saxpy [-- --full]`: the example in `examples/saxpy.rs`, on a
//! runtime of its own; prints what it checked and what moved.

fn main() -> anyhow::Result<()> {
    vkhmm_examples::saxpy::EXAMPLE.main()
}
