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
//! fence.

use berth_store::Compare;
use tokio::sync::watch;

/// Whether this server leads, and the proof of it its writes carry.
pub trait Leadership: Send + Sync {
    /// Leading now (a snapshot: it may end at any moment, which is what the fence is for).
    fn is_leading(&self) -> bool;
    /// Changes whenever leadership is won or lost; wait on it with `wait_for(|l| *l)`.
    fn leading(&self) -> watch::Receiver<bool>;
    /// The compare every controller transaction carries; `None` when no fence is needed.
    fn fence(&self) -> Option<Compare>;
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
