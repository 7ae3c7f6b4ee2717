//! Node liveness, kept in memory: when each node last called in, whether it counts as up, and
//! the "down" marks a restarted server reads back (`/node-seen/NAME`).
//!
//! Liveness is not worth an fsync per heartbeat: the last-seen times live in
//! [`Shared::heartbeats`]. Only a node going down is written, and its return deletes the mark
//! (both by the liveness controller, [`crate::controllers::liveness`]), so a restarted server
//! gives a node that was already down no grace.

use std::collections::{HashMap, HashSet};

use crate::Shared;

/// A node that has not been heard from for this long is down.
pub const NODE_TTL_MS: u64 = 3_000;

/// Whether a node last seen at `last_seen` (`None`: not since this server started at
/// `started_ms`) is up at `now_ms`. A node not heard from since the start is given one TTL
/// from the start to call in: a restarted server must not take every node for down (and
/// replace all their instances). A node already down before the restart gets no such grace:
/// its last-seen time is read back from its mark (see [`Known`]).
pub fn is_up(last_seen: Option<u64>, started_ms: u64, now_ms: u64) -> bool {
    now_ms.saturating_sub(last_seen.unwrap_or(started_ms)) <= NODE_TTL_MS
}

/// [`is_up`] across a failover: a node not marked down counts as heard at `grace_from` (when
/// this server started or took the lead, see [`grace_from`]) if it was not heard since, so a
/// new leader gives every live node one TTL to call in (its heartbeats went to the old
/// leader) instead of marking it down and replacing its instances. A node marked down in the
/// store gets no grace: it is down until it calls in.
pub fn is_up_with_grace(
    last_seen: Option<u64>,
    marked: bool,
    grace_from: u64,
    now_ms: u64,
) -> bool {
    if marked {
        return is_up(last_seen, grace_from, now_ms);
    }
    let heard = last_seen.map_or(grace_from, |l| l.max(grace_from));
    now_ms.saturating_sub(heard) <= NODE_TTL_MS
}

/// Since when this server's liveness grace runs: its start, or when it took the lead if later.
pub fn grace_from(shared: &Shared) -> u64 {
    shared
        .started_ms
        .max(shared.leadership.leading_since_ms().unwrap_or(0))
}

/// [`is_up_with_grace`] for `node`, from the server's in-memory last-seen times.
pub fn node_is_up(shared: &Shared, node: &str, now_ms: u64) -> bool {
    let last = shared
        .heartbeats
        .lock()
        .ok()
        .and_then(|h| h.get(node).copied());
    is_up_with_grace(last, is_marked(shared, node), grace_from(shared), now_ms)
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

/// Records that an authenticated node called in. In memory only, whatever the node's state:
/// a node that was marked down has its mark cleared by the liveness controller, woken here,
/// in one transaction with every other node that came back (10,000 nodes returning after a
/// partition must not queue 10,000 store writes behind one lock on their heartbeats).
pub fn mark_alive(shared: &Shared, node: &str) {
    let now = shared.clock.now_ms();
    if let Ok(mut h) = shared.heartbeats.lock() {
        // Known nodes update in place: no allocation per heartbeat.
        match h.get_mut(node) {
            Some(last) => *last = now,
            None => {
                h.insert(node.to_string(), now);
            }
        }
    }
    if is_marked(shared, node) {
        shared.liveness_kick.notify_one();
    }
}

/// Whether `node` has a down mark in the store.
pub fn is_marked(shared: &Shared, node: &str) -> bool {
    shared
        .marked_down
        .lock()
        .map(|m| m.contains(node))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_leader_gives_nodes_it_has_not_heard_one_ttl_but_marked_ones_none() {
        // Heard 10 s before this server took the lead at 20 s (its beats then went elsewhere).
        let lead = 20_000;
        assert!(is_up_with_grace(
            Some(10_000),
            false,
            lead,
            lead + NODE_TTL_MS
        ));
        assert!(!is_up_with_grace(
            Some(10_000),
            false,
            lead,
            lead + NODE_TTL_MS + 1
        ));
        assert!(is_up_with_grace(None, false, lead, lead + NODE_TTL_MS));
        // Heard after the lead was taken: its own time counts.
        assert!(is_up_with_grace(
            Some(lead + 500),
            false,
            lead,
            lead + 500 + NODE_TTL_MS
        ));
        // A node marked down stays down through the grace.
        assert!(!is_up_with_grace(Some(10_000), true, lead, lead + 1));
        // Without a failover (grace from the start), the plain rule.
        assert_eq!(
            is_up_with_grace(Some(1_000), false, 0, 1_001 + NODE_TTL_MS),
            is_up(Some(1_000), 0, 1_001 + NODE_TTL_MS)
        );
    }

    #[test]
    fn a_node_is_up_within_the_ttl_and_a_new_server_gives_one_ttl_of_grace() {
        assert!(is_up(Some(1_000), 0, 1_000 + NODE_TTL_MS));
        assert!(!is_up(Some(1_000), 0, 1_001 + NODE_TTL_MS));
        // Never heard from: counted from the server's start.
        assert!(is_up(None, 5_000, 5_000 + NODE_TTL_MS));
        assert!(!is_up(None, 5_000, 5_001 + NODE_TTL_MS));
    }
}
