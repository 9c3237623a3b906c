//! `cargo run --release --example histogram [-- --full]`: the example in `examples/histogram.rs`, on a
//! runtime of its own; prints what it checked and what moved.

fn main() -> anyhow::Result<()> {
    vkhmm_examples::histogram::EXAMPLE.main()
}
