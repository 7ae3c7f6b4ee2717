//! Unit tests of the explanation format and of small decisions; scenarios live in
//! `tests/scenarios.rs`, invariants in `tests/properties.rs`.

use berth_spec::model::DriverKind;

use crate::harness::{capacity, group, service, with_placement, Harness};
use crate::{Explanation, Reason, SchedulerConfig};

#[test]
fn explanation_reads_like_the_issue_example() {
    let e = Explanation {
        nodes: 3,
        reasons: vec![
            (Reason::Memory(512 << 20), 2),
            (Reason::Constraint("region == us-east".into()), 1),
        ],
    };
    assert_eq!(
        e.to_string(),
        "3 nodes: 2 lack 512Mi memory, 1 fails region == us-east"
    );
    let e = Explanation {
        nodes: 4,
        reasons: vec![
            (Reason::NotReady, 2),
            (Reason::MissingDriver(DriverKind::Docker), 1),
            (Reason::Port(8080), 1),
        ],
    };
    assert_eq!(
        e.to_string(),
        "4 nodes: 2 are not ready, 1 lacks the docker driver, 1 has port 8080 in use"
    );
    assert_eq!(Explanation::default().to_string(), "no nodes");
}

#[test]
fn a_failure_counts_every_node_under_its_first_failing_check() {
    let mut h = Harness::new(SchedulerConfig::new(1));
    h.add_node("a", &[("region", "us-east")], capacity(4, 1));
    h.add_node("b", &[("region", "us-east")], capacity(4, 1));
    h.add_node("c", &[("region", "eu-west")], capacity(4, 8));
    h.add_node("d", &[("region", "us-east")], capacity(4, 8));
    h.set_ready("d", false);
    let svc =
        with_placement(service(100, 2 << 30), &[], &["region == us-east"]).expect("constraint");
    h.demand(group("api"), 1, svc);
    let plan = h.run().clone();
    assert!(plan.placements.is_empty());
    assert_eq!(plan.failures.len(), 1);
    assert_eq!(plan.failures[0].missing, 1);
    assert_eq!(
        plan.failures[0].reason,
        "4 nodes: 2 lack 2Gi memory, 1 is not ready, 1 fails region == us-east"
    );
}

#[test]
fn auto_sample_grows_with_log2_of_the_cluster() {
    assert_eq!(SchedulerConfig::auto_sample(0), 8);
    assert_eq!(SchedulerConfig::auto_sample(100), 14);
    assert_eq!(SchedulerConfig::auto_sample(10_000), 28);
}

#[test]
fn a_repeated_group_is_refused_not_merged() {
    let mut h = Harness::new(SchedulerConfig::new(1));
    h.add_node("a", &[], capacity(4, 8));
    h.demand(group("api"), 1, service(100, 1 << 20));
    let d = h.demands[0].clone();
    h.demands.push(d);
    let plan = h.run().clone();
    assert_eq!(plan.placements.len(), 1);
    assert_eq!(plan.failures.len(), 1);
    assert!(plan.failures[0].explanation.is_none());
}

#[test]
fn a_cordoned_node_keeps_what_runs_there_and_takes_nothing_new() {
    let mut h = Harness::new(SchedulerConfig::new(1));
    h.add_node("a", &[], capacity(4, 8));
    h.add_node("b", &[], capacity(4, 8));
    h.demand(group("api"), 2, service(100, 1 << 20));
    h.run();
    let on_a = h.instances.iter().filter(|i| i.node == "a").count();
    for n in h.nodes.iter_mut().filter(|n| n.name == "a") {
        n.cordoned = true;
    }
    h.demand(group("api"), 4, service(100, 1 << 20));
    let plan = h.run().clone();
    assert!(plan.stops.is_empty(), "{:?}", plan.stops);
    assert_eq!(plan.placements.len(), 2);
    assert!(plan.placements.iter().all(|p| p.node == 1), "{plan:?}");
    assert_eq!(h.instances.iter().filter(|i| i.node == "a").count(), on_a);
}
