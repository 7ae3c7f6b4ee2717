//! The blue/green rollout: the new release comes up at full size out of traffic (answering only
//! on the preview host), and after `bake` of being fully healthy — or `berth rollout promote` —
//! all traffic switches at once. The old release keeps running, out of traffic, for
//! `keep_previous`, so a rollback in that time is a switch back that starts nothing.
//!
//! Pure, like [`crate::rolling::step`]; decisions are desired quantities.
//!
//! ## The rules, per step
//! 1. **Fail fast**, as rolling: a new instance that fails or crash-loops fails the rollout.
//! 2. **Up, out of traffic.** The new release gets `desired` instances; the old keeps all of
//!    its own; traffic stays 100 % on the old release.
//! 3. **Ready** when all `desired` new instances are healthy (a flap resets it). Before that,
//!    more than `progress_deadline` without progress fails the rollout.
//! 4. **Switch** once ready for `bake` with `auto_promote`, or on
//!    [`BlueGreenState::promote`]: 100 % to the new release, on every router at once (one
//!    routing table).
//! 5. **Keep previous.** `keep_previous` after the switch, the old instances are stopped; when
//!    none is left, Succeeded.
//! 6. **Failed** (or [`BlueGreenState::abort`], before or after the switch): 100 % to the old
//!    release, whose instances are still running, and the new ones stopped.

use std::collections::BTreeSet;

use berth_spec::model::ALL_TRAFFIC;
use serde::{Deserialize, Serialize};

use crate::canary::{split, Arms};
use crate::observe::Observed;
use crate::rolling::{failing_of, failure_reason, seconds, Decision, Phase};
use crate::strategy::Traffic;

/// The persisted state of one blue/green rollout of one service in one region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlueGreenState {
    /// The release in traffic until the switch.
    pub from_release: u64,
    /// The release switched to.
    pub to_release: u64,
    /// Instances of the new release (all up before the switch).
    pub desired: u32,
    /// How long the new release is fully healthy before an automatic switch.
    pub bake_ms: u64,
    /// Switch by itself after `bake_ms`; otherwise wait for [`BlueGreenState::promote`].
    pub auto_promote: bool,
    /// How long the old instances keep running after the switch.
    pub keep_previous_ms: u64,
    /// Without progress for longer than this before ready, the rollout fails.
    pub progress_deadline_ms: u64,
    /// When the rollout was created.
    pub started_ms: u64,
    /// When progress (a new instance healthy) last happened.
    pub last_progress_ms: u64,
    /// The most new instances seen healthy at once.
    pub best_healthy_new: u32,
    /// New instances already failing when the rollout first looked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_at_start: Option<BTreeSet<String>>,
    /// Since when all `desired` new instances have been healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_ms: Option<u64>,
    /// A person asked for the switch.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub promote: bool,
    /// When traffic switched to the new release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switched_ms: Option<u64>,
    /// Failed by a person's abort (`berth rollout abort`): the release's content is vetoed
    /// (deploying it again needs `--force`), unlike a crash or a timeout, which may be retried.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub vetoed: bool,
    /// Where the rollout is.
    pub phase: Phase,
}

/// One step of a blue/green rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlueGreenStep {
    /// The state to persist.
    pub state: BlueGreenState,
    /// What the shell does now.
    pub decision: Decision,
    /// How traffic is shared until the next step (basis points per release).
    pub traffic: Traffic,
}

impl BlueGreenState {
    /// A blue/green rollout from `from_release` to `to_release`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        from_release: u64,
        to_release: u64,
        desired: u32,
        bake_ms: u64,
        auto_promote: bool,
        keep_previous_ms: u64,
        progress_deadline_ms: u64,
        now_ms: u64,
    ) -> Self {
        BlueGreenState {
            from_release,
            to_release,
            desired,
            bake_ms,
            auto_promote,
            keep_previous_ms,
            progress_deadline_ms,
            started_ms: now_ms,
            last_progress_ms: now_ms,
            best_healthy_new: 0,
            failing_at_start: None,
            ready_ms: None,
            promote: false,
            switched_ms: None,
            vetoed: false,
            phase: Phase::Progressing,
        }
    }

    /// `berth rollout promote`: switch as soon as the new release is ready.
    pub fn promote(&mut self) {
        if self.phase == Phase::Progressing {
            self.promote = true;
        }
    }

    /// `berth rollout abort` or a rollback within `keep_previous`: switch back.
    pub fn abort(&mut self, reason: &str) {
        if self.phase == Phase::Progressing {
            self.vetoed = true;
            self.phase = Phase::Failed {
                reason: reason.to_string(),
            };
        }
    }

    /// When the shell should step again if nothing else happens.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        if self.phase.is_terminal() {
            return None;
        }
        Some(match (self.switched_ms, self.ready_ms) {
            (Some(at), _) => at.saturating_add(self.keep_previous_ms),
            (None, Some(at)) => at.saturating_add(self.bake_ms),
            (None, None) => self
                .last_progress_ms
                .saturating_add(self.progress_deadline_ms)
                .saturating_add(1),
        })
    }
}

/// One step of the blue/green rollout (see the module's rules).
pub fn step(state: &BlueGreenState, observed: &[Observed], now_ms: u64) -> BlueGreenStep {
    let mut next = state.clone();
    let arms = Arms::new(state.to_release, observed);
    let failing = failing_of(state.to_release, observed);
    let at_start = next
        .failing_at_start
        .get_or_insert_with(|| failing.iter().map(|o| o.instance.clone()).collect());
    let broken = failing
        .iter()
        .find(|o| !at_start.contains(&o.instance))
        .map(|o| failure_reason(o));
    if next.phase == Phase::Progressing {
        if let Some(reason) = broken {
            next.phase = Phase::Failed { reason };
        }
    }
    let (from, to) = (next.from_release, next.to_release);
    let mut stop = Vec::new();
    let mut new_target = next.desired;
    let traffic;
    match next.phase.clone() {
        Phase::Failed { .. } => {
            let (d, t) = crate::canary::failed(&arms, next.desired, from, to, next.phase.clone());
            new_target = d.new_target;
            stop = d.stop;
            traffic = t;
        }
        Phase::Succeeded => traffic = split(from, to, ALL_TRAFFIC),
        Phase::Progressing => {
            if arms.new_healthy > next.best_healthy_new {
                next.best_healthy_new = arms.new_healthy;
                next.last_progress_ms = next.last_progress_ms.max(now_ms);
            }
            if next.switched_ms.is_none() {
                if arms.new_healthy >= next.desired {
                    next.ready_ms.get_or_insert(now_ms);
                } else {
                    next.ready_ms = None;
                    if now_ms.saturating_sub(next.last_progress_ms) > next.progress_deadline_ms {
                        next.phase = Phase::Failed {
                            reason: format!(
                                "no progress for {}: {}/{} new instances healthy before the switch",
                                seconds(next.progress_deadline_ms),
                                arms.new_healthy,
                                next.desired
                            ),
                        };
                        return step(&next, observed, now_ms);
                    }
                }
                let baked = next
                    .ready_ms
                    .is_some_and(|at| now_ms.saturating_sub(at) >= next.bake_ms);
                if next.ready_ms.is_some() && (next.promote || (next.auto_promote && baked)) {
                    next.switched_ms = Some(now_ms);
                }
            }
            match next.switched_ms {
                None => traffic = split(from, to, 0),
                Some(at) => {
                    traffic = split(from, to, ALL_TRAFFIC);
                    if now_ms.saturating_sub(at) >= next.keep_previous_ms {
                        stop = Arms::ids(&arms.old_live);
                        if arms.old_live.is_empty() && arms.draining == 0 {
                            next.phase = Phase::Succeeded;
                        }
                    }
                }
            }
        }
    }
    BlueGreenStep {
        decision: Decision {
            new_target,
            stop,
            phase: next.phase.clone(),
        },
        state: next,
        traffic,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::ObservedState;

    fn world(old: usize, new: usize) -> Vec<Observed> {
        let o = |id: String, release| Observed {
            instance: id,
            release,
            state: ObservedState::Healthy,
            restarts: 0,
        };
        let mut v: Vec<Observed> = (0..old).map(|i| o(format!("o{i}"), 1)).collect();
        v.extend((0..new).map(|i| o(format!("n{i}"), 2)));
        v
    }

    #[test]
    fn switches_after_the_bake_and_keeps_the_old_release_running() {
        let s = BlueGreenState::new(1, 2, 2, 5_000, true, 60_000, 60_000, 0);
        let t = step(&s, &world(2, 0), 0);
        assert_eq!(t.decision.new_target, 2, "full size at once");
        assert_eq!(t.traffic.endpoint_weight(1), ALL_TRAFFIC);
        let t = step(&t.state, &world(2, 2), 1_000);
        assert_eq!(t.state.ready_ms, Some(1_000));
        assert_eq!(t.traffic.endpoint_weight(2), 0, "baking out of traffic");
        let t = step(&t.state, &world(2, 2), 6_000);
        assert_eq!(t.traffic.endpoint_weight(2), ALL_TRAFFIC, "switched");
        assert!(t.decision.stop.is_empty(), "old kept for keep_previous");
        let mut back = t.state.clone();
        back.abort("rolled back by alice");
        let b = step(&back, &world(2, 2), 7_000);
        assert_eq!(b.traffic.endpoint_weight(1), ALL_TRAFFIC, "a switch back");
        assert_eq!(b.decision.stop, ["n0", "n1"]);
        let t = step(&t.state, &world(2, 2), 66_000);
        assert_eq!(t.decision.stop, ["o0", "o1"]);
        let t = step(&t.state, &world(0, 2), 67_000);
        assert_eq!(t.state.phase, Phase::Succeeded);
    }

    /// Found by the property test: an abort once the old instances were stopped used to stop
    /// the new ones too, leaving nothing to serve.
    #[test]
    fn an_abort_after_keep_previous_keeps_serving_capacity() {
        let mut s = BlueGreenState::new(1, 2, 1, 0, true, 0, 60_000, 0);
        s = step(&s, &world(1, 1), 0).state;
        assert!(s.switched_ms.is_some());
        s.abort("aborted by a test");
        let t = step(&s, &world(0, 1), 1_000);
        assert!(
            t.decision.stop.is_empty(),
            "the new instance is all that serves"
        );
        assert_eq!(t.decision.new_target, 1);
        assert_eq!(t.traffic.endpoint_weight(2), ALL_TRAFFIC);
        let t = step(&s, &world(1, 1), 2_000);
        assert_eq!(
            t.decision.stop,
            ["n0"],
            "stopped once the old release is back"
        );
        assert_eq!(t.traffic.endpoint_weight(1), ALL_TRAFFIC);
    }

    #[test]
    fn without_auto_promote_it_waits_for_a_person() {
        let s = BlueGreenState::new(1, 2, 1, 0, false, 0, 60_000, 0);
        let t = step(&s, &world(1, 1), 100_000);
        assert_eq!(t.state.switched_ms, None);
        let mut s = t.state;
        s.promote();
        let t = step(&s, &world(1, 1), 100_001);
        assert_eq!(t.traffic.endpoint_weight(2), ALL_TRAFFIC);
    }
}
