//! Leadership: which server may run the controllers. The seam beside [`berth_store::Store`]
//! that high availability fills in: with several servers on one etcd, one holds a lease and
//! leads; the others serve the API and wait.
//!
//! Controllers run only while [`Leadership::leading`] says so, and every controller
//! transaction carries [`Leadership::fence`]: a compare that holds only while this server
//! still leads (for etcd, the leader key's `mod_revision` under our lease), so a server that
//! lost leadership between deciding and writing cannot overwrite its successor's decisions.
//!
//! The embedded store has one server by construction: [`SoleLeader`] always leads and needs no
//! fence. On etcd, [`EtcdLeadership`] campaigns for [`LEADER_KEY`] under a lease of
//! [`LEADER_TTL`]; its fence is the leader key's `mod_revision` as this server wrote it, so a
//! write from a server whose lease ran out (it crashed, or was paused and came back) or whose
//! key a successor rewrote fails at etcd, whatever that server still believes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_store::{Compare, EtcdStore, Store, Txn};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The berth key the leader holds (under the store's prefix: `/berth/leader` by default).
pub const LEADER_KEY: &str = "/leader";

/// The leader's lease (the issue allows 5 s at most): a crashed leader is replaced within it
/// plus one [`CAMPAIGN_RETRY`].
pub const LEADER_TTL: Duration = Duration::from_secs(3);

/// How often the lease is renewed, and how often a follower tries to take the lead.
pub const CAMPAIGN_RETRY: Duration = Duration::from_secs(1);

/// What the leader key holds: who leads, and since when (`berth servers`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// The leading server's id (its API address unless given).
    pub id: String,
    /// Its API URL.
    pub api: String,
    /// When it took the lead (ms since the epoch).
    pub since_ms: u64,
}

/// `txn` with `leadership`'s fence compared first: the one way a controller's write carries
/// its proof of leadership.
pub fn fenced(leadership: &dyn Leadership, mut txn: Txn) -> Txn {
    if let Some(fence) = leadership.fence() {
        txn.compares.insert(0, fence);
    }
    txn
}

/// Whether this server leads, and the proof of it its writes carry.
pub trait Leadership: Send + Sync {
    /// Leading now (a snapshot: it may end at any moment, which is what the fence is for).
    fn is_leading(&self) -> bool;
    /// Changes whenever leadership is won or lost; wait on it with `wait_for(|l| *l)`.
    fn leading(&self) -> watch::Receiver<bool>;
    /// The compare every controller transaction carries; `None` when no fence is needed.
    fn fence(&self) -> Option<Compare>;
    /// When this server took the lead it holds now (ms since the epoch); `None` when it does
    /// not lead or has always led. Node liveness gives nodes one TTL from then (see
    /// [`crate::liveness::grace_from`]).
    fn leading_since_ms(&self) -> Option<u64> {
        None
    }
}

/// The leadership of a server with an embedded store: always the leader, nothing to fence.
pub struct SoleLeader {
    leading: watch::Sender<bool>,
}

impl SoleLeader {
    /// A leader from the start.
    pub fn new() -> Self {
        SoleLeader {
            leading: watch::channel(true).0,
        }
    }
}

impl Default for SoleLeader {
    fn default() -> Self {
        Self::new()
    }
}

impl Leadership for SoleLeader {
    fn is_leading(&self) -> bool {
        true
    }

    fn leading(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    fn fence(&self) -> Option<Compare> {
        None
    }
}

/// What a leader holds: the revision it wrote the leader key at, and until when its lease is
/// surely alive (the renewal's send time plus the TTL etcd granted).
#[derive(Debug, Clone, Copy)]
struct Held {
    revision: i64,
    valid_until: Instant,
    since_ms: u64,
}

/// Leadership through an etcd lease: one leader per store prefix.
///
/// [`EtcdLeadership::run`] renews the lease every [`CAMPAIGN_RETRY`] and campaigns while no one
/// leads; [`Leadership::is_leading`] also checks the lease's deadline on the monotonic clock,
/// so a server resumed after a pause longer than its lease stops leading before its first
/// renewal says so, and the fence holds back whatever it still tries.
pub struct EtcdLeadership {
    store: EtcdStore,
    me: LeaderRecord,
    ttl: Duration,
    held: Mutex<Option<Held>>,
    leading: watch::Sender<bool>,
}

impl EtcdLeadership {
    /// A follower of `store`'s leader key until [`EtcdLeadership::run`] wins it; `me` is what it
    /// writes there (its `since_ms` is set when it wins).
    pub fn new(store: EtcdStore, me: LeaderRecord, ttl: Duration) -> Self {
        EtcdLeadership {
            store,
            me,
            ttl,
            held: Mutex::new(None),
            leading: watch::channel(false).0,
        }
    }

    fn held(&self) -> Option<Held> {
        self.held.lock().ok().and_then(|h| *h)
    }

    fn set_held(&self, held: Option<Held>) {
        if let Ok(mut h) = self.held.lock() {
            *h = held;
        }
        let now = held.is_some();
        self.leading
            .send_if_modified(|l| std::mem::replace(l, now) != now);
    }

    fn step_down(&self, why: &str) {
        if self.held().is_some() {
            tracing::warn!(id = %self.me.id, why, "no longer leading");
        }
        self.set_held(None);
    }

    /// Campaigns and renews until `stop`, then resigns (revokes the lease, so a successor
    /// takes over within one [`CAMPAIGN_RETRY`] instead of a TTL).
    pub async fn run(&self, mut stop: watch::Receiver<bool>, now_ms: impl Fn() -> u64) {
        let ttl_secs = self.ttl.as_secs().max(1) as i64;
        let mut lease: Option<i64> = None;
        loop {
            if *stop.borrow() {
                break;
            }
            self.tick(&mut lease, ttl_secs, &now_ms).await;
            tokio::select! {
                _ = stop.changed() => {}
                _ = tokio::time::sleep(CAMPAIGN_RETRY) => {}
            }
        }
        self.set_held(None);
        if let Some(id) = lease {
            match self.store.revoke_lease(id).await {
                Ok(()) => tracing::info!(id = %self.me.id, "resigned the lead"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot revoke the leader lease; it expires by itself")
                }
            }
        }
    }

    /// One renewal, and a campaign when no one leads.
    async fn tick(&self, lease: &mut Option<i64>, ttl_secs: i64, now_ms: &impl Fn() -> u64) {
        if self
            .held()
            .is_some_and(|h| crate::clock::instant_now() >= h.valid_until)
        {
            self.step_down("the lease ran out before it was renewed");
        }
        let id = match *lease {
            Some(id) => id,
            None => match self.store.grant_lease(ttl_secs).await {
                Ok(id) => {
                    *lease = Some(id);
                    id
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot get a leader lease; retrying");
                    return;
                }
            },
        };
        let sent = crate::clock::instant_now();
        match self.store.keep_alive_once(id).await {
            Ok(true) => {}
            Ok(false) => {
                *lease = None;
                self.step_down("the lease expired (this server was paused or cut off)");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the leader lease; retrying");
                return;
            }
        }
        let valid_until = sent + self.ttl;
        if let Some(held) = self.held() {
            // Still ours? An operator's delete or a successor's key ends it.
            match self.store.get(LEADER_KEY).await {
                Ok(Some(kv)) if kv.mod_revision == held.revision => self.set_held(Some(Held {
                    valid_until,
                    ..held
                })),
                Ok(_) => self.step_down("the leader key changed"),
                Err(e) => tracing::warn!(error = %e, "cannot read the leader key; retrying"),
            }
            return;
        }
        let since_ms = now_ms();
        let record = LeaderRecord {
            since_ms,
            ..self.me.clone()
        };
        let value = serde_json::to_vec(&record).unwrap_or_default();
        match self.store.campaign(LEADER_KEY, value, id).await {
            Ok(Some(revision)) => {
                tracing::info!(id = %self.me.id, revision, "leading");
                self.set_held(Some(Held {
                    revision,
                    valid_until,
                    since_ms,
                }));
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot campaign for the lead; retrying"),
        }
    }
}

impl Leadership for EtcdLeadership {
    fn is_leading(&self) -> bool {
        self.held()
            .is_some_and(|h| crate::clock::instant_now() < h.valid_until)
    }

    fn leading(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    fn fence(&self) -> Option<Compare> {
        // Not leading: a revision no key ever has, so every fenced write fails.
        let revision = self
            .held()
            .filter(|h| crate::clock::instant_now() < h.valid_until)
            .map_or(-1, |h| h.revision);
        Some(Compare::mod_revision(LEADER_KEY, revision))
    }

    fn leading_since_ms(&self) -> Option<u64> {
        self.held().map(|h| h.since_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sole_leader_leads_without_a_fence() {
        let l = SoleLeader::new();
        assert!(l.is_leading());
        assert!(*l.leading().borrow());
        assert!(l.fence().is_none());
    }
}
