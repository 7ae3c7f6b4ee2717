//! berth-router: the HTTP reverse proxy that runs in every agent (and alone at the edge).
//!
//! It is berth's answer to "etcd + confd rewriting HAProxy + a reload": the shell hands the
//! router a complete [`RouteTable`] whenever the registry's endpoints change, and the very next
//! request — on any connection, new or kept alive — is routed by the new table. No reload, no
//! restart, no lock on the routing path.
//!
//! # Map
//! - [`table`] — the input: [`RouteTable`] → [`RouteEntry`] (with optional [`Limits`] and
//!   [`Maintenance`]) → [`Endpoint`] (with a weight), plain serde data.
//! - [`RouterHandle`] — the live state: the compiled table (swapped atomically with
//!   `arc-swap`), per-service and per-instance state. Cheap to clone; the shell keeps one to
//!   [`update`](RouterHandle::update) or [`follow`](RouterHandle::follow) a `watch` channel, and
//!   reads [`stats`](RouterHandle::stats) or [`metrics_text`](RouterHandle::metrics_text).
//! - [`serve`] / [`serve_with`] — the accept loop: HTTP/1.1 and h2c on one listener, optional
//!   TLS and `/metrics` listeners and access log ([`RouterConfig`]), graceful shutdown.
//! - [`tls`] — TLS termination: [`TlsConfig`] (certificates per host, by SNI) loaded into a
//!   [`TlsListener`] for [`RouterConfig::tls`].
//! - [`bind_reuseport`] — `SO_REUSEPORT` listeners, one per core; [`bind_reuseport_takeover`]
//!   for restarts: the new router binds before the old one stops and gets every new connection;
//!   [`bind_per_core_takeover`] both at once (one listener per core that takes over, then
//!   [`Steering::release_when_alone`] spreads connections over the cores again): what
//!   `berth agent --router` and `berth router` use.
//! - [`follow`] — the shell that feeds a handle from `berth server`.
//! - [`error`] — why an attempt failed, whose fault, whether a retry is safe.
//! - `compiled` (private) — host → routes longest prefix first; release groups and balancing.
//! - `upstream` (private) — one instance: its keep-alive pool, load, ejection.
//! - `service` (private) — per-service counters, histogram, retry budget, overload limiter.
//! - `proxy` (private) — one request: admit, rewrite headers, forward, retry once, stream.
//! - `metrics` (private) — the Prometheus text rendering.
//! - `socket` (private) — the socket calls under the listeners: `SO_REUSEPORT` groups, counting
//!   their listeners, the takeover's steering program (`server` and `per_core` both use it).
//! - `clock` (private) — the only reads of the clock (`clippy.toml` disallows them elsewhere).
//! - `fuzzing` (feature `fuzzing`) — the fuzz target's harness, for `fuzz/` and
//!   `tests/fuzz_corpus.rs`; not in the normal build.
//! - [`stats`] — per-service counters by status class.
//!
//! # Vocabulary
//! - **route** — a (host, path prefix) pair naming a **service** (`STACK/SERVICE` when the
//!   table comes from the server).
//! - **endpoint** — a healthy instance's address; **release group** — a route's endpoints of
//!   one release; weights split traffic between groups, load decides within one.
//! - **outstanding** — requests sent to an endpoint and not finished; balancing picks the
//!   least. **ejected** — an endpoint skipped for a back-off after a connect failure or reset.
//! - **share** — a release group's part of a route in basis points (of 10,000), placing each
//!   client by a sticky key hashed with the route's salt into buckets; the newest release owns
//!   buckets `[0, w)`. **split** — a sticky part of a route's clients sent to another service.
//!   **arm** — what answers are counted by for progressive delivery: a route's release group
//!   (`release`) or its split service; **matched** — requests sent by the match header, counted
//!   apart. Routers report per-arm counters to the server ([`follow`]).
//! - **retry budget** — retries may add at most 20% to a service's requests (plus a reserve).
//! - **stale connection** — a reused keep-alive connection the app had closed as idle; a
//!   request that dies on one never reached the app and is replayed.
//! - **table** / **compiled table** — every route at one moment, replaced whole; its indexed,
//!   immutable form.
//! - **upstream / instance** — where a request is forwarded; **downstream** — the client.
//! - **hop-by-hop header** — a header about one connection (`Connection`, `Keep-Alive`, `TE`,
//!   `Transfer-Encoding`, `Upgrade`, …), removed in both directions (`Upgrade` is kept for a
//!   protocol switch, which is then tunnelled byte for byte).
//!
//! # Answers the router makes itself
//! Requests are routed by the target URI's authority when it has one (an absolute-form target,
//! HTTP/2's `:authority`; RFC 9112 §3.2.2), else by `Host`; instances get that host as `Host`
//! and `X-Forwarded-Host`, and exactly one `X-Request-Id` (the client's first if valid, else a
//! new one). The first seven rows are counted as unrouted (and logged without a service), the
//! rest in the route's service's counters; hyper's own answers (the HTTP/1.1 431, unparsable
//! requests) are neither. CONNECT gets a 405 as from nginx (Envoy, unconfigured, answers 404):
//! the router is no forward proxy and hands no instance a raw tunnel.
//!
//! | when | status | body |
//! | --- | --- | --- |
//! | more than one `Host` header (any version; RFC 9112 §3.2) | 400 | `more than one Host header` |
//! | an HTTP/2 `Host` that differs from `:authority` (RFC 9113 §8.3.1) | 400 | `the Host header differs from :authority` |
//! | an HTTP/2 request with more than 100 header fields (cookie crumbs as one) | 431 | `too many header fields` |
//! | an HTTP/1.1 request with no `Host` and no authority in its target | 400 | `no Host header` |
//! | userinfo (`user@`) in the target's authority (RFC 9110 §4.2.4) | 400 | `userinfo in the request target` |
//! | CONNECT (never forwarded, whatever its host) | 405 + `Allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS` | `CONNECT is not supported: this is a reverse proxy` |
//! | no route for the host and path | 404 | `no route for HOST/PATH` |
//! | the route is in maintenance | 503 + `Retry-After: 120` | the maintenance page (HTML) |
//! | the service's concurrency and queue are full, or the queue wait timed out | 503 + `Retry-After: 1` | `SERVICE is overloaded (…); retry later` |
//! | the route has no endpoints | 503 | `no healthy instance of SERVICE` |
//! | no endpoint could be connected to (after the retry) | 502 | `upstream SERVICE unreachable` |
//! | the exchange failed and could not be retried | 502 | `upstream SERVICE failed` |
//! | the client's body broke off | 400 | the error |
//! | a small body did not arrive within the body timeout (nothing forwarded) | 408 | the error |
//! | no response head within the route's timeout after the whole request | 504 | `upstream SERVICE timed out` |
//! | the instance's answer had both `Content-Length` and `Transfer-Encoding`, or was a `101` to a request without `Upgrade` | 502 | `upstream SERVICE failed` |
//! | more than 100 header fields or a 64 KiB head | 431 | (hyper's) |
//!
//! `X-Forwarded-For`, `-Proto` and `-Host` are kept (and `X-Forwarded-For` appended to) only
//! from [`RouterConfig::trusted_proxies`]; from anyone else they are replaced (see [`trust`]).
//!
//! Not yet: HTTP/2 to instances, certificate reload without a restart, active health checks (the agent does those).

#![warn(missing_docs)]
#![deny(unsafe_code)]

mod clock;
mod compiled;
pub mod error;
pub mod follow;
/// Test support for the fuzz crate and `tests/fuzz_corpus.rs`, outside the normal build.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod metrics;
mod per_core;
mod proxy;
mod server;
mod service;
mod socket;
pub mod stats;
pub mod table;
pub mod tls;
mod trace;
pub mod trust;
mod upstream;

use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use tokio::sync::watch;

pub use per_core::{bind_per_core, bind_per_core_takeover, CoreListeners, Steering};
pub use proxy::{BODY_TIMEOUT, MAX_ATTEMPTS, RESPONSE_TIMEOUT};
pub use server::{
    bind_reuseport, bind_reuseport_takeover, serve, serve_with, RouterConfig, FIRST_REQUEST_GRACE,
};
pub use stats::{RouterStats, StatusClasses};
pub use table::{Endpoint, Limits, Maintenance, RouteEntry, RouteTable};
pub use tls::{TlsConfig, TlsError, TlsListener};
pub use trust::{Cidr, CidrError};

use compiled::{CompiledTable, Registry};
use stats::Counters;

/// The router's live state: what [`serve`] routes by and what the shell updates and reads.
///
/// Clones share the same state, so one clone goes to [`serve`] and another stays with the code
/// that watches the registry. The request path only does an `arc-swap` load; updates compile a
/// new table off the request path and publish it with one atomic store.
#[derive(Clone, Default)]
pub struct RouterHandle {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// The table requests are routed by.
    table: ArcSwap<CompiledTable>,
    /// Per-service state by name and per-instance state by address, outliving the tables that
    /// mention them. The mutex is taken only by updates and snapshots (it also serialises
    /// concurrent updates), never by the request path.
    registry: Mutex<Registry>,
    /// Counters for requests that matched no route.
    unrouted: Counters,
}

impl std::fmt::Debug for RouterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterHandle")
            .field("routes", &self.shared.table.load().source.routes.len())
            .finish()
    }
}

impl RouterHandle {
    /// A router with an empty table: every request gets 404 until the first update.
    pub fn new() -> Self {
        Self::default()
    }

    /// A router that starts with `table`, so it routes from its first request.
    pub fn with_table(table: impl Into<Arc<RouteTable>>) -> Self {
        let handle = Self::new();
        handle.update(table);
        handle
    }

    /// Replaces the routing table; requests that arrive after this returns use the new one.
    ///
    /// Requests already being forwarded finish against the endpoint they were sent to. Round-
    /// robin positions carry over for routes whose host and prefix are unchanged, and counters
    /// are kept per service name. Never fails: hosts and prefixes are normalised, and a second
    /// entry with the same host and prefix is ignored (with a warning) rather than rejected, so
    /// a router always has a usable table.
    pub fn update(&self, table: impl Into<Arc<RouteTable>>) {
        let table = table.into();
        let mut registry = self
            .shared
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let previous = self.shared.table.load();
        let compiled = CompiledTable::compile(table, &previous, &mut registry);
        self.shared.table.store(Arc::new(compiled));
    }

    /// Applies every table sent on `tables`, starting with the current one, until the sender
    /// is dropped; then returns and the router keeps serving the last table (static stability).
    ///
    /// This is how the shell wires the router to the registry: spawn it next to [`serve`].
    pub async fn follow(&self, mut tables: watch::Receiver<Arc<RouteTable>>) {
        loop {
            let table = tables.borrow_and_update().clone();
            self.update(table);
            if tables.changed().await.is_err() {
                return;
            }
        }
    }

    /// The table currently routed by, as it was handed in.
    pub fn table(&self) -> Arc<RouteTable> {
        self.shared.table.load().source.clone()
    }

    /// A snapshot of the request counters: per service and status class, plus unrouted
    /// requests. Feeds the autoscaler and canary analysis (and later `/metrics`).
    pub fn stats(&self) -> RouterStats {
        let registry = self
            .shared
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        RouterStats {
            services: registry
                .services
                .iter()
                .map(|(name, service)| (name.clone(), service.counters.snapshot()))
                .collect(),
            unrouted: self.shared.unrouted.snapshot(),
        }
    }

    /// Every arm's counters, cumulative since this router started: what it reports to the
    /// server (`POST /v1/routers/{id}/traffic`) for the canary analysis and A/B figures. An arm
    /// is a route's release group (`arm: "release"`) or its split service (`arm`: that
    /// service's name); the route's service `STACK/SERVICE` is split into `stack` and
    /// `service` (`stack` empty for a hand-written table without one). Sorted, so two reports
    /// compare equal when nothing was counted in between.
    pub fn arm_counters(&self) -> Vec<berth_api::control::ArmCounters> {
        let registry = self
            .shared
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<_> = registry
            .arms
            .iter()
            .map(|((route, release, arm), stats)| {
                let snapshot = stats.snapshot();
                let (stack, service) = route.split_once('/').unwrap_or(("", route));
                berth_api::control::ArmCounters {
                    stack: stack.to_owned(),
                    service: service.to_owned(),
                    release: *release,
                    arm: arm.clone(),
                    requests: snapshot.requests,
                    errors_5xx: snapshot.errors_5xx,
                    latency_ms_buckets: snapshot.latency_ms_buckets.to_vec(),
                    matched: snapshot.matched,
                }
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.stack, &a.service, a.release, &a.arm)
                .cmp(&(&b.stack, &b.service, b.release, &b.arm))
        });
        out
    }

    /// Every metric in the Prometheus text exposition format (version 0.0.4): what the
    /// optional metrics listener of [`serve_with`] answers on `/metrics`, and what a shell
    /// that already has an HTTP server can serve itself.
    pub fn metrics_text(&self) -> String {
        let registry = self
            .shared
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let upstreams: Vec<_> = registry.upstreams.values().cloned().collect();
        metrics::render(
            &registry.services,
            &registry.arms,
            &upstreams,
            &self.shared.unrouted,
        )
    }
}
