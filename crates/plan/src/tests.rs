use std::collections::BTreeMap;

use berth_spec::model::{
    Amount, Cpu, Duration, Environment, Memory, Percent, Placement, Process, Resources,
    RestartPolicy, Rollout, Route, Service, Stack, Strategy,
};
use serde_json::json;

use super::*;

fn svc(replicas: u32) -> Service {
    Service {
        process: Some(Process {
            command: vec!["berth".into(), "whoami".into()],
            user: None,
        }),
        image: None,
        command: None,
        env: BTreeMap::from([("VERSION".to_string(), "1".to_string())]),
        secrets: vec![],
        ports: BTreeMap::from([("http".to_string(), 0)]),
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
            spread: vec![],
            constraints: vec![],
        },
        restart: RestartPolicy::Always,
    }
}

fn stack(regions: &[&str], services: &[(&str, Service)]) -> Stack {
    Stack {
        stack: "shop".into(),
        history: 10,
        environments: BTreeMap::from([(
            "production".to_string(),
            Environment {
                regions: regions.iter().map(|r| r.to_string()).collect(),
                approval: 0,
                approval_timeout: berth_spec::model::DEFAULT_APPROVAL_TIMEOUT,
                max_capacity_drop: Percent(50),
                waves: None,
            },
        )]),
        services: services
            .iter()
            .map(|(n, s)| (n.to_string(), s.clone()))
            .collect(),
    }
}

fn plan(base: &Stack, target: &Stack) -> Plan {
    Plan::new(Some(base), target).expect("plan")
}

fn only<'a>(p: &'a Plan, name: &str) -> &'a ServiceChange {
    p.services
        .iter()
        .find(|s| s.name == name)
        .expect("service in plan")
}

fn paths(s: &ServiceChange) -> Vec<&str> {
    s.fields.iter().map(|f| f.path.as_str()).collect()
}

#[test]
fn same_stack_is_an_empty_plan() {
    let a = stack(&["eu"], &[("web", svc(3))]);
    let p = plan(&a, &a);
    assert!(p.is_empty());
    assert!(!p.destructive);
    assert_eq!(p.blast_radius.start, 0);
    assert!(p.to_string().starts_with("no changes"));
}

#[test]
fn first_deploy_adds_everything() {
    let t = stack(&["eu", "us"], &[("web", svc(3))]);
    let p = Plan::new(None, &t).expect("plan");
    assert!(p.first_deploy);
    let web = only(&p, "web");
    assert_eq!(web.kind, ChangeKind::Added);
    assert_eq!((web.start, web.stop, web.after), (6, 0, 6));
    assert!(web.fields.iter().all(|f| f.old.is_none()));
    assert!(paths(web).contains(&"replicas"));
    assert!(p
        .stack_changes
        .iter()
        .any(|f| f.path == "environments.production.regions"));
    assert!(!p.destructive);
    assert_eq!(p.blast_radius.regions_touched, ["eu", "us"]);
    let text = p.to_string();
    assert!(text.contains("+ service web (6 instances)"), "{text}");
    assert!(text.contains("+ stack shop"), "{text}");
}

#[test]
fn env_change_replaces_every_instance_without_losing_capacity() {
    let a = stack(&["eu", "us"], &[("web", svc(3))]);
    let mut w = svc(3);
    w.env.insert("VERSION".into(), "2".into());
    let b = stack(&["eu", "us"], &[("web", w)]);
    let p = plan(&a, &b);
    let web = only(&p, "web");
    assert_eq!(web.kind, ChangeKind::Changed);
    assert_eq!(paths(web), ["env.VERSION"]);
    assert_eq!(web.fields[0].old, Some(json!("1")));
    assert_eq!(web.fields[0].new, Some(json!("2")));
    assert!(web.replaces_instances);
    assert_eq!((web.start, web.stop, web.lost), (6, 6, 0));
    assert_eq!(web.capacity_lost_percent, 0);
    assert!(!p.destructive);
    let text = p.to_string();
    assert!(
        text.contains("~ service web (replace: 6 → 6 instances)"),
        "{text}"
    );
    assert!(text.contains("    env.VERSION: \"1\" → \"2\""), "{text}");
    assert!(text.contains(&format!("plan id: {}", p.id)), "{text}");
}

#[test]
fn image_change_is_shown_and_replaces() {
    let mut a = svc(2);
    a.process = None;
    a.image = Some("a:v1".into());
    let mut b = a.clone();
    b.image = Some("a:v2".into());
    let p = plan(
        &stack(&["eu"], &[("api", a)]),
        &stack(&["eu"], &[("api", b)]),
    );
    let api = only(&p, "api");
    assert_eq!(paths(api), ["image"]);
    assert!(api.replaces_instances);
    assert!(p.to_string().contains("image: \"a:v1\" → \"a:v2\""));
}

#[test]
fn scale_up_starts_only_the_difference() {
    let a = stack(&["eu", "us"], &[("web", svc(3))]);
    let b = stack(&["eu", "us"], &[("web", svc(5))]);
    let p = plan(&a, &b);
    let web = only(&p, "web");
    assert_eq!(paths(web), ["replicas"]);
    assert_eq!(web.fields[0].old, Some(json!(3)));
    assert!(!web.replaces_instances);
    assert_eq!((web.start, web.stop, web.before, web.after), (4, 0, 6, 10));
    assert!(!p.destructive);
    assert!(p.to_string().contains("replicas: 3 → 5"));
}

#[test]
fn scale_down_loses_capacity() {
    let a = stack(&["eu"], &[("web", svc(4))]);
    let b = stack(&["eu"], &[("web", svc(1))]);
    let p = plan(&a, &b);
    let web = only(&p, "web");
    assert_eq!((web.start, web.stop, web.lost), (0, 3, 3));
    assert_eq!(web.capacity_lost_percent, 75);
    assert!(p.destructive);
    assert!(p.exceeds_capacity_drop, "75% > 50%");
    assert_eq!(p.blast_radius.worst_service.as_deref(), Some("web"));
    assert!(p.to_string().contains("needs --confirm shop"));
}

#[test]
fn capacity_loss_rounds_up_and_compares_exactly() {
    // 3 → 2 is 33.3 %: shown as 34 %, within a 34 % budget, above a 33 % one.
    let a = stack(&["eu"], &[("web", svc(3))]);
    let mut b = stack(&["eu"], &[("web", svc(2))]);
    let budget = |b: &mut Stack, p: u32| {
        for e in b.environments.values_mut() {
            e.max_capacity_drop = Percent(p);
        }
    };
    budget(&mut b, 33);
    let p = plan(&a, &b);
    assert_eq!(only(&p, "web").capacity_lost_percent, 34);
    assert!(p.exceeds_capacity_drop);
    budget(&mut b, 34);
    assert!(!plan(&a, &b).exceeds_capacity_drop);
    // 4 → 2 is exactly 50 %, which a 50 % budget allows.
    let p = plan(
        &stack(&["eu"], &[("web", svc(4))]),
        &stack(&["eu"], &[("web", svc(2))]),
    );
    assert_eq!(p.blast_radius.worst_capacity_lost_percent, 50);
    assert!(p.destructive && !p.exceeds_capacity_drop);
}

#[test]
fn replace_and_shrink_loses_only_the_shrink() {
    let a = stack(&["eu"], &[("web", svc(4))]);
    let mut w = svc(2);
    w.env.insert("VERSION".into(), "2".into());
    let p = plan(&a, &stack(&["eu"], &[("web", w)]));
    let web = only(&p, "web");
    assert!(web.replaces_instances);
    assert_eq!((web.start, web.stop, web.lost), (2, 4, 2));
    assert_eq!(web.capacity_lost_percent, 50);
}

#[test]
fn removal_is_destructive_and_total() {
    let a = stack(&["eu"], &[("web", svc(2)), ("old", svc(2))]);
    let b = stack(&["eu"], &[("web", svc(2))]);
    let p = plan(&a, &b);
    assert_eq!(p.services.len(), 1);
    let old = only(&p, "old");
    assert_eq!(old.kind, ChangeKind::Removed);
    assert!(old.fields.iter().all(|f| f.new.is_none()));
    assert_eq!((old.start, old.stop), (0, 2));
    assert_eq!(old.capacity_lost_percent, 100);
    assert!(p.destructive && p.exceeds_capacity_drop);
    assert!(p.to_string().contains("- service old (2 instances)"));
}

#[test]
fn removing_an_empty_service_is_still_destructive() {
    let a = stack(&["eu"], &[("web", svc(2)), ("idle", svc(0))]);
    let p = plan(&a, &stack(&["eu"], &[("web", svc(2))]));
    assert_eq!(only(&p, "idle").capacity_lost_percent, 0);
    assert!(p.destructive);
    assert!(!p.exceeds_capacity_drop);
}

#[test]
fn in_place_fields_do_not_replace() {
    let a = svc(2);
    let mut b = a.clone();
    b.route = Some(Route {
        host: "shop.local".into(),
        path: "/".into(),
        port: "http".into(),
        limits: None,
        timeout: None,
        split: None,
    });
    b.rollout.strategy = Strategy::Canary;
    b.depends_on = vec!["api".into()];
    b.placement.spread = vec!["zone".into()];
    let p = plan(
        &stack(&["eu"], &[("web", a)]),
        &stack(&["eu"], &[("web", b)]),
    );
    let web = only(&p, "web");
    assert!(!web.replaces_instances, "{:?}", paths(web));
    assert_eq!((web.start, web.stop), (0, 0));
    assert!(paths(web).contains(&"route.host"));
    assert!(p.to_string().contains("~ service web (in place)"));
    assert!(!p.destructive);
}

#[test]
fn constraints_and_stop_grace_replace() {
    let a = svc(1);
    let mut b = a.clone();
    b.placement.constraints = vec!["region == eu".parse().expect("constraint")];
    let p = plan(
        &stack(&["eu"], &[("web", a.clone())]),
        &stack(&["eu"], &[("web", b)]),
    );
    assert!(only(&p, "web").replaces_instances);
    let mut c = a.clone();
    c.stop_grace = Duration::from_millis(1000);
    let p = plan(
        &stack(&["eu"], &[("web", a)]),
        &stack(&["eu"], &[("web", c)]),
    );
    assert!(only(&p, "web").replaces_instances);
}

#[test]
fn secret_env_values_are_never_printed() {
    let mut a = svc(1);
    a.secrets = vec!["DB_PASSWORD".into()];
    a.env.insert("DB_PASSWORD".into(), "hunter2".into());
    let mut b = a.clone();
    b.env.insert("DB_PASSWORD".into(), "correct-horse".into());
    b.env.insert("API_KEY".into(), "sk-live-123".into());
    b.secrets.push("API_KEY".into());
    let p = plan(
        &stack(&["eu"], &[("api", a.clone())]),
        &stack(&["eu"], &[("api", b.clone())]),
    );
    let api = only(&p, "api");
    let pw = api
        .fields
        .iter()
        .find(|f| f.path == "env.DB_PASSWORD")
        .expect("changed");
    assert!(pw.secret);
    assert_eq!(pw.old, Some(json!(SECRET_MASK)));
    assert!(paths(api).contains(&"secrets"), "names are shown");
    let text = p.to_string();
    let json = serde_json::to_string(&p).expect("json");
    for leak in ["hunter2", "correct-horse", "sk-live-123"] {
        assert!(!text.contains(leak), "{text}");
        assert!(!json.contains(leak), "{json}");
    }
    assert!(
        text.contains("env.DB_PASSWORD: <secret> → <secret>"),
        "{text}"
    );
    assert!(text.contains("+ env.API_KEY: <secret>"), "{text}");

    // A key that stops being secret still has its old value masked, and a new service too.
    let mut c = b.clone();
    c.secrets.clear();
    c.env.insert("DB_PASSWORD".into(), "plain".into());
    let p = plan(
        &stack(&["eu"], &[("api", b.clone())]),
        &stack(&["eu"], &[("api", c)]),
    );
    assert!(!p.to_string().contains("correct-horse"));
    let p = Plan::new(None, &stack(&["eu"], &[("api", b)])).expect("plan");
    assert!(!p.to_string().contains("correct-horse"));
    assert!(!serde_json::to_string(&p).expect("json").contains("sk-live"));
}

#[test]
fn policy_changes_are_stack_changes() {
    let a = stack(&["eu"], &[("web", svc(1))]);
    let mut b = a.clone();
    b.history = 20;
    for e in b.environments.values_mut() {
        e.approval = 1;
        e.max_capacity_drop = Percent(25);
    }
    let p = plan(&a, &b);
    assert!(p.services.is_empty());
    let got: Vec<&str> = p.stack_changes.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(
        got,
        [
            "environments.production.approval",
            "environments.production.max_capacity_drop",
            "history"
        ]
    );
    assert!(p.approval);
    assert_eq!(p.max_capacity_drop, Percent(25));
    assert!(!p.is_empty());
    let text = p.to_string();
    assert!(text.contains("~ stack shop"), "{text}");
    assert!(text.contains("environments.production.max_capacity_drop: \"50%\" → \"25%\""));
}

#[test]
fn regions_added_start_and_regions_removed_lose() {
    let a = stack(&["eu"], &[("web", svc(2))]);
    let b = stack(&["eu", "us"], &[("web", svc(2))]);
    let p = plan(&a, &b);
    let web = only(&p, "web");
    assert!(web.fields.is_empty());
    assert_eq!((web.start, web.stop), (2, 0));
    assert_eq!(p.blast_radius.regions_touched, ["us"]);
    assert!(!p.destructive);

    // A swap keeps the total but empties a region: per-region counting sees it.
    let c = stack(&["us"], &[("web", svc(2))]);
    let p = plan(&a, &c);
    let web = only(&p, "web");
    assert_eq!((web.start, web.stop, web.lost), (2, 2, 2));
    assert_eq!(web.capacity_lost_percent, 100);
    assert_eq!(p.blast_radius.regions_touched, ["us", "eu"]);
    assert!(p.destructive);
}

#[test]
fn totals_and_worst_across_services() {
    let a = stack(&["eu"], &[("a", svc(4)), ("b", svc(4)), ("c", svc(1))]);
    let b = stack(&["eu"], &[("a", svc(3)), ("b", svc(1)), ("d", svc(2))]);
    let p = plan(&a, &b);
    let br = &p.blast_radius;
    assert_eq!((br.start, br.stop), (2, 1 + 3 + 1));
    assert_eq!(br.worst_capacity_lost_percent, 100);
    assert_eq!(br.worst_service.as_deref(), Some("c"));
}

#[test]
fn plan_id_is_stable_and_sensitive() {
    let a = stack(&["eu"], &[("web", svc(2))]);
    let b = stack(&["eu"], &[("web", svc(3))]);
    let p1 = plan(&a, &b);
    let p2 = plan(&a.clone(), &b.clone());
    assert_eq!(p1.id, p2.id);
    assert_eq!(p1.hash.len(), 64);
    assert_eq!(p1.id.len(), Plan::ID_LEN);
    assert!(p1.hash.starts_with(&p1.id));
    assert!(p1.id.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(p1.id, plan(&b, &a).id, "direction matters");
    assert_ne!(p1.id, Plan::new(None, &b).expect("plan").id, "base matters");
    assert_ne!(p1.id, plan(&a, &a).id);
    assert_eq!(plan_hash(Some(&a), &b).expect("hash"), p1.hash);
}

#[test]
fn json_form_is_machine_readable() {
    let a = stack(&["eu"], &[("web", svc(2))]);
    let b = stack(&["eu"], &[("web", svc(3))]);
    let p = plan(&a, &b);
    let v = serde_json::to_value(&p).expect("json");
    assert_eq!(v["id"], json!(p.id));
    assert_eq!(v["services"][0]["kind"], json!("changed"));
    assert_eq!(v["services"][0]["fields"][0]["old"], json!(2));
    assert_eq!(v["max_capacity_drop"], json!("50%"));
    let back: Plan = serde_json::from_value(v).expect("round trip");
    assert_eq!(back, p);
}

#[test]
fn display_shows_blast_radius() {
    let a = stack(&["eu", "us"], &[("web", svc(2)), ("old", svc(1))]);
    let mut w = svc(2);
    w.env.insert("VERSION".into(), "2".into());
    let p = plan(&a, &stack(&["eu", "us"], &[("web", w)]));
    let text = p.to_string();
    assert!(text.contains("instances: 4 to start, 6 to stop"), "{text}");
    assert!(text.contains("old 100%"), "{text}");
    assert!(text.contains("regions touched: eu, us"), "{text}");
    assert!(text.contains("destructive: yes"), "{text}");
    assert!(text.trim_end().ends_with(&format!("plan id: {}", p.id)));
}

#[test]
fn volumes_every_agent_refuses_are_warned_about_in_the_plan() {
    use berth_spec::model::Volume;
    let vol = |host: &str| Volume {
        host: host.to_string(),
        container: "/host".to_string(),
        read_only: false,
    };
    let mut risky = svc(1);
    risky.volumes = vec![
        vol("/"),
        vol("/etc/shadow"),
        vol("/var/run/docker.sock"),
        vol("/run"),
        vol("/srv/cache"),
        vol("/etcetera"),
    ];
    let target = stack(&["eu"], &[("web", risky)]);
    let p = Plan::new(None, &target).unwrap();
    assert_eq!(p.warnings.len(), 4, "{:#?}", p.warnings);
    assert!(p.warnings[0].starts_with("service web mounts `/` (the root filesystem)"));
    assert!(p.warnings[2].contains("--allow-host-path /var/run/docker.sock"));
    assert!(p.warnings[3].contains("`/run` (it holds the Docker socket"));
    let text = p.to_string();
    assert!(
        text.contains("warning: service web mounts `/etc/shadow` (a system directory)"),
        "{text}"
    );
    let safe = stack(&["eu"], &[("web", svc(1))]);
    assert!(Plan::new(None, &safe).unwrap().warnings.is_empty());
}

/// A stack whose environment allows any capacity drop: what every environment was by default
/// before 50 %, and what an operator may still write. The emptying rules hold regardless.
fn lenient(regions: &[&str], services: &[(&str, Service)]) -> Stack {
    let mut s = stack(regions, services);
    for e in s.environments.values_mut() {
        e.max_capacity_drop = Percent(100);
    }
    s
}

#[test]
fn emptying_a_service_in_three_regions_needs_confirm_even_where_any_drop_is_allowed() {
    // Dailymotion's command in berth's terms: `--set web.replicas=0` across three regions.
    let regions = ["eu", "us", "ap"];
    let a = lenient(&regions, &[("web", svc(2)), ("api", svc(1))]);
    let b = lenient(&regions, &[("web", svc(0)), ("api", svc(1))]);
    let p = plan(&a, &b);
    assert!(!p.exceeds_capacity_drop, "100% is within a 100% budget");
    assert!(p.needs_confirm, "emptying a service always needs --confirm");
    assert_eq!(
        p.emptying.len(),
        1,
        "api still runs in every region: {:?}",
        p.emptying
    );
    let line = p.emptying[0].to_string();
    assert_eq!(
        line,
        "service web loses every instance: 6 → 0 (eu 2 → 0, us 2 → 0, ap 2 → 0)"
    );
    let text = p.to_string();
    assert!(
        text.contains("needs --confirm shop whatever the environment allows:"),
        "{text}"
    );
    assert!(text.contains(&format!("    {line}")), "{text}");
    assert!(
        text.contains("web 100%  (6 → 0)  eu 2 → 0, us 2 → 0, ap 2 → 0"),
        "{text}"
    );

    // Without api, every region is emptied too, and each line says what it had.
    let a = lenient(&regions, &[("web", svc(2))]);
    let p = plan(&a, &lenient(&regions, &[("web", svc(0))]));
    let lines: Vec<String> = p.emptying.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(
        lines[1],
        "region eu is emptied: no instance of the stack is left there (web 2 → 0)"
    );
}

#[test]
fn removing_a_service_or_a_region_needs_confirm_whatever_the_budget() {
    let a = lenient(&["eu", "us"], &[("web", svc(2)), ("old", svc(1))]);
    let p = plan(&a, &lenient(&["eu", "us"], &[("web", svc(2))]));
    assert!(p.needs_confirm && !p.exceeds_capacity_drop);
    assert_eq!(
        p.emptying
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["service old is removed: 2 → 0 instances (eu 1 → 0, us 1 → 0)"]
    );

    // An empty service removed is still a removal.
    let a = lenient(&["eu"], &[("web", svc(2)), ("idle", svc(0))]);
    let p = plan(&a, &lenient(&["eu"], &[("web", svc(2))]));
    assert!(p.needs_confirm);
    assert_eq!(
        p.emptying[0].to_string(),
        "service idle is removed: 0 → 0 instances"
    );

    // Dropping a region from the environment empties it.
    let a = lenient(&["eu", "us"], &[("web", svc(2))]);
    let p = plan(&a, &lenient(&["eu"], &[("web", svc(2))]));
    assert!(p.needs_confirm);
    assert_eq!(
        p.emptying
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["region us is emptied: no instance of the stack is left there (web 2 → 0)"]
    );
}

#[test]
fn ordinary_changes_need_no_confirm() {
    // First deploys, scale-ups, replacements and drops within the budget.
    let a = stack(&["eu", "us"], &[("web", svc(4))]);
    assert!(!Plan::new(None, &a).unwrap().needs_confirm);
    assert!(!plan(&a, &stack(&["eu", "us"], &[("web", svc(6))])).needs_confirm);
    let mut w = svc(4);
    w.env.insert("VERSION".into(), "2".into());
    assert!(!plan(&a, &stack(&["eu", "us"], &[("web", w)])).needs_confirm);
    let p = plan(&a, &stack(&["eu", "us"], &[("web", svc(2))]));
    assert!(
        p.destructive && !p.needs_confirm && p.emptying.is_empty(),
        "50% of 50%"
    );
    // Above the budget: needed, with no emptying change.
    let p = plan(&a, &stack(&["eu", "us"], &[("web", svc(1))]));
    assert!(p.needs_confirm && p.exceeds_capacity_drop && p.emptying.is_empty());
}

#[test]
fn the_plan_shows_the_user_a_process_runs_as() {
    let mut web = svc(1);
    if let Some(p) = web.process.as_mut() {
        p.user = Some("nobody".into());
    }
    let target = stack(&["eu"], &[("web", web.clone()), ("api", svc(1))]);
    let p = Plan::new(None, &target).unwrap();
    assert_eq!(only(&p, "web").runs_as.as_deref(), Some("nobody"));
    assert_eq!(only(&p, "api").runs_as.as_deref(), Some(AGENT_DEFAULT_USER));
    let text = p.to_string();
    assert!(text.contains("    runs as: nobody"), "{text}");
    assert!(
        text.contains(&format!("    runs as: {AGENT_DEFAULT_USER}")),
        "{text}"
    );
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);

    // A change of user replaces the instances and says who they run as now.
    let mut root = web;
    if let Some(p) = root.process.as_mut() {
        p.user = Some("root".into());
    }
    let p = plan(&target, &stack(&["eu"], &[("web", root), ("api", svc(1))]));
    let w = only(&p, "web");
    assert!(w.replaces_instances);
    let text = p.to_string();
    assert!(
        text.contains("process.user: \"nobody\" → \"root\""),
        "{text}"
    );
    assert!(text.contains("    runs as: root"), "{text}");
    assert_eq!(
        p.warnings,
        ["service web runs as root: every agent refuses it unless started with --allow-root-processes, so its instances will fail"]
    );
}
