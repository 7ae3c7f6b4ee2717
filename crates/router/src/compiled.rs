//! The compiled form of a [`RouteTable`]: what the hot path reads.
//!
//! Compiling normalises hosts and prefixes once, groups routes by host and sorts each group
//! longest prefix first, so a lookup is one hash probe plus a short scan that stops at the first
//! match. A compiled table is immutable; [`crate::RouterHandle`] swaps whole tables with
//! `arc-swap`, so readers never take a lock and never see a half-updated table.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::uri::Authority;

use crate::stats::Counters;
use crate::table::{Endpoint, RouteTable};

/// A routing table ready for lookups.
#[derive(Debug, Default)]
pub(crate) struct CompiledTable {
    /// The table this was compiled from, kept so the shell can read back what is live.
    pub(crate) source: Arc<RouteTable>,
    /// Normalised host → routes, longest prefix first.
    hosts: HashMap<String, Vec<Arc<Route>>>,
}

/// One route, with everything the proxy needs precomputed.
#[derive(Debug)]
pub(crate) struct Route {
    /// Normalised prefix: starts with `/`, no trailing `/`; empty for the root (matches all).
    prefix: String,
    pub(crate) service: Arc<str>,
    pub(crate) endpoints: Box<[Target]>,
    /// Round-robin position. Shared with the same (host, prefix) route of the previous table so
    /// frequent updates don't keep sending the first request after each one to endpoint 0.
    next: Arc<AtomicUsize>,
    /// The service's counters; shared by every route of the service and across tables.
    pub(crate) counters: Arc<Counters>,
}

/// An endpoint with its URI authority pre-rendered (no formatting per request).
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) endpoint: Endpoint,
    pub(crate) authority: Authority,
}

impl Route {
    /// Picks the next endpoint round-robin, or `None` when the route has no endpoints.
    pub(crate) fn pick(&self) -> Option<&Target> {
        if self.endpoints.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.endpoints.get(i % self.endpoints.len())
    }

    fn matches(&self, path: &str) -> bool {
        prefix_matches(&self.prefix, path)
    }
}

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
    /// Compiles `source`. `previous` lends its round-robin positions; `counters_for` returns the
    /// (long-lived) counters of a service.
    pub(crate) fn compile(
        source: Arc<RouteTable>,
        previous: &CompiledTable,
        mut counters_for: impl FnMut(&str) -> Arc<Counters>,
    ) -> CompiledTable {
        let mut hosts: HashMap<String, Vec<Arc<Route>>> = HashMap::new();
        for entry in &source.routes {
            let host = normalize_host(&entry.host).into_owned();
            let prefix = normalize_prefix(&entry.path_prefix);
            let routes = hosts.entry(host.clone()).or_default();
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
            let endpoints = entry
                .endpoints
                .iter()
                .filter_map(|e| match Authority::try_from(e.addr.to_string()) {
                    Ok(authority) => Some(Target {
                        endpoint: e.clone(),
                        authority,
                    }),
                    // A SocketAddr always renders as a valid authority; skip rather than panic.
                    Err(err) => {
                        tracing::warn!(addr = %e.addr, %err, "endpoint address skipped");
                        None
                    }
                })
                .collect();
            routes.push(Arc::new(Route {
                prefix,
                service: Arc::from(entry.service.as_str()),
                endpoints,
                next,
                counters: counters_for(&entry.service),
            }));
        }
        for routes in hosts.values_mut() {
            routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        }
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
                })
                .collect(),
        }
    }

    fn compile(routes: Vec<RouteEntry>) -> CompiledTable {
        CompiledTable::compile(
            Arc::new(RouteTable { routes }),
            &CompiledTable::default(),
            |_| Arc::default(),
        )
    }

    fn service<'a>(t: &'a CompiledTable, host: &str, path: &str) -> Option<&'a str> {
        t.lookup(&normalize_host(host), path)
            .map(|r| r.service.as_ref())
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
    fn round_robin_cycles_and_survives_recompiles() {
        let t = compile(vec![entry("a", "/", "s", 3)]);
        let picks: Vec<u16> = (0..6)
            .map(|_| {
                t.lookup("a", "/")
                    .and_then(|r| r.pick())
                    .map(|e| e.endpoint.addr.port())
                    .expect("endpoint")
            })
            .collect();
        assert_eq!(picks, [9000, 9001, 9002, 9000, 9001, 9002]);
        let t2 = CompiledTable::compile(t.source.clone(), &t, |_| Arc::default());
        let port = t2
            .lookup("a", "/")
            .and_then(|r| r.pick())
            .map(|e| e.authority.port_u16());
        assert_eq!(port, Some(Some(9000)), "position carried over: 6 % 3 == 0");
        let port = t2
            .lookup("a", "/")
            .and_then(|r| r.pick())
            .map(|e| e.authority.port_u16());
        assert_eq!(port, Some(Some(9001)));
    }

    #[test]
    fn empty_route_picks_nothing() {
        let t = compile(vec![entry("a", "/", "s", 0)]);
        assert!(t.lookup("a", "/x").expect("route").pick().is_none());
    }
}
