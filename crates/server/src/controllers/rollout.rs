//! The rollout controller: moves a progressing rollout forward, one region wave at a time,
//! services in dependency order (both decided in `berth_rollout::waves`), each service through
//! its strategy's state machine. A failed target rolls back automatically, only to a release
//! that once went live ([`berth_rollout::rollback_target`]); the releases' statuses follow the
//! outcome. Pure: a function of the view, the facts and the clock.

use std::collections::BTreeSet;

use berth_api::control::{Release, ReleaseStatus};
use berth_api::InstanceState;
use berth_rollout::analysis::ArmCounts;
use berth_rollout::canary::TrafficWindow;
use berth_rollout::{
    ObservedState, Phase as StepPhase, RolloutState, ServiceRollout, Traffic, WaveStep,
};
use berth_spec::model::{Service, WaveFailure};

use super::work::{RegionDemand, Work};
use super::{Batch, Effect, Pass};
use crate::placement::group_key;
use crate::state::{went_live, Desired, InstanceRecord, RolloutPhase, RolloutRecord, Versioned};
use crate::view::View;

/// What a pass concluded about the rollout as a whole.
pub(crate) enum Outcome {
    Nothing,
    /// The last wave finished: the target is live.
    Live,
    /// The target failed; the record now rolls back (or has failed for good).
    Failed {
        failed_release: u64,
        reason: String,
        /// By an abort or the canary analysis: the release's content is vetoed.
        vetoed: bool,
    },
}

/// The pass's decisions for one progressing rollout, or `None` when there is nothing to change
/// (or the rollout is not progressing: see [`super::replicas`]).
pub fn decide(view: &View, pass: Pass<'_>, rollout: &Versioned<RolloutRecord>) -> Option<Batch> {
    if rollout.value.phase != RolloutPhase::Progressing || rollout.value.halted.is_some() {
        return None;
    }
    let release = target_release(view, &rollout.value)?;
    let mut work = Work::new(view, pass, release);
    let next = progress(&mut work, rollout.value.clone());
    finish(work, rollout, Some(next))
}

/// How `service`'s traffic is shared between releases while `rollout` is the stack's rollout:
/// what its strategy's stored state says (rolling, or no state: every healthy instance alike),
/// with `new_healthy` routed endpoints of the new release. A rollback that replaces a failed
/// canary or blue/green release gives that release nothing.
pub fn service_traffic(rollout: &RolloutRecord, service: &str, new_healthy: u32) -> Traffic {
    let traffic = match rollout.services.get(service) {
        Some(state) if rollout.phase == RolloutPhase::Progressing => state.traffic(new_healthy),
        _ => Traffic::Equal,
    };
    match (rollout.out_of_traffic, traffic) {
        (Some(bad), Traffic::Equal) if rollout.phase == RolloutPhase::Progressing => {
            Traffic::PerRelease(std::collections::BTreeMap::from([
                (rollout.to, berth_spec::model::ALL_TRAFFIC),
                (bad, 0),
            ]))
        }
        (_, t) => t,
    }
}

/// The weight of each of the `endpoints` routed endpoints of `release` under `traffic`: 100
/// each when every endpoint is alike; otherwise the release's share in basis points divided
/// among its endpoints (at least 1 while the share is not 0), which is how routers that split
/// by summed endpoint weights honour the share.
pub fn endpoint_weight(traffic: &Traffic, release: u64, endpoints: usize) -> u32 {
    match traffic {
        Traffic::Equal => berth_rollout::strategy::EQUAL_WEIGHT,
        Traffic::PerRelease(_) => {
            let share = traffic.endpoint_weight(release);
            let n = u32::try_from(endpoints.max(1)).unwrap_or(u32::MAX);
            if share == 0 {
                0
            } else {
                (share / n).max(1)
            }
        }
    }
}

/// A canary's view of the routers' counters for one service: the facts' traffic source with
/// the stack, the service and the pass's clock bound.
struct Window<'a> {
    source: &'a dyn super::TrafficSource,
    stack: &'a str,
    service: &'a str,
    now: u64,
}

impl TrafficWindow for Window<'_> {
    fn window(&self, release: u64, since_ms: u64) -> ArmCounts {
        self.source
            .window(self.stack, self.service, release, since_ms, self.now)
    }
}

/// The rollout's target release, if it is still retained.
pub(crate) fn target_release<'v>(view: &'v View, record: &RolloutRecord) -> Option<&'v Release> {
    match view.release(&record.stack, &record.env, record.to) {
        Some(r) => Some(&r.value),
        None => {
            tracing::warn!(stack = %record.stack, env = %record.env, release = record.to, "the target release is gone from the store");
            None
        }
    }
}

/// Turns a pass's work on one rollout into its batch: the instance effects, the rollout's new
/// record (with why instances could not be placed, for `berth status`) and the release status
/// changes its outcome implies. `next` is `None` when the rollout record itself has nothing to
/// change.
pub(crate) fn finish(
    mut work: Work<'_>,
    stored: &Versioned<RolloutRecord>,
    mut next: Option<(RolloutRecord, Outcome)>,
) -> Option<Batch> {
    let unplaced = std::mem::take(&mut work.unplaced);
    if unplaced != stored.value.unplaced {
        let (mut record, outcome) =
            next.unwrap_or_else(|| (stored.value.clone(), Outcome::Nothing));
        record.unplaced = unplaced;
        next = Some((record, outcome));
    } else if let Some((record, _)) = &mut next {
        record.unplaced = unplaced;
    }
    let mut effects = std::mem::take(&mut work.effects);
    if let Some((record, outcome)) = next {
        if record != stored.value || !effects.is_empty() {
            release_effects(work.view, &record, &outcome, &mut effects);
            // Every write of the rollout compares the record it was decided from: a pass from a
            // view older than the previous pass's own write fails instead of repeating it.
            effects.push(Effect::PutRollout {
                record,
                from_revision: stored.mod_revision,
            });
        }
    }
    (!effects.is_empty()).then_some(Batch { effects })
}

/// Release status changes that go with a rollout's outcome. Each starts from the release as its
/// record holds it ([`View::release_record`]: image pins live in their own keys, so a status
/// write never copies them into the record) and compares the record's `mod_revision`, so a
/// status write decided from an older read fails instead of undoing a newer one.
fn release_effects(
    view: &View,
    record: &RolloutRecord,
    outcome: &Outcome,
    effects: &mut Vec<Effect>,
) {
    let set = |r: &Versioned<Release>, status: ReleaseStatus, reason: Option<String>| {
        let mut release = view
            .release_record(&r.value.stack, &r.value.env, r.value.number)
            .map(|v| v.value)
            .unwrap_or_else(|| r.value.clone());
        release.status = status;
        if reason.is_some() {
            release.reason = reason;
        }
        Effect::SetReleaseStatus {
            release,
            from_revision: r.mod_revision,
        }
    };
    let all = view.releases_of(&record.stack, &record.env);
    match outcome {
        Outcome::Nothing => {}
        Outcome::Live => {
            // Every other release that was live or rolling out is now superseded. One that was
            // still rolling out says so: it never went live, so it is no rollback target.
            for r in all.into_iter().flat_map(|a| a.values()) {
                if r.value.number == record.to {
                    if r.value.status != ReleaseStatus::Live {
                        effects.push(set(r, ReleaseStatus::Live, None));
                    }
                    continue;
                }
                match r.value.status {
                    ReleaseStatus::Live => effects.push(set(r, ReleaseStatus::Superseded, None)),
                    ReleaseStatus::RollingOut => {
                        let why = format!(
                            "replaced by release {} before its rollout finished",
                            record.to
                        );
                        effects.push(set(r, ReleaseStatus::Superseded, Some(why)))
                    }
                    ReleaseStatus::Superseded | ReleaseStatus::Failed => {}
                }
            }
        }
        Outcome::Failed {
            failed_release,
            reason,
            vetoed,
        } => {
            if let Some(r) = view.release(&record.stack, &record.env, *failed_release) {
                let mut effect = set(r, ReleaseStatus::Failed, Some(reason.clone()));
                if let Effect::SetReleaseStatus { release, .. } = &mut effect {
                    release.vetoed |= *vetoed;
                }
                effects.push(effect);
            }
        }
    }
}

/// Moves a progressing rollout forward within its current wave.
fn progress(work: &mut Work<'_>, mut record: RolloutRecord) -> (RolloutRecord, Outcome) {
    let target = work.target();
    let regions = target.regions();
    let Some(region) = regions.get(record.wave).cloned() else {
        record.phase = RolloutPhase::Succeeded;
        return (record, Outcome::Live);
    };
    work.stop_unknown(&record, Some(&region));
    let mut demands: Vec<RegionDemand> = Vec::new();
    let mut old_demands: Vec<RegionDemand> = Vec::new();
    let mut old_groups = std::collections::BTreeSet::new();
    for name in berth_rollout::dependency_order(target) {
        if record.done.contains(&name) {
            continue;
        }
        let Some(service) = target.service_for_region(&name, &region) else {
            continue;
        };
        if !service.depends_on.iter().all(|d| record.done.contains(d)) {
            continue; // waits until its dependencies are healthy in this wave
        }
        let state = match record.services.get(&name) {
            Some(s) => s.clone(),
            None => match new_state(work.view, &record, &name, &region, &service, work.pass.now) {
                Ok(s) => s,
                Err(e) => return fail(work, record, format!("service {name}: {e}"), false, false),
            },
        };
        let instances = work.instances(&record, &name, &region);
        for r in &instances {
            let v = &r.value;
            // An old instance that failed is given up on at once: it serves nothing, and the
            // state machine ignores dead instances, so left alone it would keep its reservation
            // for as long as the rollout (or a rollback after it) lasts.
            if v.desired == Desired::Run
                && v.state() == InstanceState::Failed
                && !work.runs(v, &service)
            {
                work.set_desired(r, Desired::Drain);
            }
        }
        // The old instances' groups are demanded as they are (no new instance for them), so
        // the scheduler's call below stops those of them that are lost too; after every
        // target demand, so they never take room from the new instances.
        let target_group = group_key(&record.stack, &record.env, &region, &name, &service);
        for r in &instances {
            let v = &r.value;
            let group = group_key(&record.stack, &record.env, &region, &name, &v.spec.spec);
            if v.desired == Desired::Run && group != target_group && old_groups.insert(group) {
                old_demands.push(RegionDemand {
                    name: name.clone(),
                    service: v.spec.spec.clone(),
                    total: None,
                    more: 0,
                });
            }
        }
        // An instance on a node that is down is lost: the state machine does not see it (it
        // starts a replacement), and the scheduler's call below stops it.
        let node_up = work.pass.facts.node_up;
        let instances: Vec<_> = instances
            .into_iter()
            .filter(|r| r.value.desired != Desired::Run || node_up(&r.value.spec.node))
            .collect();
        let observed = observe(&instances, &service, &work.release.secrets, record.to);
        let window = Window {
            source: work.pass.facts.traffic,
            stack: &record.stack,
            service: &name,
            now: work.pass.now,
        };
        let step = state.step(&observed, &window, work.pass.now);
        let progressive = !matches!(step.state, ServiceRollout::Rolling(_));
        let live_new = observed
            .iter()
            .filter(|o| o.release == record.to && o.state.is_live())
            .count() as u32;
        demands.push(RegionDemand {
            name: name.clone(),
            service: service.clone(),
            total: None,
            more: step.decision.new_target.saturating_sub(live_new),
        });
        for id in &step.decision.stop {
            if let Some(rec) = work.view.instance(id) {
                work.set_desired(rec, Desired::Drain);
            }
        }
        match step.state.phase() {
            StepPhase::Succeeded => {
                record.done.insert(name.clone());
            }
            StepPhase::Failed { reason } => {
                // The agent's own words on the failing instance (e.g. the image it cannot pull).
                let why = instances
                    .iter()
                    .find(|r| reason.contains(r.value.spec.id.as_str()))
                    .and_then(|r| r.value.status.as_ref()?.message.clone());
                let reason = format!(
                    "service {name} in {region}: {reason}{}",
                    why.map(|m| format!(": {m}")).unwrap_or_default()
                );
                let vetoed = step.state.vetoed();
                return fail(work, record, reason, progressive, vetoed);
            }
            StepPhase::Progressing => {}
        }
        record.services.insert(name, step.state);
    }
    // One scheduler call for the wave's whole demand: it places the new instances and stops
    // the lost and misplaced ones (a draining node keeps what runs there while a rollout runs;
    // the replicas controller moves it once the rollout is done).
    demands.append(&mut old_demands);
    for (lost, _) in work.schedule_region(&record, &region, &demands, true) {
        work.set_desired(lost, Desired::Drain);
    }
    // Blue/green goes live at the switch: in the last wave, once every service is done or a
    // blue/green that switched, the target is live and only keep_previous is left.
    let live_at_switch = record.rollback_reason.is_none()
        && record.wave + 1 == regions.len()
        && target
            .services
            .keys()
            .filter(|name| target.service_for_region(name, &region).is_some())
            .all(|name| {
                record.done.contains(name)
                    || matches!(
                        record.services.get(name),
                        Some(ServiceRollout::BlueGreen(b))
                            if b.switched_ms.is_some() && b.phase == StepPhase::Progressing
                    )
            });
    let newly_live = live_at_switch && !record.live_at_switch;
    record.live_at_switch |= live_at_switch;
    let advance = berth_rollout::waves::advance(record.wave, record.done.len(), target);
    if advance != WaveStep::Stay && !wave_baked(work, &mut record) {
        return (record, Outcome::Nothing);
    }
    if advance != WaveStep::Stay && record.revert_wave {
        // The failed wave is back on the previous release: stop here and say so.
        let failed = record.from.unwrap_or_default();
        let done = regions.get(..record.wave).unwrap_or_default().join(", ");
        record.halted = Some(format!(
            "reverted wave {} ({region}) to release {} by waves.on_failure: revert_wave ({}); regions still on release {failed}: {done}; the rollout stops here",
            record.wave + 1,
            record.to,
            record.rollback_reason.as_deref().unwrap_or("failed"),
        ));
        record.services.clear();
        record.done.clear();
        record.out_of_traffic = None;
        tracing::warn!(stack = %record.stack, env = %record.env, release = failed, %region, "failed wave reverted, rollout halted");
        return (record, Outcome::Nothing);
    }
    match advance {
        WaveStep::Stay => {}
        WaveStep::Next(wave) => {
            record.wave = wave;
            record.services.clear();
            record.done.clear();
        }
        WaveStep::Finished => {
            record.wave = regions.len();
            record.services.clear();
            record.done.clear();
            record.phase = RolloutPhase::Succeeded;
            return (record, Outcome::Live);
        }
    }
    if newly_live {
        tracing::info!(stack = %record.stack, env = %record.env, release = record.to, "live at the blue/green switch; the previous release is kept out of traffic");
        return (record, Outcome::Live);
    }
    (record, Outcome::Nothing)
}

/// Whether the wave whose services are all done may hand over to the next one (or finish):
/// at once without `waves` in the environment (and for a rollback, which must be quick);
/// otherwise after `waves.bake` and `waves.min_requests` requests to the new release (summed
/// over the stack's routed services) since the wave was done.
fn wave_baked(work: &Work<'_>, record: &mut RolloutRecord) -> bool {
    let waves = work
        .target()
        .environment()
        .and_then(|(_, e)| e.waves.clone());
    let Some(waves) = waves.filter(|_| !record.rollback) else {
        return true;
    };
    let now = work.pass.now;
    let since = *record.wave_done_ms.get_or_insert(now);
    let baked = now.saturating_sub(since) >= waves.bake.millis;
    let requests: u64 = work
        .target()
        .services
        .iter()
        .filter(|(_, s)| s.route.is_some())
        .map(|(name, _)| {
            work.pass
                .facts
                .traffic
                .window(&record.stack, name, record.to, since, now)
                .requests
        })
        .sum();
    if baked && requests >= u64::from(waves.min_requests) {
        record.wave_done_ms = None;
        true
    } else {
        false
    }
}

/// The target failed: roll back to a release that once went live, or stop and say why there
/// is none (see [`berth_rollout::rollback_target`]: never to a release that did not go live,
/// and never a second automatic rollback in a row, so two failed releases cannot alternate).
/// `progressive`: a canary or blue/green release failed, so the rollback takes it out of
/// traffic at once. A failure in a later wave with `waves.on_failure: halt` stops where it is.
fn fail(
    work: &mut Work<'_>,
    record: RolloutRecord,
    reason: String,
    progressive: bool,
    vetoed: bool,
) -> (RolloutRecord, Outcome) {
    // Undo whatever this pass decided for the failed target.
    work.reset();
    let failed_release = record.to;
    let on_failure = work
        .target()
        .environment()
        .and_then(|(_, e)| e.waves.as_ref().map(|w| w.on_failure));
    if on_failure == Some(WaveFailure::Halt) && record.wave > 0 && !record.rollback {
        let mut halted = record.clone();
        let regions = work.target().regions();
        let done = regions.get(..record.wave).unwrap_or_default().join(", ");
        let region = regions.get(record.wave).cloned().unwrap_or_default();
        halted.halted = Some(format!(
            "halted in wave {} ({region}) by waves.on_failure: halt: {reason}; regions done on release {failed_release}: {done}",
            record.wave + 1
        ));
        tracing::warn!(stack = %record.stack, env = %record.env, release = failed_release, %reason, "rollout halted");
        return (
            halted,
            Outcome::Failed {
                failed_release,
                reason,
                vetoed,
            },
        );
    }
    let went_live: BTreeSet<u64> = work
        .view
        .releases_of(&record.stack, &record.env)
        .into_iter()
        .flat_map(|all| all.values())
        .filter(|r| went_live(&r.value))
        .map(|r| r.value.number)
        .collect();
    let target = berth_rollout::rollback_target(
        failed_release,
        record.from,
        record.rollback_reason.is_some(),
        &went_live,
    );
    let next = match target {
        Ok(previous) => {
            let mut back = RolloutRecord::new(
                &record.stack,
                &record.env,
                Some(record.to),
                previous,
                work.pass.now,
            );
            back.rollback_reason = Some(format!("release {failed_release} failed: {reason}"));
            back.rollback = true;
            // revert_wave: only the failed wave's region goes back; the earlier waves keep the
            // new release (a failure in the first wave reverts everything there is to revert).
            if on_failure == Some(WaveFailure::RevertWave) && record.wave > 0 && !record.rollback {
                back.wave = record.wave;
                back.revert_wave = true;
            } else if progressive {
                // Not for revert_wave: the routers share traffic by release across regions,
                // and the earlier waves' regions keep serving the failed release; the failed
                // wave's instances stop as soon as the previous release is back there.
                back.out_of_traffic = Some(failed_release);
            }
            back
        }
        Err(none) => {
            tracing::warn!(stack = %record.stack, env = %record.env, release = failed_release, why = %none, "no automatic rollback");
            let mut failed = record.clone();
            failed.phase = RolloutPhase::Failed {
                reason: format!("{reason}; {none}"),
            };
            failed
        }
    };
    tracing::warn!(stack = %record.stack, env = %record.env, release = failed_release, %reason, "rollout failed");
    (
        next,
        Outcome::Failed {
            failed_release,
            reason,
            vetoed,
        },
    )
}

/// The state machine's view of a service's instances. An instance that runs the target's
/// spec with secrets at least as new as the target's versions counts as the target release (it
/// carries over unchanged, and after a rollback the old release's instances are exactly what is
/// wanted).
fn observe(
    instances: &[&Versioned<InstanceRecord>],
    target: &Service,
    secrets: &std::collections::BTreeMap<String, u64>,
    to: u64,
) -> Vec<berth_rollout::Observed> {
    instances
        .iter()
        .map(|r| {
            let v = &r.value;
            let matches = v.desired == Desired::Run && v.runs(target, secrets);
            let state = if v.desired == Desired::Drain {
                ObservedState::Draining
            } else {
                match v.state() {
                    InstanceState::Pending => ObservedState::Pending,
                    InstanceState::Starting => ObservedState::Starting,
                    InstanceState::Healthy => ObservedState::Healthy,
                    InstanceState::Unhealthy => ObservedState::Unhealthy,
                    InstanceState::Draining => ObservedState::Draining,
                    InstanceState::Stopped => ObservedState::Stopped,
                    InstanceState::Failed => ObservedState::Failed,
                }
            };
            berth_rollout::Observed {
                instance: v.spec.id.clone(),
                // Anything that does not match is old, even if it carries the target's number.
                release: if matches {
                    to
                } else if v.spec.release == to {
                    0
                } else {
                    v.spec.release
                },
                state,
                restarts: v.status.as_ref().map(|s| s.restarts).unwrap_or(0),
            }
        })
        .collect()
}

/// The state machine of one service's rollout: its strategy's (see
/// [`ServiceRollout::for_service`]: a first deploy or a change that only scales is rolled), or,
/// for a rollback, everything at once with no capacity lost.
fn new_state(
    view: &View,
    record: &RolloutRecord,
    name: &str,
    region: &str,
    service: &Service,
    now: u64,
) -> Result<ServiceRollout, berth_rollout::RolloutError> {
    let desired = super::replicas::desired_of(service);
    if record.rollback {
        return RolloutState::with_limits(
            record.from,
            record.to,
            desired,
            desired.max(1),
            0,
            service.rollout.progress_deadline.millis,
            now,
        )
        .map(ServiceRollout::Rolling);
    }
    // A canary or blue/green compares with, and falls back to, a release that went live: when
    // the release replaced had not (a deploy during an unfinished canary), the newest one that
    // did is the stable one, and the unfinished release's instances are simply old.
    let from = match record.from {
        Some(from) if service.rollout.strategy != berth_spec::model::Strategy::Rolling => {
            let releases = view.releases_of(&record.stack, &record.env);
            let went = |n: u64| {
                releases
                    .and_then(|all| all.values().find(|r| r.value.number == n))
                    .is_some_and(|r| crate::state::went_live(&r.value))
            };
            if went(from) {
                Some(from)
            } else {
                releases
                    .into_iter()
                    .flat_map(|all| all.values())
                    .filter(|r| r.value.number < record.to && crate::state::went_live(&r.value))
                    .map(|r| r.value.number)
                    .max()
                    .or(Some(from))
            }
        }
        other => other,
    };
    let scale_only = from.is_some_and(|from| {
        let (Some(old), Some(new)) = (
            view.release(&record.stack, &record.env, from),
            view.release(&record.stack, &record.env, record.to),
        ) else {
            return false;
        };
        let Some(mut old_service) = old.value.spec.service_for_region(name, region) else {
            return false;
        };
        old_service.replicas = service.replicas;
        old_service == *service && old.value.secrets == new.value.secrets
    });
    ServiceRollout::for_service(from, record.to, service, scale_only, now)
}

#[cfg(test)]
mod tests {
    use berth_api::control::ReleaseStatus;

    use crate::controllers::testing::{shop, World};
    use crate::state::RolloutPhase;

    fn status(w: &World, n: u64) -> ReleaseStatus {
        w.view
            .release("shop", "prod", n)
            .expect("release")
            .value
            .status
    }

    #[test]
    fn a_first_deploy_goes_live_with_its_replicas() {
        let mut w = World::new();
        w.node("a", None);
        w.node("b", None);
        w.deploy(&shop(3, "local", "1"), 1, None, false);
        w.settle(20);
        assert_eq!(w.running("web").len(), 3);
        assert_eq!(w.rollout().phase, RolloutPhase::Succeeded);
        assert_eq!(status(&w, 1), ReleaseStatus::Live);
    }

    #[test]
    fn a_new_release_replaces_the_old_and_supersedes_it() {
        let mut w = World::new();
        w.node("a", None);
        w.deploy(&shop(2, "local", "1"), 1, None, false);
        w.settle(20);
        w.deploy(&shop(2, "local", "2"), 2, Some(1), false);
        w.settle(30);
        let web = w.running("web");
        assert_eq!(web.len(), 2);
        assert!(web.iter().all(|r| r.spec.release == 2), "{web:?}");
        assert_eq!(status(&w, 1), ReleaseStatus::Superseded);
        assert_eq!(status(&w, 2), ReleaseStatus::Live);
    }

    #[test]
    fn a_failed_first_release_stops_and_says_there_is_nothing_to_roll_back_to() {
        let mut w = World::new();
        w.node("a", None);
        w.failing.insert(1);
        w.deploy(&shop(1, "local", "1"), 1, None, false);
        w.settle(20);
        match &w.rollout().phase {
            RolloutPhase::Failed { reason } => {
                assert!(reason.contains("nothing to roll back to"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(status(&w, 1), ReleaseStatus::Failed);
        assert!(w.running("web").is_empty());
    }

    #[test]
    fn a_failed_release_rolls_back_to_the_one_that_went_live() {
        let mut w = World::new();
        w.node("a", None);
        w.deploy(&shop(2, "local", "1"), 1, None, false);
        w.settle(20);
        w.failing.insert(2);
        w.deploy(&shop(2, "local", "2"), 2, Some(1), false);
        for _ in 0..10 {
            w.pass(7);
            w.agents();
            w.now += 1_000;
            if w.rollout().rollback {
                break;
            }
        }
        let r = w.rollout().clone();
        assert!(r.rollback, "{r:?}");
        assert_eq!((r.from, r.to), (Some(2), 1));
        assert_eq!(status(&w, 2), ReleaseStatus::Failed);
        w.settle(30);
        assert_eq!(w.rollout().phase, RolloutPhase::Succeeded);
        let web = w.running("web");
        assert_eq!(web.len(), 2);
        assert!(web.iter().all(|r| r.spec.release == 1), "{web:?}");
    }

    #[test]
    fn waves_reach_one_region_at_a_time() {
        let mut w = World::new();
        w.node("e", Some("eu"));
        w.node("u", Some("us"));
        w.deploy(&shop(1, "eu, us", "1"), 1, None, false);
        w.pass(1);
        let first: Vec<_> = w.running("web").iter().map(|r| r.region.clone()).collect();
        assert_eq!(first, ["eu"]);
        w.settle(20);
        let mut regions: Vec<_> = w.running("web").iter().map(|r| r.region.clone()).collect();
        regions.sort();
        assert_eq!(regions, ["eu", "us"]);
        assert_eq!(w.rollout().phase, RolloutPhase::Succeeded);
    }

    #[test]
    fn an_old_instance_on_a_lost_node_is_stopped_while_a_rollout_runs() {
        let mut w = World::new();
        w.node("a", None);
        w.node("b", None);
        w.deploy(&shop(2, "local", "1"), 1, None, false);
        w.settle(20);
        let on_b: Vec<String> = w
            .running("web")
            .iter()
            .filter(|r| r.spec.node == "b")
            .map(|r| r.spec.id.clone())
            .collect();
        assert!(!on_b.is_empty(), "the scheduler spreads over both nodes");
        w.up.remove("b");
        w.deploy(&shop(2, "local", "2"), 2, Some(1), false);
        w.pass(1);
        assert_eq!(w.rollout().phase, RolloutPhase::Progressing);
        for id in on_b {
            let r = &w.view.instance(&id).expect("still known").value;
            assert_eq!(r.desired, crate::state::Desired::Drain, "{id} is lost");
        }
    }

    #[test]
    fn a_pass_from_a_view_older_than_its_own_write_changes_nothing() {
        let mut w = World::new();
        w.node("a", None);
        w.deploy(&shop(2, "local", "1"), 1, None, false);
        let batches = w.decide(1);
        assert_eq!(w.apply(&batches), batches.len());
        // The same decisions again (a pass that read the view before the first one's write).
        assert_eq!(w.apply(&batches), 0);
        assert_eq!(w.running("web").len(), 2);
    }
}

#[cfg(test)]
mod progressive_tests {
    use berth_api::control::ReleaseStatus;
    use berth_rollout::{ServiceRollout, Traffic};

    use super::service_traffic;
    use crate::controllers::testing::World;
    use crate::state::RolloutPhase;

    fn canary(tag: &str) -> String {
        format!(
            r#"stack: shop
environments:
  prod:
    regions: [local]
services:
  web:
    process: {{command: [sleep, "{tag}"]}}
    replicas: 4
    resources: {{ cpu: 100m, memory: 64Mi }}
    rollout: {{ strategy: canary, steps: [10%, 50%], bake: 5s, min_requests: 20, progress_deadline: 1m }}
"#
        )
    }

    fn status(w: &World, n: u64) -> ReleaseStatus {
        w.view
            .release("shop", "prod", n)
            .expect("release")
            .value
            .status
    }

    fn live_of(w: &World, release: u64) -> usize {
        w.running("web")
            .iter()
            .filter(|r| r.spec.release == release)
            .count()
    }

    fn share(w: &World, release: u64) -> u32 {
        let new_healthy = live_of(w, w.rollout().to) as u32;
        match service_traffic(w.rollout(), "web", new_healthy) {
            Traffic::Equal => 0,
            t => t.endpoint_weight(release),
        }
    }

    /// Release 1 live (a first deploy goes straight to 100 %), then release 2 as a canary.
    fn started(rates: [(u64, u64); 2]) -> World {
        let mut w = World::new();
        w.node("a", None);
        w.node("b", None);
        w.deploy(&canary("1"), 1, None, false);
        w.settle(20);
        assert_eq!(live_of(&w, 1), 4, "the first deploy is not a canary");
        assert_eq!(status(&w, 1), ReleaseStatus::Live);
        w.traffic.0.insert(("web".into(), 1), rates[0]);
        w.traffic.0.insert(("web".into(), 2), rates[1]);
        w.deploy(&canary("2"), 2, Some(1), false);
        w
    }

    fn rounds(w: &mut World, n: usize) {
        for round in 0..n {
            w.pass(round as u64);
            w.agents();
            w.now += 1_000;
        }
    }

    #[test]
    fn a_good_canary_goes_through_its_steps_to_100_percent() {
        let mut w = started([(90, 10), (10, 10)]);
        rounds(&mut w, 3);
        assert!(matches!(
            w.rollout().services.get("web"),
            Some(ServiceRollout::Canary(_))
        ));
        assert_eq!(
            (live_of(&w, 1), live_of(&w, 2)),
            (4, 1),
            "one new beside all stable"
        );
        assert_eq!(share(&w, 2), 1_000);
        assert_eq!(share(&w, 1), 9_000);
        // 10 requests a second to the canary: 20 after 2 s, bake 5 s.
        rounds(&mut w, 6);
        assert_eq!(
            (live_of(&w, 1), live_of(&w, 2)),
            (4, 2),
            "step 2: ⌈4 × 50 %⌉"
        );
        assert_eq!(status(&w, 2), ReleaseStatus::RollingOut);
        // A baking step decides nothing: time must pass (settle would stop at the first quiet
        // pass).
        rounds(&mut w, 30);
        assert_eq!(w.rollout().phase, RolloutPhase::Succeeded);
        assert_eq!((live_of(&w, 1), live_of(&w, 2)), (0, 4));
        assert_eq!(status(&w, 2), ReleaseStatus::Live);
        assert_eq!(status(&w, 1), ReleaseStatus::Superseded);
    }

    /// The veto is a typed mark set where an abort or the analysis fails the release, not
    /// words read back from its reason: a crash whose agent message reads like an abort is a
    /// retry, not a veto.
    #[test]
    fn only_an_abort_or_the_analysis_vetoes_a_release() {
        let until_rollback = |w: &mut World| {
            for round in 0..10 {
                w.pass(round);
                w.agents();
                w.now += 1_000;
                if w.rollout().rollback {
                    break;
                }
            }
            assert!(w.rollout().rollback, "{:?}", w.rollout());
            w.view
                .release("shop", "prod", 2)
                .expect("release")
                .value
                .clone()
        };
        // The analysis fails it.
        let mut w = started([(90, 0), (10, 300)]);
        let failed = until_rollback(&mut w);
        assert!(crate::rollouts::vetoes(&failed), "{failed:?}");
        // A person aborts a healthy canary.
        let mut w = started([(90, 10), (10, 1)]);
        rounds(&mut w, 3);
        let mut record = w.rollout().clone();
        crate::rollouts::apply_command(
            &mut record,
            crate::rollouts::Command::Abort,
            "alice",
            w.now,
        )
        .expect("abort");
        w.put(
            &crate::keys::rollout("shop", "prod"),
            crate::state::encode(&record),
        );
        let aborted = until_rollback(&mut w);
        assert!(crate::rollouts::vetoes(&aborted), "{aborted:?}");
        // A crash whose message happens to say "aborted by" does not veto.
        let mut crash = w
            .view
            .release("shop", "prod", 1)
            .expect("release")
            .value
            .clone();
        crash.status = ReleaseStatus::Failed;
        crash.reason = Some(
            "service web in local: instance shop-web-1-0 failed after 3 restarts: aborted by signal 6 (SIGABRT)"
                .to_string(),
        );
        assert!(!crate::rollouts::vetoes(&crash), "a crash is a retry");
        // A record written before the mark existed (no `vetoed` key) still reads.
        let mut old = serde_json::to_value(&crash).expect("json");
        assert!(old.get("vetoed").is_none(), "not written when false");
        old["reason"] = serde_json::json!("aborted by alice at step 1");
        let old: berth_api::control::Release = serde_json::from_value(old).expect("old record");
        assert!(!old.vetoed);
    }

    #[test]
    fn a_bad_canary_is_rolled_back_out_of_traffic_at_step_one() {
        let mut w = started([(90, 0), (10, 300)]);
        for round in 0..10 {
            w.pass(round);
            w.agents();
            w.now += 1_000;
            if w.rollout().rollback {
                break;
            }
        }
        let r = w.rollout().clone();
        assert!(r.rollback, "{r:?}");
        assert_eq!((r.from, r.to, r.out_of_traffic), (Some(2), 1, Some(2)));
        assert_eq!(share(&w, 2), 0, "100 % stable from the verdict's table on");
        assert_eq!(share(&w, 1), 10_000);
        let failed = w
            .view
            .release("shop", "prod", 2)
            .expect("release")
            .value
            .clone();
        assert_eq!(failed.status, ReleaseStatus::Failed);
        let reason = failed.reason.unwrap_or_default();
        assert!(
            reason.contains("step 1 (10%)") && reason.contains("error rate"),
            "{reason}"
        );
        w.settle(20);
        assert_eq!((live_of(&w, 1), live_of(&w, 2)), (4, 0));
    }

    #[test]
    fn a_canary_without_traffic_pauses_and_neither_promotes_nor_fails() {
        let mut w = started([(0, 0), (0, 0)]);
        rounds(&mut w, 60);
        let Some(ServiceRollout::Canary(c)) = w.rollout().services.get("web") else {
            panic!("{:?}", w.rollout());
        };
        let why = c.paused.clone().unwrap_or_default();
        assert!(why.contains("insufficient data"), "{c:?}");
        assert_eq!(c.step, 0);
        assert_eq!(status(&w, 2), ReleaseStatus::RollingOut);
        assert_eq!((live_of(&w, 1), live_of(&w, 2)), (4, 1));
    }

    #[test]
    fn blue_green_comes_up_out_of_traffic_switches_and_keeps_the_old_release() {
        let bg = |tag: &str| {
            canary(tag).replace(
                "rollout: { strategy: canary, steps: [10%, 50%], bake: 5s, min_requests: 20, progress_deadline: 1m }",
                "rollout: { strategy: blue_green, bake: 3s, keep_previous: 10s, progress_deadline: 1m }",
            )
        };
        let mut w = World::new();
        w.node("a", None);
        w.node("b", None);
        w.deploy(&bg("1"), 1, None, false);
        w.settle(20);
        w.deploy(&bg("2"), 2, Some(1), false);
        rounds(&mut w, 2);
        assert_eq!(
            (live_of(&w, 1), live_of(&w, 2)),
            (4, 4),
            "full size beside the old"
        );
        assert_eq!(share(&w, 2), 0, "out of traffic before the switch");
        rounds(&mut w, 4);
        assert_eq!(share(&w, 2), 10_000, "switched after the bake");
        assert_eq!(live_of(&w, 1), 4, "the old release keeps running");
        rounds(&mut w, 15);
        assert_eq!(w.rollout().phase, RolloutPhase::Succeeded);
        assert_eq!((live_of(&w, 1), live_of(&w, 2)), (0, 4));
    }

    #[test]
    fn blue_green_goes_live_at_the_switch_and_keeps_the_old_release_out_of_traffic() {
        let bg = |tag: &str| {
            canary(tag).replace(
                "rollout: { strategy: canary, steps: [10%, 50%], bake: 5s, min_requests: 20, progress_deadline: 1m }",
                "rollout: { strategy: blue_green, bake: 3s, keep_previous: 10s, progress_deadline: 1m }",
            )
        };
        let mut w = World::new();
        w.node("a", None);
        w.node("b", None);
        w.deploy(&bg("1"), 1, None, false);
        w.settle(20);
        w.deploy(&bg("2"), 2, Some(1), false);
        rounds(&mut w, 2);
        assert_eq!(
            status(&w, 2),
            ReleaseStatus::RollingOut,
            "not before the switch"
        );
        rounds(&mut w, 4);
        assert_eq!(share(&w, 2), 10_000, "switched after the bake");
        assert_eq!(status(&w, 2), ReleaseStatus::Live, "live at the switch");
        assert_eq!(status(&w, 1), ReleaseStatus::Superseded);
        assert_eq!(share(&w, 1), 0, "the old release is out of traffic");
        assert_eq!(live_of(&w, 1), 4, "and still running for keep_previous");
        assert!(
            w.rollout().describe().starts_with("live"),
            "{}",
            w.rollout().describe()
        );
        rounds(&mut w, 15);
        assert_eq!(w.rollout().phase, RolloutPhase::Succeeded);
        assert_eq!((live_of(&w, 1), live_of(&w, 2)), (0, 4));
        assert_eq!(status(&w, 2), ReleaseStatus::Live);
    }

    #[test]
    fn a_wave_bakes_before_the_next_region_starts() {
        let yaml = canary("1").replace(
            "regions: [local]",
            "regions: [eu, us]\n    waves: { bake: 5s, min_requests: 0 }",
        );
        let mut w = World::new();
        w.node("e", Some("eu"));
        w.node("u", Some("us"));
        w.deploy(&yaml, 1, None, false);
        rounds(&mut w, 3);
        let regions = |w: &World| {
            let mut r: Vec<String> = w.running("web").iter().map(|r| r.region.clone()).collect();
            r.sort();
            r.dedup();
            r
        };
        assert_eq!(regions(&w), ["eu"], "eu is done and baking");
        assert!(w.rollout().wave_done_ms.is_some());
        rounds(&mut w, 6);
        assert_eq!(regions(&w), ["eu", "us"]);
    }

    /// Two regions, release 1 live in both, then release 2 whose instances fail only in `us`.
    fn failing_in_the_second_wave(on_failure: &str) -> World {
        let yaml = |tag: &str| {
            shop_waves(tag).replace(
                "waves: { bake: 0s, min_requests: 0 }",
                &format!("waves: {{ bake: 0s, min_requests: 0, on_failure: {on_failure} }}"),
            )
        };
        let mut w = World::new();
        w.node("e", Some("eu"));
        w.node("u", Some("us"));
        w.deploy(&yaml("1"), 1, None, false);
        rounds(&mut w, 8);
        assert_eq!(status(&w, 1), ReleaseStatus::Live);
        w.failing_on.insert((2, "u".to_string()));
        w.deploy(&yaml("2"), 2, Some(1), false);
        rounds(&mut w, 12);
        w
    }

    fn shop_waves(tag: &str) -> String {
        format!(
            r#"stack: shop
environments:
  prod:
    regions: [eu, us]
    waves: {{ bake: 0s, min_requests: 0 }}
services:
  web:
    process: {{command: [sleep, "{tag}"]}}
    replicas: 1
    resources: {{ cpu: 100m, memory: 64Mi }}
    placement: {{ constraints: ["region == ${{region}}"] }}
    rollout: {{ progress_deadline: 1m }}
"#
        )
    }

    fn by_region(w: &World) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = w
            .running("web")
            .iter()
            .map(|r| (r.region.clone(), r.spec.release))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_failure_in_a_later_wave_reverts_every_region_by_default() {
        let w = failing_in_the_second_wave("revert_all");
        assert_eq!(status(&w, 2), ReleaseStatus::Failed);
        let failed = w
            .view
            .release("shop", "prod", 2)
            .expect("release")
            .value
            .clone();
        assert!(
            failed.reason.unwrap_or_default().contains("in us"),
            "the reason names the region"
        );
        assert_eq!(w.rollout().to, 1, "{:?}", w.rollout());
        assert_eq!(
            by_region(&w),
            [("eu".to_string(), 1), ("us".to_string(), 1)]
        );
    }

    #[test]
    fn halt_stops_where_it_is_and_says_so() {
        let w = failing_in_the_second_wave("halt");
        let r = w.rollout();
        let why = r.halted.clone().unwrap_or_default();
        assert!(
            why.contains("halted in wave 2 (us)") && why.contains("regions done on release 2: eu"),
            "{r:?}"
        );
        assert_eq!(r.to, 2, "no rollback");
        assert_eq!(status(&w, 2), ReleaseStatus::Failed);
        assert!(
            by_region(&w).contains(&("eu".to_string(), 2)),
            "eu keeps release 2: {:?}",
            by_region(&w)
        );
    }

    /// A canary in waves that fails in the second region: with revert_wave the failed release
    /// is not taken out of traffic, since eu keeps serving it.
    #[test]
    fn a_reverted_canary_wave_leaves_the_earlier_regions_in_traffic() {
        let yaml = |tag: &str| {
            shop_waves(tag)
                .replace(
                    "waves: { bake: 0s, min_requests: 0 }",
                    "waves: { bake: 0s, min_requests: 0, on_failure: revert_wave }",
                )
                .replace(
                    "rollout: { progress_deadline: 1m }",
                    "rollout: { strategy: canary, steps: [50%], bake: 1s, min_requests: 1, progress_deadline: 1m }",
                )
        };
        let mut w = World::new();
        w.node("e", Some("eu"));
        w.node("u", Some("us"));
        w.deploy(&yaml("1"), 1, None, false);
        rounds(&mut w, 8);
        assert_eq!(status(&w, 1), ReleaseStatus::Live);
        w.traffic.0.insert(("web".into(), 1), (100, 0));
        w.traffic.0.insert(("web".into(), 2), (100, 0));
        w.failing_on.insert((2, "u".to_string()));
        w.deploy(&yaml("2"), 2, Some(1), false);
        rounds(&mut w, 20);
        let r = w.rollout().clone();
        assert!(r.halted.is_some(), "{r:?}");
        assert_eq!(
            by_region(&w),
            [("eu".to_string(), 2), ("us".to_string(), 1)],
            "{r:?}"
        );
        assert_eq!(r.out_of_traffic, None, "eu's release 2 keeps serving");
    }

    #[test]
    fn revert_wave_reverts_only_the_failed_wave_and_stops() {
        let mut w = failing_in_the_second_wave("revert_wave");
        assert_eq!(status(&w, 2), ReleaseStatus::Failed);
        assert_eq!(
            by_region(&w),
            [("eu".to_string(), 2), ("us".to_string(), 1)],
            "eu stays on release 2, us is back on release 1: {:?}",
            w.rollout()
        );
        let r = w.rollout().clone();
        let why = r.halted.clone().unwrap_or_default();
        assert!(
            why.contains("reverted wave 2 (us) to release 1 by waves.on_failure: revert_wave")
                && why.contains("still on release 2: eu"),
            "{r:?}"
        );
        assert!(r.describe().contains("revert_wave"), "{}", r.describe());
        assert!(
            matches!(service_traffic(&r, "web", 1), Traffic::Equal),
            "eu's release 2 stays in traffic beside us's release 1"
        );
        // The rollout stops: more passes change nothing.
        rounds(&mut w, 6);
        assert_eq!(w.rollout(), &r);
        assert_eq!(
            by_region(&w),
            [("eu".to_string(), 2), ("us".to_string(), 1)]
        );
    }

    #[test]
    fn a_deploy_during_an_unfinished_canary_compares_with_the_release_that_went_live() {
        let mut w = started([(0, 0), (0, 0)]);
        rounds(&mut w, 3);
        w.deploy(&canary("3"), 3, Some(2), false);
        rounds(&mut w, 2);
        let Some(ServiceRollout::Canary(c)) = w.rollout().services.get("web") else {
            panic!("{:?}", w.rollout());
        };
        assert_eq!(
            (c.from_release, c.to_release),
            (1, 3),
            "stable is release 1, not the unfinished 2"
        );
        assert_eq!(share(&w, 1), 9_000);
        assert_eq!(share(&w, 2), 0, "the unfinished canary is out of traffic");
    }

    #[test]
    fn a_change_that_only_scales_is_not_a_canary() {
        let mut w = started([(0, 0), (0, 0)]);
        // Replace the canary deploy by a scale-only one: same spec, more replicas.
        let scaled = canary("1").replace("replicas: 4", "replicas: 5");
        w.deploy(&scaled, 3, Some(1), false);
        w.pass(1);
        assert!(
            matches!(
                w.rollout().services.get("web"),
                Some(ServiceRollout::Rolling(_))
            ),
            "{:?}",
            w.rollout()
        );
    }
}

#[cfg(test)]
mod budget_tests {
    use crate::controllers::testing::World;
    use crate::controllers::CREATE_BUDGET;

    #[test]
    fn a_huge_stack_gets_a_budget_of_instances_per_pass() {
        let mut w = World::new();
        w.node("a", None);
        let yaml = format!(
            r#"stack: shop
environments:
  prod:
    regions: [local]
services:
  web:
    process: {{command: [sleep, "1000"]}}
    replicas: {}
    resources: {{ cpu: 1m, memory: 1Mi }}
    rollout: {{ progress_deadline: 1h }}
"#,
            berth_spec::model::MAX_REPLICAS
        );
        w.deploy(&yaml, 1, None, false);
        w.pass(1);
        assert_eq!(w.running("web").len(), CREATE_BUDGET);
        w.pass(2);
        assert_eq!(w.running("web").len(), 2 * CREATE_BUDGET);
    }
}
