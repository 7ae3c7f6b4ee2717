//! What a state machine sees of the world: one entry per instance of the service in the region.
//!
//! The shell builds these from the store (agent reports) on every call. They are deliberately
//! small and copied, not borrowed from store types, so the cores stay free of shell crates.

use serde::{Deserialize, Serialize};

/// The lifecycle state of one instance, as its agent last reported it.
///
/// Same names as the instance states in DESIGN.md, so a status line, an event and a decision all
/// speak the same words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObservedState {
    /// Placed on a node, not started yet (image pull, waiting for a dependency).
    Pending,
    /// Running, health checks not passing yet.
    Starting,
    /// Passing its health check: the only state that counts as serving capacity.
    Healthy,
    /// Was running, now failing its health check (the agent may restart it).
    Unhealthy,
    /// Gave up: will not be restarted. Dead for counting purposes.
    Failed,
    /// Removed from routers, being stopped (usually because a decision asked for it).
    Draining,
    /// Gone. Ignored entirely.
    Stopped,
}

impl ObservedState {
    /// Pending, Starting, Healthy or Unhealthy: the instance occupies a slot and may serve, so it
    /// counts against the surge limit and towards a target count.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            ObservedState::Pending
                | ObservedState::Starting
                | ObservedState::Healthy
                | ObservedState::Unhealthy
        )
    }

    /// Serving capacity: only a healthy instance counts, never one that is merely running.
    pub fn is_healthy(self) -> bool {
        self == ObservedState::Healthy
    }

    /// The order in which live instances are chosen for stopping: the least useful first
    /// (unhealthy, then not started, then starting, then healthy), so a stop costs as little
    /// serving capacity as possible.
    pub(crate) fn stop_rank(self) -> u8 {
        match self {
            ObservedState::Unhealthy => 0,
            ObservedState::Pending => 1,
            ObservedState::Starting => 2,
            ObservedState::Healthy => 3,
            ObservedState::Failed | ObservedState::Draining | ObservedState::Stopped => 4,
        }
    }
}

/// One instance of the service in the region, as observed now.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Observed {
    /// The instance id: unique, stable, and the tie-breaker that makes choices deterministic.
    pub instance: String,
    /// The release this instance runs.
    pub release: u64,
    /// Its last reported state.
    pub state: ObservedState,
    /// How many times its agent restarted it: a crash loop shows up here before it shows up as
    /// `Failed`.
    pub restarts: u32,
}
