//! The timeline as an SVG picture: one row per lane (CPU threads, the fault service, device
//! queues) with launches, kernels, moves and faults as bars, then one row per buffer that
//! moved the most, shaded where its bytes were last sent (device) or brought home (host).

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{Analysis, Trace};

const WIDTH: f64 = 1000.0;
const LEFT: f64 = 230.0;
const ROW: f64 = 26.0;
const TOP: f64 = 40.0;

/// The colour of an event's bar.
fn colour(name: &str, cat: &str) -> &'static str {
    match (name, cat) {
        (_, "launch") => "#9ecae1",
        (_, "kernel") => "#3182bd",
        ("to device", _) => "#31a354",
        ("zero-fill on device", _) => "#a1d99b",
        (n, _) if n.starts_with("to host") => "#e6550d",
        (_, "copy") => "#756bb1",
        (_, "fault") => "#de2d26",
        _ => "#969696",
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Draws `t` (with the buffers `a` found) as an SVG document.
pub(crate) fn draw(t: &Trace, a: &Analysis) -> String {
    let t0 = t.events.first().map_or(0.0, |e| e.ts);
    let span = a.span_us.max(1.0);
    let x = |ts: f64| LEFT + (ts - t0) / span * (WIDTH - LEFT - 10.0);
    // Lanes in order of first appearance.
    let mut lanes: Vec<u64> = Vec::new();
    for e in &t.events {
        if !lanes.contains(&e.tid) {
            lanes.push(e.tid);
        }
    }
    // The buffers that moved the most.
    let mut moved: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for e in &t.events {
        if let (Some(alloc), true) = (e.alloc, e.bytes > 0) {
            *moved.entry(alloc).or_default() += e.bytes;
        }
    }
    let mut buffers: Vec<((u64, u64), u64)> = moved.into_iter().collect();
    buffers.sort_by_key(|b| std::cmp::Reverse(b.1));
    buffers.truncate(4);
    let rows = lanes.len() + buffers.len();
    let height = TOP + ROW * rows as f64 + 60.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="{WIDTH}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">vkhmm trace: {:.1} ms, {} events</text>"#,
        span / 1e3,
        t.events.len()
    );
    for (i, lane) in lanes.iter().enumerate() {
        let y = TOP + ROW * i as f64;
        let label = t
            .lanes
            .get(lane)
            .cloned()
            .unwrap_or_else(|| format!("thread {lane}"));
        let label: String = if label.chars().count() > 36 {
            label.chars().take(35).chain(['…']).collect()
        } else {
            label
        };
        let _ = writeln!(
            s,
            r##"<rect x="0" y="{y}" width="{WIDTH}" height="{ROW}" fill="{}"/><text x="6" y="{}">{}</text>"##,
            if i % 2 == 0 { "#f7f7f7" } else { "#ffffff" },
            y + ROW * 0.65,
            escape(&label)
        );
        for e in t.events.iter().filter(|e| e.tid == *lane) {
            // Launches under the rest of the lane's bars, thinner.
            let (dy, h) = if e.cat == "launch" {
                (ROW * 0.6, ROW * 0.3)
            } else {
                (ROW * 0.15, ROW * 0.45)
            };
            let w = ((e.dur / span) * (WIDTH - LEFT - 10.0)).max(1.0);
            let _ = writeln!(
                s,
                r#"<rect x="{:.1}" y="{:.1}" width="{w:.1}" height="{h:.1}" fill="{}"><title>{} {}{}</title></rect>"#,
                x(e.ts),
                y + dy,
                colour(&e.name, &e.cat),
                escape(&e.name),
                e.site.as_deref().map(escape).unwrap_or_default(),
                if e.bytes > 0 {
                    format!(" {} B", e.bytes)
                } else {
                    String::new()
                }
            );
        }
    }
    for (k, (alloc, total)) in buffers.iter().enumerate() {
        let y = TOP + ROW * (lanes.len() + k) as f64;
        let _ = writeln!(
            s,
            r##"<rect x="0" y="{y}" width="{WIDTH}" height="{ROW}" fill="#fffbe6"><title>{} moved</title></rect><text x="6" y="{}">buffer {:#x} (+{})</text>"##,
            super::bytes(*total),
            y + ROW * 0.65,
            alloc.0,
            super::bytes(alloc.1),
        );
        // Where its bytes went last, from one move to the next.
        let moves: Vec<_> = t
            .events
            .iter()
            .filter(|e| e.alloc == Some(*alloc) && e.bytes > 0)
            .filter(|e| e.name == "to device" || e.name.starts_with("to host"))
            .collect();
        for (i, e) in moves.iter().enumerate() {
            let end = moves.get(i + 1).map_or(t0 + span, |n| n.ts);
            let fill = if e.name == "to device" {
                "#3182bd"
            } else {
                "#fd8d3c"
            };
            let _ = writeln!(
                s,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{fill}" opacity="0.7"/>"#,
                x(e.ts),
                y + ROW * 0.2,
                (x(end) - x(e.ts)).max(1.0),
                ROW * 0.6
            );
        }
    }
    let mut legend_y = TOP + ROW * rows as f64 + 14.0;
    let items = [
        ("launch", "#9ecae1"),
        ("kernel", "#3182bd"),
        ("to device", "#31a354"),
        ("zero-fill", "#a1d99b"),
        ("to host", "#e6550d"),
        ("copy through", "#756bb1"),
        ("fault (waiting thread)", "#de2d26"),
        ("buffer last sent to device", "#3182bd"),
        ("buffer last brought home", "#fd8d3c"),
    ];
    let mut lx = 10.0;
    for (label, c) in items {
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="{legend_y}" width="10" height="10" fill="{c}"/><text x="{}" y="{}">{label}</text>"#,
            lx + 14.0,
            legend_y + 9.0
        );
        lx += 14.0 + 6.0 * label.len() as f64 + 12.0;
        if lx > WIDTH - 200.0 {
            lx = 10.0;
            legend_y += 18.0;
        }
    }
    s.push_str("</svg>\n");
    s
}
