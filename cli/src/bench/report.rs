//! What one run measured ([`Report`]), the rows of its targets, and its two forms: the
//! bandwidthTest-style table and one JSON object.

use std::fmt::Write as _;

use super::args::Args;
use super::measure::size_name;
use super::TARGET_SIZE;

/// How a ratio is judged.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// vkhmm's rate over the baseline's, at least this.
    AtLeast(f64),
    /// vkhmm's time over the baseline's, at most this.
    AtMost(f64),
}

impl Target {
    fn met(self, ratio: f64) -> bool {
        match self {
            Target::AtLeast(t) => ratio >= t,
            Target::AtMost(t) => ratio <= t,
        }
    }

    fn text(self) -> String {
        match self {
            Target::AtLeast(t) => format!(">= {t:.2}x"),
            Target::AtMost(t) => format!("<= {t:.2}x"),
        }
    }
}

/// A figure's unit: rates are better high, times better low.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Unit {
    GBps,
    Micros,
    Millis,
    MiB,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::GBps => "GB/s",
            Unit::Micros => "us",
            Unit::Millis => "ms",
            Unit::MiB => "MiB",
        }
    }
}

/// One line of the table.
pub(crate) struct Row {
    /// The figure's key in the JSON object (`figures`).
    pub(crate) key: String,
    pub(crate) figure: String,
    pub(crate) unit: Unit,
    pub(crate) vkhmm: f64,
    pub(crate) baseline: String,
    /// `None`: the baseline could not be measured (e.g. wgpu not built).
    pub(crate) base: Option<f64>,
    pub(crate) target: Option<Target>,
    pub(crate) note: String,
}

impl Row {
    /// vkhmm over baseline for rates, vkhmm time over baseline time for times.
    fn ratio(&self) -> Option<f64> {
        self.base.filter(|b| *b > 0.0).map(|b| self.vkhmm / b)
    }
}

/// Everything one run measured.
#[derive(Default)]
pub(crate) struct Report {
    /// The Vulkan device's name.
    pub(crate) device: String,
    /// The figures, in table order once [`targets_table`] has run.
    pub(crate) rows: Vec<Row>,
    /// Series name -> (bytes, GB/s) points, for the chart.
    pub(crate) series: Vec<(String, Vec<(usize, f64)>)>,
    /// Extra named numbers (sub-measurements that explain the figures).
    pub(crate) extra: Vec<(String, f64)>,
    /// How the wgpu baseline ran, or why it did not.
    pub(crate) wgpu: Option<String>,
}

impl Report {
    /// Adds the point (`bytes`, `value`) to the series `series`.
    pub(crate) fn point(&mut self, series: &str, bytes: usize, value: f64) {
        match self.series.iter_mut().find(|(n, _)| n == series) {
            Some((_, v)) => v.push((bytes, value)),
            None => self.series.push((series.into(), vec![(bytes, value)])),
        }
    }

    /// The value of the series `series` at `bytes`, if measured.
    pub(crate) fn get(&self, series: &str, bytes: usize) -> Option<f64> {
        self.series
            .iter()
            .find(|(n, _)| n == series)
            .and_then(|(_, v)| v.iter().find(|(b, _)| *b == bytes))
            .map(|&(_, g)| g)
    }
}

/// The sub-measurement `key`, if measured.
fn extra(r: &Report, key: &str) -> Option<f64> {
    r.extra.iter().find(|(k, _)| k == key).map(|&(_, v)| v)
}

/// Series, figure, baseline name, baseline value, target.
type RateRow<'a> = (&'a str, &'a str, &'a str, Option<f64>, Option<Target>);

/// The rows of the sweep at 64 MiB (with their targets), the wgpu saxpy row, then all rows
/// in table order.
pub(crate) fn targets_table(r: &mut Report, saxpy_mib: usize) {
    let mut head = Vec::new();
    let memcpy = r.get("memcpy", TARGET_SIZE);
    let ash_up = r.get("ash_staged_upload", TARGET_SIZE);
    let ash_down = r.get("ash_staged_download", TARGET_SIZE);
    let rate_rows: [RateRow<'_>; 8] = [
        (
            "prefetch_device_direct",
            "prefetch to device, 64 MiB, Direct",
            "memcpy",
            memcpy,
            Some(Target::AtLeast(0.85)),
        ),
        (
            "prefetch_device_staged",
            "prefetch to device, 64 MiB, Staged",
            "memcpy",
            memcpy,
            Some(Target::AtLeast(0.40)),
        ),
        (
            "prefetch_device_staged",
            "prefetch to device, 64 MiB, Staged",
            "ash staging+copy",
            ash_up,
            None,
        ),
        (
            "prefetch_host_direct",
            "prefetch to host, 64 MiB, Direct",
            "memcpy",
            memcpy,
            Some(Target::AtLeast(0.60)),
        ),
        (
            "prefetch_host_staged",
            "prefetch to host, 64 MiB, Staged",
            "memcpy",
            memcpy,
            Some(Target::AtLeast(0.60)),
        ),
        (
            "prefetch_host_staged",
            "prefetch to host, 64 MiB, Staged",
            "ash copy+staging",
            ash_down,
            None,
        ),
        (
            "faultback_seq_direct",
            "fault-back seq, 64 MiB, Direct (sweep)",
            "memcpy",
            memcpy,
            None,
        ),
        (
            "faultback_seq_staged",
            "fault-back seq, 64 MiB, Staged (sweep)",
            "memcpy",
            memcpy,
            None,
        ),
    ];
    for (series, figure, baseline, base, target) in rate_rows {
        let Some(v) = r.get(series, TARGET_SIZE) else {
            continue;
        };
        head.push(Row {
            key: format!(
                "{series}_64mib_vs_{}",
                baseline.split(' ').next().unwrap_or("")
            ),
            figure: figure.into(),
            unit: Unit::GBps,
            vkhmm: v,
            baseline: baseline.into(),
            base,
            target,
            note: String::new(),
        });
    }
    if let Some(ms) = extra(r, "vkhmm_saxpy_direct_ms") {
        let wgpu = extra(r, "wgpu_saxpy_ms").filter(|&w| w > 0.0);
        head.push(Row {
            key: "saxpy_direct_vs_wgpu".into(),
            figure: format!("saxpy 2x{saxpy_mib} MiB end to end, Direct"),
            unit: Unit::Millis,
            vkhmm: ms,
            baseline: "wgpu".into(),
            base: wgpu,
            target: Some(Target::AtMost(0.8)),
            note: match (&r.wgpu, wgpu) {
                (Some(w), None) => w.clone(),
                _ => String::new(),
            },
        });
    }
    head.append(&mut r.rows);
    r.rows = head;
}

fn fmt_value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::GBps | Unit::MiB => format!("{v:.2} {}", unit.name()),
        _ => format!("{v:.1} {}", unit.name()),
    }
}

/// The bandwidthTest-style table.
pub(crate) fn table(r: &Report, elapsed: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "vkhmm bench on {} ({elapsed:.0} s)\n", r.device);
    let _ = writeln!(
        out,
        "{:<48} {:>12} {:>18} {:>12} {:>8} {:>10} {:>8}",
        "figure", "vkhmm", "baseline", "", "ratio", "target", "met"
    );
    for row in &r.rows {
        let base = row
            .base
            .map_or_else(|| "-".to_string(), |b| fmt_value(b, row.unit));
        let ratio = row.ratio().map_or("-".into(), |x| format!("{x:.2}x"));
        let (target, met) = match (row.target, row.ratio()) {
            (Some(t), Some(x)) => (t.text(), if t.met(x) { "yes" } else { "NO" }),
            (Some(t), None) => (t.text(), "n/a"),
            (None, _) => (String::new(), ""),
        };
        let _ = writeln!(
            out,
            "{:<48} {:>12} {:>18} {:>12} {:>8} {:>10} {:>8}{}",
            row.figure,
            fmt_value(row.vkhmm, row.unit),
            row.baseline,
            base,
            ratio,
            target,
            met,
            if row.note.is_empty() {
                String::new()
            } else {
                format!("  {}", row.note)
            }
        );
    }
    let _ = writeln!(out, "\nbandwidth by size (GB/s)");
    let sizes: Vec<usize> = r
        .series
        .first()
        .map(|(_, v)| v.iter().map(|&(b, _)| b).collect())
        .unwrap_or_default();
    let _ = write!(out, "{:<24}", "series");
    for &s in &sizes {
        let _ = write!(out, " {:>9}", size_name(s));
    }
    let _ = writeln!(out);
    for (name, points) in &r.series {
        let _ = write!(out, "{name:<24}");
        for &s in &sizes {
            match points.iter().find(|(b, _)| *b == s) {
                Some((_, g)) => {
                    let _ = write!(out, " {g:>9.2}");
                }
                None => {
                    let _ = write!(out, " {:>9}", "-");
                }
            }
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "\nsub-measurements");
    for (k, v) in &r.extra {
        let _ = writeln!(out, "  {k:<48} {v:.3}");
    }
    if let Some(w) = &r.wgpu {
        let _ = writeln!(out, "  wgpu baseline: {w}");
    }
    out
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn json_num(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "null".into()
    }
}

/// One JSON object: device, figures by key, series, sub-measurements.
pub(crate) fn json(r: &Report, args: &Args, elapsed: f64) -> String {
    let mut o = String::from("{");
    let _ = write!(
        o,
        "\"device\":{},\"quick\":{},\"elapsed_s\":{},\"wgpu\":{},",
        json_str(&r.device),
        args.quick,
        json_num(elapsed),
        r.wgpu.as_deref().map_or("null".into(), json_str)
    );
    o.push_str("\"figures\":{");
    let figs: Vec<String> = r
        .rows
        .iter()
        .map(|row| {
            let ratio = row.ratio();
            format!(
                "{}:{{\"figure\":{},\"unit\":{},\"vkhmm\":{},\"baseline\":{},\
                 \"baseline_value\":{},\"ratio\":{},\"target\":{},\"met\":{},\"note\":{}}}",
                json_str(&row.key),
                json_str(&row.figure),
                json_str(row.unit.name()),
                json_num(row.vkhmm),
                json_str(&row.baseline),
                row.base.map_or("null".into(), json_num),
                ratio.map_or("null".into(), json_num),
                row.target.map_or("null".into(), |t| json_str(&t.text())),
                match (row.target, ratio) {
                    (Some(t), Some(x)) => t.met(x).to_string(),
                    _ => "null".into(),
                },
                json_str(&row.note),
            )
        })
        .collect();
    o.push_str(&figs.join(","));
    o.push_str("},\"series_gbps\":{");
    let series: Vec<String> = r
        .series
        .iter()
        .map(|(name, pts)| {
            let p: Vec<String> = pts
                .iter()
                .map(|&(b, g)| format!("[{b},{}]", json_num(g)))
                .collect();
            format!("{}:[{}]", json_str(name), p.join(","))
        })
        .collect();
    o.push_str(&series.join(","));
    o.push_str("},\"sub\":{");
    let extra: Vec<String> = r
        .extra
        .iter()
        .map(|(k, v)| format!("{}:{}", json_str(k), json_num(*v)))
        .collect();
    o.push_str(&extra.join(","));
    o.push_str("}}");
    o
}
