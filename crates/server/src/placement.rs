//! The server's side of placement: turning the store's nodes and instances into the
//! scheduler's snapshot, placing one instance for the rollout controller, and checking a
//! proposed release's placements for a plan (so a plan says what could not be placed, and why,
//! before anything is applied).

use berth_scheduler::{Capacity, Demand, Existing, GroupKey, Node as SchedNode, SchedulerConfig};
use berth_spec::model::{Service, Stack};

use crate::state::{Desired, InstanceRecord, Snapshot};
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
    snapshot
        .nodes
        .values()
        .filter(|n| {
            n.value
                .registration
                .labels
                .get("region")
                .is_none_or(|r| r == region)
        })
        .map(|n| {
            let reg = &n.value.registration;
            SchedNode {
                name: reg.name.clone(),
                labels: reg.labels.clone(),
                ready: node_usable(shared, snapshot, &reg.name, now),
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
/// then those in the snapshot not being stopped.
pub fn existing(snapshot: &Snapshot, pending: &[InstanceRecord]) -> Vec<Existing> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for r in pending
        .iter()
        .chain(snapshot.instances.values().map(|v| &v.value))
    {
        if r.desired == Desired::Stop || !seen.insert(r.spec.id.clone()) {
            continue;
        }
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
        out.push(Existing {
            id: r.spec.id.clone(),
            node: r.spec.node.clone(),
            group: group_key(
                &r.spec.stack,
                &r.env,
                &r.region,
                &r.spec.service,
                &r.spec.spec,
            ),
            resources: Capacity::from(&r.spec.spec.resources),
            host_ports,
        });
    }
    out
}

/// Chooses the node for one more instance of `service` in `region`: ready nodes in the region
/// with the driver, room for the resources and fixed ports, meeting the constraints, spread as
/// the service asks. The scheduler's explanation when no node fits.
#[allow(clippy::too_many_arguments)]
pub fn place_one(
    shared: &Shared,
    snapshot: &Snapshot,
    pending: &[InstanceRecord],
    stack: &str,
    env: &str,
    region: &str,
    name: &str,
    service: &Service,
    seed: u64,
) -> Result<String, String> {
    let group = group_key(stack, env, region, name, service);
    let nodes = nodes_for_region(shared, snapshot, region, shared.clock.now_ms());
    let existing = existing(snapshot, pending);
    let alive = existing.iter().filter(|e| e.group == group).count() as u32;
    let demand = Demand {
        group,
        count: alive + 1,
        service: service.clone(),
    };
    let plan = berth_scheduler::schedule(
        &nodes,
        &existing,
        std::slice::from_ref(&demand),
        &SchedulerConfig::new(seed),
    );
    if let Some(node) = plan.placements.first().and_then(|p| nodes.get(p.node)) {
        return Ok(node.name.clone());
    }
    Err(explain(&plan).unwrap_or_else(|| format!("no node in region {region} can take it")))
}

fn explain(plan: &berth_scheduler::Plan) -> Option<String> {
    plan.failures.first().map(|f| {
        f.explanation
            .as_ref()
            .map(|e| e.to_string())
            .unwrap_or_else(|| f.reason.clone())
    })
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
                    count: service.replicas,
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
