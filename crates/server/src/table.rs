//! The routing table, and how the server knows routers have let go of an instance.
//!
//! An instance leaves the table the moment the server wants it drained. Each router long-polls
//! with the version of the table it has applied; the server remembers which instances each
//! recent version held. An instance is *released* once no live router's applied table holds it,
//! and only then is it stopped — the race that makes naive orchestrators drop requests during a
//! deploy (the process stops before the proxies stop sending to it) cannot happen.

use std::collections::{BTreeSet, VecDeque};

use berth_api::control::{EndpointView, LimitsView, MaintenanceView, RouteView, RoutingTable};
use berth_api::InstanceState;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::{Desired, Snapshot};
use crate::Shared;

/// A router that has not polled for this long is not waited for.
pub const ROUTER_LIVENESS_MS: u64 = 35_000;
/// A node that has not been heard from for this long is down.
pub const NODE_TTL_MS: u64 = 3_000;
/// How many table versions are remembered for acknowledgements.
const REMEMBERED_TABLES: usize = 64;

/// What one router has applied.
#[derive(Debug, Clone)]
pub struct RouterAck {
    pub version: String,
    pub at_ms: u64,
    /// The instances in that table; `None` if the version is too old to be remembered (then the
    /// router is assumed to hold anything, until it acknowledges a newer table).
    pub instances: Option<BTreeSet<String>>,
}

/// Recently served tables: version → instances they contain.
#[derive(Debug, Default)]
pub struct RecentTables(VecDeque<(String, BTreeSet<String>)>);

impl RecentTables {
    fn remember(&mut self, version: &str, instances: BTreeSet<String>) {
        if self.0.iter().any(|(v, _)| v == version) {
            return;
        }
        if self.0.len() >= REMEMBERED_TABLES {
            self.0.pop_front();
        }
        self.0.push_back((version.to_string(), instances));
    }

    fn get(&self, version: &str) -> Option<&BTreeSet<String>> {
        self.0.iter().find(|(v, _)| v == version).map(|(_, s)| s)
    }
}

/// A short content hash: equal content, equal version, whoever computes it and whenever.
pub fn content_version<T: Serialize>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..8])
}

/// Whether a node has been heard from within the TTL. A node not heard from since this server
/// started is given one TTL from the start to call in: liveness is kept in memory, and a
/// restarted server must not take every node for down (and replace all their instances).
pub fn node_is_up(shared: &Shared, node: &str, now_ms: u64) -> bool {
    let last = shared
        .heartbeats
        .lock()
        .ok()
        .and_then(|h| h.get(node).copied());
    now_ms.saturating_sub(last.unwrap_or(shared.started_ms)) <= NODE_TTL_MS
}

/// Builds the table from the live releases' routes and the healthy, running instances.
pub async fn build(shared: &Shared, snapshot: &Snapshot) -> Result<RoutingTable, ApiError> {
    let mut routes = Vec::new();
    let maintenance = maintenance_modes(shared).await?;
    for ((stack, env), rollout) in &snapshot.rollouts {
        let Some(release) =
            crate::state::release(shared.store.as_ref(), stack, env, rollout.value.to).await?
        else {
            continue;
        };
        for (name, service) in &release.value.spec.services {
            let Some(route) = &service.route else {
                continue;
            };
            let mut endpoints: Vec<EndpointView> = snapshot
                .instances
                .values()
                .map(|r| &r.value)
                .filter(|r| r.spec.stack == *stack && r.env == *env && r.spec.service == *name)
                .filter(|r| r.desired == Desired::Run && r.state() == InstanceState::Healthy)
                .filter_map(|r| {
                    let port = r.status.as_ref()?.ports.get(&route.port)?;
                    let node = snapshot.nodes.get(&r.spec.node)?;
                    Some(EndpointView {
                        addr: format!("{}:{port}", node.value.registration.address),
                        instance: r.spec.id.clone(),
                        release: r.spec.release,
                        weight: 100,
                    })
                })
                .collect();
            endpoints.sort_by(|a, b| a.instance.cmp(&b.instance));
            routes.push(RouteView {
                host: route.host.clone(),
                path: route.path.clone(),
                stack: stack.clone(),
                service: name.clone(),
                endpoints,
                limits: route.limits.as_ref().map(|l| LimitsView {
                    concurrency: l.concurrency,
                    queue: l.queue,
                    queue_timeout_ms: l.queue_timeout.millis,
                }),
                maintenance: maintenance.get(&(stack.clone(), name.clone())).cloned(),
                timeout_ms: route.timeout.map(|t| t.millis),
            });
        }
    }
    routes.sort_by(|a, b| {
        (&a.host, &a.path, &a.stack, &a.service).cmp(&(&b.host, &b.path, &b.stack, &b.service))
    });
    let version = content_version(&routes);
    let instances = routes
        .iter()
        .flat_map(|r| r.endpoints.iter().map(|e| e.instance.clone()))
        .collect();
    if let Ok(mut t) = shared.tables.lock() {
        t.remember(&version, instances);
    }
    Ok(RoutingTable { version, routes })
}

/// Services in maintenance: (stack, service) → the page routers answer with.
pub async fn maintenance_modes(
    shared: &Shared,
) -> Result<std::collections::BTreeMap<(String, String), MaintenanceView>, ApiError> {
    let mut out = std::collections::BTreeMap::new();
    for kv in shared.store.range(crate::keys::MAINTENANCE).await?.kvs {
        let rest = kv.key.trim_start_matches(crate::keys::MAINTENANCE);
        if let Some((stack, service)) = rest.split_once('/') {
            let view: MaintenanceView = crate::state::decode(&kv.key, &kv.value)?;
            out.insert((stack.to_string(), service.to_string()), view);
        }
    }
    Ok(out)
}

/// Records that `router` has applied the table `version`.
pub fn record_ack(shared: &Shared, router: &str, version: &str) {
    let instances = shared
        .tables
        .lock()
        .ok()
        .and_then(|t| t.get(version).cloned());
    let ack = RouterAck {
        version: version.to_string(),
        at_ms: shared.clock.now_ms(),
        instances,
    };
    if let Ok(mut acks) = shared.router_acks.lock() {
        acks.insert(router.to_string(), ack);
    }
}

/// Whether every live router has applied a table without this instance.
pub fn released_by_routers(shared: &Shared, instance: &str, now_ms: u64) -> bool {
    let Ok(acks) = shared.router_acks.lock() else {
        return false;
    };
    acks.values()
        .filter(|a| now_ms.saturating_sub(a.at_ms) <= ROUTER_LIVENESS_MS)
        .all(|a| {
            a.instances
                .as_ref()
                .is_some_and(|set| !set.contains(instance))
        })
}

/// Keeps [`Shared::revision`] at the store's latest revision, so long-polls wake on any change.
pub async fn follow_revisions(
    shared: std::sync::Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use futures::StreamExt;
    loop {
        let from = match shared.store.revision().await {
            Ok(r) => r + 1,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the store revision; retrying");
                if wait_or_stop(&mut stop, 500).await {
                    return;
                }
                continue;
            }
        };
        let _ = shared.revision.send(from - 1);
        let mut stream = match shared.store.watch("/", from).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the store; retrying");
                if wait_or_stop(&mut stop, 500).await {
                    return;
                }
                continue;
            }
        };
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                item = stream.next() => match item {
                    Some(Ok(event)) => { let _ = shared.revision.send(event.revision); }
                    Some(Err(e)) => { tracing::warn!(error = %e, "store watch ended; re-watching"); break; }
                    None => break,
                }
            }
        }
    }
}

/// Waits `ms` or until stop; true if stopping.
async fn wait_or_stop(stop: &mut tokio::sync::watch::Receiver<bool>, ms: u64) -> bool {
    tokio::select! {
        _ = stop.changed() => true,
        _ = tokio::time::sleep(std::time::Duration::from_millis(ms)) => *stop.borrow(),
    }
}
