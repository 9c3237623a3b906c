//! The wgpu baseline: the `wgpu-saxpy` binary of the workspace member
//! `baselines/wgpu-saxpy`, run as a child process on the same device.

use std::path::PathBuf;

use super::args::Args;
use super::report::Report;
use super::{Progress, TARGET_SIZE};

/// Finds the wgpu baseline binary.
fn wgpu_binary(args: &Args) -> Option<PathBuf> {
    if let Some(p) = &args.wgpu {
        return Some(p.clone());
    }
    if let Some(p) = std::env::var_os("VKHMM_WGPU_BASELINE") {
        return Some(p.into());
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [
        dir.join("wgpu-saxpy"),
        dir.join("../release/wgpu-saxpy"),
        dir.join("../../release/wgpu-saxpy"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// Runs the wgpu baseline and adds its figures (its own process, same device).
pub(crate) fn run(
    r: &mut Report,
    p: &Progress,
    args: &Args,
    sizes: &[usize],
) -> anyhow::Result<()> {
    const NOT_BUILT: &str = "not built: run `cargo build --release -p wgpu-saxpy`";
    let Some(bin) = wgpu_binary(args) else {
        p.say(&format!("wgpu baseline {NOT_BUILT}"));
        r.wgpu = Some(NOT_BUILT.into());
        return Ok(());
    };
    p.say(&format!("wgpu baseline: running {}", bin.display()));
    let sizes_arg = sizes
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let out = std::process::Command::new(&bin)
        .args(["--sizes", &sizes_arg])
        .args(["--iters", if args.quick { "3" } else { "7" }])
        .args(["--saxpy-mib", &args.saxpy_mib.to_string()])
        .args(["--saxpy-iters", if args.quick { "2" } else { "4" }])
        .stderr(std::process::Stdio::null())
        .output();
    let text = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => {
            r.wgpu = Some(format!("failed ({})", o.status));
            return Ok(());
        }
        Err(e) => {
            r.wgpu = Some(format!("could not run {}: {e}", bin.display()));
            return Ok(());
        }
    };
    for (key, series) in [("upload", "wgpu_upload"), ("download", "wgpu_download")] {
        for (bytes, secs) in pairs(&text, key) {
            r.point(series, bytes as usize, bytes / secs / 1e9);
        }
    }
    let saxpy_s = number(&text, "saxpy_s").unwrap_or(0.0);
    r.extra.push(("wgpu_saxpy_ms".into(), saxpy_s * 1e3));
    p.say(&format!(
        "wgpu: saxpy {:.1} ms, upload 64 MiB {:.2} GB/s, download {:.2} GB/s",
        saxpy_s * 1e3,
        r.get("wgpu_upload", TARGET_SIZE).unwrap_or(0.0),
        r.get("wgpu_download", TARGET_SIZE).unwrap_or(0.0)
    ));
    r.wgpu = Some(format!("ran {}", bin.display()));
    Ok(())
}

/// `"key":[[a,b],[c,d]]` out of the baseline's one-line JSON.
fn pairs(text: &str, key: &str) -> Vec<(f64, f64)> {
    let Some(start) = text.find(&format!("\"{key}\":[")) else {
        return Vec::new();
    };
    let rest = &text[start + key.len() + 4..];
    let end = rest.find("]]").map_or(0, |e| e + 1);
    rest[..end]
        .split(']')
        .filter_map(|pair| {
            let pair = pair.trim_start_matches([',', '[']);
            let (a, b) = pair.split_once(',')?;
            Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
        })
        .collect()
}

/// `"key":number` out of the baseline's JSON.
fn number(text: &str, key: &str) -> Option<f64> {
    let start = text.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &text[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}
