//! The wgpu baseline: the `wgpu-saxpy` binary of the workspace member
//! `baselines/wgpu-saxpy`, run as a child process on the same device.

use std::path::PathBuf;

use serde::Deserialize;

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
    let run: Output = match serde_json::from_str(&text) {
        Ok(run) => run,
        Err(e) => {
            r.wgpu = Some(format!("unreadable output of {}: {e}", bin.display()));
            return Ok(());
        }
    };
    run.record(r);
    p.say(&format!(
        "wgpu: saxpy {:.1} ms, upload 64 MiB {:.2} GB/s, download {:.2} GB/s",
        run.saxpy_s * 1e3,
        r.get("wgpu_upload", TARGET_SIZE).unwrap_or(0.0),
        r.get("wgpu_download", TARGET_SIZE).unwrap_or(0.0)
    ));
    r.wgpu = Some(format!("ran {}", bin.display()));
    Ok(())
}

/// What `wgpu-saxpy` prints: one JSON object on one line (its other fields, the adapter,
/// wgpu version and checksum, are not needed here).
#[derive(Debug, Deserialize)]
struct Output {
    /// `[bytes, seconds]` of one upload, per size.
    #[serde(default)]
    upload: Vec<(f64, f64)>,
    /// `[bytes, seconds]` of one download, per size.
    #[serde(default)]
    download: Vec<(f64, f64)>,
    /// Seconds of the end-to-end saxpy (0 when it did not run).
    #[serde(default)]
    saxpy_s: f64,
}

impl Output {
    /// Adds the series `wgpu_upload` and `wgpu_download` (GB/s by size) and the
    /// sub-measurement `wgpu_saxpy_ms`.
    fn record(&self, r: &mut Report) {
        for (points, series) in [
            (&self.upload, "wgpu_upload"),
            (&self.download, "wgpu_download"),
        ] {
            for &(bytes, secs) in points {
                r.point(series, bytes as usize, bytes / secs / 1e9);
            }
        }
        r.extra.push(("wgpu_saxpy_ms".into(), self.saxpy_s * 1e3));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line as `baselines/wgpu-saxpy` prints it (`{:e}` numbers, extra fields).
    const LINE: &str = "{\"adapter\":\"llvmpipe (LLVM 15.0.6, 256 bits)\",\"wgpu\":\"30\",\
        \"upload\":[[65536,3.2768e-5],[67108864,1.6777216e-2]],\
        \"download\":[[65536,6.5536e-5],[67108864,3.3554432e-2]],\
        \"saxpy_mib\":64,\"saxpy_s\":1.5e-1,\"saxpy_checksum\":1.2345678e10}\n";

    #[test]
    fn the_baselines_line_becomes_series_and_a_sub_measurement() {
        let run: Output = serde_json::from_str(LINE).unwrap();
        let mut r = Report::default();
        run.record(&mut r);
        let gbps = |series, bytes| r.get(series, bytes).map(|g| (g * 1e6).round() / 1e6);
        assert_eq!(gbps("wgpu_upload", 65536), Some(2.0));
        assert_eq!(gbps("wgpu_upload", TARGET_SIZE), Some(4.0));
        assert_eq!(gbps("wgpu_download", 65536), Some(1.0));
        assert_eq!(gbps("wgpu_download", TARGET_SIZE), Some(2.0));
        assert_eq!(r.extra, [("wgpu_saxpy_ms".to_string(), 150.0)]);
    }
}
