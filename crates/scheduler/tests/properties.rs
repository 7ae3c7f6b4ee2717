//! Invariants of the scheduling core over generated clusters, stated in words:
//! - a group never ends up with more alive instances than its count, and a plan never places
//!   more than is missing;
//! - no constraint or driver requirement is violated, no node is over-committed, no host port is
//!   held twice on a node;
//! - with one spread key and room everywhere, counts per zone stay within one of each other;
//! - planning again on the applied result places and stops nothing.
//!
//! Small sample sizes are generated on purpose, so the sampled, pooled and exhaustive paths all
//! run.

use berth_scheduler::harness::{group, service, Harness};
use berth_scheduler::{Capacity, Node, SchedulerConfig, Strategy as Placing};
use berth_spec::model::{Constraint, DriverKind, Service};
use proptest::prelude::*;

const ZONES: &[&str] = &["a", "b", "c"];
const CONSTRAINTS: &[&str] = &[
    "region == eu",
    "region != us",
    "zone in [a, b]",
    "tier == gold",
];

fn node() -> impl Strategy<Value = Node> {
    (
        0..ZONES.len(),
        any::<bool>(),
        prop::bool::weighted(0.85),
        0u8..3,
        1u64..9,
        1u64..17,
        prop::bool::weighted(0.2),
    )
        .prop_map(|(z, eu, ready, drivers, cores, gib, gold)| {
            let mut labels = std::collections::BTreeMap::from([
                ("zone".to_string(), ZONES[z].to_string()),
                (
                    "region".to_string(),
                    if eu { "eu" } else { "us" }.to_string(),
                ),
            ]);
            if gold {
                labels.insert("tier".into(), "gold".into());
            }
            Node {
                name: String::new(),
                labels,
                ready,
                cordoned: false,
                drivers: match drivers {
                    0 => vec![DriverKind::Process],
                    1 => vec![DriverKind::Docker],
                    _ => vec![DriverKind::Process, DriverKind::Docker],
                },
                capacity: Capacity {
                    cpu_millis: cores * 1000,
                    memory_bytes: gib << 30,
                },
            }
        })
}

fn svc() -> impl Strategy<Value = Service> {
    (
        100u64..2000,
        64u64..4096,
        prop::option::of(0..CONSTRAINTS.len()),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(prop::sample::select(vec![8080u16, 9090])),
    )
        .prop_map(|(cpu, mib, constraint, spread, docker, port)| {
            let mut s = service(cpu, mib << 20);
            if let Some(c) = constraint {
                s.placement.constraints =
                    CONSTRAINTS[c].parse::<Constraint>().into_iter().collect();
            }
            if spread {
                s.placement.spread = vec!["zone".into()];
            }
            if docker {
                s.process = None;
                s.image = Some("registry.example/app:v1".into());
            }
            if let Some(p) = port {
                s.ports.insert("http".into(), p);
            }
            s
        })
}

fn config() -> impl Strategy<Value = SchedulerConfig> {
    (any::<u64>(), any::<bool>(), prop::option::of(1usize..5)).prop_map(
        |(seed, binpack, sample)| SchedulerConfig {
            strategy: if binpack {
                Placing::Binpack
            } else {
                Placing::Spread
            },
            sample,
            seed,
        },
    )
}

fn harness(config: SchedulerConfig, nodes: Vec<Node>) -> Harness {
    let mut h = Harness::new(config);
    for (i, mut n) in nodes.into_iter().enumerate() {
        n.name = format!("n{i}");
        h.nodes.push(n);
    }
    h
}

/// Runs once and checks what every plan must satisfy, then that a second run is a no-op.
fn run_and_check(h: &mut Harness) -> Result<(), TestCaseError> {
    let plan = h.run().clone();
    for (d, demand) in h.demands.iter().enumerate() {
        let placed = plan.placements.iter().filter(|p| p.demand == d).count();
        prop_assert!(
            placed <= demand.count as usize,
            "{}: placed {placed}",
            demand.group
        );
        // Alive after the plan (checked by `violations`) never exceeds the count either.
    }
    let v = h.violations();
    prop_assert!(v.is_empty(), "{v:?}");
    let again = h.run().clone();
    prop_assert!(again.is_noop(), "planning again: {again:?}");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn plans_respect_counts_constraints_capacity_and_ports_and_replanning_is_a_noop(
        config in config(),
        nodes in prop::collection::vec(node(), 0..25),
        services in prop::collection::vec((svc(), 0u32..15, 0u32..15), 1..5),
        flips in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
    ) {
        let mut h = harness(config, nodes);
        for (i, (s, count, _)) in services.iter().enumerate() {
            h.demand(group(&format!("s{i}")), *count, s.clone());
        }
        run_and_check(&mut h)?;
        // The cluster moves: some nodes change readiness, every group is rescaled.
        if !h.nodes.is_empty() {
            for f in &flips {
                let i = f.index(h.nodes.len());
                let name = h.nodes[i].name.clone();
                let ready = !h.nodes[i].ready;
                h.set_ready(&name, ready);
            }
        }
        for (i, (s, _, count)) in services.iter().enumerate() {
            h.demand(group(&format!("s{i}")), *count, s.clone());
        }
        run_and_check(&mut h)?;
        for d in &h.demands {
            prop_assert!(h.alive(&d.group) <= d.count as usize);
        }
    }

    #[test]
    fn spread_stays_within_one_of_even_when_there_is_room(
        config in config(),
        per_zone in prop::collection::vec(1usize..6, 3),
        counts in prop::collection::vec(0u32..40, 1..4),
        two_zones in any::<bool>(),
    ) {
        let mut h = harness(SchedulerConfig { strategy: Placing::Spread, ..config }, vec![]);
        for (z, n) in ZONES.iter().zip(&per_zone) {
            for i in 0..*n {
                h.add_node(&format!("{z}{i}"), &[("zone", z)], Capacity {
                    cpu_millis: 1_000_000,
                    memory_bytes: 1 << 40,
                });
            }
        }
        let mut s = service(100, 1 << 20);
        s.placement.spread = vec!["zone".into()];
        if two_zones {
            s.placement.constraints = vec!["zone in [a, c]".parse().map_err(TestCaseError::fail)?];
        }
        let feasible = if two_zones { 2 } else { 3 };
        for count in counts {
            h.demand(group("web"), count, s.clone());
            h.run();
            let by_zone = h.count_by(&group("web"), "zone");
            prop_assert_eq!(by_zone.values().sum::<usize>(), count as usize);
            let mut c: Vec<usize> = by_zone.values().copied().collect();
            if count as usize >= feasible {
                prop_assert_eq!(c.len(), feasible, "every feasible zone is used: {:?}", by_zone);
            }
            c.resize(feasible, 0);
            let (min, max) = (c.iter().min(), c.iter().max());
            prop_assert!(max.zip(min).is_none_or(|(a, b)| a - b <= 1), "{:?}", by_zone);
        }
    }
}
