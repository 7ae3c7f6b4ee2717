//! The routing table, and how the server knows routers have let go of an instance.
//!
//! An instance leaves the table the moment the server wants it drained. Each router long-polls
//! with the version of the table it has applied; the server remembers which instances each
//! recent version held. An instance is *released* once no live router's applied table holds it,
//! and only then is it stopped — the race that makes naive orchestrators drop requests during a
//! deploy (the process stops before the proxies stop sending to it) cannot happen.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

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
/// How many routers acknowledging with the admin token (edge routers, `berth up`'s) are
/// remembered; beyond it the one heard from longest ago is forgotten. Routers acknowledging with
/// a node token are one per node (their id is tied to the node), so they need no cap of their own.
pub const MAX_ADMIN_ROUTERS: usize = 256;
/// Longest router id accepted from an admin caller.
pub const MAX_ROUTER_ID: usize = 128;

/// What one router has applied.
#[derive(Debug, Clone)]
pub struct RouterAck {
    pub version: String,
    pub at_ms: u64,
    /// The instances in that table, shared with [`RecentTables`]; `None` if the version is too
    /// old to be remembered (then the router is assumed to hold anything, until it acknowledges
    /// a newer table).
    pub instances: Option<Arc<BTreeSet<String>>>,
    /// Acknowledged with the admin token (counted against [`MAX_ADMIN_ROUTERS`]).
    pub by_admin: bool,
}

/// Every live router's last acknowledgement, by router id: bounded, and a router not heard
/// from for [`ROUTER_LIVENESS_MS`] is forgotten. A pure core: time is passed in.
#[derive(Debug, Default)]
pub struct RouterAcks(HashMap<String, RouterAck>, u64);

/// How often expired acknowledgements are swept (a sweep walks every router).
const ACK_SWEEP_EVERY_MS: u64 = 1_000;

impl RouterAcks {
    /// Records `ack` as router `id`'s, forgetting expired routers first (swept at most once a
    /// second) and, for an admin router beyond [`MAX_ADMIN_ROUTERS`], the admin router heard
    /// from longest ago.
    pub fn record(&mut self, id: &str, ack: RouterAck, now_ms: u64) {
        if now_ms.saturating_sub(self.1) >= ACK_SWEEP_EVERY_MS {
            self.0
                .retain(|_, a| now_ms.saturating_sub(a.at_ms) <= ROUTER_LIVENESS_MS);
            self.1 = now_ms;
        }
        if ack.by_admin && !self.0.contains_key(id) {
            let admins = self.0.values().filter(|a| a.by_admin).count();
            if admins >= MAX_ADMIN_ROUTERS {
                let oldest = self
                    .0
                    .iter()
                    .filter(|(_, a)| a.by_admin)
                    .min_by_key(|(_, a)| a.at_ms)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    self.0.remove(&oldest);
                }
            }
        }
        self.0.insert(id.to_string(), ack);
    }

    /// Whether every live router has applied a table without `instance`.
    pub fn released(&self, instance: &str, now_ms: u64) -> bool {
        self.0
            .values()
            .filter(|a| now_ms.saturating_sub(a.at_ms) <= ROUTER_LIVENESS_MS)
            .all(|a| {
                a.instances
                    .as_ref()
                    .is_some_and(|set| !set.contains(instance))
            })
    }

    /// Forgets router `id` (its node was removed).
    pub fn forget(&mut self, id: &str) {
        self.0.remove(id);
    }

    /// How many routers are remembered.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no router is remembered.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Recently served tables: version → instances they contain.
#[derive(Debug, Default)]
pub struct RecentTables(VecDeque<(String, Arc<BTreeSet<String>>)>);

impl RecentTables {
    fn remember(&mut self, version: &str, instances: BTreeSet<String>) {
        if self.0.iter().any(|(v, _)| v == version) {
            return;
        }
        if self.0.len() >= REMEMBERED_TABLES {
            self.0.pop_front();
        }
        self.0.push_back((version.to_string(), Arc::new(instances)));
    }

    fn get(&self, version: &str) -> Option<&Arc<BTreeSet<String>>> {
        self.0.iter().find(|(v, _)| v == version).map(|(_, s)| s)
    }
}

/// The router id `caller` may acknowledge as: a node token only as its own node's router
/// (`agent-NAME`), the admin token as any short printable id. Anyone else acknowledges nothing.
pub fn check_router_id(caller: &crate::http::Caller, id: &str) -> Result<(), ApiError> {
    use crate::http::Caller;
    match caller {
        Caller::Node(name) if id == format!("agent-{name}") => Ok(()),
        Caller::Node(name) => Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            format!("router: a node token acknowledges routing tables only as its own router `agent-{name}`, not `{id}`; run an edge router with the admin token"),
        )),
        Caller::Admin
            if !id.is_empty()
                && id.len() <= MAX_ROUTER_ID
                && id.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(())
        }
        Caller::Admin => Err(ApiError::invalid(
            format!("router: a router id is 1 to {MAX_ROUTER_ID} printable characters without spaces"),
            vec![],
        )),
        Caller::Joining => Err(ApiError::unauthorized()),
    }
}

/// A short content hash: equal content, equal version, whoever computes it and whenever.
pub fn content_version<T: Serialize>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..8])
}

/// Whether a node has been heard from within the TTL. A node not heard from since this server
/// started is given one TTL from the start to call in: liveness is kept in memory, and a
/// restarted server must not take every node for down (and replace all their instances). A node
/// that was already down before the restart gets no such grace: its last-seen time is read back
/// from its mark (see [`follow_liveness`]).
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
                        weight: crate::controllers::rollout::endpoint_weight(
                            &rollout.value,
                            r.spec.release,
                        ),
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

/// Records that `router` has applied the table `version` (its id checked by
/// [`check_router_id`] first).
pub fn record_ack(shared: &Shared, router: &str, version: &str, by_admin: bool) {
    let instances = shared
        .tables
        .lock()
        .ok()
        .and_then(|t| t.get(version).cloned());
    let now = shared.clock.now_ms();
    let ack = RouterAck {
        version: version.to_string(),
        at_ms: now,
        instances,
        by_admin,
    };
    if let Ok(mut acks) = shared.router_acks.lock() {
        acks.record(router, ack, now);
    }
}

/// Whether every live router has applied a table without this instance.
pub fn released_by_routers(shared: &Shared, instance: &str, now_ms: u64) -> bool {
    shared
        .router_acks
        .lock()
        .map(|acks| acks.released(instance, now_ms))
        .unwrap_or(false)
}

/// What a starting server reads back about nodes: the last-seen time of every node marked down
/// (so it is not given the restart grace) and every node token's hash (so a valid agent is known
/// without a store read, and a throttled source sharing its address does not lock it out).
#[derive(Debug, Default)]
pub struct Known {
    pub last_seen: HashMap<String, u64>,
    pub marked_down: HashSet<String>,
    pub node_tokens: HashMap<String, String>,
}

impl Known {
    /// Reads the marks and token hashes; an undecodable mark is ignored (that node gets the grace).
    pub async fn load(store: &dyn berth_store::Store) -> Result<Known, berth_store::StoreError> {
        let mut known = Known::default();
        for kv in store.range(crate::keys::NODE_SEEN).await?.kvs {
            let name = kv.key[crate::keys::NODE_SEEN.len()..].to_string();
            match serde_json::from_slice::<u64>(&kv.value) {
                Ok(ms) => {
                    known.last_seen.insert(name.clone(), ms);
                    known.marked_down.insert(name);
                }
                Err(e) => {
                    tracing::warn!(key = %kv.key, error = %e, "ignoring an unreadable node mark")
                }
            }
        }
        for kv in store.range(crate::keys::NODE_TOKENS).await?.kvs {
            let name = kv.key[crate::keys::NODE_TOKENS.len()..].to_string();
            if let Ok(hex) = String::from_utf8(kv.value) {
                known.node_tokens.insert(hex, name);
            }
        }
        Ok(known)
    }
}

/// Records that an authenticated node called in, and removes its "down" mark if it had one.
pub async fn mark_alive(shared: &Shared, node: &str) {
    if let Ok(mut h) = shared.heartbeats.lock() {
        h.insert(node.to_string(), shared.clock.now_ms());
    }
    let marked = shared
        .marked_down
        .lock()
        .map(|m| m.contains(node))
        .unwrap_or(false);
    if !marked {
        return;
    }
    let _order = shared.liveness_marks.lock().await;
    unmark(shared, node).await;
}

/// Deletes `node`'s down mark (kept in the set if the store refuses, so it is tried again).
async fn unmark(shared: &Shared, node: &str) {
    if !shared
        .marked_down
        .lock()
        .map(|m| m.contains(node))
        .unwrap_or(false)
    {
        return;
    }
    match shared.store.delete(&crate::keys::node_seen(node)).await {
        Ok(_) => {
            if let Ok(mut m) = shared.marked_down.lock() {
                m.remove(node);
            }
            tracing::info!(%node, "node is up again");
        }
        Err(e) => {
            tracing::warn!(%node, error = %e, "cannot clear the node's down mark; retrying on its next call")
        }
    }
}

/// How often nodes are checked for going down.
const LIVENESS_EVERY_MS: u64 = 1_000;

/// Marks in the store every node that went down, with when it was last seen
/// (`/node-seen/NAME`), so a restarted server knows it was down and gives it no grace: without
/// it, a node dead for minutes counted as up for a TTL after a restart and got new instances.
/// One write per node going down and one delete when it returns: nothing per heartbeat. Checked
/// every second (so a crash loses at most that much) and once more when the server stops.
pub async fn follow_liveness(
    shared: std::sync::Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let stopping = wait_or_stop(&mut stop, LIVENESS_EVERY_MS).await;
        mark_down_nodes(&shared).await;
        if stopping {
            return;
        }
    }
}

/// One pass of [`follow_liveness`].
async fn mark_down_nodes(shared: &Shared) {
    let nodes = match shared.store.range(crate::keys::NODES).await {
        Ok(r) => r.kvs,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the nodes to check their liveness");
            return;
        }
    };
    for kv in nodes {
        let name = &kv.key[crate::keys::NODES.len()..];
        let now = shared.clock.now_ms();
        let marked = shared
            .marked_down
            .lock()
            .map(|m| m.contains(name))
            .unwrap_or(true);
        if marked || node_is_up(shared, name, now) {
            continue;
        }
        let _order = shared.liveness_marks.lock().await;
        if node_is_up(shared, name, shared.clock.now_ms()) {
            continue;
        }
        // Removed (`berth node rm`) since the list was read: nothing to mark.
        match shared.store.get(&crate::keys::node(name)).await {
            Ok(Some(_)) => {}
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(node = %name, error = %e, "cannot read the node to mark it down; retrying");
                continue;
            }
        }
        let last = shared
            .heartbeats
            .lock()
            .ok()
            .and_then(|h| h.get(name).copied())
            .unwrap_or(shared.started_ms);
        if let Ok(mut m) = shared.marked_down.lock() {
            m.insert(name.to_string());
        }
        match shared
            .store
            .put(&crate::keys::node_seen(name), crate::state::encode(&last))
            .await
        {
            Ok(_) => {
                tracing::info!(node = %name, last_seen_ms_ago = now.saturating_sub(last), "node is down")
            }
            Err(e) => {
                tracing::warn!(node = %name, error = %e, "cannot mark the node down in the store; retrying");
                if let Ok(mut m) = shared.marked_down.lock() {
                    m.remove(name);
                }
                continue;
            }
        }
        // It called in while the mark was written: take the mark back.
        if node_is_up(shared, name, shared.clock.now_ms()) {
            unmark(shared, name).await;
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(at_ms: u64, by_admin: bool, holds: &[&str]) -> RouterAck {
        RouterAck {
            version: "v".to_string(),
            at_ms,
            instances: Some(Arc::new(holds.iter().map(|s| s.to_string()).collect())),
            by_admin,
        }
    }

    #[test]
    fn admin_router_acks_are_bounded_and_node_routers_are_not_evicted_by_them() {
        let mut acks = RouterAcks::default();
        acks.record("agent-n1", ack(1_000, false, &["i1"]), 1_000);
        for i in 0..10_000u64 {
            acks.record(&format!("edge-{i}"), ack(1_000 + i, true, &[]), 1_000 + i);
            assert!(acks.len() <= MAX_ADMIN_ROUTERS + 1, "{}", acks.len());
        }
        // The node's own router is still waited for: it holds i1.
        assert!(!acks.released("i1", 11_000));
        // The newest admin routers are the ones kept.
        assert!(acks.0.contains_key("edge-9999"));
        assert!(!acks.0.contains_key("edge-0"));
    }

    #[test]
    fn acks_of_routers_not_seen_for_the_ttl_expire() {
        let mut acks = RouterAcks::default();
        acks.record("edge-stale", ack(0, true, &["i1"]), 0);
        assert!(!acks.released("i1", 1_000), "a live router holding i1");
        // Past the TTL it is neither waited for nor kept.
        let later = ROUTER_LIVENESS_MS + 1;
        assert!(acks.released("i1", later));
        acks.record("edge-new", ack(later, true, &[]), later);
        assert_eq!(acks.len(), 1);
        assert!(!acks.0.contains_key("edge-stale"));
    }

    #[test]
    fn a_node_token_acks_only_as_its_own_router() {
        use crate::http::Caller;
        let n1 = Caller::Node("web1.example.com".to_string());
        assert!(check_router_id(&n1, "agent-web1.example.com").is_ok());
        assert!(check_router_id(&n1, "agent-n2").is_err());
        assert!(check_router_id(&n1, "edge-1").is_err());
        assert!(check_router_id(&Caller::Admin, "edge-0.0.0.0:80").is_ok());
        assert!(check_router_id(&Caller::Admin, &"x".repeat(MAX_ROUTER_ID + 1)).is_err());
        assert!(check_router_id(&Caller::Admin, "a b").is_err());
        assert!(check_router_id(&Caller::Joining, "agent-n1").is_err());
    }
}
