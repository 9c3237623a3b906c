//! `vkhmm report trace.json [--svg out.svg]`: what a trace (`VKHMM_TRACE`) says, in the order
//! a user asks — which lines of the program moved the most bytes and made CPU threads wait
//! the longest, which buffers bounced between the device and the host, and what to do about
//! each finding (each hint is one docs/semantics.md backs).
//!
//! [`Trace::load`] reads the Chrome trace events vkhmm wrote; [`analyze`] ranks them;
//! [`svg`] draws the timeline.

mod svg;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use serde_json::Value;

/// Arguments of `vkhmm report`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The trace file (written with `VKHMM_TRACE=path` or `RuntimeBuilder::trace`).
    pub trace: PathBuf,
    /// Also draw the timeline as an SVG picture at this path.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// How many call sites and buffers to list.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
}

/// One event of the trace, as the report uses it.
#[derive(Debug, Clone)]
pub(crate) struct Ev {
    pub name: String,
    pub cat: String,
    pub tid: u64,
    /// Start and duration in µs.
    pub ts: f64,
    pub dur: f64,
    pub site: Option<String>,
    pub bytes: u64,
    pub alloc: Option<(u64, u64)>,
    pub write: bool,
}

/// A parsed trace.
pub(crate) struct Trace {
    pub events: Vec<Ev>,
    /// Lane names by tid.
    pub lanes: BTreeMap<u64, String>,
    pub dropped: u64,
}

fn hex(v: Option<&Value>) -> Option<u64> {
    let s = v?.as_str()?;
    u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

impl Trace {
    /// Reads a trace file.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Trace> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Parses the JSON text of a trace.
    pub fn parse(text: &str) -> anyhow::Result<Trace> {
        let all: Vec<Value> = serde_json::from_str(text)?;
        let mut t = Trace {
            events: Vec::new(),
            lanes: BTreeMap::new(),
            dropped: 0,
        };
        for v in &all {
            let ph = v["ph"].as_str().unwrap_or("");
            let args = &v["args"];
            let tid = v["tid"].as_u64().unwrap_or(0);
            match ph {
                "M" if v["name"] == "thread_name" => {
                    t.lanes
                        .insert(tid, args["name"].as_str().unwrap_or("").to_owned());
                }
                "X" => t.events.push(Ev {
                    name: v["name"].as_str().unwrap_or("").to_owned(),
                    cat: v["cat"].as_str().unwrap_or("").to_owned(),
                    tid,
                    ts: v["ts"].as_f64().unwrap_or(0.0),
                    dur: v["dur"].as_f64().unwrap_or(0.0),
                    site: args["site"].as_str().map(str::to_owned),
                    bytes: args["bytes"].as_u64().unwrap_or(0),
                    alloc: hex(args.get("alloc"))
                        .map(|a| (a, args["alloc_len"].as_u64().unwrap_or(0))),
                    write: args["write"].as_bool().unwrap_or(false),
                }),
                "i" if v["name"] == "trace end" => {
                    t.dropped = args["dropped_events"].as_u64().unwrap_or(0);
                }
                _ => {}
            }
        }
        t.events.sort_by(|a, b| a.ts.total_cmp(&b.ts));
        Ok(t)
    }
}

/// What one call site caused.
#[derive(Debug, Default, Clone)]
pub(crate) struct SiteSum {
    pub site: String,
    pub launches: u64,
    pub to_device: u64,
    pub zero_filled: u64,
    pub to_host: u64,
    pub copied: u64,
    pub faults: u64,
    pub write_faults: u64,
    pub wait_us: f64,
}

impl SiteSum {
    pub fn moved(&self) -> u64 {
        self.to_device + self.to_host + self.copied
    }
}

/// One buffer (an extent) that went to the device and came back more than once.
#[derive(Debug, Clone)]
pub(crate) struct Bounce {
    pub alloc: (u64, u64),
    /// Trips device → host → device.
    pub trips: u64,
    pub bytes: u64,
    pub site: Option<String>,
}

/// The findings.
pub(crate) struct Analysis {
    pub sites: Vec<SiteSum>,
    pub bounces: Vec<Bounce>,
    pub totals: SiteSum,
    pub span_us: f64,
}

/// Ranks the call sites and finds bouncing buffers.
pub(crate) fn analyze(t: &Trace) -> Analysis {
    let mut sites: BTreeMap<String, SiteSum> = BTreeMap::new();
    let mut totals = SiteSum::default();
    let name = |e: &Ev| e.site.clone().unwrap_or_else(|| "(no call site)".into());
    for e in &t.events {
        let s = sites.entry(name(e)).or_insert_with(|| SiteSum {
            site: name(e),
            ..SiteSum::default()
        });
        for sum in [&mut *s, &mut totals] {
            match e.name.as_str() {
                n if n.starts_with("launch") => sum.launches += 1,
                "to device" => sum.to_device += e.bytes,
                "zero-fill on device" => sum.zero_filled += e.bytes,
                n if n.starts_with("to host") => sum.to_host += e.bytes,
                n if n.starts_with("copy through") => sum.copied += e.bytes,
                "fault" => {
                    sum.faults += 1;
                    sum.write_faults += u64::from(e.write);
                    sum.wait_us += e.dur;
                }
                _ => {}
            }
        }
    }
    let mut sites: Vec<SiteSum> = sites
        .into_values()
        .filter(|s| s.site != "(no call site)" || s.moved() + s.faults > 0)
        .collect();
    sites.sort_by(|a, b| {
        b.moved()
            .cmp(&a.moved())
            .then(b.wait_us.total_cmp(&a.wait_us))
    });

    // Bounces: per extent, a move to the device after bytes came home since the last one.
    let mut state: BTreeMap<(u64, u64), (bool, bool, Bounce)> = BTreeMap::new();
    for e in &t.events {
        let Some(alloc) = e.alloc else { continue };
        let entry = state.entry(alloc).or_insert((
            false,
            false,
            Bounce {
                alloc,
                trips: 0,
                bytes: 0,
                site: None,
            },
        ));
        let (sent, home, b) = entry;
        match e.name.as_str() {
            "to device" => {
                if *sent && *home {
                    b.trips += 1;
                    b.site = e.site.clone();
                }
                *sent = true;
                *home = false;
                b.bytes += e.bytes;
            }
            n if n.starts_with("to host") => {
                *home |= *sent;
                b.bytes += e.bytes;
            }
            _ => {}
        }
    }
    let mut bounces: Vec<Bounce> = state
        .into_values()
        .map(|(_, _, b)| b)
        .filter(|b| b.trips > 0)
        .collect();
    bounces.sort_by(|a, b| b.trips.cmp(&a.trips).then(b.bytes.cmp(&a.bytes)));
    let span_us = t.events.iter().map(|e| e.ts + e.dur).fold(0.0, f64::max)
        - t.events.first().map_or(0.0, |e| e.ts);
    Analysis {
        sites,
        bounces,
        totals,
        span_us,
    }
}

/// A byte count with a binary unit.
fn bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// The hints for `a`, most important first: each says what was seen and what to do.
pub(crate) fn hints(a: &Analysis) -> Vec<String> {
    let mut out = Vec::new();
    let mut by_wait: Vec<&SiteSum> = a.sites.iter().filter(|s| s.faults > 0).collect();
    by_wait.sort_by(|x, y| y.wait_us.total_cmp(&x.wait_us));
    for s in by_wait.iter().take(3) {
        let reads = s.faults - s.write_faults;
        if reads > 0 {
            out.push(format!(
                "data the launch at {} sent to the device faulted back in {reads} chunks \
                 ({} home, CPU threads waited {:.1} ms): prefetch it home after the launch \
                 (`rt.prefetch(&buf, Location::Host)`, one bulk copy), or advise \
                 `PreferredLocation(Host)` so results come home when the launch settles \
                 (docs/semantics.md, \"Advice\")",
                s.site,
                bytes(s.to_host),
                s.wait_us / 1e3
            ));
        }
        if s.write_faults > 0 {
            out.push(format!(
                "the CPU wrote {} chunks of data the launch at {} had read (write-protect \
                 faults, {:.1} ms waited in all faults there): writing it whole before the \
                 next launch is one fault per growing window; if the CPU rewrites it every \
                 step, keep it on the host with `PreferredLocation(Host)` (docs/semantics.md)",
                s.write_faults,
                s.site,
                s.wait_us / 1e3
            ));
        }
    }
    for b in a.bounces.iter().take(3) {
        out.push(format!(
            "the buffer at {:#x} (+{}) was sent to the device {} times, its bytes brought \
             home in between{}: if the CPU \
             only reads it between launches, advise `ReadMostly` (both copies stay valid); \
             if it edits it, `PreferredLocation(Host)` or `AccessInPlace` (docs/semantics.md, \
             \"Advice\")",
            b.alloc.0,
            bytes(b.alloc.1),
            b.trips + 1,
            b.site
                .as_ref()
                .map(|s| format!(", last sent by {s}"))
                .unwrap_or_default()
        ));
    }
    for s in a.sites.iter().filter(|s| s.copied > 0).take(2) {
        out.push(format!(
            "{} of memory that cannot migrate was copied through at {} ({} launches): if \
             many launches read the same data, copy it once into a `Vec` (or \
             `rt.alloc_from`), which migrates once (docs/semantics.md, \"Memory that cannot \
             migrate\")",
            bytes(s.copied),
            s.site,
            s.launches
        ));
    }
    out
}

/// Runs `vkhmm report`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let t = Trace::load(&args.trace)?;
    let a = analyze(&t);
    print!("{}", text(&t, &a, args.top));
    if let Some(path) = &args.svg {
        std::fs::write(path, svg::draw(&t, &a))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("\ntimeline: {}", path.display());
    }
    Ok(())
}

/// The report as text.
pub(crate) fn text(t: &Trace, a: &Analysis, top: usize) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let tot = &a.totals;
    let _ = writeln!(
        o,
        "{} events over {:.1} ms: {} launches; {} to device (+{} zero-filled), {} to host, \
         {} copied through; {} CPU faults, {:.1} ms waited{}",
        t.events.len(),
        a.span_us / 1e3,
        tot.launches,
        bytes(tot.to_device),
        bytes(tot.zero_filled),
        bytes(tot.to_host),
        bytes(tot.copied),
        tot.faults,
        tot.wait_us / 1e3,
        if t.dropped > 0 {
            format!(" ({} events lost to a full ring)", t.dropped)
        } else {
            String::new()
        }
    );
    let _ = writeln!(o, "\ncall sites by bytes moved:");
    for s in a.sites.iter().take(top) {
        let _ = writeln!(
            o,
            "  {:<40} {:>10} moved  ({} to device, {} to host, {} copied through; launches: {})",
            s.site,
            bytes(s.moved()),
            bytes(s.to_device),
            bytes(s.to_host),
            bytes(s.copied),
            s.launches
        );
    }
    let mut by_wait: Vec<&SiteSum> = a.sites.iter().filter(|s| s.faults > 0).collect();
    by_wait.sort_by(|x, y| y.wait_us.total_cmp(&x.wait_us));
    let _ = writeln!(o, "\ncall sites by time CPU threads waited on faults:");
    if by_wait.is_empty() {
        let _ = writeln!(o, "  (no faults)");
    }
    for s in by_wait.iter().take(top) {
        let _ = writeln!(
            o,
            "  {:<40} {:>8.1} ms in {} faults ({} of them writes to read-only copies)",
            s.site,
            s.wait_us / 1e3,
            s.faults,
            s.write_faults
        );
    }
    let _ = writeln!(o, "\nbuffers that bounced between device and host:");
    if a.bounces.is_empty() {
        let _ = writeln!(o, "  (none)");
    }
    for b in a.bounces.iter().take(top) {
        let _ = writeln!(
            o,
            "  {:#x} (+{})  {} round trips, {} moved{}",
            b.alloc.0,
            bytes(b.alloc.1),
            b.trips,
            bytes(b.bytes),
            b.site
                .as_ref()
                .map(|s| format!(", last sent by {s}"))
                .unwrap_or_default()
        );
    }
    let h = hints(a);
    if !h.is_empty() {
        let _ = writeln!(o, "\nhints:");
        for x in h {
            let _ = writeln!(o, "  - {x}");
        }
    }
    o
}

#[cfg(test)]
mod tests;
