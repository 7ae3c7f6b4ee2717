//! Counters the simulated agents and routers share with the run: errors seen (the benchmark
//! goes on, as real followers do, but says how many there were) and heartbeat latencies.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Failed calls, and the last one's message.
#[derive(Debug, Default)]
pub struct Errors {
    count: AtomicUsize,
    last: Mutex<Option<String>>,
}

impl Errors {
    /// Counts a failed call.
    pub fn note(&self, what: &str, error: &dyn std::fmt::Display) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last.lock() {
            *last = Some(format!("{what}: {error}"));
        }
    }

    /// How many calls failed, and the last failure.
    pub fn summary(&self) -> (usize, Option<String>) {
        let last = self.last.lock().ok().and_then(|l| l.clone());
        (self.count.load(Ordering::Relaxed), last)
    }
}

/// Heartbeat round trips, kept while recording is on.
#[derive(Debug, Default)]
pub struct Latencies {
    recording: AtomicBool,
    samples: Mutex<Vec<Duration>>,
}

impl Latencies {
    /// Starts or stops keeping samples.
    pub fn record(&self, on: bool) {
        self.recording.store(on, Ordering::Relaxed);
    }

    /// Keeps `took` if recording.
    pub fn add(&self, took: Duration) {
        if self.recording.load(Ordering::Relaxed) {
            if let Ok(mut s) = self.samples.lock() {
                s.push(took);
            }
        }
    }

    /// A copy of the samples kept so far.
    pub fn snapshot(&self) -> Vec<Duration> {
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The samples kept so far, leaving none.
    pub fn take(&self) -> Vec<Duration> {
        self.samples
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default()
    }
}
