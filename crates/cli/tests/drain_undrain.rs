//! `berth drain NODE` and `berth undrain NODE` (README, command table and "Several machines"):
//! a drained node's instances move elsewhere, it takes nothing new — not even when a deploy
//! asks for more instances than the other nodes would hold one apiece — and after `undrain` it
//! takes new instances again.
//!
//! Two nodes: `berth up` (n1) and an agent n2.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cluster::{api_get, cli_ok, instances, service, status, ROLLOUT_TIMEOUT};
use common::process::Proc;
use common::up::BerthUp;
use common::{command, write_file};

const STACK: &str = r#"stack: moving
environments:
  local:
    regions: [local]
services:
  web:
    process: { command: [berth, whoami] }
    ports: { http: 0 }
    replicas: 2
    resources: { cpu: 10m, memory: 16Mi }
    health: { http: /healthz, port: http, interval: 100ms, timeout: 1s, healthy: 1, unhealthy: 3 }
    stop_grace: 1s
"#;

/// A `berth agent` named `name`, its data inside up's data dir (cleaned up with it).
fn agent(up: &BerthUp, name: &str) -> Proc {
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
        "--data-dir",
        dir.to_str().expect("UTF-8 path"),
    ]);
    Proc::spawn(cmd, name, up.dir())
}

/// Healthy, wanted instances of moving/web per node, once the rollout is live with exactly
/// `n` of them and nothing else left; panics with the last status otherwise.
#[track_caller]
fn settled_per_node(up: &BerthUp, n: usize) -> BTreeMap<String, usize> {
    let mut last = None;
    let mut per_node = BTreeMap::new();
    let held = common::poll_until(ROLLOUT_TIMEOUT, || {
        last = status(up);
        let Some(s) = &last else { return false };
        let live = common::cluster::stack(s, "moving").is_some_and(|st| st["rollout"] == "live");
        let list = service(s, "moving", "web")
            .map(instances)
            .unwrap_or_default();
        per_node.clear();
        for i in &list {
            *per_node
                .entry(i["node"].as_str().unwrap_or_default().to_string())
                .or_insert(0) += 1;
        }
        live && list.len() == n
            && list
                .iter()
                .all(|i| i["state"] == "healthy" && i["desired"] == "run")
    });
    assert!(
        held,
        "moving/web never settled at {n} instances; last status:\n{}\n{}",
        serde_json::to_string_pretty(&last).unwrap_or_default(),
        up.log_tail()
    );
    per_node
}

#[test]
fn a_drained_node_takes_nothing_new_until_it_is_undrained() {
    let up = BerthUp::start_with(&["--name", "n1"]);
    let _n2 = agent(&up, "n2");
    up.wait_until(Duration::from_secs(30), "two ready nodes", || {
        api_get(&up, "/v1/nodes")
            .and_then(|n| n.as_array().cloned())
            .is_some_and(|n| n.len() == 2 && n.iter().all(|n| n["state"] == "ready"))
    });
    let file = write_file(up.dir(), "moving.yaml", STACK);
    cli_ok(&up, &["deploy", "-f", &file, "--env", "local", "--wait"]);
    let spread = settled_per_node(&up, 2);
    assert_eq!(
        spread.get("n2"),
        Some(&1),
        "replicas avoid sharing a node: {spread:?}"
    );

    // Drain n2: its instance moves to n1.
    let said = cli_ok(&up, &["drain", "n2"]);
    assert!(said.contains("node n2 is draining"), "{said}");
    up.wait_until(ROLLOUT_TIMEOUT, "n2's instance to move", || {
        status(&up).is_some_and(|s| {
            service(&s, "moving", "web").is_some_and(|v| {
                let list = instances(v);
                list.len() == 2
                    && list
                        .iter()
                        .all(|i| i["node"] == "n1" && i["state"] == "healthy")
            })
        })
    });
    let nodes = cli_ok(&up, &["nodes", "--output", "json"]);
    let nodes: serde_json::Value = serde_json::from_str(&nodes).expect("nodes JSON");
    let n2 = nodes
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == "n2"))
        .expect("n2 listed");
    assert_eq!(n2["draining"], true, "{n2}");
    assert_eq!(n2["instances"], 0, "{n2}");

    // More instances: all on n1, sharing it, rather than on the drained node.
    cli_ok(
        &up,
        &[
            "deploy",
            "-f",
            &file,
            "--env",
            "local",
            "--set",
            "web.replicas=4",
            "--wait",
        ],
    );
    let placed = settled_per_node(&up, 4);
    assert_eq!(
        placed.get("n1"),
        Some(&4),
        "a drained node took an instance: {placed:?}"
    );

    // Undrained, it takes new instances again.
    let said = cli_ok(&up, &["undrain", "n2"]);
    assert!(said.contains("node n2 takes new instances again"), "{said}");
    cli_ok(
        &up,
        &[
            "deploy",
            "-f",
            &file,
            "--env",
            "local",
            "--set",
            "web.replicas=6",
            "--wait",
        ],
    );
    let placed = settled_per_node(&up, 6);
    assert!(
        placed.get("n2").is_some_and(|n| *n >= 1),
        "the undrained node took none of the new instances: {placed:?}"
    );
}
