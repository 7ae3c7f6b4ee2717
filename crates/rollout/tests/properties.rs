//! Property tests of the rolling rollout, driven through the simulated world.
//!
//! At every step, with random health delays, failures and outside events:
//! - our stops never take healthy capacity below `desired − max_unavailable` (drops the world
//!   causes on its own are not ours and are excluded by measuring right around `apply`);
//! - our starts never take live instances above `desired + max_surge`;
//! - `step` is deterministic, independent of observation order, and a fixed point when repeated.
//!
//! Without failures, every rollout succeeds within a bounded number of steps.

use berth_rollout::sim::{Fate, World};
use berth_rollout::{step, Observed, ObservedState, Phase, RolloutState};
use berth_spec::model::{Amount, Duration, Percent, Rollout};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const TICK_MS: u64 = 1000;
const MAX_AFTER: u32 = 5;
const MAX_DRAIN: u32 = 3;

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Release 1 → 2.
    Replace,
    /// Nothing → release 1.
    FirstDeploy,
    /// Release 1 → 1 with another replica count.
    Scale,
}

#[derive(Debug, Clone)]
struct Scenario {
    kind: Kind,
    desired: u32,
    existing: usize,
    surge: Amount,
    unavailable: Amount,
    drain: u32,
}

impl Scenario {
    fn releases(&self) -> (Option<u64>, u64) {
        match self.kind {
            Kind::Replace => (Some(1), 2),
            Kind::FirstDeploy => (None, 1),
            Kind::Scale => (Some(1), 1),
        }
    }

    /// The rollout, or `None` when the settings are (rightly) refused.
    fn state(&self) -> Option<RolloutState> {
        let (from, to) = self.releases();
        let rollout = Rollout::rolling(self.surge, self.unavailable, Duration::from_millis(60_000));
        RolloutState::new(from, to, self.desired, &rollout, 0).ok()
    }

    fn world(&self, fates: Vec<Fate>) -> World {
        let mut world = World::new(self.drain, fates);
        if !matches!(self.kind, Kind::FirstDeploy) {
            for _ in 0..self.existing {
                world.spawn(1, ObservedState::Healthy);
            }
        }
        world
    }

    /// Generous: every round (a new instance becoming healthy, or old ones stopping) takes at
    /// most `MAX_AFTER + MAX_DRAIN + 4` ticks, and there are at most `desired + existing + 2`.
    fn max_steps(&self) -> usize {
        let rounds = self.desired as usize + self.existing + 2;
        rounds * (MAX_AFTER + MAX_DRAIN + 4) as usize + 10
    }
}

fn amount() -> impl Strategy<Value = Amount> {
    prop_oneof![
        (0u32..4).prop_map(Amount::Count),
        (0u32..=100).prop_map(|p| Amount::Percent(Percent(p))),
    ]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        prop_oneof![
            4 => Just(Kind::Replace),
            1 => Just(Kind::FirstDeploy),
            1 => Just(Kind::Scale),
        ],
        0u32..9,
        0usize..11,
        amount(),
        amount(),
        0..=MAX_DRAIN,
    )
        .prop_map(
            |(kind, desired, existing, surge, unavailable, drain)| Scenario {
                kind,
                desired,
                existing,
                surge,
                unavailable,
                drain,
            },
        )
}

fn healthy_fate() -> impl Strategy<Value = Fate> {
    (0..=MAX_AFTER).prop_map(|after| Fate::Healthy { after })
}

fn any_fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        6 => healthy_fate(),
        1 => (0u32..3).prop_map(|after| Fate::Fails { after }),
        1 => (0u32..3).prop_map(|after| Fate::CrashLoops { after }),
    ]
}

/// Something the world does on its own at a given step, to some live instance.
fn outside_event() -> impl Strategy<Value = (usize, usize, ObservedState)> {
    (
        0usize..80,
        any::<usize>(),
        prop_oneof![
            Just(ObservedState::Unhealthy),
            Just(ObservedState::Failed),
            Just(ObservedState::Draining),
        ],
    )
}

fn count(observed: &[Observed], f: impl Fn(&Observed) -> bool) -> u32 {
    u32::try_from(observed.iter().filter(|o| f(o)).count()).unwrap_or(u32::MAX)
}

/// Runs the rollout to its end or `max_steps`, checking every invariant at every step, and
/// returns the final state and the world.
fn drive(
    mut state: RolloutState,
    mut world: World,
    events: &[(usize, usize, ObservedState)],
    max_steps: usize,
) -> Result<(RolloutState, World), TestCaseError> {
    let mut now = 0;
    for n in 0..max_steps {
        if n > 0 {
            world.tick();
            now += TICK_MS;
        }
        for (_, pick, to) in events.iter().filter(|(at, _, _)| *at == n) {
            let live: Vec<Observed> = world
                .observe()
                .into_iter()
                .filter(|o| o.state.is_live())
                .collect();
            if !live.is_empty() {
                world.set_state(&live[pick % live.len()].instance, *to);
            }
        }

        let observed = world.observe();
        let (next, decision) = step(&state, &observed, now);

        // Deterministic, order-independent, and a fixed point.
        prop_assert_eq!(
            step(&state, &observed, now),
            (next.clone(), decision.clone())
        );
        let reversed: Vec<Observed> = observed.iter().rev().cloned().collect();
        prop_assert_eq!(
            step(&state, &reversed, now),
            (next.clone(), decision.clone())
        );
        prop_assert_eq!(
            step(&next, &observed, now),
            (next.clone(), decision.clone())
        );
        prop_assert_eq!(&decision.phase, &next.phase);

        // Stops name live instances, once each.
        let mut stops = decision.stop.clone();
        stops.sort();
        stops.dedup();
        prop_assert_eq!(stops.len(), decision.stop.len());
        for id in &decision.stop {
            prop_assert!(observed
                .iter()
                .any(|o| &o.instance == id && o.state.is_live()));
        }

        let healthy_before = count(&observed, |o| o.state.is_healthy());
        let live_before = count(&observed, |o| o.state.is_live());
        let new_before = count(&observed, |o| {
            o.release == next.to_release && o.state.is_live()
        });
        world.apply(next.to_release, &decision);
        let after = world.observe();
        let healthy_after = count(&after, |o| o.state.is_healthy());
        let live_after = count(&after, |o| o.state.is_live());
        let new_after = count(&after, |o| {
            o.release == next.to_release && o.state.is_live()
        });

        prop_assert!(
            healthy_after >= healthy_before.min(state.floor()),
            "step {}: healthy {} → {} below floor {}: {:?}",
            n,
            healthy_before,
            healthy_after,
            state.floor(),
            decision
        );
        prop_assert!(
            live_after <= live_before.max(state.ceiling()),
            "step {}: live {} → {} above ceiling {}",
            n,
            live_before,
            live_after,
            state.ceiling()
        );
        if new_after > new_before {
            prop_assert!(
                live_after <= state.ceiling(),
                "step {}: started instances up to {} live, ceiling {}",
                n,
                live_after,
                state.ceiling()
            );
        }

        state = next;
        if state.phase.is_terminal() {
            break;
        }
    }
    Ok((state, world))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn invariants_hold_through_failures_and_outside_events(
        s in scenario(),
        fates in prop::collection::vec(any_fate(), 1..8),
        events in prop::collection::vec(outside_event(), 0..6),
    ) {
        let Some(state) = s.state() else {
            return Ok(());
        };
        let world = s.world(fates);
        drive(state, world, &events, s.max_steps())?;
    }

    #[test]
    fn without_failures_every_rollout_succeeds_in_bounded_steps(
        s in scenario(),
        fates in prop::collection::vec(healthy_fate(), 1..8),
    ) {
        let Some(state) = s.state() else {
            // Only a replacement with neither surge nor unavailability is refused.
            prop_assert!(matches!(s.kind, Kind::Replace) && s.desired > 0);
            return Ok(());
        };
        let desired = state.desired;
        let to = state.to_release;
        let (state, world) = drive(state, s.world(fates), &[], s.max_steps())?;
        prop_assert_eq!(&state.phase, &Phase::Succeeded);
        let end = world.observe();
        prop_assert_eq!(count(&end, |o| o.release == to && o.state.is_healthy()), desired);
        prop_assert_eq!(count(&end, |o| o.state.is_live()), desired);
        prop_assert_eq!(count(&end, |o| o.state == ObservedState::Draining), 0);
    }

    #[test]
    fn a_state_survives_serde_at_any_step(
        s in scenario(),
        fates in prop::collection::vec(any_fate(), 1..8),
        stop_at in 0usize..30,
    ) {
        let Some(state) = s.state() else {
            return Ok(());
        };
        let (state, world) = drive(state, s.world(fates), &[], stop_at)?;
        let stored = serde_json::to_string(&state)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let reloaded: RolloutState = serde_json::from_str(&stored)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&reloaded, &state);
        let observed = world.observe();
        let now = stop_at as u64 * TICK_MS;
        prop_assert_eq!(step(&reloaded, &observed, now), step(&state, &observed, now));
    }
}
