//! The node-liveness controller: marks in the store every node that went down, with when it
//! was last seen (`/node-seen/NAME`), so a restarted server knows it was down and gives it no
//! grace (without it, a node dead for minutes counted as up for a TTL after a restart and got
//! new instances). One write per node going down and one delete when it returns: nothing per
//! heartbeat.
//!
//! [`decide`] is the pure core (the view's nodes, the in-memory last-seen times, the marks,
//! the clock → which nodes to mark down and which marks to clear); [`run`] is the shell, every
//! second, at once when a marked node calls in, and once more when the server stops. Node loss itself needs no write: every reader
//! asks [`crate::liveness::node_is_up`], which is current to the millisecond, so a lost node is
//! seen within [`crate::liveness::NODE_TTL_MS`].

use std::collections::{HashMap, HashSet};

use berth_store::{Compare, Op, Txn};

use crate::liveness::is_up_with_grace;
use crate::Shared;

/// How often nodes are checked for going down.
pub const EVERY_MS: u64 = 1_000;

/// What one pass should write.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Nodes that went down and have no mark yet: (name, last seen ms).
    pub mark_down: Vec<(String, u64)>,
    /// Nodes marked down that are up again (their own call could not clear the mark).
    pub clear: Vec<String>,
}

/// Which registered nodes to mark down and which marks to clear, at `now_ms`.
pub fn decide<'a>(
    nodes: impl IntoIterator<Item = &'a str>,
    last_seen: &HashMap<String, u64>,
    marked_down: &HashSet<String>,
    started_ms: u64,
    now_ms: u64,
) -> Decision {
    let mut decision = Decision::default();
    for name in nodes {
        let last = last_seen.get(name).copied();
        let marked = marked_down.contains(name);
        let up = is_up_with_grace(last, marked, started_ms, now_ms);
        if !up && !marked {
            decision
                .mark_down
                .push((name.to_string(), last.unwrap_or(started_ms)));
        } else if up && marked && last.is_some() {
            decision.clear.push(name.to_string());
        }
    }
    decision
}

/// Runs [`pass`] every [`EVERY_MS`] (and at once when a marked node calls in) until `stop`,
/// and once more when stopping (so a crash loses at most a second of marks).
pub async fn run(shared: std::sync::Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let stopping = tokio::select! {
            _ = stop.changed() => true,
            _ = shared.liveness_kick.notified() => *stop.borrow(),
            _ = tokio::time::sleep(std::time::Duration::from_millis(EVERY_MS)) => *stop.borrow(),
        };
        pass(&shared).await;
        if stopping {
            return;
        }
    }
}

/// One pass: decide from the view and memory, then write the marks: one transaction for
/// every node that went down, one for every node that came back.
pub async fn pass(shared: &Shared) {
    // Only the leader marks nodes (its writes are fenced too, for a leader deposed meanwhile).
    if !shared.leadership.is_leading() {
        return;
    }
    // Held across the writes: `berth node rm` takes it too, so no mark is written for a node
    // being removed (and the view read below is not older than a removal).
    let _order = shared.liveness_marks.lock().await;
    let now = shared.clock.now_ms();
    let (decision, node_revisions) = {
        // Synchronous, with no lock held across an await: O(nodes) in memory once a second.
        // A poisoned lock still holds whole entries (each is one insert or remove).
        let last_seen = shared.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
        let marked = shared.marked_down.lock().unwrap_or_else(|p| p.into_inner());
        let view = shared.view.read();
        let decision = decide(
            view.nodes().keys().map(String::as_str),
            &last_seen,
            &marked,
            crate::liveness::grace_from(shared),
            now,
        );
        let revisions: Vec<i64> = decision
            .mark_down
            .iter()
            .map(|(name, _)| view.node(name).map(|n| n.mod_revision).unwrap_or(0))
            .collect();
        (decision, revisions)
    };
    if !decision.mark_down.is_empty() {
        mark_down(shared, &decision.mark_down, &node_revisions, now).await;
    }
    if !decision.clear.is_empty() {
        clear(shared, &decision.clear).await;
    }
}

/// Writes the down marks, each only if its node is still the record the decision saw (one
/// transaction; one per node if some node changed meanwhile).
async fn mark_down(shared: &Shared, nodes: &[(String, u64)], revisions: &[i64], now: u64) {
    let write = |batch: Vec<(&(String, u64), &i64)>| {
        let mut compares = Vec::new();
        let mut ops = Vec::new();
        for ((name, last), revision) in batch {
            compares.push(Compare::mod_revision(crate::keys::node(name), *revision));
            ops.push(Op::put(
                crate::keys::node_seen(name),
                crate::state::encode(last),
            ));
        }
        shared.store.txn(crate::leadership::fenced(
            shared.leadership.as_ref(),
            Txn {
                compares,
                success: ops,
                failure: vec![],
            },
        ))
    };
    let all: Vec<_> = nodes.iter().zip(revisions).collect();
    let written: Vec<&str> = match write(all.clone()).await {
        Ok(r) if r.succeeded => nodes.iter().map(|(n, _)| n.as_str()).collect(),
        Ok(_) => {
            let mut one_by_one = Vec::new();
            for one in all {
                // A node removed or re-registered since the view was read is decided again.
                if write(vec![one]).await.is_ok_and(|r| r.succeeded) {
                    one_by_one.push(one.0 .0.as_str());
                }
            }
            one_by_one
        }
        Err(e) => {
            tracing::warn!(error = %e, nodes = nodes.len(), "cannot mark nodes down in the store; retrying");
            return;
        }
    };
    if let Ok(mut m) = shared.marked_down.lock() {
        m.extend(written.iter().map(|n| n.to_string()));
    }
    for (name, last) in nodes.iter().filter(|(n, _)| written.contains(&n.as_str())) {
        tracing::info!(node = %name, last_seen_ms_ago = now.saturating_sub(*last), "node is down");
    }
}

/// Deletes the marks of nodes that are up again (kept in the set if the store refuses, so the
/// next pass tries again).
async fn clear(shared: &Shared, nodes: &[String]) {
    let ops = nodes
        .iter()
        .map(|n| Op::delete(crate::keys::node_seen(n)))
        .collect();
    let done = shared
        .store
        .txn(crate::leadership::fenced(
            shared.leadership.as_ref(),
            Txn {
                compares: vec![],
                success: ops,
                failure: vec![],
            },
        ))
        .await;
    match done {
        // A failed fence (no longer leading) clears nothing: the next leader decides again.
        Ok(r) if !r.succeeded => {}
        Ok(_) => {
            if let Ok(mut m) = shared.marked_down.lock() {
                for n in nodes {
                    m.remove(n);
                }
            }
            for node in nodes {
                tracing::info!(%node, "node is up again");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, nodes = nodes.len(), "cannot clear the down marks of nodes that are up again; retrying")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::liveness::NODE_TTL_MS;

    fn names(v: &[&str]) -> HashSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_node_silent_past_the_ttl_is_marked_down_once_with_its_last_call() {
        let seen = HashMap::from([("a".to_string(), 10_000), ("b".to_string(), 12_000)]);
        let now = 10_000 + NODE_TTL_MS + 1;
        let d = decide(["a", "b"], &seen, &HashSet::new(), 0, now);
        assert_eq!(d.mark_down, vec![("a".to_string(), 10_000)]);
        assert!(d.clear.is_empty());
        // Already marked: nothing more to write, however long it stays down.
        let d = decide(["a", "b"], &seen, &names(&["a"]), 0, now + 60_000);
        assert_eq!(d.mark_down, vec![("b".to_string(), 12_000)]);
    }

    #[test]
    fn a_node_never_heard_from_gets_one_ttl_from_the_start_then_is_marked_at_the_start() {
        let seen = HashMap::new();
        assert_eq!(
            decide(["a"], &seen, &HashSet::new(), 5_000, 5_000 + NODE_TTL_MS),
            Decision::default()
        );
        let d = decide(["a"], &seen, &HashSet::new(), 5_000, 5_001 + NODE_TTL_MS);
        assert_eq!(d.mark_down, vec![("a".to_string(), 5_000)]);
    }

    #[test]
    fn a_marked_node_that_called_in_again_is_cleared_and_one_read_back_is_not() {
        let seen = HashMap::from([("back".to_string(), 20_000), ("old".to_string(), 1_000)]);
        let marked = names(&["back", "old", "restarted"]);
        let d = decide(["back", "old", "restarted"], &seen, &marked, 19_000, 20_500);
        assert_eq!(d.clear, vec!["back".to_string()]);
        // `old` is still down (its mark's time); `restarted` was marked before this server
        // started and has not called in: it keeps its mark, and gets no grace.
        assert!(d.mark_down.is_empty());
    }

    /// 100 nodes going down cost one store write, their heartbeats when they return none, and
    /// clearing their marks one more: a fleet returning after a partition does not queue a
    /// store write per heartbeat (as it did: each heartbeat of a marked node deleted its own
    /// mark, one fsync at a time under one lock).
    #[tokio::test]
    async fn a_fleet_going_down_and_returning_costs_two_transactions_and_no_heartbeat_writes() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let dir = tempfile::tempdir().expect("tempdir");
        let store = berth_store::EmbeddedStore::open(dir.path().join("state.redb"))
            .await
            .expect("store");
        for i in 0..100 {
            let record = crate::state::NodeRecord {
                registration: berth_api::control::RegisterRequest {
                    name: format!("n{i}"),
                    labels: Default::default(),
                    resources: Default::default(),
                    drivers: vec![],
                    address: "127.0.0.1".into(),
                    router: None,
                    keep_labels: false,
                },
                registered_ms: 0,
                draining: false,
            };
            use berth_store::Store;
            store
                .put(
                    &crate::keys::node(&format!("n{i}")),
                    crate::state::encode(&record),
                )
                .await
                .expect("put");
        }
        let now = std::sync::Arc::new(AtomicU64::new(1_000_000));
        let clock = {
            let now = now.clone();
            crate::Clock::from_fn(move || now.load(Ordering::SeqCst))
        };
        let store: std::sync::Arc<dyn berth_store::Store> = std::sync::Arc::new(store);
        let shared = crate::Shared::new(crate::ServerConfig {
            data_dir: dir.path().to_path_buf(),
            store: store.clone(),
            clock,
            tls: None,
            secrets_key_file: None,
        })
        .await
        .expect("shared");
        let revision = || async { store.revision().await.expect("revision") };
        let seen = || async {
            store
                .range(crate::keys::NODE_SEEN)
                .await
                .expect("range")
                .kvs
                .len()
        };
        // Within the start's grace: nothing to write.
        pass(&shared).await;
        let before = revision().await;
        assert_eq!(seen().await, 0);
        // Past it, none having called in: every node is marked, in one transaction.
        now.fetch_add(NODE_TTL_MS + 1, Ordering::SeqCst);
        pass(&shared).await;
        assert_eq!(revision().await, before + 1);
        assert_eq!(seen().await, 100);
        pass(&shared).await;
        assert_eq!(revision().await, before + 1, "marked once");
        // They all call in: no store write on their calls.
        for i in 0..100 {
            crate::liveness::mark_alive(&shared, &format!("n{i}"));
        }
        assert_eq!(revision().await, before + 1);
        // The controller clears every mark in one more.
        pass(&shared).await;
        assert_eq!(revision().await, before + 2);
        assert_eq!(seen().await, 0);
        assert!(shared.marked_down.lock().expect("lock").is_empty());
    }

    /// A leader that took the lead at a time the test sets.
    struct TookLead(
        std::sync::atomic::AtomicU64,
        tokio::sync::watch::Sender<bool>,
    );

    impl crate::leadership::Leadership for TookLead {
        fn is_leading(&self) -> bool {
            true
        }
        fn leading(&self) -> tokio::sync::watch::Receiver<bool> {
            self.1.subscribe()
        }
        fn fence(&self) -> Option<berth_store::Compare> {
            None
        }
        fn leading_since_ms(&self) -> Option<u64> {
            Some(self.0.load(std::sync::atomic::Ordering::SeqCst))
        }
    }

    /// Failover (issue 14 point 3): the node's heartbeats went to the old leader, so this
    /// server last heard it long ago; taking the lead gives it one TTL to call in before it is
    /// marked down (and its instances replaced), and then it is marked as before.
    #[tokio::test]
    async fn a_new_leader_waits_one_ttl_before_marking_a_node_it_has_not_heard_lately() {
        use berth_store::Store;
        use std::sync::atomic::{AtomicU64, Ordering};
        let dir = tempfile::tempdir().expect("tempdir");
        let store = berth_store::EmbeddedStore::open(dir.path().join("state.redb"))
            .await
            .expect("store");
        let record = crate::state::NodeRecord {
            registration: berth_api::control::RegisterRequest {
                name: "n1".into(),
                labels: Default::default(),
                resources: Default::default(),
                drivers: vec![],
                address: "127.0.0.1".into(),
                router: None,
                keep_labels: false,
            },
            registered_ms: 0,
            draining: false,
        };
        store
            .put(&crate::keys::node("n1"), crate::state::encode(&record))
            .await
            .expect("put");
        let now = std::sync::Arc::new(AtomicU64::new(1_000_000));
        let clock = {
            let now = now.clone();
            crate::Clock::from_fn(move || now.load(Ordering::SeqCst))
        };
        let lead = std::sync::Arc::new(TookLead(
            AtomicU64::new(0),
            tokio::sync::watch::channel(true).0,
        ));
        let store: std::sync::Arc<dyn berth_store::Store> = std::sync::Arc::new(store);
        let shared = crate::Shared::with_leadership(
            crate::ServerConfig {
                data_dir: dir.path().to_path_buf(),
                store: store.clone(),
                clock,
                tls: None,
                secrets_key_file: None,
            },
            lead.clone(),
        )
        .await
        .expect("shared");
        let seen = || async {
            store
                .range(crate::keys::NODE_SEEN)
                .await
                .expect("range")
                .kvs
                .len()
        };
        // Heard once while this server followed; then its heartbeats went to the leader.
        crate::liveness::mark_alive(&shared, "n1");
        now.fetch_add(10_000, Ordering::SeqCst);
        // The leader dies; this server takes the lead now.
        lead.0.store(now.load(Ordering::SeqCst), Ordering::SeqCst);
        pass(&shared).await;
        assert_eq!(seen().await, 0, "not marked down within the grace");
        assert!(crate::liveness::node_is_up(
            &shared,
            "n1",
            now.load(Ordering::SeqCst)
        ));
        // It calls in within the grace: up, and stays up.
        now.fetch_add(NODE_TTL_MS - 500, Ordering::SeqCst);
        crate::liveness::mark_alive(&shared, "n1");
        now.fetch_add(NODE_TTL_MS, Ordering::SeqCst);
        pass(&shared).await;
        assert_eq!(seen().await, 0);
        // Silent past a TTL after that: marked, the grace is no shield for a lost node.
        now.fetch_add(501, Ordering::SeqCst);
        pass(&shared).await;
        assert_eq!(seen().await, 1, "a lost node is still marked down");
        assert!(!crate::liveness::node_is_up(
            &shared,
            "n1",
            now.load(Ordering::SeqCst)
        ));
    }

    #[test]
    fn nodes_not_in_the_view_are_not_marked() {
        let d = decide(
            [],
            &HashMap::from([("gone".to_string(), 0)]),
            &HashSet::new(),
            0,
            60_000,
        );
        assert_eq!(d, Decision::default());
    }
}
