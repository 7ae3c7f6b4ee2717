//! The controllers over random event sequences — nodes lost and returning, instances failing,
//! deploys, rollbacks, drains — run on a [`World`] (a view, facts and simulated agents), with
//! each pass's effects applied to the view as the store would:
//!
//! - they never stop the last healthy instance of a service that is not being scaled down
//!   (checked after every pass);
//! - once the cluster can hold it again, they converge to the desired counts;
//! - at that point, a pass on its own result changes nothing.

use std::collections::BTreeMap;

use berth_api::InstanceState;
use proptest::prelude::*;

use super::testing::World;
use crate::state::{Desired, RolloutPhase};

const NODES: [&str; 3] = ["n0", "n1", "n2"];

#[derive(Debug, Clone)]
enum Event {
    /// One controller pass, the agents' reports, a second.
    Pass,
    NodeDown(usize),
    NodeUp(usize),
    /// `berth drain` (never of `n0`, so something can always take the instances).
    Drain(usize),
    /// The k-th instance to run is given up on by its agent.
    Fail(usize),
    /// A new release with this many replicas.
    Deploy(u32),
    /// `berth rollback`: a new release with the previous one's content, rolled back at once.
    Rollback,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => Just(Event::Pass),
        1 => (0..NODES.len()).prop_map(Event::NodeDown),
        1 => (0..NODES.len()).prop_map(Event::NodeUp),
        1 => (1..NODES.len()).prop_map(Event::Drain),
        1 => (0..8usize).prop_map(Event::Fail),
        1 => (1..4u32).prop_map(Event::Deploy),
        1 => Just(Event::Rollback),
    ]
}

/// Stack `shop` in two region waves: `db`, and `web` with `replicas` once `db` is healthy,
/// each rolled one at a time with no capacity lost.
fn stack(replicas: u32, version: u64) -> String {
    format!(
        r#"stack: shop
environments:
  prod:
    regions: [eu, us]
services:
  db:
    process: {{command: [sleep, "{version}"]}}
    resources: {{ cpu: 100m, memory: 64Mi }}
    rollout: {{ max_surge: 1, max_unavailable: 0, progress_deadline: 1m }}
  web:
    depends_on: [db]
    process: {{command: [sleep, "{version}"]}}
    replicas: {replicas}
    resources: {{ cpu: 100m, memory: 64Mi }}
    rollout: {{ max_surge: 1, max_unavailable: 0, progress_deadline: 1m }}
"#
    )
}

/// Healthy instances to run of each service, on nodes that are up.
fn healthy(w: &World) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in w.view.instances().values().map(|r| &r.value) {
        if r.desired == Desired::Run
            && r.state() == InstanceState::Healthy
            && w.up.contains(&r.spec.node)
        {
            *out.entry(r.spec.service.clone()).or_insert(0) += 1;
        }
    }
    out
}

/// Whether the pass stopped a healthy instance of `service` that was running on a node up.
fn stopped_healthy(w: &World, before: &World, service: &str) -> bool {
    before.view.instances().values().any(|r| {
        let v = &r.value;
        v.spec.service == service
            && v.desired == Desired::Run
            && v.state() == InstanceState::Healthy
            && before.up.contains(&v.spec.node)
            && w.view
                .instance(&v.spec.id)
                .is_none_or(|now| now.value.desired != Desired::Run)
    })
}

/// The desired count of `service` in the rollout's target, over every region (0 when it
/// failed for good).
fn desired(w: &World, service: &str) -> usize {
    let r = w.rollout();
    if matches!(r.phase, RolloutPhase::Failed { .. }) {
        return 0;
    }
    w.view
        .release("shop", "prod", r.to)
        .and_then(|rel| {
            let regions = rel.value.spec.regions().len();
            Some(
                berth_spec::model::desired_replicas(rel.value.spec.services.get(service)?) as usize
                    * regions,
            )
        })
        .unwrap_or(0)
}

fn run(events: &[Event]) -> Result<(), TestCaseError> {
    let mut w = World::new();
    for n in NODES {
        w.node(n, None);
    }
    let mut number = 1;
    w.deploy(&stack(2, number), number, None, false);
    let mut seed = 0;
    for e in events {
        match e {
            Event::Pass => {
                seed += 1;
                let before_healthy = healthy(&w);
                let before = w.clone();
                w.pass(seed);
                let after = healthy(&w);
                for (service, n) in before_healthy {
                    if n == 0 || !stopped_healthy(&w, &before, &service) {
                        continue;
                    }
                    prop_assert!(
                        after.get(&service).copied().unwrap_or(0) > 0 || desired(&w, &service) == 0,
                        "the pass stopped the last healthy instance of {service} (desired {}): {:?}",
                        desired(&w, &service),
                        w.rollout()
                    );
                }
                w.agents();
                w.now += 1_000;
            }
            Event::NodeDown(i) => {
                w.up.remove(NODES[*i]);
            }
            Event::NodeUp(i) => {
                w.up.insert(NODES[*i].to_string());
            }
            Event::Drain(i) => w.drain_node(NODES[*i]),
            Event::Fail(k) => {
                let ids: Vec<String> = w
                    .view
                    .instances()
                    .values()
                    .filter(|r| r.value.desired == Desired::Run)
                    .map(|r| r.value.spec.id.clone())
                    .collect();
                if let Some(id) = ids.get(k % ids.len().max(1)) {
                    let mut r = w.view.instance(id).expect("listed").value.clone();
                    r.status = Some(super::testing::status(id, InstanceState::Failed, w.now));
                    w.put(&crate::keys::instance(id), crate::state::encode(&r));
                }
            }
            Event::Deploy(replicas) => {
                let from = w.rollout().to;
                number += 1;
                w.deploy(&stack(*replicas, number), number, Some(from), false);
            }
            Event::Rollback => {
                let from = w.rollout().to;
                let Some(previous) = w.view.release("shop", "prod", from.saturating_sub(1)) else {
                    continue;
                };
                let spec = previous.value.spec.clone();
                number += 1;
                w.deploy_spec(spec, number, Some(from), true);
            }
        }
    }
    // The cluster can hold the release again: every node back.
    for n in NODES {
        w.up.insert(n.to_string());
    }
    w.settle(200);
    let r = w.rollout().clone();
    prop_assert!(r.phase != RolloutPhase::Progressing, "{r:?}");
    for service in ["db", "web"] {
        let want = desired(&w, service);
        let running: Vec<_> = w
            .running(service)
            .into_iter()
            .filter(|i| !w.view.node(&i.spec.node).is_some_and(|n| n.value.draining))
            .collect();
        prop_assert_eq!(running.len(), want, "rollout {:?}: {:?}", r, running);
        prop_assert!(
            running.iter().all(|i| i.spec.release == r.to
                || w.view
                    .release("shop", "prod", i.spec.release)
                    .is_some_and(|rel| {
                        let target = &w.view.release("shop", "prod", r.to).expect("target").value;
                        rel.value.spec.services.get(service) == target.spec.services.get(service)
                    })),
            "instances of another release remain: {:?}",
            running
        );
        prop_assert!(
            w.running(service).len() == want,
            "instances remain on drained nodes: {:?}",
            w.running(service)
        );
    }
    prop_assert!(
        w.decide(9_999).is_empty(),
        "a pass on its own result changes something"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn controllers_converge_and_never_stop_the_last_healthy_instance(
        events in proptest::collection::vec(event(), 0..40)
    ) {
        run(&events)?;
    }
}
