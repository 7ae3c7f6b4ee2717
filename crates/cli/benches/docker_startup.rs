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

use std::time::Duration;

use common::docker::{engine_or_skip, DockerUp, V1};
use common::startup::measure;
use common::{assert_exit, write_file};

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

fn main() {
    if !engine_or_skip("the docker_startup benchmark") {
        return;
    }
    let up = DockerUp::start();
    let file = write_file(up.dir(), "bench.yaml", stack());
    assert_exit(&up.cli(["deploy", "-f", &file, "--env", "local"]), 0);
    let startup = measure(&up, "bench", N, Duration::from_secs(180));
    println!(
        "container start → {} ({N} containers; goal p99 ≤ 1 s)",
        startup.summary()
    );
    // All 50 running containers are removed when `up` drops (berth first, then by label).
}
