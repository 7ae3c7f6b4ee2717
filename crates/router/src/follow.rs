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

use berth_api::control::RoutingTable;
use berth_client::{Client, ClientError};
use tokio::sync::watch;

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
    tokio::select! {
        () = follow => {}
        () = shutdown => {}
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
            let endpoints = route
                .endpoints
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
                            version = %table.version,
                            %err,
                            "skipping an endpoint whose address is not IP:PORT"
                        );
                        None
                    }
                })
                .collect();
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
            }
        })
        .collect();
    RouteTable { routes }
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
    use berth_api::control::{EndpointView, LimitsView, MaintenanceView, RouteView};

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
}
