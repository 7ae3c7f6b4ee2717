//! The compiled form of a [`RouteTable`]: what the hot path reads.
//!
//! Compiling normalises hosts and prefixes once, groups routes by host and sorts each group
//! longest prefix first, so a lookup is one hash probe plus a short scan that stops at the first
//! match. A compiled table is immutable; [`crate::RouterHandle`] swaps whole tables with
//! `arc-swap`, so readers never take a lock and never see a half-updated table.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::service::{Limiter, ServiceState};
use crate::stats::{shard, Counters, Padded, SHARDS};
use crate::table::{Endpoint, Limits, RouteTable};
use crate::upstream::Upstream;

/// A routing table ready for lookups.
#[derive(Debug, Default)]
pub(crate) struct CompiledTable {
    /// The table this was compiled from, kept so the shell can read back what is live.
    pub(crate) source: Arc<RouteTable>,
    /// Normalised host → routes, longest prefix first.
    hosts: HashMap<String, Vec<Arc<Route>>>,
}

/// The long-lived state a compile links routes to: per-service state by name and per-instance
/// state by address, both surviving table swaps.
#[derive(Default)]
pub(crate) struct Registry {
    pub(crate) services: HashMap<String, Arc<ServiceState>>,
    pub(crate) upstreams: HashMap<SocketAddr, Arc<Upstream>>,
}

/// One route, with everything the proxy needs precomputed.
#[derive(Debug)]
pub(crate) struct Route {
    /// Normalised prefix: starts with `/`, no trailing `/`; empty for the root (matches all).
    prefix: String,
    /// The service's name, for error bodies and logs.
    pub(crate) name: Arc<str>,
    /// The service's counters, histogram and budget; shared by its routes and across tables.
    pub(crate) service: Arc<ServiceState>,
    pub(crate) endpoints: Box<[Target]>,
    /// Release groups (see [`crate::Endpoint::weight`]), in table order.
    groups: Box<[Group]>,
    /// Sum of the groups' weights.
    total_weight: u64,
    /// Rotation offset for ties between equally loaded endpoints, so sequential requests
    /// spread round-robin; one per worker thread ([`crate::stats::shard`]), so cores do not
    /// share a cache line per request. Shared with the same (host, prefix) route of the
    /// previous table.
    next: Arc<[Padded<AtomicUsize>; SHARDS]>,
    /// The service's overload limiter, when it has limits.
    pub(crate) limiter: Option<Arc<Limiter>>,
    /// The maintenance page, when the route is in maintenance.
    pub(crate) maintenance: Option<Bytes>,
    /// The route's response-head timeout, when its entry sets one (see
    /// [`crate::RouteEntry::timeout_ms`]); the router's default otherwise.
    pub(crate) timeout: Option<std::time::Duration>,
}

/// The endpoints of one release and their summed weight.
#[derive(Debug)]
struct Group {
    weight: u64,
    members: Box<[usize]>,
}

/// An endpoint with its long-lived state attached.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) endpoint: Endpoint,
    pub(crate) upstream: Arc<Upstream>,
    /// The counters of this endpoint's (service, release).
    pub(crate) release_counters: Arc<Counters>,
}

/// Groups larger than this pick by "power of two choices" instead of scanning every endpoint.
const SCAN_LIMIT: usize = 16;

thread_local! {
    /// xorshift64* state: weighted group choice and P2C need cheap, not cryptographic, randomness.
    static RNG: Cell<u64> = Cell::new(RandomState::new().hash_one(0x5eed_u64) | 1);
}

/// A pseudo-random number (per-thread xorshift64*).
pub(crate) fn random() -> u64 {
    RNG.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

impl Route {
    /// Picks an endpoint (its index in [`Route::endpoints`]), avoiding `avoid` (the endpoint a
    /// retry just failed on) when any other can serve; `None` when the route has no endpoints.
    ///
    /// First a release group is drawn at random in proportion to the weights; within it, the
    /// non-ejected endpoint with the fewest outstanding requests wins, ties broken round-robin.
    /// If the group has none to offer, any non-ejected endpoint of the route will do; if every
    /// endpoint is ejected, the least loaded one is used anyway (panic mode, as Envoy does: a
    /// guess is better than a certain 503 when the health data may be stale).
    pub(crate) fn pick(&self, avoid: Option<usize>, now: u64) -> Option<usize> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        if n == 1 {
            return Some(0);
        }
        let rotation = self.next[shard()].0.fetch_add(1, Ordering::Relaxed);
        let group = self.choose_group();
        let members = &self.groups[group].members;
        self.least_loaded(members.len(), |k| members[k], avoid, Some(now), rotation)
            .or_else(|| self.least_loaded(n, |k| k, avoid, Some(now), rotation))
            .or_else(|| self.least_loaded(n, |k| k, avoid, None, rotation))
            .or(avoid)
    }

    fn choose_group(&self) -> usize {
        if self.groups.len() == 1 {
            return 0;
        }
        if self.total_weight == 0 {
            return (random() % self.groups.len() as u64) as usize;
        }
        let mut ticket = random() % self.total_weight;
        for (i, group) in self.groups.iter().enumerate() {
            if ticket < group.weight {
                return i;
            }
            ticket -= group.weight;
        }
        self.groups.len() - 1
    }

    /// The least loaded of `len` endpoints (`member(k)` maps to endpoint indices), skipping
    /// `avoid` and, when `now` is given, ejected ones.
    fn least_loaded(
        &self,
        len: usize,
        member: impl Fn(usize) -> usize,
        avoid: Option<usize>,
        now: Option<u64>,
        rotation: usize,
    ) -> Option<usize> {
        let usable = |i: usize| {
            Some(i) != avoid && now.is_none_or(|now| !self.endpoints[i].upstream.is_ejected(now))
        };
        let load = |i: usize| {
            self.endpoints[i]
                .upstream
                .outstanding
                .load(Ordering::Relaxed)
        };
        if len > SCAN_LIMIT {
            // Power of two choices: two random candidates, the less loaded wins.
            let a = member((random() % len as u64) as usize);
            let b = member((random() % len as u64) as usize);
            match (usable(a), usable(b)) {
                (true, true) => return Some(if load(b) < load(a) { b } else { a }),
                (true, false) => return Some(a),
                (false, true) => return Some(b),
                // Both unusable: fall through to a full scan.
                (false, false) => {}
            }
        }
        let mut best: Option<(usize, u32)> = None;
        for k in 0..len {
            let i = member((rotation + k) % len);
            if !usable(i) {
                continue;
            }
            let l = load(i);
            if best.is_none_or(|(_, b)| l < b) {
                best = Some((i, l));
                if l == 0 {
                    break;
                }
            }
        }
        best.map(|(i, _)| i)
    }

    fn matches(&self, path: &str) -> bool {
        prefix_matches(&self.prefix, path)
    }
}

/// The page served in maintenance mode when the table brings none.
const DEFAULT_MAINTENANCE_PAGE: &str = "<!doctype html>\n<html><head><meta charset=\"utf-8\">\
<title>Down for maintenance</title></head><body><h1>Down for maintenance</h1>\
<p>This service is being worked on and will be back shortly.</p></body></html>\n";

/// `prefix` (normalised) matches `path` on a segment boundary.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix.is_empty()
        || (path.starts_with(prefix)
            && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

/// Normalises a host for comparison: port stripped, lower case, trailing dot dropped.
/// Borrows when the host is already normal, which is the common case on the hot path.
pub(crate) fn normalize_host(host: &str) -> Cow<'_, str> {
    let host = host.trim();
    let host = if let Some(rest) = host.strip_prefix('[') {
        // IPv6 literal: `[::1]:8080` → `[::1]`.
        match rest.find(']') {
            Some(end) => &host[..end + 2],
            None => host,
        }
    } else {
        match host.rfind(':') {
            Some(colon) => &host[..colon],
            None => host,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// Normalises a configured prefix: leading `/` added, trailing `/`s removed, root → empty.
fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else if trimmed.starts_with('/') {
        trimmed.to_owned()
    } else {
        format!("/{trimmed}")
    }
}

impl CompiledTable {
    /// Compiles `source`. `previous` lends its rotation positions; `registry` holds the
    /// long-lived per-service and per-instance state, and is pruned of instances no longer in
    /// the table (their in-flight requests keep their own references).
    pub(crate) fn compile(
        source: Arc<RouteTable>,
        previous: &CompiledTable,
        registry: &mut Registry,
    ) -> CompiledTable {
        let mut by_host: HashMap<String, Vec<Route>> = HashMap::new();
        let mut live: HashMap<SocketAddr, Arc<Upstream>> = HashMap::new();
        // The first route of a service that carries limits sets them for all its routes,
        // those listed before it included; the limiters are made once every route is read.
        let mut limits: HashMap<&str, Option<Limits>> = HashMap::new();
        for entry in &source.routes {
            let host = normalize_host(&entry.host).into_owned();
            let prefix = normalize_prefix(&entry.path_prefix);
            let routes = by_host.entry(host.clone()).or_default();
            if routes.iter().any(|r| r.prefix == prefix) {
                tracing::warn!(
                    host = %entry.host,
                    prefix = %entry.path_prefix,
                    service = %entry.service,
                    "duplicate route ignored: an earlier entry has the same host and prefix"
                );
                continue;
            }
            let next = previous
                .route(&host, &prefix)
                .map(|r| r.next.clone())
                .unwrap_or_default();
            let service = registry
                .services
                .entry(entry.service.clone())
                .or_default()
                .clone();
            let mut endpoints = Vec::with_capacity(entry.endpoints.len());
            for e in &entry.endpoints {
                let upstream = registry
                    .upstreams
                    .entry(e.addr)
                    .or_insert_with(|| Arc::new(Upstream::new(e.addr)))
                    .clone();
                live.insert(e.addr, upstream.clone());
                endpoints.push(Target {
                    endpoint: e.clone(),
                    upstream,
                    release_counters: service.release(e.release),
                });
            }
            let mut building: Vec<(u64, u64, Vec<usize>)> = Vec::new();
            for (i, target) in endpoints.iter().enumerate() {
                let (release, weight) = (target.endpoint.release, target.endpoint.weight);
                match building.iter_mut().find(|(r, _, _)| *r == release) {
                    Some((_, sum, members)) => {
                        *sum += u64::from(weight);
                        members.push(i);
                    }
                    None => building.push((release, u64::from(weight), vec![i])),
                }
            }
            let groups: Box<[Group]> = building
                .into_iter()
                .map(|(_, weight, members)| Group {
                    weight,
                    members: members.into_boxed_slice(),
                })
                .collect();
            let first = limits.entry(&entry.service).or_default();
            if first.is_none() {
                *first = entry.limits;
            }
            let maintenance = entry.maintenance.as_ref().map(|m| {
                Bytes::from(
                    m.page_html
                        .clone()
                        .unwrap_or_else(|| DEFAULT_MAINTENANCE_PAGE.to_owned()),
                )
            });
            routes.push(Route {
                prefix,
                name: Arc::from(entry.service.as_str()),
                service,
                total_weight: groups.iter().map(|g| g.weight).sum(),
                groups,
                endpoints: endpoints.into_boxed_slice(),
                next,
                limiter: None,
                maintenance,
                timeout: entry.timeout_ms.map(std::time::Duration::from_millis),
            });
        }
        let mut limiters: HashMap<Arc<str>, Option<Arc<Limiter>>> = HashMap::new();
        let hosts = by_host
            .into_iter()
            .map(|(host, mut routes)| {
                routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
                let routes = routes
                    .into_iter()
                    .map(|mut route| {
                        route.limiter = limiters
                            .entry(route.name.clone())
                            .or_insert_with(|| {
                                let limits = limits.get(&*route.name).copied().flatten();
                                route.service.limiter(limits)
                            })
                            .clone();
                        Arc::new(route)
                    })
                    .collect();
                (host, routes)
            })
            .collect();
        registry.upstreams = live;
        CompiledTable { source, hosts }
    }

    /// The route for a request: exact (normalised) host, longest matching prefix.
    /// `host` must already be normalised with [`normalize_host`].
    pub(crate) fn lookup(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        self.hosts.get(host)?.iter().find(|r| r.matches(path))
    }

    fn route(&self, host: &str, prefix: &str) -> Option<&Arc<Route>> {
        self.hosts.get(host)?.iter().find(|r| r.prefix == prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::RouteEntry;
    use crate::upstream::now_nanos;

    fn entry(host: &str, prefix: &str, service: &str, n: u16) -> RouteEntry {
        RouteEntry {
            host: host.into(),
            path_prefix: prefix.into(),
            service: service.into(),
            endpoints: (0..n)
                .map(|i| Endpoint {
                    addr: ([127, 0, 0, 1], 9000 + i).into(),
                    instance: format!("{service}-{i}"),
                    release: 1,
                    weight: 100,
                })
                .collect(),
            limits: None,
            maintenance: None,
            timeout_ms: None,
        }
    }

    fn compile(routes: Vec<RouteEntry>) -> CompiledTable {
        CompiledTable::compile(
            Arc::new(RouteTable { routes }),
            &CompiledTable::default(),
            &mut Registry::default(),
        )
    }

    fn service<'a>(t: &'a CompiledTable, host: &str, path: &str) -> Option<&'a str> {
        t.lookup(&normalize_host(host), path)
            .map(|r| r.name.as_ref())
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(prefix_matches("", "/anything"));
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/"));
        assert!(prefix_matches("/api", "/api/x/y"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(!prefix_matches("/api", "/ap"));
        assert!(!prefix_matches("/api", "/"));
    }

    #[test]
    fn hosts_are_normalised() {
        assert_eq!(normalize_host("Shop.Local:8080"), "shop.local");
        assert_eq!(normalize_host("shop.local"), "shop.local");
        assert!(matches!(normalize_host("shop.local"), Cow::Borrowed(_)));
        assert_eq!(normalize_host("shop.local."), "shop.local");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("[::1]"), "[::1]");
        assert_eq!(normalize_host("127.0.0.1:80"), "127.0.0.1");
    }

    #[test]
    fn prefixes_are_normalised() {
        assert_eq!(normalize_prefix("/"), "");
        assert_eq!(normalize_prefix(""), "");
        assert_eq!(normalize_prefix("/api/"), "/api");
        assert_eq!(normalize_prefix("api"), "/api");
    }

    #[test]
    fn longest_prefix_wins_within_a_host() {
        let t = compile(vec![
            entry("shop.local", "/", "web", 1),
            entry("shop.local", "/api/v2", "api2", 1),
            entry("SHOP.local", "/api", "api", 1),
            entry("other.local", "/api", "other", 1),
        ]);
        assert_eq!(service(&t, "shop.local", "/"), Some("web"));
        assert_eq!(service(&t, "shop.local", "/apix"), Some("web"));
        assert_eq!(service(&t, "shop.local", "/api"), Some("api"));
        assert_eq!(service(&t, "Shop.Local:80", "/api/v2/x"), Some("api2"));
        assert_eq!(service(&t, "shop.local", "/api/v22"), Some("api"));
        assert_eq!(service(&t, "other.local", "/api/x"), Some("other"));
        assert_eq!(service(&t, "other.local", "/"), None);
        assert_eq!(service(&t, "nowhere", "/"), None);
    }

    #[test]
    fn first_duplicate_wins() {
        let t = compile(vec![
            entry("a", "/x", "first", 1),
            entry("a", "/x/", "second", 1),
        ]);
        assert_eq!(service(&t, "a", "/x"), Some("first"));
    }

    #[test]
    fn limits_cover_every_route_of_the_service() {
        let limits = Limits {
            concurrency: 2,
            queue: 1,
            queue_timeout_ms: 10,
        };
        let mut limited = entry("a", "/b", "s", 1);
        limited.limits = Some(limits);
        let mut other = entry("a", "/c", "s", 1);
        other.limits = Some(Limits {
            concurrency: 9,
            ..limits
        });
        // Found by the fuzz target: a route listed before the first one with limits escaped
        // them.
        let t = compile(vec![
            entry("a", "/a", "s", 1),
            limited,
            other,
            entry("b", "/", "s", 1),
            entry("b", "/x", "free", 1),
        ]);
        let limiter = |path: &str| t.lookup("a", path).expect("route").limiter.clone();
        let first = limiter("/b").expect("limited");
        assert_eq!(first.limits, limits);
        for shared in [
            limiter("/a"),
            limiter("/c"),
            t.lookup("b", "/").expect("route").limiter.clone(),
        ] {
            assert!(Arc::ptr_eq(&shared.expect("limited"), &first));
        }
        assert!(t.lookup("b", "/x").expect("route").limiter.is_none());
    }

    fn port(t: &CompiledTable, avoid: Option<usize>) -> u16 {
        let route = t.lookup("a", "/").expect("route");
        let i = route.pick(avoid, now_nanos()).expect("endpoint");
        route.endpoints[i].endpoint.addr.port()
    }

    #[test]
    fn idle_endpoints_rotate_and_the_rotation_survives_recompiles() {
        let t = compile(vec![entry("a", "/", "s", 3)]);
        let picks: Vec<u16> = (0..6).map(|_| port(&t, None)).collect();
        assert_eq!(picks, [9000, 9001, 9002, 9000, 9001, 9002]);
        let t2 = CompiledTable::compile(t.source.clone(), &t, &mut Registry::default());
        assert_eq!(port(&t2, None), 9000, "position carried over: 6 % 3 == 0");
        assert_eq!(port(&t2, None), 9001);
    }

    #[test]
    fn the_least_loaded_endpoint_wins_and_ejected_ones_are_skipped() {
        let t = compile(vec![entry("a", "/", "s", 3)]);
        let route = t.lookup("a", "/").expect("route");
        route.endpoints[0]
            .upstream
            .outstanding
            .store(2, Ordering::Relaxed);
        route.endpoints[1]
            .upstream
            .outstanding
            .store(1, Ordering::Relaxed);
        route.endpoints[2]
            .upstream
            .outstanding
            .store(3, Ordering::Relaxed);
        for _ in 0..4 {
            assert_eq!(port(&t, None), 9001);
        }
        assert_eq!(
            port(&t, Some(1)),
            9000,
            "a retry avoids the endpoint that failed"
        );
        route.endpoints[1].upstream.failed();
        assert_eq!(port(&t, None), 9000, "ejected");
        route.endpoints[0].upstream.failed();
        route.endpoints[2].upstream.failed();
        assert_eq!(port(&t, None), 9001, "all ejected: least loaded anyway");
    }

    #[test]
    fn weights_split_between_releases() {
        let mut e = entry("a", "/", "s", 4);
        for (i, ep) in e.endpoints.iter_mut().enumerate() {
            // Three stable instances at 30 each, one canary at 10.
            ep.release = if i == 3 { 2 } else { 1 };
            ep.weight = if i == 3 { 10 } else { 30 };
        }
        let t = compile(vec![e]);
        let canary = (0..20_000).filter(|_| port(&t, None) == 9003).count();
        assert!((1_700..2_300).contains(&canary), "{canary} of 20000");
    }

    #[test]
    fn empty_route_picks_nothing() {
        let t = compile(vec![entry("a", "/", "s", 0)]);
        assert!(t
            .lookup("a", "/x")
            .expect("route")
            .pick(None, now_nanos())
            .is_none());
    }

    proptest::proptest! {
        /// Lookup and pick never panic, whatever the table and the request's host and path
        /// (the fuzz target's job, done as a property test inside the crate).
        #[test]
        fn lookup_and_pick_never_panic(
            routes in proptest::collection::vec(
                ("[a-zA-Z0-9.:\\[\\]-]{0,12}", "[/a-z%.]{0,10}", 0u16..4, 0u32..200, 0u64..3),
                0..8,
            ),
            host in "\\PC{0,24}",
            path in "\\PC{0,24}",
        ) {
            let entries = routes
                .into_iter()
                .map(|(host, prefix, n, weight, release)| {
                    let mut e = entry(&host, &prefix, "s", n);
                    for ep in &mut e.endpoints {
                        ep.weight = weight;
                        ep.release = release + u64::from(ep.addr.port() % 2);
                    }
                    e
                })
                .collect();
            let t = compile(entries);
            if let Some(route) = t.lookup(&normalize_host(&host), &path) {
                for avoid in [None, Some(0), Some(7)] {
                    if let Some(i) = route.pick(avoid, now_nanos()) {
                        proptest::prop_assert!(i < route.endpoints.len());
                    }
                }
            }
        }
    }
}
