//! `cargo run --release --example mmap_file [-- FILE | --full]`: the example in
//! `examples/mmap_file.rs`, on a runtime of its own, over FILE or a file it generates; prints
//! what it checked and what moved.

fn main() -> anyhow::Result<()> {
    let example = vkhmm_examples::mmap_file::EXAMPLE;
    match std::env::args().skip(1).find(|a| !a.starts_with("--")) {
        Some(path) => {
            let rt = vkhmm::Runtime::new()?;
            let before = rt.stats();
            let size = vkhmm_examples::mmap_file::run_on(&rt, path.as_ref())?;
            println!("{}, {size}: {}", example.name, example.checked);
            println!("{}", rt.stats() - before);
            Ok(())
        }
        None => example.main(),
    }
}
