//! The replicas controller: once a rollout has finished, hold each service's count in every
//! region. Instances the agent gave up on, that no longer run the release, or whose node is
//! down are replaced; instances on a draining node are replaced too, but each is only stopped
//! once enough replacements elsewhere are healthy (a drain costs no capacity); surplus is
//! stopped, and so is anything of a service or region the release no longer has. A rollout that
//! failed for good keeps no instances. Pure: a function of the view, the facts and the clock.

use std::collections::BTreeMap;

use berth_api::InstanceState;
use berth_scheduler::StopReason;
use berth_spec::model::Service;

use super::rollout::{finish, target_release};
use super::work::{RegionDemand, Work};
use super::{Batch, Pass};
use crate::state::{Desired, InstanceRecord, RolloutPhase, RolloutRecord, Versioned};
use crate::view::View;

/// How many instances of `service` the stack wants in each region: the one number every
/// reader of a service's count goes through. Today the stack file's (through
/// [`berth_spec::model::desired_replicas`]); an autoscaler will write what this reads.
pub fn desired(_view: &View, _stack: &str, _env: &str, service: &Service) -> u32 {
    desired_of(service)
}

/// [`desired`] where no view is at hand (a state machine being created from a service).
pub(crate) fn desired_of(service: &Service) -> u32 {
    berth_spec::model::desired_replicas(service)
}

/// The pass's decisions for one finished (or failed) rollout, or `None` when there is nothing
/// to change.
pub fn decide(view: &View, pass: Pass<'_>, rollout: &Versioned<RolloutRecord>) -> Option<Batch> {
    let record = &rollout.value;
    match record.phase {
        RolloutPhase::Progressing => None,
        RolloutPhase::Succeeded => {
            let release = target_release(view, record)?;
            let mut work = Work::new(view, pass, release);
            for region in release.spec.regions() {
                keep_counts(&mut work, record, region);
            }
            work.stop_unknown(record, None);
            finish(work, rollout, None)
        }
        RolloutPhase::Failed { .. } => {
            let release = target_release(view, record)?;
            let mut work = Work::new(view, pass, release);
            work.stop_all(record);
            finish(work, rollout, None)
        }
    }
}

/// Holds the replica count of every service of `record` in `region`, with one scheduler call
/// for the region's whole demand. Instances that are not the release's (another spec, older
/// secrets) or that their agent gave up on are stopped first; the scheduler then counts what
/// is left on usable nodes against each service's desired count, places what is missing and
/// names the rest to stop: lost (node down or gone), misplaced, surplus — and, on a draining
/// node, lost too, but those are kept until enough replacements are healthy.
fn keep_counts(work: &mut Work<'_>, record: &RolloutRecord, region: &str) {
    let target = work.target();
    let mut demands: Vec<RegionDemand> = Vec::new();
    let mut members: BTreeMap<String, Vec<&Versioned<InstanceRecord>>> = BTreeMap::new();
    for name in target.services.keys() {
        let Some(service) = target.service_for_region(name, region) else {
            continue;
        };
        let mut kept = Vec::new();
        for inst in work.instances(record, name, region) {
            let v = &inst.value;
            if v.desired != Desired::Run {
                continue;
            }
            if !work.runs(v, &service) || v.state() == InstanceState::Failed {
                work.set_desired(inst, Desired::Drain);
            } else {
                kept.push(inst);
            }
        }
        members.insert(name.clone(), kept);
        let want = desired(work.view, &record.stack, &record.env, &service);
        demands.push(RegionDemand {
            name: name.clone(),
            service,
            total: Some(want),
            more: want,
        });
    }
    let stops = work.schedule_region(record, region, &demands, false);
    for d in &demands {
        let group = members.remove(&d.name).unwrap_or_default();
        let stopped = |id: &str| {
            stops
                .iter()
                .find(|(r, _)| r.value.spec.id == id)
                .map(|(_, why)| *why)
        };
        let mut on_draining = Vec::new();
        let mut surplus = Vec::new();
        let mut alive = Vec::new();
        for r in group {
            match stopped(&r.value.spec.id) {
                None => alive.push(r),
                Some(StopReason::Surplus) => surplus.push(r),
                Some(StopReason::Lost)
                    if work.node_up(&r.value.spec.node)
                        && work.node_draining(&r.value.spec.node) =>
                {
                    on_draining.push(r)
                }
                Some(_) => work.set_desired(r, Desired::Drain),
            }
        }
        // The scheduler chose which surplus to stop for spread; among those and the rest, stop
        // what does not serve first, so a scale-down never stops a healthy instance while one
        // that is not healthy stays.
        let n = surplus.len();
        let mut pool: Vec<(&Versioned<InstanceRecord>, bool)> = surplus
            .into_iter()
            .map(|r| (r, true))
            .chain(alive.into_iter().map(|r| (r, false)))
            .collect();
        pool.sort_by_key(|(r, chosen)| (r.value.state() == InstanceState::Healthy, !chosen));
        let (stop, alive) = pool.split_at(n.min(pool.len()));
        for (r, _) in stop {
            work.set_desired(r, Desired::Drain);
        }
        let healthy_alive = alive
            .iter()
            .filter(|(r, _)| r.value.state() == InstanceState::Healthy)
            .count();
        let keep = (d.total.unwrap_or(0) as usize).saturating_sub(healthy_alive);
        // Keep the healthy ones on draining nodes as long as they are needed.
        on_draining.sort_by_key(|r| {
            (
                r.value.state() != InstanceState::Healthy,
                r.value.spec.id.clone(),
            )
        });
        for extra in on_draining.iter().skip(keep) {
            work.set_desired(extra, Desired::Drain);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::controllers::testing::{shop, World};
    use crate::state::Desired;

    fn live(w: &mut World, replicas: u32) {
        w.deploy(&shop(replicas, "local", "1"), 1, None, false);
        w.settle(20);
    }

    #[test]
    fn an_instance_on_a_lost_node_is_replaced_elsewhere() {
        let mut w = World::new();
        w.node("a", None);
        live(&mut w, 1);
        w.node("b", None);
        let lost = w.running("web")[0].spec.id.clone();
        let on = w.running("web")[0].spec.node.clone();
        w.up.remove(&on);
        w.settle(20);
        let web = w.running("web");
        assert_eq!(web.len(), 1);
        assert_ne!(web[0].spec.node, on);
        assert_ne!(
            w.view.instance(&lost).map(|r| r.value.desired),
            Some(Desired::Run)
        );
    }

    #[test]
    fn a_drained_node_keeps_its_instances_until_replacements_are_healthy() {
        let mut w = World::new();
        w.node("a", None);
        live(&mut w, 2);
        w.node("b", None);
        w.drain_node("a");
        // One pass: replacements are asked for, nothing on `a` stops yet.
        w.pass(1);
        let on_a = w
            .running("web")
            .iter()
            .filter(|r| r.spec.node == "a")
            .count();
        assert_eq!(on_a, 2, "nothing stops before a replacement is healthy");
        assert_eq!(w.running("web").len(), 4);
        w.settle(20);
        let web = w.running("web");
        assert_eq!(web.len(), 2);
        assert!(web.iter().all(|r| r.spec.node == "b"), "{web:?}");
    }

    #[test]
    fn instances_of_a_service_the_release_dropped_are_stopped() {
        let mut w = World::new();
        w.node("a", None);
        live(&mut w, 1);
        let two = r#"stack: shop
environments:
  prod:
    regions: [local]
services:
  api:
    process: {command: [sleep, "1"]}
"#;
        w.deploy(two, 2, Some(1), false);
        w.settle(20);
        assert!(w.running("web").is_empty());
        assert_eq!(w.running("api").len(), 1);
    }

    #[test]
    fn a_failed_instance_is_replaced() {
        let mut w = World::new();
        w.node("a", None);
        live(&mut w, 1);
        let id = w.running("web")[0].spec.id.clone();
        let mut r = w.view.instance(&id).expect("instance").value.clone();
        r.status = Some(crate::controllers::testing::status(
            &id,
            berth_api::InstanceState::Failed,
            w.now,
        ));
        w.put(&crate::keys::instance(&id), crate::state::encode(&r));
        w.settle(20);
        let web = w.running("web");
        assert_eq!(web.len(), 1);
        assert_ne!(web[0].spec.id, id);
    }
}
