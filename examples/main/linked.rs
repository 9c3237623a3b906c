//! `cargo run --release --example linked [-- --full]`: the example in `examples/linked.rs`, on a
//! runtime of its own; prints what it checked and what moved.

fn main() -> anyhow::Result<()> {
    vkhmm_examples::linked::EXAMPLE.main()
}
