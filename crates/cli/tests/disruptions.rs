//! Every disruption issue 4 names, one after the other, under constant load through a node's
//! router, with zero failed requests: a rolling deploy, a rollback, a `kill -9` of an instance,
//! a restart of the agent and its router (`berth agent --replace`), and 10 routing-table
//! changes per second for 10 s.
//!
//! Setup: `berth up` (node n1, zone a) plus `berth agent --router` (node n2, zone b); `web` has
//! four instances spread over both nodes; the load goes through n2's router, so the agent
//! restart replaces the very router the load uses.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::cluster::{api_get, cli_ok, nodes_ready, wait_settled};
use common::docker::Load;
use common::process::{kill_recorded, stat, Proc};
use common::up::BerthUp;
use common::{command, free_port, http, poll_until, write_file};
use serde_json::Value;

const STACK: &str = r#"stack: disrupt
environments:
  local:
    regions: [local]
services:
  web:
    process:
      command: [berth, whoami]
    env: { VERSION: "VERSION_HERE" }
    ports: { http: 0 }
    replicas: 4
    resources: { cpu: 10m, memory: 16Mi }
    health: { http: /healthz, port: http, interval: 200ms, timeout: 1s, healthy: 1, unhealthy: 3 }
    route: { host: 127.0.0.1, path: /, port: http }
    placement: { spread: [zone] }
    rollout: { strategy: rolling, max_surge: 1, max_unavailable: 0 }
    stop_grace: 5s
  side:
    process:
      command: [berth, whoami]
    ports: { http: 0 }
    replicas: 1
    resources: { cpu: 10m, memory: 16Mi }
    health: { http: /healthz, port: http, interval: 200ms, timeout: 1s, healthy: 1, unhealthy: 3 }
    route: { host: side.local, path: /, port: http }
    stop_grace: 1s
"#;

/// Load generators and the pace of each: together 300 requests per second asked.
const LOADERS: usize = 3;
const PACE: Duration = Duration::from_millis(10);
/// What is asserted is a count of requests per phase, not a rate (a slow debug build on a busy
/// machine sends fewer per second and still passes; a load generator that sent nothing while a
/// disruption happened cannot): before the first disruption…
const MIN_BEFORE: usize = 200;
/// …during each disruption (the agent restart may last only 200 ms: at a quarter of the asked
/// pace it still saw 12)…
const MIN_PER_DISRUPTION: usize = 5;
/// …and during the 10 s of routing-table changes.
const MIN_DURING_CHURN: usize = 300;

/// The routing-table changes: 10 per second for 10 s.
const TABLE_CHANGES: usize = 100;
const TABLE_CHANGE_EVERY: Duration = Duration::from_millis(100);

const WAIT: Duration = Duration::from_secs(60);

fn stack_file(up: &BerthUp, version: &str) -> String {
    write_file(
        up.dir(),
        &format!("disrupt-{version}.yaml"),
        STACK.replace("VERSION_HERE", version),
    )
}

/// `berth agent` for node n2 with a router on `router`; `extra` adds flags (`--replace`).
fn agent(up: &BerthUp, router: SocketAddr, extra: &[&str], log: &str) -> Proc {
    let join = std::fs::read_to_string(up.data_dir().join("join.token")).expect("join.token");
    let dir = agent_dir(up);
    let mut cmd = command([
        "agent",
        "--server",
        &up.api_url(),
        "--join-token",
        join.trim(),
        "--name",
        "n2",
        "--labels",
        "zone=b",
        "--router",
        &router.to_string(),
        "--data-dir",
        dir.to_str().expect("utf-8 path"),
    ]);
    cmd.args(extra);
    Proc::spawn(cmd, log, up.dir())
}

fn agent_dir(up: &BerthUp) -> PathBuf {
    up.data_dir().join("node-n2")
}

/// `web`'s live workloads recorded on n2: instance id → (pid, start time).
fn n2_workloads(up: &BerthUp) -> BTreeMap<String, (i32, Option<u64>)> {
    let mut out = BTreeMap::new();
    let instances = agent_dir(up).join("instances");
    for entry in std::fs::read_dir(instances).into_iter().flatten().flatten() {
        let Ok(bytes) = std::fs::read(entry.path().join("instance.json")) else {
            continue;
        };
        let Ok(record) = serde_json::from_slice::<Value>(&bytes) else {
            continue;
        };
        let (Some(pid), Some(id)) = (record["pid"].as_i64(), record["spec"]["id"].as_str()) else {
            continue;
        };
        if record["spec"]["service"] != "web" || !record["finished"].is_null() {
            continue;
        }
        let Ok(pid) = i32::try_from(pid) else {
            continue;
        };
        // Only workloads alive as recorded (a stopped instance's directory may linger).
        let start_time = record["start_time"].as_u64();
        if stat(pid).is_some_and(|(_, started)| Some(started) == start_time) {
            out.insert(id.to_string(), (pid, start_time));
        }
    }
    out
}

/// `web` instances the server wants running and that are healthy.
fn healthy_web(up: &BerthUp) -> usize {
    let Some(status) = api_get(up, "/v1/status?stack=disrupt") else {
        return 0;
    };
    status["stacks"][0]["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == "web")
        .flat_map(|s| s["instances"].as_array().into_iter().flatten())
        .filter(|i| i["state"] == "healthy" && i["desired"] == "run")
        .count()
}

/// `n` answers of `GET /` through `router`, as JSON.
fn answers(router: SocketAddr, n: usize) -> Vec<Value> {
    (0..n)
        .map(|_| {
            let r = http::get(router, "/").expect("a request through n2's router");
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()
        })
        .collect()
}

/// Asserts that every one of 20 answers comes from `version` of release `release`.
#[track_caller]
fn assert_serving(router: SocketAddr, version: &str, release: u64) {
    for answer in answers(router, 20) {
        assert_eq!(answer["version"], version, "{answer}");
        assert_eq!(answer["release"], release.to_string(), "{answer}");
    }
}

/// `side`'s maintenance mode through the API.
fn set_maintenance(up: &BerthUp, on: bool) {
    let auth = format!("Bearer {}", up.token());
    let body = format!("{{\"on\":{on}}}");
    let r = http::request(
        up.api(),
        "POST",
        "/v1/maintenance/disrupt/side",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
    .expect("the maintenance call");
    assert_eq!(r.status, 200, "maintenance on={on}: {}", r.text());
}

/// What `side` answers through `router` right now: 503 in maintenance, 200 otherwise.
fn side_status(router: SocketAddr) -> u16 {
    http::request(router, "GET", "/", &[("Host", "side.local")], &[])
        .map(|r| r.status)
        .unwrap_or(0)
}

#[test]
fn zero_failed_requests_through_deploys_rollbacks_kills_an_agent_restart_and_table_churn() {
    let up = BerthUp::start_with(&["--name", "n1", "--labels", "zone=a"]);
    let router: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("an address");
    let mut n2 = agent(&up, router, &[], "agent-n2");
    up.wait_until(WAIT, "2 ready nodes", || nodes_ready(&up) == 2);
    let v1 = stack_file(&up, "v1");
    cli_ok(&up, &["deploy", "-f", &v1, "--env", "local", "--wait"]);
    wait_settled(&up, "disrupt", "web", 4, Some(1));
    up.wait_until(
        WAIT,
        "n2's router serving web",
        || matches!(http::get(router, "/"), Ok(r) if r.status == 200),
    );
    assert_serving(router, "v1", 1);
    assert_eq!(
        n2_workloads(&up).len(),
        2,
        "web should run 2 instances on n2 (spread over zones a and b)"
    );

    let loads: Vec<Load> = (0..LOADERS)
        .map(|_| Load::start(router, PACE, 200_000, Duration::from_secs(600)))
        .collect();
    let started = common::clock::now();
    let sent = |loads: &[Load]| loads.iter().map(Load::sent).sum::<usize>();
    // Some traffic before the first disruption.
    assert!(
        poll_until(WAIT, || sent(&loads) >= MIN_BEFORE),
        "the load generators do not get through"
    );
    // Each phase must have had at least `min` requests sent since the previous checkpoint.
    let mut mark = sent(&loads);
    let mut checkpoint = |what: &str, loads: &[Load], min: usize| {
        let failed: usize = loads.iter().map(|l| l.snapshot().failed).sum();
        let now = sent(loads);
        let during = now - mark;
        mark = now;
        eprintln!(
            "{:>6.1} s  {what}: {during} requests sent during it, {now} in all, {failed} failed",
            started.elapsed().as_secs_f64()
        );
        assert!(
            during >= min,
            "only {during} requests were sent during the {what}, at least {min} asked \
             (are the load generators stuck?)"
        );
    };

    // 1. A rolling deploy: the answers move to v2.
    let v2 = stack_file(&up, "v2");
    cli_ok(&up, &["deploy", "-f", &v2, "--env", "local", "--wait"]);
    wait_settled(&up, "disrupt", "web", 4, Some(2));
    assert_serving(router, "v2", 2);
    checkpoint("rolling deploy v1 -> v2", &loads, MIN_PER_DISRUPTION);

    // 2. A rollback: release 3 runs v1 again.
    cli_ok(&up, &["rollback", "disrupt", "--env", "local", "--wait"]);
    wait_settled(&up, "disrupt", "web", 4, Some(3));
    assert_serving(router, "v1", 3);
    checkpoint("rollback to v1", &loads, MIN_PER_DISRUPTION);

    // 3. kill -9 of one instance on n2: replaced, nothing fails.
    let before = n2_workloads(&up);
    let (victim, (pid, start_time)) = before.iter().next().expect("an instance on n2");
    assert!(kill_recorded(*pid, *start_time), "could not kill {victim}");
    // The dead process drops out of `n2_workloads` at once; two live ones again means it was
    // restarted (or replaced), and none of them is the killed process.
    up.wait_until(WAIT, "the killed instance replaced", || {
        let now = n2_workloads(&up);
        now.len() == 2 && !now.values().any(|w| w == &(*pid, *start_time)) && healthy_web(&up) == 4
    });
    checkpoint("kill -9 of an instance", &loads, MIN_PER_DISRUPTION);

    // 4. The agent and its router restart: the new agent binds beside the old one, stops it,
    //    and adopts its instances (same processes).
    up.wait_until(WAIT, "web healthy on n2", || {
        n2_workloads(&up).len() == 2 && healthy_web(&up) == 4
    });
    let adopted = n2_workloads(&up);
    let old_token = std::fs::read_to_string(agent_dir(&up).join("node.token")).expect("node.token");
    let successor = agent(&up, router, &["--replace"], "agent-n2-replacement");
    let status = n2.wait_exit(WAIT);
    assert!(
        status.success(),
        "the replaced agent exited with {status:?}:\n{}",
        n2.log_tail()
    );
    n2 = successor;
    // The successor holds the data directory and has registered (a new node token).
    let lock = agent_dir(&up).join("agent.lock");
    up.wait_until(WAIT, "the new agent registered and ready", || {
        let holder = std::fs::read_to_string(&lock).unwrap_or_default();
        let token = std::fs::read_to_string(agent_dir(&up).join("node.token")).unwrap_or_default();
        holder.trim() == n2.pid().as_raw().to_string()
            && !token.is_empty()
            && token != old_token
            && nodes_ready(&up) == 2
            && healthy_web(&up) == 4
    });
    assert_eq!(
        n2_workloads(&up),
        adopted,
        "the new agent must adopt n2's instances, not restart them"
    );
    assert_serving(router, "v1", 3);
    checkpoint("agent restart with --replace", &loads, MIN_PER_DISRUPTION);

    // 5. 10 routing-table changes per second for 10 s: `side` in and out of maintenance, each
    //    change seen through n2's router before the next.
    let mut next = common::clock::now();
    for change in 0..TABLE_CHANGES {
        let on = change % 2 == 0;
        set_maintenance(&up, on);
        let expected = if on { 503 } else { 200 };
        assert!(
            poll_until(Duration::from_secs(10), || side_status(router) == expected),
            "change {change}: n2's router never answered {expected} for side"
        );
        next += TABLE_CHANGE_EVERY;
        if let Some(rest) = next.checked_duration_since(common::clock::now()) {
            std::thread::sleep(rest);
        }
    }
    checkpoint("100 routing-table changes", &loads, MIN_DURING_CHURN);

    let seen: Vec<_> = loads.into_iter().map(Load::finish).collect();
    let sent: usize = seen.iter().map(|s| s.sent).sum();
    let failed: usize = seen.iter().map(|s| s.failed).sum();
    let rate: f64 = seen.iter().map(|s| s.rate()).sum();
    let failures: Vec<&String> = seen.iter().flat_map(|s| &s.failures).collect();
    eprintln!("{sent} requests at {rate:.0} req/s, {failed} failed");
    assert_eq!(failed, 0, "failed requests: {failures:#?}");
    // The answers moved: releases 1, 2 and 3 all answered during the run.
    let mut releases = BTreeMap::<String, usize>::new();
    for s in &seen {
        for (body, n) in &s.bodies {
            let answer: Value = serde_json::from_str(body).expect("whoami's JSON");
            let release = answer["release"].as_str().unwrap_or_default().to_string();
            *releases.entry(release).or_default() += n;
        }
    }
    for release in ["1", "2", "3"] {
        assert!(
            releases.get(release).copied().unwrap_or(0) > 0,
            "no answer from release {release}: {releases:?}"
        );
    }

    // A second agent on the same data directory without --replace is refused and changes
    // nothing.
    let intruder = agent(&up, router, &[], "agent-n2-intruder");
    let status = intruder.wait_exit(WAIT);
    assert!(
        !status.success(),
        "a second agent on n2's data directory started"
    );
    let said = intruder.stderr_text();
    assert!(
        said.contains("another berth agent") && said.contains("--replace"),
        "unclear refusal: {said}"
    );
    assert!(n2.try_exit().is_none(), "the running agent stopped");
    assert_serving(router, "v1", 3);
}
