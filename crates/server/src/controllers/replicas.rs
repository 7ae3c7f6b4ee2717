//! The replicas controller: once a rollout has finished, hold each service's count in every
//! region. Instances the agent gave up on, that no longer run the release, or whose node is
//! down are replaced; instances on a draining node are replaced too, but each is only stopped
//! once enough replacements elsewhere are healthy (a drain costs no capacity); surplus is
//! stopped, and so is anything of a service or region the release no longer has. A rollout that
//! failed for good keeps no instances. Pure: a function of the view, the facts and the clock.

use berth_api::InstanceState;
use berth_spec::model::Service;

use super::rollout::{finish, target_release};
use super::work::Work;
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

/// Holds the replica count of every service of `record` in `region`.
fn keep_counts(work: &mut Work<'_>, record: &RolloutRecord, region: &str) {
    let target = work.target();
    for name in target.services.keys() {
        let Some(service) = target.service_for_region(name, region) else {
            continue;
        };
        let instances = work.instances(record, name, region);
        let mut alive: Vec<&Versioned<InstanceRecord>> = Vec::new();
        let mut on_draining: Vec<&Versioned<InstanceRecord>> = Vec::new();
        for inst in instances {
            let v = &inst.value;
            if v.desired != Desired::Run {
                continue;
            }
            if !work.runs(v, &service)
                || v.state() == InstanceState::Failed
                || !work.node_up(&v.spec.node)
            {
                work.set_desired(inst, Desired::Drain);
            } else if work.node_draining(&v.spec.node) {
                on_draining.push(inst);
            } else {
                alive.push(inst);
            }
        }
        let want = desired(work.view, &record.stack, &record.env, &service) as usize;
        let missing = want.saturating_sub(alive.len());
        work.want(
            record,
            name,
            &service,
            u32::try_from(missing).unwrap_or(u32::MAX),
        );
        let healthy_alive = alive
            .iter()
            .filter(|r| r.value.state() == InstanceState::Healthy)
            .count();
        let keep = want.saturating_sub(healthy_alive);
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
        if alive.len() > want {
            alive.sort_by_key(|r| {
                (
                    r.value.state() == InstanceState::Healthy,
                    std::cmp::Reverse(r.value.spec.id.clone()),
                )
            });
            for extra in &alive[..alive.len() - want] {
                work.set_desired(extra, Desired::Drain);
            }
        }
    }
    work.place_wanted(record, region);
}
