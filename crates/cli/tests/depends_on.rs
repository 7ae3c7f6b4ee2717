//! `depends_on` (README, stack file reference): "started (and rolled) after these are healthy".
//! `web` depends on `api`, whose instances need 5 passing checks 100 ms apart: every `web`
//! instance of a release is created only after every `api` instance of that release is
//! healthy, on the first deploy and on an update that changes both.

mod common;

use std::time::Duration;

use common::cluster::{cli_ok, instances, service, stack, status};
use common::up::BerthUp;
use common::write_file;
use serde_json::Value;

const STACK: &str = r#"stack: chain
environments:
  local:
    regions: [local]
services:
  web:
    process: { command: [berth, whoami] }
    ports: { http: 0 }
    replicas: 2
    env: { ROUND: "1" }
    depends_on: [api]
    resources: { cpu: 10m, memory: 16Mi }
    health: { http: /healthz, port: http, interval: 100ms, timeout: 1s, healthy: 1, unhealthy: 3 }
    stop_grace: 1s
  api:
    process: { command: [berth, whoami] }
    ports: { http: 0 }
    replicas: 2
    env: { ROUND: "1" }
    resources: { cpu: 10m, memory: 16Mi }
    health: { http: /healthz, port: http, interval: 100ms, timeout: 1s, healthy: 5, unhealthy: 3 }
    stop_grace: 1s
"#;

/// The instances of chain/`svc` of `release` in a status document.
fn of_release(status: &Value, svc: &str, release: u64) -> Vec<Value> {
    service(status, "chain", svc)
        .map(instances)
        .unwrap_or_default()
        .into_iter()
        .filter(|i| i["release"] == release)
        .cloned()
        .collect()
}

/// Waits until `release` is live with 2 healthy instances of each service, then checks that
/// each `web` instance was created after every `api` instance was healthy.
#[track_caller]
fn assert_web_after_api(up: &BerthUp, release: u64) {
    let mut last = None;
    up.wait_until(
        Duration::from_secs(60),
        &format!("release {release} live with 2 + 2 healthy instances"),
        || {
            last = status(up);
            last.as_ref().is_some_and(|s| {
                let healthy = |svc| {
                    let list = of_release(s, svc, release);
                    list.len() == 2 && list.iter().all(|i| i["state"] == "healthy")
                };
                healthy("api")
                    && healthy("web")
                    && stack(s, "chain").is_some_and(|st| st["rollout"] == "live")
            })
        },
    );
    let s = last.expect("a status");
    let api = of_release(&s, "api", release);
    let api_created = api
        .iter()
        .filter_map(|i| i["created_ms"].as_u64())
        .min()
        .expect("api created_ms");
    let api_healthy = api
        .iter()
        .filter_map(|i| i["since_ms"].as_u64())
        .max()
        .expect("api since_ms");
    // The check means something only if api takes a while (5 checks 100 ms apart).
    assert!(
        api_healthy >= api_created + 400,
        "api was healthy {} ms after it was created",
        api_healthy.saturating_sub(api_created)
    );
    for w in of_release(&s, "web", release) {
        let created = w["created_ms"].as_u64().expect("web created_ms");
        assert!(
            created >= api_healthy,
            "release {release}: web instance {} created at {created}, before api was healthy at {api_healthy}\n{s:#}",
            w["id"]
        );
    }
}

#[test]
fn a_service_starts_and_rolls_only_after_its_dependencies_are_healthy() {
    let up = BerthUp::start();
    let file = write_file(up.dir(), "chain.yaml", STACK);
    cli_ok(&up, &["deploy", "-f", &file, "--env", "local"]);
    assert_web_after_api(&up, 1);
    cli_ok(
        &up,
        &[
            "deploy",
            "-f",
            &file,
            "--env",
            "local",
            "--set",
            "web.env.ROUND=2",
            "--set",
            "api.env.ROUND=2",
        ],
    );
    assert_web_after_api(&up, 2);
}
