//! Properties of the plan core over generated stacks: self-plans are empty, ids separate
//! different targets, start/stop counts are symmetric, and secret values never appear.

use std::collections::BTreeMap;

use berth_plan::Plan;
use berth_spec::model::{
    Amount, Cpu, Duration, Environment, Memory, Percent, Placement, Process, Resources,
    RestartPolicy, Rollout, Service, Stack,
};
use proptest::collection::btree_map;
use proptest::prelude::*;
use proptest::sample::subsequence;

const REGIONS: &[&str] = &["eu-west", "us-east", "ap-south"];
const ENV_KEYS: &[&str] = &["VERSION", "LOG_LEVEL", "DB_PASSWORD", "API_KEY"];
/// Secret env values carry this marker so a leak is easy to spot.
const LEAK: &str = "LEAKED-";

fn driver() -> impl Strategy<Value = (Option<Process>, Option<String>)> {
    prop_oneof![
        (0u8..3).prop_map(|v| (
            Some(Process {
                command: vec!["berth".into(), "whoami".into(), format!("--v{v}")],
                user: None,
            }),
            None
        )),
        (0u8..3).prop_map(|v| (None, Some(format!("registry.example/app:v{v}")))),
    ]
}

fn service() -> impl Strategy<Value = Service> {
    (
        driver(),
        btree_map(prop::sample::select(ENV_KEYS), 0u8..3, 0..4),
        subsequence(&ENV_KEYS[2..], 0..=2),
        btree_map(prop::sample::select(&["http", "admin"][..]), 0u16..3, 0..3),
        0u32..6,
        any::<bool>(),
    )
        .prop_map(
            |((process, image), env, secrets, ports, replicas, spread)| {
                let secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
                let env = env
                    .into_iter()
                    .map(|(k, v)| {
                        let v = if secrets.iter().any(|s| s == k) {
                            format!("{LEAK}{v}")
                        } else {
                            v.to_string()
                        };
                        (k.to_string(), v)
                    })
                    .collect();
                Service {
                    process,
                    image,
                    command: None,
                    env,
                    secrets,
                    ports: ports.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                    replicas,
                    health: None,
                    route: None,
                    rollout: Rollout::rolling(
                        Amount::Count(1),
                        Amount::Count(0),
                        Duration::from_millis(600_000),
                    ),
                    depends_on: vec![],
                    stop_grace: Duration::from_millis(10_000),
                    volumes: vec![],
                    resources: Resources {
                        cpu: Cpu { millis: 100 },
                        memory: Memory { bytes: 64 << 20 },
                    },
                    placement: Placement {
                        spread: if spread { vec!["zone".into()] } else { vec![] },
                        constraints: vec![],
                    },
                    restart: RestartPolicy::Always,
                }
            },
        )
}

fn stack() -> impl Strategy<Value = Stack> {
    (
        subsequence(REGIONS, 1..=REGIONS.len()),
        any::<bool>(),
        0u32..=100,
        1u32..20,
        btree_map(
            prop::sample::select(&["web", "api", "db", "cache"][..]),
            service(),
            0..4,
        ),
    )
        .prop_map(|(regions, approval, drop, history, services)| Stack {
            stack: "shop".into(),
            history,
            environments: BTreeMap::from([(
                "production".to_string(),
                Environment {
                    regions: regions.iter().map(|r| r.to_string()).collect(),
                    approval: u32::from(approval),
                    approval_timeout: berth_spec::model::DEFAULT_APPROVAL_TIMEOUT,
                    max_capacity_drop: Percent(drop),
                    waves: None,
                },
            )]),
            services: services
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        })
}

fn plan(base: Option<&Stack>, target: &Stack) -> Plan {
    Plan::new(base, target).expect("the model always serialises")
}

proptest! {
    #[test]
    fn a_stack_against_itself_is_empty(a in stack()) {
        let p = plan(Some(&a), &a);
        prop_assert!(p.is_empty(), "{p}");
        prop_assert!(!p.destructive);
        prop_assert!(!p.exceeds_capacity_drop);
        prop_assert_eq!(p.blast_radius.start + p.blast_radius.stop, 0);
        prop_assert!(p.blast_radius.regions_touched.is_empty());
    }

    #[test]
    fn different_targets_get_different_ids(base in prop::option::of(stack()), a in stack(), b in stack()) {
        let pa = plan(base.as_ref(), &a);
        let pb = plan(base.as_ref(), &b);
        prop_assert_eq!(&pa.id, &plan(base.as_ref(), &a).id, "same inputs, same id");
        if a != b {
            prop_assert_ne!(&pa.id, &pb.id);
            prop_assert_ne!(&pa.hash, &pb.hash);
        } else {
            prop_assert_eq!(&pa.id, &pb.id);
        }
    }

    #[test]
    fn a_one_field_change_changes_the_id_and_shows(a in stack(), bump in 1u32..3) {
        let mut b = a.clone();
        match b.services.values_mut().next() {
            Some(svc) => svc.replicas += bump,
            None => b.history += bump,
        }
        let same = plan(Some(&a), &a);
        let changed = plan(Some(&a), &b);
        prop_assert_ne!(&same.id, &changed.id);
        prop_assert!(!changed.is_empty());
    }

    #[test]
    fn reversing_a_plan_swaps_starts_and_stops(a in stack(), b in stack()) {
        let ab = plan(Some(&a), &b);
        let ba = plan(Some(&b), &a);
        prop_assert_eq!(ab.blast_radius.start, ba.blast_radius.stop);
        prop_assert_eq!(ab.blast_radius.stop, ba.blast_radius.start);
        prop_assert_eq!(ab.services.len(), ba.services.len());
        for (x, y) in ab.services.iter().zip(&ba.services) {
            prop_assert_eq!(&x.name, &y.name);
            prop_assert_eq!((x.start, x.stop), (y.stop, y.start));
            prop_assert_eq!((x.before, x.after), (y.after, y.before));
            prop_assert_eq!(x.replaces_instances, y.replaces_instances);
        }
        prop_assert_eq!(ab.blast_radius.regions_touched.len(), ba.blast_radius.regions_touched.len());
    }

    #[test]
    fn counts_are_consistent(base in prop::option::of(stack()), target in stack()) {
        let p = plan(base.as_ref(), &target);
        for s in &p.services {
            prop_assert!(s.lost <= s.stop);
            prop_assert!(s.capacity_lost_percent <= 100);
            // What runs afterwards is what ran, minus what stopped, plus what started.
            prop_assert_eq!(s.before + s.start - s.stop, s.after);
        }
        prop_assert_eq!(p.exceeds_capacity_drop,
            p.blast_radius.worst_capacity_lost_percent > p.max_capacity_drop.0);
        if p.exceeds_capacity_drop {
            prop_assert!(p.destructive);
        }
    }

    #[test]
    fn secret_values_never_appear(base in prop::option::of(stack()), target in stack()) {
        let p = plan(base.as_ref(), &target);
        let text = p.to_string();
        let json = serde_json::to_string(&p).expect("json");
        prop_assert!(!text.contains(LEAK), "{}", text);
        prop_assert!(!json.contains(LEAK), "{}", json);
    }
}
