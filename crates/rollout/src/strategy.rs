//! The rollout strategy seam: which state machine replaces a service's instances, and how the
//! routers split traffic between releases meanwhile.
//!
//! Rolling is the only strategy today. Blue/green and canary become siblings of
//! [`Strategy::Rolling`]: each keeps its own persisted state, steps it with the same
//! [`Observed`] instances, and says in its [`StrategyStep::traffic`] how much each release gets
//! (blue/green: all of one colour, then all of the other; canary: a percentage to the new
//! release). The routing table asks [`Traffic::endpoint_weight`] for every endpoint.

use std::collections::BTreeMap;

use crate::observe::Observed;
use crate::rolling::{step, Decision, RolloutState};

/// The kind of rollout a service gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Replace instances a few at a time ([`crate::rolling`]); every healthy instance of either
    /// release takes an equal share of traffic.
    Rolling,
}

/// How the routers share a service's traffic between its releases' healthy endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Traffic {
    /// Every endpoint alike, whatever its release (rolling).
    Equal,
    /// A relative weight per release for each of its endpoints (blue/green, canary): a release
    /// not listed gets none.
    PerRelease(BTreeMap<u64, u32>),
}

/// The weight every endpoint gets when traffic is [`Traffic::Equal`]: the routers' default.
pub const EQUAL_WEIGHT: u32 = 100;

impl Traffic {
    /// The weight of one endpoint of `release`.
    pub fn endpoint_weight(&self, release: u64) -> u32 {
        match self {
            Traffic::Equal => EQUAL_WEIGHT,
            Traffic::PerRelease(weights) => weights.get(&release).copied().unwrap_or(0),
        }
    }
}

/// One step of a strategy: the new state, what to start and stop, and the traffic split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrategyStep {
    /// The state to persist.
    pub state: RolloutState,
    /// What the shell does now.
    pub decision: Decision,
    /// How traffic is shared until the next step.
    pub traffic: Traffic,
}

impl Strategy {
    /// Steps the strategy's state machine (see [`crate::rolling::step`] for rolling).
    pub fn step(&self, state: &RolloutState, observed: &[Observed], now_ms: u64) -> StrategyStep {
        match self {
            Strategy::Rolling => {
                let (state, decision) = step(state, observed, now_ms);
                let traffic = self.traffic(state.from_release, state.to_release);
                StrategyStep {
                    state,
                    decision,
                    traffic,
                }
            }
        }
    }

    /// The traffic split of a rollout from `from` to `to` (for a stack that is not stepping, as
    /// the routing table asks between passes).
    pub fn traffic(&self, _from: Option<u64>, _to: u64) -> Traffic {
        match self {
            Strategy::Rolling => Traffic::Equal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_weighs_every_endpoint_alike() {
        let t = Strategy::Rolling.traffic(Some(1), 2);
        assert_eq!(t.endpoint_weight(1), 100);
        assert_eq!(t.endpoint_weight(2), 100);
    }

    #[test]
    fn a_per_release_split_gives_unlisted_releases_nothing() {
        let t = Traffic::PerRelease(BTreeMap::from([(2, 10)]));
        assert_eq!(t.endpoint_weight(2), 10);
        assert_eq!(t.endpoint_weight(1), 0);
    }

    #[test]
    fn a_step_carries_the_traffic_split() {
        let state = RolloutState::with_limits(None, 1, 1, 1, 0, 60_000, 0).expect("state");
        let s = Strategy::Rolling.step(&state, &[], 0);
        assert_eq!(s.traffic, Traffic::Equal);
        assert_eq!(s.decision.new_target, 1);
    }
}
