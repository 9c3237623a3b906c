//! The writer thread: drains the ring into the trace file every few milliseconds.
//!
//! The file is a JSON array of Chrome trace events (`serde_json` writes each one). After
//! every drain it ends with `]`, which the next drain writes over: whenever the process
//! stops, the file parses, holding every event drained so far. Thread lanes are named from
//! `/proc/self/task/TID/comm` the first time they appear; device lanes from
//! [`super::name_lane`].

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

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
            file,
            first: true,
            lanes: Vec::new(),
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
    file: File,
    first: bool,
    /// Lanes named so far.
    lanes: Vec<u32>,
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
            self.push(&to_json(e))?;
        }
        if last {
            self.push(&json!({
                "name": "trace end", "ph": "i", "s": "g", "pid": std::process::id(),
                "tid": 0, "ts": micros(super::now()),
                "args": {"dropped_events": ring().dropped()}
            }))?;
        }
        self.file.write_all(b"\n]\n")?;
        self.file.seek(SeekFrom::Current(-3))?;
        self.file.flush()
    }

    /// Appends one element of the array.
    fn push(&mut self, v: &Value) -> std::io::Result<()> {
        let sep: &[u8] = if self.first { b"[\n" } else { b",\n" };
        self.first = false;
        self.file.write_all(sep)?;
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

/// The Chrome trace event of `e`.
fn to_json(e: &Event) -> Value {
    let mut args = serde_json::Map::new();
    if let Some(site) = site_name(e.site) {
        args.insert("site".into(), site.into());
    }
    if e.len > 0 {
        args.insert("addr".into(), hex(e.addr).into());
        args.insert("len".into(), e.len.into());
    }
    if e.alloc.1 > 0 {
        args.insert("alloc".into(), hex(e.alloc.0).into());
        args.insert("alloc_len".into(), e.alloc.1.into());
    }
    if e.bytes > 0 || matches!(e.kind, Kind::ToDevice | Kind::ToHost | Kind::ZeroFill) {
        args.insert("bytes".into(), e.bytes.into());
    }
    let kernel = String::from_utf8_lossy(&e.name)
        .trim_end_matches('\0')
        .to_owned();
    let (name, cat, tid) = match e.kind {
        Kind::None => ("none".to_owned(), "none", e.tid),
        Kind::Launch => {
            args.insert("kernel".into(), kernel.clone().into());
            args.insert("groups".into(), json!([e.a, e.b]));
            (format!("launch {kernel}"), "launch", e.tid)
        }
        Kind::Kernel => {
            args.insert("kernel".into(), kernel.clone().into());
            (format!("kernel {kernel}"), "kernel", e.tid)
        }
        Kind::ToDevice => {
            args.insert("binding".into(), e.a.into());
            let path = if e.b == 1 { "Staged" } else { "Direct" };
            args.insert("path".into(), path.into());
            ("to device".to_owned(), "move", e.tid)
        }
        Kind::ZeroFill => ("zero-fill on device".to_owned(), "move", e.tid),
        Kind::ToHost => {
            let cause = match e.a {
                x if x == Home::Fault as u64 => "fault",
                x if x == Home::Edge as u64 => "edge",
                _ => "bulk",
            };
            args.insert("cause".into(), cause.into());
            (format!("to host ({cause})"), "move", e.tid)
        }
        Kind::CopyIn => {
            args.insert("binding".into(), e.a.into());
            ("copy through in".to_owned(), "copy", e.tid)
        }
        Kind::CopyOut => {
            args.insert("binding".into(), e.a.into());
            ("copy through out".to_owned(), "copy", e.tid)
        }
        Kind::Fault => {
            args.insert("served_by".into(), e.tid.into());
            args.insert("write".into(), (e.a == 1).into());
            let lane = if e.other_tid != 0 { e.other_tid } else { e.tid };
            ("fault".to_owned(), "fault", lane)
        }
        Kind::Evict => ("evict".to_owned(), "evict", e.tid),
        Kind::Thrash => ("thrash settled".to_owned(), "advice", e.tid),
        Kind::Prefetch => {
            let to = if e.a == 0 { "device" } else { "host" };
            (format!("prefetch to {to}"), "advice", e.tid)
        }
        Kind::Advise => (format!("advise {}", advice_name(e.a)), "advice", e.tid),
    };
    json!({
        "name": name, "cat": cat, "ph": "X", "pid": std::process::id(), "tid": tid,
        "ts": micros(e.ts), "dur": micros(e.dur), "args": args
    })
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
