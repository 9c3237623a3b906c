//! The groups of figures `vkhmm bench` measures (`--only` names them), each adding its rows,
//! series and sub-measurements to the [`Report`](super::report::Report).

mod bandwidth;
mod copythrough;
mod latency;
mod programs;
mod workloads;

use std::time::Duration;

use super::measure::Samples;

pub(crate) use bandwidth::{chunks, sweep};
pub(crate) use copythrough::copythrough;
pub(crate) use latency::{launch, touch};
pub(crate) use programs::{oversub, resident, saxpy, thrash};
pub(crate) use workloads::workloads;

/// The median of `s`.
fn median_of(s: &Samples) -> Duration {
    s.median()
}

/// Whether this process may run on two CPUs at once (vkhmm splits fault-back windows only
/// then).
fn two_cpus() -> bool {
    std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2
}

/// `d` in microseconds.
fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
