//! Docker services' `volumes` and `stop_grace` end to end (README, stack file reference and
//! "Docker services"): a bind volume shows the host directory inside the container, live and
//! read-only when `:ro`; a stop is "SIGTERM, then SIGKILL after `stop_grace`".
//!
//! `up_volumes.rs` covers what an agent refuses to mount; this covers a mount that works.
//! Images: `berth-test/busybox` (busybox httpd on 8080 serving /www), built locally by
//! `scripts/build-test-images` with `docker import`. Without an Engine the tests skip visibly.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::cluster::{cli_ok, instances, service, status, through_router, wait_settled};
use common::docker::{engine_or_skip, DockerUp, V1};
use common::{temp_dir, write_file};

#[test]
fn a_bind_volume_shows_the_host_directory_live_and_read_only() {
    if !engine_or_skip("a_bind_volume_shows_the_host_directory_live_and_read_only") {
        return;
    }
    let up = DockerUp::start();
    // Not under berth's data directory (nor a directory holding it): agents refuse those.
    let host = temp_dir();
    let host_path = std::fs::canonicalize(host.path()).expect("the host dir exists");
    std::fs::write(
        host_path.join("hello.txt"),
        "from the host, before the start\n",
    )
    .expect("write hello.txt");
    let stack = format!(
        r#"stack: vol
environments:
  local:
    regions: [local]
services:
  web:
    image: {V1}
    command: [/bin/sh, -c, "touch /www/vol/written-inside 2>/dev/null && echo writable > /www/status || echo read-only > /www/status; exec httpd -f -p 8080 -h /www"]
    ports: {{ http: 8080 }}
    volumes: ["{}:/www/vol:ro"]
    health: {{ http: /healthz, port: http, interval: 250ms, timeout: 1s, healthy: 1, unhealthy: 2 }}
    route: {{ host: vol.localhost, port: http }}
    stop_grace: 1s
"#,
        host_path.display()
    );
    let file = write_file(up.dir(), "vol.yaml", stack);
    cli_ok(&up, &["deploy", "-f", &file, "--env", "local", "--wait"]);
    wait_settled(&up, "vol", "web", 1, Some(1));

    let get = |path: &str| {
        through_router(&up, "vol.localhost", path)
            .map(|r| (r.status, r.text()))
            .unwrap_or_else(|e| (0, e.to_string()))
    };
    assert_eq!(
        get("/vol/hello.txt"),
        (200, "from the host, before the start\n".to_string()),
        "the host file through the container"
    );
    // A bind mount, not a copy: a file written on the host afterwards is there too.
    std::fs::write(host_path.join("later.txt"), "written after the start\n").expect("write");
    up.wait_until(Duration::from_secs(10), "the later file inside", || {
        get("/vol/later.txt") == (200, "written after the start\n".to_string())
    });
    // `:ro`: the container could not write into it.
    assert_eq!(get("/status"), (200, "read-only\n".to_string()));
    assert!(
        !host_path.join("written-inside").exists(),
        "the container wrote into a read-only volume"
    );
}

/// `stubborn` ignores SIGTERM (so only the SIGKILL after its 1 s grace ends it); `patient`
/// exits at once on SIGTERM although its grace is 30 s.
fn grace_stack(round: u32) -> String {
    format!(
        r#"stack: grace
environments:
  local:
    regions: [local]
services:
  stubborn:
    image: {V1}
    command: [/bin/sh, -c, "trap '' TERM; exec httpd -f -p 8080 -h /www"]
    ports: {{ http: 8080 }}
    env: {{ ROUND: "{round}" }}
    health: {{ http: /healthz, port: http, interval: 250ms, timeout: 1s, healthy: 1, unhealthy: 2 }}
    stop_grace: 1s
  patient:
    image: {V1}
    command: [/bin/sh, -c, "trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait"]
    ports: {{ http: 8080 }}
    env: {{ ROUND: "{round}" }}
    health: {{ http: /healthz, port: http, interval: 250ms, timeout: 1s, healthy: 1, unhealthy: 2 }}
    stop_grace: 30s
"#
    )
}

#[test]
fn a_stop_sends_sigterm_then_sigkill_after_stop_grace() {
    if !engine_or_skip("a_stop_sends_sigterm_then_sigkill_after_stop_grace") {
        return;
    }
    let up = DockerUp::start();
    let file = write_file(up.dir(), "grace1.yaml", grace_stack(1));
    cli_ok(&up, &["deploy", "-f", &file, "--env", "local", "--wait"]);
    wait_settled(&up, "grace", "stubborn", 1, Some(1));
    wait_settled(&up, "grace", "patient", 1, Some(1));
    let old: BTreeMap<String, String> = {
        let s = status(&up).expect("status");
        ["stubborn", "patient"]
            .iter()
            .map(|svc| {
                let v = service(&s, "grace", svc).expect("the service");
                let id = instances(v)[0]["id"].as_str().expect("id").to_string();
                (svc.to_string(), id)
            })
            .collect()
    };

    // Release 2 replaces both; each old instance is stopped once its successor is healthy.
    let file = write_file(up.dir(), "grace2.yaml", grace_stack(2));
    cli_ok(&up, &["deploy", "-f", &file, "--env", "local"]);
    let mut asked: BTreeMap<String, Instant> = BTreeMap::new();
    let mut ended: BTreeMap<String, Instant> = BTreeMap::new();
    let deadline = common::clock::now() + Duration::from_secs(60);
    // Until the stubborn one ended and the patient one ended or has been stopping for 15 s.
    while common::clock::now() < deadline {
        let s = status(&up);
        for (svc, id) in &old {
            let wanted_stop = s
                .as_ref()
                .and_then(|s| service(s, "grace", svc))
                .map(instances)
                .unwrap_or_default()
                .iter()
                .find(|i| i["id"] == id.as_str())
                .is_none_or(|i| i["desired"] == "stop");
            if wanted_stop {
                asked.entry(svc.clone()).or_insert_with(common::clock::now);
            }
        }
        let running: Vec<String> = up
            .containers()
            .running()
            .into_iter()
            .map(|c| c.instance)
            .collect();
        for (svc, id) in &old {
            if asked.contains_key(svc) && !running.contains(id) {
                ended.entry(svc.clone()).or_insert_with(common::clock::now);
            }
        }
        let patient_done = ended.contains_key("patient")
            || asked
                .get("patient")
                .is_some_and(|t| t.elapsed() > Duration::from_secs(15));
        if ended.contains_key("stubborn") && patient_done {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = |svc: &str| {
        let (Some(a), Some(e)) = (asked.get(svc), ended.get(svc)) else {
            panic!(
                "{svc}: stop asked {:?}, ended {:?}\n{}",
                asked.get(svc).map(Instant::elapsed),
                ended.get(svc).map(Instant::elapsed),
                up.log_tail()
            );
        };
        e.saturating_duration_since(*a)
    };
    // Ignoring SIGTERM, it lives until the SIGKILL its 1 s grace brings: not at once, and not
    // after the 10 s default.
    let stubborn = took("stubborn");
    let patient = took("patient");
    eprintln!("stop to end: stubborn {stubborn:?}, patient {patient:?}");
    assert!(
        stubborn >= Duration::from_millis(700) && stubborn < Duration::from_secs(8),
        "stubborn (stop_grace 1s, ignores SIGTERM) ended {stubborn:?} after its stop"
    );
    // Handling SIGTERM, it ends at once (~0.3 s here; the bound leaves room for a busy
    // Engine): the signal came first, the 30 s grace was not waited.
    assert!(
        patient < Duration::from_secs(15),
        "patient (stop_grace 30s, exits on SIGTERM) ended {patient:?} after its stop"
    );
}
