//! Keeping a router's table in step with the server: long-poll `/v1/routes`, apply, repeat.
//!
//! This is the shell that replaces "etcd + confd + HAProxy reload": the router asks the server
//! for the routing table, passing the version it has *applied*, and the server answers as soon
//! as the table differs. Sending the applied version back is the router's acknowledgement, which
//! lets the server's drain logic know that no router still sends traffic to an instance.
//!
//! Static stability: when the server is unreachable or failing, the router keeps routing by the
//! last table it applied, however long the outage lasts, and retries with capped exponential
//! backoff. Only an answer from the server changes the table, an empty one included.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::time::Duration;

use berth_api::control::{
    ArmCounters, EndpointView, RoutingTable, StickyView, TrafficReport, MAX_REPORT_COUNTERS,
};
use berth_client::{Client, ClientError};
use tokio::sync::watch;

use crate::table::{MatchRule, Share, Split, Sticky};
use crate::{Endpoint, Limits, Maintenance, RouteEntry, RouteTable, RouterHandle};

/// How long each long-poll asks the server to hold: the server's own cap (25 s), so an idle
/// router makes about two requests a minute.
pub const POLL_WAIT: Duration = Duration::from_secs(25);

/// The first retry delay after a failure; it doubles on each further failure.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);

/// The longest retry delay, so a router notices a recovered server within seconds while a
/// fleet of routers does not hammer one that is struggling.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The shortest time between two polls that return the table already applied. A real server
/// holds such a poll for [`POLL_WAIT`]; one that answers at once (an older server, a proxy
/// dropping the query) would otherwise be polled in a busy loop.
const MIN_UNCHANGED_INTERVAL: Duration = Duration::from_millis(500);

/// Follows the server's routing table into `handle` until `shutdown` completes.
///
/// Each long-poll carries `router_id` (stable across restarts of this router, e.g. the node
/// name) and the version last applied, so the server knows which table this router serves.
/// Every new table is converted with [`to_route_table`] and applied with
/// [`RouterHandle::update`]. Errors never touch the table: the router keeps serving what it
/// has and retries after 100 ms, doubling up to 5 s (with jitter, so routers that lost the
/// server together do not come back in lockstep). The first failure of an outage is logged
/// as a warning, the rest at debug, and the recovery at info.
///
/// Spawn it next to [`crate::serve`] with the same handle; it returns only on shutdown.
pub async fn follow_server(
    client: Client,
    router_id: String,
    handle: RouterHandle,
    shutdown: impl Future<Output = ()>,
) {
    let (_fixed, clients) = watch::channel(client);
    follow_server_with(clients, router_id, handle, shutdown).await;
}

/// [`follow_server`] with a credential that may change while it runs: every poll uses the
/// newest client on `clients`, and a poll in progress is abandoned for a new one when it
/// changes.
///
/// Why: an agent's router keeps serving across the agent's re-registration (an agent that
/// takes over from its predecessor starts its router with the old node token, then registers,
/// which revokes that token). Switching the client keeps the router following the server
/// without stopping it.
pub async fn follow_server_with(
    mut clients: watch::Receiver<Client>,
    router_id: String,
    handle: RouterHandle,
    shutdown: impl Future<Output = ()>,
) {
    let report_clients = clients.clone();
    let router_id_for_reports = router_id.clone();
    let report_handle = handle.clone();
    let follow = async {
        let mut applied: Option<String> = None;
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let mut failures: u32 = 0;
        // Once every sender is gone the client in hand is the last one: stop watching.
        let mut may_change = true;
        loop {
            let started = crate::clock::tokio_now();
            let client = clients.borrow_and_update().clone();
            let poll = client.routes(Some(&router_id), applied.as_deref(), POLL_WAIT);
            let changed = async {
                if may_change {
                    clients.changed().await.is_ok()
                } else {
                    std::future::pending().await
                }
            };
            let answer = tokio::select! {
                answer = poll => answer,
                still_open = changed => {
                    may_change = still_open;
                    continue;
                }
            };
            match answer {
                Ok(table) => {
                    if failures > 0 {
                        tracing::info!(
                            server = client.base_url(),
                            failures,
                            "reached the server again"
                        );
                        failures = 0;
                    }
                    backoff.reset();
                    if applied.as_deref() == Some(table.version.as_str()) {
                        // Nothing changed within the wait; guard against servers that do not wait.
                        tokio::time::sleep_until(started + MIN_UNCHANGED_INTERVAL).await;
                        continue;
                    }
                    let routes = to_route_table(&table);
                    tracing::debug!(version = %table.version, routes = routes.routes.len(), "applying routing table");
                    handle.update(routes);
                    applied = Some(table.version);
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    let delay = backoff.next_delay();
                    log_failure(&err, failures, delay, client.base_url());
                    tokio::time::sleep(delay).await;
                }
            }
        }
    };
    let report = report_traffic(report_clients, &router_id_for_reports, &report_handle);
    tokio::select! {
        _ = async { tokio::join!(follow, report) } => {}
        () = shutdown => {}
    }
}

/// How often a router with new traffic reports its counters to the server.
pub const REPORT_EVERY: Duration = Duration::from_millis(500);

/// How long one traffic report may take before it is abandoned (the next one carries the
/// same counts and more: they are cumulative).
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends `handle`'s per-arm counters to the server every [`REPORT_EVERY`] while they change
/// (an idle router sends nothing), as router `router_id`. Failures are logged (a warning for
/// the first of a run, then debug) and never retried on their own: the next report, cumulative,
/// carries everything. A report is capped at [`MAX_REPORT_COUNTERS`] arms.
async fn report_traffic(clients: watch::Receiver<Client>, router_id: &str, handle: &RouterHandle) {
    let started_ms = crate::clock::unix_ms();
    let mut delivered: Option<Vec<ArmCounters>> = None;
    let mut failures: u32 = 0;
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut counters = handle.arm_counters();
        let nothing_counted = || counters.iter().all(|c| c.requests == 0 && c.matched == 0);
        if delivered.as_ref() == Some(&counters) || (delivered.is_none() && nothing_counted()) {
            continue;
        }
        if counters.len() > MAX_REPORT_COUNTERS {
            tracing::warn!(
                arms = counters.len(),
                kept = MAX_REPORT_COUNTERS,
                "more arms than a traffic report carries: reporting the first ones only"
            );
            counters.truncate(MAX_REPORT_COUNTERS);
        }
        let report = TrafficReport {
            at_ms: crate::clock::unix_ms(),
            counters,
            started_ms,
        };
        let client = clients.borrow().clone();
        let sent = tokio::time::timeout(REPORT_TIMEOUT, client.traffic_report(router_id, &report));
        match sent.await {
            Ok(Ok(())) => {
                if failures > 0 {
                    tracing::info!(failures, "traffic reports reach the server again");
                    failures = 0;
                }
                delivered = Some(report.counters);
            }
            Ok(Err(err)) => {
                failures = failures.saturating_add(1);
                if failures == 1 {
                    tracing::warn!(%err, server = client.base_url(), "cannot report traffic counters to the server; the canary analysis sees no traffic from this router until it can");
                } else {
                    tracing::debug!(%err, failures, "traffic report failed again");
                }
            }
            Err(_) => {
                failures = failures.saturating_add(1);
                let after_ms = REPORT_TIMEOUT.as_millis() as u64;
                if failures == 1 {
                    tracing::warn!(
                        after_ms,
                        server = client.base_url(),
                        "a traffic report timed out; the next one carries its counts"
                    );
                } else {
                    tracing::debug!(after_ms, failures, "traffic report timed out again");
                }
            }
        }
    }
}

/// Fetches the server's current routing table once and applies it to `handle`; returns its
/// version.
///
/// Why: a router that shares its port with a running one (`SO_REUSEPORT`, an agent taking
/// over from its predecessor) receives connections the moment it listens, so it must route
/// from its first request: the shell calls this before binding, then [`follow_server`].
pub async fn apply_current(
    client: &Client,
    router_id: &str,
    handle: &RouterHandle,
) -> Result<String, ClientError> {
    let table = client.routes(Some(router_id), None, Duration::ZERO).await?;
    handle.update(to_route_table(&table));
    Ok(table.version)
}

fn log_failure(err: &ClientError, failures: u32, delay: Duration, server: &str) {
    let delay_ms = delay.as_millis() as u64;
    if failures == 1 {
        if err.is_transient() {
            tracing::warn!(%err, delay_ms, "cannot update the routing table; keeping the last one");
        } else {
            // A refused token or a decoding error will not heal by itself: say so loudly.
            tracing::error!(%err, server, delay_ms, "the server rejected the routing-table poll; keeping the last table");
        }
    } else {
        tracing::debug!(%err, failures, delay_ms, "routing-table poll failed again");
    }
}

/// Converts the server's routing table into the router's own.
///
/// A route's service is named `STACK/SERVICE` (just `SERVICE` when the stack is empty), so two
/// stacks with a `web` service keep separate counters and error bodies say which one is meant.
/// Endpoint addresses must be `IP:PORT`; any other is skipped with a warning, since one bad
/// address must not keep the rest of the table from being applied. A route left with no
/// endpoints is kept: requests to it get 503 rather than 404.
pub fn to_route_table(table: &RoutingTable) -> RouteTable {
    let routes = table
        .routes
        .iter()
        .map(|route| {
            let service = if route.stack.is_empty() {
                route.service.clone()
            } else {
                format!("{}/{}", route.stack, route.service)
            };
            let endpoints = parse_endpoints(&route.endpoints, &service, &table.version);
            let split = route.split.as_ref().map(|split| Split {
                service: if route.stack.is_empty() {
                    split.service.clone()
                } else {
                    format!("{}/{}", route.stack, split.service)
                },
                basis_points: split.basis_points,
                sticky: sticky(&split.sticky),
                endpoints: parse_endpoints(&split.endpoints, &service, &table.version),
            });
            RouteEntry {
                host: route.host.clone(),
                path_prefix: route.path.clone(),
                service,
                endpoints,
                limits: route.limits.map(|l| Limits {
                    concurrency: l.concurrency,
                    queue: l.queue,
                    queue_timeout_ms: l.queue_timeout_ms,
                }),
                maintenance: route.maintenance.as_ref().map(|m| Maintenance {
                    page_html: m.page_html.clone(),
                }),
                timeout_ms: route.timeout_ms,
                shares: route
                    .shares
                    .iter()
                    .map(|s| Share {
                        release: s.release,
                        basis_points: s.basis_points,
                    })
                    .collect(),
                salt: route.salt.clone(),
                sticky: sticky(&route.sticky),
                matched: route.matched.as_ref().map(|m| MatchRule {
                    header: m.header.clone(),
                    value: m.value.clone(),
                    release: m.release,
                }),
                split,
            }
        })
        .collect();
    RouteTable { routes }
}

/// The endpoints whose address is `IP:PORT`; the others are skipped with a warning.
fn parse_endpoints(views: &[EndpointView], service: &str, version: &str) -> Vec<Endpoint> {
    views
        .iter()
        .filter_map(|endpoint| match endpoint.addr.parse::<SocketAddr>() {
            Ok(addr) => Some(Endpoint {
                addr,
                instance: endpoint.instance.clone(),
                release: endpoint.release,
                weight: endpoint.weight,
            }),
            Err(err) => {
                tracing::warn!(
                    addr = %endpoint.addr,
                    instance = %endpoint.instance,
                    service = %service,
                    version = %version,
                    %err,
                    "skipping an endpoint whose address is not IP:PORT"
                );
                None
            }
        })
        .collect()
}

fn sticky(view: &StickyView) -> Sticky {
    match view {
        StickyView::Cookie => Sticky::Cookie,
        StickyView::Header { name } => Sticky::Header { name: name.clone() },
        StickyView::None => Sticky::None,
    }
}

/// Capped exponential backoff with jitter: each delay is drawn from the upper half of the
/// current step, and the step doubles from `min` to `max`.
#[derive(Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
    random: RandomState,
    draws: u64,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            step: min,
            random: RandomState::new(),
            draws: 0,
        }
    }

    fn reset(&mut self) {
        self.step = self.min;
    }

    fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let mut hasher = self.random.build_hasher();
        hasher.write_u64(self.draws);
        self.draws = self.draws.wrapping_add(1);
        let half = step / 2;
        let spread = half.as_nanos().max(1) as u64;
        half + Duration::from_nanos(hasher.finish() % spread)
    }
}

#[cfg(test)]
mod tests {
    use berth_api::control::{LimitsView, MaintenanceView, RouteView};

    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let steps: Vec<Duration> = (0..10).map(|_| backoff.next_delay()).collect();
        let mut step = BACKOFF_MIN;
        for delay in &steps {
            assert!(
                *delay >= step / 2 && *delay <= step,
                "{delay:?} for step {step:?}"
            );
            step = (step * 2).min(BACKOFF_MAX);
        }
        assert!(steps[9] >= BACKOFF_MAX / 2);
        backoff.reset();
        assert!(backoff.next_delay() <= BACKOFF_MIN);
    }

    #[test]
    fn tables_convert_and_bad_addresses_are_skipped() {
        let table = RoutingTable {
            version: "v1".into(),
            routes: vec![RouteView {
                host: "shop.local".into(),
                path: "/".into(),
                stack: "shop".into(),
                service: "web".into(),
                endpoints: vec![
                    EndpointView {
                        addr: "127.0.0.1:4242".into(),
                        instance: "web-1".into(),
                        release: 3,
                        weight: 100,
                    },
                    EndpointView {
                        addr: "node-a:4243".into(),
                        instance: "web-2".into(),
                        release: 3,
                        weight: 100,
                    },
                    EndpointView {
                        addr: "[::1]:4244".into(),
                        instance: "web-3".into(),
                        release: 3,
                        weight: 100,
                    },
                ],
                limits: Some(LimitsView {
                    concurrency: 8,
                    queue: 16,
                    queue_timeout_ms: 250,
                }),
                maintenance: Some(MaintenanceView { page_html: None }),
                timeout_ms: Some(30_000),
                ..RouteView::default()
            }],
        };
        let routes = to_route_table(&table);
        assert_eq!(routes.routes.len(), 1);
        let route = &routes.routes[0];
        assert_eq!(
            (
                route.host.as_str(),
                route.path_prefix.as_str(),
                route.service.as_str()
            ),
            ("shop.local", "/", "shop/web")
        );
        let instances: Vec<&str> = route
            .endpoints
            .iter()
            .map(|e| e.instance.as_str())
            .collect();
        assert_eq!(instances, ["web-1", "web-3"]);
        assert_eq!(
            route.timeout_ms,
            Some(30_000),
            "route.timeout reaches the router"
        );
        assert_eq!(
            route.limits,
            Some(Limits {
                concurrency: 8,
                queue: 16,
                queue_timeout_ms: 250
            })
        );
        assert_eq!(route.maintenance, Some(Maintenance { page_html: None }));
    }

    /// A router reports only when its counters moved: nothing while idle, one report with
    /// the counts (and its start time) once answers are counted, nothing more until more are.
    #[tokio::test]
    async fn traffic_is_reported_only_when_it_changes() {
        use axum::extract::Path;
        use axum::routing::post;

        let (tx, mut reports) = tokio::sync::mpsc::unbounded_channel::<(String, TrafficReport)>();
        let app = axum::Router::new().route(
            "/v1/routers/{id}/traffic",
            post(
                move |Path(id): Path<String>, axum::Json(report): axum::Json<TrafficReport>| {
                    let tx = tx.clone();
                    async move {
                        let _ = tx.send((id, report));
                        axum::Json(serde_json::json!({}))
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let handle = RouterHandle::new();
        handle.update(RouteTable {
            routes: vec![RouteEntry {
                host: "a".into(),
                path_prefix: "/".into(),
                service: "shop/web".into(),
                endpoints: vec![Endpoint {
                    addr: ([127, 0, 0, 1], 1).into(),
                    instance: "i".into(),
                    release: 4,
                    weight: 100,
                }],
                ..RouteEntry::default()
            }],
        });
        let client = Client::new(&format!("http://{addr}"), Some("t".into())).expect("client");
        let (_keep, clients) = watch::channel(client);
        let reporting = handle.clone();
        let reporter = tokio::spawn(async move {
            report_traffic(clients, "agent-n1", &reporting).await;
        });
        let quiet = Duration::from_millis(1_200);
        assert!(
            tokio::time::timeout(quiet, reports.recv()).await.is_err(),
            "an idle router reported"
        );
        let count = |n: usize| {
            let table = handle.shared.table.load();
            let route = table.lookup("a", "/").expect("route");
            for _ in 0..n {
                route.endpoints[0].arm.record(
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    Duration::from_millis(3),
                    false,
                );
            }
        };
        count(3);
        let (id, report) = tokio::time::timeout(Duration::from_secs(10), reports.recv())
            .await
            .expect("a report")
            .expect("open");
        assert_eq!(id, "agent-n1");
        assert!(report.started_ms > 0);
        let arm = &report.counters[0];
        assert_eq!(
            (
                arm.stack.as_str(),
                arm.service.as_str(),
                arm.release,
                arm.arm.as_str()
            ),
            ("shop", "web", 4, "release")
        );
        assert_eq!((arm.requests, arm.errors_5xx, arm.matched), (3, 3, 0));
        assert_eq!(
            arm.latency_ms_buckets.len(),
            berth_api::control::LATENCY_SLOTS
        );
        assert!(
            tokio::time::timeout(quiet, reports.recv()).await.is_err(),
            "a report with nothing new"
        );
        count(1);
        let (_, report) = tokio::time::timeout(Duration::from_secs(10), reports.recv())
            .await
            .expect("a second report")
            .expect("open");
        assert_eq!(report.counters[0].requests, 4, "cumulative");
        reporter.abort();
        server.abort();
    }
}
