//! Properties of rendering, over generated valid stacks (written as YAML text, as a user would):
//! - rendering is deterministic;
//! - a rendered stack is itself a valid stack file that renders to the same stack;
//! - an environment's overlay changes only the fields that use an overlaid value.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;

#[derive(Debug, Clone)]
enum Replicas {
    Literal(u32),
    /// `${values.rN}`
    Value(usize),
}

#[derive(Debug, Clone)]
enum EnvValue {
    Literal(String),
    Int(i64),
    /// `"x-${values.sN}"`
    Embedded(usize),
    /// `"${values.rN}"`, an integer written out as text.
    Whole(usize),
}

#[derive(Debug, Clone)]
struct Svc {
    image: Option<u32>,
    replicas: Replicas,
    env: Vec<EnvValue>,
    ports: BTreeSet<u16>,
    health: bool,
    strategy: usize,
    surge: usize,
    deps: Vec<Index>,
}

#[derive(Debug, Clone)]
struct Gen {
    ints: Vec<u32>,
    strs: Vec<String>,
    overlay_ints: Vec<Option<u32>>,
    overlay_strs: Vec<Option<String>>,
    services: Vec<Svc>,
}

const N_INTS: usize = 3;
const N_STRS: usize = 3;

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ._:#'\"\\\\é-]{0,12}"
}

fn svc() -> impl Strategy<Value = Svc> {
    (
        proptest::option::of(0u32..1000),
        prop_oneof![
            (0u32..50).prop_map(Replicas::Literal),
            (0..N_INTS).prop_map(Replicas::Value)
        ],
        prop::collection::vec(
            prop_oneof![
                text().prop_map(EnvValue::Literal),
                any::<i64>().prop_map(EnvValue::Int),
                (0..N_STRS).prop_map(EnvValue::Embedded),
                (0..N_INTS).prop_map(EnvValue::Whole),
            ],
            0..4,
        ),
        prop::collection::btree_set(1u16..=65535, 0..3),
        any::<bool>(),
        0usize..3,
        0usize..3,
        prop::collection::vec(any::<Index>(), 0..3),
    )
        .prop_map(
            |(image, replicas, env, ports, health, strategy, surge, deps)| Svc {
                image,
                replicas,
                env,
                ports,
                health,
                strategy,
                surge,
                deps,
            },
        )
}

fn stack() -> impl Strategy<Value = Gen> {
    (
        prop::collection::vec(0u32..100, N_INTS),
        prop::collection::vec(text(), N_STRS),
        prop::collection::vec(proptest::option::of(0u32..100), N_INTS),
        prop::collection::vec(proptest::option::of(text()), N_STRS),
        prop::collection::vec(svc(), 1..6),
    )
        .prop_map(|(ints, strs, overlay_ints, overlay_strs, services)| Gen {
            ints,
            strs,
            overlay_ints,
            overlay_strs,
            services,
        })
}

fn q(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The dependencies of service `i`: earlier services only, so the graph is a DAG.
fn deps(g: &Gen, i: usize) -> Vec<usize> {
    let mut d: Vec<usize> = if i == 0 {
        vec![]
    } else {
        g.services[i].deps.iter().map(|x| x.index(i)).collect()
    };
    d.dedup();
    d.sort_unstable();
    d.dedup();
    d
}

/// The generated stack as YAML; `staging` carries the overlay, `production` none.
fn yaml(g: &Gen, with_overlay: bool) -> String {
    let mut s = String::from("stack: gen\nvalues:\n");
    for (i, v) in g.ints.iter().enumerate() {
        let _ = writeln!(s, "  r{i}: {v}");
    }
    for (i, v) in g.strs.iter().enumerate() {
        let _ = writeln!(s, "  s{i}: {}", q(v));
    }
    s.push_str("environments:\n  staging:\n    regions: [local]\n    values: {");
    if with_overlay {
        let mut parts = vec![];
        for (i, v) in g.overlay_ints.iter().enumerate() {
            if let Some(v) = v {
                parts.push(format!("r{i}: {v}"));
            }
        }
        for (i, v) in g.overlay_strs.iter().enumerate() {
            if let Some(v) = v {
                parts.push(format!("s{i}: {}", q(v)));
            }
        }
        s.push_str(&parts.join(", "));
    }
    s.push_str(
        "}\n  production:\n    regions: [eu-west, us-east]\n    approval: true\nservices:\n",
    );
    for (i, svc) in g.services.iter().enumerate() {
        let _ = writeln!(s, "  s{i}:");
        match svc.image {
            Some(t) => {
                let _ = writeln!(s, "    image: reg.example:5000/s{i}:v{t}");
            }
            None => s.push_str("    process: { command: [berth, whoami] }\n"),
        }
        match svc.replicas {
            Replicas::Literal(n) => {
                let _ = writeln!(s, "    replicas: {n}");
            }
            Replicas::Value(k) => {
                let _ = writeln!(s, "    replicas: ${{values.r{k}}}");
            }
        }
        s.push_str(if svc.env.is_empty() {
            "    env: {}\n"
        } else {
            "    env:\n"
        });
        for (k, e) in svc.env.iter().enumerate() {
            let v = match e {
                EnvValue::Literal(t) => q(t),
                EnvValue::Int(n) => n.to_string(),
                EnvValue::Embedded(j) => format!("\"x-${{values.s{j}}}\""),
                EnvValue::Whole(j) => format!("${{values.r{j}}}"),
            };
            let _ = writeln!(s, "      E{k}: {v}");
        }
        s.push_str(if svc.ports.is_empty() {
            "    ports: {}\n"
        } else {
            "    ports:\n"
        });
        for (k, p) in svc.ports.iter().enumerate() {
            let _ = writeln!(s, "      p{k}: {p}");
        }
        if svc.health && !svc.ports.is_empty() {
            s.push_str("    health: { http: /healthz, port: p0 }\n");
        }
        let strategy = ["rolling", "blue_green", "canary"][svc.strategy];
        let surge = ["1", "25%", "3"][svc.surge];
        let _ = writeln!(
            s,
            "    rollout: {{ strategy: {strategy}, max_surge: {surge}, max_unavailable: 0 }}"
        );
        let d: Vec<String> = deps(g, i).iter().map(|d| format!("s{d}")).collect();
        let _ = writeln!(s, "    depends_on: [{}]", d.join(", "));
    }
    s
}

fn render_json(src: &str, env: &str) -> Value {
    let stack = berth_spec::render(src.as_bytes(), env, &[])
        .unwrap_or_else(|e| panic!("render failed: {e:?}\n{src}"));
    serde_json::to_value(stack).expect("serialisable")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn rendering_is_deterministic(g in stack()) {
        let src = yaml(&g, true);
        for env in ["staging", "production"] {
            let a = berth_spec::render(src.as_bytes(), env, &[]).unwrap();
            let b = berth_spec::render(src.as_bytes(), env, &[]).unwrap();
            prop_assert_eq!(berth_spec::to_yaml(&a), berth_spec::to_yaml(&b));
            prop_assert_eq!(berth_spec::to_json(&a), berth_spec::to_json(&b));
        }
    }

    #[test]
    fn a_rendered_stack_validates_and_renders_to_itself(g in stack()) {
        let src = yaml(&g, true);
        if let Err(e) = berth_spec::validate(src.as_bytes()) {
            return Err(TestCaseError::fail(format!("{e:?}\n{src}")));
        }
        for env in ["staging", "production"] {
            let stack = berth_spec::render(src.as_bytes(), env, &[]).unwrap();
            let out = berth_spec::to_yaml(&stack);
            if let Err(e) = berth_spec::validate(out.as_bytes()) {
                return Err(TestCaseError::fail(format!("{e:?}\n{out}")));
            }
            let again = berth_spec::render(out.as_bytes(), env, &[]).unwrap();
            prop_assert_eq!(&again, &stack);
            prop_assert_eq!(berth_spec::to_yaml(&again), out);
        }
    }

    #[test]
    fn an_overlay_changes_only_the_fields_that_use_it(g in stack()) {
        let with = render_json(&yaml(&g, true), "staging");
        let without = render_json(&yaml(&g, false), "staging");
        let int_overlaid = |k: usize| g.overlay_ints[k].is_some();
        let str_overlaid = |k: usize| g.overlay_strs[k].is_some();
        let mut a = with["services"].clone();
        let mut b = without["services"].clone();
        for (i, svc) in g.services.iter().enumerate() {
            let name = format!("s{i}");
            let mut dependent = vec![];
            if let Replicas::Value(k) = svc.replicas {
                if int_overlaid(k) {
                    dependent.push(vec!["replicas".to_string()]);
                }
            }
            for (k, e) in svc.env.iter().enumerate() {
                let uses = match e {
                    EnvValue::Embedded(j) => str_overlaid(*j),
                    EnvValue::Whole(j) => int_overlaid(*j),
                    _ => false,
                };
                if uses {
                    dependent.push(vec!["env".to_string(), format!("E{k}")]);
                }
            }
            for path in dependent {
                for v in [&mut a, &mut b] {
                    let svc = &mut v[&name];
                    let (last, init) = path.split_last().unwrap();
                    let mut obj = svc;
                    for p in init {
                        obj = &mut obj[p.as_str()];
                    }
                    if let Some(m) = obj.as_object_mut() {
                        m.remove(last.as_str());
                    }
                }
            }
        }
        prop_assert_eq!(a, b);
        prop_assert_eq!(&with["environments"], &without["environments"]);
    }
}

#[test]
fn overlays_do_change_the_fields_that_use_them() {
    let g = Gen {
        ints: vec![2, 0, 0],
        strs: vec!["a".into(), "b".into(), "c".into()],
        overlay_ints: vec![Some(5), None, None],
        overlay_strs: vec![Some("z".into()), None, None],
        services: vec![Svc {
            image: None,
            replicas: Replicas::Value(0),
            env: vec![EnvValue::Embedded(0), EnvValue::Whole(0), EnvValue::Int(-7)],
            ports: BTreeSet::new(),
            health: false,
            strategy: 0,
            surge: 0,
            deps: vec![],
        }],
    };
    let with = render_json(&yaml(&g, true), "staging");
    let without = render_json(&yaml(&g, false), "staging");
    assert_eq!(with["services"]["s0"]["replicas"], 5);
    assert_eq!(without["services"]["s0"]["replicas"], 2);
    assert_eq!(with["services"]["s0"]["env"]["E0"], "x-z");
    assert_eq!(with["services"]["s0"]["env"]["E1"], "5");
    assert_eq!(with["services"]["s0"]["env"]["E2"], "-7");
}
