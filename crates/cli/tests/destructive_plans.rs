//! Dailymotion's worst hour in berth's terms (issue 13): one `--set` that empties a service in
//! an environment with three regions. It is refused with exit 3 and stores nothing, whatever
//! the environment's `max_capacity_drop` allows (here 100 %, the old default); the message says
//! what would be lost per service and region. With `--confirm STACK` it runs. `berth stack rm`
//! needs the same confirmation, keeps the history, and `berth rollback` brings the stack back.
//!
//! Three nodes, one per region: `berth up` named eu1 (`region=eu`), agents us1 (`region=us`)
//! and ap1 (`region=ap`).

mod common;

use std::time::Duration;

use common::cluster::{api_get, cli, cli_ok, releases, service, status};
use common::process::Proc;
use common::up::BerthUp;
use common::{assert_exit, command, stderr, write_file};

/// web: 2 per region; api: 1 per region. `max_capacity_drop: 100%` says any drop is fine,
/// which must not let an emptying plan through.
const STACK: &str = r#"stack: video
environments:
  prod:
    regions: [eu, us, ap]
    max_capacity_drop: 100%
services:
  web:
    process: { command: [berth, whoami] }
    ports: { http: 0 }
    replicas: 2
    resources: { cpu: 10m, memory: 16Mi }
    health: { http: /healthz, port: http, interval: 100ms, timeout: 1s, healthy: 1, unhealthy: 3 }
    stop_grace: 1s
  api:
    process: { command: [berth, whoami] }
    ports: { http: 0 }
    replicas: 1
    resources: { cpu: 10m, memory: 16Mi }
    health: { http: /healthz, port: http, interval: 100ms, timeout: 1s, healthy: 1, unhealthy: 3 }
    stop_grace: 1s
"#;

/// A `berth agent` named `name` with `labels`, its data inside up's data dir (so up's guard
/// also stops its workloads).
fn agent(up: &BerthUp, name: &str, labels: &str) -> Proc {
    let join = std::fs::read_to_string(up.data_dir().join("join.token")).expect("join.token");
    let dir = up.data_dir().join(format!("node-{name}"));
    let cmd = command([
        "agent",
        "--server",
        &up.api_url(),
        "--join-token",
        join.trim(),
        "--name",
        name,
        "--labels",
        labels,
        "--data-dir",
        dir.to_str().expect("UTF-8 path"),
    ]);
    Proc::spawn(cmd, name, up.dir())
}

/// The release numbers of video in prod, oldest first.
fn numbers(up: &BerthUp) -> Vec<u64> {
    let mut n: Vec<u64> = releases(up, "video", "prod")
        .iter()
        .filter_map(|r| r["number"].as_u64())
        .collect();
    n.sort_unstable();
    n
}

/// How many instances of video/`svc` run, whatever their state.
fn running(up: &BerthUp, svc: &str) -> usize {
    status(up)
        .and_then(|s| {
            service(&s, "video", svc).and_then(|v| v["instances"].as_array().map(Vec::len))
        })
        .unwrap_or(0)
}

#[test]
fn emptying_a_service_across_three_regions_is_refused_until_the_stack_name_is_typed_back() {
    let up = BerthUp::start_with(&["--name", "eu1", "--labels", "region=eu"]);
    let _us = agent(&up, "us1", "region=us");
    let _ap = agent(&up, "ap1", "region=ap");
    up.wait_until(Duration::from_secs(30), "three ready nodes", || {
        api_get(&up, "/v1/nodes")
            .and_then(|n| n.as_array().cloned())
            .is_some_and(|n| n.len() == 3 && n.iter().all(|n| n["state"] == "ready"))
    });
    let file = write_file(up.dir(), "video.yaml", STACK);
    cli_ok(
        &up,
        &[
            "deploy",
            "-f",
            &file,
            "--env",
            "prod",
            "--wait",
            "--timeout",
            "120",
        ],
    );
    assert_eq!(numbers(&up), vec![1]);
    assert_eq!(running(&up, "web"), 6);

    // The command: the plan says what it is, the deploy is refused with exit 3.
    let emptying = ["-f", &file, "--env", "prod", "--set", "web.replicas=0"];
    let lost = "service web loses every instance: 6 → 0 (eu 2 → 0, us 2 → 0, ap 2 → 0)";
    let plan = cli_ok(&up, &[&["plan"][..], &emptying].concat());
    assert!(
        plan.contains("destructive: yes")
            && plan.contains("needs --confirm video whatever the environment allows:")
            && plan.contains(lost),
        "{plan}"
    );
    for confirm in [&[][..], &["--confirm", "web"], &["--confirm", "VIDEO"]] {
        let out = cli(&up, &[&["deploy"][..], &emptying, confirm].concat());
        assert_exit(&out, 3);
        let why = stderr(&out);
        assert!(
            why.contains("needs --confirm video whatever prod allows")
                && why.contains(lost)
                && why.contains("nothing was stored"),
            "{confirm:?}: {why}"
        );
    }
    assert_eq!(numbers(&up), vec![1], "a refusal stored a release");
    assert_eq!(running(&up, "web"), 6, "a refusal stopped nothing");

    // Typed back, it runs: web stops everywhere, api keeps running in every region.
    cli_ok(
        &up,
        &[
            &["deploy"][..],
            &emptying,
            &["--confirm", "video", "--wait", "--timeout", "120"],
        ]
        .concat(),
    );
    assert_eq!(numbers(&up), vec![1, 2]);
    up.wait_until(Duration::from_secs(30), "web's instances to stop", || {
        running(&up, "web") == 0 && running(&up, "api") == 3
    });

    // `berth stack rm` needs the same confirmation, and says what it would lose.
    let rm = ["stack", "rm", "video", "--env", "prod"];
    let out = cli(&up, &rm);
    assert_exit(&out, 3);
    let why = stderr(&out);
    assert!(
        why.contains("service api is removed: 3 → 0 instances (eu 1 → 0, us 1 → 0, ap 1 → 0)")
            && why.contains("region eu is emptied")
            && why.contains("berth stack rm video --env prod --confirm video"),
        "{why}"
    );
    assert_eq!(
        numbers(&up),
        vec![1, 2],
        "a refused stack rm stored a release"
    );
    assert_eq!(running(&up, "api"), 3);
    let removed = cli_ok(
        &up,
        &[
            &rm[..],
            &["--confirm", "video", "--wait", "--timeout", "120"],
        ]
        .concat(),
    );
    assert!(
        removed.contains("release 3 of video in prod created"),
        "{removed}"
    );
    up.wait_until(Duration::from_secs(30), "every instance to stop", || {
        running(&up, "api") == 0 && running(&up, "web") == 0
    });
    let history = cli_ok(&up, &["history", "video", "--env", "prod"]);
    assert!(history.contains("stack rm: -api; -web"), "{history}");
    assert_eq!(numbers(&up), vec![1, 2, 3], "the history is kept");

    // One command back to the last release that ran.
    cli_ok(&up, &["rollback", "video", "--env", "prod", "--wait"]);
    up.wait_until(Duration::from_secs(60), "api back in every region", || {
        running(&up, "api") == 3
    });
}
