//! `cargo run --release --example oversubscribe [-- --full]`: the example in `examples/oversubscribe.rs`, on a
//! runtime of its own; prints what it checked and what moved.

fn main() -> anyhow::Result<()> {
    vkhmm_examples::oversubscribe::EXAMPLE.main()
}
