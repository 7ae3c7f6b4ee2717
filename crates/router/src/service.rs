//! Per-service live state that outlives routing tables: counters, latency histogram, in-flight
//! gauge, retry budget and the overload limiter.
//!
//! The request path reaches a service's state through the matched route (an `Arc`), so every
//! update is a relaxed atomic increment: no map lookup, no lock. Only table updates and metric
//! scrapes take the locks here.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::stats::{shard, Counters, Gauge, Padded, SHARDS};
use crate::table::Limits;

/// Upper bounds (seconds) of the latency histogram's buckets: 1 ms to 10 s, roughly ×2.5 apart,
/// which resolves both a loopback hop and a slow page.
pub(crate) const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A fixed-bucket histogram of plain atomics (Prometheus cumulative form is computed on scrape),
/// one copy per worker thread like the counters ([`crate::stats::shard`]).
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    shards: [Padded<HistogramShard>; SHARDS],
}

#[derive(Debug, Default)]
struct HistogramShard {
    /// Per-bucket counts (not cumulative); the last slot is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        let shard = &self.shards[shard()].0;
        shard.buckets[i].fetch_add(1, Ordering::Relaxed);
        shard.sum_nanos.fetch_add(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Cumulative counts per bucket (last is `+Inf` = count) and the sum in seconds.
    pub(crate) fn snapshot(&self) -> ([u64; LATENCY_BUCKETS.len() + 1], f64) {
        let mut out = [0; LATENCY_BUCKETS.len() + 1];
        let mut total = 0;
        for (i, slot) in out.iter_mut().enumerate() {
            total += self
                .shards
                .iter()
                .map(|s| s.0.buckets[i].load(Ordering::Relaxed))
                .sum::<u64>();
            *slot = total;
        }
        let sum_nanos: u64 = self
            .shards
            .iter()
            .map(|s| s.0.sum_nanos.load(Ordering::Relaxed))
            .sum();
        let sum = sum_nanos as f64 / 1e9;
        (out, sum)
    }
}

/// A retry budget: retries may add at most [`RETRY_RATIO`] to the request rate, plus a reserve
/// for a quiet service. It stops a failing instance from turning into a retry storm that
/// doubles the load on the healthy ones (linkerd's and Finagle's budgets work the same way).
#[derive(Debug)]
pub(crate) struct RetryBudget {
    /// Milli-tokens; a retry costs 1,000.
    tokens: AtomicI64,
}

/// Each first attempt earns this fraction of a retry.
pub const RETRY_RATIO: f64 = 0.2;
const TOKEN: i64 = 1_000;
const DEPOSIT: i64 = (RETRY_RATIO * TOKEN as f64) as i64;
/// The most retries saved up (and the number a fresh router starts with).
const MAX_TOKENS: i64 = 100 * TOKEN;

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            tokens: AtomicI64::new(MAX_TOKENS),
        }
    }
}

impl RetryBudget {
    pub(crate) fn deposit(&self) {
        // Cheap check first: a full budget (the normal state) costs one load, no write.
        if self.tokens.load(Ordering::Relaxed) < MAX_TOKENS {
            let _ = self
                .tokens
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                    Some((t + DEPOSIT).min(MAX_TOKENS))
                });
        }
    }

    pub(crate) fn withdraw(&self) -> bool {
        self.tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t >= TOKEN).then_some(t - TOKEN)
            })
            .is_ok()
    }
}

/// Why the limiter turned a request away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Overloaded {
    #[error("the queue is full")]
    QueueFull,
    #[error("timed out in the queue")]
    QueueTimeout,
}

/// A service's concurrency limit with a bounded, time-limited queue.
#[derive(Debug)]
pub(crate) struct Limiter {
    pub(crate) limits: Limits,
    slots: Arc<Semaphore>,
    /// Requests waiting for a slot right now.
    pub(crate) queued: AtomicU32,
}

/// Decrements the queue depth however the wait ends (including the client going away).
struct Queued<'a>(&'a AtomicU32);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Limiter {
    pub(crate) fn new(limits: Limits) -> Self {
        let permits = usize::try_from(limits.concurrency)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Limiter {
            limits,
            slots: Arc::new(Semaphore::new(permits)),
            queued: AtomicU32::new(0),
        }
    }

    /// A slot, at once or after queueing; or a reason to answer 503 now.
    pub(crate) async fn acquire(&self) -> Result<OwnedSemaphorePermit, Overloaded> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let ahead = self.queued.fetch_add(1, Ordering::Relaxed);
        let _queued = Queued(&self.queued);
        if ahead >= self.limits.queue {
            return Err(Overloaded::QueueFull);
        }
        let wait = Duration::from_millis(self.limits.queue_timeout_ms);
        match tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; treat it like a timeout rather than panic.
            Ok(Err(_)) | Err(_) => Err(Overloaded::QueueTimeout),
        }
    }
}

/// Everything the router counts about one service.
#[derive(Debug, Default)]
pub(crate) struct ServiceState {
    /// Every response for the service, by status class (what [`crate::RouterStats`] shows).
    pub(crate) counters: Counters,
    /// Responses that came from an instance, per release.
    releases: Mutex<BTreeMap<u64, Arc<Counters>>>,
    pub(crate) latency: Histogram,
    pub(crate) in_flight: Gauge,
    pub(crate) retries: AtomicU64,
    pub(crate) ejections: AtomicU64,
    /// 503s from the overload limiter.
    pub(crate) rejected: AtomicU64,
    /// 504s: an instance sent no response head within the route's timeout.
    pub(crate) timeouts: AtomicU64,
    pub(crate) budget: RetryBudget,
    /// The current limiter, replaced only when the limits change (so queued and running
    /// requests keep their slots across table updates).
    limiter: Mutex<Option<Arc<Limiter>>>,
}

impl ServiceState {
    /// The counters of one release (created on first use, kept forever: releases are few).
    pub(crate) fn release(&self, release: u64) -> Arc<Counters> {
        self.releases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(release)
            .or_default()
            .clone()
    }

    pub(crate) fn releases(&self) -> Vec<(u64, Arc<Counters>)> {
        self.releases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(r, c)| (*r, c.clone()))
            .collect()
    }

    /// The limiter for `limits`: the current one when they are unchanged, a new one otherwise.
    pub(crate) fn limiter(&self, limits: Option<Limits>) -> Option<Arc<Limiter>> {
        let mut current = self.limiter.lock().unwrap_or_else(PoisonError::into_inner);
        match (limits, current.as_ref()) {
            (None, _) => {
                *current = None;
                None
            }
            (Some(limits), Some(limiter)) if limiter.limits == limits => Some(limiter.clone()),
            (Some(limits), _) => {
                let limiter = Arc::new(Limiter::new(limits));
                *current = Some(limiter.clone());
                Some(limiter)
            }
        }
    }

    /// The current limiter, for the queue-depth gauge.
    pub(crate) fn current_limiter(&self) -> Option<Arc<Limiter>> {
        self.limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_a_fifth_of_requests_once_the_reserve_is_spent() {
        let b = RetryBudget::default();
        let mut reserve = 0;
        while b.withdraw() {
            reserve += 1;
        }
        assert_eq!(reserve, 100);
        for _ in 0..100 {
            b.deposit();
        }
        let mut earned = 0;
        while b.withdraw() {
            earned += 1;
        }
        assert_eq!(earned, 20);
    }

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(20));
        h.observe(Duration::from_secs(60));
        let (buckets, sum) = h.snapshot();
        assert_eq!(buckets[0], 1);
        assert_eq!(buckets[4], 2);
        assert_eq!(buckets[LATENCY_BUCKETS.len() - 1], 2);
        assert_eq!(buckets[LATENCY_BUCKETS.len()], 3);
        assert!((sum - 60.0205).abs() < 1e-6);
    }

    #[tokio::test]
    async fn limiter_queues_then_rejects() {
        let l = Limiter::new(Limits {
            concurrency: 1,
            queue: 1,
            queue_timeout_ms: 50,
        });
        let first = l.acquire().await.expect("slot");
        assert_eq!(l.acquire().await.err(), Some(Overloaded::QueueTimeout));
        drop(first);
        assert!(l.acquire().await.is_ok());
        assert_eq!(l.queued.load(Ordering::Relaxed), 0);
    }
}
