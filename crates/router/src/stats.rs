//! Request counters: per service and HTTP status class, plain atomics.
//!
//! The hot path only increments an `AtomicU64` it reaches through the matched route, so counting
//! costs no lock and no map lookup. Each counter is split in [`SHARDS`] cache lines, one per
//! worker thread ([`shard`]), summed when read: with one runtime per core, no two cores write
//! the same line, so an increment never waits for a cache line held by another core. Snapshots ([`RouterStats`]) are what the autoscaler, canary
//! analysis and the later Prometheus endpoint read.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use berth_api::control::{LATENCY_BOUNDS_MS, LATENCY_SLOTS};
use http::StatusCode;
use serde::{Deserialize, Serialize};

/// Request counts by status class (1xx … 5xx) for one service.
///
/// Classes rather than exact codes keep the counter set fixed-size and lock-free; they are what
/// RED metrics and canary analysis compare (error rate = `server_error / total`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusClasses {
    /// Responses with a 1xx status.
    pub informational: u64,
    /// Responses with a 2xx status.
    pub success: u64,
    /// Responses with a 3xx status.
    pub redirection: u64,
    /// Responses with a 4xx status.
    pub client_error: u64,
    /// Responses with a 5xx status, including the router's own 502 and 503.
    pub server_error: u64,
}

impl StatusClasses {
    /// All responses counted, whatever their class.
    pub fn total(&self) -> u64 {
        self.informational + self.success + self.redirection + self.client_error + self.server_error
    }
}

/// A snapshot of the router's counters since it started.
///
/// Counters only grow (they survive table updates, keyed by service name), so rates are
/// computed by the reader from two snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterStats {
    /// Responses per service name, for every service that has appeared in a table.
    pub services: BTreeMap<String, StatusClasses>,
    /// Responses to requests that matched no route (the 404s) or were refused before routing
    /// (400 for a missing, repeated or malformed Host; 405 for CONNECT): counted apart so a
    /// scan of random hosts does not show up as a service's client errors.
    pub unrouted: StatusClasses,
}

/// Per-thread slots of the hot-path counters and of the idle connection lists: enough for one
/// per core on the machines berth targets; threads beyond that share slots (correct, just
/// contended).
pub(crate) const SHARDS: usize = 8;

/// This thread's slot, assigned round-robin the first time a thread asks.
pub(crate) fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// A value on a cache line (pair) of its own, so neighbouring shards do not share one.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

/// A gauge that goes up and down, sharded like the counters: an increment and its decrement
/// may land on different shards, only the sum means something.
#[derive(Debug, Default)]
pub(crate) struct Gauge {
    shards: [Padded<AtomicI64>; SHARDS],
}

impl Gauge {
    pub(crate) fn add(&self, delta: i64) {
        self.shards[shard()].0.fetch_add(delta, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> i64 {
        self.shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .fold(0, i64::wrapping_add)
    }
}

/// The live counters behind one [`StatusClasses`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    shards: [Padded<[AtomicU64; 5]>; SHARDS],
}

impl Counters {
    /// Counts one response with this status.
    pub(crate) fn record(&self, status: StatusCode) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.shards[shard()].0[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Reads the counters (each one atomically; the set is not a consistent cut, which is fine
    /// for rates).
    pub(crate) fn snapshot(&self) -> StatusClasses {
        let get = |i: usize| {
            self.shards
                .iter()
                .map(|s| s.0[i].load(Ordering::Relaxed))
                .sum()
        };
        StatusClasses {
            informational: get(0),
            success: get(1),
            redirection: get(2),
            client_error: get(3),
            server_error: get(4),
        }
    }
}

/// One arm's counters as traffic reports and `/metrics` show them: answers (matched ones
/// apart), their 5xx, and their time to the response head per [`LATENCY_BOUNDS_MS`] bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArmSnapshot {
    /// Answers from the arm's instances (or the router's 502/504 after trying them), matched
    /// requests excluded.
    pub requests: u64,
    /// Of `requests`, those with a 5xx status.
    pub errors_5xx: u64,
    /// Requests sent to the arm by the route's match header.
    pub matched: u64,
    /// Of `requests`, per latency bucket (not cumulative; last `+Inf`).
    pub latency_ms_buckets: [u64; LATENCY_SLOTS],
}

/// The live counters of one arm (a route's release group, or its split service), sharded like
/// [`Counters`]. Latency is the time to the response head: what a canary changes, whatever
/// the body's size or a streaming client's pace.
#[derive(Debug, Default)]
pub(crate) struct ArmStats {
    shards: [Padded<ArmShard>; SHARDS],
}

#[derive(Debug, Default)]
struct ArmShard {
    requests: AtomicU64,
    errors_5xx: AtomicU64,
    matched: AtomicU64,
    latency: [AtomicU64; LATENCY_SLOTS],
}

impl ArmStats {
    /// Counts one answer.
    pub(crate) fn record(&self, status: StatusCode, elapsed: Duration, matched: bool) {
        let shard = &self.shards[shard()].0;
        if matched {
            shard.matched.fetch_add(1, Ordering::Relaxed);
            return;
        }
        shard.requests.fetch_add(1, Ordering::Relaxed);
        if status.is_server_error() {
            shard.errors_5xx.fetch_add(1, Ordering::Relaxed);
        }
        let micros = elapsed.as_micros();
        let slot = LATENCY_BOUNDS_MS
            .iter()
            .position(|ms| micros <= u128::from(*ms) * 1_000)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        shard.latency[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// Sums the shards.
    pub(crate) fn snapshot(&self) -> ArmSnapshot {
        let mut out = ArmSnapshot::default();
        for shard in &self.shards {
            let s = &shard.0;
            out.requests += s.requests.load(Ordering::Relaxed);
            out.errors_5xx += s.errors_5xx.load(Ordering::Relaxed);
            out.matched += s.matched.load(Ordering::Relaxed);
            for (total, slot) in out.latency_ms_buckets.iter_mut().zip(&s.latency) {
                *total += slot.load(Ordering::Relaxed);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arms_count_requests_errors_latency_and_matched_apart() {
        let arm = ArmStats::default();
        arm.record(StatusCode::OK, Duration::from_micros(900), false);
        arm.record(StatusCode::BAD_GATEWAY, Duration::from_millis(40), false);
        arm.record(StatusCode::OK, Duration::from_secs(60), false);
        arm.record(StatusCode::INTERNAL_SERVER_ERROR, Duration::ZERO, true);
        let s = arm.snapshot();
        assert_eq!((s.requests, s.errors_5xx, s.matched), (3, 1, 1));
        assert_eq!(s.latency_ms_buckets[0], 1, "<= 1 ms");
        let at_50 = LATENCY_BOUNDS_MS.iter().position(|b| *b == 50).expect("50");
        assert_eq!(s.latency_ms_buckets[at_50], 1);
        assert_eq!(s.latency_ms_buckets[LATENCY_SLOTS - 1], 1, "+Inf");
        assert_eq!(s.latency_ms_buckets.iter().sum::<u64>(), 3);
    }

    #[test]
    fn counts_by_class() {
        let c = Counters::default();
        for code in [101, 200, 204, 301, 404, 499, 500, 502, 503] {
            c.record(StatusCode::from_u16(code).expect("valid code"));
        }
        let s = c.snapshot();
        assert_eq!(
            s,
            StatusClasses {
                informational: 1,
                success: 2,
                redirection: 1,
                client_error: 2,
                server_error: 3
            }
        );
        assert_eq!(s.total(), 9);
    }
}
