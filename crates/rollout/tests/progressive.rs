//! Property tests of the canary and blue/green machines, driven through the simulated world,
//! with random health delays, failures, traffic (good or bad canaries, or none) and commands
//! from a person at random moments. At every step:
//! - the traffic weights sum to 100 % (10,000 basis points);
//! - healthy capacity never drops below the floor (`desired`: neither strategy stops a stable
//!   instance before the new release has `desired` healthy ones);
//! - replaying a step with the same inputs changes nothing (a fixed point);
//! - an abort (or any failure) ends at 100 % stable traffic and no new instance left running,
//!   whenever the stable release still has its instances (after they were replaced — the 100 %
//!   step, or past `keep_previous` — the failure keeps capacity instead, for the shell's
//!   rollback to restore the stable release first).
//!
//! A first deploy and a scale-only change go straight to 100 % (a rolling state).

use std::collections::BTreeMap;

use berth_rollout::analysis::ArmCounts;
use berth_rollout::canary::TrafficWindow;
use berth_rollout::sim::{Fate, World};
use berth_rollout::{ObservedState, Phase, ServiceRollout, Traffic};
use berth_spec::model::{BasisPoints, Duration, OnFailure, Service};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const TICK_MS: u64 = 1000;

/// Requests per second and 5xx per mille for each release, from `since` to the world's clock.
struct Rates {
    now_ms: u64,
    rates: BTreeMap<u64, (u64, u64)>,
}

impl TrafficWindow for Rates {
    fn window(&self, release: u64, since_ms: u64) -> ArmCounts {
        let secs = self.now_ms.saturating_sub(since_ms) / 1000;
        let (rps, per_mille) = self.rates.get(&release).copied().unwrap_or((0, 0));
        let requests = rps * secs;
        ArmCounts {
            requests,
            errors_5xx: requests * per_mille / 1000,
            p99_ms: Some(20),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Command {
    None,
    Pause,
    Resume,
    Promote,
    PromoteFull,
    Abort,
}

#[derive(Debug, Clone)]
struct Scenario {
    canary: bool,
    desired: u32,
    steps: Vec<u32>,
    bake_s: u64,
    on_failure_pause: bool,
    /// Per mille of 5xx of the new release (the stable one: 10).
    canary_errors: u64,
    /// Requests per second in all; 0 is "no traffic".
    rps: u64,
    fates: Vec<Fate>,
    commands: Vec<(usize, Command)>,
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        8 => (0u32..3).prop_map(|after| Fate::Healthy { after }),
        1 => (0u32..3).prop_map(|after| Fate::Fails { after }),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        Just(Command::None),
        Just(Command::Pause),
        Just(Command::Resume),
        Just(Command::Promote),
        Just(Command::PromoteFull),
        Just(Command::Abort),
    ]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        any::<bool>(),
        1u32..6,
        prop::collection::btree_set(1u32..10_000, 1..4),
        0u64..5,
        any::<bool>(),
        prop_oneof![Just(10u64), Just(300u64)],
        prop_oneof![Just(0u64), Just(200u64)],
        prop::collection::vec(fate(), 1..4),
        prop::collection::vec((0usize..60, command()), 0..3),
    )
        .prop_map(
            |(canary, desired, steps, bake_s, pause, errs, rps, fates, commands)| Scenario {
                canary,
                desired,
                steps: steps.into_iter().collect(),
                bake_s,
                on_failure_pause: pause,
                canary_errors: errs,
                rps,
                fates,
                commands,
            },
        )
}

fn service(s: &Scenario) -> Result<Service, TestCaseError> {
    let strategy = if s.canary { "canary" } else { "blue_green" };
    let src = format!(
        "stack: shop\nenvironments:\n  prod:\n    regions: [local]\nservices:\n  web:\n    process: {{command: [sleep, \"1\"]}}\n    replicas: {}\n    rollout: {{strategy: {strategy}}}\n",
        s.desired
    );
    let stack = berth_spec::render(src.as_bytes(), "prod", &[])
        .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
    let mut svc = stack.services["web"].clone();
    if s.canary {
        svc.rollout.steps = Some(s.steps.iter().copied().map(BasisPoints).collect());
        svc.rollout.min_requests = Some(50);
        svc.rollout.on_failure = Some(if s.on_failure_pause {
            OnFailure::Pause
        } else {
            OnFailure::Rollback
        });
    }
    svc.rollout.bake = Some(Duration::from_millis(s.bake_s * 1000));
    svc.rollout.keep_previous = Some(Duration::from_millis(5_000));
    Ok(svc)
}

fn sum(t: &Traffic) -> Option<u32> {
    match t {
        Traffic::Equal => None,
        Traffic::PerRelease(m) => Some(m.values().sum()),
    }
}

fn apply_command(state: &mut ServiceRollout, c: Command, now: u64) {
    match (state, c) {
        (ServiceRollout::Canary(s), Command::Pause) => s.pause("paused by a test"),
        (ServiceRollout::Canary(s), Command::Resume) => s.resume(now),
        (ServiceRollout::Canary(s), Command::Promote) => s.promote(false, now),
        (ServiceRollout::Canary(s), Command::PromoteFull) => s.promote(true, now),
        (ServiceRollout::Canary(s), Command::Abort) => s.abort("aborted by a test"),
        (ServiceRollout::BlueGreen(s), Command::Promote | Command::PromoteFull) => s.promote(),
        (ServiceRollout::BlueGreen(s), Command::Abort) => s.abort("aborted by a test"),
        _ => {}
    }
}

fn healthy_serving(world: &World) -> u32 {
    world
        .observe()
        .iter()
        .filter(|o| o.state == ObservedState::Healthy)
        .count() as u32
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn progressive_rollouts_keep_their_invariants(s in scenario()) {
        let svc = service(&s)?;
        let mut state = ServiceRollout::for_service(Some(1), 2, &svc, false, 0)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(state.strategy_name(), if s.canary { "canary" } else { "blue_green" });
        let mut world = World::new(1, s.fates.clone());
        for _ in 0..s.desired {
            world.spawn(1, ObservedState::Healthy);
        }
        let stable_share = s.rps * 9 / 10;
        let mut aborted = false;
        // Whether the stable release could take all traffic back when the rollout failed
        // (otherwise its instances were already being replaced, and the shell's rollback
        // brings them back before the new ones stop).
        let mut stable_carried = false;
        for i in 0..120usize {
            let now = i as u64 * TICK_MS;
            for (at, c) in &s.commands {
                if *at == i {
                    apply_command(&mut state, *c, now);
                    aborted |= matches!(c, Command::Abort) && !state.phase().is_terminal();
                }
            }
            let traffic = Rates {
                now_ms: now,
                rates: BTreeMap::from([(1, (stable_share, 10)), (2, (s.rps - stable_share, s.canary_errors))]),
            };
            let observed = world.observe();
            let out = state.step(&observed, &traffic, now);
            // Replaying the step changes nothing.
            let again = out.state.step(&observed, &traffic, now);
            prop_assert_eq!(&again.state, &out.state, "replay at step {}", i);
            prop_assert_eq!(&again.decision, &out.decision);
            prop_assert_eq!(&again.traffic, &out.traffic);
            prop_assert_eq!(sum(&out.traffic), Some(10_000), "weights at step {}", i);
            let stable_before = observed
                .iter()
                .filter(|o| o.release == 1 && o.state == ObservedState::Healthy)
                .count() as u32;
            if matches!(out.decision.phase, Phase::Failed { .. }) && stable_before >= s.desired {
                prop_assert_eq!(out.traffic.endpoint_weight(1), 10_000, "a failure is 100 % stable");
                prop_assert_eq!(out.decision.new_target, 0);
                stable_carried = true;
            }
            world.apply(2, &out.decision);
            // Our stops never take healthy capacity below the floor (only old ones are
            // stopped before the new release is at full strength, and failures are the new
            // release's own).
            let stable_healthy = world
                .observe()
                .iter()
                .filter(|o| o.release == 1 && o.state == ObservedState::Healthy)
                .count() as u32;
            let new_healthy = healthy_serving(&world) - stable_healthy;
            prop_assert!(
                stable_healthy + new_healthy >= s.desired,
                "capacity {}+{} below {} at step {}", stable_healthy, new_healthy, s.desired, i
            );
            state = out.state;
            world.tick();
            if state.phase().is_terminal() {
                break;
            }
        }
        if aborted {
            let failed = matches!(state.phase(), Phase::Failed { .. });
            prop_assert!(failed, "an abort fails the rollout");
        }
        if matches!(state.phase(), Phase::Failed { .. }) && stable_carried {
            // Two more steps drain what the failure stopped: nothing new is left.
            for k in 0..3u64 {
                let out = state.step(&world.observe(), &berth_rollout::canary::NoTraffic, 200_000 + k);
                prop_assert_eq!(out.traffic.endpoint_weight(1), 10_000);
                world.apply(2, &out.decision);
                world.tick();
                state = out.state;
            }
            let new_live = world.observe().iter().filter(|o| o.release == 2 && o.state.is_live()).count();
            prop_assert_eq!(new_live, 0);
        }
        if s.rps == 0 && s.canary && s.commands.is_empty() {
            prop_assert!(state.phase() != &Phase::Succeeded, "never promoted without data");
        }
    }
}

#[test]
fn a_first_deploy_and_a_scaling_go_straight_to_100_percent() {
    let s = Scenario {
        canary: true,
        desired: 3,
        steps: vec![1_000],
        bake_s: 1,
        on_failure_pause: false,
        canary_errors: 0,
        rps: 0,
        fates: vec![],
        commands: vec![],
    };
    let svc = service(&s).expect("service");
    for (from, to, scale_only) in [(None, 1, false), (Some(1), 1, false), (Some(1), 2, true)] {
        let state = ServiceRollout::for_service(from, to, &svc, scale_only, 0).expect("state");
        assert_eq!(state.strategy_name(), "rolling", "{from:?} → {to}");
        let out = state.step(&[], &berth_rollout::canary::NoTraffic, 0);
        assert_eq!(out.traffic, Traffic::Equal);
        assert_eq!(out.decision.new_target, 3);
    }
}

#[test]
fn stored_rolling_states_still_load() {
    let rolling =
        berth_rollout::RolloutState::with_limits(Some(1), 2, 3, 1, 0, 60_000, 0).expect("state");
    let json = serde_json::to_string(&rolling).expect("json");
    let back: ServiceRollout = serde_json::from_str(&json).expect("loads");
    assert_eq!(back, ServiceRollout::Rolling(rolling));
    assert_eq!(
        serde_json::to_string(&back).expect("json"),
        json,
        "stored the same"
    );
}
