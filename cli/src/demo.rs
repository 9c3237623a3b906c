//! `vkhmm demo`: the examples on unified memory, one summary table.
//!
//! The examples are the crate vkhmm-examples (`examples/`), so the demo runs exactly the code
//! `cargo run --example NAME` runs. Each example works on ordinary Rust collections, checks
//! its result against a CPU reference and returns a size label; the demo measures what each
//! one moved (`Stats` before and after) and its wall time.

use std::time::{Duration, Instant};

use vkhmm::{Runtime, Stats};
use vkhmm_examples::ALL;

/// Options of `vkhmm demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run the large sizes (64 Mi floats, 2048² matrices, ...).
    #[arg(long)]
    pub full: bool,
}

/// One row of the table.
struct Row {
    name: &'static str,
    size: String,
    ok: bool,
    stats: Stats,
    wall: Duration,
}

/// Runs every example and prints the table; fails if any check failed.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let rt = Runtime::new()?;
    let info = rt.device_info();
    eprintln!(
        "vkhmm demo on {} ({:?} transfer path){}",
        info.name,
        info.transfer_path,
        if args.full { ", full sizes" } else { "" }
    );
    let mut rows = Vec::new();
    for (k, example) in ALL.iter().enumerate() {
        let name = example.name;
        eprintln!("[{}/{}] {name} ...", k + 1, ALL.len());
        // An example that needs its own budget (oversubscription) gets its own runtime, on
        // the same device and transfer path.
        let own;
        let on = match example.budget {
            Some(budget) => {
                own = Runtime::builder()
                    .transfer(rt.device_info().transfer_path)
                    .budget(budget(args.full))
                    .build()?;
                &own
            }
            None => &rt,
        };
        let before = on.stats();
        let started = Instant::now();
        let result = (example.run)(on, args.full);
        let wall = started.elapsed();
        let stats = on.stats() - before;
        let (size, ok) = match result {
            Ok(size) => (size, true),
            Err(e) => {
                eprintln!("{name}: FAILED: {e:#}");
                ("-".to_string(), false)
            }
        };
        rows.push(Row {
            name,
            size,
            ok,
            stats,
            wall,
        });
    }
    print_table(&rows);
    let failed: Vec<&str> = rows.iter().filter(|r| !r.ok).map(|r| r.name).collect();
    anyhow::ensure!(failed.is_empty(), "failed: {}", failed.join(", "));
    Ok(())
}

/// A byte count with a binary unit.
fn bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn print_table(rows: &[Row]) {
    let header = [
        "example",
        "size",
        "check",
        "kernel time",
        "CPU faults",
        "to device",
        "to host",
        "copied through",
        "evictions",
        "wall time",
    ];
    let cells: Vec<[String; 10]> = rows
        .iter()
        .map(|r| {
            [
                r.name.to_string(),
                r.size.clone(),
                if r.ok { "ok" } else { "FAILED" }.to_string(),
                format!("{:.1} ms", r.stats.kernel_time.as_secs_f64() * 1e3),
                r.stats.cpu_faults.to_string(),
                bytes(r.stats.bytes_to_device),
                bytes(r.stats.bytes_to_host),
                bytes(r.stats.copied_to_device + r.stats.copied_to_host),
                r.stats.evictions.to_string(),
                format!("{:.0} ms", r.wall.as_secs_f64() * 1e3),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |row: &[&str]| {
        let parts: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, &w))| {
                // Text left, numbers right.
                if i < 3 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        println!("| {} |", parts.join(" | "));
    };
    line(&header);
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            if i < 3 {
                "-".repeat(w + 2)
            } else {
                format!("{}:", "-".repeat(w + 1))
            }
        })
        .collect();
    println!("|{}|", rule.join("|"));
    for row in &cells {
        line(&row.iter().map(String::as_str).collect::<Vec<_>>());
    }
}
