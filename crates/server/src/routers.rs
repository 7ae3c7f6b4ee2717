//! How the server knows routers have let go of an instance.
//!
//! An instance leaves the routing table the moment the server wants it drained. Each router
//! long-polls with the version of the table it has applied; the server remembers which
//! instances each recent version held ([`crate::routing::RecentTables`]). An instance is
//! *released* once no live router's applied table holds it, and only then is it stopped — the
//! race that makes naive orchestrators drop requests during a deploy (the process stops before
//! the proxies stop sending to it) cannot happen.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::error::ApiError;
use crate::http::Caller;
use crate::Shared;

/// A router that has not polled for this long is not waited for.
pub const ROUTER_LIVENESS_MS: u64 = 35_000;
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
    /// The instances in that table, shared with [`crate::routing::RecentTables`]; `None` if
    /// the version is too old to be remembered (then the router is assumed to hold anything,
    /// until it acknowledges a newer table).
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

/// The router id `caller` may acknowledge as: a node token only as its own node's router
/// (`agent-NAME`), the admin token as any short printable id. Anyone else acknowledges nothing.
pub fn check_router_id(caller: &Caller, id: &str) -> Result<(), ApiError> {
    match caller {
        Caller::Node(name) if id.strip_prefix("agent-") == Some(name.as_str()) => Ok(()),
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
        Caller::User(u) if u.role == berth_api::identity::Role::Admin => {
            check_router_id(&Caller::Admin, id)
        }
        Caller::User(u) => Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            format!("router: acknowledging routing tables as a router takes a node token or the admin role; user {} is a {}", u.name, u.role),
        )),
        Caller::Joining => Err(ApiError::unauthorized()),
    }
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
