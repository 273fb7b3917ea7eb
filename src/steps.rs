//! Timing the steps of a runbook: each step is logged when it starts and ends, and the
//! summary reports the seconds of each (so an operator sees where the time went).

use std::time::{Duration, Instant};

use crate::error::Result;

/// Seconds spent per step, in order.
#[derive(Debug, Default)]
pub struct Steps {
    done: Vec<(&'static str, Duration)>,
    started: Option<Instant>,
}

impl Steps {
    pub fn run<T>(&mut self, name: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.started.get_or_insert_with(Instant::now);
        tracing::info!("{name} ...");
        let start = Instant::now();
        let result = f();
        self.record_outcome(name, start.elapsed(), &result);
        result
    }

    /// A step timed elsewhere (on another node, or on another thread), recorded as if it
    /// had run here.
    pub fn record(&mut self, name: &'static str, took: Duration) {
        self.started.get_or_insert_with(Instant::now);
        self.done.push((name, took));
    }

    /// A step that ran on another thread, recorded and logged as [`run`](Self::run)
    /// would have.
    pub fn record_outcome<T>(&mut self, name: &'static str, took: Duration, result: &Result<T>) {
        self.record(name, took);
        match result {
            Ok(_) => tracing::info!("{name}: done in {:.1}s", took.as_secs_f64()),
            Err(e) => tracing::error!("{name}: failed after {:.1}s: {e}", took.as_secs_f64()),
        }
    }

    pub fn in_order(&self) -> Vec<(String, f64)> {
        self.done
            .iter()
            .map(|(name, d)| (name.to_string(), round(d.as_secs_f64())))
            .collect()
    }
}

pub fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Steps {
    /// Time since the first step started.
    pub fn total(&self) -> Duration {
        self.started.map(|s| s.elapsed()).unwrap_or_default()
    }
}
