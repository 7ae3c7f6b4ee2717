//! `berth status` as issue 17 point 8 asked: a two-port service shows the address of the port
//! it serves on (`$PORT`, the one named `http`), a service in maintenance says so, and each
//! instance shows its restart count.

mod common;

use std::time::Duration;

use common::cluster::{cli_ok, service, status, wait_settled};
use common::up::BerthUp;
use common::write_file;

/// `admin` sorts before `http`: the old status showed the first port by name, where nothing
/// listens (whoami serves on `$PORT`, which is `http`).
const TWO_PORTS: &str = r#"stack: ports
environments:
  local:
    regions: [local]
services:
  web:
    process: { command: [berth, whoami] }
    ports: { admin: 0, http: 0 }
    resources: { cpu: 10m, memory: 16Mi }
    health: { http: /healthz, port: http, interval: 100ms, timeout: 1s, healthy: 1, unhealthy: 3 }
    route: { host: ports.localhost, port: http }
    stop_grace: 2s
"#;

#[test]
fn status_shows_the_served_port_maintenance_and_restarts() {
    let up = BerthUp::start();
    let file = write_file(up.dir(), "ports.yaml", TWO_PORTS);
    cli_ok(&up, &["deploy", "-f", &file, "--env", "local"]);
    wait_settled(&up, "ports", "web", 1, Some(1));

    let s = status(&up).expect("status");
    let web = service(&s, "ports", "web").expect("ports/web");
    let addr: std::net::SocketAddr = web["instances"][0]["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("an address: {web:#}"));
    let answer = common::http::get(addr, "/healthz");
    assert!(
        answer.as_ref().is_ok_and(|r| r.status == 200),
        "the address berth status shows ({addr}) is where the instance serves: {answer:?}"
    );
    assert_eq!(web["instances"][0]["restarts"].as_u64(), Some(0), "{web:#}");
    assert!(web.get("maintenance").is_none(), "{web:#}");

    cli_ok(&up, &["maintenance", "on", "web"]);
    let table = cli_ok(&up, &["status"]);
    assert!(table.contains("MAINTENANCE"), "{table}");
    let s = status(&up).expect("status");
    assert_eq!(
        service(&s, "ports", "web").expect("web")["maintenance"].as_bool(),
        Some(true)
    );
    cli_ok(&up, &["maintenance", "off", "web"]);

    // A kill -9: the agent restarts it, and status counts it.
    let pid = up.workloads().first().expect("a workload").pid;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    up.wait_until(Duration::from_secs(30), "a restart in berth status", || {
        status(&up)
            .and_then(|s| {
                service(&s, "ports", "web").map(|w| w["instances"][0]["restarts"].as_u64())
            })
            .flatten()
            .is_some_and(|n| n >= 1)
    });
    let table = cli_ok(&up, &["status"]);
    assert!(table.contains("restarts 1"), "{table}");
    assert!(!table.contains("MAINTENANCE"), "{table}");
}
