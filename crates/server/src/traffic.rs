//! What the routers saw: their per-arm traffic reports, kept in memory, and the window sums
//! the canary analysis reads.
//!
//! Each router POSTs its counters cumulative since it started (`POST /v1/routers/{id}/traffic`,
//! [`berth_api::control::TrafficReport`]). The server turns each report into differences
//! against that router's previous one and files them under its own clock, so
//! [`Traffic::window`] is a sum of differences between two times over every router: a lost
//! report loses nothing (the next one carries its counts), and a router that restarted (its
//! start time changed, or a counter went down) counts again from zero.
//!
//! Bounded: at most [`MAX_ROUTERS`] routers (the one heard from longest ago is forgotten for a
//! new one), reports less than [`SAMPLE_MS`] apart share one sample, and samples older than
//! [`KEEP_MS`] are dropped. In memory only, like liveness: after a server restart the first
//! report of a router that started before the server is a baseline (its counts may be old).
//! A pure core: every time is passed in.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use berth_api::control::{
    latency_quantile_ms, TrafficReport, TrafficWindowView, LATENCY_SLOTS, MAX_REPORT_COUNTERS,
};

/// The most routers whose reports are kept (node routers and edge routers together).
pub const MAX_ROUTERS: usize = 1_024;

/// How long samples are kept: longer than any step's bake a canary analysis looks back over.
pub const KEEP_MS: u64 = 30 * 60 * 1_000;

/// Reports of one router closer together than this are summed into one sample (so a router
/// reporting too often costs no more memory than one every second).
pub const SAMPLE_MS: u64 = 1_000;

/// The largest report body the server reads: [`MAX_REPORT_COUNTERS`] arms of up to 2 KiB
/// each (long names, 20-digit counts in every bucket) fit within it.
pub const MAX_REPORT_BYTES: usize = 4 * 1024 * 1024;

/// The arm name of a route's own release groups (the rest are A/B split services).
pub const OWN_ARM: &str = "release";

/// Counts of one arm: requests (matched ones apart), their 5xx, matched requests, and their
/// latency per [`berth_api::control::LATENCY_BOUNDS_MS`] bucket (last `+Inf`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Answers, matched requests excluded.
    pub requests: u64,
    /// Of `requests`, the 5xx ones.
    pub errors_5xx: u64,
    /// Requests sent by the match header.
    pub matched: u64,
    /// Of `requests`, per latency bucket.
    pub latency_ms_buckets: [u64; LATENCY_SLOTS],
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors_5xx = self.errors_5xx.saturating_add(other.errors_5xx);
        self.matched = self.matched.saturating_add(other.matched);
        for (a, b) in self
            .latency_ms_buckets
            .iter_mut()
            .zip(&other.latency_ms_buckets)
        {
            *a = a.saturating_add(*b);
        }
    }

    /// `self - before`, or `None` when any counter went down (the counter restarted).
    fn since(&self, before: &Counts) -> Option<Counts> {
        let mut latency = [0; LATENCY_SLOTS];
        for (i, slot) in latency.iter_mut().enumerate() {
            *slot = self.latency_ms_buckets[i].checked_sub(before.latency_ms_buckets[i])?;
        }
        Some(Counts {
            requests: self.requests.checked_sub(before.requests)?,
            errors_5xx: self.errors_5xx.checked_sub(before.errors_5xx)?,
            matched: self.matched.checked_sub(before.matched)?,
            latency_ms_buckets: latency,
        })
    }

    fn is_zero(&self) -> bool {
        *self == Counts::default()
    }
}

/// What a window of traffic to one release (or A/B arm) adds up to, over every router.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// Answers, matched requests excluded.
    pub requests: u64,
    /// Of `requests`, the 5xx ones.
    pub errors_5xx: u64,
    /// Requests sent by the match header (never part of an analysis).
    pub matched: u64,
    /// Of `requests`, per latency bucket.
    pub latency_ms_buckets: [u64; LATENCY_SLOTS],
    /// Routers that counted any of it.
    pub routers: usize,
}

impl Window {
    /// The bucket bound under which 99 % of the requests answered (ms); `None` without
    /// requests (no data is not a latency).
    pub fn p99_ms(&self) -> Option<u64> {
        latency_quantile_ms(&self.latency_ms_buckets, 0.99)
    }

    /// The share of requests that were 5xx; `None` without requests.
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors_5xx as f64 / self.requests as f64)
    }
}

/// Why a report was refused (400: the router is broken or not a berth router).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error(
        "a traffic report carries at most {MAX_REPORT_COUNTERS} arms, this one {0}: report fewer"
    )]
    TooManyArms(usize),
    #[error("arm {stack}/{service} release {release} `{arm}`: {len} latency buckets, at most {LATENCY_SLOTS} (berth_api::control::LATENCY_BOUNDS_MS and +Inf); router and server disagree on the bounds: upgrade the router")]
    Buckets {
        stack: String,
        service: String,
        release: u64,
        arm: String,
        len: usize,
    },
}

/// An arm's identity in the reports.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    stack: String,
    service: String,
    release: u64,
    arm: String,
}

/// Differences counted between two reports, filed at the server time of the later one.
#[derive(Debug)]
struct Sample {
    /// When its first report arrived (later ones within [`SAMPLE_MS`] join it).
    opened_ms: u64,
    /// When its last report arrived: what windows compare.
    at_ms: u64,
    deltas: Vec<(Arc<Key>, Counts)>,
}

/// One router's reports.
#[derive(Debug, Default)]
struct RouterTraffic {
    started_ms: u64,
    last_ms: u64,
    /// Its last report's counters.
    cumulative: HashMap<Arc<Key>, Counts>,
    samples: VecDeque<Sample>,
}

/// Every router's recent traffic. A pure core behind a mutex: times are passed in.
#[derive(Debug, Default)]
pub struct TrafficBook {
    /// When this server started (ms): routers that started before it report a baseline first.
    server_started_ms: u64,
    routers: HashMap<String, RouterTraffic>,
}

impl TrafficBook {
    /// An empty book for a server that started at `server_started_ms`.
    pub fn new(server_started_ms: u64) -> Self {
        TrafficBook {
            server_started_ms,
            routers: HashMap::new(),
        }
    }

    /// Files router `id`'s report, received at `now_ms`: returns how many arms changed.
    pub fn record(
        &mut self,
        id: &str,
        report: &TrafficReport,
        now_ms: u64,
    ) -> Result<usize, ReportError> {
        if report.counters.len() > MAX_REPORT_COUNTERS {
            return Err(ReportError::TooManyArms(report.counters.len()));
        }
        let mut current: HashMap<Arc<Key>, Counts> = HashMap::with_capacity(report.counters.len());
        for c in &report.counters {
            if c.latency_ms_buckets.len() > LATENCY_SLOTS {
                return Err(ReportError::Buckets {
                    stack: c.stack.clone(),
                    service: c.service.clone(),
                    release: c.release,
                    arm: c.arm.clone(),
                    len: c.latency_ms_buckets.len(),
                });
            }
            let mut latency = [0; LATENCY_SLOTS];
            latency[..c.latency_ms_buckets.len()].copy_from_slice(&c.latency_ms_buckets);
            let key = Arc::new(Key {
                stack: c.stack.clone(),
                service: c.service.clone(),
                release: c.release,
                arm: c.arm.clone(),
            });
            let counts = Counts {
                requests: c.requests,
                errors_5xx: c.errors_5xx,
                matched: c.matched,
                latency_ms_buckets: latency,
            };
            current.entry(key).or_default().add(&counts);
        }
        self.forget_stale(now_ms);
        if !self.routers.contains_key(id) && self.routers.len() >= MAX_ROUTERS {
            let oldest = self
                .routers
                .iter()
                .min_by_key(|(_, r)| r.last_ms)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.routers.remove(&oldest);
            }
        }
        let server_started_ms = self.server_started_ms;
        let (router, known) = match self.routers.get_mut(id) {
            Some(router) => (router, true),
            None => (self.routers.entry(id.to_string()).or_default(), false),
        };
        // What the counters are differences from: the previous report; nothing for a router
        // that restarted or that started after this server; for a router that started before
        // this server (or does not say when), this first report is only a baseline.
        let restarted = known && router.started_ms != report.started_ms;
        let baseline_only =
            !known && (report.started_ms == 0 || report.started_ms < server_started_ms);
        let mut deltas = Vec::new();
        if !baseline_only {
            for (key, counts) in &current {
                let before = if restarted {
                    None
                } else {
                    router.cumulative.get(key)
                };
                let delta = match before {
                    None => *counts,
                    // A counter went down: that arm restarted from zero in the router.
                    Some(before) => counts.since(before).unwrap_or(*counts),
                };
                if !delta.is_zero() {
                    deltas.push((key.clone(), delta));
                }
            }
        }
        router.started_ms = report.started_ms;
        router.last_ms = now_ms;
        router.cumulative = current;
        let changed = deltas.len();
        if !deltas.is_empty() {
            match router.samples.back_mut() {
                Some(last) if now_ms.saturating_sub(last.opened_ms) < SAMPLE_MS => {
                    last.at_ms = last.at_ms.max(now_ms);
                    for (key, delta) in deltas {
                        match last.deltas.iter_mut().find(|(k, _)| *k == key) {
                            Some((_, sum)) => sum.add(&delta),
                            None => last.deltas.push((key, delta)),
                        }
                    }
                }
                _ => router.samples.push_back(Sample {
                    opened_ms: now_ms,
                    at_ms: now_ms,
                    deltas,
                }),
            }
        }
        let cutoff = now_ms.saturating_sub(KEEP_MS);
        while router.samples.front().is_some_and(|s| s.at_ms < cutoff) {
            router.samples.pop_front();
        }
        Ok(changed)
    }

    /// Forgets routers with no report for [`KEEP_MS`] (nothing of theirs is left to sum).
    fn forget_stale(&mut self, now_ms: u64) {
        let cutoff = now_ms.saturating_sub(KEEP_MS);
        self.routers.retain(|_, r| r.last_ms >= cutoff);
    }

    /// The traffic of (stack, service, release) on arm `arm` (`release` for the route's own
    /// release groups, or an A/B split service) counted after `since_ms` up to `now_ms`, summed
    /// over routers. `release: None` sums every release.
    pub fn window_of(
        &self,
        stack: &str,
        service: &str,
        release: Option<u64>,
        arm: &str,
        since_ms: u64,
        now_ms: u64,
    ) -> Window {
        let mut sum = Counts::default();
        let mut routers = 0;
        let wanted = |k: &Key| {
            k.stack == stack
                && k.service == service
                && release.is_none_or(|r| r == k.release)
                && k.arm == arm
        };
        for router in self.routers.values() {
            let mut counted = false;
            for sample in &router.samples {
                if sample.at_ms <= since_ms || sample.at_ms > now_ms {
                    continue;
                }
                for (key, delta) in &sample.deltas {
                    if wanted(key) {
                        sum.add(delta);
                        counted = true;
                    }
                }
            }
            routers += usize::from(counted);
        }
        Window {
            requests: sum.requests,
            errors_5xx: sum.errors_5xx,
            matched: sum.matched,
            latency_ms_buckets: sum.latency_ms_buckets,
            routers,
        }
    }

    /// How many routers are remembered.
    pub fn len(&self) -> usize {
        self.routers.len()
    }

    /// Whether no router is remembered.
    pub fn is_empty(&self) -> bool {
        self.routers.is_empty()
    }
}

/// The server's traffic book, shared by the report handler and the analysis.
#[derive(Debug, Default)]
pub struct Traffic(Mutex<TrafficBook>);

impl Traffic {
    /// An empty book for a server that started at `server_started_ms`.
    pub fn new(server_started_ms: u64) -> Self {
        Traffic(Mutex::new(TrafficBook::new(server_started_ms)))
    }

    /// Files router `id`'s report received at `now_ms` (see [`TrafficBook::record`]).
    pub fn record(
        &self,
        id: &str,
        report: &TrafficReport,
        now_ms: u64,
    ) -> Result<usize, ReportError> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(id, report, now_ms)
    }

    /// What the routers counted for the route's own `release` of (stack, service) after
    /// `since_ms` up to `now_ms`: what a canary analysis compares (matched requests apart).
    pub fn window(
        &self,
        stack: &str,
        service: &str,
        release: u64,
        since_ms: u64,
        now_ms: u64,
    ) -> Window {
        self.window_of(stack, service, Some(release), OWN_ARM, since_ms, now_ms)
    }

    /// [`TrafficBook::window_of`]: any arm, one release or all.
    pub fn window_of(
        &self,
        stack: &str,
        service: &str,
        release: Option<u64>,
        arm: &str,
        since_ms: u64,
        now_ms: u64,
    ) -> Window {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .window_of(stack, service, release, arm, since_ms, now_ms)
    }

    /// The window as `GET /v1/traffic` answers it.
    pub fn view(
        &self,
        stack: &str,
        service: &str,
        release: Option<u64>,
        arm: &str,
        since_ms: u64,
        now_ms: u64,
    ) -> TrafficWindowView {
        let w = self.window_of(stack, service, release, arm, since_ms, now_ms);
        TrafficWindowView {
            stack: stack.to_string(),
            service: service.to_string(),
            release: release.unwrap_or(0),
            since_ms,
            now_ms,
            requests: w.requests,
            errors_5xx: w.errors_5xx,
            matched: w.matched,
            latency_ms_buckets: w.latency_ms_buckets.to_vec(),
            p99_ms: w.p99_ms(),
            routers: w.routers,
        }
    }
}

#[cfg(test)]
mod tests {
    use berth_api::control::ArmCounters;

    use super::*;

    fn arm(release: u64, requests: u64, errors: u64, matched: u64) -> ArmCounters {
        let mut latency = vec![0; LATENCY_SLOTS];
        latency[3] = requests; // all within 10 ms
        ArmCounters {
            stack: "shop".into(),
            service: "web".into(),
            release,
            arm: OWN_ARM.into(),
            requests,
            errors_5xx: errors,
            latency_ms_buckets: latency,
            matched,
        }
    }

    fn report(started_ms: u64, counters: Vec<ArmCounters>) -> TrafficReport {
        TrafficReport {
            at_ms: 0,
            counters,
            started_ms,
        }
    }

    const START: u64 = 1_000_000;

    #[test]
    fn windows_sum_differences_over_routers_and_time() {
        let mut book = TrafficBook::new(START);
        // Router a started after the server: its first report counts from zero.
        book.record(
            "a",
            &report(START + 1, vec![arm(2, 10, 1, 3)]),
            START + 1_000,
        )
        .expect("a1");
        book.record(
            "b",
            &report(START + 5, vec![arm(2, 5, 0, 0)]),
            START + 1_500,
        )
        .expect("b1");
        book.record(
            "a",
            &report(START + 1, vec![arm(2, 30, 2, 3), arm(1, 100, 0, 0)]),
            START + 3_000,
        )
        .expect("a2");
        let w = |book: &TrafficBook, release, since, now| {
            book.window_of("shop", "web", Some(release), OWN_ARM, since, now)
        };
        let all = w(&book, 2, 0, START + 10_000);
        assert_eq!(
            (all.requests, all.errors_5xx, all.matched, all.routers),
            (35, 2, 3, 2)
        );
        assert_eq!(all.p99_ms(), Some(10));
        let late = w(&book, 2, START + 2_000, START + 10_000);
        assert_eq!(
            (late.requests, late.errors_5xx, late.matched, late.routers),
            (20, 1, 0, 1)
        );
        let early = w(&book, 2, 0, START + 2_000);
        assert_eq!(early.requests, 15);
        assert_eq!(w(&book, 1, 0, START + 10_000).requests, 100);
        assert_eq!(w(&book, 3, 0, START + 10_000), Window::default());
        assert_eq!(Window::default().p99_ms(), None, "no data is no latency");
        // Matched requests are counted apart, and another arm is not this release's.
        let mut split = arm(2, 7, 7, 0);
        split.arm = "web-next".into();
        book.record(
            "b",
            &report(START + 5, vec![arm(2, 5, 0, 0), split]),
            START + 4_000,
        )
        .expect("b2");
        assert_eq!(w(&book, 2, 0, START + 10_000).requests, 35);
        let next = book.window_of("shop", "web", None, "web-next", 0, START + 10_000);
        assert_eq!((next.requests, next.errors_5xx), (7, 7));
    }

    #[test]
    fn a_router_restart_and_a_server_restart_are_handled() {
        let mut book = TrafficBook::new(START);
        // Started before this server: the first report is a baseline only.
        book.record(
            "old",
            &report(START - 60_000, vec![arm(1, 1_000, 500, 0)]),
            START + 1_000,
        )
        .expect("baseline");
        let w = |book: &TrafficBook| book.window_of("shop", "web", Some(1), OWN_ARM, 0, u64::MAX);
        assert_eq!(w(&book).requests, 0, "old counts are not attributed to now");
        book.record(
            "old",
            &report(START - 60_000, vec![arm(1, 1_010, 501, 0)]),
            START + 2_000,
        )
        .expect("next");
        assert_eq!((w(&book).requests, w(&book).errors_5xx), (10, 1));
        // It restarts: a new start time, counters from zero again.
        book.record(
            "old",
            &report(START + 2_500, vec![arm(1, 4, 0, 0)]),
            START + 3_000,
        )
        .expect("restarted");
        assert_eq!(w(&book).requests, 14);
        // A counter going down without a new start time (an arm pruned and back): from zero.
        book.record(
            "old",
            &report(START + 2_500, vec![arm(1, 2, 0, 0)]),
            START + 4_000,
        )
        .expect("down");
        assert_eq!(w(&book).requests, 16);
        // A report without a start time from an unknown router: a baseline too.
        book.record("anon", &report(0, vec![arm(1, 50, 0, 0)]), START + 5_000)
            .expect("anon");
        assert_eq!(w(&book).requests, 16);
    }

    #[test]
    fn the_book_is_bounded_in_routers_time_and_samples() {
        let mut book = TrafficBook::new(0);
        for i in 0..(MAX_ROUTERS as u64 + 10) {
            book.record(
                &format!("edge-{i}"),
                &report(1, vec![arm(1, 1, 0, 0)]),
                1_000 + i,
            )
            .expect("report");
            assert!(book.len() <= MAX_ROUTERS);
        }
        assert!(
            !book.routers.contains_key("edge-0"),
            "the oldest was forgotten"
        );
        assert!(book
            .routers
            .contains_key(&format!("edge-{}", MAX_ROUTERS + 9)));
        // Reports every 100 ms for 40 minutes: samples are merged and expire.
        let mut book = TrafficBook::new(0);
        let mut t = 1_000;
        for n in 1..=24_000u64 {
            book.record("a", &report(1, vec![arm(1, n, 0, 0)]), t)
                .expect("report");
            t += 100;
        }
        let router = &book.routers["a"];
        assert!(
            router.samples.len() <= (KEEP_MS / SAMPLE_MS) as usize + 1,
            "{}",
            router.samples.len()
        );
        let since = t - 10 * 60 * 1_000;
        let w = book.window_of("shop", "web", Some(1), OWN_ARM, since, t);
        assert!(w.requests.abs_diff(6_000) <= 10, "{}", w.requests);
        // Routers silent for longer than the samples are kept are forgotten.
        book.record("b", &report(1, vec![]), t + KEEP_MS + 1)
            .expect("b");
        assert_eq!(book.len(), 1);
    }

    #[test]
    fn malformed_reports_are_refused() {
        let mut book = TrafficBook::new(0);
        let mut bad = arm(1, 1, 0, 0);
        bad.latency_ms_buckets = vec![0; LATENCY_SLOTS + 1];
        let err = book
            .record("a", &report(1, vec![bad]), 1)
            .expect_err("refused");
        assert!(err.to_string().contains("latency buckets"), "{err}");
        let many = (0..=MAX_REPORT_COUNTERS as u64)
            .map(|r| arm(r, 1, 0, 0))
            .collect();
        assert!(matches!(
            book.record("a", &report(1, many), 1),
            Err(ReportError::TooManyArms(_))
        ));
        assert!(book.is_empty(), "nothing filed from a refused report");
        // Fewer buckets than the bounds (an older router with fewer): padded with zeros.
        let mut short = arm(1, 1, 0, 0);
        short.latency_ms_buckets = vec![1];
        book.record("a", &report(1, vec![short]), 1).expect("short");
        let w = book.window_of("shop", "web", Some(1), OWN_ARM, 0, 2);
        assert_eq!(w.p99_ms(), Some(1));
    }
}
