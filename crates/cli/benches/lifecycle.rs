//! Lifecycle benchmarks of a real `berth up` (not timed tests: they print figures to compare with
//! the README's performance table).
//!
//! ```text
//! cargo bench -p berth-cli --bench lifecycle
//! ```
//!
//! 1. instance start → healthy → routable, p50 and p99 over 100 instances, 100 ms health interval;
//! 2. a 10-instance rolling deploy, from the command to the release being live;
//! 3. a rollback, from the command to 100 % of requests answered by the previous release.
//!
//! "Routable" is the moment the instance first appears in the routing table the server serves to
//! routers (polled every 5 ms), which a router long-polling the table applies at once.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::startup::{api_json, measure};
use common::up::BerthUp;
use common::{assert_exit, http, write_file};

fn stack(replicas: u32, version: &str) -> String {
    format!(
        r#"stack: bench
environments:
  local:
    regions: [local]
services:
  web:
    process:
      command: [berth, whoami]
    env: {{ VERSION: "{version}" }}
    ports: {{ http: 0 }}
    replicas: {replicas}
    resources: {{ cpu: 10m, memory: 16Mi }}
    health: {{ http: /healthz, port: http, interval: 100ms, timeout: 1s, healthy: 1, unhealthy: 3 }}
    route: {{ host: 127.0.0.1, path: /, port: http }}
    rollout: {{ strategy: rolling, max_surge: 1, max_unavailable: 0 }}
    stop_grace: 5s
"#
    )
}

/// Waits until release `n` of the bench stack is live; returns how long that took.
fn wait_live(up: &BerthUp, n: u64, started: Instant) -> Duration {
    let deadline = started + Duration::from_secs(120);
    loop {
        let releases = api_json(up, "/v1/stacks/bench/local/releases");
        let live = releases
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["number"] == n && r["status"] == "live");
        if live {
            return started.elapsed();
        }
        assert!(
            common::clock::now() < deadline,
            "release {n} did not go live within 120 s\n{}",
            up.log_tail()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn version_answering(up: &BerthUp) -> Option<String> {
    let r = http::get(up.router(), "/").ok()?;
    if r.status != 200 {
        return None;
    }
    r.json()["version"].as_str().map(str::to_string)
}

fn main() {
    let up = BerthUp::start();
    let dir = common::temp_dir();

    // 1. start → healthy → routable over 100 instances.
    let file = write_file(dir.path(), "v1.yaml", stack(100, "1"));
    let t0 = common::clock::now();
    let out = up.cli(["deploy", "-f", &file, "--env", "local"]);
    assert_exit(&out, 0);
    let startup = measure(&up, "bench", 100, Duration::from_secs(120));
    println!(
        "instance start → {} ({} instances, 100 ms health interval; goal p99 ≤ 300 ms)",
        startup.summary(),
        startup.to_routable.len()
    );
    wait_live(&up, 1, t0);

    // 2. a 10-instance rolling deploy, end to end.
    let file = write_file(dir.path(), "ten-v1.yaml", stack(10, "1"));
    assert_exit(
        &up.cli(["deploy", "-f", &file, "--env", "local", "--wait"]),
        0,
    );
    let file = write_file(dir.path(), "ten-v2.yaml", stack(10, "2"));
    let started = common::clock::now();
    assert_exit(&up.cli(["deploy", "-f", &file, "--env", "local"]), 0);
    let took = wait_live(&up, 3, started);
    println!("10-instance rolling deploy (max_surge 1, max_unavailable 0): {:.2} s end to end (goal ≤ 3 s)", took.as_secs_f64());

    // 3. rollback: from the command to 100 % of answers from the previous release.
    assert_eq!(version_answering(&up).as_deref(), Some("2"));
    let started = common::clock::now();
    assert_exit(&up.cli(["rollback", "bench", "--env", "local"]), 0);
    let deadline = started + Duration::from_secs(120);
    // 100 %: 50 answers in a row from version 1; the time is that of the first of them.
    let mut streak = 0;
    let mut first_of_streak = started.elapsed();
    while streak < 50 {
        match version_answering(&up).as_deref() {
            Some("1") => {
                if streak == 0 {
                    first_of_streak = started.elapsed();
                }
                streak += 1;
            }
            _ => streak = 0,
        }
        assert!(
            common::clock::now() < deadline,
            "the rollback did not complete within 120 s"
        );
    }
    println!(
        "rollback to 100 % of answers from the previous release: {:.2} s (goal ≤ 1 s)",
        first_of_streak.as_secs_f64()
    );
}
