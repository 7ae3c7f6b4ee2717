//! The measured change: which release is watched, when agents first reported each of its
//! instances healthy, and when each router's table first held it.
//!
//! "Routers applied a change" is, per router and new instance, the time from the heartbeat that
//! reported the instance healthy (the write that puts it in the routing table) being sent, to
//! that router's long-poll answering with a table that routes to it. The heartbeat's own
//! handling is inside the figure, so it is an upper bound on the table's propagation.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_api::control::RoutingTable;

/// Shared by every simulated agent and router of a run.
#[derive(Debug)]
pub struct Change {
    /// The release watched; 0 before the change.
    release: AtomicU64,
    /// Instance → when the heartbeat that first reported it healthy was sent.
    reported: Mutex<HashMap<String, Instant>>,
    /// Per router: how many of the watched release's instances its table has held.
    seen: Vec<AtomicUsize>,
    /// Report → router table, one sample per (router, instance).
    latencies: Mutex<Vec<Duration>>,
}

impl Change {
    /// Nothing watched yet, for `routers` routers.
    pub fn new(routers: usize) -> Change {
        Change {
            release: AtomicU64::new(0),
            reported: Mutex::new(HashMap::new()),
            seen: (0..routers).map(|_| AtomicUsize::new(0)).collect(),
            latencies: Mutex::new(Vec::new()),
        }
    }

    /// Watches `release` from now on.
    pub fn watch(&self, release: u64) {
        self.release.store(release, Ordering::SeqCst);
    }

    /// The release watched, if any.
    pub fn watched(&self) -> Option<u64> {
        Some(self.release.load(Ordering::SeqCst)).filter(|r| *r != 0)
    }

    /// An agent is about to send, at `at`, a heartbeat reporting `instances` of the watched
    /// release healthy: only each one's first report counts.
    pub fn reporting<'a>(&self, instances: impl Iterator<Item = &'a str>, at: Instant) {
        if let Ok(mut reported) = self.reported.lock() {
            for id in instances {
                reported.entry(id.to_string()).or_insert(at);
            }
        }
    }

    /// Router `router` received `table` at `at`; `held` is what it has held of the watched
    /// release so far.
    pub fn applied(
        &self,
        router: usize,
        table: &RoutingTable,
        at: Instant,
        held: &mut HashSet<String>,
    ) {
        let Some(release) = self.watched() else {
            return;
        };
        let mut new = Vec::new();
        for route in &table.routes {
            for e in &route.endpoints {
                if e.release == release && held.insert(e.instance.clone()) {
                    new.push(e.instance.as_str());
                }
            }
        }
        if new.is_empty() {
            return;
        }
        let samples: Vec<Duration> = match self.reported.lock() {
            Ok(reported) => new
                .iter()
                .filter_map(|id| reported.get(*id))
                .map(|sent| at.saturating_duration_since(*sent))
                .collect(),
            Err(_) => Vec::new(),
        };
        if let Ok(mut l) = self.latencies.lock() {
            l.extend(samples);
        }
        if let Some(seen) = self.seen.get(router) {
            seen.store(held.len(), Ordering::SeqCst);
        }
    }

    /// How many routers have held at least `instances` of the watched release.
    pub fn routers_holding(&self, instances: usize) -> usize {
        self.seen
            .iter()
            .filter(|s| s.load(Ordering::SeqCst) >= instances)
            .count()
    }

    /// Every sample so far.
    pub fn latencies(&self) -> Vec<Duration> {
        self.latencies.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_api::control::{EndpointView, RouteView};

    fn table(endpoints: &[(&str, u64)]) -> RoutingTable {
        RoutingTable {
            version: "v".into(),
            routes: vec![RouteView {
                host: "web.bench.localhost".into(),
                path: "/".into(),
                stack: "bench".into(),
                service: "web".into(),
                endpoints: endpoints
                    .iter()
                    .map(|(id, release)| EndpointView {
                        addr: "127.0.0.1:1".into(),
                        instance: id.to_string(),
                        release: *release,
                        weight: 100,
                    })
                    .collect(),
                limits: None,
                maintenance: None,
                timeout_ms: None,
                ..RouteView::default()
            }],
        }
    }

    #[test]
    fn counts_each_new_instance_once_per_router_from_its_first_report() {
        let change = Change::new(2);
        let t0 = super::super::clock::now();
        let ms = Duration::from_millis;
        // Nothing watched: nothing counted.
        let mut held = HashSet::new();
        change.applied(0, &table(&[("a", 2)]), t0, &mut held);
        assert!(held.is_empty());
        change.watch(2);
        change.reporting(["a", "b"].into_iter(), t0);
        change.reporting(["a"].into_iter(), t0 + ms(50));
        change.applied(0, &table(&[("old", 1), ("a", 2)]), t0 + ms(10), &mut held);
        change.applied(0, &table(&[("a", 2), ("b", 2)]), t0 + ms(20), &mut held);
        assert_eq!(change.routers_holding(2), 1);
        assert_eq!(change.latencies(), vec![ms(10), ms(20)]);
    }
}
