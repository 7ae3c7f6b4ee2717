//! The rollout strategy seam: which state machine replaces a service's instances, and how the
//! routers split traffic between releases meanwhile.
//!
//! [`ServiceRollout`] is the persisted machine of one service, whichever strategy: rolling,
//! canary or blue/green. Each steps with the same [`Observed`] instances and says in its
//! [`ServiceStep::traffic`] how much each release gets (blue/green: all of one colour, then all
//! of the other; canary: a share in basis points to the new release). [`Strategy`] remains the
//! rolling seam older callers use.

use std::collections::BTreeMap;

use berth_spec::model::{OnFailure, Service, Strategy as SpecStrategy};
use serde::{Deserialize, Serialize};

use crate::blue_green::BlueGreenState;
use crate::canary::{CanaryState, TrafficWindow};
use crate::observe::Observed;
use crate::rolling::{step, Decision, Phase, RolloutError, RolloutState};

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
    /// A share per release in basis points, summing to 10,000 (blue/green, canary): a release
    /// not listed gets none. The routing table divides a release's share among its endpoints.
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

/// The persisted state machine of one service's rollout in one region, whichever strategy it
/// follows. Serialised untagged: a rolling state stores exactly as it did before the other
/// strategies existed (so stored rollouts still load), and the others are told apart by their
/// own required fields (`steps`, `keep_previous_ms`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ServiceRollout {
    /// A canary ([`crate::canary`]).
    Canary(CanaryState),
    /// A blue/green rollout ([`crate::blue_green`]).
    BlueGreen(BlueGreenState),
    /// A rolling rollout ([`crate::rolling`]); also what a first deploy and a change that
    /// only scales get under any strategy: with no stable release to compare against, or
    /// nothing new to try, they go straight to 100 %.
    Rolling(RolloutState),
}

/// One step of any strategy: the state to persist, the decision and the traffic split, and a
/// canary's current analysis.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceStep {
    /// The state to persist.
    pub state: ServiceRollout,
    /// What the shell does now.
    pub decision: Decision,
    /// How traffic is shared until the next step.
    pub traffic: Traffic,
    /// A canary's analysis of its current step.
    pub analysis: Option<crate::analysis::Analysis>,
}

impl ServiceRollout {
    /// The state machine for `service` going from `from` to `to` with `desired` replicas.
    /// `scale_only`: the shell found that nothing but the replica count changed. Canary and
    /// blue/green need a stable release that differs; otherwise (a first deploy, a scaling, no
    /// replicas) the change is rolled, with at least one surge slot so it can always move.
    pub fn for_service(
        from: Option<u64>,
        to: u64,
        service: &Service,
        scale_only: bool,
        now_ms: u64,
    ) -> Result<Self, RolloutError> {
        let r = &service.rollout;
        let desired = berth_spec::model::desired_replicas(service);
        let stable = from.filter(|f| *f != to && !scale_only && desired > 0);
        let deadline = r.progress_deadline.millis;
        match (r.strategy, stable) {
            (SpecStrategy::Rolling, _) => {
                RolloutState::for_service(from, to, service, now_ms).map(ServiceRollout::Rolling)
            }
            (SpecStrategy::Canary, Some(stable)) => {
                let steps = r
                    .steps
                    .as_ref()
                    .map(|v| v.iter().map(|b| b.0).collect())
                    .unwrap_or_else(|| vec![1_000, 5_000]);
                Ok(ServiceRollout::Canary(CanaryState::new(
                    stable,
                    to,
                    desired,
                    steps,
                    r.bake.map_or(300_000, |d| d.millis),
                    u64::from(r.min_requests.unwrap_or(300).max(1)),
                    r.on_failure.unwrap_or(OnFailure::Rollback),
                    deadline,
                    now_ms,
                )))
            }
            (SpecStrategy::BlueGreen, Some(stable)) => {
                Ok(ServiceRollout::BlueGreen(BlueGreenState::new(
                    stable,
                    to,
                    desired,
                    r.bake.map_or(60_000, |d| d.millis),
                    r.auto_promote.unwrap_or(true),
                    r.keep_previous.map_or(900_000, |d| d.millis),
                    deadline,
                    now_ms,
                )))
            }
            (_, None) => RolloutState::with_limits(
                from,
                to,
                desired,
                r.max_surge.resolve(desired, true).max(1),
                r.max_unavailable.resolve(desired, false),
                deadline,
                now_ms,
            )
            .map(ServiceRollout::Rolling),
        }
    }

    /// Steps the machine. `traffic` gives a canary its routers' counters (the others ignore it).
    pub fn step(
        &self,
        observed: &[Observed],
        traffic: &dyn TrafficWindow,
        now_ms: u64,
    ) -> ServiceStep {
        match self {
            ServiceRollout::Rolling(s) => {
                let (state, decision) = step(s, observed, now_ms);
                ServiceStep {
                    state: ServiceRollout::Rolling(state),
                    decision,
                    traffic: Traffic::Equal,
                    analysis: None,
                }
            }
            ServiceRollout::Canary(s) => {
                let t = crate::canary::step(s, observed, traffic, now_ms);
                ServiceStep {
                    state: ServiceRollout::Canary(t.state),
                    decision: t.decision,
                    traffic: t.traffic,
                    analysis: t.analysis,
                }
            }
            ServiceRollout::BlueGreen(s) => {
                let t = crate::blue_green::step(s, observed, now_ms);
                ServiceStep {
                    state: ServiceRollout::BlueGreen(t.state),
                    decision: t.decision,
                    traffic: t.traffic,
                    analysis: None,
                }
            }
        }
    }

    /// The traffic split the stored state implies, without stepping: what the routing table
    /// uses between passes. Rolling: every endpoint alike.
    pub fn traffic(&self, observed_new_healthy: u32) -> Traffic {
        match self {
            ServiceRollout::Rolling(_) => Traffic::Equal,
            ServiceRollout::Canary(s) => crate::canary::split(
                s.from_release,
                s.to_release,
                if s.step >= s.steps.len() && observed_new_healthy >= s.desired {
                    berth_spec::model::ALL_TRAFFIC
                } else {
                    s.current_share(observed_new_healthy)
                },
            ),
            ServiceRollout::BlueGreen(s) => crate::canary::split(
                s.from_release,
                s.to_release,
                match (&s.phase, s.switched_ms) {
                    (Phase::Failed { .. }, _) | (_, None) => 0,
                    _ => berth_spec::model::ALL_TRAFFIC,
                },
            ),
        }
    }

    /// Whether it failed by a person's abort or by the canary analysis, which vetoes the
    /// release's content (see the states' `vetoed`).
    pub fn vetoed(&self) -> bool {
        match self {
            ServiceRollout::Rolling(s) => s.vetoed,
            ServiceRollout::Canary(s) => s.vetoed,
            ServiceRollout::BlueGreen(s) => s.vetoed,
        }
    }

    /// The phase of whichever machine it is.
    pub fn phase(&self) -> &Phase {
        match self {
            ServiceRollout::Rolling(s) => &s.phase,
            ServiceRollout::Canary(s) => &s.phase,
            ServiceRollout::BlueGreen(s) => &s.phase,
        }
    }

    /// The release being rolled out.
    pub fn to_release(&self) -> u64 {
        match self {
            ServiceRollout::Rolling(s) => s.to_release,
            ServiceRollout::Canary(s) => s.to_release,
            ServiceRollout::BlueGreen(s) => s.to_release,
        }
    }

    /// The stable release (the one being replaced), if any.
    pub fn from_release(&self) -> Option<u64> {
        match self {
            ServiceRollout::Rolling(s) => s.from_release,
            ServiceRollout::Canary(s) => Some(s.from_release),
            ServiceRollout::BlueGreen(s) => Some(s.from_release),
        }
    }

    /// The strategy's stack-file name.
    pub fn strategy_name(&self) -> &'static str {
        match self {
            ServiceRollout::Rolling(_) => "rolling",
            ServiceRollout::Canary(_) => "canary",
            ServiceRollout::BlueGreen(_) => "blue_green",
        }
    }

    /// The rolling state, if it is one (what older code paths and tests look at).
    pub fn as_rolling(&self) -> Option<&RolloutState> {
        match self {
            ServiceRollout::Rolling(s) => Some(s),
            _ => None,
        }
    }
}

impl From<RolloutState> for ServiceRollout {
    fn from(s: RolloutState) -> Self {
        ServiceRollout::Rolling(s)
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
