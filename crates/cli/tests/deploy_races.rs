//! A deploy while a rollout is under way (README: "A release still rolling out is replaced
//! before it finished"): the controller writes the rollout's progress meanwhile, which is no
//! other deploy, so the deploy must go through.

mod common;

use common::cluster::cli;
use common::up::BerthUp;
use common::{stderr, write_file};

const STACK: &str = r#"stack: busy
environments:
  local:
    regions: [local]
services:
  web:
    process: { command: [berth, whoami] }
    ports: { http: 0 }
    replicas: 3
    env: { N: "0" }
    resources: { cpu: 10m, memory: 16Mi }
    health: { http: /healthz, port: http, interval: 100ms, timeout: 1s, healthy: 3, unhealthy: 3 }
    stop_grace: 1s
"#;

#[test]
fn deploys_during_a_rollout_are_not_refused_as_concurrent_deploys() {
    let up = BerthUp::start();
    let file = write_file(up.dir(), "busy.yaml", STACK);
    let mut refused = Vec::new();
    for n in 1..=30 {
        let set = format!("web.env.N={n}");
        let out = cli(
            &up,
            &["deploy", "-f", &file, "--env", "local", "--set", &set],
        );
        if !out.status.success() {
            refused.push(format!("deploy {n}: {}", stderr(&out)));
        }
    }
    assert!(
        refused.is_empty(),
        "{} of 30 deploys during rollouts were refused although nobody else deployed:\n{}",
        refused.len(),
        refused.join("")
    );
}
