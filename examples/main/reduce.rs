//! `cargo run --release --example reduce [-- --full]`: the example in `examples/reduce.rs`, on a
//! runtime of its own; prints what it checked and what moved.

fn main() -> anyhow::Result<()> {
    vkhmm_examples::reduce::EXAMPLE.main()
}
