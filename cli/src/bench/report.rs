//! What one run measured ([`Report`]), the rows of its targets, and its two forms: the
//! bandwidthTest-style table and one JSON object.

use std::fmt::Write as _;

use serde::{Serialize, Serializer};

use super::measure::size_name;
use super::TARGET_SIZE;

/// How a figure is judged: most by their ratio to the baseline.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// vkhmm's rate over the baseline's, at least this.
    AtLeast(f64),
    /// vkhmm's time over the baseline's, at most this.
    AtMost(f64),
    /// vkhmm's own figure, in its unit, at most this (where the baseline is zero, as the
    /// bytes plain memory copies).
    ValueAtMost(f64),
}

impl Target {
    /// Whether `row` meets it; `None` when it needs a ratio and the row has none.
    fn met(self, row: &Row) -> Option<bool> {
        match self {
            Target::AtLeast(t) => row.ratio().map(|x| x >= t),
            Target::AtMost(t) => row.ratio().map(|x| x <= t),
            Target::ValueAtMost(t) => Some(row.vkhmm <= t),
        }
    }

    fn text(self, unit: Unit) -> String {
        match self {
            Target::AtLeast(t) => format!(">= {t:.2}x"),
            Target::AtMost(t) => format!("<= {t:.2}x"),
            Target::ValueAtMost(t) => format!("<= {t} {}", unit.name()),
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
        let (target, met) = match row.target {
            Some(t) => (
                t.text(row.unit),
                match t.met(row) {
                    Some(true) => "yes",
                    Some(false) => "NO",
                    None => "n/a",
                },
            ),
            None => (String::new(), ""),
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

/// One JSON object: device, figures by key, series, sub-measurements (docs/performance.md
/// names the fields). Objects keep the order of the report; non-finite numbers are `null`.
pub(crate) fn json(r: &Report, quick: bool, elapsed: f64) -> String {
    let figures: Vec<(&str, JsonFigure<'_>)> = r
        .rows
        .iter()
        .map(|row| {
            let ratio = row.ratio();
            let figure = JsonFigure {
                figure: &row.figure,
                unit: row.unit.name(),
                vkhmm: row.vkhmm,
                baseline: &row.baseline,
                baseline_value: row.base,
                ratio,
                target: row.target.map(|t| t.text(row.unit)),
                met: row.target.and_then(|t| t.met(row)),
                note: &row.note,
            };
            (row.key.as_str(), figure)
        })
        .collect();
    let report = JsonReport {
        device: &r.device,
        quick,
        elapsed_s: elapsed,
        wgpu: r.wgpu.as_deref(),
        figures: InOrder(&figures),
        series_gbps: InOrder(&r.series),
        sub: InOrder(&r.extra),
    };
    serde_json::to_string(&report).expect("a report is strings and numbers")
}

/// The JSON object of one run.
#[derive(Serialize)]
struct JsonReport<'a> {
    device: &'a str,
    quick: bool,
    elapsed_s: f64,
    wgpu: Option<&'a str>,
    figures: InOrder<'a, &'a str, JsonFigure<'a>>,
    /// Per series, `[bytes, GB/s]` points.
    series_gbps: InOrder<'a, String, Vec<(usize, f64)>>,
    sub: InOrder<'a, String, f64>,
}

/// One figure of [`JsonReport::figures`].
#[derive(Serialize)]
struct JsonFigure<'a> {
    figure: &'a str,
    unit: &'static str,
    vkhmm: f64,
    baseline: &'a str,
    baseline_value: Option<f64>,
    ratio: Option<f64>,
    target: Option<String>,
    met: Option<bool>,
    note: &'a str,
}

/// (key, value) pairs written as one JSON object, in their order.
struct InOrder<'a, K, V>(&'a [(K, V)]);

impl<K: Serialize, V: Serialize> Serialize for InOrder<'_, K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report with every kind of value: a met target, a missing baseline, a figure
    /// without target, a non-finite point and sub-measurement.
    fn sample() -> Report {
        Report {
            device: "llvmpipe \"x\" (LLVM)".into(),
            rows: vec![
                Row {
                    key: "a_64mib_vs_memcpy".into(),
                    figure: "prefetch to device, 64 MiB, Direct".into(),
                    unit: Unit::GBps,
                    vkhmm: 2.5,
                    baseline: "memcpy".into(),
                    base: Some(5.0),
                    target: Some(Target::AtLeast(0.85)),
                    note: String::new(),
                },
                Row {
                    key: "saxpy_direct_vs_wgpu".into(),
                    figure: "saxpy 2x64 MiB end to end, Direct".into(),
                    unit: Unit::Millis,
                    vkhmm: 12.25,
                    baseline: "wgpu".into(),
                    base: None,
                    target: Some(Target::AtMost(0.8)),
                    note: "not built: run `cargo build --release -p wgpu-saxpy`".into(),
                },
                Row {
                    key: "touch_4_direct_p50".into(),
                    figure: "isolated touch p50, 4K chunk, Direct".into(),
                    unit: Unit::Micros,
                    vkhmm: 3.75,
                    baseline: "raw uffd p50".into(),
                    base: Some(2.5),
                    target: None,
                    note: "p5 1.5 vs 1.25 us".into(),
                },
            ],
            series: vec![
                ("memcpy".into(), vec![(65536, 10.5), (4194304, f64::NAN)]),
                ("wgpu_upload".into(), vec![(65536, 0.75)]),
            ],
            extra: vec![("x_faults".into(), 7.5), ("inf".into(), f64::INFINITY)],
            wgpu: None,
        }
    }

    /// The object, field for field and in order, as `benches/perf_chart.py` and earlier
    /// runs' files have it (the writer before serde printed `5.0` as `5`).
    #[test]
    fn json_keeps_its_shape() {
        let expected = r#"{"device":"llvmpipe \"x\" (LLVM)","quick":true,"elapsed_s":1.5,"wgpu":null,"figures":{"a_64mib_vs_memcpy":{"figure":"prefetch to device, 64 MiB, Direct","unit":"GB/s","vkhmm":2.5,"baseline":"memcpy","baseline_value":5.0,"ratio":0.5,"target":">= 0.85x","met":false,"note":""},"saxpy_direct_vs_wgpu":{"figure":"saxpy 2x64 MiB end to end, Direct","unit":"ms","vkhmm":12.25,"baseline":"wgpu","baseline_value":null,"ratio":null,"target":"<= 0.80x","met":null,"note":"not built: run `cargo build --release -p wgpu-saxpy`"},"touch_4_direct_p50":{"figure":"isolated touch p50, 4K chunk, Direct","unit":"us","vkhmm":3.75,"baseline":"raw uffd p50","baseline_value":2.5,"ratio":1.5,"target":null,"met":null,"note":"p5 1.5 vs 1.25 us"}},"series_gbps":{"memcpy":[[65536,10.5],[4194304,null]],"wgpu_upload":[[65536,0.75]]},"sub":{"x_faults":7.5,"inf":null}}"#;
        assert_eq!(json(&sample(), true, 1.5), expected);
    }

    /// A figure judged on its own value: met or not whatever its baseline, which may be zero
    /// (no ratio then).
    #[test]
    fn value_targets_are_judged_without_a_ratio() {
        let row = |vkhmm| Row {
            key: "zero_home".into(),
            figure: "bytes home".into(),
            unit: Unit::MiB,
            vkhmm,
            baseline: "plain Vec".into(),
            base: Some(0.0),
            target: Some(Target::ValueAtMost(0.0)),
            note: String::new(),
        };
        let r = Report {
            rows: vec![row(64.0), row(0.0)],
            ..Report::default()
        };
        let lines: Vec<String> = table(&r, 1.0)
            .lines()
            .filter(|l| l.starts_with("bytes home"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            lines,
            [
                "bytes home 64.00 MiB plain Vec 0.00 MiB - <= 0 MiB NO",
                "bytes home 0.00 MiB plain Vec 0.00 MiB - <= 0 MiB yes",
            ]
        );
        let j = json(&r, false, 1.0);
        assert!(
            j.contains(r#""ratio":null,"target":"<= 0 MiB","met":false"#),
            "{j}"
        );
        assert!(
            j.contains(r#""ratio":null,"target":"<= 0 MiB","met":true"#),
            "{j}"
        );
    }
}
