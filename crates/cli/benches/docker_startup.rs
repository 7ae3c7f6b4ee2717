//! Container start → healthy → routable through a real `berth up` on the real Docker Engine
//! (a benchmark, not a timed test: it prints figures to compare with the README's table).
//!
//! ```text
//! cargo bench -p berth-cli --bench docker_startup
//! ```
//!
//! One release of 50 `berth-test/busybox:v1` containers (busybox httpd, health `GET /healthz`
//! every 100 ms). Per instance: "start" is when the server created it (`created_ms` in
//! `berth status`), "healthy" when its agent first saw it healthy (`since_ms` of the `healthy`
//! state), "routable" when it first appears in the routing table the server serves to routers
//! (`/v1/routes`, polled every 5 ms), which a router long-polling the table applies at once.
//! The same method as `benches/lifecycle.rs` uses for processes.
//!
//! Without an Engine it prints a loud banner and exits 0 (1 under `BERTH_REQUIRE_DOCKER=1`).
//! Every container it started is removed at the end, even when it fails.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::docker::{engine_or_skip, DockerUp, V1};
use common::{assert_exit, http, write_file};

const N: usize = 50;

fn stack() -> String {
    format!(
        r#"stack: bench
environments:
  local:
    regions: [local]
services:
  web:
    image: {V1}
    ports: {{ http: 8080 }}
    replicas: {N}
    health: {{ http: /healthz, port: http, interval: 100ms, timeout: 1s, healthy: 1, unhealthy: 3 }}
    route: {{ host: 127.0.0.1, path: /, port: http }}
    rollout: {{ strategy: rolling, max_surge: 1, max_unavailable: 0 }}
    resources: {{ cpu: 10m, memory: 16Mi }}   # 50 fit on a small machine (default 100m each)
    stop_grace: 1s
"#
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn json(up: &DockerUp, path: &str) -> serde_json::Value {
    match http::get_auth(up.api(), path, &up.token()) {
        Ok(r) if r.status == 200 => r.json(),
        Ok(r) => panic!("GET {path}: {} {}", r.status, r.text()),
        Err(e) => panic!("GET {path}: {e}"),
    }
}

fn main() {
    if !engine_or_skip("the docker_startup benchmark") {
        return;
    }
    let up = DockerUp::start();
    let file = write_file(up.dir(), "bench.yaml", stack());
    let t0 = Instant::now();
    assert_exit(&up.cli(["deploy", "-f", &file, "--env", "local"]), 0);
    let mut routable: BTreeMap<String, u64> = BTreeMap::new();
    let deadline = t0 + Duration::from_secs(180);
    while routable.len() < N {
        let table = json(&up, "/v1/routes");
        let seen = now_ms();
        for route in table["routes"].as_array().into_iter().flatten() {
            for e in route["endpoints"].as_array().into_iter().flatten() {
                if let Some(id) = e["instance"].as_str() {
                    routable.entry(id.to_string()).or_insert(seen);
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {N} containers routable after 180 s\n{}",
            routable.len(),
            up.log_tail()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = json(&up, "/v1/status?stack=bench");
    let mut to_healthy = Vec::new();
    let mut to_routable = Vec::new();
    for svc in status["stacks"][0]["services"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for i in svc["instances"].as_array().into_iter().flatten() {
            let id = i["id"].as_str().unwrap_or_default();
            let created = i["created_ms"].as_u64().unwrap_or(0);
            let healthy = i["since_ms"].as_u64().unwrap_or(0);
            if let (Some(r), "healthy") = (routable.get(id), i["state"].as_str().unwrap_or("")) {
                to_healthy.push(healthy.saturating_sub(created));
                to_routable.push(r.saturating_sub(created));
            }
        }
    }
    assert_eq!(
        to_routable.len(),
        N,
        "every container should be healthy and routable:\n{status:#}"
    );
    to_healthy.sort_unstable();
    to_routable.sort_unstable();
    println!(
        "container start → healthy: p50 {} ms, p99 {} ms; → routable: p50 {} ms, p99 {} ms ({} containers; goal p99 ≤ 1 s)",
        percentile(&to_healthy, 50.0),
        percentile(&to_healthy, 99.0),
        percentile(&to_routable, 50.0),
        percentile(&to_routable, 99.0),
        to_routable.len()
    );
    // All 50 running containers are removed when `up` drops (berth first, then by label).
}
