//! Scenario tests on the recording harness: each reads as a short story about a cluster.

use berth_scheduler::harness::{capacity, group, service, with_placement, Harness};
use berth_scheduler::{SchedulerConfig, StopReason, Strategy};

fn zones(h: &mut Harness, per_zone: usize) {
    for z in ["a", "b", "c"] {
        for i in 0..per_zone {
            h.add_node(
                &format!("{z}{i}"),
                &[("zone", z), ("region", "eu")],
                capacity(8, 16),
            );
        }
    }
}

fn spread_svc() -> berth_spec::model::Service {
    with_placement(service(250, 128 << 20), &["zone"], &[]).expect("placement")
}

fn counts(h: &Harness, label: &str) -> Vec<usize> {
    h.count_by(&group("web"), label).into_values().collect()
}

#[test]
fn six_instances_spread_over_three_zones_two_each_on_distinct_nodes() {
    let mut h = Harness::new(SchedulerConfig::new(7));
    zones(&mut h, 3);
    h.demand(group("web"), 6, spread_svc());
    let plan = h.run();
    assert_eq!(plan.placements.len(), 6);
    assert!(plan.failures.is_empty());
    assert_eq!(counts(&h, "zone"), vec![2, 2, 2]);
    assert!(h.count_by_node(&group("web")).values().all(|&n| n == 1));
    assert!(h.violations().is_empty(), "{:?}", h.violations());
    assert!(h.run().is_noop(), "planning again changes nothing");
}

#[test]
fn a_lost_node_is_replaced_elsewhere_and_nothing_is_double_counted() {
    let mut h = Harness::new(SchedulerConfig::new(3));
    zones(&mut h, 2);
    h.demand(group("web"), 6, spread_svc());
    h.run();
    let victim = h.instances[0].node.clone();
    let on_victim = h.count_by_node(&group("web"))[&victim];
    h.lose_node(&victim);
    let plan = h.run().clone();
    let lost = plan
        .stops
        .iter()
        .filter(|s| s.reason == StopReason::Lost)
        .count();
    assert_eq!(lost, on_victim);
    assert_eq!(plan.placements.len(), on_victim);
    assert!(plan.placed(&h.nodes, &h.demands).all(|(_, n)| n != victim));
    assert_eq!(h.alive(&group("web")), 6);
    assert_eq!(
        counts(&h, "zone"),
        vec![2, 2, 2],
        "the zone's other node takes it"
    );
    assert!(h.violations().is_empty(), "{:?}", h.violations());
}

#[test]
fn a_returning_node_has_its_extras_stopped_down_to_the_count() {
    let mut h = Harness::new(SchedulerConfig::new(5));
    zones(&mut h, 2);
    h.demand(group("web"), 6, spread_svc());
    h.run();
    let victim = h.instances[0].node.clone();
    h.lose_node(&victim);
    h.run();
    // The stops never reached it: its instance still runs, and now counts again.
    h.restore_node(&victim);
    assert_eq!(h.instances.len(), 7);
    let plan = h.run().clone();
    assert!(plan.placements.is_empty());
    assert_eq!(plan.stops.len(), 1);
    assert_eq!(plan.stops[0].reason, StopReason::Surplus);
    assert_eq!(h.alive(&group("web")), 6);
    assert_eq!(
        counts(&h, "zone"),
        vec![2, 2, 2],
        "the extra came from the crowded zone"
    );
    assert!(h.run().is_noop());
}

#[test]
fn draining_a_node_moves_its_instances() {
    let mut h = Harness::new(SchedulerConfig::new(11));
    zones(&mut h, 2);
    h.demand(group("web"), 3, spread_svc());
    h.run();
    let node = h.instances[0].node.clone();
    h.set_ready(&node, false);
    let plan = h.run().clone();
    assert_eq!(plan.stops.len(), 1);
    assert_eq!(plan.placements.len(), 1);
    assert!(
        h.instances.iter().all(|i| i.node != node),
        "the stop was applied"
    );
    assert_eq!(counts(&h, "zone"), vec![1, 1, 1]);
}

#[test]
fn binpack_fills_one_node_before_the_next() {
    let mut config = SchedulerConfig::new(2);
    config.strategy = Strategy::Binpack;
    let mut h = Harness::new(config);
    for n in ["n1", "n2", "n3"] {
        h.add_node(n, &[], capacity(4, 8));
    }
    h.demand(group("web"), 6, service(1000, 1 << 30));
    h.run();
    let by_node: Vec<usize> = h.count_by_node(&group("web")).into_values().collect();
    assert_eq!(
        by_node,
        vec![4, 2],
        "one node full, the next half full, one empty"
    );
    assert!(h.violations().is_empty());
}

#[test]
fn spread_strategy_puts_same_group_instances_on_distinct_nodes() {
    let mut h = Harness::new(SchedulerConfig::new(2));
    for n in ["n1", "n2", "n3"] {
        h.add_node(n, &[], capacity(4, 8));
    }
    h.demand(group("web"), 3, service(1000, 1 << 30));
    h.run();
    assert_eq!(h.count_by_node(&group("web")).len(), 3);
}

#[test]
fn constraints_hold_and_an_impossible_one_explains_itself() {
    let mut h = Harness::new(SchedulerConfig::new(9));
    h.add_node("e1", &[("region", "eu-west")], capacity(4, 8));
    h.add_node("e2", &[("region", "eu-west")], capacity(4, 8));
    h.add_node("u1", &[("region", "us-east")], capacity(4, 8));
    let eu = with_placement(
        service(100, 1 << 20),
        &[],
        &["region in [eu-west, ap-south]"],
    )
    .expect("constraint");
    let not_eu =
        with_placement(service(100, 1 << 20), &[], &["region != eu-west"]).expect("constraint");
    let nowhere =
        with_placement(service(100, 1 << 20), &[], &["region == mars"]).expect("constraint");
    h.demand(group("eu"), 4, eu);
    h.demand(group("us"), 2, not_eu);
    h.demand(group("mars"), 1, nowhere);
    let plan = h.run().clone();
    assert!(h.violations().is_empty(), "{:?}", h.violations());
    assert_eq!(h.alive(&group("eu")), 4);
    assert_eq!(
        h.count_by_node(&group("us")).keys().collect::<Vec<_>>(),
        ["u1"]
    );
    assert_eq!(plan.failures.len(), 1);
    assert_eq!(plan.failures[0].reason, "3 nodes: 3 fail region == mars");
    assert_eq!(
        plan.failures[0].to_string(),
        "shop/production/eu/mars: 1 missing: 3 nodes: 3 fail region == mars"
    );
}

#[test]
fn a_fixed_host_port_is_held_once_per_node() {
    let mut h = Harness::new(SchedulerConfig::new(4));
    h.add_node("n1", &[], capacity(4, 8));
    h.add_node("n2", &[], capacity(4, 8));
    let mut svc = service(100, 1 << 20);
    svc.ports.insert("http".into(), 8080);
    h.demand(group("web"), 3, svc.clone());
    let plan = h.run().clone();
    assert_eq!(plan.placements.len(), 2);
    assert_eq!(plan.failures[0].missing, 1);
    assert_eq!(plan.failures[0].reason, "2 nodes: 2 have port 8080 in use");
    // Another service asking for the same port conflicts too.
    h.demand(group("other"), 1, svc);
    let plan = h.run().clone();
    assert!(plan.placements.is_empty());
    assert!(h.violations().is_empty(), "{:?}", h.violations());
}

#[test]
fn a_label_change_that_breaks_a_constraint_moves_the_instance() {
    let mut h = Harness::new(SchedulerConfig::new(4));
    h.add_node("n1", &[("tier", "gold")], capacity(4, 8));
    h.add_node("n2", &[("tier", "gold")], capacity(4, 8));
    let svc = with_placement(service(100, 1 << 20), &[], &["tier == gold"]).expect("constraint");
    h.demand(group("web"), 1, svc);
    h.run();
    let node = h.instances[0].node.clone();
    for n in h.nodes.iter_mut().filter(|n| n.name == node) {
        n.labels.insert("tier".into(), "tin".into());
    }
    let plan = h.run().clone();
    assert_eq!(plan.stops[0].reason, StopReason::Misplaced);
    assert_eq!(plan.placements.len(), 1);
    assert!(h.violations().is_empty(), "{:?}", h.violations());
}

#[test]
fn scaling_down_stops_from_the_most_crowded_zone_first() {
    let mut h = Harness::new(SchedulerConfig::new(8));
    zones(&mut h, 3);
    h.demand(group("web"), 7, spread_svc());
    h.run();
    h.demand(group("web"), 4, spread_svc());
    let plan = h.run().clone();
    assert_eq!(plan.stops.len(), 3);
    let mut c = counts(&h, "zone");
    c.sort();
    assert_eq!(c, vec![1, 1, 2]);
    h.demand(group("web"), 0, spread_svc());
    h.run();
    assert_eq!(h.alive(&group("web")), 0);
}

#[test]
fn the_same_seed_gives_the_same_plan() {
    let build = || {
        let mut h = Harness::new(SchedulerConfig::new(42));
        for i in 0..40 {
            let z = ["a", "b", "c"][i % 3];
            h.add_node(&format!("n{i}"), &[("zone", z)], capacity(8, 16));
        }
        h.demand(group("web"), 30, spread_svc());
        h.run().clone()
    };
    assert_eq!(build(), build());
}

#[test]
fn a_containers_port_holds_no_host_port() {
    // The agent publishes a container's ports on host ports it picks: two containers that
    // listen on 8080 inside fit on one node (a plan refused them once it checked placement).
    let mut h = Harness::new(SchedulerConfig::new(4));
    h.add_node("n1", &[], capacity(4, 8));
    let mut svc = service(100, 1 << 20);
    svc.image = Some("registry.example/web:v1".to_string());
    svc.ports.insert("http".into(), 8080);
    h.demand(group("web"), 2, svc);
    let plan = h.run().clone();
    assert_eq!(plan.placements.len(), 2, "{:?}", plan.failures);
    assert!(plan.failures.is_empty());
}
