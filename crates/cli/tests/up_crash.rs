//! `berth up` killed with `kill -9` (issue 3): its instances live on and are adopted, never
//! restarted, and a rollout it was in the middle of completes after the restart.

mod common;

use std::time::Duration;

use common::cluster::{
    api_get, assert_every_answer_has_version, cli, release_status, status, wait_distinct_instances,
    wait_settled, ROLLOUT_TIMEOUT,
};
use common::process::stat;
use common::up::{BerthUp, Workload};
use common::{assert_exit, write_file, DEMO};

const HOST: &str = "demo.localhost";

/// Asserts every workload is alive and still the very process recorded (same start time).
#[track_caller]
fn assert_alive(workloads: &[Workload]) {
    for w in workloads {
        assert_eq!(
            stat(w.pid).map(|(_, t)| t),
            w.start_time,
            "workload {w:?} is not running any more"
        );
    }
}

/// Waits until the agent of the restarted `berth up` has reported: its node is `ready` and was
/// heard from since the restart (liveness is kept in memory, so `last_seen_ms_ago` is set only
/// by a heartbeat to this server process).
#[track_caller]
fn wait_node_ready(up: &BerthUp) {
    up.wait_until(Duration::from_secs(30), "the node to be ready", || {
        api_get(up, "/v1/nodes")
            .and_then(|n| n.as_array().cloned())
            .is_some_and(|nodes| {
                nodes.len() == 1
                    && nodes[0]["state"] == "ready"
                    && nodes[0]["last_seen_ms_ago"].is_u64()
            })
    });
}

#[test]
fn kill9_of_berth_up_ten_times_never_changes_the_instance_pids() {
    let mut up = BerthUp::start_with(&["--demo"]);
    wait_settled(&up, "demo", "web", 3, Some(1));
    let ids = wait_distinct_instances(&up, HOST, 3);
    let before = up.workloads();
    assert_eq!(before.len(), 3, "three workloads: {before:?}");
    assert_alive(&before);
    let mut processes: Vec<(i32, u64)> = before
        .iter()
        .map(|w| (w.pid, w.start_time.expect("a recorded start time")))
        .collect();
    processes.sort_unstable();
    assert_eq!(
        up.processes(),
        processes,
        "the workloads are the processes in the data dir"
    );

    for round in 1..=10 {
        let old_pid = up.pid();
        up.restart();
        assert_ne!(
            up.pid(),
            old_pid,
            "round {round}: berth up was not restarted"
        );
        wait_node_ready(&up);
        wait_settled(&up, "demo", "web", 3, Some(1));
        assert_eq!(
            wait_distinct_instances(&up, HOST, 3),
            ids,
            "round {round}: other instances answer"
        );
        let now = up.workloads();
        assert_eq!(
            now, before,
            "round {round}: the instances' processes changed across a kill -9 of berth up"
        );
        assert_alive(&now);
        assert_eq!(
            up.processes(),
            processes,
            "round {round}: processes other than the three instances run in the data dir"
        );
    }
}

/// The demo with a slower health check (two passes 400 ms apart), so a rollout of three
/// instances takes a few seconds and can be interrupted in the middle.
fn slow_demo(up: &BerthUp) -> String {
    let text = std::fs::read_to_string(DEMO).expect("the demo stack");
    let health = "health: { http: /healthz, port: http, interval: 1s, timeout: 1s, healthy: 1, unhealthy: 3 }";
    assert!(
        text.contains(health),
        "the demo's health check changed:\n{text}"
    );
    let slow = text.replace(
        health,
        "health: { http: /healthz, port: http, interval: 400ms, timeout: 400ms, healthy: 2, unhealthy: 3 }",
    );
    write_file(up.dir(), "slow-demo.yaml", slow)
}

#[test]
fn kill9_of_berth_up_in_the_middle_of_a_rollout_then_the_rollout_completes() {
    let mut up = BerthUp::start();
    let file = slow_demo(&up);
    assert_exit(
        &cli(&up, &["deploy", "-f", &file, "--env", "local", "--wait"]),
        0,
    );
    wait_settled(&up, "demo", "web", 3, Some(1));

    let out = cli(
        &up,
        &[
            "deploy",
            "-f",
            &file,
            "--env",
            "local",
            "--set",
            "web.env.VERSION=2",
        ],
    );
    assert_exit(&out, 0);
    // Kill berth as soon as the first instance of release 2 exists, while release 2 rolls out.
    up.wait_until(ROLLOUT_TIMEOUT, "the first instance of release 2", || {
        status(&up).is_some_and(|s| {
            s["stacks"][0]["services"][0]["instances"]
                .as_array()
                .is_some_and(|list| list.iter().any(|i| i["release"] == 2))
        })
    });
    assert_eq!(
        release_status(&up, "demo", "local", 2).as_deref(),
        Some("rolling_out"),
        "berth was meant to be killed in the middle of the rollout"
    );
    up.restart();

    up.wait_until(ROLLOUT_TIMEOUT, "release 2 to be live", || {
        release_status(&up, "demo", "local", 2).as_deref() == Some("live")
    });
    assert_every_answer_has_version(&up, HOST, 30, "2");
    wait_settled(&up, "demo", "web", 3, Some(2));
    // Exactly three processes run: none of release 1 is left behind, none is doubled.
    up.wait_until(Duration::from_secs(30), "exactly three workloads", || {
        up.workloads().len() == 3
    });
    let workloads = up.workloads();
    assert_alive(&workloads);
    let mut recorded: Vec<(i32, u64)> = workloads
        .iter()
        .map(|w| (w.pid, w.start_time.unwrap_or_default()))
        .collect();
    recorded.sort_unstable();
    assert_eq!(
        up.processes(),
        recorded,
        "the processes in the data dir should be exactly the three recorded workloads"
    );
    assert!(
        workloads
            .iter()
            .all(|w| w.instance.starts_with("demo-web-2-")),
        "only release 2's instances should run: {workloads:?}"
    );
}
