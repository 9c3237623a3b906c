//! The writer thread: drains the ring into the trace file every few milliseconds.
//!
//! The file is a JSON array of Chrome trace events (`serde_json` writes each one). After
//! every drain it ends with `]`, which the next drain writes over: whenever the process
//! stops, the file parses, holding every event drained so far. Thread lanes are named from
//! `/proc/self/task/TID/comm` the first time they appear; device lanes from
//! [`super::name_lane`].

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use super::{ring, site_name, Event, Home, Kind, LANES};
use crate::{Error, Result};

/// How often the writer drains the ring.
const PERIOD: Duration = Duration::from_millis(10);

/// A trace being written; ends (last drain, file closed) when the last runtime holding it
/// is dropped.
pub(crate) struct Session {
    path: PathBuf,
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
    failed: Arc<AtomicBool>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("path", &self.path).finish()
    }
}

impl Session {
    /// Creates the file and starts the writer.
    pub fn start(path: &Path) -> Result<Session> {
        let file = File::create(path).map_err(|e| Error::os("creating the trace file", e))?;
        let mut out = Out {
            file: BufWriter::with_capacity(1 << 20, file),
            first: true,
            lanes: Vec::new(),
            sites: HashMap::new(),
        };
        let pid = std::process::id();
        out.push(&json!({
            "name": "process_name", "ph": "M", "pid": pid,
            "args": {"name": format!("vkhmm (pid {pid})")}
        }))
        .map_err(|e| Error::os("writing the trace file", e))?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let failed = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, failed) = (Arc::clone(&stop), Arc::clone(&failed));
            std::thread::Builder::new()
                .name("vkhmm-trace".into())
                .spawn(move || out.run(&stop, &failed))
                .map_err(|e| Error::os("starting the trace writer", e))?
        };
        Ok(Session {
            path: path.to_owned(),
            stop,
            thread: Some(thread),
            failed,
        })
    }

    /// The file it writes.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        super::stop();
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(PoisonError::into_inner) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if self.failed.load(Ordering::Relaxed) {
            tracing::warn!(path = %self.path.display(), "the trace file could not be written whole");
        }
    }
}

/// The file and what the writer knows of it.
struct Out {
    file: BufWriter<File>,
    first: bool,
    /// Lanes named so far.
    lanes: Vec<u32>,
    /// `file:line` of each site seen so far.
    sites: HashMap<usize, Arc<str>>,
}

impl Out {
    fn run(mut self, stop: &(Mutex<bool>, Condvar), failed: &AtomicBool) {
        let (lock, cv) = stop;
        loop {
            let stopping = {
                let g = lock.lock().unwrap_or_else(PoisonError::into_inner);
                let (g, _) = cv
                    .wait_timeout(g, PERIOD)
                    .unwrap_or_else(PoisonError::into_inner);
                *g
            };
            if stopping {
                // Events pushed by threads that saw the trace on just before it ended.
                std::thread::sleep(Duration::from_millis(2));
            }
            if self.drain(stopping).is_err() {
                failed.store(true, Ordering::Relaxed);
                return;
            }
            if stopping {
                return;
            }
        }
    }

    /// Writes every event in the ring, then closes the array.
    fn drain(&mut self, last: bool) -> std::io::Result<()> {
        let mut events = Vec::new();
        super::ring().drain(|e| events.push(*e));
        for e in &events {
            for lane in [e.tid, e.other_tid] {
                if lane != 0 && !self.lanes.contains(&lane) {
                    self.lanes.push(lane);
                    self.push(&lane_name(lane))?;
                }
            }
            self.separator()?;
            let sites = &mut self.sites;
            let mut site = |s: usize| -> Option<Arc<str>> {
                if s == 0 {
                    return None;
                }
                Some(Arc::clone(
                    sites
                        .entry(s)
                        .or_insert_with(|| site_name(s).unwrap_or_default().into()),
                ))
            };
            write_event(&mut self.file, e, &mut site)?;
        }
        if last {
            self.push(&json!({
                "name": "trace end", "ph": "i", "s": "g", "pid": std::process::id(),
                "tid": 0, "ts": micros(super::now()),
                "args": {"dropped_events": ring().dropped()}
            }))?;
        }
        self.file.write_all(b"\n]\n")?;
        self.file.flush()?;
        self.file.get_mut().seek(SeekFrom::Current(-3))?;
        Ok(())
    }

    /// Starts the next element of the array.
    fn separator(&mut self) -> std::io::Result<()> {
        let sep: &[u8] = if self.first { b"[\n" } else { b",\n" };
        self.first = false;
        self.file.write_all(sep)
    }

    /// Appends one element of the array.
    fn push(&mut self, v: &Value) -> std::io::Result<()> {
        self.separator()?;
        serde_json::to_writer(&mut self.file, v)?;
        Ok(())
    }
}

fn micros(ns: u64) -> f64 {
    ns as f64 / 1e3
}

/// The metadata event naming `lane`.
fn lane_name(lane: u32) -> Value {
    let name = LANES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .find(|(l, _)| *l == lane)
        .map(|(_, n)| n.clone())
        .unwrap_or_else(|| {
            let comm = std::fs::read_to_string(format!("/proc/self/task/{lane}/comm"))
                .map(|s| s.trim().to_owned())
                .unwrap_or_default();
            match comm.as_str() {
                "vkhmm-fault" => format!("fault service ({comm} {lane})"),
                "" => format!("thread {lane}"),
                _ => format!("{comm} {lane}"),
            }
        });
    json!({
        "name": "thread_name", "ph": "M", "pid": std::process::id(), "tid": lane,
        "args": {"name": name}
    })
}

fn hex(v: usize) -> String {
    format!("{v:#x}")
}

/// The arguments of an event, as the file holds them (absent fields are left out).
#[derive(Serialize, Default)]
struct Args<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    site: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    len: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alloc: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alloc_len: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    binding: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cause: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    groups: Option<[u64; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    served_by: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    write: Option<bool>,
}

/// One complete event of the file.
#[derive(Serialize)]
struct Complete<'a> {
    name: &'a str,
    cat: &'static str,
    ph: &'static str,
    pid: u32,
    tid: u32,
    ts: f64,
    dur: f64,
    args: Args<'a>,
}

/// Writes the Chrome trace event of `e` to `w`; `site` names a site (cached by the caller).
fn write_event(
    w: &mut impl Write,
    e: &Event,
    site: &mut impl FnMut(usize) -> Option<Arc<str>>,
) -> std::io::Result<()> {
    let site_name = site(e.site);
    let mut args = Args {
        site: site_name.as_deref(),
        ..Args::default()
    };
    if e.len > 0 {
        args.addr = Some(hex(e.addr));
        args.len = Some(e.len);
    }
    if e.alloc.1 > 0 {
        args.alloc = Some(hex(e.alloc.0));
        args.alloc_len = Some(e.alloc.1);
    }
    if e.bytes > 0 || matches!(e.kind, Kind::ToDevice | Kind::ToHost | Kind::ZeroFill) {
        args.bytes = Some(e.bytes);
    }
    let kernel = std::str::from_utf8(&e.name)
        .unwrap_or("?")
        .trim_end_matches('\0');
    let mut tid = e.tid;
    let (name, cat): (std::borrow::Cow<'_, str>, &'static str) = match e.kind {
        Kind::None => ("none".into(), "none"),
        Kind::Launch => {
            args.kernel = Some(kernel);
            args.groups = Some([e.a, e.b]);
            (format!("launch {kernel}").into(), "launch")
        }
        Kind::Kernel => {
            args.kernel = Some(kernel);
            (format!("kernel {kernel}").into(), "kernel")
        }
        Kind::ToDevice => {
            args.path = Some(if e.a == 1 { "Staged" } else { "Direct" });
            ("to device".into(), "move")
        }
        Kind::ZeroFill => ("zero-fill on device".into(), "move"),
        Kind::ToHost => {
            let cause = match e.a {
                x if x == Home::Fault as u64 => "fault",
                x if x == Home::Edge as u64 => "edge",
                _ => "bulk",
            };
            args.cause = Some(cause);
            (format!("to host ({cause})").into(), "move")
        }
        Kind::CopyIn => {
            args.binding = Some(e.a);
            ("copy through in".into(), "copy")
        }
        Kind::CopyOut => {
            args.binding = Some(e.a);
            ("copy through out".into(), "copy")
        }
        Kind::Fault => {
            args.served_by = Some(e.tid);
            args.write = Some(e.a == 1);
            if e.other_tid != 0 {
                tid = e.other_tid;
            }
            ("fault".into(), "fault")
        }
        Kind::Evict => ("evict".into(), "evict"),
        Kind::Thrash => ("thrash settled".into(), "advice"),
        Kind::Prefetch => {
            let to = if e.a == 0 { "device" } else { "host" };
            (format!("prefetch to {to}").into(), "advice")
        }
        Kind::Advise => (format!("advise {}", advice_name(e.a)).into(), "advice"),
    };
    let out = Complete {
        name: &name,
        cat,
        ph: "X",
        pid: std::process::id(),
        tid,
        ts: micros(e.ts),
        dur: micros(e.dur),
        args,
    };
    serde_json::to_writer(w, &out).map_err(std::io::Error::from)
}

/// The advice an [`Kind::Advise`] event's `a` encodes (`Runtime::advise`).
pub(crate) fn advice_name(a: u64) -> &'static str {
    match a {
        0 => "Unset",
        1 => "ReadMostly",
        2 => "PreferredLocation(Device)",
        3 => "PreferredLocation(Host)",
        _ => "AccessInPlace",
    }
}
