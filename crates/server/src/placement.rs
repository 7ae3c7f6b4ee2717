//! The server's side of placement: turning nodes and instance records into the scheduler's
//! snapshot (for the controllers, which call the scheduler once per rollout and region: see
//! `controllers::work`), and checking a
//! proposed release's placements for a plan (so a plan says what could not be placed, and why,
//! before anything is applied).

use berth_scheduler::{Capacity, Demand, Existing, GroupKey, Node as SchedNode, SchedulerConfig};
use berth_spec::model::{Service, Stack};

use crate::state::{InstanceRecord, NodeRecord, Snapshot};
use crate::{table, Shared};

/// The scheduler's group of an instance: its service in one stack, environment and region,
/// with the service's exact spec, so the instances of an old and a new release are counted
/// apart while a rollout replaces one with the other.
pub fn group_key(stack: &str, env: &str, region: &str, service: &str, spec: &Service) -> GroupKey {
    GroupKey::new(
        stack,
        env,
        region,
        &format!("{service}@{}", table::content_version(spec)),
    )
}

/// Whether new instances may go to the node: it is up and not draining.
pub fn node_usable(shared: &Shared, snapshot: &Snapshot, node: &str, now: u64) -> bool {
    snapshot.nodes.get(node).is_some_and(|n| !n.value.draining)
        && table::node_is_up(shared, node, now)
}

/// The nodes of one region wave (a node without a `region` label takes any region).
pub fn nodes_for_region(
    shared: &Shared,
    snapshot: &Snapshot,
    region: &str,
    now: u64,
) -> Vec<SchedNode> {
    region_nodes(snapshot.nodes.values().map(|n| &n.value), region, &|n| {
        (
            node_usable(shared, snapshot, &n.registration.name, now),
            false,
        )
    })
}

/// The scheduler's nodes of one region wave from any set of node records (a node without a
/// `region` label takes any region); `state` says, from the caller's facts, whether each is
/// ready (up, and not draining for what may leave it) and cordoned (ready for what runs there,
/// closed to new instances). Pure, so the controllers call it on a view.
pub fn region_nodes<'a>(
    nodes: impl Iterator<Item = &'a NodeRecord>,
    region: &str,
    state: &dyn Fn(&NodeRecord) -> (bool, bool),
) -> Vec<SchedNode> {
    nodes
        .filter(|n| {
            n.registration
                .labels
                .get("region")
                .is_none_or(|r| r == region)
        })
        .map(|n| {
            let reg = &n.registration;
            let (ready, cordoned) = state(n);
            SchedNode {
                name: reg.name.clone(),
                labels: reg.labels.clone(),
                ready,
                cordoned,
                drivers: reg.drivers.clone(),
                capacity: Capacity {
                    cpu_millis: reg.resources.cpu_millis,
                    memory_bytes: reg.resources.memory_bytes,
                },
            }
        })
        .collect()
}

/// Every instance that holds resources on a node: `pending` (decided but not yet stored) first,
/// then those in the snapshot that [hold resources](InstanceRecord::holds_resources) (not being
/// stopped, and not failed and given up on).
pub fn existing(snapshot: &Snapshot, pending: &[InstanceRecord]) -> Vec<Existing> {
    existing_of(snapshot.instances.values().map(|v| &v.value), pending)
}

/// [`existing`] from any set of instance records (a view's, in the controllers).
pub fn existing_of<'a>(
    instances: impl Iterator<Item = &'a InstanceRecord>,
    pending: &'a [InstanceRecord],
) -> Vec<Existing> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    // Group keys hash the service's whole spec (a JSON serialisation): computed once per
    // (stack, env, region, service, release) and reused for every instance whose spec is
    // equal, so a pass over 100,000 instances does not serialise 100,000 specs.
    type MemoKey<'k> = (&'k str, &'k str, &'k str, &'k str, u64);
    let mut memo: std::collections::HashMap<MemoKey<'a>, (&'a Service, GroupKey)> =
        std::collections::HashMap::new();
    for r in pending.iter().chain(instances) {
        // The first record of an id wins (a pending one over the stored one), also when it no
        // longer holds resources: a failed instance this pass gives up on must not come back
        // from the older record as one of its group.
        if !seen.insert(r.spec.id.clone()) || !r.holds_resources() {
            continue;
        }
        let at = (
            r.spec.stack.as_str(),
            r.env.as_str(),
            r.region.as_str(),
            r.spec.service.as_str(),
            r.spec.release,
        );
        let group = match memo.get(&at) {
            Some((spec, key)) if **spec == r.spec.spec => key.clone(),
            _ => {
                let key = group_key(at.0, at.1, at.2, at.3, &r.spec.spec);
                memo.insert(at, (&r.spec.spec, key.clone()));
                key
            }
        };
        out.push(existing_with_group(r, group));
    }
    out
}

/// One instance as the scheduler sees it.
pub fn existing_one(r: &InstanceRecord) -> Existing {
    let group = group_key(
        &r.spec.stack,
        &r.env,
        &r.region,
        &r.spec.service,
        &r.spec.spec,
    );
    existing_with_group(r, group)
}

/// [`existing_one`] with its group key already computed.
fn existing_with_group(r: &InstanceRecord, mut group: GroupKey) -> Existing {
    let host_ports = if r.spec.spec.image.is_some() {
        Vec::new()
    } else {
        r.spec
            .spec
            .ports
            .values()
            .copied()
            .filter(|p| *p != 0)
            .collect()
    };
    // One being drained still holds its node until its process is gone, but it is no longer
    // one of its group's instances: counted there, it would stand in for its own replacement.
    if r.desired != crate::state::Desired::Run {
        group.service.push_str("#leaving");
    }
    Existing {
        id: r.spec.id.clone(),
        node: r.spec.node.clone(),
        group,
        resources: Capacity::from(&r.spec.spec.resources),
        host_ports,
    }
}

/// For a plan: the services of `target` whose instances could not all be placed on the cluster
/// as it is now, one line each (`web in eu-west: 2 of 3 cannot be placed: 3 nodes: …`).
/// Instances of the same spec that already run count as placed.
pub fn check(shared: &Shared, snapshot: &Snapshot, target: &Stack, env: &str) -> Vec<String> {
    let now = shared.clock.now_ms();
    let existing = existing(snapshot, &[]);
    let mut lines = Vec::new();
    for region in target.regions() {
        let nodes = nodes_for_region(shared, snapshot, region, now);
        let names: Vec<&String> = target.services.keys().collect();
        let demands: Vec<Demand> = names
            .iter()
            .filter_map(|name| {
                let service = target.service_for_region(name, region)?;
                Some(Demand {
                    group: group_key(&target.stack, env, region, name, &service),
                    count: berth_spec::model::desired_replicas(&service),
                    service,
                })
            })
            .collect();
        let plan = berth_scheduler::schedule(&nodes, &existing, &demands, &SchedulerConfig::new(0));
        for f in &plan.failures {
            let name = demands
                .get(f.demand)
                .map(|d| {
                    d.group
                        .service
                        .split('@')
                        .next()
                        .unwrap_or_default()
                        .to_string()
                })
                .unwrap_or_default();
            let count = demands.get(f.demand).map(|d| d.count).unwrap_or(0);
            let why = f
                .explanation
                .as_ref()
                .map(|e| e.to_string())
                .unwrap_or_else(|| f.reason.clone());
            lines.push(format!(
                "{name} in {region}: {} of {count} cannot be placed: {why}",
                f.missing
            ));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::tests::instance;

    /// The memoised group keys are exactly the ones computed one by one, also for two records
    /// of one service and release whose specs differ.
    #[test]
    fn existing_of_gives_every_instance_its_own_specs_group() {
        let mut records: Vec<InstanceRecord> = (0..6)
            .map(|i| instance(&format!("i{i}"), "shop", "prod", "n1"))
            .collect();
        records[3].spec.spec.replicas += 1;
        records[5].spec.spec.env.insert("K".into(), "v".into());
        records[4].desired = crate::state::Desired::Stop;
        let memoised = existing_of(records.iter(), &[]);
        let one_by_one: Vec<Existing> = records
            .iter()
            .filter(|r| r.holds_resources())
            .map(existing_one)
            .collect();
        assert!(memoised.len() >= 5, "{}", memoised.len());
        assert_eq!(memoised.len(), one_by_one.len());
        for (a, b) in memoised.iter().zip(&one_by_one) {
            assert_eq!((&a.id, &a.group), (&b.id, &b.group));
        }
        let group = |id: &str| {
            memoised
                .iter()
                .find(|e| e.id == id)
                .map(|e| e.group.clone())
                .expect("listed")
        };
        assert_ne!(group("i3"), group("i0"));
        assert_ne!(group("i5"), group("i0"));
        assert_eq!(group("i1"), group("i0"));
    }
}
